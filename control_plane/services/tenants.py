"""Tenant use cases the API and CLI call: create, read, update, suspend, resume, migrate, delete."""
from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import select, union
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import tenant_migrations
from control_plane import naming
from control_plane.adapters.crypto import random_password
from control_plane.adapters.passwords import hash_password
from control_plane.catalog.db import page, transaction
from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantDomain, TenantStatus, utcnow
from control_plane.errors import (ControlPlaneError, DomainTakenError, IllegalTransitionError, TenantExistsError,
                                  TenantNotFoundError, ValidationError)
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext, operation_secret_context, role_secret_context
from control_plane.services.servers import choose_server
from control_plane.services.operations import dispatch, find_replay, fingerprint, new_operation
from control_plane.services.plans import apply_to_tenant, limits_of, require_plan
from control_plane.services.rpo import backup_stale_clause

log = logging.getLogger(__name__)


def _load(session: Session, tenant_id: str, lock: bool = False) -> Tenant:
    tenant = session.get(Tenant, tenant_id, with_for_update=lock)
    if tenant is None:
        raise TenantNotFoundError(tenant_id)
    return tenant


def _check_domains_free(session: Session, domains: list[str], tenant_id: str) -> None:
    if not domains:
        return
    taken = session.scalars(select(TenantDomain.domain).where(TenantDomain.domain.in_(domains),
                                                               TenantDomain.tenant_id != tenant_id)).first()
    if taken:
        raise DomainTakenError(taken)


def _conflict_from(exc: IntegrityError, tenant_id: str, domains: list[str]) -> Exception:
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", "") or ""
    if constraint.startswith("tenant_domains"):
        return DomainTakenError(domains[0] if len(domains) == 1 else ", ".join(domains))
    if constraint == "tenants_pkey":
        return TenantExistsError(tenant_id)
    return exc


def request_tenant(ctx: ServiceContext, principal: Principal, *, tenant_id: str, name: str, admin_email: str,
                   domains: list[str] | None = None, plan: str = "standard", admin_name: str | None = None,
                   admin_password: str | None = None, idempotency_key: str | None = None) -> Operation:
    """Record the tenant (provisioning) and its operation (queued) in one transaction, then enqueue."""
    principal.require_super_admin()
    domains = domains or []
    request = {"id": tenant_id, "name": name, "domains": domains, "plan": plan, "admin_email": admin_email,
               "admin_name": admin_name, "admin_password_given": admin_password is not None}
    request_fingerprint = fingerprint(OperationKind.PROVISION, tenant_id, request)
    # The plaintext admin password never reaches the catalog or the queue: only its hash does.
    generated = admin_password is None
    password = random_password(12) if generated else admin_password
    params = {"admin_email": admin_email, "admin_name": admin_name or admin_email.split("@")[0],
              "admin_password_hash": hash_password(password)}
    try:
        with transaction(ctx.sessions) as session:
            replay = find_replay(session, principal, idempotency_key, request_fingerprint)
            if replay is not None:
                return replay
            if session.get(Tenant, tenant_id) is not None:
                raise TenantExistsError(tenant_id)
            _check_domains_free(session, domains, tenant_id)
            choose_server(session)  # no server has room: 503 now, not a failed provisioning later
            require_plan(session, plan)
            tenant = Tenant(id=tenant_id, name=name, plan=plan, status=TenantStatus.PROVISIONING,
                            database_name=naming.database_name(tenant_id), role_name=naming.role_name(tenant_id),
                            role_password_encrypted=ctx.keyring.encrypt(random_password(), role_secret_context(tenant_id)))
            tenant.set_domains(domains)
            session.add(tenant)
            session.flush()
            op = new_operation(principal, OperationKind.PROVISION, tenant_id, params, idempotency_key, request_fingerprint)
            session.add(op)
            session.flush()
            if generated:
                op.one_time_secret_encrypted = ctx.keyring.encrypt(
                    json.dumps({"admin_password": password}), operation_secret_context(op.id))
            audit.record(session, principal.actor, "tenant.create_requested", tenant_id, op.id, plan=plan)
    except IntegrityError as exc:
        # A concurrent request won the race for this id, domain or idempotency key.
        with ctx.sessions() as session:
            replay = find_replay(session, principal, idempotency_key, request_fingerprint)
        if replay is not None:
            return replay
        raise _conflict_from(exc, tenant_id, domains) from exc
    dispatch(ctx, op.id)
    return op


def get_tenant(ctx: ServiceContext, principal: Principal, tenant_id: str) -> Tenant:
    principal.require_tenant(tenant_id)
    with ctx.sessions() as session:
        return _load(session, tenant_id)


def list_tenants(ctx: ServiceContext, principal: Principal, *, status: TenantStatus | None = None,
                 server: str | None = None, q: str | None = None, backup_stale: bool | None = None,
                 offset: int = 0, limit: int = 50) -> tuple[list[Tenant], int]:
    query = select(Tenant)
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
                _check_domains_free(session, domains, tenant_id)
                tenant.set_domains(domains)
                changes["domains"] = domains
            if changes:
                audit.record(session, principal.actor, "tenant.updated", tenant_id, **changes)
    except IntegrityError as exc:
        raise _conflict_from(exc, tenant_id, domains or []) from exc
    if "domains" in changes:
        ctx.events.publish(tenant_id, "domains", domains=domains)
    if "plan" in changes:
        apply_plan_change(ctx, tenant)
    return tenant


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
    return tenant


def suspend_tenant(ctx: ServiceContext, principal: Principal, tenant_id: str) -> Tenant:
    return _set_status(ctx, principal, tenant_id, "suspend", "tenant.suspended")


def resume_tenant(ctx: ServiceContext, principal: Principal, tenant_id: str) -> Tenant:
    return _set_status(ctx, principal, tenant_id, "resume", "tenant.resumed")


def _request_work(ctx: ServiceContext, principal: Principal, tenant_id: str, kind: OperationKind,
                  params: dict[str, Any], begin: str, idempotency_key: str | None) -> Operation:
    request_fingerprint = fingerprint(kind, tenant_id, params)
    with transaction(ctx.sessions) as session:
        replay = find_replay(session, principal, idempotency_key, request_fingerprint)
        if replay is not None:
            return replay
        tenant = _load(session, tenant_id, lock=True)
        params = {**params, "previous_status": tenant.status.value}
        getattr(tenant, begin)()
        op = new_operation(principal, kind, tenant_id, params, idempotency_key, request_fingerprint)
        session.add(op)
        session.flush()
        audit.record(session, principal.actor, f"tenant.{kind.value}_requested", tenant_id, op.id, **params)
    ctx.events.publish(tenant_id, "status", status=tenant.status.value)
    dispatch(ctx, op.id)
    return op


def request_migration(ctx: ServiceContext, principal: Principal, tenant_id: str, target: str,
                      idempotency_key: str | None = None) -> Operation:
    principal.require_super_admin()
    try:
        tenant_migrations.resolve_target(target)
    except ValueError as exc:
        raise ValidationError("target", str(exc)) from exc
    return _request_work(ctx, principal, tenant_id, OperationKind.MIGRATE, {"target": target},
                         "begin_migration", idempotency_key)


def request_deletion(ctx: ServiceContext, principal: Principal, tenant_id: str, final_backup: bool = True,
                     idempotency_key: str | None = None, purge: bool = False) -> Operation:
    """Delete a tenant; `purge` also crypto-shreds its backups (erasure requests), so no final backup."""
    principal.require_super_admin()
    params = {"final_backup": final_backup and not purge, **({"purge": True} if purge else {})}
    return _request_work(ctx, principal, tenant_id, OperationKind.DELETE, params, "begin_deletion", idempotency_key)
