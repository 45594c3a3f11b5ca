"""API tokens (stored as SHA-256) and what each principal may do."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from control_plane.catalog.db import transaction
from control_plane.catalog.models import ApiToken, Tenant, TokenRole, utcnow
from control_plane.errors import AuthenticationError, PermissionDeniedError, TenantNotFoundError, ValidationError
from control_plane.services.context import ServiceContext

TOKEN_PREFIX = "tcp_"


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


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(ctx: ServiceContext, role: TokenRole, name: str, tenant_id: str | None = None) -> tuple[ApiToken, str]:
    """A new token; the plaintext is returned once and never stored."""
    if role is TokenRole.TENANT_ADMIN and not tenant_id:
        raise ValidationError("tenant", "a tenant_admin token needs a tenant")
    if role is TokenRole.SUPER_ADMIN and tenant_id:
        raise ValidationError("tenant", "a super_admin token is not scoped to a tenant")
    plaintext = TOKEN_PREFIX + secrets.token_urlsafe(32)
    with transaction(ctx.sessions) as session:
        if tenant_id and session.get(Tenant, tenant_id) is None:
            raise TenantNotFoundError(tenant_id)
        token = ApiToken(name=name, role=role, tenant_id=tenant_id, token_hash=_digest(plaintext))
        session.add(token)
    return token, plaintext


def authenticate(ctx: ServiceContext, bearer: str | None) -> Principal:
    if not bearer:
        raise AuthenticationError("an Authorization: Bearer <token> header is required")
    with transaction(ctx.sessions) as session:
        token = session.scalars(select(ApiToken).where(ApiToken.token_hash == _digest(bearer))).one_or_none()
        if token is None or token.revoked_at is not None:
            raise AuthenticationError("the token is not valid")
        token.last_used_at = utcnow()
        return Principal(token_id=token.id, name=token.name, role=token.role, tenant_id=token.tenant_id)
