"""BACKUP: one verified, encrypted backup of a tenant (see services.backups for how it is taken).

It holds the tenant's work slot, so it never overlaps a migration, a restore or a delete, but leaves
the tenant's status alone: the tenant keeps serving while it is backed up.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from control_plane.catalog.backup_models import BackupTrigger
from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantStatus
from control_plane.services.auth import Principal
from control_plane.services.backups import abandon_attempts, perform_backup
from control_plane.services.context import ServiceContext
from control_plane.services.fair_use import check_manual_backup
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.operation_requests import request_work


class Backup(Kind):
    kind = OperationKind.BACKUP
    action = "back up"
    starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})
    repeatable = True  # an attempt's partial objects are deleted and the dump starts over
    failed_event = "backup.failed"

    def prepare(self, ctx: ServiceContext, session: Session, principal: Principal, tenant_id: str,
                params: dict[str, Any]) -> Tenant:
        tenant = super().prepare(ctx, session, principal, tenant_id, params)
        if params["trigger"] == BackupTrigger.MANUAL.value:  # a tenant admin's allowance (services.fair_use)
            check_manual_backup(ctx, session, principal, tenant_id, params.get("expires_in_days"))
        return tenant

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        abandon_attempts(ctx, session, op.id, "abandoned: the job was interrupted and retried")
        report("backup", 10)
        backup = perform_backup(ctx, session, tenant, BackupTrigger(op.params.get("trigger", "manual")), op.id,
                                expires_in_days=op.params.get("expires_in_days"))
        result = {"backup_id": backup.id, "location": backup.location, "archive_bytes": backup.archive_bytes,
                  "stored_bytes": backup.stored_bytes, "sha256": backup.sha256,
                  "bytes_done": backup.archive_bytes, "bytes_total": backup.archive_bytes}
        for copy in backup.copies:
            result["copy"] = {"location": copy.location, "status": copy.status.value, "method": copy.method,
                              "error": copy.error}
        return result

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        abandon_attempts(ctx, session, op.id, op.error or "the backup job did not finish", commit=False)


BACKUP = Backup()


def request_backup(ctx: ServiceContext, principal: Principal, tenant_id: str, *,
                   trigger: BackupTrigger = BackupTrigger.MANUAL, expires_in_days: int | None = None,
                   idempotency_key: str | None = None) -> Operation:
    """Record a BACKUP operation (queued) and enqueue it. Super admins, and the tenant's own admins."""
    principal.require_tenant(tenant_id)
    params: dict[str, Any] = {"trigger": trigger.value}
    if expires_in_days is not None:
        params["expires_in_days"] = expires_in_days
    return request_work(ctx, principal, BACKUP, tenant_id, params, idempotency_key,
                        audit_action="tenant.backup_requested")
