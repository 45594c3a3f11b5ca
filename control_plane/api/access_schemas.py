"""Schemas of API tokens and audit events."""
from __future__ import annotations

from marshmallow import Schema, fields, validate

from control_plane.api.input import InputSchema
from control_plane.catalog.models import TokenRole


class TokenSchema(Schema):
    id = fields.String()
    name = fields.String()
    role = fields.Enum(TokenRole, by_value=True)
    tenant_id = fields.String(allow_none=True)
    created_at = fields.DateTime()
    expires_at = fields.DateTime(allow_none=True)
    last_used_at = fields.DateTime(allow_none=True, metadata={"description": "to the minute"})
    revoked_at = fields.DateTime(allow_none=True)


class TokenQuerySchema(InputSchema):
    tenant_id = fields.String(validate=validate.Length(max=40))
    include_revoked = fields.Boolean(load_default=False)


class AuditEventSchema(Schema):
    id = fields.Integer()
    at = fields.DateTime()
    actor = fields.String()
    action = fields.String()
    tenant_id = fields.String(allow_none=True)
    operation_id = fields.String(allow_none=True)
    details = fields.Dict()


class AuditQuerySchema(InputSchema):
    tenant_id = fields.String(validate=validate.Length(max=40))
    actor = fields.String(validate=validate.Length(min=1, max=200))
    action = fields.String(validate=validate.Length(min=1, max=64),
                           metadata={"description": "exact, or a family ending in '*' (`tenant.*`)"})
    since = fields.AwareDateTime(metadata={"description": "inclusive, ISO 8601 with a time zone"})
    until = fields.AwareDateTime(metadata={"description": "exclusive, ISO 8601 with a time zone"})
