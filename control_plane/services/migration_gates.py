"""What happens between the waves of a migration run that needs I/O or time: the health check on every
migrated tenant of a finished wave, and the end of a timed pause.

The dispatcher (migration_dispatch.advance) puts a finished wave in `gating` when the run has a check;
`proceed` runs it, from the job that finished the wave's last tenant, the request that created, resumed
or continued the run, and the sweeper's tick (which also ends timed pauses): a lost wake-up only delays.
Two callers running the same gate both check, and the first to record under the run lock decides.
"""
from __future__ import annotations

import logging
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import or_, select

from control_plane.catalog.db import transaction
from control_plane.catalog.migration_run_models import MigrationRun, MigrationRunItem, MigrationRunStatus, RunItemStatus
from control_plane.catalog.models import Tenant, utcnow
from control_plane.services import audit
from control_plane.services import migration_waves as waves
from control_plane.services.context import ServiceContext
from control_plane.services.migration_dispatch import advance, enqueue, lock_run
from control_plane.services.runner import describe

log = logging.getLogger(__name__)

SHOWN_FAILURES = 20  # of a failed gate, in the run's record (each item keeps its own result)


def proceed(ctx: ServiceContext, run_id: str) -> None:
    """Do what the run's waves wait for, if it can be done now: the health check, the end of a timed pause."""
    with ctx.sessions() as session:
        run = session.get(MigrationRun, run_id)
        if run is None or run.status is not MigrationRunStatus.RUNNING:
            return
        status, wave, ready_at = run.wave_status, run.current_wave, run.wave_ready_at
    if status == waves.GATING:
        _gate(ctx, run_id, wave)
    elif status == waves.WAITING and ready_at is not None and ready_at <= utcnow():
        _pause_over(ctx, run_id, wave)


def tick(ctx: ServiceContext) -> int:
    """The sweeper's part: every run at a health check or at the end of a timed pause goes on. How many."""
    with ctx.sessions() as session:
        run_ids = session.scalars(select(MigrationRun.id).where(
            MigrationRun.status == MigrationRunStatus.RUNNING,
            or_(MigrationRun.wave_status == waves.GATING,
                (MigrationRun.wave_status == waves.WAITING) & (MigrationRun.wave_ready_at <= utcnow())))).all()
    for run_id in run_ids:
        try:
            proceed(ctx, run_id)
        except Exception:  # one run's trouble must not stop the others'
            log.exception("migration run %s: could not go on to its next wave", run_id)
    return len(run_ids)


def _pause_over(ctx: ServiceContext, run_id: str, wave: int) -> None:
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        if run.status is not MigrationRunStatus.RUNNING or run.wave_status != waves.WAITING or run.current_wave != wave:
            return
        waves.open_next(run)
        audit.record(session, "system", "migration_run.wave_started", run_id=run_id, wave=run.current_wave + 1,
                     after="pause")
        claims = advance(session, run)
    enqueue(ctx, claims)
    proceed(ctx, run_id)  # an empty wave may already be at its gate


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)[:200]


def check_tenant(database: Any, query: str, timeout_ms: int) -> dict[str, Any]:
    """One tenant's verdict: {"ok", "value"} or {"ok": false, "error"}; the check must return 0."""
    try:
        value = database.run_check(query, timeout_ms)
    except Exception as exc:  # a gate records every tenant's failure, whatever it is
        return {"ok": False, "error": describe(exc)}
    ok = value == 0 and not isinstance(value, bool)
    return {"ok": ok, "value": _jsonable(value)}


def _gate(ctx: ServiceContext, run_id: str, wave: int) -> None:
    with ctx.sessions() as session:
        run = session.get(MigrationRun, run_id)
        query, timeout_ms = run.health_check, run.check_timeout_ms
        rows = session.execute(
            select(MigrationRunItem.id, Tenant).join(Tenant, Tenant.id == MigrationRunItem.tenant_id)
            .where(MigrationRunItem.run_id == run_id, MigrationRunItem.wave == wave,
                   MigrationRunItem.status == RunItemStatus.SUCCEEDED)
            .order_by(MigrationRunItem.position)).all()
        targets = [(item_id, tenant.id, ctx.database_of(tenant)) for item_id, tenant in rows]
    # Outside any catalog transaction: each check runs read-only, as the tenant's role, bounded in time.
    results = {item_id: (tenant_id, check_tenant(database, query, timeout_ms))
               for item_id, tenant_id, database in targets}
    failed = [{"tenant_id": tenant_id, **result} for tenant_id, result in results.values() if not result["ok"]]
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        if run.status is not MigrationRunStatus.RUNNING or run.wave_status != waves.GATING or run.current_wave != wave:
            return  # decided by another caller meanwhile
        for item_id, (_, result) in results.items():
            session.get(MigrationRunItem, item_id).check_result = result
        count = len(waves.specs(run))
        waves.record_gate(run, {"passed": not failed, "checked": len(results), "failed": failed[:SHOWN_FAILURES]})
        if failed:
            shown = ", ".join(f"{f['tenant_id']}: {f['error'] if 'error' in f else 'returned ' + repr(f['value'])}"
                              for f in failed[:3])
            reason = (f"wave {wave + 1} of {count}: health gate failed on {len(failed)} of {len(results)} tenant(s) "
                      f"({shown}); the check must return 0; no later wave was started")
            run.wave_status = waves.FAILED
            run.stop(reason, "gate")
            log.warning("migration run %s: %s", run_id, reason)
        else:
            waves.passed(run)
        audit.record(session, "system", "migration_run.wave_gated", run_id=run_id, wave=wave + 1,
                     passed=not failed, checked=len(results), failed=len(failed))
        claims = advance(session, run)
    enqueue(ctx, claims)
