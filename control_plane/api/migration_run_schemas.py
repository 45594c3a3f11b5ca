"""Request and response schemas of bulk migration runs and the drift report."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates

from control_plane.api.input import InputSchema
from control_plane.catalog.migration_run_models import MigrationRunStatus, RunItemStatus
from control_plane.catalog.models import TenantStatus
from control_plane.naming import tenant_id_problem
from control_plane.services.migration_runs import MAX_CONCURRENCY, RunDetail


def _validate_tenant_id(value: str) -> None:
    problem = tenant_id_problem(value)
    if problem:
        raise ValidationError(f"{value[:40]!r} {problem}")


MAX_RUN_TENANTS = 100_000  # tenants one run may name; canary and max_failures cannot exceed it either


class RunCreateSchema(InputSchema):
    target = fields.String(load_default="head", validate=validate.Length(min=1, max=64))
    tenants = fields.List(fields.String(validate=[validate.Length(max=40), _validate_tenant_id]),
                          validate=validate.Length(min=1, max=MAX_RUN_TENANTS))
    statuses = fields.List(fields.Enum(TenantStatus, by_value=True), validate=validate.Length(min=1, max=20))
    concurrency = fields.Integer(load_default=4, validate=validate.Range(min=1, max=MAX_CONCURRENCY))
    canary = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_RUN_TENANTS))
    max_failures = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_RUN_TENANTS))
    # Omitted or null: on exactly when the run crosses a revision declared destructive.
    backup_first = fields.Boolean(load_default=None, allow_none=True)
    dry_run = fields.Boolean(load_default=False)
    lock_timeout_seconds = fields.Float(load_default=5.0, validate=validate.Range(min=0.01, max=3600))
    statement_timeout_seconds = fields.Float(load_default=600.0, validate=validate.Range(min=0.1, max=86400))

    @validates("tenants")
    def _unique(self, value: list[str], **kwargs) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("tenants must not repeat")


class RunQuerySchema(InputSchema):
    status = fields.Enum(MigrationRunStatus, by_value=True)


class RunItemQuerySchema(InputSchema):
    status = fields.Enum(RunItemStatus, by_value=True, metadata={"description": "Show only items in this status"})


class CountsSchema(Schema):
    total = fields.Integer()
    pending = fields.Integer()
    queued = fields.Integer()
    running = fields.Integer()
    succeeded = fields.Integer()
    failed = fields.Integer()
    skipped = fields.Integer()


class RunSchema(Schema):
    id = fields.String()
    status = fields.Enum(MigrationRunStatus, by_value=True)
    target = fields.String()
    target_revision = fields.String()
    selection = fields.Dict()
    concurrency = fields.Integer()
    canary = fields.Integer()
    max_failures = fields.Integer()
    backup_first = fields.Boolean()
    dry_run = fields.Boolean()
    lock_timeout_seconds = fields.Function(lambda run: run.lock_timeout_ms / 1000)
    statement_timeout_seconds = fields.Function(lambda run: run.statement_timeout_ms / 1000)
    counts = fields.Function(lambda run: {"total": run.total, **run.counts}, metadata={"type": "object"})
    error = fields.String(allow_none=True)
    result = fields.Dict(allow_none=True)
    requested_by = fields.String(attribute="actor", allow_none=True)
    created_at = fields.DateTime()
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    cancelled_at = fields.DateTime(allow_none=True)


class RunItemSchema(Schema):
    tenant_id = fields.String()
    position = fields.Integer()
    canary = fields.Boolean()
    status = fields.Enum(RunItemStatus, by_value=True)
    from_revision = fields.String(allow_none=True)
    to_revision = fields.String(allow_none=True)
    error = fields.String(allow_none=True)
    skip_reason = fields.String(allow_none=True)
    attempts = fields.Integer()
    worker = fields.String(allow_none=True)
    backup = fields.Dict(allow_none=True)
    queued_at = fields.DateTime(allow_none=True)
    started_at = fields.DateTime(allow_none=True)
    finished_at = fields.DateTime(allow_none=True)
    duration_seconds = fields.Float(allow_none=True)


class RunDetailView:
    """A run's attributes plus its (filtered) items and the observed peak concurrency, for RunDetailSchema."""

    def __init__(self, detail: RunDetail) -> None:
        self._run = detail.run
        self.items = detail.items
        self.peak_concurrency = detail.peak_concurrency

    def __getattr__(self, name: str):
        return getattr(self._run, name)


class RunDetailSchema(RunSchema):
    peak_concurrency = fields.Integer(metadata={"description": "Most tenants observed migrating at the same time"})
    items = fields.List(fields.Nested(RunItemSchema))


class DriftEntrySchema(Schema):
    tenant_id = fields.String()
    status = fields.String()
    server = fields.String(allow_none=True)
    catalog_revision = fields.String(allow_none=True)
    database_revision = fields.String(allow_none=True)
    problems = fields.List(fields.String(), metadata={
        "description": "catalog_mismatch, not_at_head, unknown_revision, no_revision, unreachable"})
    error = fields.String(allow_none=True)


class DriftSchema(Schema):
    head = fields.String()
    known_revisions = fields.List(fields.String())
    checked = fields.Integer()
    in_sync = fields.Integer()
    by_revision = fields.Dict(keys=fields.String(), values=fields.Integer())
    drifted = fields.List(fields.Nested(DriftEntrySchema))
