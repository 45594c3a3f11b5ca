"""Request and response schemas of backups, restores and retention policies."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from control_plane.api.input import InputSchema
from control_plane.api.disclosure import TenantAdminView
from control_plane.catalog.backup_models import BackupStatus, BackupTrigger, CopyStatus
from control_plane.naming import tenant_id_problem


class BackupRequestSchema(InputSchema):
    expires_in_days = fields.Integer(validate=validate.Range(min=1, max=3650),
                                     metadata={"description": "Keep this backup exactly this long, "
                                                              "whatever the tenant's retention policy"})


class BackupQuerySchema(InputSchema):
    status = fields.Enum(BackupStatus, by_value=True)
    trigger = fields.Enum(BackupTrigger, by_value=True)


class BackupCopySchema(Schema):
    location = fields.String()
    status = fields.Enum(CopyStatus, by_value=True)
    method = fields.String(allow_none=True, metadata={"description": "server-side or streamed"})
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    completed_at = fields.DateTime(allow_none=True)
    deleted_at = fields.DateTime(allow_none=True)


class BackupSchema(TenantAdminView, Schema):
    id = fields.String()
    tenant_id = fields.String()
    status = fields.Enum(BackupStatus, by_value=True)
    trigger = fields.Enum(BackupTrigger, by_value=True)
    operation_id = fields.String(allow_none=True)
    location = fields.String()
    schema_revision = fields.String(allow_none=True)
    server_version = fields.String(allow_none=True)
    pg_dump_version = fields.String(allow_none=True)
    format_version = fields.Integer(allow_none=True)
    archive_bytes = fields.Integer(allow_none=True)
    stored_bytes = fields.Integer(allow_none=True)
    sha256 = fields.String(allow_none=True)
    tenant_key_id = fields.String(allow_none=True)
    keyring_key_id = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    created_at = fields.DateTime()
    completed_at = fields.DateTime(allow_none=True)
    expires_at = fields.DateTime(allow_none=True)
    deleted_at = fields.DateTime(allow_none=True)
    copies = fields.List(fields.Nested(BackupCopySchema), metadata={
        "description": "The backup's other locations (BACKUP_COPY_STORE_URL), each verified by SHA-256"})


class BackupManifestSchema(BackupSchema):
    manifest = fields.Dict(allow_none=True, metadata={"description": "The manifest stored next to the data"})


def _validate_tenant_id(value: str) -> None:
    problem = tenant_id_problem(value)
    if problem:
        raise ValidationError(problem)


class RestoreSchema(InputSchema):
    backup_id = fields.String(required=True, validate=validate.Length(min=1, max=36))
    mode = fields.String(load_default="in_place", validate=validate.OneOf(["in_place", "new_tenant"]))
    new_tenant_id = fields.String(validate=[validate.Length(max=40), _validate_tenant_id])
    new_tenant_name = fields.String(validate=validate.Length(min=1, max=200))
    safety_backup = fields.Boolean(load_default=True, metadata={
        "description": "in_place only: back up the current database first (trigger pre-restore)"})

    @validates_schema
    def _new_tenant_needs_an_id(self, data, **kwargs) -> None:
        if data.get("mode") == "new_tenant" and not data.get("new_tenant_id"):
            raise ValidationError("required when mode is new_tenant", "new_tenant_id")
        if data.get("mode") == "in_place" and data.get("new_tenant_id"):
            raise ValidationError("only with mode new_tenant", "new_tenant_id")


class BackupPolicySchema(InputSchema):
    keep_last = fields.Integer(validate=validate.Range(min=1, max=1000))
    keep_daily_days = fields.Integer(validate=validate.Range(min=0, max=3650))
    scheduled = fields.Boolean()
    rpo_hours = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=24 * 90), metadata={
        "description": "Recovery point objective: scheduled backups keep the newest one younger than this "
                       "(several a day below 24); older is `backup_stale`. Shown: the tenant's RPO in effect. "
                       "Set: this tenant's own, over its plan's `backup_rpo_hours`; null returns it to its plan's "
                       "(else 24)"})
    rpo_source = fields.String(dump_only=True, metadata={
        "description": "where rpo_hours comes from: `policy` (this tenant's own), `plan` or `default` (24)"})
