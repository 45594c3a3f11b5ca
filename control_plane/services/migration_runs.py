"""Bulk migration runs as the API and CLI see them: start (or dry-run), read, list, resume, cancel."""
from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import tenant_migrations
from control_plane.catalog.db import get_or_raise, transaction
from control_plane.catalog.migration_run_models import (MigrationRun, MigrationRunItem, MigrationRunStatus,
                                                        RunItemStatus, RunKind)
from control_plane.catalog.models import Tenant, TenantStatus, utcnow
from control_plane.errors import (IdempotencyKeyReusedError, IllegalTransitionError, MigrationRunNotFoundError,
                                  ValidationError)
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services import migration_waves as waves
from control_plane.services.migration_dispatch import (advance, enqueue, lock_run, recover_abandoned,
                                                       requeue_lost)
from control_plane.services.migration_gates import proceed
from control_plane.services.migration_rollback import plan as rollback_plan
from control_plane.services.migration_waves import Wave
from control_plane.services.operation_requests import is_replay

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 256
MAX_CHECK_TIMEOUT_SECONDS = 300
# A resume re-enqueues queued items whose RQ job is gone; younger claims are left to their own job.
RESUME_LOST_AFTER = timedelta(seconds=5)


@dataclass(frozen=True)
class RunRequest:
    target: str = "head"
    tenants: tuple[str, ...] | None = None
    statuses: tuple[TenantStatus, ...] | None = None
    concurrency: int = 4
    canary: int = 0
    max_failures: int = 0
    # None: back each tenant up first exactly when the run's path crosses a destructive revision.
    backup_first: bool | None = None
    dry_run: bool = False
    lock_timeout_seconds: float = 5.0
    statement_timeout_seconds: float = 600.0
    waves: tuple[Wave, ...] | None = None
    check: str | None = None  # the health check between waves: SQL that must return 0 on each migrated tenant
    check_timeout_seconds: float = 5.0
    rollback_on_failure: bool = False

    def fingerprint(self) -> str:
        body = {**self.__dict__, "statuses": [s.value for s in self.statuses] if self.statuses else None,
                "waves": [w.as_dict() for w in self.waves] if self.waves is not None else None}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()


@dataclass
class RunDetail:
    run: MigrationRun
    items: list[MigrationRunItem]
    peak_concurrency: int
    waves: list[dict[str, Any]] = field(default_factory=list)


def _validate(ctx: ServiceContext, request: RunRequest) -> str:
    """The resolved target revision; 422 naming the field for anything a run cannot do."""
    if request.target == tenant_migrations.BASE:
        raise ValidationError("target", "a run cannot take tenants to base (that drops every table); "
                                        "migrate single tenants for that")
    try:
        target_revision = tenant_migrations.resolve_target(request.target)
    except ValueError as exc:
        raise ValidationError("target", str(exc)) from exc
    if not 1 <= request.concurrency <= MAX_CONCURRENCY:
        raise ValidationError("concurrency", f"must be between 1 and {MAX_CONCURRENCY}")
    if request.canary < 0 or request.max_failures < 0:
        raise ValidationError("canary" if request.canary < 0 else "max_failures", "must not be negative")
    if not 0.1 <= request.check_timeout_seconds <= MAX_CHECK_TIMEOUT_SECONDS:
        raise ValidationError("check_timeout_seconds", f"must be between 0.1 and {MAX_CHECK_TIMEOUT_SECONDS}")
    waves.validate(list(request.waves) if request.waves is not None else None, request.check, request.canary)
    return target_revision


def _destructive_path(tenants: list[Tenant], target_revision: str) -> list[str]:
    """The destructive revisions (see tenant_migrations.destructive_revisions) any active tenant would cross."""
    crossed: set[str] = set()
    for from_revision in {t.schema_revision for t in tenants if t.status is TenantStatus.ACTIVE}:
        try:
            crossed.update(tenant_migrations.destructive_revisions(from_revision, target_revision))
        except ValueError:  # a revision this code does not know: that tenant's migration fails and says so
            continue
    known = tenant_migrations.known_revisions()
    return sorted(crossed, key=known.index)


def _backup_first(ctx: ServiceContext, request: RunRequest, destructive: list[str]) -> bool:
    """As asked, else on exactly when the path crosses a destructive revision; 422 if no backups feature."""
    backup_first = request.backup_first if request.backup_first is not None else bool(destructive)
    if backup_first and not request.dry_run and ctx.pre_migration_backup is None:
        why = ("this deployment has no backups feature to take the backups with" if request.backup_first else
               f"the run crosses destructive revision(s) {', '.join(destructive)} and this deployment has no "
               "backups feature: pass backup_first: false to migrate without backups")
        raise ValidationError("backup_first", why)
    return backup_first


def _select_tenants(session: Session, request: RunRequest) -> list[Tenant]:
    """The run's tenants, in run order: the order given, else by id. Deleted ones only when named."""
    query = select(Tenant)
    if request.tenants is not None:
        wanted = list(dict.fromkeys(request.tenants))
        found = {t.id: t for t in session.scalars(query.where(Tenant.id.in_(wanted)))}
        missing = [tenant_id for tenant_id in wanted if tenant_id not in found]
        if missing:
            raise ValidationError("tenants", f"unknown tenants: {', '.join(missing[:20])}")
        selected = [found[tenant_id] for tenant_id in wanted]
    else:
        selected = list(session.scalars(query.where(Tenant.status != TenantStatus.DELETED).order_by(Tenant.id)))
    if request.statuses:
        selected = [t for t in selected if t.status in request.statuses]
    return selected


def _find_replay(session: Session, principal: Principal, key: str | None, fingerprint: str) -> MigrationRun | None:
    if not key:
        return None
    earlier = session.scalars(select(MigrationRun).where(MigrationRun.requested_by == principal.token_id,
                                                         MigrationRun.idempotency_key == key)).one_or_none()
    if earlier is not None and earlier.request_fingerprint != fingerprint:
        raise IdempotencyKeyReusedError(key)
    return earlier


def dry_run_plan(tenants: list[Tenant], target_revision: str) -> dict[str, Any]:
    """Per distinct starting revision (as the catalog records it), the tenants and the SQL Alembic would run.

    Touches no tenant database: the revisions come from the catalog (check them with the drift report).
    """
    groups: dict[str | None, list[str]] = defaultdict(list)
    skipped = []
    for tenant in tenants:
        if tenant.status is TenantStatus.ACTIVE:
            groups[tenant.schema_revision].append(tenant.id)
        else:
            skipped.append({"tenant_id": tenant.id, "reason": f"tenant is {tenant.status.value}"})
    plan = []
    for from_revision in sorted(groups, key=lambda r: (r is None, r or "")):
        entry: dict[str, Any] = {"from_revision": from_revision, "to_revision": target_revision,
                                 "tenants": groups[from_revision]}
        try:
            entry["sql"] = tenant_migrations.offline_sql(from_revision, target_revision)
        except ValueError as exc:  # a revision this code does not know
            entry["sql"], entry["error"] = None, str(exc)
        plan.append(entry)
    return {"plan": plan, "skipped": skipped}


def request_run(ctx: ServiceContext, principal: Principal, request: RunRequest,
                idempotency_key: str | None = None) -> MigrationRun:
    """Record the run and its items in one transaction, claim the first wave, then enqueue it."""
    principal.require_super_admin()
    target_revision = _validate(ctx, request)
    fingerprint = request.fingerprint()
    try:
        with transaction(ctx.sessions) as session:
            replay = _find_replay(session, principal, idempotency_key, fingerprint)
            if replay is not None:
                return replay
            tenants = _select_tenants(session, request)
            destructive = _destructive_path(tenants, target_revision)
            backup_first = _backup_first(ctx, request, destructive)
            run = MigrationRun(
                target=request.target, target_revision=target_revision,
                selection={"tenants": list(request.tenants) if request.tenants is not None else None,
                           "statuses": [s.value for s in request.statuses] if request.statuses else None},
                concurrency=request.concurrency, canary=request.canary, max_failures=request.max_failures,
                backup_first=backup_first, dry_run=request.dry_run,
                lock_timeout_ms=int(request.lock_timeout_seconds * 1000),
                statement_timeout_ms=int(request.statement_timeout_seconds * 1000),
                waves=_wave_entries(request), health_check=request.check,
                check_timeout_ms=int(request.check_timeout_seconds * 1000), current_wave=0,
                wave_status=waves.RUNNING, rollback_on_failure=request.rollback_on_failure,
                status=MigrationRunStatus.QUEUED, requested_by=principal.token_id, actor=principal.actor,
                idempotency_key=idempotency_key, request_fingerprint=fingerprint)
            session.add(run)
            session.flush()
            claims: list[tuple[str, int]] = []
            if destructive:
                run.result = {"destructive_revisions": destructive}
            if request.dry_run:
                run.result = {**(run.result or {}), **dry_run_plan(tenants, target_revision)}
                run.start()
                run.finish()
            else:
                _add_items(session, run, tenants)
                session.flush()
                run.start()
                claims = advance(session, run)
            audit.record(session, principal.actor, "migration_run.requested", run_id=run.id, target=run.target,
                         target_revision=target_revision, tenants=run.total, concurrency=run.concurrency,
                         canary=run.canary, max_failures=run.max_failures, dry_run=run.dry_run,
                         backup_first=run.backup_first, destructive_revisions=destructive, waves=run.waves,
                         check=run.health_check, rollback_on_failure=run.rollback_on_failure)
    except IntegrityError:
        # A concurrent request with the same Idempotency-Key won the race.
        with ctx.sessions() as session:
            replay = _find_replay(session, principal, idempotency_key, fingerprint)
        if replay is None:
            raise
        return replay
    enqueue(ctx, claims)
    proceed(ctx, run.id)  # a first wave with nothing to migrate may already be at its health check
    log.info("migration run %s to %s: %d tenants, concurrency %d, canary %d, max_failures %d, %d wave(s)", run.id,
             target_revision, run.total, run.concurrency, run.canary, run.max_failures, len(run.waves or [None]))
    return run


def _wave_entries(request: RunRequest) -> list[dict[str, Any]] | None:
    """The run's waves as stored: as requested, the canary's two, or None (one wave of every tenant)."""
    if request.waves is not None:
        return [wave.as_dict() for wave in request.waves]
    if request.canary:
        return [wave.as_dict() for wave in waves.canary_waves(request.canary, request.max_failures)]
    return None


def _add_items(session: Session, run: MigrationRun, tenants: list[Tenant]) -> None:
    active = {t.id for t in tenants if t.status is TenantStatus.ACTIVE}
    if run.canary:
        # The first `canary` active tenants are the first wave (as before waves existed).
        canaries = set([t.id for t in tenants if t.id in active][:run.canary])
        numbers = [0 if t.id in canaries else 1 for t in tenants]
    else:
        numbers = waves.assign(waves.specs(run) if run.waves else None, [t.id for t in tenants], active)
    for position, (tenant, wave) in enumerate(zip(tenants, numbers)):
        item = MigrationRunItem(run_id=run.id, tenant_id=tenant.id, position=position, status=RunItemStatus.PENDING,
                                canary=bool(run.canary) and wave == 0, attempts=0, dispatch_token=0, wave=wave)
        if tenant.status is not TenantStatus.ACTIVE:
            item.skip(f"tenant is {tenant.status.value}")
        session.add(item)


def _load(session: Session, run_id: str) -> MigrationRun:
    return get_or_raise(session, MigrationRun, run_id, MigrationRunNotFoundError)


def peak_concurrency(items: list[MigrationRunItem], now: datetime | None = None) -> int:
    """The most items that were running at the same moment, from their start and end times."""
    now = now or utcnow()
    events = []
    for item in items:
        if item.started_at is not None and item.status is not RunItemStatus.SKIPPED:
            events.append((item.started_at, 1))
            events.append((item.finished_at or now, -1))
    peak = current = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        current += step
        peak = max(peak, current)
    return peak


def get_run(ctx: ServiceContext, principal: Principal, run_id: str,
            item_status: RunItemStatus | None = None) -> RunDetail:
    principal.require_super_admin()
    with ctx.sessions() as session:
        run = _load(session, run_id)
        items = list(session.scalars(select(MigrationRunItem).where(MigrationRunItem.run_id == run_id)
                                     .order_by(MigrationRunItem.position)))
    shown = [item for item in items if item_status is None or item.status is item_status]
    return RunDetail(run=run, items=shown, peak_concurrency=peak_concurrency(items),
                     waves=wave_progress(run, items))


def _wave_status(run: MigrationRun, index: int, gate: dict[str, Any] | None) -> str:
    if index == run.current_wave and run.status is MigrationRunStatus.RUNNING and not run.stopping \
            and run.wave_status != waves.DONE:
        return run.wave_status or waves.RUNNING
    if gate:
        return "passed" if gate.get("passed") else "failed"
    if index < run.current_wave:
        return "passed"
    if index > run.current_wave:
        return "not started"
    if run.stopped_by:
        return "failed"
    return "cancelled" if run.status is MigrationRunStatus.CANCELLED else run.status.value


def wave_progress(run: MigrationRun, items: list[MigrationRunItem]) -> list[dict[str, Any]]:
    """Per wave: what it is (its spec), where it is (status), its items per status, its gate's outcome."""
    entries = run.waves or [waves.Wave(percent=100).as_dict()]
    progress = []
    for index, entry in enumerate(entries):
        counts = {status.value: 0 for status in RunItemStatus}
        for item in items:
            if item.wave == index:
                counts[item.status.value] += 1
        spec = {key: value for key, value in entry.items() if key != "gate"}
        progress.append({"number": index + 1, "spec": spec, "status": _wave_status(run, index, entry.get("gate")),
                         "total": sum(counts.values()), "counts": counts, "gate": entry.get("gate"),
                         "ready_at": run.wave_ready_at if index == run.current_wave else None})
    return progress


def list_runs(ctx: ServiceContext, principal: Principal, *, status: MigrationRunStatus | None = None,
              offset: int = 0, limit: int = 50) -> tuple[list[MigrationRun], int]:
    principal.require_super_admin()
    query = select(MigrationRun)
    if status:
        query = query.where(MigrationRun.status == status)
    with ctx.sessions() as session:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(MigrationRun.created_at.desc(), MigrationRun.id)
                               .offset(offset).limit(limit)).all()
        return list(rows), total


def resume_run(ctx: ServiceContext, principal: Principal, run_id: str,
               idempotency_key: str | None = None) -> MigrationRun:
    """Re-queue failed and pending items (and those a dead worker left running), then go on as before.

    Safe to repeat: a second resume finds nothing more to re-queue and leaves running items alone.
    """
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        run = _load(session, run_id)
        if is_replay(session, principal, idempotency_key, "resume", run_id):
            return run
        run.check_resumable()  # before anything is touched
    recover_abandoned(ctx, run_id=run_id, retry=True, reason="its worker was gone at resume")
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        run.resume()
        if run.wave_status in (waves.FAILED, waves.DONE):
            run.wave_status = waves.RUNNING  # its failed tenants go again, then the wave is gated again
        failed = session.scalars(select(MigrationRunItem).where(MigrationRunItem.run_id == run_id,
                                                                MigrationRunItem.status == RunItemStatus.FAILED)
                                 .with_for_update()).all()
        for item in failed:
            item.retry()
        audit.record(session, principal.actor, "migration_run.resumed", run_id=run_id, retried=len(failed))
        claims = advance(session, run)
    enqueue(ctx, claims)
    requeue_lost(ctx, run_id, older_than=RESUME_LOST_AFTER)
    proceed(ctx, run_id)
    log.info("migration run %s resumed: %d failed items re-queued", run_id, len(failed))
    return run


def continue_run(ctx: ServiceContext, principal: Principal, run_id: str,
                 idempotency_key: str | None = None) -> MigrationRun:
    """End the pause after the current wave now (a manual pause, or a timed one early): the next wave starts."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        if is_replay(session, principal, idempotency_key, "continue", run_id):
            return run
        if run.status is not MigrationRunStatus.RUNNING or run.wave_status != waves.WAITING:
            state = run.status.value if run.status is not MigrationRunStatus.RUNNING else \
                f"at wave {run.current_wave + 1} ({run.wave_status}), not paused"
            raise IllegalTransitionError("migration run", run_id, state, "continue")
        waves.open_next(run)
        audit.record(session, principal.actor, "migration_run.continued", run_id=run_id, wave=run.current_wave + 1)
        claims = advance(session, run)
    enqueue(ctx, claims)
    proceed(ctx, run_id)
    log.info("migration run %s: wave %d started by %s", run_id, run.current_wave + 1, principal.actor)
    return run


def rollback_run(ctx: ServiceContext, principal: Principal, run_id: str,
                 idempotency_key: str | None = None) -> MigrationRun:
    """Start the rollback run of an ended, failed or cancelled run: every tenant it moved goes back (see
    services.migration_rollback). Returns the rollback run; 409 once a rollback exists (resume that)."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        if is_replay(session, principal, idempotency_key, "rollback", run_id):
            return _load(session, run.rolled_back_by) if run.rolled_back_by else run
        if run.kind != RunKind.MIGRATE or run.dry_run:
            raise IllegalTransitionError("migration run", run_id, "a rollback run" if run.kind != RunKind.MIGRATE
                                         else "a dry run", "roll back")
        if run.rolled_back_by:
            raise IllegalTransitionError("migration run", run_id, f"rolled back by run {run.rolled_back_by}",
                                         "roll back again (resume that run)")
        ended = run.status is MigrationRunStatus.FAILED or (
            run.status is MigrationRunStatus.CANCELLED and run.finished_at is not None)
        if not ended:
            raise IllegalTransitionError("migration run", run_id, run.status.value if run.status.finished
                                         else f"{run.status.value} (cancel it and let it end first)", "roll back")
        rollback = rollback_plan(session, run, principal.actor)
        claims = advance(session, rollback)
    enqueue(ctx, claims)
    return rollback


def cancel_run(ctx: ServiceContext, principal: Principal, run_id: str,
               idempotency_key: str | None = None) -> MigrationRun:
    """No new item starts; running ones finish and are recorded. Cancelling twice is a no-op."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        if is_replay(session, principal, idempotency_key, "cancel", run_id):
            return run
        already = run.status is MigrationRunStatus.CANCELLED
        run.cancel()
        if not already:
            queued = session.scalars(select(MigrationRunItem).where(MigrationRunItem.run_id == run_id,
                                                                    MigrationRunItem.status == RunItemStatus.QUEUED)
                                     .with_for_update()).all()
            for item in queued:
                item.release()  # its job, when it runs, finds the item no longer queued and returns
            audit.record(session, principal.actor, "migration_run.cancelled", run_id=run_id, released=len(queued))
        advance(session, run)
    return run
