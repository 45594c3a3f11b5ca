"""UNDELETE: within DELETED_TENANT_GRACE_DAYS of a delete, the tenant back as it was: same id, its retired
database under its live name again, its role able to log in, the status and domains it had before.

The tokens the delete revoked stay revoked: whoever gets the tenant back is given new ones.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from control_plane.catalog.backup_models import RetiredDatabase
from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantDomain, TenantStatus, utcnow
from control_plane.errors import DomainTakenError, NotUndeletableError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.operation_requests import request_work
from control_plane.services.retired_tenants import bring_back, deletion_record, retire_again

log = logging.getLogger(__name__)


def _before_deletion(session: Session, record: RetiredDatabase) -> dict[str, Any]:
    """The status and domains the tenant had when the delete that retired `record` started."""
    delete_op = session.get(Operation, record.operation_id)
    before = dict(delete_op.params.get("before") or {})
    before.setdefault("status", delete_op.return_status.value if delete_op.return_status else None)
    return {"status": TenantStatus(before["status"] or TenantStatus.ACTIVE.value),
            "domains": list(before.get("domains") or [])}


def _undeletable(session: Session, tenant: Tenant, now: datetime) -> RetiredDatabase:
    """The retired database to bring back, or 409 saying why there is none."""
    record = deletion_record(session, tenant.id)
    if record is None:
        raise NotUndeletableError(tenant.id, "its database was dropped (purged, or its grace period ended)")
    if tenant.server is None:
        raise NotUndeletableError(tenant.id, f"its database server {record.server_name!r} was removed")
    if record.drop_after <= now:
        raise NotUndeletableError(tenant.id, f"its grace period ended at {record.drop_after.isoformat()}")
    for domain in _before_deletion(session, record)["domains"]:
        if session.get(TenantDomain, domain) is not None:
            raise DomainTakenError(domain)
    return record


class Undelete(Kind):
    kind = OperationKind.UNDELETE
    action = "undelete"
    starts_from = frozenset({TenantStatus.DELETED})
    busy_status = TenantStatus.RESTORING  # runtimes keep refusing it until it is back
    repeatable = True  # renaming back and allowing login converge when run again
    failed_event = "tenant.undelete_failed"

    def prepare(self, ctx: ServiceContext, session: Session, principal: Principal, tenant_id: str,
                params: dict[str, Any]) -> Tenant:
        tenant = super().prepare(ctx, session, principal, tenant_id, params)
        if tenant.status is TenantStatus.DELETED:  # any other status: 423 or 409 from the request path
            params["delete_operation_id"] = _undeletable(session, tenant, utcnow()).operation_id
        return tenant

    def _record(self, session: Session, op: Operation, tenant: Tenant) -> RetiredDatabase | None:
        record = deletion_record(session, tenant.id)
        return record if record is not None and record.operation_id == op.params["delete_operation_id"] else None

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        report("check", 10)
        record = self._record(session, op, tenant)
        if record is None:  # dropped between the request and now (a purge, or the prune past its grace)
            raise NotUndeletableError(tenant.id, "its database was dropped")
        before = _before_deletion(session, record)
        report("bring_back", 50, cancellable=False)
        bring_back(ctx, tenant, record)
        retired = record.database_name
        session.delete(record)  # in the commit that makes the tenant live again: an undo still finds it before
        tenant.come_back(before["status"], before["domains"])
        audit.record(session, "system", "tenant.undeleted", tenant.id, op.id, retired_database=retired,
                     status=tenant.status.value)
        session.commit()
        ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                           database=tenant.database_name)
        return {"tenant_id": tenant.id, "status": tenant.status.value, "database": tenant.database_name,
                "retired_database": retired}

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        record = self._record(session, op, tenant)
        if record is not None and tenant.server is not None:  # not back yet: retired as before the request
            retire_again(ctx, tenant, record)


UNDELETE = Undelete()


def request_undelete(ctx: ServiceContext, principal: Principal, tenant_id: str,
                     idempotency_key: str | None = None) -> Operation:
    """Bring a deleted tenant back within its grace period (409 after it, or after a purge)."""
    principal.require_super_admin()
    return request_work(ctx, principal, UNDELETE, tenant_id, {}, idempotency_key)
