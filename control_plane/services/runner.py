"""Runs one operation to its end under its tenant's lock: progress, success, failure."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy.orm import Session

from control_plane.catalog.models import Operation, OperationKind, Tenant
from control_plane.errors import ControlPlaneError, OperationNotFoundError
from control_plane.logs import log_context
from control_plane.services import backups, lifecycle, moves, restores
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)

Report = Callable[[str, int], None]


@dataclass(frozen=True)
class Handler:
    run: Callable[[ServiceContext, Session, Operation, Tenant, Report], dict[str, Any] | None]
    on_failure: Callable[[ServiceContext, Session, Operation, Tenant], None]
    prepare_retry: Callable[[Tenant, Operation], None]


HANDLERS: dict[OperationKind, Handler] = {
    OperationKind.PROVISION: Handler(lifecycle.provision, lifecycle.provision_failed, lifecycle.retry_provision),
    OperationKind.MIGRATE: Handler(lifecycle.migrate, lifecycle.migrate_failed, lifecycle.retry_migrate),
    OperationKind.DELETE: Handler(lifecycle.delete, lifecycle.delete_failed, lifecycle.retry_delete),
    OperationKind.BACKUP: Handler(backups.run_backup, backups.backup_failed, backups.retry_backup),
    OperationKind.RESTORE: Handler(restores.run_restore, restores.restore_failed, restores.retry_restore),
    OperationKind.MOVE: Handler(moves.run_move, moves.move_failed, moves.retry_move),
}


def describe(exc: BaseException) -> str:
    """A readable one-line error for the operation record (never a DSN: adapters strip those)."""
    if isinstance(exc, ControlPlaneError):
        return exc.detail
    return f"{type(exc).__name__}: {exc}"


def execute_operation(ctx: ServiceContext, operation_id: str) -> None:
    """Run the operation if it still has to run. Safe to call twice: a finished operation is left alone."""
    with ctx.sessions() as session:
        op = session.get(Operation, operation_id)
        if op is None:
            raise OperationNotFoundError(operation_id)
        if op.status.finished:
            log.info("operation %s is already %s; nothing to do", operation_id, op.status.value)
            return
        tenant_id = op.tenant_id

    # The lock serialises everything done to one tenant (a retried job, a duplicate dispatch, another kind).
    with log_context(operation_id=operation_id, tenant_id=tenant_id), ctx.locks.hold(tenant_id) as lease, \
            ctx.sessions() as session:
        op = session.get(Operation, operation_id, populate_existing=True)
        if op.status.finished:  # finished by another job while we waited for the lock
            return
        handler = HANDLERS[op.kind]
        op.start()
        session.commit()
        tenant = session.get(Tenant, tenant_id)

        def report(step: str, progress: int) -> None:
            lease.check()  # between steps: never go on once the tenant's lock is lost (LockLostError)
            op.report(step, progress)
            session.commit()
            log.info("tenant %s operation %s: %s (%d%%)", tenant_id, op.id, step, progress)

        try:
            result = handler.run(ctx, session, op, tenant, report)
        except Exception as exc:  # the job boundary: record every failure on the operation, once
            session.rollback()
            log.exception("tenant %s operation %s failed at %s", tenant_id, op.id, op.step)
            op.fail(f"{op.step or op.kind.value}: {describe(exc)}")
            handler.on_failure(ctx, session, op, tenant)
            session.commit()
            raise
        op.succeed(result)
        session.commit()
        log.info("tenant %s operation %s succeeded", tenant_id, op.id)
