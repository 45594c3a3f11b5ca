"""The one request path of every operation kind, and dispatching operations to the queue.

fingerprint → replay (Idempotency-Key) → the kind prepares and locks its tenant → the tenant's work slot
(423 while another operation holds it) → the kind's transition (409 from a status it may not start from)
→ the operation row → audit → commit; then, after the commit, publish the tenant's new status and
enqueue the job.
"""
from __future__ import annotations

import hashlib
import json
import logging
from datetime import timedelta
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload, lazyload

from control_plane.catalog.db import transaction
from control_plane.catalog.models import (ApiToken, Operation, OperationStatus, RequestKey, Tenant, TokenRole, new_id,
                                          utcnow)
from control_plane.catalog.plan_models import Plan
from control_plane.errors import (ControlPlaneError, DependencyUnavailableError, IdempotencyKeyReusedError,
                                  TenantBusyError)
from control_plane.naming import Lane
from control_plane.services import audit
from control_plane.services.auth import SCHEDULER, Principal
from control_plane.services.context import ServiceContext, operation_secret_context
from control_plane.services.kinds.base import Kind

log = logging.getLogger(__name__)

# An Idempotency-Key is remembered this long; after that the same key starts new work.
IDEMPOTENCY_KEY_TTL = timedelta(hours=24)


def fingerprint(action: str, target: str | None, params: dict[str, Any]) -> str:
    body = json.dumps({"kind": action, "tenant": target, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(body.encode()).hexdigest()


def find_replay(session: Session, principal: Principal, idempotency_key: str | None,
                request_fingerprint: str) -> Operation | None:
    """The operation an earlier request with the same Idempotency-Key created within the last 24 h, if any;
    the same key with a different request is refused (422)."""
    if not idempotency_key:
        return None
    earlier = session.scalars(select(Operation).where(Operation.requested_by == principal.token_id,
                                                      Operation.idempotency_key == idempotency_key)).one_or_none()
    if earlier is None:
        return None
    if earlier.created_at < utcnow() - IDEMPOTENCY_KEY_TTL:
        earlier.idempotency_key = None  # expired: forget it, so the key may start new work
        session.flush()
        return None
    if earlier.request_fingerprint != request_fingerprint:
        raise IdempotencyKeyReusedError(idempotency_key)
    return earlier


def is_replay(session: Session, principal: Principal, idempotency_key: str | None, action: str, target: str) -> bool:
    """For a POST that restarts or stops work (retry, cancel, resume): whether the same request with this
    Idempotency-Key was already made in the last 24 h (then answer the current state, act no more); the
    key with another request is refused (422). A new key is recorded with the caller's transaction."""
    if not idempotency_key:
        return False
    request_fingerprint = fingerprint(action, target, {})
    earlier = session.get(RequestKey, (principal.token_id, idempotency_key), with_for_update=True)
    if earlier is not None and earlier.created_at >= utcnow() - IDEMPOTENCY_KEY_TTL:
        if earlier.request_fingerprint != request_fingerprint:
            raise IdempotencyKeyReusedError(idempotency_key)
        return True
    if earlier is None:
        session.add(RequestKey(requested_by=principal.token_id, idempotency_key=idempotency_key,
                               request_fingerprint=request_fingerprint))
    else:  # expired: the key starts over
        earlier.request_fingerprint, earlier.created_at = request_fingerprint, utcnow()
    session.flush()
    return False


def holder_unfinished(session: Session, tenant: Tenant) -> bool:
    """Whether the operation in the tenant's work slot still has to finish."""
    if tenant.operation_id is None:
        return False
    holder = session.get(Operation, tenant.operation_id)
    return holder is not None and not holder.status.finished


def take_slot(session: Session, tenant: Tenant, operation_id: str) -> None:
    """The tenant's work slot for `operation_id`, or 423 naming the operation that holds it."""
    tenant.take_slot(operation_id, holder_unfinished(session, tenant))


def check_free(session: Session, tenant: Tenant) -> None:
    """423 naming the operation that holds the tenant's work slot, if one does."""
    if holder_unfinished(session, tenant):
        tenant.take_slot(new_id(), True)


def request_work(ctx: ServiceContext, principal: Principal, kind: Kind, tenant_id: str, params: dict[str, Any],
                 idempotency_key: str | None = None, *, request: dict[str, Any] | None = None,
                 one_time_secret: dict[str, Any] | None = None, audit_action: str | None = None,
                 enqueue: bool = True, attempt_now: Attempt | None = None) -> Operation:
    """Record an operation of `kind` on the tenant (queued) and enqueue it; the one path every kind takes.

    `params` are stored on the operation; `request` (default: `params`) is what the Idempotency-Key
    fingerprint covers, when what is stored differs from what was asked (a password's hash). With
    `enqueue=False` the caller runs the operation itself. `attempt_now`, when given, may finish a new
    operation within the request (see `finish_within_request`); when it does not, the operation is
    enqueued as usual.
    """
    request_fingerprint = fingerprint(kind.kind.value, tenant_id, request if request is not None else params)
    try:
        with transaction(ctx.sessions) as session:
            replay = find_replay(session, principal, idempotency_key, request_fingerprint)
            if replay is not None:
                return replay
            tenant = kind.prepare(ctx, session, principal, tenant_id, params)
            op_id = new_id()
            take_slot(session, tenant, op_id)  # 423 first: a busy tenant's status says nothing of what it may do next
            previous = tenant.status
            tenant.begin_work(kind.action, kind.starts(params), kind.holds(params))
            op = Operation(id=op_id, kind=kind.kind, tenant_id=tenant.id, params=params,
                           status=OperationStatus.QUEUED, idempotency_key=idempotency_key,
                           request_fingerprint=request_fingerprint, requested_by=principal.token_id, progress=0,
                           attempts=0, return_status=previous)
            op.result = kind.shown_result(params)
            if one_time_secret:  # set before the INSERT: no UPDATE of its own
                op.one_time_secret_encrypted = ctx.keyring.encrypt(json.dumps(one_time_secret),
                                                                   operation_secret_context(op.id))
            session.add(op)
            session.flush()
            audit.record(session, principal.actor, audit_action or f"tenant.{kind.kind.value}_requested", tenant.id,
                         op.id, **{k: v for k, v in (request if request is not None else params).items()})
    except IntegrityError as exc:
        # A concurrent request won the race for this idempotency key (or, for a kind that creates its
        # tenant, for the id or a domain).
        with ctx.sessions() as session:
            replay = find_replay(session, principal, idempotency_key, request_fingerprint)
        if replay is not None:
            return replay
        raise kind.conflict(exc, tenant_id, params) from exc
    if tenant.status is not previous:
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
    if attempt_now is not None and (finished := finish_within_request(ctx, kind, op, attempt_now)) is not None:
        return finished
    if enqueue:
        dispatch(ctx, op.id, lane_of_principal(principal))
    return op


# The work of a queued operation done within its request (under its tenant's lock, the operation started in
# the session): the operation's result, or None to leave it queued, having committed nothing of its own.
Attempt = Callable[[ServiceContext, Session, Operation, Tenant], dict[str, Any] | None]


def finish_within_request(ctx: ServiceContext, kind: Kind, queued: Operation, attempt: Attempt) -> Operation | None:
    """The new operation run to its end by `attempt` in the request itself, when it can be done at once (a
    provisioning that finds a warm spare): no queue hand-off, no work horse. Its success, with what the
    attempt changed in the catalog, is one commit; the answer is its first read (its one-time secret shown).

    None, and the operation stays queued for a worker, when the tenant's lock is taken, the attempt
    declines, or a step fails: nothing is committed then, and what the attempt did on a server must be
    what the worker's run adopts (as after a crash of this process, whose queued operation the sweeper
    dispatches).
    """
    try:
        with ctx.locks.hold(queued.tenant_id, wait_seconds=0) as lease, \
                ctx.sessions(bind=lease.share(), join_transaction_mode="control_fully") as session:
            # One round trip: the operation (locked against a racing cancel), its tenant, server and plan.
            op, tenant, _ = session.execute(
                select(Operation, Tenant, Plan).join(Tenant, Tenant.id == Operation.tenant_id)
                .outerjoin(Plan, Plan.name == Tenant.plan)
                .options(joinedload(Tenant.server), lazyload(Tenant.domain_rows))
                .where(Operation.id == queued.id).with_for_update(of=Operation)
                .execution_options(populate_existing=True)).one()
            if op.status is not OperationStatus.QUEUED:
                return None
            op.start()
            result = attempt(ctx, session, op, tenant)
            if result is None:
                return None  # the session ends rolled back: the operation is still queued
            op.succeed(result)
            tenant.release_slot(op.id)
            revealed = take_one_time_secret(ctx, op)
            session.commit()
    except TenantBusyError:
        return None
    except ControlPlaneError as exc:
        log.warning("tenant %s operation %s: not finished within the request (%s); a worker takes over",
                    queued.tenant_id, queued.id, exc.detail)
        return None
    reveal(op, revealed)
    kind.after(ctx, op)
    log.info("tenant %s operation %s succeeded within the request", op.tenant_id, op.id)
    return op


def take_one_time_secret(ctx: ServiceContext, op: Operation) -> dict[str, Any]:
    """The succeeded operation's one-time secret, cleared from the row (the caller commits): shown once."""
    if op.status is not OperationStatus.SUCCEEDED or not op.one_time_secret_encrypted:
        return {}
    revealed = json.loads(ctx.keyring.decrypt(op.one_time_secret_encrypted, operation_secret_context(op.id)))
    op.one_time_secret_encrypted = None
    return revealed


def reveal(op: Operation, revealed: dict[str, Any]) -> None:
    """Merged after the commit, into the detached object only: the secret is never written back."""
    if revealed:
        op.result = {**(op.result or {}), **revealed}


def lane_of_principal(principal: Principal) -> Lane:
    """The queue an operation waits in, from who asked for it (naming.Lane says why)."""
    if principal.token_id == SCHEDULER.token_id:
        return Lane.BACKGROUND
    return Lane.OPERATIONS if principal.is_super_admin else Lane.TENANT_ADMINS


def lane_of(session: Session, operation: Operation) -> Lane:
    """The lane of an operation dispatched again (a retry, the sweeper): the lane of who first asked for it."""
    if operation.requested_by == SCHEDULER.token_id:
        return Lane.BACKGROUND
    role = session.scalar(select(ApiToken.role).where(ApiToken.id == operation.requested_by)) \
        if operation.requested_by else None
    return Lane.TENANT_ADMINS if role is TokenRole.TENANT_ADMIN else Lane.OPERATIONS


def dispatch(ctx: ServiceContext, operation_id: str, lane: Lane) -> None:
    """Enqueue; when Redis is down the operation stays queued in the catalog and the sweeper dispatches it."""
    try:
        ctx.queue.enqueue_operation(operation_id, lane)
    except DependencyUnavailableError:
        log.warning("operation %s stays queued: enqueue failed, it will be re-dispatched", operation_id)
