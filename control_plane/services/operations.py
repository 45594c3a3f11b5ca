"""Operations: creating them idempotently, dispatching them to the queue, retrying and re-dispatching."""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.catalog.db import page, transaction
from control_plane.catalog.models import Operation, OperationKind, OperationStatus, Tenant, utcnow
from control_plane.errors import DependencyUnavailableError, IdempotencyKeyReusedError, OperationNotFoundError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext, operation_secret_context

log = logging.getLogger(__name__)

# A queued operation older than this with no RQ job behind it was never enqueued (Redis was down).
LOST_AFTER = timedelta(seconds=30)


def fingerprint(kind: OperationKind, tenant_id: str | None, params: dict[str, Any]) -> str:
    body = json.dumps({"kind": kind.value, "tenant": tenant_id, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def find_replay(session: Session, principal: Principal, idempotency_key: str | None, request_fingerprint: str) -> Operation | None:
    """The operation an earlier request with the same Idempotency-Key created, if any."""
    if not idempotency_key:
        return None
    earlier = session.scalars(select(Operation).where(Operation.requested_by == principal.token_id,
                                                      Operation.idempotency_key == idempotency_key)).one_or_none()
    if earlier is not None and earlier.request_fingerprint != request_fingerprint:
        raise IdempotencyKeyReusedError(idempotency_key)
    return earlier


def new_operation(principal: Principal, kind: OperationKind, tenant_id: str | None, params: dict[str, Any],
                  idempotency_key: str | None, request_fingerprint: str) -> Operation:
    return Operation(kind=kind, tenant_id=tenant_id, params=params, status=OperationStatus.QUEUED,
                     idempotency_key=idempotency_key, request_fingerprint=request_fingerprint,
                     requested_by=principal.token_id, progress=0, attempts=0)


def dispatch(ctx: ServiceContext, operation_id: str) -> None:
    """Enqueue; when Redis is down the operation stays queued in the catalog and is re-dispatched later."""
    try:
        ctx.queue.enqueue_operation(operation_id)
    except DependencyUnavailableError:
        log.warning("operation %s stays queued: enqueue failed, it will be re-dispatched", operation_id)


def get_operation(ctx: ServiceContext, principal: Principal, operation_id: str) -> Operation:
    """The operation; on the first read after it succeeded, its one-time secret is merged into `result`."""
    with transaction(ctx.sessions) as session:
        op = session.get(Operation, operation_id, with_for_update=True)
        if op is None:
            raise OperationNotFoundError(operation_id)
        if op.tenant_id is None:
            principal.require_super_admin()
        else:
            principal.require_tenant(op.tenant_id)
        revealed: dict[str, Any] = {}
        if op.status is OperationStatus.SUCCEEDED and op.one_time_secret_encrypted:
            revealed = json.loads(ctx.keyring.decrypt(op.one_time_secret_encrypted, operation_secret_context(op.id)))
            op.one_time_secret_encrypted = None
    # Merged after the commit, into the detached object only: the secret is never written back.
    if revealed:
        op.result = {**(op.result or {}), **revealed}
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


def retry_operation(ctx: ServiceContext, principal: Principal, operation_id: str) -> Operation:
    """Re-queue a failed operation; its tenant goes back to the busy status the operation needs."""
    from control_plane.services.runner import HANDLERS

    with transaction(ctx.sessions) as session:
        op = session.get(Operation, operation_id, with_for_update=True)
        if op is None:
            raise OperationNotFoundError(operation_id)
        principal.require_super_admin()
        tenant = session.get(Tenant, op.tenant_id, with_for_update=True) if op.tenant_id else None
        op.requeue()
        HANDLERS[op.kind].prepare_retry(tenant, op)
        audit.record(session, principal.actor, "operation.retried", op.tenant_id, op.id, kind=op.kind.value)
    dispatch(ctx, op.id)
    return op


def redispatch_stalled(ctx: ServiceContext) -> list[str]:
    """Operations the catalog says must run but that no RQ job will run: enqueue them again.

    Covers an enqueue that failed (Redis down), a job lost with Redis, and a worker that died.
    Running it twice is harmless: jobs are keyed by operation id and take the tenant lock.
    """
    now = utcnow()
    with ctx.sessions() as session:
        candidates = session.scalars(select(Operation).where(
            ((Operation.status == OperationStatus.QUEUED) & (Operation.created_at < now - LOST_AFTER))
            | ((Operation.status == OperationStatus.RUNNING)
               & (Operation.heartbeat_at < now - timedelta(seconds=ctx.settings.abandoned_after_seconds))))).all()
        ids = [op.id for op in candidates]
    redispatched = [op_id for op_id in ids if not ctx.queue.is_pending(op_id)]
    for op_id in redispatched:
        log.info("re-dispatching stalled operation %s", op_id)
        dispatch(ctx, op_id)
    return redispatched
