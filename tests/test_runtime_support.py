"""Fixtures and helpers shared by the tenant_runtime tests (no tests here).

Tenant ids are prefixed `rt-` so these tests never collide with others on a shared server.
"""
from __future__ import annotations

import secrets
import select
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import delete

from control_plane import naming
from control_plane.catalog.models import Tenant, TenantStatus
from control_plane.services.context import role_secret_context
from control_plane.services.servers import DEFAULT_SERVER, ensure_default_server
from helpers import create_tenant, tenant
from tenant_runtime import TenantRouter


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.01) -> float | None:
    """Poll `condition` until it is truthy; the seconds it took, or None at the deadline."""
    started = time.monotonic()
    while True:
        if condition():
            return time.monotonic() - started
        if time.monotonic() - started >= timeout:
            return None
        time.sleep(interval)


@pytest.fixture
def router_factory(settings) -> Iterator[Callable[..., TenantRouter]]:
    """Build routers on the test catalog and Redis, each with its own application_name; all closed after."""
    routers: list[TenantRouter] = []

    def make(**options) -> TenantRouter:
        options.setdefault("catalog_database_url", settings.catalog_database_url)
        options.setdefault("keyring", settings.keyring)
        options.setdefault("redis_url", settings.redis_url)
        options.setdefault("application_name", f"rt-test-{uuid.uuid4().hex[:6]}")
        router = TenantRouter(**options)
        routers.append(router)
        return router

    yield make
    for router in routers:
        router.close()


def provision(client, auth, run_jobs, *tenant_ids: str, **extra) -> None:
    """Tenants created through the API and provisioned by the real worker, all active."""
    for tenant_id in tenant_ids:
        create_tenant(client, auth, tenant_id, **extra.get(tenant_id, {}))
    run_jobs()
    for tenant_id in tenant_ids:
        assert tenant(client, auth, tenant_id)["status"] == "active"


def server_connections(admin_url: str, pattern: str) -> int:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                            (pattern,)).fetchone()[0]


def tenant_connections(admin_url: str, router: TenantRouter, tenant_id: str) -> int:
    return server_connections(admin_url, router.application_name(tenant_id).replace("_", "\\_"))


@pytest.fixture(scope="session")
def background_drops() -> Iterator[list[threading.Thread]]:
    """Threads dropping bulk tenants' databases while later tests run; joined at the end of the session."""
    threads: list[threading.Thread] = []
    yield threads
    for thread in threads:
        thread.join()


@pytest.fixture
def bulk_tenants(ctx, settings, background_drops) -> Iterator[Callable[[list[str]], None]]:
    """Create many active tenants straight in the catalog and on the server (empty databases, own roles).

    The API path costs a worker job per tenant; the budget test needs hundreds, and needs only what
    the runtime reads: an active catalog row, a login role, a database only that role may connect to.
    """
    admin_url = settings.tenant_db_admin_url
    created: list[str] = []

    def run(statements: list[tuple[sql.Composable, tuple]]) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for statement, params in statements:
                conn.execute(statement, params)

    def in_parallel(batches: list[list[tuple[sql.Composable, tuple]]]) -> None:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(run, batches))

    def create(tenant_ids: list[str]) -> None:
        ensure_default_server(ctx)
        batches: list[list] = [[] for _ in range(4)]
        rows = []
        for index, tenant_id in enumerate(tenant_ids):
            password = secrets.token_urlsafe(18)
            role, database = naming.role_name(tenant_id), naming.database_name(tenant_id)
            rows.append(Tenant(id=tenant_id, name=f"Clinic {tenant_id}", plan="standard", status=TenantStatus.ACTIVE,
                               server_name=DEFAULT_SERVER, database_name=database, role_name=role,
                               role_password_encrypted=ctx.keyring.encrypt(password, role_secret_context(tenant_id))))
            r, d = sql.Identifier(role), sql.Identifier(database)
            batches[index % 4] += [
                (sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(r, sql.Literal(password)), ()),
                # FILE_COPY: both this and the DROP that follows are several times faster than WAL_LOG.
                (sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE template0 STRATEGY FILE_COPY").format(d, r), ()),
                (sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(d), ()),
                (sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(d, r), ()),
            ]
            created.append(tenant_id)
        in_parallel(batches)
        with ctx.sessions() as session, session.begin():
            session.add_all(rows)

    yield create
    # Each DROP DATABASE waits for a checkpoint: rather than conftest's one-by-one cleanup, take the
    # rows out of the catalog now and drop the databases 4 at a time while the next tests run.
    with ctx.sessions() as session, session.begin():
        session.execute(delete(Tenant).where(Tenant.id.in_(created)))
    batches = [[] for _ in range(4)]
    for index, tenant_id in enumerate(created):
        batches[index % 4] += [
            (sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(naming.database_name(tenant_id))), ()),
            (sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(naming.role_name(tenant_id))), ()),
        ]
    dropper = threading.Thread(target=in_parallel, args=(batches,), name="rt-test-drops")
    dropper.start()
    background_drops.append(dropper)


class TcpProxy:
    """A TCP proxy to Redis that a test can cut (every connection dropped, new ones refused) and restore."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._accept_thread = threading.Thread(target=self._accept, daemon=True)
        self._accept_thread.start()

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def down(self) -> None:
        self._up.clear()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def up(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._stop.set()
        self.down()
        self._accept_thread.join()
        for thread in self._threads:
            thread.join(2)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            if not self._up.is_set():
                client.close()  # "connection refused", as far as the client can tell
                continue
            try:
                upstream = socket.create_connection(self._target, timeout=2)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, upstream}
            thread = threading.Thread(target=self._pump, args=(client, upstream), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        try:
            while not self._stop.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (b if sock is a else a).sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {a, b}
            a.close()
            b.close()


@pytest.fixture
def redis_proxy(settings) -> Iterator[TcpProxy]:
    from redis.connection import parse_url

    target = parse_url(settings.redis_url)
    proxy = TcpProxy(target.get("host", "127.0.0.1"), int(target.get("port", 6379)))
    yield proxy
    proxy.close()


def proxied_redis_url(settings, proxy: TcpProxy) -> str:
    """The test Redis URL (credentials and db kept) pointed at the proxy."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(settings.redis_url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))
