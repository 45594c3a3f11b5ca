"""The jobs' bodies: provisioning, migrating and deleting one tenant, each step idempotent."""
from __future__ import annotations

import logging
from typing import Any, Callable

from sqlalchemy.orm import Session

import tenant_migrations

from control_plane.catalog.models import Operation, Tenant, TenantStatus
from control_plane.services import audit
from control_plane.services.auth import revoke_tenant_tokens
from control_plane.services.plans import limits_of
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.servers import choose_server
from control_plane.services.warm_pools import claim_spare

log = logging.getLogger(__name__)

Report = Callable[[str, int], None]


def _announce(ctx: ServiceContext, tenant: Tenant) -> None:
    ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                       database=tenant.database_name)


def provision(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
    # Every step checks the world before acting, so a rerun after a crash at any point converges.
    report("place", 5)
    if tenant.server_name is None:
        tenant.server = choose_server(session)
        session.commit()
    with ctx.admin_for(tenant.server) as admin:  # one admin session for all the server-side steps
        password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
        report("claim_spare", 10)
        warm = claim_spare(ctx, admin, tenant, password)
        report("create_role", 15)
        admin.ensure_role(tenant.role_name, password)
        admin.apply_limits(tenant.role_name, limits_of(session, tenant))

        report("create_database", 30)
        if warm:
            pass  # the spare is a clone of the template at head, handed to its role (now the tenant's)
        elif ctx.settings.provision_from_template:
            template = ctx.tenant_template(admin)
            admin.ensure_database(tenant.database_name, owner=tenant.role_name,
                                  template=template.ensure(tenant_migrations.head_revision()))
            template.hand_over(tenant.database_name, tenant.role_name)
        else:
            admin.ensure_database(tenant.database_name, owner=tenant.role_name)

        report("restrict_access", 40)
        admin.restrict_connect(tenant.database_name, tenant.role_name)
        admin.close_other_databases()

    report("migrate_schema", 55)  # a no-op after a clone of the template at head, unless head moved since
    database = ctx.database_of(tenant)
    tenant.schema_revision = database.migrate("head")
    session.commit()

    report("seed", 80)
    params = op.params
    database.seed(admin_email=params["admin_email"], admin_name=params["admin_name"],
                  admin_password_hash=params["admin_password_hash"])

    report("activate", 95)
    tenant.activate()
    audit.record(session, "system", "tenant.provisioned", tenant.id, op.id,
                 server=tenant.server_name, schema_revision=tenant.schema_revision)
    session.commit()
    _announce(ctx, tenant)
    return {"tenant_id": tenant.id, "server": tenant.server_name, "database": tenant.database_name,
            "schema_revision": tenant.schema_revision, "warm": warm}


def provision_failed(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
    tenant.fail()
    audit.record(session, "system", "tenant.provisioning_failed", tenant.id, op.id, error=op.error)


def retry_provision(tenant: Tenant, op: Operation) -> None:
    tenant.retry_provisioning()


def migrate(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
    report("migrate_schema", 20)
    database = ctx.database_of(tenant)
    before = tenant.schema_revision
    tenant.schema_revision = database.migrate(op.params["target"])
    _restore_status(tenant, op)
    audit.record(session, "system", "tenant.migrated", tenant.id, op.id,
                 from_revision=before, to_revision=tenant.schema_revision)
    session.commit()
    _announce(ctx, tenant)
    return {"from_revision": before, "schema_revision": tenant.schema_revision}


def _restore_status(tenant: Tenant, op: Operation) -> None:
    tenant.activate()
    if op.params.get("previous_status") == TenantStatus.SUSPENDED.value:
        tenant.suspend()


def migrate_failed(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
    # Each revision runs in its own transaction: the database is intact at whatever revision it reached.
    try:
        tenant.schema_revision = ctx.database_of(tenant).current_revision()
    except Exception:  # the database may be unreachable, which is likely why we failed
        log.warning("tenant %s: could not read its revision after a failed migration", tenant.id, exc_info=True)
    _restore_status(tenant, op)
    audit.record(session, "system", "tenant.migration_failed", tenant.id, op.id, error=op.error)


def retry_migrate(tenant: Tenant, op: Operation) -> None:
    tenant.begin_migration()


def delete(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
    if op.params.get("final_backup", True):
        report("final_backup", 10)
        ctx.final_backup(tenant, op)
    report("release_backups", 30)
    ctx.before_drop(tenant, op)
    if tenant.server is not None:
        admin = ctx.admin_for(tenant.server)
        report("drop_database", 50)
        admin.drop_database(tenant.database_name)
        report("drop_role", 80)
        admin.drop_role(tenant.role_name)
    tenant.mark_deleted()
    revoke_tenant_tokens(session, tenant.id)
    audit.record(session, "system", "tenant.deleted", tenant.id, op.id)
    session.commit()
    _announce(ctx, tenant)
    return {"tenant_id": tenant.id, "deleted": True}


def delete_failed(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
    tenant.fail()
    audit.record(session, "system", "tenant.deletion_failed", tenant.id, op.id, error=op.error)


def retry_delete(tenant: Tenant, op: Operation) -> None:
    tenant.begin_deletion()
