"""API tokens (stored as SHA-256): creation, authentication, expiry, listing, revocation; and what each principal may do."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select

from control_plane.catalog.db import page, transaction
from control_plane.catalog.models import ApiToken, Tenant, TenantStatus, TokenRole, utcnow
from control_plane.errors import (AuthenticationError, PermissionDeniedError, TenantNotFoundError, TokenNotFoundError,
                                  TooManyRequestsError, ValidationError)
from control_plane.services import audit
from control_plane.services.context import ServiceContext

TOKEN_PREFIX = "tcp_"
# last_used_at is written at most this often per token: a write per request would make every read a write.
LAST_USED_RESOLUTION = timedelta(minutes=1)
# A tenant admin's token stops working as soon as its tenant is being deleted.
_GONE = (TenantStatus.DELETING, TenantStatus.DELETED)


@dataclass(frozen=True)
class Principal:
    token_id: str
    name: str
    role: TokenRole
    tenant_id: str | None = None

    @property
    def actor(self) -> str:
        return f"token:{self.name}"

    @property
    def is_super_admin(self) -> bool:
        return self.role is TokenRole.SUPER_ADMIN

    def require_super_admin(self) -> None:
        if not self.is_super_admin:
            raise PermissionDeniedError("this action needs a super_admin token")

    def require_tenant(self, tenant_id: str | None) -> None:
        """Read access to one tenant (and its operations, backups): super admins, or its own tenant admin."""
        if not self.is_super_admin and tenant_id != self.tenant_id:
            raise PermissionDeniedError("this token is scoped to another tenant")


SYSTEM = Principal(token_id="system", name="system", role=TokenRole.SUPER_ADMIN)
# What the backup and drill schedules start (their operations wait in the background lane: naming.Lane).
SCHEDULER = Principal(token_id="scheduler", name="scheduler", role=TokenRole.SUPER_ADMIN)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def default_lifetime(ctx: ServiceContext, role: TokenRole) -> timedelta | None:
    days = (ctx.settings.token_days_super_admin if role is TokenRole.SUPER_ADMIN
            else ctx.settings.token_days_tenant_admin)
    return timedelta(days=days) if days > 0 else None


def create_token(ctx: ServiceContext, role: TokenRole, name: str, tenant_id: str | None = None, *,
                 expires_in: timedelta | None | str = "default", actor: str = "system") -> tuple[ApiToken, str]:
    """A new token; the plaintext is returned once and never stored.

    `expires_in`: "default" (the role's configured lifetime), a timedelta, or None (never expires).
    """
    if role is TokenRole.TENANT_ADMIN and not tenant_id:
        raise ValidationError("tenant", "a tenant_admin token needs a tenant")
    if role is TokenRole.SUPER_ADMIN and tenant_id:
        raise ValidationError("tenant", "a super_admin token is not scoped to a tenant")
    lifetime = default_lifetime(ctx, role) if expires_in == "default" else expires_in
    if lifetime is not None and lifetime <= timedelta(0):
        raise ValidationError("expires_in", "must be positive")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction(ctx.sessions) as session:
        if tenant_id and session.get(Tenant, tenant_id) is None:
            raise TenantNotFoundError(tenant_id)
        now = utcnow()
        token = ApiToken(name=name, role=role, tenant_id=tenant_id, token_hash=_digest(plaintext), created_at=now,
                         expires_at=now + lifetime if lifetime is not None else None)
        session.add(token)
        session.flush()
        audit.record(session, actor, "token.created", tenant_id, token_id=token.id, role=role.value, name=name)
    return token, plaintext


def authenticate(ctx: ServiceContext, bearer: str | None, client: str | None = None) -> Principal:
    """The principal of `bearer`; 401 when missing, unknown, expired, revoked or its tenant is gone.

    Failed attempts are counted per client address (when a throttle is configured): past the limit the
    client gets 429 with Retry-After, whatever it sends, until its window ends.
    """
    throttle = ctx.auth_throttle if client else None
    if throttle is not None:
        wait = throttle.retry_after(client)
        if wait is not None:
            raise TooManyRequestsError("too many failed authentications from this address", retry_after=wait)
    try:
        return _authenticate(ctx, bearer)
    except AuthenticationError:
        if throttle is not None:
            throttle.record_failure(client)
        raise


def _authenticate(ctx: ServiceContext, bearer: str | None) -> Principal:
    if not bearer:
        raise AuthenticationError("an Authorization: Bearer <token> header is required")
    now = utcnow()
    with ctx.sessions() as session:
        row = session.execute(
            select(ApiToken, Tenant.status).outerjoin(Tenant, Tenant.id == ApiToken.tenant_id)
            .where(ApiToken.token_hash == _digest(bearer))).one_or_none()
        if row is None:
            raise AuthenticationError("the token is not valid")
        token, tenant_status = row
        if not token.usable(now) or tenant_status in _GONE:
            raise AuthenticationError("the token is not valid")
        principal = Principal(token_id=token.id, name=token.name, role=token.role, tenant_id=token.tenant_id)
        stale = token.last_used_at is None or now - token.last_used_at >= LAST_USED_RESOLUTION
    if stale:
        with transaction(ctx.sessions) as session:
            # Conditional, so concurrent requests of one token write it once per interval at most.
            session.execute(ApiToken.__table__.update()
                            .where(ApiToken.id == principal.token_id)
                            .where((ApiToken.last_used_at.is_(None))
                                   | (ApiToken.last_used_at <= now - LAST_USED_RESOLUTION))
                            .values(last_used_at=now))
    return principal


def _visible_tokens(principal: Principal):
    query = select(ApiToken)
    if not principal.is_super_admin:
        query = query.where(ApiToken.tenant_id == principal.tenant_id)
    return query


def list_tokens(ctx: ServiceContext, principal: Principal, *, offset: int, limit: int,
                tenant_id: str | None = None, include_revoked: bool = False) -> tuple[list[ApiToken], int]:
    """Tokens (never their secret): all for a super admin, its tenant's for a tenant admin."""
    if tenant_id is not None:
        principal.require_tenant(tenant_id)
    query = _visible_tokens(principal)
    if tenant_id is not None:
        query = query.where(ApiToken.tenant_id == tenant_id)
    if not include_revoked:
        query = query.where(ApiToken.revoked_at.is_(None))
    with ctx.sessions() as session:
        return page(session, query, ApiToken.created_at.desc(), ApiToken.id, offset=offset, limit=limit)


def revoke_token(ctx: ServiceContext, principal: Principal, token_id: str) -> ApiToken:
    """Revoke one token (effective on its next request); another tenant's token is "not found"."""
    with transaction(ctx.sessions) as session:
        token = session.scalars(_visible_tokens(principal).where(ApiToken.id == token_id)
                                .with_for_update()).one_or_none()
        if token is None:
            raise TokenNotFoundError(token_id)
        if token.revoke(utcnow()):
            audit.record(session, principal.actor, "token.revoked", token.tenant_id, token_id=token.id)
    return token


def revoke_tenant_tokens(session, tenant_id: str, actor: str = "system") -> int:
    """Revoke every live token of a tenant (in the caller's transaction); how many were revoked."""
    now: datetime = utcnow()
    tokens = session.scalars(select(ApiToken).where(ApiToken.tenant_id == tenant_id,
                                                    ApiToken.revoked_at.is_(None))).all()
    for token in tokens:
        token.revoke(now)
    if tokens:
        audit.record(session, actor, "token.revoked", tenant_id, count=len(tokens), reason="tenant deleted")
    return len(tokens)
