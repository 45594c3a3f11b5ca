"""Database servers that tenants are placed on: registration, draining and placement."""
from __future__ import annotations

import logging

from sqlalchemy import func, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from control_plane.catalog.db import get_or_raise, transaction
from control_plane.catalog.models import DatabaseServer, ServerStatus, Tenant, TenantStatus, utcnow
from control_plane.errors import (ConflictError, ControlPlaneError, DatabaseServerError, NoServerAvailableError,
                                  ServerNotFoundError,
                                  ValidationError)
from control_plane.services import audit
from control_plane.services.context import ServiceContext, server_secret_context
from control_plane.services.quotas import check_storage
from control_plane.tls import postgres_tls_options, postgres_verifies

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

DEFAULT_SERVER = "default"


def _endpoint(ctx: ServiceContext, admin_url: str) -> tuple[str, int, dict[str, str]]:
    """Host, port and TLS options of an admin URL; with REQUIRE_TLS, only a URL that verifies the server."""
    try:
        url = make_url(admin_url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError with the URL in it: don't echo it
        raise ValidationError("admin_url", "is not a valid PostgreSQL URL") from exc
    if not url.drivername.startswith("postgres") or not url.host:
        raise ValidationError("admin_url", "must be a postgresql:// URL with a host")
    tls = postgres_tls_options(admin_url)
    if ctx.settings.require_tls and not postgres_verifies(tls):
        raise ValidationError("admin_url", "REQUIRE_TLS is on: the URL needs sslmode=verify-full (and sslrootcert)")
    return url.host, url.port or 5432, tls


def ensure_default_server(ctx: ServiceContext) -> bool:
    """Register TENANT_DB_ADMIN_URL as the `default` server on first start; True if it is registered as given.

    Once registered, the catalog's URL wins: a process started with a different TENANT_DB_ADMIN_URL (an old
    secret, another environment's file) must not silently re-point every tenant of the server. The
    difference is logged (without the URL) and `tenantctl servers set-url default` applies it deliberately.
    """
    host, port, tls = _endpoint(ctx, ctx.settings.tenant_db_admin_url)
    context = server_secret_context(DEFAULT_SERVER)
    with ctx.sessions() as session:
        server = session.get(DatabaseServer, DEFAULT_SERVER)
        if server is not None:
            if ctx.keyring.decrypt(server.admin_url_encrypted, context) == ctx.settings.tenant_db_admin_url:
                if server.tls != tls:  # registered before servers kept their TLS options
                    with transaction(ctx.sessions) as writer:
                        writer.get(DatabaseServer, DEFAULT_SERVER, with_for_update=True).tls = tls
                return True
            log.warning("TENANT_DB_ADMIN_URL differs from the registered server %r (%s:%s, given %s:%s): "
                        "not applied; run `tenantctl servers set-url %s` to change it",
                        DEFAULT_SERVER, server.host, server.port, host, port, DEFAULT_SERVER)
            return False
    with transaction(ctx.sessions) as session:
        if session.get(DatabaseServer, DEFAULT_SERVER, with_for_update=True) is None:
            session.add(DatabaseServer(name=DEFAULT_SERVER, host=host, port=port, tls=tls,
                                       admin_url_encrypted=ctx.keyring.encrypt(ctx.settings.tenant_db_admin_url, context)))
            audit.record(session, "system", "server.registered", server=DEFAULT_SERVER)
    return True


def _tenant_counts(session: Session) -> dict[str, int]:
    return dict(session.execute(select(Tenant.server_name, func.count()).where(Tenant.status != TenantStatus.DELETED)
                                .group_by(Tenant.server_name)).all())


def list_servers(ctx: ServiceContext) -> list[tuple[DatabaseServer, int]]:
    """Servers with the number of tenants placed on each (deleted ones excluded)."""
    with ctx.sessions() as session:
        counts = _tenant_counts(session)
        servers = session.scalars(select(DatabaseServer).order_by(DatabaseServer.name)).all()
        return [(server, counts.get(server.name, 0)) for server in servers]


def get_server(ctx: ServiceContext, name: str) -> tuple[DatabaseServer, int]:
    with ctx.sessions() as session:
        server = get_or_raise(session, DatabaseServer, name, ServerNotFoundError)
        return server, _tenant_counts(session).get(name, 0)


def check_servers(ctx: ServiceContext) -> dict[str, bool]:
    """Ask every server for its connections and database sizes; record them, or that it is unreachable.

    Run by the scheduler every minute: placement reads these figures, never the servers themselves.
    """
    with ctx.sessions() as session:
        servers = list(session.scalars(select(DatabaseServer)))
    seen: dict[str, tuple[dict | None, str | None]] = {}
    for server in servers:  # I/O outside any catalog transaction
        try:
            seen[server.name] = (ctx.admin_for(server).usage(), None)
        except ControlPlaneError as exc:
            log.warning("database server %s is unreachable: %s", server.name, exc.detail)
            seen[server.name] = (None, exc.detail)
    with transaction(ctx.sessions) as session:
        for name, (usage, error) in seen.items():
            server = session.get(DatabaseServer, name, with_for_update=True)
            if server is None:
                continue
            server.checked_at, server.reachable, server.check_error = utcnow(), usage is not None, error
            if usage is not None:
                server.connections, server.max_connections = usage["connections"], usage["max_connections"]
                server.database_bytes = sum(usage["database_sizes"].values())
    check_storage(ctx, {name: usage["database_sizes"] for name, (usage, _) in seen.items() if usage is not None})
    return {name: usage is not None for name, (usage, _) in seen.items()}


def register_server(ctx: ServiceContext, actor: str, name: str, admin_url: str, max_tenants: int | None,
                    max_size_bytes: int | None = None) -> DatabaseServer:
    host, port, tls = _endpoint(ctx, admin_url)
    # Refuse a server we cannot administer now rather than fail every provisioning later: the URL given is
    # what is wrong (422), not this service (a 502 would say the control plane failed).
    try:
        ctx.server_admin(admin_url).ping()
    except DatabaseServerError as exc:
        raise ValidationError("admin_url", f"cannot administer that server: {exc.detail}") from exc
    _refuse_a_registered_cluster(ctx, name, admin_url)
    with transaction(ctx.sessions) as session:
        if session.get(DatabaseServer, name) is not None:
            raise ConflictError(f"database server {name!r} already exists")
        server = DatabaseServer(name=name, host=host, port=port, max_tenants=max_tenants, max_size_bytes=max_size_bytes,
                                tls=tls,
                                admin_url_encrypted=ctx.keyring.encrypt(admin_url, server_secret_context(name)))
        session.add(server)
        audit.record(session, actor, "server.registered", server=name)
    return server


def _refuse_a_registered_cluster(ctx: ServiceContext, name: str, admin_url: str) -> None:
    """422 when `admin_url` reaches a cluster another server already names (another host name or address for
    it): two names for one cluster share database and role names, so a move between them drops the tenant's
    own database as the target's leftover, and reconcile takes one's tenants for the other's orphans."""
    identity = ctx.server_admin(admin_url).cluster_identity()
    with ctx.sessions() as session:
        others = list(session.scalars(select(DatabaseServer).where(DatabaseServer.name != name)))
    for other in others:  # I/O outside any catalog transaction
        try:
            same = ctx.admin_for(other).cluster_identity() == identity
        except ControlPlaneError as exc:  # unreachable now: it cannot be told apart, and must not block this
            log.warning("database server %s not compared with %s: %s", other.name, name, exc.detail)
            continue
        if same:
            raise ValidationError("admin_url", f"reaches the same PostgreSQL cluster as server {other.name!r} "
                                               "(one cluster is one server)")


def replace_server(ctx: ServiceContext, actor: str, name: str, admin_url: str) -> DatabaseServer:
    """Point a registered server at a new admin URL (new credentials, a replacement after a disaster), checked
    first: its tenants stay placed on it by name."""
    host, port, tls = _endpoint(ctx, admin_url)
    ctx.server_admin(admin_url).ping()
    _refuse_a_registered_cluster(ctx, name, admin_url)
    with transaction(ctx.sessions) as session:
        server = get_or_raise(session, DatabaseServer, name, ServerNotFoundError, for_update=True)
        server.host, server.port, server.tls = host, port, tls
        server.admin_url_encrypted = ctx.keyring.encrypt(admin_url, server_secret_context(name))
        audit.record(session, actor, "server.replaced", server=name, host=host, port=port)
    return server


_UNSET: object = object()


def update_server(ctx: ServiceContext, actor: str, name: str, *, max_tenants=_UNSET,
                  max_size_bytes=_UNSET) -> DatabaseServer:
    """Change a server's capacity (None: unbounded on that resource)."""
    with transaction(ctx.sessions) as session:
        server = get_or_raise(session, DatabaseServer, name, ServerNotFoundError, for_update=True)
        changes = {key: value for key, value in (("max_tenants", max_tenants), ("max_size_bytes", max_size_bytes))
                   if value is not _UNSET}
        for key, value in changes.items():
            setattr(server, key, value)
        audit.record(session, actor, "server.updated", server=name, **changes)
    return server


def set_draining(ctx: ServiceContext, actor: str, name: str, draining: bool) -> DatabaseServer:
    with transaction(ctx.sessions) as session:
        server = get_or_raise(session, DatabaseServer, name, ServerNotFoundError, for_update=True)
        server.drain() if draining else server.undrain()
        audit.record(session, actor, "server.drained" if draining else "server.undrained", server=name)
    return server


def remove_server(ctx: ServiceContext, actor: str, name: str) -> None:
    """Forget a server; refused while tenants are placed on it (drain it first) and for `default`."""
    with transaction(ctx.sessions) as session:
        server = get_or_raise(session, DatabaseServer, name, ServerNotFoundError, for_update=True)
        if name == DEFAULT_SERVER:
            raise ConflictError("the default server (TENANT_DB_ADMIN_URL) cannot be removed")
        remaining = session.scalar(select(func.count()).select_from(Tenant).where(
            Tenant.server_name == name, Tenant.status != TenantStatus.DELETED))
        if remaining:
            raise ConflictError(f"database server {name!r} still holds {remaining} tenant(s): drain it first")
        # Deleted tenants keep their row for the record; they no longer point at a server that is gone.
        session.execute(update(Tenant).where(Tenant.server_name == name).values(server_name=None))
        session.delete(server)
        audit.record(session, actor, "server.removed", server=name)


def headroom(server: DatabaseServer, tenants: int) -> float:
    """The server's free share of its scarcest resource, 0 (full) to 1 (empty):

        min(1 - tenants / max_tenants,                 (1 when max_tenants is not set)
            1 - connections / max_connections,         (as last checked; 1 before the first check)
            1 - database_bytes / max_size_bytes)       (1 when max_size_bytes is not set)
    """
    shares = [1.0]
    if server.max_tenants:
        shares.append(1 - tenants / server.max_tenants)
    if server.max_connections:
        shares.append(1 - (server.connections or 0) / server.max_connections)
    if server.max_size_bytes:
        shares.append(1 - (server.database_bytes or 0) / server.max_size_bytes)
    return min(shares)


def choose_server(session: Session, exclude: str | None = None) -> DatabaseServer:
    """The active, reachable server with the most headroom (ties: fewer tenants, then name); never a full one."""
    counts = _tenant_counts(session)
    candidates = session.scalars(select(DatabaseServer).where(DatabaseServer.status == ServerStatus.ACTIVE,
                                                              DatabaseServer.reachable.is_(True))).all()
    ranked = sorted(((headroom(server, counts.get(server.name, 0)), server) for server in candidates
                     if server.name != exclude),
                    key=lambda pair: (-pair[0], counts.get(pair[1].name, 0), pair[1].name))
    for room, server in ranked:
        if room > 0:
            return server
    raise NoServerAvailableError("no active, reachable database server has room for another tenant "
                                 "(register a server, raise a capacity, or undrain one)")
