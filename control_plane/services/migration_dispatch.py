"""The migration run dispatcher: which items start next, when a run stops or ends, and recovery of lost items.

There is no dispatcher process. Whoever changes an item's status (the request that creates or resumes a
run, the job that finishes an item, the recovery of a dead worker's item) does it with the run row
locked FOR UPDATE and, in the same transaction, calls `advance`, which claims as many pending items as
the concurrency limit allows. The claimed items are enqueued on RQ after the commit. So at most
`concurrency` items are queued or running at any time, across every worker, and each finishing item
starts the next.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.catalog.db import transaction
from control_plane.catalog.migration_run_models import MigrationRun, MigrationRunItem, MigrationRunStatus, RunItemStatus
from control_plane.catalog.models import Tenant, TenantStatus, utcnow
from control_plane.errors import DependencyUnavailableError, MigrationRunNotFoundError, TenantBusyError
from control_plane.services import audit
from control_plane.services import migration_rollback as rollback
from control_plane.services import migration_waves as waves
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)

Claims = list[tuple[str, int]]  # (item id, dispatch token): what to enqueue once the transaction committed

# A queued item with no RQ job behind it for this long was never enqueued, or its job was lost with Redis.
LOST_AFTER = timedelta(seconds=30)
# How long a probe waits for a tenant lock before concluding a live worker holds it (a try-lock).
PROBE_WAIT_SECONDS = 0.001


def lock_run(session: Session, run_id: str) -> MigrationRun:
    """The run row, locked until the transaction ends: the lock serialises every decision about its items."""
    run = session.get(MigrationRun, run_id, with_for_update=True, populate_existing=True)
    if run is None:
        raise MigrationRunNotFoundError(run_id)
    return run


def lock_item(session: Session, item_id: str) -> MigrationRunItem:
    return session.get(MigrationRunItem, item_id, with_for_update=True, populate_existing=True)


def _tally(session: Session, run_id: str) -> tuple[dict[RunItemStatus, int], dict[int, dict[RunItemStatus, int]]]:
    """Items per status, for the whole run and per wave (one query)."""
    counts: dict[RunItemStatus, int] = {}
    per_wave: dict[int, dict[RunItemStatus, int]] = {}
    for wave, status, count in session.execute(
            select(MigrationRunItem.wave, MigrationRunItem.status, func.count())
            .where(MigrationRunItem.run_id == run_id).group_by(MigrationRunItem.wave, MigrationRunItem.status)):
        counts[status] = counts.get(status, 0) + count
        per_wave.setdefault(wave, {})[status] = count
    return counts, per_wave


def _failed_ids(session: Session, run: MigrationRun) -> list[str]:
    return list(session.scalars(
        select(MigrationRunItem.tenant_id).where(MigrationRunItem.run_id == run.id,
                                                 MigrationRunItem.wave == run.current_wave,
                                                 MigrationRunItem.status == RunItemStatus.FAILED)
        .order_by(MigrationRunItem.position).limit(20)))


def _claim(session: Session, run: MigrationRun, slots: int) -> Claims:
    # Earlier waves too: a resume puts their failed items back to pending.
    items = session.scalars(select(MigrationRunItem).where(MigrationRunItem.run_id == run.id,
                                                           MigrationRunItem.wave <= run.current_wave,
                                                           MigrationRunItem.status == RunItemStatus.PENDING)
                            .order_by(MigrationRunItem.position).limit(slots).with_for_update()).all()
    claims = [(item.id, item.claim()) for item in items]
    run.pending -= len(claims)
    run.queued += len(claims)
    return claims


def _advance_waves(session: Session, run: MigrationRun, per_wave: dict[int, dict[RunItemStatus, int]]) -> Claims:
    """Stop rules, claims for free slots of the current wave, and what happens when the wave is over."""
    claims: Claims = []
    if run.wave_status is None:
        run.wave_status = waves.RUNNING
    while not run.stopping and run.wave_status == waves.RUNNING:
        counts = per_wave.setdefault(run.current_wave, {})
        stop = waves.stop_reason(run, counts, lambda: _failed_ids(session, run))
        if stop:
            run.stop(*stop)
            log.warning("migration run %s stops starting tenants: %s", run.id, stop[0])
            break
        upto = [per_wave.get(wave, {}) for wave in range(run.current_wave + 1)]
        pending = sum(c.get(RunItemStatus.PENDING, 0) for c in upto)
        slots = run.concurrency - run.queued - run.running
        if pending and slots > 0:
            claimed = _claim(session, run, slots)
            pending -= len(claimed)
            claims += claimed
        if pending or run.queued + run.running:
            break
        # The wave is over: its gate. The error rate is decided here; a health check needs I/O (migration_gates).
        reason = waves.error_rate_reason(run, counts)
        if reason:
            waves.record_gate(run, {"passed": False, "error": reason})
            run.wave_status = waves.FAILED
            run.stop(reason, "gate")
            break
        if run.health_check and counts.get(RunItemStatus.SUCCEEDED):
            run.wave_status = waves.GATING
            break
        waves.record_gate(run, {"passed": True, "checked": 0})
        waves.passed(run)
    return claims


def advance(session: Session, run: MigrationRun) -> Claims:
    """With the run row locked: refresh its counts, apply the stop rules, claim items for free slots, end it.

    Returns the claimed items, to enqueue after the commit (a rollback the run asked for included).
    """
    counts, per_wave = _tally(session, run.id)
    run.set_counts(counts)
    claims: Claims = []
    if run.status is MigrationRunStatus.RUNNING:
        claims = _advance_waves(session, run, per_wave)
        if run.queued + run.running == 0 and (run.stopping or run.wave_status == waves.DONE):
            run.finish()
            audit.record(session, "system", "migration_run.finished", run_id=run.id, status=run.status.value,
                         error=run.error, **run.counts)
            log.info("migration run %s %s: %s", run.id, run.status.value, run.counts)
            if rollback.wanted(run):
                claims += advance(session, rollback.plan(session, run, "system"))
    elif run.status is MigrationRunStatus.CANCELLED and run.finished_at is None and run.queued + run.running == 0:
        run.finished_at = utcnow()  # the last item running at cancel time has finished
    return claims


def advance_noting_end(session: Session, run: MigrationRun) -> tuple[Claims, bool]:
    """`advance`, and whether it ended the run."""
    was_open = not run.status.finished
    claims = advance(session, run)
    return claims, was_open and run.status.finished


def open_claim(session: Session, run_id: str, item_id: str, token: int
               ) -> tuple[MigrationRun, MigrationRunItem, tuple[Claims, bool] | None]:
    """The run and the claimed item, locked, as a job starts the item; the third value, when not None, is
    what the job returns at once: a stale claim (another dispatch took the item) is left alone, and an item
    of a run cancelled or stopped while it was queued is released (it never starts)."""
    run = lock_run(session, run_id)
    item = lock_item(session, item_id)
    if item.status is not RunItemStatus.QUEUED or item.dispatch_token != token:
        return run, item, ([], False)
    if run.status is not MigrationRunStatus.RUNNING or run.stopping:
        item.release()
        return run, item, advance_noting_end(session, run)
    return run, item, None


def enqueue(ctx: ServiceContext, claims: Claims) -> None:
    """Hand claimed items to RQ; if Redis is down they stay queued in the catalog and `requeue_lost` retries."""
    if not claims:
        return
    if ctx.migration_jobs is None:
        raise RuntimeError("this process has no migration job queue (ServiceContext.migration_jobs)")
    try:
        ctx.migration_jobs.enqueue_items(claims)
    except DependencyUnavailableError:
        log.warning("%d migration items stay queued: enqueue failed, they will be re-enqueued", len(claims))


def requeue_lost(ctx: ServiceContext, run_id: str | None = None, older_than: timedelta = LOST_AFTER) -> int:
    """Enqueue again the queued items that no RQ job will run (enqueue failed, Redis lost its data)."""
    if ctx.migration_jobs is None:
        return 0
    with ctx.sessions() as session:
        query = select(MigrationRunItem.id, MigrationRunItem.dispatch_token).where(
            MigrationRunItem.status == RunItemStatus.QUEUED, MigrationRunItem.queued_at < utcnow() - older_than)
        if run_id:
            query = query.where(MigrationRunItem.run_id == run_id)
        rows = session.execute(query).all()
    lost = [(item_id, token) for item_id, token in rows if not ctx.migration_jobs.is_pending(item_id, token)]
    # A job that is merely slow to appear (claimed a moment ago) may now run twice: the second sees the
    # item is no longer queued under its token and returns.
    enqueue(ctx, lost)
    return len(lost)


def recover_abandoned(ctx: ServiceContext, *, run_id: str | None = None, worker: str | None = None,
                      older_than: timedelta | None = None, retry: bool = False, reason: str,
                      wait_seconds: float = PROBE_WAIT_SECONDS) -> list[str]:
    """Running items whose worker is gone: back to pending (`retry`) or failed. Returns their ids.

    An item is marked running only by a worker holding the tenant's advisory lock, and the lock lives
    as long as that worker's catalog session: if we can take the lock, nobody is migrating the tenant,
    so the item is abandoned. This is exact, where a heartbeat would only be a guess.
    """
    with ctx.sessions() as session:
        query = select(MigrationRunItem.id, MigrationRunItem.tenant_id, MigrationRunItem.dispatch_token).where(
            MigrationRunItem.status == RunItemStatus.RUNNING)
        if run_id:
            query = query.where(MigrationRunItem.run_id == run_id)
        if worker:
            query = query.where(MigrationRunItem.worker == worker)
        if older_than is not None:
            query = query.where(MigrationRunItem.started_at < utcnow() - older_than)
        candidates = session.execute(query).all()
    recovered = []
    for candidate_id, tenant_id, token in candidates:
        try:
            with ctx.locks.hold(tenant_id, wait_seconds=wait_seconds):
                claims = _recover(ctx, candidate_id, token, retry, reason)
        except TenantBusyError:
            continue  # a live worker is on it
        if claims is not None:
            recovered.append(candidate_id)
            enqueue(ctx, claims)
    return recovered


def _recover(ctx: ServiceContext, item_id: str, token: int, retry: bool, reason: str) -> Claims | None:
    """With the tenant lock held: record where the database really is, release the tenant, settle the item."""
    with ctx.sessions() as session:
        item = session.get(MigrationRunItem, item_id)
        tenant = session.get(Tenant, item.tenant_id)
        if item.status is not RunItemStatus.RUNNING or item.dispatch_token != token:
            return None
        database = ctx.database_of(tenant) if tenant is not None and tenant.server is not None else None
    revision, known = None, False
    if database is not None:
        try:
            # The dead worker's open transaction, if any, was rolled back when its session ended.
            revision, known = database.current_revision(), True
        except Exception:  # unreachable: leave the catalog's revision as it was
            log.warning("tenant %s: could not read its revision while recovering item %s", item.tenant_id, item_id,
                        exc_info=True)
    with transaction(ctx.sessions) as session:
        run = lock_run(session, item.run_id)
        item = lock_item(session, item_id)
        if item.status is not RunItemStatus.RUNNING or item.dispatch_token != token:
            return None
        tenant = session.get(Tenant, item.tenant_id, with_for_update=True, populate_existing=True)
        if tenant is not None:
            if known:
                tenant.schema_revision = revision
            if tenant.status is TenantStatus.MIGRATING:
                tenant.activate()
        where = f"; its database is at {revision or 'base'}" if known else ""
        if retry:
            item.retry()
            item.error = f"{reason}{where}; retried"
        else:
            item.fail(f"{reason}{where}", reached_revision=revision if known else None)
        audit.record(session, "system", "migration_run.item_abandoned", item.tenant_id, None, run_id=run.id,
                     item_id=item.id, retried=retry, revision=revision)
        log.warning("tenant %s: migration run %s item abandoned (%s)%s", item.tenant_id, run.id, reason,
                    ", retrying" if retry else "")
        claims = advance(session, run)
    if tenant is not None:
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
    return claims


def reconcile_runs(ctx: ServiceContext) -> dict[str, int]:
    """Settle every unfinished run after a restart: abandoned items fail (resume retries them), lost ones re-enqueue."""
    with ctx.sessions() as session:
        run_ids = session.scalars(select(MigrationRun.id).where(MigrationRun.finished_at.is_(None),
                                                                MigrationRun.started_at.is_not(None))).all()
    abandoned = lost = 0
    for run_id in run_ids:
        abandoned += len(recover_abandoned(ctx, run_id=run_id, reason="the worker running it is gone"))
        lost += requeue_lost(ctx, run_id)
    return {"runs": len(run_ids), "abandoned": abandoned, "requeued": lost}
