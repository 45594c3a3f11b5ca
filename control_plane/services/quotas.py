"""Storage quotas (from each tenant's plan): the sweeper compares database sizes with them and announces
every crossing of 80% and 100% (an audit event, a tenant event and a log line), once per crossing."""
from __future__ import annotations

import logging

from sqlalchemy import select

from control_plane.catalog.db import transaction
from control_plane.catalog.models import Tenant, TenantStatus
from control_plane.catalog.plan_models import Plan
from control_plane.services import audit
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)

NEAR, FULL = 80, 100


def quota_level(size_bytes: int, quota_bytes: int | None) -> int:
    """100 at or past the quota, 80 from 80% of it, else 0 (also without a quota)."""
    if not quota_bytes:
        return 0
    ratio = size_bytes / quota_bytes
    return FULL if ratio >= 1 else NEAR if ratio >= NEAR / 100 else 0


def check_storage(ctx: ServiceContext, sizes: dict[str, dict[str, int]]) -> dict[str, int]:
    """`sizes`: server → database → bytes, as just measured. Records each tenant's quota level and
    announces the changes; returns tenant id → new level for the tenants whose level changed."""
    changes: dict[str, tuple[int, int, int | None]] = {}
    with transaction(ctx.sessions) as session:
        rows = session.execute(
            select(Tenant, Plan.storage_quota_bytes).outerjoin(Plan, Plan.name == Tenant.plan)
            .where(Tenant.server_name.in_(list(sizes)), Tenant.status != TenantStatus.DELETED)
            .with_for_update(of=Tenant)).all()
        for tenant, quota in rows:
            size = sizes[tenant.server_name].get(tenant.database_name)
            if size is None:
                continue
            level = quota_level(size, quota)
            if level != (tenant.storage_quota_level or 0):
                tenant.storage_quota_level = level
                changes[tenant.id] = (level, size, quota)
                audit.record(session, "system", "tenant.storage_quota", tenant.id, level=level, size_bytes=size,
                             quota_bytes=quota)
    for tenant_id, (level, size, quota) in changes.items():
        if level:
            log.warning("tenant %s: database at %d%% of its storage quota (%d of %s bytes)", tenant_id,
                        round(100 * size / quota), size, quota)
        ctx.events.publish(tenant_id, "storage_quota", level=level)
    return {tenant_id: level for tenant_id, (level, _, _) in changes.items()}


def storage_quotas(ctx: ServiceContext) -> list[tuple[str, int]]:
    """(tenant id, quota bytes) of every live tenant whose plan has a storage quota (for /metrics)."""
    with ctx.sessions() as session:
        return list(session.execute(
            select(Tenant.id, Plan.storage_quota_bytes).join(Plan, Plan.name == Tenant.plan)
            .where(Plan.storage_quota_bytes.is_not(None), Tenant.status != TenantStatus.DELETED)).all())
