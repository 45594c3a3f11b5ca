"""Recovery point objective: each tenant's `rpo_hours`, and which tenants' newest backup is older than it.

Precedence: the tenant's own backup policy (`rpo_hours` set by a super admin for this tenant), else its
plan's `backup_rpo_hours`, else 24 hours. A plan says what a tier promises; a tenant's policy is the
exception made for one tenant (`rpo_hours: null` in the policy returns it to its plan's).
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ColumnElement, DateTime, func, literal, select
from sqlalchemy.orm import Session, with_expression

from control_plane.catalog.backup_models import BackupPolicy
from control_plane.catalog.models import Tenant, TenantStatus
from control_plane.catalog.plan_models import Plan

DEFAULT_RPO_HOURS = 24
# Tenants whose data exists and must be backed up (a suspended or busy tenant's database still holds it).
BACKED_UP_STATUSES = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MIGRATING, TenantStatus.RESTORING,
                      TenantStatus.MOVING)


def _policy_rpo():
    return select(BackupPolicy.rpo_hours).where(BackupPolicy.tenant_id == Tenant.id).scalar_subquery()


def _plan_rpo():
    return select(Plan.backup_rpo_hours).where(Plan.name == Tenant.plan).scalar_subquery()


def rpo_hours_of_tenant():
    """The tenant's RPO in hours (its policy's, else its plan's, else the default), as a correlated SQL expression."""
    return func.coalesce(_policy_rpo(), _plan_rpo(), DEFAULT_RPO_HOURS)



def with_rpo_hours():
    """A query option that loads `Tenant.rpo_hours` with the tenant (for the API and the console)."""
    return with_expression(Tenant.rpo_hours, rpo_hours_of_tenant())


def rpo_of(session: Session, tenant_id: str) -> tuple[int, str]:
    """The tenant's RPO in hours and where it comes from (`policy`, `plan` or `default`)."""
    own, planned = session.execute(select(_policy_rpo(), _plan_rpo()).where(Tenant.id == tenant_id)).one_or_none() \
        or (None, None)
    if own is not None:
        return own, "policy"
    if planned is not None:
        return planned, "plan"
    return DEFAULT_RPO_HOURS, "default"


def backup_age_start():
    """Since when the tenant's data is unprotected: its newest backup, or its creation if it has none."""
    return func.coalesce(Tenant.last_backup_at, Tenant.created_at)


def backup_stale_clause(now: datetime) -> ColumnElement[bool]:
    """Its data exists, and its newest completed backup (or its creation) is older than its RPO."""
    deadline = literal(now, DateTime(timezone=True)) - func.make_interval(0, 0, 0, 0, rpo_hours_of_tenant())
    return Tenant.status.in_(BACKED_UP_STATUSES) & (backup_age_start() < deadline)
