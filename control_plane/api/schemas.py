"""Request and response schemas (marshmallow): the edge where input is validated, field by field."""
from __future__ import annotations

import re

from marshmallow import Schema, ValidationError, fields, validate, validates

from control_plane.api.input import InputSchema
from control_plane.catalog.drain_models import DrainItemStatus, DrainStatus
from control_plane.api.disclosure import TenantAdminView
from control_plane.catalog.models import OperationKind, OperationStatus, ServerStatus, TenantStatus
from control_plane.naming import tenant_id_problem

_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _validate_tenant_id(value: str) -> None:
    problem = tenant_id_problem(value)
    if problem:
        raise ValidationError(problem)


def _validate_domain(value: str) -> None:
    if not _HOSTNAME.fullmatch(value):
        raise ValidationError(f"{value[:80]!r} is not a lowercase fully qualified domain name")


Domains = lambda: fields.List(fields.String(validate=_validate_domain), validate=validate.Length(max=20))  # noqa: E731


class TenantCreateSchema(InputSchema):
    id = fields.String(required=True, validate=[validate.Length(max=40), _validate_tenant_id])
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))
    domains = Domains()
    plan = fields.String(load_default="standard", validate=validate.Length(min=1, max=50))
    admin_email = fields.Email(required=True, validate=validate.Length(max=254))
    admin_name = fields.String(validate=validate.Length(min=1, max=200))
    admin_password = fields.String(load_only=True, validate=validate.Length(min=12, max=200))

    @validates("domains")
    def _unique_domains(self, value: list[str], **kwargs) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("domains must not repeat")


class TenantUpdateSchema(InputSchema):
    name = fields.String(validate=validate.Length(min=1, max=200))
    domains = Domains()
    plan = fields.String(validate=validate.Length(min=1, max=50))


class TenantSchema(Schema):
    id = fields.String()
    name = fields.String()
    domains = fields.List(fields.String())
    status = fields.Enum(TenantStatus, by_value=True)
    plan = fields.String()
    server = fields.String(attribute="server_name", allow_none=True)
    database = fields.String(attribute="database_name")
    schema_revision = fields.String(allow_none=True)
    created_at = fields.DateTime()
    updated_at = fields.DateTime()
    last_backup_at = fields.DateTime(allow_none=True)
    rpo_hours = fields.Integer(allow_none=True, metadata={
        "description": "the tenant's RPO in hours (its policy's, else its plan's, else 24); in reads (GET)"})


class TenantQuerySchema(InputSchema):
    status = fields.Enum(TenantStatus, by_value=True)
    server = fields.String(validate=validate.Length(max=63))
    q = fields.String(validate=validate.Length(min=1, max=100))
    backup_stale = fields.Boolean(metadata={"description": "true: tenants with data (active, suspended, busy) "
                                                           "whose newest backup is older than their RPO (rpo_hours)"})


class DeleteQuerySchema(InputSchema):
    final_backup = fields.Boolean(load_default=True)
    purge = fields.Boolean(load_default=False)


class MigrateSchema(InputSchema):
    target = fields.String(load_default="head", validate=validate.Length(min=1, max=64))


class MoveSchema(InputSchema):
    server = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z0-9-]{0,62}$"))
    mode = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(["online", "offline"]))


class OperationSchema(TenantAdminView, Schema):
    id = fields.String()
    kind = fields.Enum(OperationKind, by_value=True)
    tenant_id = fields.String(allow_none=True)
    status = fields.Enum(OperationStatus, by_value=True)
    progress = fields.Integer()
    step = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    attempts = fields.Integer()
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    cancel_requested_at = fields.DateTime(allow_none=True)
    result = fields.Dict(allow_none=True)


class OperationQuerySchema(InputSchema):
    tenant_id = fields.String(validate=validate.Length(max=40))
    status = fields.Enum(OperationStatus, by_value=True)
    kind = fields.Enum(OperationKind, by_value=True)


class ServerCreateSchema(InputSchema):
    name = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z0-9-]{0,62}$"))
    admin_url = fields.String(required=True, load_only=True, validate=validate.Length(max=1000))
    max_tenants = fields.Integer(validate=validate.Range(min=1, max=2**31 - 1), allow_none=True)
    max_size_bytes = fields.Integer(validate=validate.Range(min=1, max=2**63 - 1), allow_none=True)


class ServerUpdateSchema(InputSchema):
    max_tenants = fields.Integer(validate=validate.Range(min=1, max=2**31 - 1), allow_none=True)
    max_size_bytes = fields.Integer(validate=validate.Range(min=1, max=2**63 - 1), allow_none=True)


class ServerSchema(Schema):
    name = fields.String()
    host = fields.String()
    port = fields.Integer()
    status = fields.String(metadata={"enum": ["active", "draining", "unreachable"]})
    max_tenants = fields.Integer(allow_none=True)
    max_size_bytes = fields.Integer(allow_none=True)
    max_connections = fields.Integer(allow_none=True)
    tenants = fields.Integer()
    database_bytes = fields.Integer(allow_none=True)
    connections = fields.Integer(allow_none=True)
    headroom = fields.Float()
    checked_at = fields.DateTime(allow_none=True)
    check_error = fields.String(allow_none=True)
    created_at = fields.DateTime()


class DrainSchema(InputSchema):
    draining = fields.Boolean(load_default=True)
    # false: only stop placing new tenants on the server (its tenants stay).
    move_tenants = fields.Boolean(load_default=True)
    concurrency = fields.Integer(load_default=3, validate=validate.Range(min=1, max=50))
    mode = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(["online", "offline"]))


class DrainItemSchema(Schema):
    tenant_id = fields.String()
    status = fields.Enum(DrainItemStatus, by_value=True)
    operation_id = fields.String(allow_none=True)
    target_server = fields.String(allow_none=True)
    error = fields.String(allow_none=True)


class DrainRunSchema(Schema):
    id = fields.String()
    server = fields.String(attribute="server_name")
    mode = fields.String(allow_none=True)
    concurrency = fields.Integer()
    status = fields.Enum(DrainStatus, by_value=True)
    error = fields.String(allow_none=True)
    counts = fields.Method("_counts")
    items = fields.List(fields.Nested(DrainItemSchema))
    created_at = fields.DateTime()
    finished_at = fields.DateTime(allow_none=True)

    def _counts(self, run) -> dict:
        return run.counts()

