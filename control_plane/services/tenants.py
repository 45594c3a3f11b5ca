"""Tenant use cases the API and CLI call: read, update, suspend, resume (work on a tenant: services/kinds)."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane.catalog.db import get_or_raise, page, transaction
from control_plane.catalog.models import Tenant, TenantDomain, TenantStatus, utcnow
from control_plane.errors import ControlPlaneError, IllegalTransitionError, TenantNotFoundError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.provision import check_domains_free, conflict_from
from control_plane.services.plans import apply_to_tenant, limits_of, require_plan
from control_plane.services.rpo import backup_stale_clause, with_rpo_hours

log = logging.getLogger(__name__)


def _load(session: Session, tenant_id: str, lock: bool = False) -> Tenant:
    return get_or_raise(session, Tenant, tenant_id, TenantNotFoundError, for_update=lock)


def get_tenant(ctx: ServiceContext, principal: Principal, tenant_id: str) -> Tenant:
    principal.require_tenant(tenant_id)
    return _read(ctx, tenant_id)


def _read(ctx: ServiceContext, tenant_id: str) -> Tenant:
    """The tenant as the API shows it (with its `rpo_hours`), read afresh: after a change, what was committed."""
    with ctx.sessions() as session:
        return get_or_raise(session, Tenant, tenant_id, TenantNotFoundError, options=[with_rpo_hours()])


def list_tenants(ctx: ServiceContext, principal: Principal, *, status: TenantStatus | None = None,
                 server: str | None = None, q: str | None = None, backup_stale: bool | None = None,
                 offset: int = 0, limit: int = 50) -> tuple[list[Tenant], int]:
    query = select(Tenant).options(with_rpo_hours())
    if backup_stale is not None:
        stale = backup_stale_clause(utcnow())
        query = query.where(stale if backup_stale else ~stale)
    if not principal.is_super_admin:
        query = query.where(Tenant.id == principal.tenant_id)
    if status:
        query = query.where(Tenant.status == status)
    if server:
        query = query.where(Tenant.server_name == server)
    if q:
        pattern = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        # A union of two trigram index scans (catalog migration 0007: id and name, and domains): an OR
        # with an EXISTS over the domains would scan every tenant.
        query = query.where(Tenant.id.in_(union(
            select(Tenant.id).where(Tenant.search_text.ilike(pattern)),
            select(TenantDomain.tenant_id).where(TenantDomain.domain.ilike(pattern)))))
    with ctx.sessions() as session:
        return page(session, query, Tenant.created_at, Tenant.id, offset=offset, limit=limit)


def update_tenant(ctx: ServiceContext, principal: Principal, tenant_id: str, *, name: str | None = None,
                  domains: list[str] | None = None, plan: str | None = None) -> Tenant:
    principal.require_super_admin()
    try:
        with transaction(ctx.sessions) as session:
            tenant = _load(session, tenant_id, lock=True)
            if tenant.status is TenantStatus.DELETED:
                raise IllegalTransitionError("tenant", tenant_id, tenant.status.value, "update")
            changes: dict[str, Any] = {}
            if name is not None and name != tenant.name:
                tenant.name = changes["name"] = name
            if plan is not None and plan != tenant.plan:
                require_plan(session, plan)
                tenant.plan = changes["plan"] = plan
            if domains is not None and domains != tenant.domains:
                check_domains_free(session, domains, tenant_id)
                tenant.set_domains(domains)
                changes["domains"] = domains
            if changes:
                audit.record(session, principal.actor, "tenant.updated", tenant_id, **changes)
    except IntegrityError as exc:
        raise conflict_from(exc, tenant_id, domains or []) from exc
    if "domains" in changes:
        ctx.events.publish(tenant_id, "domains", domains=domains)
    if "plan" in changes:
        apply_plan_change(ctx, tenant)
    return _read(ctx, tenant_id)  # a new plan may bring a new RPO


def apply_plan_change(ctx: ServiceContext, tenant: Tenant) -> None:
    """The new plan's limits on the tenant's role now (if it has one); runtimes re-read the tenant."""
    if tenant.server_name is not None and tenant.status is not TenantStatus.PROVISIONING:
        with ctx.sessions() as session:
            fresh = session.get(Tenant, tenant.id)
            limits = limits_of(session, fresh)
        try:
            apply_to_tenant(ctx, fresh, limits)
        except ControlPlaneError as exc:  # the change stands; `tenantctl plans apply` converges later
            log.warning("tenant %s: plan %s recorded but not applied to its role: %s", tenant.id, tenant.plan,
                        exc.detail)
    ctx.events.publish(tenant.id, "plan", plan=tenant.plan)


def _set_status(ctx: ServiceContext, principal: Principal, tenant_id: str, action: str, audit_action: str) -> Tenant:
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        tenant = _load(session, tenant_id, lock=True)
        getattr(tenant, action)()
        audit.record(session, principal.actor, audit_action, tenant_id)
    # After the commit: a runtime that reloads on this event must see the new status.
    ctx.events.publish(tenant_id, "status", status=tenant.status.value)
    return _read(ctx, tenant_id)


def suspend_tenant(ctx: ServiceContext, principal: Principal, tenant_id: str) -> Tenant:
    return _set_status(ctx, principal, tenant_id, "suspend", "tenant.suspended")


def resume_tenant(ctx: ServiceContext, principal: Principal, tenant_id: str) -> Tenant:
    return _set_status(ctx, principal, tenant_id, "resume", "tenant.resumed")
