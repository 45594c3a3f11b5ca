"""Audit trail: who did what to which tenant, when."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.catalog.db import page
from control_plane.catalog.models import AuditEvent


def record(session: Session, actor: str, action: str, tenant_id: str | None = None,
           operation_id: str | None = None, **details: Any) -> None:
    session.add(AuditEvent(actor=actor, action=action, tenant_id=tenant_id,
                           operation_id=operation_id, details=details))


def list_events(ctx, principal, *, offset: int, limit: int, tenant_id: str | None = None,
                actor: str | None = None, action: str | None = None, since: datetime | None = None,
                until: datetime | None = None) -> tuple[list[AuditEvent], int]:
    """Audit events, newest first: all for a super admin; a tenant admin sees its own tenant's only."""
    if tenant_id is not None:
        principal.require_tenant(tenant_id)
    elif not principal.is_super_admin:
        tenant_id = principal.tenant_id
    query = select(AuditEvent)
    if tenant_id is not None:
        query = query.where(AuditEvent.tenant_id == tenant_id)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        # "tenant.*" selects a family of actions.
        query = (query.where(AuditEvent.action.startswith(action[:-1], autoescape=True)) if action.endswith("*")
                 else query.where(AuditEvent.action == action))
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if until is not None:
        query = query.where(AuditEvent.at < until)
    with ctx.sessions() as session:
        return page(session, query, AuditEvent.at.desc(), AuditEvent.id.desc(), offset=offset, limit=limit)
