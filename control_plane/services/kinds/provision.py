"""PROVISION: create a tenant's role and database, bring its schema to head, seed it, activate it."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

import tenant_migrations
from control_plane import naming
from control_plane.adapters.crypto import random_password
from control_plane.adapters.passwords import generated_password, hash_password
from control_plane.catalog.models import Operation, OperationKind, OperationStatus, Tenant, TenantDomain, TenantStatus
from control_plane.errors import DomainTakenError, TenantExistsError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.operation_requests import request_work
from control_plane.services.plans import limits_of, require_plan
from control_plane.services.servers import choose_server
from control_plane.services.warm_pools import claim_spare, request_refill

log = logging.getLogger(__name__)


def check_domains_free(session: Session, domains: list[str], tenant_id: str) -> None:
    if not domains:
        return
    taken = session.scalars(select(TenantDomain.domain).where(TenantDomain.domain.in_(domains),
                                                               TenantDomain.tenant_id != tenant_id)).first()
    if taken:
        raise DomainTakenError(taken)


def conflict_from(exc: IntegrityError, tenant_id: str, domains: list[str]) -> Exception:
    constraint = getattr(getattr(exc.orig, "diag", None), "constraint_name", "") or ""
    if constraint.startswith("tenant_domains"):
        return DomainTakenError(domains[0] if len(domains) == 1 else ", ".join(domains))
    if constraint == "tenants_pkey":
        return TenantExistsError(tenant_id)
    return exc


def new_tenant(ctx: ServiceContext, tenant_id: str, name: str, plan: str) -> Tenant:
    """A tenant record (provisioning) with its own role name and a random, encrypted role password."""
    return Tenant(id=tenant_id, name=name, plan=plan, status=TenantStatus.PROVISIONING,
                  database_name=naming.database_name(tenant_id), role_name=naming.role_name(tenant_id),
                  role_password_encrypted=ctx.keyring.encrypt(random_password(), role_secret_context(tenant_id)))


def _admin_user(params: dict[str, Any]) -> dict[str, str]:
    return {"admin_email": params["admin_email"], "admin_name": params["admin_name"],
            "admin_password_hash": params["admin_password_hash"]}


def _activate(session: Session, op: Operation, tenant: Tenant, warm: bool) -> dict[str, Any]:
    """The last step, committed by the caller with the operation's success: the tenant active, audited."""
    op.report("activate", 95)
    tenant.activate()
    audit.record(session, "system", "tenant.provisioned", tenant.id, op.id,
                 server=tenant.server_name, schema_revision=tenant.schema_revision)
    return {"tenant_id": tenant.id, "server": tenant.server_name, "database": tenant.database_name,
            "schema_revision": tenant.schema_revision, "warm": warm}


class Provision(Kind):
    kind = OperationKind.PROVISION
    action = "provision"
    starts_from = frozenset({TenantStatus.PROVISIONING})
    busy_status = TenantStatus.PROVISIONING
    failed_status = TenantStatus.FAILED
    repeatable = True
    failed_event = "tenant.provisioning_failed"

    def prepare(self, ctx: ServiceContext, session: Session, principal: Principal, tenant_id: str,
                params: dict[str, Any]) -> Tenant:
        if session.get(Tenant, tenant_id) is not None:
            raise TenantExistsError(tenant_id)
        domains = params["domains"]
        check_domains_free(session, domains, tenant_id)
        server = choose_server(session)  # no server has room: 503 now, not a failed provisioning later
        require_plan(session, params["plan"])
        tenant = new_tenant(ctx, tenant_id, params["name"], params["plan"])
        tenant.server = server  # placed now, with the request's view of the fleet: the job goes straight to work
        tenant.set_domains(domains)
        session.add(tenant)
        session.flush()
        return tenant

    def conflict(self, exc: Exception, tenant_id: str, params: dict[str, Any]) -> Exception:
        return conflict_from(exc, tenant_id, params["domains"]) if isinstance(exc, IntegrityError) else exc

    def status_after_cancel(self, op: Operation) -> TenantStatus:
        return TenantStatus.FAILED  # what it created is dropped; the record stays, deletable

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        # Every step checks the world before acting, so a rerun after a crash at any point converges.
        if tenant.server_name is None:  # requested before placement moved into the request
            tenant.server = choose_server(session)
        password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
        limits = limits_of(session, tenant)
        admin_user = _admin_user(op.params)
        with ctx.admin_for(tenant.server) as admin:  # one admin session for all the server-side steps
            report("claim_spare", 10)  # commits a placement made here with the progress
            warm = claim_spare(ctx, admin, tenant, password, limits)
            if not warm:
                self._create(ctx, admin, tenant, password, limits, report)

        database = ctx.database_of(tenant)
        head = tenant_migrations.head_revision()
        if warm:
            # The spare was made at head (its name says so) and seeded with what every tenant starts with:
            # only the admin user is left, on the one connection that also reads the revision. No progress
            # commit of its own: claim and seed are one step of a few milliseconds.
            tenant.schema_revision = database.seed_admin(**admin_user)
        if tenant.schema_revision != head:
            report("migrate_schema", 55)  # a no-op after a clone of the template at head, unless head moved since
            tenant.schema_revision = database.migrate("head")
            session.commit()
        if not warm:
            # Whatever the revision says: an attempt that died during the seed had already committed head.
            report("seed", 80)
            database.seed(**admin_user)

        # The last step needs no commit of its own: the runner commits the activation with the operation's
        # success (past the point of no return, a cancel is too late), and `after` publishes it.
        return _activate(session, op, tenant, warm)

    @staticmethod
    def _create(ctx: ServiceContext, admin: Any, tenant: Tenant, password: str, limits: Any, report: Report) -> None:
        """The cold path: the role, then the database (a clone of the template at head, or empty)."""
        report("create_role", 15)
        admin.ensure_role(tenant.role_name, password)
        admin.apply_limits(tenant.role_name, limits)

        report("create_database", 30)
        if ctx.settings.provision_from_template:
            template = ctx.tenant_template(admin)
            admin.ensure_database(tenant.database_name, owner=tenant.role_name,
                                  template=template.ensure(tenant_migrations.head_revision()))
            template.hand_over(tenant.database_name, tenant.role_name)
        else:
            admin.ensure_database(tenant.database_name, owner=tenant.role_name)

        report("restrict_access", 40)
        admin.restrict_connect(tenant.database_name, tenant.role_name)
        admin.close_other_databases()

    def after(self, ctx: ServiceContext, op: Operation) -> None:
        result = op.result or {}
        if op.status is OperationStatus.SUCCEEDED:
            ctx.events.publish(op.tenant_id, "status", status=TenantStatus.ACTIVE.value, server=result.get("server"),
                               database=result.get("database"))
        request_refill(ctx)  # a spare was taken, or none was left

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        if op.status is not OperationStatus.CANCELLED or tenant.server is None or op.started_at is None:
            return  # a failure keeps what exists: a retry goes on from there, a delete drops it; queued: nothing made
        admin = ctx.admin_for(tenant.server)
        admin.drop_database(tenant.database_name)
        admin.drop_role(tenant.role_name)


PROVISION = Provision()


def request_tenant(ctx: ServiceContext, principal: Principal, *, tenant_id: str, name: str, admin_email: str,
                   domains: list[str] | None = None, plan: str = "standard", admin_name: str | None = None,
                   admin_password: str | None = None, idempotency_key: str | None = None) -> Any:
    """Record the tenant (provisioning) and its operation (queued) in one transaction, then enqueue."""
    principal.require_super_admin()
    domains = domains or []
    request = {"id": tenant_id, "name": name, "domains": domains, "plan": plan, "admin_email": admin_email,
               "admin_name": admin_name, "admin_password_given": admin_password is not None}
    # The plaintext admin password never reaches the catalog or the queue: only its hash does.
    generated = admin_password is None
    password, password_hash = generated_password() if generated else (admin_password, hash_password(admin_password))
    params = {"name": name, "domains": domains, "plan": plan, "admin_email": admin_email,
              "admin_name": admin_name or admin_email.split("@")[0], "admin_password_hash": password_hash}
    return request_work(ctx, principal, PROVISION, tenant_id, params, idempotency_key, request=request,
                        one_time_secret={"admin_password": password} if generated else None,
                        audit_action="tenant.create_requested", attempt_now=provision_from_spare
                        if ctx.warm_pool is not None and ctx.settings.warm_pool_size > 0 else None)


def provision_from_spare(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> dict[str, Any] | None:
    """The provisioning done within its request (`finish_within_request`) when its server has a warm spare:
    the claim (one transaction on the server), the admin user, the activation; None without a spare."""
    password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
    op.report("claim_spare", 10)
    with ctx.admin_for(tenant.server, reuse_connection=True) as admin:
        if not claim_spare(ctx, admin, tenant, password, limits_of(session, tenant)):
            return None
    tenant.schema_revision = ctx.database_of(tenant).seed_admin(**_admin_user(op.params))
    if tenant.schema_revision != tenant_migrations.head_revision():
        return None  # head moved since the spare was made: a worker's run migrates it
    return _activate(session, op, tenant, True)
