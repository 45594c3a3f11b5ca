"""DELETE: take the final backup, then retire the tenant's database for the grace period (the record stays,
`deleted`; POST .../undelete brings it back); `purge` drops every database of the role at once and
crypto-shreds the backups, also for a tenant deleted earlier."""
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
from control_plane.services.retired_tenants import drop_tenant_databases, retire_tenant_database

log = logging.getLogger(__name__)


class Delete(Kind):
    kind = OperationKind.DELETE
    action = "delete"
    starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.FAILED})
    busy_status = TenantStatus.DELETING
    failed_status = TenantStatus.FAILED
    repeatable = True  # every step checks the world first
    failed_event = "tenant.deletion_failed"

    def starts(self, params: dict[str, Any]) -> frozenset[TenantStatus]:
        # A purge also erases a tenant deleted earlier (its retired database, its backups).
        return self.starts_from | {TenantStatus.DELETED} if params.get("purge") else self.starts_from

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        purge = bool(op.params.get("purge"))
        if op.params.get("final_backup", True):
            report("final_backup", 10)
            ctx.final_backup(tenant, op)
        report("release_backups", 30)  # the last step a cancel may stop: nothing is dropped before it
        ctx.before_drop(tenant, op)
        result: dict[str, Any] = {"tenant_id": tenant.id, "deleted": True}
        if tenant.server is not None and purge:
            report("drop_database", 50, cancellable=False)
            # Every database the role owns (a scratch or retired database a crash left unrecorded too), or
            # the role could never be dropped and erased data would stay behind.
            drop_tenant_databases(ctx, session, tenant, op.id)
        elif tenant.server is not None:
            report("retire_database", 50, cancellable=False)
            retired = retire_tenant_database(ctx, session, op, tenant)
            if retired is not None:
                result.update(retired_database=retired.database_name, undelete_until=retired.drop_after.isoformat())
        tenant.mark_deleted()
        revoke_tenant_tokens(session, tenant.id)  # for good: an undelete does not bring tokens back
        audit.record(session, "system", "tenant.deleted", tenant.id, op.id, purge=purge,
                     retired_database=result.get("retired_database"))
        session.commit()
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
        return result

    def status_after_cancel(self, op: Operation) -> TenantStatus | None:
        return op.return_status  # cancelled before anything was dropped: the tenant as it was


DELETE = Delete()


def request_deletion(ctx: ServiceContext, principal: Principal, tenant_id: str, final_backup: bool = True,
                     idempotency_key: str | None = None, purge: bool = False) -> Operation:
    """Delete a tenant (its database kept for DELETED_TENANT_GRACE_DAYS, undeletable); `purge` drops it at
    once and crypto-shreds its backups (erasure requests), so no final backup."""
    principal.require_super_admin()
    params = {"final_backup": final_backup and not purge, **({"purge": True} if purge else {})}
    return request_work(ctx, principal, DELETE, tenant_id, params, idempotency_key)
