"""Operations: reading them, retrying what failed, cancelling (the sweeper is services.sweeper)."""
from __future__ import annotations

import logging

from sqlalchemy import select

from control_plane.catalog.db import get_or_raise, page, transaction
from control_plane.catalog.models import Operation, OperationKind, OperationStatus, Tenant
from control_plane.errors import OperationNotFoundError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.registry import kind_of
from control_plane.services.operation_requests import (dispatch, is_replay, lane_of, reveal, take_one_time_secret,
                                                      take_slot)
from control_plane.services.runner import announce, cancel_operation as cancel

log = logging.getLogger(__name__)

def _load(session, principal: Principal, operation_id: str, *, lock: bool = False) -> Operation:
    op = get_or_raise(session, Operation, operation_id, OperationNotFoundError, for_update=lock)
    if op.tenant_id is None:
        principal.require_super_admin()
    else:
        principal.require_tenant(op.tenant_id)
    return op


def get_operation(ctx: ServiceContext, principal: Principal, operation_id: str) -> Operation:
    """The operation; on the first read after it succeeded, its one-time secret is merged into `result`."""
    with transaction(ctx.sessions) as session:
        op = _load(session, principal, operation_id, lock=True)
        revealed = take_one_time_secret(ctx, op)
    reveal(op, revealed)
    return op


def list_operations(ctx: ServiceContext, principal: Principal, *, tenant_id: str | None, status: OperationStatus | None,
                    kind: OperationKind | None, offset: int, limit: int) -> tuple[list[Operation], int]:
    query = select(Operation)
    if not principal.is_super_admin:
        query = query.where(Operation.tenant_id == principal.tenant_id)
    if tenant_id:
        query = query.where(Operation.tenant_id == tenant_id)
    if status:
        query = query.where(Operation.status == status)
    if kind:
        query = query.where(Operation.kind == kind)
    with ctx.sessions() as session:
        return page(session, query, Operation.created_at.desc(), Operation.id, offset=offset, limit=limit)


def requeue(ctx: ServiceContext, session, op: Operation, tenant: Tenant | None) -> None:
    """A failed operation queued again: it takes the tenant's work slot (423 if another holds it) and the
    busy status its kind needs, from a status its kind may retry from (409 otherwise). The caller commits."""
    kind = kind_of(op.kind)
    if tenant is not None:
        take_slot(session, tenant, op.id)
        previous = tenant.status
        tenant.begin_work(kind.action, kind.retry_from(op), kind.holds(op.params))
        if previous is not kind.failed_status and previous in kind.starts(op.params):
            op.return_status = previous  # e.g. suspended since: a retried migration returns to suspended
    op.requeue()


def retry_operation(ctx: ServiceContext, principal: Principal, operation_id: str,
                    idempotency_key: str | None = None) -> Operation:
    """Re-queue a failed operation; its steps resume where they stopped."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        op = _load(session, principal, operation_id, lock=True)
        if is_replay(session, principal, idempotency_key, "retry", operation_id):
            return op
        tenant = session.get(Tenant, op.tenant_id, with_for_update=True) if op.tenant_id else None
        requeue(ctx, session, op, tenant)
        audit.record(session, principal.actor, "operation.retried", op.tenant_id, op.id, kind=op.kind.value)
        lane = lane_of(session, op)
    announce(ctx, tenant)
    dispatch(ctx, op.id, lane)
    return op


def cancel_operation(ctx: ServiceContext, principal: Principal, operation_id: str,
                     idempotency_key: str | None = None) -> Operation:
    """Cancel: a queued operation at once; a running one at its next step boundary, where its kind undoes
    what it started and the tenant returns to its previous status. 409 once it has finished."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        op = _load(session, principal, operation_id, lock=True)
        if is_replay(session, principal, idempotency_key, "cancel", operation_id):
            return op
        tenant = None
        if op.status is OperationStatus.QUEUED:
            tenant = session.get(Tenant, op.tenant_id, with_for_update=True) if op.tenant_id else None
            cancel(ctx, session, op, tenant, f"cancelled by {principal.actor} before it started")
        else:
            op.request_cancel()  # 409 unless running
        audit.record(session, principal.actor, "operation.cancel_requested", op.tenant_id, op.id,
                     kind=op.kind.value, status=op.status.value)
    announce(ctx, tenant, op)
    return op
