"""Runs one operation to its end under its tenant's lock: progress, success, failure, cancel.

`fail_operation` is the one failure path: the runner's, the killed-work-horse handler's and the
sweeper's (a running operation whose worker is gone).
"""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.catalog.db import transaction
from control_plane.catalog.models import BUSY_STATUSES, Operation, OperationStatus, Tenant, TenantStatus, utcnow
from control_plane.errors import ControlPlaneError, OperationCancelledError, OperationNotFoundError, TenantBusyError
from control_plane.logs import log_context
from control_plane.services import audit
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.base import Kind
from control_plane.services.kinds.registry import kind_of

log = logging.getLogger(__name__)

# How long a job waits for its tenant's advisory lock before giving the job back to the queue.
LOCK_WAIT_SECONDS = 30.0
# An operation whose worker died is retried by itself, if its kind is safe to repeat, after these delays
# (one per attempt; then a person decides with POST /v1/operations/<id>/retry).
AUTO_RETRY_DELAYS = (timedelta(0), timedelta(seconds=30), timedelta(minutes=2))


class LockWaitTimeout(Exception):
    """The tenant's lock stayed taken: the job goes back to the queue (RQ's Retry) instead of failing."""


def describe(exc: BaseException) -> str:
    """A readable one-line error for the operation record (never a DSN: adapters strip those)."""
    if isinstance(exc, ControlPlaneError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"


def _undo(ctx: ServiceContext, session: Session, kind: Kind, op: Operation, tenant: Tenant | None) -> None:
    if tenant is None:
        return
    try:
        kind.undo(ctx, session, op, tenant)
    except Exception:  # best effort: the server may be what failed; a retry or prune cleans up later
        log.warning("tenant %s operation %s: could not undo all of its partial work", tenant.id, op.id, exc_info=True)


def _settle(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant | None,
            status: TenantStatus | None) -> None:
    """The tenant leaves the busy status the work put it in (a status it left by itself, e.g. suspended
    during a backup, is kept), and its work slot is free."""
    if tenant is None:
        return
    if status is not None and tenant.status in BUSY_STATUSES:
        tenant.return_to(status)
    tenant.release_slot(op.id)


def fail_operation(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant | None, error: str) -> None:
    """The one failure path: the operation failed with `error`, partial work undone, the tenant settled.

    The caller holds the operation row (and the tenant's lock when a run may still touch the tenant) and
    commits; publish with `announce` after the commit.
    """
    kind = kind_of(op.kind)
    op.fail(error)
    _undo(ctx, session, kind, op, tenant)
    _settle(ctx, session, op, tenant, kind.status_after_failure(op))
    audit.record(session, "system", kind.failed_event, op.tenant_id, op.id, error=error)


def cancel_operation(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant | None,
                     reason: str = "cancelled") -> None:
    """The one cancel path (a queued operation at once, a running one at its step boundary): undone, settled."""
    kind = kind_of(op.kind)
    op.cancel(reason)
    _undo(ctx, session, kind, op, tenant)
    _settle(ctx, session, op, tenant, kind.status_after_cancel(op))
    audit.record(session, "system", "operation.cancelled", op.tenant_id, op.id, kind=op.kind.value)


def announce(ctx: ServiceContext, tenant: Tenant | None, op: Operation | None = None) -> None:
    """After the commit: runtimes reload the tenant's status; an operation that ended runs its kind's `after`."""
    if tenant is not None:
        ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                           database=tenant.database_name)
    if op is not None and op.status.finished:
        kind_of(op.kind).after(ctx, op)


def execute_operation(ctx: ServiceContext, operation_id: str, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
    """Run the operation if it still has to run. Safe to call twice: a finished operation is left alone.

    Raises `LockWaitTimeout` when the tenant's lock stays taken and the operation is still queued, so the
    job is retried later; a duplicate job of an operation a live worker runs just returns.
    """
    with ctx.sessions() as session:
        op = session.get(Operation, operation_id)
        if op is None:
            raise OperationNotFoundError(operation_id)
        if op.status.finished:
            log.info("operation %s is already %s; nothing to do", operation_id, op.status.value)
            return
        tenant_id = op.tenant_id

    # The lock serialises everything done to one tenant (a retried job, a duplicate dispatch, another kind);
    # it lives as long as this job's catalog session, so "running and the lock is free" means "abandoned".
    try:
        with log_context(operation_id=operation_id, tenant_id=tenant_id), \
                ctx.locks.hold(tenant_id, wait_seconds=lock_wait_seconds) as lease:
            _execute_locked(ctx, operation_id, lease)
    except TenantBusyError:
        with ctx.sessions() as session:
            status = session.scalar(select(Operation.status).where(Operation.id == operation_id))
        if status is OperationStatus.QUEUED:
            log.info("tenant %s operation %s: tenant lock still taken; back to the queue", tenant_id, operation_id)
            raise LockWaitTimeout(f"tenant {tenant_id} lock still taken") from None
        log.info("tenant %s operation %s is %s elsewhere; this duplicate job ends", tenant_id, operation_id,
                 status.value if status else "gone")


def _execute_locked(ctx: ServiceContext, operation_id: str, lease) -> None:
    # On the lock's own connection: a job needs one catalog connection, not two (a new one costs more than
    # most of a warm provisioning). The session commits and rolls back that connection's transactions.
    with ctx.sessions(bind=lease.share(), join_transaction_mode="control_fully") as session:
        # Locked while deciding to start: a cancel of the queued operation may be racing us.
        op = session.get(Operation, operation_id, populate_existing=True, with_for_update=True)
        if op.status.finished:  # finished (or cancelled) while we waited for the lock
            return
        kind = kind_of(op.kind)
        op.start()
        session.commit()
        tenant = session.get(Tenant, op.tenant_id)
        point_of_no_return = False

        def report(step: str, progress: int, *, cancellable: bool = True) -> None:
            nonlocal point_of_no_return
            lease.check()  # between steps: never go on once the tenant's lock is lost (LockLostError)
            op.report(step, progress)
            session.commit()
            log.info("tenant %s operation %s: %s (%d%%)", op.tenant_id, op.id, step, progress)
            point_of_no_return = point_of_no_return or not cancellable
            if not point_of_no_return and session.scalar(
                    select(Operation.cancel_requested_at).where(Operation.id == op.id)) is not None:
                raise OperationCancelledError(f"cancelled before {step}")

        try:
            result: dict[str, Any] | None = kind.run(ctx, session, op, tenant, report)
        except Exception as exc:  # the job boundary: record every failure on the operation, once
            step = op.step  # where it stopped: the rollback would forget a step reported without a commit
            session.rollback()
            op.step = step
            if isinstance(exc, OperationCancelledError) or op.cancel_requested_at is not None:
                # Stopped at a safe point (a stream may wrap our exception in its own): a cancel, not a failure.
                log.info("tenant %s operation %s cancelled at %s", op.tenant_id, op.id, op.step)
                cancel_operation(ctx, session, op, tenant, f"cancelled at {op.step or op.kind.value}")
                session.commit()
                announce(ctx, tenant, op)
                return
            if isinstance(exc, ControlPlaneError):  # an expected, classified failure: its reason says it all
                log.warning("tenant %s operation %s failed at %s: %s", op.tenant_id, op.id, op.step, describe(exc))
            else:  # a bug or an unforeseen failure: the traceback is what finds it
                log.exception("tenant %s operation %s failed at %s", op.tenant_id, op.id, op.step)
            fail_operation(ctx, session, op, tenant, f"{op.step or op.kind.value}: {describe(exc)}")
            session.commit()
            announce(ctx, tenant, op)
            return
        lease.check()  # what the run left uncommitted (a provisioning's activation) needs the lock still held
        op.succeed(result)
        tenant.release_slot(op.id)
        session.commit()
        kind.after(ctx, op)
        log.info("tenant %s operation %s succeeded", op.tenant_id, op.id)


def fail_abandoned(ctx: ServiceContext, operation_id: str, reason: str, lock_wait: float) -> bool:
    """A running operation whose worker is gone: failed through the one failure path, its partial work
    undone, and, for a kind safe to repeat, scheduled for an automatic retry (AUTO_RETRY_DELAYS).

    Decided under the tenant's lock (waiting at most `lock_wait`): a live job holds it while it runs, so
    if it stays taken the operation is not abandoned and is left alone. Returns whether it was failed.
    """
    with ctx.sessions() as session:
        tenant_id = session.scalar(select(Operation.tenant_id).where(Operation.id == operation_id,
                                                                     Operation.status == OperationStatus.RUNNING))
    if tenant_id is None:
        return False
    try:
        with ctx.locks.hold(tenant_id, wait_seconds=lock_wait), transaction(ctx.sessions) as session:
            op = session.get(Operation, operation_id, with_for_update=True, populate_existing=True)
            if op.status is not OperationStatus.RUNNING:
                return False
            tenant = session.get(Tenant, tenant_id, with_for_update=True, populate_existing=True)
            fail_operation(ctx, session, op, tenant, f"{op.step or op.kind.value}: {reason}")
            if kind_of(op.kind).repeatable and op.attempts <= len(AUTO_RETRY_DELAYS):
                op.retry_at = utcnow() + AUTO_RETRY_DELAYS[op.attempts - 1]
                op.error += f"; retried automatically (attempt {op.attempts + 1} of {len(AUTO_RETRY_DELAYS) + 1})"
    except TenantBusyError:
        return False  # a live job holds the tenant: it is running, not abandoned
    announce(ctx, tenant, op)
    log.error("tenant %s operation %s: %s", tenant_id, operation_id, reason)
    return True
