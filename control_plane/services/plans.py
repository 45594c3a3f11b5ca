"""Plans as catalog records: create, change, list; their limits applied to the roles of the tenants on them."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.catalog.db import get_or_raise, transaction
from control_plane.catalog.models import Tenant, TenantStatus
from control_plane.catalog.plan_models import Plan, RoleLimits
from control_plane.errors import ConflictError, ControlPlaneError, PlanNotFoundError, ValidationError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)

LIMIT_FIELDS = ("description", "connection_limit", "statement_timeout_ms", "idle_in_transaction_timeout_ms",
                "storage_quota_bytes", "backup_rpo_hours")
# Tenants whose role exists on their server: the ones a limit change must reach now.
_LIVE = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MIGRATING, TenantStatus.RESTORING,
         TenantStatus.MOVING, TenantStatus.FAILED)


def list_plans(ctx: ServiceContext, principal: Principal) -> list[Plan]:
    principal.require_super_admin()
    with ctx.sessions() as session:
        return list(session.scalars(select(Plan).order_by(Plan.name)).all())


def get_plan(ctx: ServiceContext, principal: Principal, name: str) -> Plan:
    principal.require_super_admin()
    with ctx.sessions() as session:
        return get_or_raise(session, Plan, name, PlanNotFoundError)


def require_plan(session: Session, name: str) -> Plan:
    """The plan a tenant is put on; an unknown name is a 422 on the `plan` field."""
    plan = session.get(Plan, name)
    if plan is None:
        raise ValidationError("plan", f"unknown plan {name!r} (GET /v1/plans)")
    return plan


def limits_of(session: Session, tenant: Tenant) -> RoleLimits:
    plan = session.get(Plan, tenant.plan)
    return plan.role_limits() if plan is not None else RoleLimits()


def create_plan(ctx: ServiceContext, principal: Principal, name: str, **limits: Any) -> Plan:
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        if session.get(Plan, name) is not None:
            raise ConflictError(f"plan {name!r} already exists")
        plan = Plan(name=name, **{key: limits.get(key) for key in LIMIT_FIELDS})
        session.add(plan)
        audit.record(session, principal.actor, "plan.created", None, plan=name, **_limits(plan))
    return plan


def update_plan(ctx: ServiceContext, principal: Principal, name: str, **changes: Any) -> Plan:
    """Change a plan's limits, then apply them to every tenant on it (each tenant's role, on its server)."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        plan = get_or_raise(session, Plan, name, PlanNotFoundError, for_update=True)
        for key in LIMIT_FIELDS:
            if key in changes:
                setattr(plan, key, changes[key])
        audit.record(session, principal.actor, "plan.changed", None, plan=name, **_limits(plan))
    apply_plan(ctx, name)
    return plan


def apply_plan(ctx: ServiceContext, name: str) -> int:
    """Apply a plan's limits to the roles of all its live tenants; how many were updated. A server that
    fails is logged and skipped (the next change or `tenantctl plans apply` converges)."""
    with ctx.sessions() as session:
        tenants = session.scalars(select(Tenant).where(Tenant.plan == name, Tenant.status.in_(_LIVE),
                                                       Tenant.server_name.is_not(None))).all()
        plan = session.get(Plan, name)
        limits = plan.role_limits() if plan is not None else RoleLimits()
    applied = 0
    for tenant in tenants:
        try:
            apply_to_tenant(ctx, tenant, limits)
            applied += 1
        except ControlPlaneError as exc:
            log.warning("plan %s: limits not applied to tenant %s: %s", name, tenant.id, exc.detail)
    return applied


def apply_to_tenant(ctx: ServiceContext, tenant: Tenant, limits: RoleLimits) -> None:
    with ctx.admin_for(tenant.server) as admin:
        admin.apply_limits(tenant.role_name, limits)


def _limits(plan: Plan) -> dict[str, Any]:
    return {key: getattr(plan, key) for key in LIMIT_FIELDS if key != "description"}

