"""TenantRouter: resolves a request's tenant and lends a pooled connection to that tenant's database.

Framework-agnostic. Connections authenticate as the tenant's own role (never an admin), carry an
application_name naming the tenant and the process, and count against one hard per-process budget.
"""
from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import weakref
from contextlib import AbstractContextManager, contextmanager
from time import monotonic
from typing import TYPE_CHECKING, Any, Iterator, Mapping

import psycopg
from psycopg_pool import PoolClosed, PoolTimeout

from tenant_runtime.catalog import Route, TenantDirectory, TenantInfo
from tenant_runtime.crypto import Keyring
from tenant_runtime.errors import (
    ConfigurationError,
    ConnectionBudgetExceededError,
    RouterClosedError,
    RuntimeConfigurationError,
    TenantDatabaseUnavailableError,
    TenantNotFoundError,
    TenantRuntimeError,
    TenantSuspendedError,
    TenantUnavailableError,
)
from tenant_runtime.events import TenantEventListener
from tenant_runtime.metrics import RouterCollector
from tenant_runtime.pools import ENTRY_KWARG, PoolEntry, PoolRegistry, TenantConnection, TenantPool, failure_reason
from tenant_runtime.resolution import TenantResolver
from tenant_runtime.settings import RuntimeSettings
from tenant_runtime.sqlalchemy import TenantSessions

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

_NAMEDATALEN = 63
_GONE = frozenset({"deleted", "deleting"})
# A tenant being cut over to another server: new checkouts wait (bounded) for its next change event.
_HELD = frozenset({"moving"})
_HELD_RECHECK = 0.25
_ROUTERS: "weakref.WeakSet[TenantRouter]" = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for router in list(_ROUTERS):
        router._check_process()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Lease:
    """One connection lent to one unit of work; give it back with release() (exactly once)."""

    __slots__ = ("tenant_id", "connection", "_router", "_entry", "_released")

    def __init__(self, router: "TenantRouter", entry: PoolEntry, connection: psycopg.Connection) -> None:
        self.tenant_id = entry.tenant_id
        self.connection = connection
        self._router = router
        self._entry = entry
        self._released = False

    def release(self, *, commit: bool) -> None:
        """End the transaction (commit, or roll back) and return the connection to its pool.

        A failed commit is raised after the connection is back in its pool.
        """
        if self._released:
            return
        self._released = True
        conn = self.connection
        try:
            if not conn.closed and not conn.broken:
                if commit:
                    conn.commit()
                else:
                    try:
                        conn.rollback()
                    except psycopg.Error:
                        log.warning("tenant %s: rollback failed; discarding the connection", self.tenant_id)
                        conn.close()
        finally:
            self._router._give_back(self._entry, conn)


class TenantRouter:
    """Thread-safe; one per process (it rebuilds itself in a forked child). Close it at shutdown."""

    def __init__(self, settings: RuntimeSettings | None = None, **options: Any) -> None:
        if settings is None:
            settings = RuntimeSettings(**options)
        elif options:
            settings = settings.with_overrides(**options)
        self.settings = settings
        try:
            self._keyring = Keyring.parse(settings.keyring, "RUNTIME_KEYRING")
        except ConfigurationError as exc:
            raise RuntimeConfigurationError(exc.detail) from exc
        self._host = socket.gethostname()
        self._directory = TenantDirectory(settings, self._keyring)
        self._resolver = TenantResolver(settings, self._directory.tenant_for_domain)
        self._closed = False
        self._sessions: TenantSessions | None = None
        self._abandoned: list[Any] = []  # a parent's objects, kept alive in a child so no finalizer runs
        self._init_process_state()
        _ROUTERS.add(self)

    @property
    def sessions(self) -> TenantSessions:
        """SQLAlchemy sessions on this router's connections (see tenant_runtime.sqlalchemy)."""
        if self._sessions is None:  # built on first use: apps without the ORM never create its engine
            self._sessions = TenantSessions(self)
        return self._sessions

    def session(self, tenant_id: str, *, timeout: float | None = None) -> AbstractContextManager[Session]:
        """A SQLAlchemy Session on a connection to the tenant's database; commits on success, rolls back on error."""
        return self.sessions.session(tenant_id, timeout=timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "TenantRouter":
        """Settings from CATALOG_DATABASE_URL, KEYRING, REDIS_URL and RUNTIME_* (each also as <NAME>_FILE)."""
        return cls(RuntimeSettings.from_env(environ, **overrides))

    def _init_process_state(self) -> None:
        self._pid = os.getpid()
        self._start_lock = threading.Lock()
        self._started = False
        self._stop = threading.Event()
        self._to_close: queue.SimpleQueue[PoolEntry | None] = queue.SimpleQueue()
        self._changed = threading.Condition()  # notified on every tenant change event
        self._janitor: threading.Thread | None = None
        self._listener: TenantEventListener | None = None
        self._registry = PoolRegistry(max_connections=self.settings.max_connections,
                                      max_open_pools=self.settings.effective_max_open_pools,
                                      on_retire=self._close_later)

    # -- process lifecycle --------------------------------------------------------------------------

    def _check_process(self) -> None:
        """Called on every entry point: in a forked child, drop the parent's pools and threads."""
        if self._pid == os.getpid():
            return
        # The parent's sockets, pools and threads are copies we must never use nor close (closing
        # would end the parent's sessions): keep the objects referenced, start over.
        self._abandoned.append((self._registry, self._listener, self._janitor))
        self._init_process_state()
        self._directory.after_fork()
        log.info("tenant router rebuilt after fork in process %d", self._pid)

    def _check_open(self) -> None:
        self._check_process()
        if self._closed:
            raise RouterClosedError("the tenant router is closed")
        self._ensure_started()

    def _ensure_started(self) -> None:
        if self._started:
            return
        with self._start_lock:
            if self._started or self._closed:
                return
            self._janitor = threading.Thread(target=self._run_janitor, name="tenant-runtime-janitor", daemon=True)
            self._janitor.start()
            if self.settings.redis_url:
                self._listener = TenantEventListener(self.settings.redis_url, self._on_event, self._on_events_live)
                self._listener.start()
            else:
                log.warning("REDIS_URL is not set: tenant changes are seen through a %.1fs cache TTL only",
                            self.settings.fallback_ttl)
            self._started = True

    def close(self) -> None:
        """Close every pool and stop the background threads. Connections still lent close when returned."""
        if self._closed:
            return
        self._closed = True
        self._check_process()
        self._registry.close()
        if self._listener is not None:
            self._listener.stop()
        self._stop.set()
        self._to_close.put(None)
        if self._janitor is not None and self._janitor is not threading.current_thread():
            self._janitor.join(10)
        while True:  # what the janitor did not get to (it was never started, or it timed out)
            try:
                entry = self._to_close.get_nowait()
            except queue.Empty:
                break
            if entry is not None:
                self._close_pool(entry)
        self._directory.close()
        if self._sessions is not None:
            self._sessions.dispose()
        _ROUTERS.discard(self)

    def __enter__(self) -> "TenantRouter":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- resolution and lookup ----------------------------------------------------------------------

    def resolve(self, *, host: str | None = None, headers: Mapping[str, str] | None = None,
                path: str | None = None, claims: Mapping[str, Any] | None = None,
                token: str | None = None, peer: str | None = None) -> str:
        """The id of an existing tenant named by the request, or TenantRuntimeError (404, 400, 401)."""
        self._check_open()
        tenant_id = self._resolver.resolve(host=host, headers=headers, path=path, claims=claims, token=token,
                                           peer=peer)
        self._directory.route(tenant_id)  # unknown → TenantNotFoundError
        return tenant_id

    def resolve_tenant(self, *, host: str | None = None, headers: Mapping[str, str] | None = None,
                       path: str | None = None, claims: Mapping[str, Any] | None = None, token: str | None = None,
                       require_available: bool = True, peer: str | None = None) -> TenantInfo:
        """resolve() and tenant() in one: the request's tenant, by default only if it may be served now."""
        self._check_open()
        tenant_id = self._resolver.resolve(host=host, headers=headers, path=path, claims=claims, token=token,
                                           peer=peer)
        route = self._directory.route(tenant_id)
        if require_available:
            self._require_serving(route)
        return route.info

    def verify_token(self, token: str) -> Mapping[str, Any]:
        """Claims of a tenant JWT verified with RUNTIME_JWT_KEY (InvalidTenantTokenError otherwise)."""
        return self._resolver.verify_token(token)

    def tenant(self, tenant_id: str, *, require_available: bool = True) -> TenantInfo:
        """What the catalog says about the tenant; by default raises unless it may be served now."""
        self._check_open()
        route = self._directory.route(tenant_id)
        if require_available:
            self._require_serving(route)
        return route.info

    def _require_serving(self, route: Route) -> None:
        status, tenant_id = route.info.status, route.info.id
        if status in self.settings.serve_statuses and route.host is not None:
            return
        # Discovered through the cache TTL rather than an event: close its connections all the same.
        self._registry.retire_tenant(tenant_id, "status")
        if status in _GONE:
            raise TenantNotFoundError(f"tenant {tenant_id!r} is {status}", tenant_id=tenant_id)
        if status == "suspended":
            raise TenantSuspendedError(f"tenant {tenant_id!r} is suspended", tenant_id=tenant_id,
                                       tenant_status=status)
        retry_after = 60 if status == "failed" else 5
        raise TenantUnavailableError(f"tenant {tenant_id!r} is {status}; try again later", tenant_id=tenant_id,
                                     tenant_status=status, retry_after=retry_after)

    # -- connections --------------------------------------------------------------------------------

    @contextmanager
    def connection(self, tenant_id: str, *, timeout: float | None = None) -> Iterator[psycopg.Connection]:
        """A connection to the tenant's database as its role; commits on success, rolls back on error."""
        lease = self.acquire(tenant_id, timeout=timeout)
        try:
            yield lease.connection
        except BaseException:
            lease.release(commit=False)
            raise
        lease.release(commit=True)

    def acquire(self, tenant_id: str, *, timeout: float | None = None) -> Lease:
        """Lend a connection (prefer `connection()`); waits up to `timeout` (default RUNTIME_ACQUIRE_TIMEOUT)."""
        self._check_open()
        started = monotonic()
        deadline = started + (self.settings.acquire_timeout if timeout is None else timeout)
        try:
            return self._acquire(tenant_id, started, deadline)
        except TenantRuntimeError as exc:
            self._registry.acquire_failed(type(exc).__name__)
            raise

    def _acquire(self, tenant_id: str, started: float, deadline: float) -> Lease:
        for _ in range(3):  # a pool retired under us (event, eviction) is looked up again
            route = self._settled_route(tenant_id, deadline)
            self._require_serving(route)
            registry = self._registry
            entry = registry.checkout(tenant_id, route.fingerprint, lambda e: self._make_pool(e, route))
            try:
                if not entry.opened:  # open() is idempotent: a race here only costs a lock
                    entry.pool.open()
                    entry.opened = True
                conn = entry.pool.getconn(timeout=max(deadline - monotonic(), 0.001))
            except PoolTimeout:
                registry.abandon(entry)
                if entry.connect_error is not None:
                    raise self._database_error(entry) from entry.connect_error
                raise self._budget_error(entry) from None
            except (PoolClosed, psycopg.OperationalError) as exc:
                registry.abandon(entry)
                if entry.connect_error is not None:
                    raise self._database_error(entry) from entry.connect_error
                if not entry.retired:
                    raise
                if monotonic() >= deadline:
                    raise self._budget_error(entry) from exc
                continue
            except BaseException:
                registry.abandon(entry)
                raise
            registry.lent(entry, monotonic() - started)
            return Lease(self, entry, conn)
        raise TenantDatabaseUnavailableError(f"tenant {tenant_id!r}: its pool kept being replaced; try again",
                                             tenant_id=tenant_id)

    def _settled_route(self, tenant_id: str, deadline: float) -> Route:
        """The tenant's route; while it is being cut over (`moving`), wait up to `deadline` for its next
        change (a request then waits out the move's write freeze instead of failing)."""
        route = self._directory.route(tenant_id)
        while route.info.status in _HELD and monotonic() < deadline:
            with self._changed:
                self._changed.wait(timeout=min(_HELD_RECHECK, max(deadline - monotonic(), 0)))
            self._directory.invalidate_tenant(tenant_id)  # the event's, or a re-read in case it was lost
            route = self._directory.route(tenant_id)
        return route

    def _budget_error(self, entry: PoolEntry) -> ConnectionBudgetExceededError:
        cap = self.settings.max_connections_per_tenant
        if entry.in_use >= cap:
            reason = f"tenant {entry.tenant_id!r} already uses its {cap} connections"
        else:
            reason = f"all {self.settings.max_connections} connections of this process are busy"
        return ConnectionBudgetExceededError(f"no connection within the acquire timeout: {reason}",
                                             tenant_id=entry.tenant_id)

    @staticmethod
    def _database_error(entry: PoolEntry) -> TenantDatabaseUnavailableError:
        reason = failure_reason(entry.connect_error)
        return TenantDatabaseUnavailableError(f"tenant {entry.tenant_id!r}: its database refused the connection "
                                              f"({reason})", tenant_id=entry.tenant_id)

    def _give_back(self, entry: PoolEntry, conn: psycopg.Connection) -> None:
        try:
            if conn.broken:
                conn.close()  # gives its budget slot back; psycopg_pool drops it without closing it
            entry.pool.putconn(conn)
        except Exception:  # a lease is given back from finally blocks: never mask the caller's error
            log.exception("tenant %s: could not return a connection to its pool", entry.tenant_id)
            conn.close()
        finally:
            self._registry.returned(entry)

    def application_name(self, tenant_id: str) -> str:
        """`<prefix>:<tenant>:<pid>@<host>`, cut to PostgreSQL's 63 bytes (the host is cut first)."""
        head = f"{self.settings.application_name}:{tenant_id}:{os.getpid()}@"
        return (head + self._host)[:_NAMEDATALEN] if len(head) < _NAMEDATALEN else head[:_NAMEDATALEN]

    def application_name_pattern(self) -> str:
        """A LIKE pattern matching every tenant connection of this process in pg_stat_activity."""
        prefix = self.settings.application_name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return f"{prefix}:%:{os.getpid()}@%"

    def _make_pool(self, entry: PoolEntry, route: Route) -> TenantPool:
        settings = self.settings
        kwargs = {
            **route.tls,  # the server's TLS options, as registered with the control plane
            **settings.connect_kwargs,
            ENTRY_KWARG: entry,
            "host": route.host,
            "port": route.port,
            "dbname": route.info.database,
            "user": route.info.role,
            "password": self._directory.decrypt_password(route),
            "application_name": self.application_name(route.info.id),
            "connect_timeout": settings.connect_timeout,
        }
        return TenantPool(
            kwargs=kwargs, connection_class=TenantConnection, min_size=0,
            max_size=route.connection_cap(settings.max_connections_per_tenant), open=False,
            name=f"tenant:{route.info.id}",
            timeout=settings.acquire_timeout, max_idle=settings.pool_idle_seconds,
            max_lifetime=settings.max_lifetime, reconnect_timeout=0, num_workers=1,
            check=self._check_connection,
        )

    def _check_connection(self, conn: psycopg.Connection) -> None:
        # Without events, a database swapped by a restore may have ended idle sessions unnoticed:
        # check each connection before lending it, until events are back.
        if self._directory.events_live:
            return
        try:
            TenantPool.check_connection(conn)
        except Exception:
            conn.close()  # psycopg_pool drops a failed connection without closing it: give the slot back
            raise

    # -- background work ----------------------------------------------------------------------------

    def _close_later(self, entries: list[PoolEntry]) -> None:
        for entry in entries:
            self._to_close.put(entry)

    def _close_pool(self, entry: PoolEntry) -> None:
        try:
            entry.pool.close(timeout=2.0)
        except Exception:
            log.exception("tenant %s: closing its pool failed", entry.tenant_id)

    def _run_janitor(self) -> None:
        """Closes retired pools (off the request path) and retires pools idle for RUNTIME_POOL_IDLE_SECONDS."""
        idle = self.settings.pool_idle_seconds
        tick = min(max(idle / 4, 0.05), 1.0)
        next_scan = monotonic() + tick
        while not self._stop.is_set():
            try:
                entry = self._to_close.get(timeout=max(next_scan - monotonic(), 0.0))
            except queue.Empty:
                entry = None
            if entry is not None:
                self._close_pool(entry)
            if monotonic() >= next_scan:
                self._registry.retire_idle(idle)
                next_scan = monotonic() + tick

    def _on_event(self, event: dict[str, Any]) -> None:
        tenant_id = event["tenant_id"]
        self._directory.invalidate_tenant(tenant_id)
        if event.get("change") == "domains":
            self._directory.invalidate_domains()
            return
        # Status, server, database or credentials changed: its connections may point at the wrong
        # place or serve a tenant that must be refused. New ones follow the catalog.
        self._registry.retire_tenant(tenant_id, "event")
        with self._changed:
            self._changed.notify_all()
        log.debug("tenant %s: %s event, pool retired", tenant_id, event.get("change"))

    def _on_events_live(self, live: bool, recovered: bool) -> None:
        self._directory.set_events_live(live)
        if recovered:
            # Events published while we were unsubscribed are lost: a restore may have swapped a
            # database under our idle connections. Start every pool afresh.
            self._registry.retire_all("resubscribed")

    # -- observation --------------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        """A plain snapshot of pools, connections, waits, evictions and rejections."""
        self._check_process()
        snapshot = self._registry.snapshot()
        snapshot["budget_rejections_total"] = snapshot["acquire_failures_total"].get(
            ConnectionBudgetExceededError.__name__, 0)
        listener = self._listener
        snapshot["events_connected"] = 1 if listener is not None and listener.live else 0
        snapshot["events_received_total"] = listener.received if listener is not None else 0
        snapshot["events_connect_failures_total"] = listener.connect_failures if listener is not None else 0
        snapshot["cache_entries"] = self._directory.cached_entries()
        snapshot["cache_hits_total"] = self._directory.hits
        snapshot["cache_misses_total"] = self._directory.misses
        snapshot["pid"] = self._pid
        return snapshot

    def collector(self, **labels: str) -> RouterCollector:
        """A prometheus_client collector for this router (register it with a registry)."""
        return RouterCollector(self, labels=labels)

    def tenant_pool_stats(self, tenant_id: str) -> dict[str, int] | None:
        """Open, in-use and active counts of the tenant's pool in this process, or None if it has none."""
        self._check_process()
        return self._registry.tenant_snapshot(tenant_id)
