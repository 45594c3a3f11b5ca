"""Request and response schemas of bulk migration runs and the drift report."""
from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, validate, validates

from control_plane.api.input import InputSchema
from control_plane.catalog.migration_run_models import MigrationRunStatus, RunItemStatus
from control_plane.catalog.models import TenantStatus
from control_plane.naming import tenant_id_problem
from control_plane.services.migration_runs import MAX_CHECK_TIMEOUT_SECONDS, MAX_CONCURRENCY, RunDetail
from control_plane.services.migration_waves import MAX_CHECK_LENGTH, MAX_RUN_TENANTS, MAX_WAIT_SECONDS, MAX_WAVES


def _validate_tenant_id(value: str) -> None:
    problem = tenant_id_problem(value)
    if problem:
        raise ValidationError(f"{value[:40]!r} {problem}")


class WaveSchema(InputSchema):
    percent = fields.Integer(validate=validate.Range(min=1, max=100), metadata={
        "description": "Cumulative share of the run's tenants (not named in a wave) migrated by the end of this wave"})
    tenants = fields.List(fields.String(validate=[validate.Length(max=40), _validate_tenant_id]),
                          validate=validate.Length(min=1, max=MAX_RUN_TENANTS),
                          metadata={"description": "Or these tenants, by id"})
    max_failures = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=MAX_RUN_TENANTS),
                                  metadata={"description": "This wave's failure budget (default: the run's)"})
    max_error_rate = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1),
                                  metadata={"description": "Gate: failed / migrated in the wave at most this"})
    wait_seconds = fields.Integer(load_default=0, validate=validate.Range(min=0, max=MAX_WAIT_SECONDS),
                                  metadata={"description": "Pause after this wave's gate passed"})
    manual = fields.Boolean(load_default=False, metadata={
        "description": "Pause after this wave until POST /v1/migration-runs/<id>/continue"})


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
    waves = fields.List(fields.Nested(WaveSchema), validate=validate.Length(min=1, max=MAX_WAVES), metadata={
        "description": "Staged waves, e.g. [{percent: 1}, {percent: 10}, {percent: 100}]; percents increase, the "
                       "last is 100 (or explicit tenant lists cover the run)"})
    check = fields.String(validate=validate.Length(min=1, max=MAX_CHECK_LENGTH), metadata={
        "description": "Health check after each wave: SQL run read-only as each migrated tenant's role; must "
                       "return 0 on every one of them, else no later wave starts"})
    check_timeout_seconds = fields.Float(load_default=5.0, validate=validate.Range(
        min=0.1, max=MAX_CHECK_TIMEOUT_SECONDS))
    rollback_on_failure = fields.Boolean(load_default=False, metadata={
        "description": "When the run stops for a failure budget or a failed gate, roll back every tenant it moved"})

    @validates("tenants")
    def _unique(self, value: list[str], **kwargs) -> None:
        if len(set(value)) != len(value):
            raise ValidationError("tenants must not repeat")


class RunQuerySchema(InputSchema):
    status = fields.Enum(MigrationRunStatus, by_value=True)


class RunItemQuerySchema(InputSchema):
    status = fields.Enum(RunItemStatus, by_value=True, metadata={"description": "Show only items in this status"})


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
    kind = fields.String(metadata={"description": "migrate, or rollback (of the run `rollback_of`)"})
    rollback_of = fields.String(allow_none=True)
    rollback_run_id = fields.Function(lambda run: run.rolled_back_by, allow_none=True,
                                      metadata={"type": "string", "description": "The run rolling this one back"})
    waves = fields.Function(lambda run: [{k: v for k, v in w.items() if k != "gate"} for w in run.waves]
                            if run.waves else None, allow_none=True, metadata={"type": "array"})
    check = fields.String(attribute="health_check", allow_none=True)
    check_timeout_seconds = fields.Function(lambda run: run.check_timeout_ms / 1000)
    current_wave = fields.Function(lambda run: run.current_wave + 1, metadata={"type": "integer"})
    wave_status = fields.String(allow_none=True, metadata={
        "description": "running, gating (health check), waiting (paused before the next wave), done, failed"})
    wave_ready_at = fields.DateTime(allow_none=True, metadata={"description": "When a timed pause ends"})
    stopped_by = fields.String(allow_none=True, metadata={"description": "canary, budget or gate"})
    rollback_on_failure = fields.Boolean()


class WaveCountsSchema(Schema):
    pending = fields.Integer()
    queued = fields.Integer()
    running = fields.Integer()
    succeeded = fields.Integer()
    failed = fields.Integer()
    skipped = fields.Integer()


class WaveProgressSchema(Schema):
    number = fields.Integer()
    spec = fields.Dict()
    status = fields.String(metadata={"description": "running, gating, waiting, passed, failed, not started, ..."})
    total = fields.Integer()
    counts = fields.Nested(WaveCountsSchema)
    gate = fields.Dict(allow_none=True)
    ready_at = fields.DateTime(allow_none=True)


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
    wave = fields.Function(lambda item: item.wave + 1, metadata={"type": "integer"})
    target_revision = fields.String(allow_none=True)
    rollback_method = fields.String(allow_none=True)
    operation_id = fields.String(allow_none=True)
    check_result = fields.Dict(allow_none=True)


class RunDetailView:
    """A run's attributes plus its (filtered) items and the observed peak concurrency, for RunDetailSchema."""

    def __init__(self, detail: RunDetail) -> None:
        self._run = detail.run
        self.items = detail.items
        self.peak_concurrency = detail.peak_concurrency
        self.wave_progress = detail.waves

    def __getattr__(self, name: str):
        return getattr(self._run, name)


class RunDetailSchema(RunSchema):
    peak_concurrency = fields.Integer(metadata={"description": "Most tenants observed migrating at the same time"})
    wave_progress = fields.List(fields.Nested(WaveProgressSchema))
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
