"""Warm provisioning: each server keeps `WARM_POOL_SIZE` spare databases at the schema's head; provisioning
claims one (a rename, a new password) instead of creating a database, and the pool is refilled in the
background (after each claim and on the scheduler's tick), rebuilt at the new head when head moves."""
from __future__ import annotations

import logging

from sqlalchemy import select

import tenant_migrations
from control_plane.catalog.models import DatabaseServer, ServerStatus, Tenant
from control_plane.errors import ControlPlaneError
from control_plane.services.context import ServerAdmin, ServiceContext

log = logging.getLogger(__name__)


def claim_spare(ctx: ServiceContext, admin: ServerAdmin, tenant: Tenant, password: str) -> bool:
    """The tenant's database and role from a spare of `admin`'s server; False when none is left (or the pool
    is off). A database already there from a claim cut short is adopted, so a retry converges."""
    if ctx.warm_pool is None or ctx.settings.warm_pool_size <= 0:
        return False
    pool = ctx.warm_pool(admin)
    if admin.database_exists(tenant.database_name):
        pool.adopt(tenant.database_name, tenant.role_name, password)
        return False
    claimed = pool.claim(tenant_migrations.head_revision(), tenant.database_name, tenant.role_name, password)
    ctx.request_warm_refill()
    return claimed


def refill_all(ctx: ServiceContext) -> dict[str, int]:
    """Every active, reachable server's pool back to WARM_POOL_SIZE spares at head; spares created per server."""
    size = ctx.settings.warm_pool_size
    if ctx.warm_pool is None or size <= 0:
        return {}
    with ctx.sessions() as session:
        servers = list(session.scalars(select(DatabaseServer).where(DatabaseServer.status == ServerStatus.ACTIVE,
                                                                    DatabaseServer.reachable.is_(True))))
    head, created = tenant_migrations.head_revision(), {}
    for server in servers:
        try:
            with ctx.admin_for(server) as admin:
                created[server.name] = ctx.warm_pool(admin).refill(head, size)
        except ControlPlaneError as exc:
            log.warning("warm pool of server %s not refilled: %s", server.name, exc.detail)
    return created
