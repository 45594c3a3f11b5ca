"""Catalog tables of bulk migration runs: one row per run, one per tenant in it, and their transitions.

The run row is the dispatcher's source of truth: every change to an item's status happens with the
run row locked (SELECT ... FOR UPDATE), so counts, the concurrency limit and the stop rules are
decided by one writer at a time whatever the number of workers.
"""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.catalog.models import Base, _enum, _json, new_id, utcnow
from control_plane.errors import IllegalTransitionError


class MigrationRunStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (MigrationRunStatus.SUCCEEDED, MigrationRunStatus.FAILED)


class RunItemStatus(str, enum.Enum):
    PENDING = "pending"
    QUEUED = "queued"  # claimed by the dispatcher and handed to RQ; counts against the concurrency limit
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def in_flight(self) -> bool:
        return self in (RunItemStatus.QUEUED, RunItemStatus.RUNNING)

    @property
    def finished(self) -> bool:
        return self in (RunItemStatus.SUCCEEDED, RunItemStatus.FAILED, RunItemStatus.SKIPPED)


class RunKind(str, enum.Enum):
    MIGRATE = "migrate"
    ROLLBACK = "rollback"


class RollbackMethod(str, enum.Enum):
    DOWNGRADE = "downgrade"  # Alembic downgrade to the item's target revision
    RESTORE = "restore"      # restore of the tenant's pre-migration backup (the RESTORE kind, in place)


class MigrationRun(Base):
    __tablename__ = "migration_runs"
    __table_args__ = (UniqueConstraint("requested_by", "idempotency_key", name="uq_migration_runs_idempotency"),
                      Index("uq_migration_runs_rollback_of", "rollback_of", unique=True))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    target: Mapped[str] = mapped_column(String(64))  # as requested ("head" or a revision)
    # Resolved when the run is created, so "head" means the same revision for the whole run and its resumes.
    target_revision: Mapped[str] = mapped_column(String(64))
    selection: Mapped[dict[str, Any]] = mapped_column(_json, default=dict)  # {"tenants": [...], "statuses": [...]}
    concurrency: Mapped[int] = mapped_column(Integer)
    canary: Mapped[int] = mapped_column(Integer, default=0)
    max_failures: Mapped[int] = mapped_column(Integer, default=0)
    backup_first: Mapped[bool] = mapped_column(Boolean, default=False)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    lock_timeout_ms: Mapped[int] = mapped_column(Integer)
    statement_timeout_ms: Mapped[int] = mapped_column(Integer)
    status: Mapped[MigrationRunStatus] = mapped_column(_enum(MigrationRunStatus, "migration_run_status"), index=True,
                                                       default=MigrationRunStatus.QUEUED)
    # Why the run stopped starting items (canary failed, failure budget spent) or why it failed.
    error: Mapped[str | None] = mapped_column(Text)
    # Dry run: the SQL per starting revision. Otherwise what happened around the run (template rebuilds).
    result: Mapped[dict[str, Any] | None] = mapped_column(_json)
    total: Mapped[int] = mapped_column(Integer, default=0)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    queued: Mapped[int] = mapped_column(Integer, default=0)
    running: Mapped[int] = mapped_column(Integer, default=0)
    succeeded: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str | None] = mapped_column(String(100))  # token id
    actor: Mapped[str | None] = mapped_column(String(200))
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # "migrate", or "rollback": a run whose items bring back the tenants another run (rollback_of) moved.
    kind: Mapped[str] = mapped_column(String(16), default=RunKind.MIGRATE, server_default=RunKind.MIGRATE)
    rollback_of: Mapped[str | None] = mapped_column(ForeignKey("migration_runs.id", ondelete="CASCADE",
                                                               name="fk_migration_runs_rollback_of"))
    # The waves as requested (see services.migration_waves), each with its gate outcome once decided;
    # None: one wave of every tenant.
    waves: Mapped[list[dict[str, Any]] | None] = mapped_column(_json)
    health_check: Mapped[str | None] = mapped_column(Text)  # SQL that must return 0 on every migrated tenant
    check_timeout_ms: Mapped[int] = mapped_column(Integer, default=5000, server_default="5000")
    current_wave: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # running (its items start), gating (its health check is being run), waiting (paused before the next)
    wave_status: Mapped[str | None] = mapped_column(String(16))
    wave_ready_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # end of a timed pause
    stopped_by: Mapped[str | None] = mapped_column(String(16))  # canary, budget, gate: why no item starts
    rollback_on_failure: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    items: Mapped[list["MigrationRunItem"]] = relationship(
        back_populates="run", cascade="all, delete-orphan", order_by="MigrationRunItem.position", lazy="raise")

    COUNTED = ("pending", "queued", "running", "succeeded", "failed", "skipped")

    @property
    def counts(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.COUNTED}

    def set_counts(self, counts: dict[RunItemStatus, int]) -> None:
        for status in RunItemStatus:
            setattr(self, status.value, counts.get(status, 0))
        self.total = sum(counts.values())

    @property
    def rolled_back_by(self) -> str | None:
        """The rollback run started for this run, if any (it is recorded in the run's result)."""
        return (self.result or {}).get("rollback_run_id")

    @property
    def stopping(self) -> bool:
        """Running, but no new item may start (canary failed or failure budget spent)."""
        return self.status is MigrationRunStatus.RUNNING and self.error is not None

    def start(self) -> None:
        if self.status is not MigrationRunStatus.QUEUED:
            raise IllegalTransitionError("migration run", self.id, self.status.value, "start")
        self.status = MigrationRunStatus.RUNNING
        self.started_at = utcnow()

    def stop(self, reason: str, by: str | None = None) -> None:
        if self.status is not MigrationRunStatus.RUNNING:
            raise IllegalTransitionError("migration run", self.id, self.status.value, "stop")
        self.error = reason
        self.stopped_by = by

    def finish(self) -> None:
        """End a running run once nothing is in flight: failed if any item failed or could not start."""
        if self.status is not MigrationRunStatus.RUNNING:
            raise IllegalTransitionError("migration run", self.id, self.status.value, "finish")
        if self.failed or self.pending or self.error:
            self.status = MigrationRunStatus.FAILED
            if self.error is None:
                self.error = f"{self.failed} tenant(s) failed (failure budget {self.max_failures})"
        else:
            self.status = MigrationRunStatus.SUCCEEDED
        self.finished_at = utcnow()

    def cancel(self) -> None:
        if self.status not in (MigrationRunStatus.QUEUED, MigrationRunStatus.RUNNING, MigrationRunStatus.CANCELLED):
            raise IllegalTransitionError("migration run", self.id, self.status.value, "cancel")
        if self.status is not MigrationRunStatus.CANCELLED:
            self.status = MigrationRunStatus.CANCELLED
            self.cancelled_at = utcnow()

    def check_resumable(self) -> None:
        if self.rolled_back_by:
            raise IllegalTransitionError("migration run", self.id, f"rolled back by run {self.rolled_back_by}",
                                         "resume")
        if self.dry_run or self.status is MigrationRunStatus.SUCCEEDED:
            raise IllegalTransitionError("migration run", self.id,
                                         "a dry run" if self.dry_run else self.status.value, "resume")

    def resume(self) -> None:
        self.check_resumable()
        self.status = MigrationRunStatus.RUNNING
        self.started_at = self.started_at or utcnow()
        self.error = None
        self.stopped_by = None
        self.finished_at = None
        self.cancelled_at = None


class MigrationRunItem(Base):
    __tablename__ = "migration_run_items"
    __table_args__ = (UniqueConstraint("run_id", "tenant_id", name="uq_migration_run_items_tenant"),
                      Index("ix_migration_run_items_run_status", "run_id", "status"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("migration_runs.id", ondelete="CASCADE"))
    # No foreign key to tenants: the run is an audit record that outlives whatever happens to the tenant row.
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    position: Mapped[int] = mapped_column(Integer)
    canary: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[RunItemStatus] = mapped_column(_enum(RunItemStatus, "migration_run_item_status"),
                                                  default=RunItemStatus.PENDING)
    from_revision: Mapped[str | None] = mapped_column(String(64))
    to_revision: Mapped[str | None] = mapped_column(String(64))  # the revision the database is at afterwards
    error: Mapped[str | None] = mapped_column(Text)
    skip_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Incremented at every claim; the RQ job carries it, so a stale job (cancelled, re-claimed) does nothing.
    dispatch_token: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(String(200))
    backup: Mapped[dict[str, Any] | None] = mapped_column(_json)
    wave: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Rollback items: the revision to bring the tenant back to, how, and the RESTORE operation doing it.
    target_revision: Mapped[str | None] = mapped_column(String(64))
    rollback_method: Mapped[str | None] = mapped_column(String(16))
    operation_id: Mapped[str | None] = mapped_column(String(36))
    check_result: Mapped[dict[str, Any] | None] = mapped_column(_json)  # the wave's health check on this tenant
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    duration_seconds: Mapped[float | None] = mapped_column(Float)

    run: Mapped[MigrationRun] = relationship(back_populates="items", lazy="raise")

    def _illegal(self, action: str) -> IllegalTransitionError:
        return IllegalTransitionError("migration run item", self.id, self.status.value, action)

    def claim(self) -> int:
        if self.status is not RunItemStatus.PENDING:
            raise self._illegal("claim")
        self.status = RunItemStatus.QUEUED
        self.dispatch_token += 1
        self.queued_at = utcnow()
        return self.dispatch_token

    def release(self) -> None:
        """Back to pending without having started (the run was cancelled or stopped while it was queued)."""
        if self.status is not RunItemStatus.QUEUED:
            raise self._illegal("release")
        self.status = RunItemStatus.PENDING
        self.queued_at = None

    def begin(self, worker: str) -> None:
        if self.status is not RunItemStatus.QUEUED:
            raise self._illegal("start")
        self.status = RunItemStatus.RUNNING
        self.attempts += 1
        self.worker = worker
        self.started_at = utcnow()
        self.finished_at = None
        self.duration_seconds = None
        self.error = None

    def _end(self, status: RunItemStatus) -> None:
        self.status = status
        self.finished_at = utcnow()
        if self.started_at is not None and status is not RunItemStatus.SKIPPED:
            self.duration_seconds = (self.finished_at - self.started_at).total_seconds()

    def succeed(self, from_revision: str | None, to_revision: str | None) -> None:
        if self.status is not RunItemStatus.RUNNING:
            raise self._illegal("succeed")
        self.from_revision, self.to_revision = from_revision, to_revision
        self._end(RunItemStatus.SUCCEEDED)

    def fail(self, error: str, from_revision: str | None = None, reached_revision: str | None = None) -> None:
        if self.status not in (RunItemStatus.QUEUED, RunItemStatus.RUNNING):
            raise self._illegal("fail")
        self.error = error
        self.from_revision = from_revision or self.from_revision
        self.to_revision = reached_revision
        self._end(RunItemStatus.FAILED)

    def refuse(self, reason: str) -> None:
        """Failed without being started: what it would do cannot be done (a rollback with no way back)."""
        if self.status is not RunItemStatus.PENDING:
            raise self._illegal("refuse")
        self.error = reason
        self._end(RunItemStatus.FAILED)

    def skip(self, reason: str) -> None:
        """Left alone: not migratable (pending or queued), or its pre-migration backup failed (running)."""
        if self.status not in (RunItemStatus.PENDING, RunItemStatus.QUEUED, RunItemStatus.RUNNING):
            raise self._illegal("skip")
        self.skip_reason = reason
        self._end(RunItemStatus.SKIPPED)

    def retry(self) -> None:
        """A failed item, or a running one whose worker is gone, goes back to pending (resume)."""
        if self.status not in (RunItemStatus.FAILED, RunItemStatus.RUNNING):
            raise self._illegal("retry")
        self.status = RunItemStatus.PENDING
        self.queued_at = None
