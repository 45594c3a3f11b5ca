"""Fleet-wide figures read from the catalog: what /metrics and /readyz report."""
from __future__ import annotations

from sqlalchemy import func, select, text

from control_plane.catalog.models import Operation, Tenant
from control_plane.services.context import ServiceContext


def ping_catalog(ctx: ServiceContext) -> None:
    with ctx.sessions() as session:
        session.execute(text("SELECT 1"))


def tenants_by_status(ctx: ServiceContext) -> dict[str, int]:
    with ctx.sessions() as session:
        return {status.value: count for status, count in
                session.execute(select(Tenant.status, func.count()).group_by(Tenant.status))}


def operations_by_kind_and_status(ctx: ServiceContext) -> dict[tuple[str, str], int]:
    with ctx.sessions() as session:
        return {(kind.value, status.value): count for kind, status, count in session.execute(
            select(Operation.kind, Operation.status, func.count()).group_by(Operation.kind, Operation.status))}
