"""Database servers that tenants are placed on: registration, draining and placement."""
from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from control_plane.catalog.db import transaction
from control_plane.catalog.models import DatabaseServer, ServerStatus, Tenant, TenantStatus
from control_plane.errors import ConflictError, NoServerAvailableError, ServerNotFoundError, ValidationError
from control_plane.services import audit
from control_plane.services.context import ServiceContext, server_secret_context

DEFAULT_SERVER = "default"


def _endpoint(admin_url: str) -> tuple[str, int]:
    try:
        url = make_url(admin_url)
    except Exception as exc:  # SQLAlchemy raises ArgumentError with the URL in it: don't echo it
        raise ValidationError("admin_url", "is not a valid PostgreSQL URL") from exc
    if not url.drivername.startswith("postgres") or not url.host:
        raise ValidationError("admin_url", "must be a postgresql:// URL with a host")
    return url.host, url.port or 5432


def ensure_default_server(ctx: ServiceContext) -> None:
    """Register TENANT_DB_ADMIN_URL as the `default` server, or refresh its credentials when they changed."""
    host, port = _endpoint(ctx.settings.tenant_db_admin_url)
    context = server_secret_context(DEFAULT_SERVER)
    with transaction(ctx.sessions) as session:
        server = session.get(DatabaseServer, DEFAULT_SERVER, with_for_update=True)
        if server is None:
            session.add(DatabaseServer(name=DEFAULT_SERVER, host=host, port=port,
                                       admin_url_encrypted=ctx.keyring.encrypt(ctx.settings.tenant_db_admin_url, context)))
            audit.record(session, "system", "server.registered", server=DEFAULT_SERVER)
        elif ctx.keyring.decrypt(server.admin_url_encrypted, context) != ctx.settings.tenant_db_admin_url:
            server.host, server.port = host, port
            server.admin_url_encrypted = ctx.keyring.encrypt(ctx.settings.tenant_db_admin_url, context)


def list_servers(ctx: ServiceContext) -> list[tuple[DatabaseServer, int]]:
    """Servers with the number of tenants placed on each (deleted ones excluded)."""
    with ctx.sessions() as session:
        counts = dict(session.execute(
            select(Tenant.server_name, func.count()).where(Tenant.status != TenantStatus.DELETED)
            .group_by(Tenant.server_name)).all())
        servers = session.scalars(select(DatabaseServer).order_by(DatabaseServer.name)).all()
        return [(server, counts.get(server.name, 0)) for server in servers]


def register_server(ctx: ServiceContext, actor: str, name: str, admin_url: str, max_tenants: int | None) -> DatabaseServer:
    host, port = _endpoint(admin_url)
    # Refuse a server we cannot administer now rather than fail every provisioning later.
    ctx.server_admin(admin_url).ping()
    with transaction(ctx.sessions) as session:
        if session.get(DatabaseServer, name) is not None:
            raise ConflictError(f"database server {name!r} already exists")
        server = DatabaseServer(name=name, host=host, port=port, max_tenants=max_tenants,
                                admin_url_encrypted=ctx.keyring.encrypt(admin_url, server_secret_context(name)))
        session.add(server)
        audit.record(session, actor, "server.registered", server=name)
    return server


def set_draining(ctx: ServiceContext, actor: str, name: str, draining: bool) -> DatabaseServer:
    with transaction(ctx.sessions) as session:
        server = session.get(DatabaseServer, name, with_for_update=True)
        if server is None:
            raise ServerNotFoundError(name)
        server.drain() if draining else server.undrain()
        audit.record(session, actor, "server.drained" if draining else "server.undrained", server=name)
    return server


def choose_server(session: Session) -> DatabaseServer:
    """The active server with the fewest tenants that still has room."""
    load = (select(Tenant.server_name, func.count().label("n")).where(Tenant.status != TenantStatus.DELETED)
            .group_by(Tenant.server_name).subquery())
    rows = session.execute(
        select(DatabaseServer, func.coalesce(load.c.n, 0))
        .outerjoin(load, load.c.server_name == DatabaseServer.name)
        .where(DatabaseServer.status == ServerStatus.ACTIVE)
        .order_by(func.coalesce(load.c.n, 0), DatabaseServer.name)).all()
    for server, tenants in rows:
        if server.max_tenants is None or tenants < server.max_tenants:
            return server
    raise NoServerAvailableError("no active database server has room for another tenant")
