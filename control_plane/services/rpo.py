"""Recovery point objective: which tenants' newest backup is older than their `rpo_hours`."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, DateTime, func, literal, select

from control_plane.catalog.backup_models import BackupPolicy
from control_plane.catalog.models import Tenant, TenantStatus

DEFAULT_RPO_HOURS = 24
# Tenants whose data exists and must be backed up (a suspended or busy tenant's database still holds it).
BACKED_UP_STATUSES = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MIGRATING, TenantStatus.RESTORING,
                      TenantStatus.MOVING)


def rpo_hours_of_tenant():
    """The tenant's RPO in hours (its policy's, else the default), as a correlated SQL expression."""
    return func.coalesce(select(BackupPolicy.rpo_hours).where(BackupPolicy.tenant_id == Tenant.id)
                         .scalar_subquery(), DEFAULT_RPO_HOURS)


def backup_age_start():
    """Since when the tenant's data is unprotected: its newest backup, or its creation if it has none."""
    return func.coalesce(Tenant.last_backup_at, Tenant.created_at)


def backup_stale_clause(now: datetime) -> ColumnElement[bool]:
    """Its data exists, and its newest completed backup (or its creation) is older than its RPO."""
    deadline = literal(now, DateTime(timezone=True)) - func.make_interval(0, 0, 0, 0, rpo_hours_of_tenant())
    return Tenant.status.in_(BACKED_UP_STATUSES) & (backup_age_start() < deadline)
