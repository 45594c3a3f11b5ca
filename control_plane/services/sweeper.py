"""The sweeper: repairs from the catalog what a lost queue or a dead worker left behind.

It runs every minute on RQ's cron scheduler (`tenantctl scheduler`), once at every worker start and at once
when a worker sees Redis come back after an outage (jobs.worker), and is safe to run anywhere, any number of
times at once:
- a queued operation whose RQ job is missing or dead (Redis was down or lost its data) is enqueued again;
- a running operation whose worker or work horse is gone is failed, with the reason, through the one
  failure path (its partial work undone) and, for kinds that are safe to repeat, queued again
  automatically (at most AUTO_RETRY_DELAYS attempts, each after its delay);
- migration-run items likewise (services.migration_dispatch.reconcile_runs), and the waves of runs go on:
  a health check left undone, a timed pause that is over (services.migration_gates.tick).

"Gone" is exact, not a guess from a heartbeat: a job holds its tenant's advisory lock from before it marks
its operation running until after it records the end, on a catalog connection that dies with its process
(and, for a dead node, within the TCP keepalive the lock connection sets). A running operation whose
tenant lock the sweeper can take is therefore run by nobody.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from control_plane.catalog.db import transaction
from control_plane.catalog.models import Operation, OperationStatus, Tenant, utcnow
from control_plane.errors import ControlPlaneError, DependencyUnavailableError
from control_plane.services import audit
from control_plane.services.context import ServiceContext
from control_plane.services import migration_gates
from control_plane.services.migration_dispatch import reconcile_runs
from control_plane.services.operation_requests import dispatch, lane_of
from control_plane.services.operations import requeue
from control_plane.services.runner import announce, fail_abandoned

log = logging.getLogger(__name__)

# A queued operation this old with no live RQ job behind it was never enqueued, or its job was lost. Short:
# a request enqueues right after its commit, and a duplicate job of an operation does nothing.
LOST_AFTER = timedelta(seconds=2)
# How long the sweeper waits for a tenant's lock: a live job holds it, so it only needs a try-lock.
PROBE_WAIT_SECONDS = 0.001


@dataclass
class SweepReport:
    dispatched: list[str] = field(default_factory=list)  # queued operations enqueued again
    abandoned: list[str] = field(default_factory=list)   # running operations whose worker was gone: failed
    retried: list[str] = field(default_factory=list)     # failed by a dead worker, queued again automatically
    migration_runs: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"dispatched": self.dispatched, "abandoned": self.abandoned, "retried": self.retried,
                "migration_runs": self.migration_runs}


def sweep(ctx: ServiceContext, lost_after: timedelta = LOST_AFTER) -> SweepReport:
    """One pass. `lost_after` 0 right after Redis returns: whatever is queued then was never enqueued."""
    report = SweepReport()
    report.abandoned = fail_abandoned_operations(ctx)
    report.retried = retry_due(ctx)
    report.dispatched = redispatch_lost(ctx, lost_after)
    if ctx.migration_jobs is not None:
        report.migration_runs = reconcile_runs(ctx)
        # Health checks left undone and timed pauses between waves that are over.
        report.migration_runs["waves"] = migration_gates.tick(ctx)
    if report.abandoned or report.retried or report.dispatched:
        log.warning("sweep: %s", report.as_dict())
    return report


def fail_abandoned_operations(ctx: ServiceContext) -> list[str]:
    """Running operations nobody runs (their tenant lock is free): failed through the one failure path."""
    with ctx.sessions() as session:
        running = session.execute(select(Operation.id, Operation.tenant_id)
                                  .where(Operation.status == OperationStatus.RUNNING)).all()
    failed = []
    for operation_id, tenant_id in running:
        if fail_abandoned(ctx, operation_id, "the worker running it is gone", lock_wait=PROBE_WAIT_SECONDS):
            failed.append(operation_id)
    return failed


def retry_due(ctx: ServiceContext) -> list[str]:
    """Operations failed by a dead worker whose automatic retry is due: queued again and enqueued."""
    with ctx.sessions() as session:
        due = session.scalars(select(Operation.id).where(Operation.status == OperationStatus.FAILED,
                                                         Operation.retry_at <= utcnow())).all()
    retried = []
    for operation_id in due:
        try:
            with transaction(ctx.sessions) as session:
                op = session.get(Operation, operation_id, with_for_update=True)
                if op.status is not OperationStatus.FAILED or op.retry_at is None:
                    continue
                tenant = session.get(Tenant, op.tenant_id, with_for_update=True) if op.tenant_id else None
                requeue(ctx, session, op, tenant)
                audit.record(session, "system", "operation.retried", op.tenant_id, op.id, kind=op.kind.value,
                             automatic=True, attempt=op.attempts + 1)
                lane = lane_of(session, op)
        except ControlPlaneError as exc:  # the tenant moved on (busy with another operation, deleted): a person decides
            log.warning("operation %s: not retried automatically: %s", operation_id, exc.detail)
            with transaction(ctx.sessions) as session:
                session.get(Operation, operation_id, with_for_update=True).retry_at = None
            continue
        announce(ctx, tenant)
        dispatch(ctx, operation_id, lane)
        retried.append(operation_id)
    return retried


def redispatch_lost(ctx: ServiceContext, lost_after: timedelta = LOST_AFTER) -> list[str]:
    """Queued operations that no live RQ job will run: enqueued again (jobs are keyed by operation id and
    take the tenant lock, so a duplicate does nothing)."""
    with ctx.sessions() as session:
        queued = session.scalars(select(Operation).where(Operation.status == OperationStatus.QUEUED,
                                                         Operation.created_at <= utcnow() - lost_after)
                                 .order_by(Operation.created_at)).all()  # first asked, first queued again
        lanes = {op.id: lane_of(session, op) for op in queued}
    try:
        lost = [operation_id for operation_id in lanes if not ctx.queue.is_pending(operation_id)]
    except DependencyUnavailableError:
        log.warning("sweep: Redis unavailable; queued operations are dispatched again on the next sweep")
        return []
    for operation_id in lost:
        log.info("re-dispatching lost operation %s", operation_id)
        dispatch(ctx, operation_id, lanes[operation_id])
    return lost
