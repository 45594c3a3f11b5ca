"""Fair use of shared resources by tenant admins: how many manual backups they start, and how long they keep them.

Super admins are not limited. (One backup or restore at a time per tenant is the operation engine's 423.)
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane.catalog.models import ApiToken, Operation, OperationKind, TokenRole, utcnow
from control_plane.errors import TooManyRequestsError, ValidationError
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services.retention import policy_of

WINDOW = timedelta(days=1)


def check_manual_backup(ctx: ServiceContext, session: Session, principal: Principal, tenant_id: str,
                        expires_in_days: int | None) -> None:
    """Refuse a tenant admin's backup over the daily allowance (429) or kept past the tenant's policy (422)."""
    if principal.is_super_admin:
        return
    longest = max(1, policy_of(ctx, session, tenant_id).keep_daily_days)
    if expires_in_days is not None and expires_in_days > longest:
        raise ValidationError("expires_in_days", f"at most {longest} (the tenant's retention policy) "
                                                 "for a tenant_admin token")
    since = utcnow() - WINDOW
    recent = select(Operation.created_at).join(ApiToken, ApiToken.id == Operation.requested_by).where(
        Operation.tenant_id == tenant_id, Operation.kind == OperationKind.BACKUP,
        Operation.created_at > since, ApiToken.role == TokenRole.TENANT_ADMIN)
    count, oldest = session.execute(select(func.count(), func.min(recent.subquery().c.created_at))).one()
    allowed = ctx.settings.tenant_admin_backups_per_day
    if count >= allowed:
        wait = (oldest + WINDOW - utcnow()).total_seconds() if oldest else WINDOW.total_seconds()
        raise TooManyRequestsError(f"tenant admins may start {allowed} backups per 24 hours", retry_after=int(wait) + 1)
