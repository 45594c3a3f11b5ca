"""Warm provisioning: each server keeps `WARM_POOL_SIZE` spare databases at the schema's head; provisioning
claims one (one transaction: renames, a new password, the plan's limits) instead of creating a database,
and the pool is refilled in the background (after each provisioning and on the scheduler's tick), rebuilt
at the new head when head moves."""
from __future__ import annotations

import logging

from sqlalchemy import select

import tenant_migrations
from control_plane.catalog.models import DatabaseServer, ServerStatus, Tenant
from control_plane.catalog.plan_models import RoleLimits
from control_plane.errors import ControlPlaneError
from control_plane.services.context import ServerAdmin, ServiceContext

log = logging.getLogger(__name__)


def claim_spare(ctx: ServiceContext, admin: ServerAdmin, tenant: Tenant, password: str, limits: RoleLimits) -> bool:
    """The tenant's database and role, with its password and plan limits, from a spare of `admin`'s server;
    False when none is left (or the pool is off). A database already there from an earlier attempt is
    adopted instead, so a retry converges on the cold path. Ask for a refill (`request_refill`) afterwards."""
    if ctx.warm_pool is None or ctx.settings.warm_pool_size <= 0:
        return False
    pool = ctx.warm_pool(admin)
    if pool.claim(tenant_migrations.head_revision(), tenant.database_name, tenant.role_name, password, limits):
        return True
    if admin.database_exists(tenant.database_name):
        pool.adopt(tenant.database_name, tenant.role_name, password)
    return False


def request_refill(ctx: ServiceContext) -> None:
    """The pools topped up in the background (a job; the scheduler's tick does it too), once the provisioning
    that took a spare is done: a refill clones a database, which must not compete with the claim itself."""
    if ctx.warm_pool is not None and ctx.settings.warm_pool_size > 0:
        ctx.request_warm_refill()


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
