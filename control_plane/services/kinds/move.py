"""MOVE: a tenant's database to another server, online or offline.

Online: the target is filled and kept in step by logical replication while the tenant stays served;
the cut-over then freezes writes for well under a second (tenant `moving`, the source refuses the
tenant role's sessions, the target confirms the source's final position, sequences are carried over)
and the catalog switches the tenant to the target. Offline: the tenant is held (`moving`) while
`pg_dump | pg_restore` copies it. Until the catalog switch commits, the source is the tenant's only
database and every failure, kill or cancel is undone by dropping what was built on the target; after
it, the target is, and a retry only finishes the clean-up. The source database is kept under a dated
name, connections refused, and dropped by the prune job after the grace period.
"""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import naming
from control_plane.adapters.crypto import random_password
from control_plane.catalog.backup_models import RetiredDatabase
from control_plane.catalog.models import (DatabaseServer, Operation, OperationKind, OperationStatus, ServerStatus, Tenant,
                                          TenantStatus, utcnow)
from control_plane.errors import ConflictError, ControlPlaneError, IllegalTransitionError, ServerNotFoundError, TenantNotFoundError, ValidationError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.byte_progress import ByteProgress
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.operation_requests import check_free, find_replay, fingerprint, request_work
from control_plane.services.plans import limits_of

log = logging.getLogger(__name__)

ONLINE, OFFLINE = "online", "offline"
# The cut-over starts once the target is this close behind the source (WAL bytes it has yet to confirm).
CUT_OVER_LAG_BYTES = 1 << 20
# Longest the cut-over waits for the target to confirm the source's final position before giving up
# (and giving the tenant back to the source).
CATCH_UP_SECONDS = 30.0
_POLL = 0.2


def _replication(ctx: ServiceContext, source: DatabaseServer, target: DatabaseServer):
    return ctx.logical_replication(ctx.admin_url_of(source), ctx.admin_url_of(target), source.host, source.port)


def _server(session: Session, name: str) -> DatabaseServer:
    server = session.get(DatabaseServer, name)
    if server is None:
        raise ServerNotFoundError(name)
    return server


class Move(Kind):
    kind = OperationKind.MOVE
    action = "move"
    starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})
    # The tenant keeps its status while its database is copied, and is `moving` only during the cut-over.
    repeatable = True  # before the switch a retry starts clean; after it, a retry only finishes the clean-up
    failed_event = "tenant.move_failed"

    def shown_result(self, params: dict[str, Any]) -> dict[str, Any]:
        return {key: params[key] for key in ("mode", "server", "from_server")}

    def prepare(self, ctx: ServiceContext, session: Session, principal: Principal, tenant_id: str,
                params: dict[str, Any]) -> Tenant:
        tenant = super().prepare(ctx, session, principal, tenant_id, params)
        _check_target(session, tenant, params["server"])
        return tenant

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        return _run(ctx, session, op, tenant, report)

    def after(self, ctx: ServiceContext, op: Operation) -> None:
        ctx.after_move(op.id, None if op.status is OperationStatus.SUCCEEDED else (op.error or "move failed"))

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        """Undo what the move built, unless its switch committed (then the target stays, a retry finishes)."""
        params = op.params
        target, source = session.get(DatabaseServer, params["server"]), session.get(DatabaseServer, params["from_server"])
        if tenant.server_name == params["from_server"] and source is not None and target is not None:
            _reset(ctx, session, op, tenant, source, target)


MOVE = Move()


def _check_target(session: Session, tenant: Tenant, server: str) -> DatabaseServer:
    target = _server(session, server)
    if tenant.server_name == server:
        raise ValidationError("server", f"tenant {tenant.id!r} is already on server {server!r}")
    if target.status is not ServerStatus.ACTIVE:
        raise ConflictError(f"database server {server!r} is {target.status.value}: it takes no tenants")
    return target


def _refuse_the_same_cluster(ctx: ServiceContext, tenant: Tenant, target: DatabaseServer) -> None:
    """A server registered twice under two names (before registration refused it): the move's target
    database would be the tenant's own, dropped as a leftover. Unreachable servers are the job's to report."""
    try:
        same = ctx.admin_for(tenant.server).cluster_identity() == ctx.admin_for(target).cluster_identity()
    except ControlPlaneError:
        return
    if same:
        raise ValidationError("server", f"server {target.name!r} is the same PostgreSQL cluster as "
                                        f"{tenant.server_name!r}: a move between them would destroy the database")


def request_move(ctx: ServiceContext, principal: Principal, tenant_id: str, *, server: str,
                 mode: str | None = None, idempotency_key: str | None = None) -> Operation:
    """Check the move can happen, choose its mode when none is given, record it and enqueue it."""
    principal.require_super_admin()
    if mode not in (None, ONLINE, OFFLINE):
        raise ValidationError("mode", "must be online or offline")
    request = {"server": server, "mode": mode}
    # First, outside any transaction: whether an online move is possible (it asks both servers).
    with ctx.sessions() as session:
        replay = find_replay(session, principal, idempotency_key, fingerprint(MOVE.kind.value, tenant_id, request))
        if replay is not None:
            return replay
        tenant = session.get(Tenant, tenant_id)
        if tenant is None:
            raise TenantNotFoundError(tenant_id)
        check_free(session, tenant)
        if tenant.status not in MOVE.starts_from:
            raise IllegalTransitionError("tenant", tenant_id, tenant.status.value, "move")
        target = _check_target(session, tenant, server)
        _refuse_the_same_cluster(ctx, tenant, target)
        obstacle = None
        if mode != OFFLINE:
            obstacle = _replication(ctx, tenant.server, target).obstacle(tenant.database_name)
        if mode == ONLINE and obstacle:
            raise ValidationError("mode", f"an online move is impossible: {obstacle}")
    chosen = mode or (OFFLINE if obstacle else ONLINE)
    params: dict[str, Any] = {"server": server, "from_server": tenant.server_name, "mode": chosen,
                              "mode_chosen": mode is None}
    if obstacle and mode is None:
        params["online_obstacle"] = obstacle
    return request_work(ctx, principal, MOVE, tenant_id, params, idempotency_key, request=request,
                        audit_action="tenant.move_requested")


def _publish(ctx: ServiceContext, tenant: Tenant) -> None:
    ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                       database=tenant.database_name)


def _back_to_previous_status(tenant: Tenant, op: Operation) -> None:
    if tenant.status is TenantStatus.MOVING:
        tenant.return_to(op.return_status or TenantStatus.ACTIVE)


def _hold(ctx: ServiceContext, session: Session, tenant: Tenant) -> float:
    """The tenant goes `moving` (runtimes hold its new checkouts); returns when that was published."""
    tenant.begin_move()
    session.commit()
    _publish(ctx, tenant)
    return time.monotonic()


def _run(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
    params = op.params
    target = _server(session, params["server"])
    source = _server(session, params["from_server"])
    if tenant.server_name != target.name:
        if tenant.server_name != source.name:
            raise ConflictError(f"tenant {tenant.id!r} is on server {tenant.server_name!r}, not on "
                                f"{source.name!r} where this move started")
        _reset(ctx, session, op, tenant, source, target)
        if params["mode"] == ONLINE:
            timings = _copy_online(ctx, session, op, tenant, source, target, report)
        else:
            timings = _copy_offline(ctx, session, op, tenant, source, target, report)
        # The switch: from this commit on, the target is the tenant's database.
        tenant.server = target
        _back_to_previous_status(tenant, op)
        audit.record(session, "system", "tenant.moved", tenant.id, op.id, from_server=source.name,
                     to_server=target.name, mode=params["mode"])
        session.commit()
        _publish(ctx, tenant)
        timings["freeze_ms"] = round((time.monotonic() - timings.pop("held_at")) * 1000, 1)
    else:
        timings = {}
    report("clean_up", 95, cancellable=False)
    retired = _retire_source(ctx, session, op, tenant, source, target)
    return {"tenant_id": tenant.id, "server": target.name, "from_server": source.name, "mode": params["mode"],
            "retired_database": retired, **timings}


def _reset(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant,
           source: DatabaseServer, target: DatabaseServer) -> None:
    """Back to the state before the move (a retried or resumed attempt starts clean)."""
    if tenant.status is TenantStatus.MOVING:  # an earlier attempt died during its cut-over
        ctx.admin_for(source).set_login(tenant.role_name, True)
        _back_to_previous_status(tenant, op)
        session.commit()
        _publish(ctx, tenant)
    _undo_target(ctx, op, tenant, source, target)


def _undo_target(ctx: ServiceContext, op: Operation, tenant: Tenant, source: DatabaseServer,
                 target: DatabaseServer) -> None:
    if op.params["mode"] == ONLINE:
        _replication(ctx, source, target).cleanup(tenant.database_name, tenant.database_name,
                                                  naming.move_object_name(op.id))
    admin = ctx.admin_for(target)
    admin.drop_database(tenant.database_name)


def _prepare_target(ctx: ServiceContext, tenant: Tenant, target: DatabaseServer, password: str):
    with ctx.admin_for(target) as admin:
        admin.ensure_role(tenant.role_name, password)
        admin.ensure_database(tenant.database_name, owner=tenant.role_name)
        admin.restrict_connect(tenant.database_name, tenant.role_name)
        admin.close_other_databases()
    return ctx.backup_tools(ctx.admin_url_of(target))


def _apply_limits(ctx: ServiceContext, session: Session, tenant: Tenant, target: DatabaseServer) -> None:
    """The tenant's plan limits on its role on the target, once the copy that logs in as that role is done
    (a plan's statement_timeout or connection limit must not cut the copy short)."""
    with ctx.admin_for(target) as admin:
        admin.apply_limits(tenant.role_name, limits_of(session, tenant))


def _copy_online(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, source: DatabaseServer,
                 target: DatabaseServer, report: Report) -> dict[str, Any]:
    password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
    database, name = tenant.database_name, naming.move_object_name(op.id)
    report("prepare_target", 5)
    target_tools = _prepare_target(ctx, tenant, target, password)
    report("copy_schema", 10)
    replication = _replication(ctx, source, target)
    replication.prepare_source(database, name, replication_password := random_password())
    ctx.backup_tools(ctx.admin_url_of(source)).copy_into(target_tools, database, tenant.role_name, password,
                                                         schema_only=True)
    _apply_limits(ctx, session, tenant, target)
    report("start_replication", 15)
    replication.subscribe(database, name, replication_password)
    started = time.monotonic()
    # The initial copy's bytes (tables and indexes on the target of those on the source), on the result.
    copied = ByteProgress(ctx, op.id, 0)
    while True:
        done, tables = replication.copy_progress(database, name)
        if tables and done == tables:
            break
        if copied.due():
            copied.set(*replication.copy_bytes(database))
        report("copy_data", 15 + (60 * done // tables if tables else 0))
        time.sleep(_POLL)
    copied.set(*replication.copy_bytes(database))
    copied_bytes = copied.finish()
    copied_at = time.monotonic()
    report("catch_up", 78)
    while (lag := replication.lag_bytes(name)) is None or lag > CUT_OVER_LAG_BYTES:
        report("catch_up", 78)
        time.sleep(_POLL)

    report("cut_over", 85, cancellable=False)
    with replication.cut_over(database, name) as cut:
        held_at = _hold(ctx, session, tenant)
        try:
            cut.refuse_sessions(tenant.role_name)
            cut.catch_up(CATCH_UP_SECONDS)
            cut.stop_apply()
            sequences = cut.sync_sequences()
        except BaseException:
            # Nothing was switched: the source is still the tenant's database. Give it back at once.
            ctx.admin_for(source).set_login(tenant.role_name, True)
            _back_to_previous_status(tenant, op)
            session.commit()
            _publish(ctx, tenant)
            raise
    return {"held_at": held_at, "copy_seconds": round(copied_at - started, 2), "sequences": sequences,
            **copied_bytes}


def _copy_offline(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, source: DatabaseServer,
                  target: DatabaseServer, report: Report) -> dict[str, Any]:
    password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
    report("prepare_target", 5)
    target_tools = _prepare_target(ctx, tenant, target, password)
    report("hold", 10)
    source_admin = ctx.admin_for(source)
    held_at = _hold(ctx, session, tenant)
    try:
        source_admin.set_login(tenant.role_name, False)
        source_admin.end_sessions(tenant.database_name, tenant.role_name)
        report("copy_data", 20)
        source_tools = ctx.backup_tools(ctx.admin_url_of(source))
        # The dump's bytes fed to the target of the source database's size (an estimate), on the result.
        fed = ByteProgress(ctx, op.id, source_tools.database_size(tenant.database_name))
        copied = source_tools.copy_into(target_tools, tenant.database_name, tenant.role_name, password,
                                        on_bytes=fed.add)
        fed_bytes = fed.finish()
        _apply_limits(ctx, session, tenant, target)
    except BaseException:
        source_admin.set_login(tenant.role_name, True)
        _back_to_previous_status(tenant, op)
        session.commit()
        _publish(ctx, tenant)
        raise
    return {"held_at": held_at, "archive_bytes": copied, **fed_bytes}


def _retire_source(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant,
                   source: DatabaseServer, target: DatabaseServer) -> str:
    """After the switch: replication objects gone, the source database kept under a dated name."""
    retired = naming.moved_database_name(tenant.id, op.id)
    if op.params["mode"] == ONLINE:
        current = tenant.database_name if ctx.admin_for(source).database_exists(tenant.database_name) else retired
        _replication(ctx, source, target).cleanup(current, tenant.database_name, naming.move_object_name(op.id))
    recorded = session.scalars(select(RetiredDatabase).where(RetiredDatabase.operation_id == op.id,
                                                             RetiredDatabase.database_name == retired)).first()
    if recorded is None:
        # Recorded before the rename that creates it, so the prune job can never miss it.
        now = utcnow()
        session.add(RetiredDatabase(tenant_id=tenant.id, server_name=source.name, database_name=retired,
                                    operation_id=op.id, retired_at=now,
                                    drop_after=now + timedelta(days=ctx.settings.retired_database_days)))
        session.commit()
    ctx.admin_for(source).retire_database(tenant.database_name, retired)
    return retired
