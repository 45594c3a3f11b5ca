"""DRILL: one restore drill of a tenant's newest backup (see services.drills for what it checks).

It holds the tenant's work slot (a drill never overlaps a restore, a move or a delete of the same
tenant) but leaves the tenant's status alone: the live database is never touched.
"""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantStatus
from control_plane.services import drills
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.operation_requests import request_work


class Drill(Kind):
    kind = OperationKind.DRILL
    action = "drill"
    starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})
    repeatable = True  # the scratch database is dropped and the drill starts over
    failed_event = "drill.failed"

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        return drills.perform_drill(ctx, session, op, tenant, report)

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        drills.drill_failed(ctx, session, op, tenant)


DRILL = Drill()


def request_drill(ctx: ServiceContext, principal: Principal, tenant_id: str, *,
                  idempotency_key: str | None = None) -> Operation:
    """Record a DRILL operation (queued) and enqueue it. Super admins only."""
    principal.require_super_admin()
    return request_work(ctx, principal, DRILL, tenant_id, {}, idempotency_key,
                        audit_action="tenant.drill_requested")
