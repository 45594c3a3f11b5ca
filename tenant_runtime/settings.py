"""RuntimeSettings: every knob of the runtime, read from the environment in one place (each also as <NAME>_FILE).

`read_setting` is shared: control_plane.settings reads its own settings with it.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from tenant_runtime.errors import ConfigurationError, RuntimeConfigurationError

log = logging.getLogger(__name__)


def read_setting(name: str, environ: Mapping[str, str] | None = None, default: str | None = None) -> str | None:
    """`NAME` from the environment, else the content of the file named by `NAME_FILE` (Docker secrets)."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value:
        return value
    path = env.get(f"{name}_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip()
        except OSError as exc:
            raise ConfigurationError(f"{name}_FILE points to an unreadable file: {path} ({exc.strerror})") from exc
    return default


STRATEGIES = ("domain", "subdomain", "header", "jwt", "path")
# `header` lets the client name its tenant: only when RUNTIME_RESOLUTION lists it (see README, Security model).
DEFAULT_STRATEGIES = ("domain", "subdomain", "jwt")
CONFLICT_POLICIES = ("refuse", "first")
# Statuses whose database may be used. `migrating` is served: each revision runs in its own short
# transaction (see tenant_migrations.migrate), so requests only wait on its locks for a moment.
DEFAULT_SERVE_STATUSES = frozenset({"active", "migrating"})


@dataclass(frozen=True)
class RuntimeSettings:
    catalog_database_url: str = field(repr=False)
    keyring: str = field(repr=False)
    redis_url: str | None = field(default=None, repr=False)
    # The hard cap on server connections this process holds to tenant databases (idle ones included).
    max_connections: int = 20
    max_connections_per_tenant: int = 5
    pool_idle_seconds: float = 60.0
    acquire_timeout: float = 5.0
    # Pools kept open (each holds two threads); idle ones beyond this are closed least recently used first.
    max_open_pools: int | None = None
    cache_ttl: float = 300.0
    fallback_ttl: float = 1.0
    application_name: str = "tenant-runtime"
    connect_timeout: int = 5
    max_lifetime: float = 1800.0
    catalog_pool_size: int = 2
    strategies: tuple[str, ...] | None = None
    base_domain: str | None = None
    tenant_header: str = "X-Tenant-ID"
    path_prefix: str | None = None
    jwt_key: str | None = field(default=None, repr=False)
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_claim: str = "tenant_id"
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    on_conflict: str = "refuse"
    # Peers (addresses or networks) whose tenant header is believed; empty: any peer (when `header` is on).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    serve_statuses: frozenset[str] = DEFAULT_SERVE_STATUSES
    # Extra libpq parameters for tenant connections (sslmode, sslrootcert...). PG* variables also apply.
    connect_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not self.catalog_database_url:
            problems.append("RUNTIME_CATALOG_URL (or CATALOG_DATABASE_URL) is required")
        if not self.keyring:
            problems.append("RUNTIME_KEYRING (or KEYRING) is required")
        if self.max_connections < 1:
            problems.append("RUNTIME_MAX_CONNECTIONS must be at least 1")
        if not 1 <= self.max_connections_per_tenant <= max(self.max_connections, 1):
            problems.append("RUNTIME_MAX_CONNECTIONS_PER_TENANT must be between 1 and RUNTIME_MAX_CONNECTIONS")
        if self.pool_idle_seconds <= 0 or self.acquire_timeout <= 0:
            problems.append("RUNTIME_POOL_IDLE_SECONDS and RUNTIME_ACQUIRE_TIMEOUT must be positive")
        if self.max_open_pools is not None and self.max_open_pools < 1:
            problems.append("RUNTIME_MAX_OPEN_POOLS must be at least 1")
        if self.fallback_ttl <= 0 or self.cache_ttl < self.fallback_ttl:
            problems.append("RUNTIME_CACHE_FALLBACK_TTL must be positive and at most RUNTIME_CACHE_TTL")
        if self.on_conflict not in CONFLICT_POLICIES:
            problems.append(f"RUNTIME_ON_CONFLICT must be one of {', '.join(CONFLICT_POLICIES)}")
        if self.strategies is not None:
            unknown = [s for s in self.strategies if s not in STRATEGIES]
            if unknown or not self.strategies:
                problems.append(f"RUNTIME_RESOLUTION must list some of {', '.join(STRATEGIES)}")
            if "jwt" in self.strategies and not self.jwt_key:
                problems.append("the jwt strategy needs RUNTIME_JWT_KEY")
            if "subdomain" in self.strategies and not self.base_domain:
                problems.append("the subdomain strategy needs RUNTIME_BASE_DOMAIN")
            if "path" in self.strategies and not self.path_prefix:
                problems.append("the path strategy needs RUNTIME_PATH_PREFIX")
        if problems:
            raise RuntimeConfigurationError("; ".join(problems))

    @property
    def effective_strategies(self) -> tuple[str, ...]:
        """The configured order, or the defaults minus the strategies that lack their setting."""
        if self.strategies is not None:
            return self.strategies
        available = {"domain": True, "subdomain": bool(self.base_domain), "jwt": bool(self.jwt_key)}
        return tuple(s for s in DEFAULT_STRATEGIES if available[s])

    @property
    def effective_max_open_pools(self) -> int:
        return self.max_open_pools or max(2 * self.max_connections, 16)

    def with_overrides(self, **overrides: Any) -> "RuntimeSettings":
        return replace(self, **overrides)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "RuntimeSettings":
        """Read the RUNTIME_* variables (RUNTIME_CATALOG_URL, RUNTIME_KEYRING and RUNTIME_EVENTS_URL, else the
        control plane's CATALOG_DATABASE_URL, KEYRING and REDIS_URL); keyword arguments win."""
        try:
            raw = {name: read_setting(name, environ) for name in _ENV}
        except ConfigurationError as exc:
            raise RuntimeConfigurationError(exc.detail) from exc
        values: dict[str, Any] = {}
        for name, value in raw.items():
            if value is None or value == "":
                continue
            attr, convert = _ENV[name]
            try:
                values[attr] = convert(value)
            except ValueError:
                raise RuntimeConfigurationError(f"{name} has an invalid value") from None
        missing = [f"{name} (or {fallback})" for name, fallback in (("RUNTIME_CATALOG_URL", "CATALOG_DATABASE_URL"),
                                                                  ("RUNTIME_KEYRING", "KEYRING"))
                   if _ENV[name][0] not in values and _ENV[name][0] not in overrides]
        if missing:
            raise RuntimeConfigurationError(
                "missing required settings: " + ", ".join(missing) + " (set them, or <NAME>_FILE pointing to a file)")
        if raw["KEYRING"] and not raw["RUNTIME_KEYRING"] and "keyring" not in overrides:
            log.warning("this tenant application holds the control plane's KEYRING: give it RUNTIME_KEYRING instead "
                        "(README, Security model)")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"unknown runtime settings: {', '.join(unknown)}")
        return cls(**{**values, **overrides})


def _words(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _optional_int(value: str) -> int:
    return int(value)


def _networks(value: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(part, strict=False) for part in _words(value))


_ENV: dict[str, tuple[str, Any]] = {
    # The control plane's names first: a RUNTIME_* name, read later, wins.
    "CATALOG_DATABASE_URL": ("catalog_database_url", str),
    "KEYRING": ("keyring", str),
    "REDIS_URL": ("redis_url", str),
    "RUNTIME_CATALOG_URL": ("catalog_database_url", str),
    "RUNTIME_KEYRING": ("keyring", str),
    "RUNTIME_EVENTS_URL": ("redis_url", str),
    "RUNTIME_TRUSTED_PROXIES": ("trusted_proxies", _networks),
    "RUNTIME_MAX_CONNECTIONS": ("max_connections", int),
    "RUNTIME_MAX_CONNECTIONS_PER_TENANT": ("max_connections_per_tenant", int),
    "RUNTIME_POOL_IDLE_SECONDS": ("pool_idle_seconds", float),
    "RUNTIME_ACQUIRE_TIMEOUT": ("acquire_timeout", float),
    "RUNTIME_MAX_OPEN_POOLS": ("max_open_pools", _optional_int),
    "RUNTIME_CACHE_TTL": ("cache_ttl", float),
    "RUNTIME_CACHE_FALLBACK_TTL": ("fallback_ttl", float),
    "RUNTIME_APPLICATION_NAME": ("application_name", str),
    "RUNTIME_CONNECT_TIMEOUT": ("connect_timeout", int),
    "RUNTIME_RESOLUTION": ("strategies", _words),
    "RUNTIME_BASE_DOMAIN": ("base_domain", lambda v: v.strip().lower().strip(".")),
    "RUNTIME_TENANT_HEADER": ("tenant_header", str),
    "RUNTIME_PATH_PREFIX": ("path_prefix", str),
    "RUNTIME_JWT_KEY": ("jwt_key", str),
    "RUNTIME_JWT_ALGORITHMS": ("jwt_algorithms", _words),
    "RUNTIME_JWT_CLAIM": ("jwt_claim", str),
    "RUNTIME_JWT_AUDIENCE": ("jwt_audience", str),
    "RUNTIME_JWT_ISSUER": ("jwt_issuer", str),
    "RUNTIME_ON_CONFLICT": ("on_conflict", str),
}
