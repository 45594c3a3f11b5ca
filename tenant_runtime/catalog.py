"""TenantDirectory: reads tenants and domains from the catalog (read-only) and caches them.

Entries live `cache_ttl` while change events arrive from Redis, `fallback_ttl` otherwise; an event
drops the tenant's entry at once. Concurrent misses for one key share a single catalog query. The read
model is the few catalog columns the runtime needs (the control plane's models own the schema).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections import OrderedDict
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Callable, Generic, Mapping, TypeVar

from sqlalchemy import JSON, URL, Engine, Integer, String, bindparam, column, create_engine, make_url, select, table
from sqlalchemy.exc import SQLAlchemyError

from tenant_runtime.crypto import Keyring, role_secret_context
from tenant_runtime.errors import CatalogUnavailableError, DecryptionError, TenantNotFoundError
from tenant_runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

# The read model: lightweight table clauses (no MetaData, nothing to create) naming only what the runtime
# reads; tests check them against control_plane.catalog.models, which own the schema.
# They are also exactly what `tenantctl runtime grant` lets the runtime's catalog role read.
_tenants = table("tenants", column("id", String), column("status", String), column("server_name", String),
                 column("database_name", String), column("role_name", String),
                 column("role_password_encrypted", String), column("plan", String))
_servers = table("database_servers", column("name", String), column("host", String), column("port", Integer),
                 column("tls", JSON))
_domains = table("tenant_domains", column("domain", String), column("tenant_id", String))
_plans = table("plans", column("name", String), column("connection_limit", Integer))
READ_MODEL = (_tenants, _servers, _domains, _plans)
_TENANT_QUERY = (
    select(_tenants.c.id, _tenants.c.status, _tenants.c.server_name, _tenants.c.database_name,
           _tenants.c.role_name, _tenants.c.role_password_encrypted, _servers.c.host, _servers.c.port,
           _servers.c.tls, _plans.c.connection_limit)
    .select_from(_tenants.outerjoin(_servers, _servers.c.name == _tenants.c.server_name)
                 .outerjoin(_plans, _plans.c.name == _tenants.c.plan))
    .where(_tenants.c.id == bindparam("tenant_id"))
)
_DOMAIN_QUERY = select(_domains.c.tenant_id).where(_domains.c.domain == bindparam("domain"))


def sqlalchemy_url(url: str | URL) -> URL:
    """A DSN as given by operators (`postgresql://...`) with psycopg 3 as the SQLAlchemy driver."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


@dataclass(frozen=True)
class TenantInfo:
    """What an application may know about its tenant: no credentials."""

    id: str
    status: str
    server: str | None
    database: str
    role: str


@dataclass(frozen=True)
class Route:
    """Where and as whom to connect for one tenant, as the catalog says now."""

    info: TenantInfo
    host: str | None
    port: int | None
    password_encrypted: str = field(repr=False)
    # The server's libpq TLS options (sslmode, sslrootcert...) and the plan's connection limit (None: none).
    tls: Mapping[str, str] = field(default_factory=dict)
    connection_limit: int | None = None

    @property
    def fingerprint(self) -> tuple[Any, ...]:
        """Changes whenever existing connections would point at the wrong place or use stale credentials."""
        return (self.info.server, self.host, self.port, self.info.database, self.info.role, self.password_encrypted,
                tuple(sorted(self.tls.items())), self.connection_limit)

    def connection_cap(self, configured: int) -> int:
        """This process's pool size for the tenant: the configured cap, or the plan's limit when lower."""
        return min(configured, self.connection_limit) if self.connection_limit else configured


K = TypeVar("K")


class _BoundedCache(Generic[K]):
    """key → (value, expires_at), oldest insertion evicted first. Writers hold the directory's lock;
    peek() may run without it (a single dict lookup, atomic in CPython)."""

    def __init__(self, max_entries: int) -> None:
        self._data: OrderedDict[K, tuple[Any, float]] = OrderedDict()
        self._max = max_entries

    def peek(self, key: K) -> tuple[Any, float] | None:
        return self._data.get(key)

    def put(self, key: K, value: Any, expires_at: float) -> None:
        self._data[key] = (value, expires_at)
        self._data.move_to_end(key)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def pop(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class _Load(Future):
    """One catalog query in flight; `stale` is set when an event arrived after it started."""

    stale = False


class TenantDirectory:
    def __init__(self, settings: RuntimeSettings, keyring: Keyring, *, max_entries: int = 50_000) -> None:
        self._settings = settings
        self._keyring = keyring
        self._max_entries = max_entries
        self._engine = self._create_engine()
        self._reset_state()

    def _reset_state(self) -> None:
        # The lock protects both caches, the in-flight loads, the live flag and the counters.
        self._lock = threading.Lock()
        self._tenants: _BoundedCache[str] = _BoundedCache(self._max_entries)
        self._domains: _BoundedCache[str] = _BoundedCache(self._max_entries)
        self._inflight: dict[tuple[str, str], _Load] = {}
        self._events_live = False
        self._catalog_down = False
        self.hits = self.misses = self.errors = 0

    def _create_engine(self) -> Engine:
        # Not "<prefix>:<tenant>:..." like tenant connections, so that counting those leaves these out.
        name = f"{self._settings.application_name}-catalog:{os.getpid()}@{socket.gethostname()}"[:63]
        return create_engine(
            sqlalchemy_url(self._settings.catalog_database_url),
            pool_size=self._settings.catalog_pool_size, max_overflow=0, pool_pre_ping=True, pool_recycle=600,
            pool_timeout=self._settings.acquire_timeout, hide_parameters=True,
            connect_args={"application_name": name, "connect_timeout": self._settings.connect_timeout},
        )

    # -- lookups ------------------------------------------------------------------------------------

    def route(self, tenant_id: str) -> Route:
        """The tenant's route, from the cache or the catalog; TenantNotFoundError for unknown ids."""
        route = self._lookup("tenant", tenant_id, self._tenants, lambda: self._query_tenant(tenant_id))
        if route is None:
            raise TenantNotFoundError(f"tenant {tenant_id!r} does not exist", tenant_id=tenant_id)
        return route

    def tenant_for_domain(self, domain: str) -> str | None:
        return self._lookup("domain", domain, self._domains, lambda: self._query_domain(domain))

    def decrypt_password(self, route: Route) -> str:
        try:
            return self._keyring.decrypt(route.password_encrypted, role_secret_context(route.info.id))
        except DecryptionError as exc:
            # A KEYRING mismatch between the control plane and this app: say so, never show the secret.
            raise CatalogUnavailableError(
                f"cannot decrypt the credentials of tenant {route.info.id!r}: {exc.detail} (check KEYRING)",
                tenant_id=route.info.id) from exc

    def _lookup(self, kind: str, key: str, cache: _BoundedCache[str], query: Callable[[], Any]) -> Any:
        # The hit path takes no lock: it runs several times per request in every thread.
        cached = cache.peek(key)
        if cached is not None and cached[1] > monotonic():
            self.hits += 1  # unlocked: may miss a count under contention, never affects routing
            return cached[0]
        with self._lock:
            cached = cache.peek(key)
            if cached is not None and cached[1] > monotonic():
                self.hits += 1
                return cached[0]
            self.misses += 1
            load = self._inflight.get((kind, key))
            owner = load is None
            if owner:
                load = self._inflight[(kind, key)] = _Load()
        if not owner:
            try:
                return load.result(timeout=self._settings.acquire_timeout + self._settings.connect_timeout)
            except FutureTimeoutError:
                raise CatalogUnavailableError("the tenant catalog did not answer in time") from None
        try:
            value = query()
        except SQLAlchemyError as exc:
            with self._lock:
                self.errors += 1
                first = not self._catalog_down
                self._catalog_down = True
                self._inflight.pop((kind, key), None)
            if first:
                log.warning("catalog unreachable (%s); serving cached tenants only until it answers",
                            type(exc).__name__)
            if cached is not None:
                load.set_result(cached[0])
                return cached[0]
            error = CatalogUnavailableError(f"the tenant catalog is unreachable ({type(exc).__name__})")
            load.set_exception(error)
            raise error from exc
        except BaseException as exc:
            with self._lock:
                self._inflight.pop((kind, key), None)
            load.set_exception(exc)
            raise
        with self._lock:
            if self._catalog_down:
                self._catalog_down = False
                log.info("catalog reachable again")
            if self._inflight.get((kind, key)) is load:
                del self._inflight[(kind, key)]
            if not load.stale:
                ttl = self._settings.cache_ttl if self._events_live else self._settings.fallback_ttl
                cache.put(key, value, monotonic() + ttl)
        load.set_result(value)
        return value

    def _query_tenant(self, tenant_id: str) -> Route | None:
        with self._engine.connect() as conn:
            row = conn.execute(_TENANT_QUERY, {"tenant_id": tenant_id}).one_or_none()
        if row is None:
            return None
        info = TenantInfo(id=row.id, status=row.status, server=row.server_name, database=row.database_name,
                          role=row.role_name)
        return Route(info=info, host=row.host, port=row.port, password_encrypted=row.role_password_encrypted,
                     tls=dict(row.tls or {}), connection_limit=row.connection_limit)

    def _query_domain(self, domain: str) -> str | None:
        with self._engine.connect() as conn:
            return conn.execute(_DOMAIN_QUERY, {"domain": domain}).scalar_one_or_none()

    # -- invalidation -------------------------------------------------------------------------------

    def invalidate_tenant(self, tenant_id: str) -> None:
        with self._lock:
            self._tenants.pop(tenant_id)
            self._mark_stale(lambda kind, key: kind == "tenant" and key == tenant_id)

    def invalidate_domains(self) -> None:
        with self._lock:
            self._domains.clear()
            self._mark_stale(lambda kind, key: kind == "domain")

    def clear(self) -> None:
        with self._lock:
            self._tenants.clear()
            self._domains.clear()
            self._mark_stale(lambda kind, key: True)

    def _mark_stale(self, matches: Callable[[str, str], bool]) -> None:
        # A query that started before the change may have read the old row: its result must not be
        # cached, and later callers must not wait for it.
        for ident in [ident for ident in self._inflight if matches(*ident)]:
            self._inflight.pop(ident).stale = True

    def set_events_live(self, live: bool) -> None:
        """Events connected or lost: either way, what was cached may have missed changes."""
        with self._lock:
            self._events_live = live
        self.clear()

    @property
    def events_live(self) -> bool:
        return self._events_live

    def cached_entries(self) -> int:
        with self._lock:
            return len(self._tenants) + len(self._domains)

    # -- process lifecycle --------------------------------------------------------------------------

    def after_fork(self) -> None:
        """In a forked child: forget the parent's catalog sockets without closing them, start afresh."""
        self._engine.dispose(close=False)
        self._engine = self._create_engine()
        self._reset_state()

    def close(self) -> None:
        self._engine.dispose()
