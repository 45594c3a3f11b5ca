"""Least-privilege credentials for tenant applications: their catalog role's GRANTs and their Redis user."""
from __future__ import annotations

from control_plane.catalog.db import transaction
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext


def grant_catalog_role(ctx: ServiceContext, principal: Principal, role: str) -> list[str]:
    """GRANT the runtime's read model (column-level SELECT) to `role`; the statements that ran."""
    principal.require_super_admin()
    statements = ctx.runtime_access.grant_catalog(role)
    with transaction(ctx.sessions) as session:
        audit.record(session, principal.actor, "runtime.catalog_granted", None, role=role)
    return statements


def create_events_user(ctx: ServiceContext, principal: Principal, name: str, password: str) -> None:
    principal.require_super_admin()
    ctx.runtime_access.create_events_user(name, password)
    with transaction(ctx.sessions) as session:
        audit.record(session, principal.actor, "runtime.events_user_created", None, user=name)
