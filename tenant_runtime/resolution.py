"""TenantResolver: which tenant a request is for, from its host, headers, path or a verified JWT.

Strategies run in the configured order. With on_conflict="refuse" (the default) every strategy that
names a tenant must name the same one; with "first", the first strategy that names one wins.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Mapping

import jwt

from tenant_runtime.errors import (
    InvalidTenantTokenError,
    TenantConflictError,
    TenantNotFoundError,
    TenantResolutionError,
)
from tenant_runtime.naming import is_valid_tenant_id
from tenant_runtime.settings import RuntimeSettings

_HOST = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,251}[a-z0-9_])?")


def normalize_host(host: str | None) -> str | None:
    """`Acme.Example.com:8443.` → `acme.example.com`; None when there is no usable host."""
    if not host:
        return None
    host = host.strip().lower()
    if host.startswith("["):  # IPv6 literal: never a tenant domain
        return None
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    host = host.rstrip(".")
    if not _HOST.fullmatch(host):
        raise TenantResolutionError("the Host header is malformed")
    return host


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    value = headers.get(name)
    if value is None and isinstance(headers, dict):  # plain dicts are case-sensitive; werkzeug's are not
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


class TenantResolver:
    def __init__(self, settings: RuntimeSettings, tenant_for_domain: Callable[[str], str | None]) -> None:
        self._settings = settings
        self._tenant_for_domain = tenant_for_domain
        self._strategies = settings.effective_strategies
        self._by = [(strategy, getattr(self, f"_by_{strategy}")) for strategy in self._strategies]
        self._base_suffix = f".{settings.base_domain}" if settings.base_domain else None

    @property
    def strategies(self) -> tuple[str, ...]:
        return self._strategies

    def resolve(self, *, host: str | None = None, headers: Mapping[str, str] | None = None,
                path: str | None = None, claims: Mapping[str, Any] | None = None,
                token: str | None = None, peer: str | None = None) -> str:
        """The tenant id the request names; raises when it names none, a malformed one, or two.

        `peer` is the address the request came from: with RUNTIME_TRUSTED_PROXIES set, the tenant header
        of any other peer is ignored (a client must not pick its tenant by sending a header).
        """
        if host is None:
            host = _header(headers, "Host")
        found: dict[str, str] = {}
        for strategy, by in self._by:
            if strategy == "subdomain" and "domain" in found:
                continue  # an exact domain is more specific than the subdomain rule: both read the host
            tenant_id = by(host=host, headers=headers, path=path, claims=claims, token=token, peer=peer)
            if tenant_id is None:
                continue
            if self._settings.on_conflict == "first":
                return tenant_id
            found[strategy] = tenant_id
        if not found:
            try:
                shown = normalize_host(host)
            except TenantResolutionError:
                shown = None
            where = f" for host {shown!r}" if shown else ""
            raise TenantNotFoundError(f"no tenant is named by this request{where}")
        if len(set(found.values())) > 1:
            named = ", ".join(f"{strategy} says {tenant!r}" for strategy, tenant in found.items())
            raise TenantConflictError(f"the request names different tenants: {named}", candidates=found)
        return next(iter(found.values()))

    # Each strategy returns a tenant id, None when it does not apply, or raises on malformed input.

    def _by_domain(self, *, host: str | None, **_: Any) -> str | None:
        normalized = normalize_host(host)
        return self._tenant_for_domain(normalized) if normalized else None

    def _by_subdomain(self, *, host: str | None, **_: Any) -> str | None:
        normalized = normalize_host(host)
        if not normalized or not self._base_suffix or not normalized.endswith(self._base_suffix):
            return None
        label = normalized[: -len(self._base_suffix)]
        if "." in label or not is_valid_tenant_id(label):
            return None  # www.app.example, a.b.app.example...: not a tenant subdomain
        return label

    def _by_header(self, *, headers: Mapping[str, str] | None, peer: str | None = None, **_: Any) -> str | None:
        value = _header(headers, self._settings.tenant_header)
        if value is None or not self._trusted(peer):
            return None
        value = value.strip()
        if not is_valid_tenant_id(value):
            raise TenantResolutionError(f"the {self._settings.tenant_header} header is not a valid tenant id")
        return value

    def _trusted(self, peer: str | None) -> bool:
        proxies = self._settings.trusted_proxies
        if not proxies:
            return True
        try:
            address = ipaddress.ip_address(peer) if peer else None
        except ValueError:
            return False
        return address is not None and any(address in network for network in proxies)

    def _by_path(self, *, path: str | None, **_: Any) -> str | None:
        prefix = self._settings.path_prefix
        if not path or not prefix or not path.startswith(prefix):
            return None
        segment = path[len(prefix):].split("/", 1)[0]
        if not is_valid_tenant_id(segment):
            raise TenantResolutionError("the tenant segment of the path is not a valid tenant id")
        return segment

    def _by_jwt(self, *, headers: Mapping[str, str] | None, claims: Mapping[str, Any] | None,
                token: str | None, **_: Any) -> str | None:
        if claims is None:
            if token is None:
                authorization = _header(headers, "Authorization")
                if not authorization:
                    return None
                scheme, _, credentials = authorization.partition(" ")
                if scheme.lower() != "bearer" or not credentials.strip():
                    return None
                token = credentials.strip()
            claims = self.verify_token(token)
        value = claims.get(self._settings.jwt_claim)
        if value is None:
            return None
        if not isinstance(value, str) or not is_valid_tenant_id(value):
            raise InvalidTenantTokenError(f"the token's {self._settings.jwt_claim!r} claim is not a valid tenant id")
        return value

    def verify_token(self, token: str) -> Mapping[str, Any]:
        """The token's claims, after checking signature, expiry (required), audience and issuer."""
        settings = self._settings
        if not settings.jwt_key:
            raise InvalidTenantTokenError("tenant tokens are not accepted here")
        try:
            return jwt.decode(token, settings.jwt_key, algorithms=list(settings.jwt_algorithms),
                              audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                              options={"require": ["exp"], "verify_aud": settings.jwt_audience is not None})
        except jwt.ExpiredSignatureError:
            raise InvalidTenantTokenError("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise InvalidTenantTokenError(f"the token is invalid ({type(exc).__name__})") from None
