"""DELETE: take the final backup, then drop the tenant's database and role (the record stays, `deleted`)."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantStatus
from control_plane.services import audit
from control_plane.services.auth import Principal, revoke_tenant_tokens
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.operation_requests import request_work

log = logging.getLogger(__name__)


class Delete(Kind):
    kind = OperationKind.DELETE
    action = "delete"
    starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.FAILED})
    busy_status = TenantStatus.DELETING
    failed_status = TenantStatus.FAILED
    repeatable = True  # every step checks the world first
    failed_event = "tenant.deletion_failed"

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        if op.params.get("final_backup", True):
            report("final_backup", 10)
            ctx.final_backup(tenant, op)
        report("release_backups", 30)  # the last step a cancel may stop: nothing is dropped before it
        ctx.before_drop(tenant, op)
        if tenant.server is not None:
            admin = ctx.admin_for(tenant.server)
            report("drop_database", 50, cancellable=False)
            admin.drop_database(tenant.database_name)
            # And whatever else the role owns (a scratch or retired database a crash left unrecorded), or the
            # role could never be dropped and erased data would stay behind.
            leftovers = admin.drop_databases_owned_by(tenant.role_name)
            if leftovers:
                audit.record(session, "system", "tenant.leftover_databases_dropped", tenant.id, op.id,
                             databases=leftovers)
            report("drop_role", 80, cancellable=False)
            admin.drop_role(tenant.role_name)
        tenant.mark_deleted()
        revoke_tenant_tokens(session, tenant.id)
        audit.record(session, "system", "tenant.deleted", tenant.id, op.id)
        session.commit()
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
        return {"tenant_id": tenant.id, "deleted": True}

    def status_after_cancel(self, op: Operation) -> TenantStatus | None:
        return op.return_status  # cancelled before anything was dropped: the tenant as it was


DELETE = Delete()


def request_deletion(ctx: ServiceContext, principal: Principal, tenant_id: str, final_backup: bool = True,
                     idempotency_key: str | None = None, purge: bool = False) -> Operation:
    """Delete a tenant; `purge` also crypto-shreds its backups (erasure requests), so no final backup."""
    principal.require_super_admin()
    params = {"final_backup": final_backup and not purge, **({"purge": True} if purge else {})}
    return request_work(ctx, principal, DELETE, tenant_id, params, idempotency_key)
