"""Draining a server: every tenant on it moved off, a bounded number at a time, tracked as a run.

A run has one item per tenant. `advance` is the dispatcher: with the run row locked it settles the
items whose move finished, then requests moves for pending items up to the run's concurrency, each to
the server with the most headroom. It runs when the drain is requested or resumed, when one of its
moves ends, and from the scheduler's tick (so a lost wake-up only delays a run). The server is
marked draining first, so nothing new is placed on it meanwhile.
"""
from __future__ import annotations

import logging

from sqlalchemy import func, select

from control_plane.catalog.db import get_or_raise, transaction
from control_plane.catalog.drain_models import DrainItem, DrainItemStatus, DrainRun, DrainStatus
from control_plane.catalog.models import DatabaseServer, Operation, OperationStatus, Tenant, TenantStatus, utcnow
from control_plane.errors import ConflictError, ControlPlaneError, NotFoundError, ServerNotFoundError
from control_plane.services import audit
from control_plane.services.auth import SYSTEM, Principal
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.move import request_move
from control_plane.services.servers import choose_server

log = logging.getLogger(__name__)

MAX_CONCURRENCY = 50


class DrainRunNotFoundError(NotFoundError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"drain run {run_id!r} does not exist")


def start_drain(ctx: ServiceContext, principal: Principal, server_name: str, *, concurrency: int = 3,
                mode: str | None = None) -> DrainRun:
    """Mark the server draining and record a run with one item per tenant on it; start the first moves."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        server = get_or_raise(session, DatabaseServer, server_name, ServerNotFoundError, for_update=True)
        running = session.scalars(select(DrainRun).where(DrainRun.server_name == server_name,
                                                         DrainRun.status == DrainStatus.RUNNING)).first()
        if running is not None:
            raise ConflictError(f"server {server_name!r} is already being drained by run {running.id}")
        server.drain()
        tenants = session.scalars(select(Tenant.id).where(Tenant.server_name == server_name,
                                                          Tenant.status != TenantStatus.DELETED)).all()
        run = DrainRun(server_name=server_name, mode=mode, concurrency=concurrency, actor=principal.actor,
                       items=[DrainItem(tenant_id=tenant_id) for tenant_id in sorted(tenants)])
        session.add(run)
        session.flush()
        audit.record(session, principal.actor, "server.drain_started", server=server_name, run_id=run.id,
                     tenants=len(tenants), concurrency=concurrency)
    return advance(ctx, run.id)


def get_drain(ctx: ServiceContext, principal: Principal, run_id: str) -> DrainRun:
    principal.require_super_admin()
    with ctx.sessions() as session:
        return get_or_raise(session, DrainRun, run_id, DrainRunNotFoundError)


def list_drains(ctx: ServiceContext, principal: Principal, *, offset: int = 0,
                limit: int = 50) -> tuple[list[DrainRun], int]:
    """Drain runs, newest first (the console's runs page), with their items; and how many there are."""
    principal.require_super_admin()
    with ctx.sessions() as session:
        total = session.scalar(select(func.count()).select_from(DrainRun)) or 0
        runs = session.scalars(select(DrainRun).order_by(DrainRun.created_at.desc(), DrainRun.id)
                               .offset(offset).limit(limit)).all()
        return list(runs), total


def cancel_drain(ctx: ServiceContext, principal: Principal, run_id: str) -> DrainRun:
    """Start no more moves; those already requested finish (or are cancelled one by one). Idempotent."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        run = get_or_raise(session, DrainRun, run_id, DrainRunNotFoundError, for_update=True)
        if run.status is DrainStatus.RUNNING:
            run.status, run.finished_at = DrainStatus.CANCELLED, utcnow()
            audit.record(session, principal.actor, "server.drain_cancelled", server=run.server_name, run_id=run.id)
    return advance(ctx, run_id)


def resume_drain(ctx: ServiceContext, principal: Principal, run_id: str) -> DrainRun:
    """Failed items are tried again and a cancelled or failed run goes on; tenants that arrived since join."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        run = get_or_raise(session, DrainRun, run_id, DrainRunNotFoundError, for_update=True)
        if run.status is not DrainStatus.SUCCEEDED:
            run.status, run.finished_at, run.error = DrainStatus.RUNNING, None, None
            known = {item.tenant_id for item in run.items}
            for item in run.items:
                if item.status is DrainItemStatus.FAILED:
                    item.status, item.operation_id, item.error = DrainItemStatus.PENDING, None, None
            for tenant_id in session.scalars(select(Tenant.id).where(Tenant.server_name == run.server_name,
                                                                     Tenant.status != TenantStatus.DELETED)):
                if tenant_id not in known:
                    run.items.append(DrainItem(tenant_id=tenant_id))
            session.get(DatabaseServer, run.server_name).drain()
            audit.record(session, principal.actor, "server.drain_resumed", server=run.server_name, run_id=run.id)
    return advance(ctx, run_id)


def _settle(session, run: DrainRun, item: DrainItem) -> None:
    """An item whose move operation ended: moved, or failed with the operation's error."""
    op = session.get(Operation, item.operation_id)
    if op is None or not op.status.finished:
        return
    if op.status is OperationStatus.SUCCEEDED:
        item.status = DrainItemStatus.MOVED
    else:
        item.status, item.error = DrainItemStatus.FAILED, op.error or f"move {op.status.value}"


def advance(ctx: ServiceContext, run_id: str) -> DrainRun:
    """Settle finished moves, start pending ones up to the concurrency bound, end the run when all are done."""
    with ctx.sessions() as session:
        run = get_or_raise(session, DrainRun, run_id, DrainRunNotFoundError, for_update=True)
        for item in run.items:
            if item.status is DrainItemStatus.MOVING:
                _settle(session, run, item)
        moving = sum(item.status is DrainItemStatus.MOVING for item in run.items)
        to_start = [item for item in run.items if item.status is DrainItemStatus.PENDING]
        if run.status is DrainStatus.RUNNING:
            for item in to_start[:max(run.concurrency - moving, 0)]:
                _start(ctx, session, run, item)
        if not any(item.status in (DrainItemStatus.PENDING, DrainItemStatus.MOVING) for item in run.items) \
                or (run.status is not DrainStatus.RUNNING
                    and not any(item.status is DrainItemStatus.MOVING for item in run.items)):
            _finish(session, run)
        session.commit()
        session.refresh(run)
        return run


def _start(ctx: ServiceContext, session, run: DrainRun, item: DrainItem) -> None:
    tenant = session.get(Tenant, item.tenant_id)
    if tenant is None or tenant.status is TenantStatus.DELETED or tenant.server_name != run.server_name:
        item.status = DrainItemStatus.SKIPPED
        return
    try:
        target = choose_server(session, exclude=run.server_name).name
        # Requested in its own transactions (it asks both servers whether an online move is possible);
        # the run row stays locked meanwhile, so no other dispatcher starts this item twice.
        op = request_move(ctx, SYSTEM, item.tenant_id, server=target, mode=run.mode,
                          idempotency_key=f"drain:{run.id}:{item.id}:{item.updated_at.timestamp()}")
    except ControlPlaneError as exc:
        log.warning("drain %s: tenant %s cannot be moved now: %s", run.id, item.tenant_id, exc.detail)
        item.status, item.error = DrainItemStatus.FAILED, exc.detail
        return
    item.status, item.operation_id, item.target_server, item.error = DrainItemStatus.MOVING, op.id, target, None
    if op.status.finished:  # an idempotent replay of a move that already ended
        _settle(session, run, item)


def _finish(session, run: DrainRun) -> None:
    counts = run.counts()
    if run.status is DrainStatus.RUNNING:
        run.status = DrainStatus.FAILED if counts["failed"] else DrainStatus.SUCCEEDED
        run.finished_at = utcnow()
        if counts["failed"]:
            run.error = f"{counts['failed']} of {counts['total']} tenants could not be moved (resume to retry them)"
        audit.record(session, run.actor or "system", "server.drain_finished", server=run.server_name,
                     run_id=run.id, status=run.status.value, **counts)


def advance_running(ctx: ServiceContext) -> list[str]:
    """Every running drain, advanced once (the scheduler's tick); the ids of those still running."""
    with ctx.sessions() as session:
        ids = session.scalars(select(DrainRun.id).where(DrainRun.status == DrainStatus.RUNNING)).all()
    still = []
    for run_id in ids:
        try:
            if advance(ctx, run_id).status is DrainStatus.RUNNING:
                still.append(run_id)
        except ControlPlaneError:
            log.exception("drain %s could not be advanced", run_id)
    return still


def on_move_finished(ctx: ServiceContext, operation_id: str, error: str | None) -> None:
    """Hook for the move kind, at the end of a move (its switch committed, or its failure undone): the
    drain it belongs to, if any, records the outcome and starts the next move."""
    with transaction(ctx.sessions) as session:
        item = session.scalars(select(DrainItem).where(DrainItem.operation_id == operation_id)).first()
        if item is None:
            return
        run = session.get(DrainRun, item.run_id, with_for_update=True)
        session.refresh(item)
        if item.status is DrainItemStatus.MOVING and item.operation_id == operation_id:
            item.status, item.error = (DrainItemStatus.FAILED, error) if error else (DrainItemStatus.MOVED, None)
        run_id = run.id
    try:
        advance(ctx, run_id)
    except ControlPlaneError:
        log.exception("drain %s could not be advanced after move %s", run_id, operation_id)
