"""Request and response schemas of restore drills."""
from __future__ import annotations

from marshmallow import Schema, fields

from control_plane.api.input import InputSchema
from control_plane.catalog.backup_models import DrillResult


class DrillQuerySchema(InputSchema):
    result = fields.Enum(DrillResult, by_value=True)


class DrillSchema(Schema):
    id = fields.String()
    tenant_id = fields.String()
    operation_id = fields.String(allow_none=True)
    backup_id = fields.String(allow_none=True)
    result = fields.Enum(DrillResult, by_value=True)
    reason = fields.String(allow_none=True, metadata={"description": "Why the drill failed"})
    source = fields.String(allow_none=True, metadata={"description": "primary, or copy when the primary failed"})
    server_name = fields.String(allow_none=True, metadata={"description": "Where the scratch restore ran"})
    backup_completed_at = fields.DateTime(allow_none=True)
    rpo_seconds = fields.Float(allow_none=True, metadata={"description": "Age of the backup when drilled"})
    rto_seconds = fields.Float(allow_none=True, metadata={"description": "Download, verify, restore and check"})
    details = fields.Dict(allow_none=True)
    started_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)
