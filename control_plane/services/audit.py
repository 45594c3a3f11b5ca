"""Audit trail: who did what to which tenant, when."""
from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from control_plane.catalog.models import AuditEvent


def record(session: Session, actor: str, action: str, tenant_id: str | None = None,
           operation_id: str | None = None, **details: Any) -> None:
    session.add(AuditEvent(actor=actor, action=action, tenant_id=tenant_id,
                           operation_id=operation_id, details=details))
