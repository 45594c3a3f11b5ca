"""TenantDatabase: one tenant's database reached as the tenant's own role (schema and seed)."""
from __future__ import annotations

import functools
import os
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping

import psycopg
from sqlalchemy import Connection, Engine, TextClause, create_engine, event
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import tenant_migrations
from tenant_migrations.seed import admin_user, seed

from control_plane.errors import DatabaseServerError, TenantMigrationError
from control_plane.phases import Phases


_UNBOUNDED = "-c statement_timeout=0 -c idle_in_transaction_session_timeout=0"


@functools.cache
def _pyformat(statement: TextClause) -> str:
    """A SQLAlchemy text() statement as psycopg's own SQL (`%(name)s` parameters)."""
    return str(statement.compile(dialect=PGDialect_psycopg()))


def _lock_timed_out(exc: BaseException) -> bool:
    """PostgreSQL's lock_not_available (55P03): a lock wait hit lock_timeout."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "sqlstate", None) == "55P03"


def _message(exc: BaseException) -> str:
    """PostgreSQL's own message (never the DSN) for driver errors, raw or wrapped by SQLAlchemy; the
    exception's text otherwise."""
    driver = exc.orig if isinstance(exc, DBAPIError) else exc
    diag = getattr(driver, "diag", None)
    return getattr(diag, "message_primary", None) or str(driver) or type(exc).__name__


# The tenant a connection being opened in this thread logs in to (see _engine_for).
_LOGIN: ContextVar[dict[str, str]] = ContextVar("tenant_database_login")
_ENGINES: dict[tuple, Engine] = {}
_MAX_ENGINES = 64


def _engine_for(host: str, port: int, tls: Mapping[str, str], options: str | None) -> Engine:
    """One engine per server and session options, per process, whatever the tenant.

    A new engine per tenant would pay SQLAlchemy's dialect set-up (four queries on its first connection)
    for every tenant of a migration run. Here each connection logs in to its own tenant's database as
    the tenant's role through the `do_connect` hook (SQLAlchemy's place for per-connection credentials),
    from _LOGIN. NullPool: no connection outlives its use, so nothing is kept across tenants or forks.
    """
    key = (os.getpid(), host, port, tuple(sorted(tls.items())), options)
    engine = _ENGINES.get(key)
    if engine is None:
        if len(_ENGINES) >= _MAX_ENGINES:
            _ENGINES.clear()  # they hold no connections: dropping them costs only their next set-up
        connect_args: dict = {**tls, "connect_timeout": 10, "application_name": "tenant-control-plane"}
        # The plan's timeouts are set on the tenant role for its applications; the control plane's own
        # sessions (a long migration, a seed) lift them, unless `options` bounds them itself.
        connect_args["options"] = f"{_UNBOUNDED} {options or ''}".strip()  # later -c settings win
        engine = create_engine(URL.create("postgresql+psycopg", host=host, port=port), poolclass=NullPool,
                               connect_args=connect_args, hide_parameters=True)
        event.listen(engine, "do_connect", _log_in_as_tenant)
        _ENGINES[key] = engine
    return engine


def _log_in_as_tenant(dialect: object, record: object, cargs: list, cparams: dict) -> None:
    cparams.update(_LOGIN.get())


@dataclass(frozen=True)
class TenantDatabase:
    host: str
    port: int
    database: str
    role: str
    password: str = field(repr=False)
    # The server's libpq TLS options (sslmode, sslrootcert, ...), as registered with its admin URL.
    tls: Mapping[str, str] = field(default_factory=dict)

    def url(self) -> URL:
        return URL.create("postgresql+psycopg", username=self.role, password=self.password,
                          host=self.host, port=self.port, database=self.database)

    @contextmanager
    def _connect(self, options: str | None = None, phases: Phases | None = None) -> Iterator[Connection]:
        phases = phases or Phases()
        started = time.perf_counter()
        engine = _engine_for(self.host, self.port, self.tls, options)
        token = _LOGIN.set({"dbname": self.database, "user": self.role, "password": self.password})
        try:
            with engine.connect() as conn:
                phases.add("tenant db: connect", time.perf_counter() - started)
                yield conn
                started = time.perf_counter()
        except DBAPIError as exc:
            raise DatabaseServerError(f"tenant database {self.database}: {_message(exc)}") from exc
        finally:
            _LOGIN.reset(token)
            phases.add("tenant db: close", time.perf_counter() - started)

    def migrate(self, target: str) -> str | None:
        """Bring the schema to `target` (one transaction per revision); returns the revision reached."""
        with self._connect() as conn:
            return tenant_migrations.migrate(conn, target)

    def migrate_bounded(self, target: str, *, lock_timeout_ms: int, statement_timeout_ms: int,
                        phases: Phases | None = None) -> tuple[str | None, str | None]:
        """Like `migrate`, with every lock wait and statement of the session bounded; (from, to) revisions.

        lock_timeout matters most: DDL queued behind a long transaction of the tenant's application would
        otherwise block every later query on that table. On failure raises TenantMigrationError with the
        revision the database was left at, when known (the failed revision's own transaction is rolled back).
        """
        options = f"-c lock_timeout={int(lock_timeout_ms)} -c statement_timeout={int(statement_timeout_ms)}"
        phases = phases or Phases()
        seen: list[str | None] = []  # the revision before, as Alembic read it
        mark = time.perf_counter()

        def started(before: str | None) -> None:
            nonlocal mark
            seen.append(before)
            now = time.perf_counter()
            phases.add("alembic: set-up, read revision", now - mark)
            mark = now

        with self._connect(options, phases) as conn:
            try:
                mark = time.perf_counter()
                reached = tenant_migrations.migrate(conn, target, on_start=started)
                phases.add("alembic: revisions", time.perf_counter() - mark)
                return seen[0], reached
            except Exception as exc:
                reached = self._revision_after_failure(conn)
                raise TenantMigrationError(f"tenant database {self.database}: {_message(exc)}",
                                           from_revision=seen[0] if seen else None, reached_revision=reached,
                                           lock_timeout=_lock_timed_out(exc)) from exc

    @staticmethod
    def _revision_after_failure(conn: Connection) -> str | None:
        """The revision reached, or None when this connection cannot tell (it may be what failed)."""
        try:
            if conn.in_transaction():
                conn.rollback()
            with conn.begin():
                return tenant_migrations.current_revision(conn)
        except Exception:
            return None

    def current_revision(self) -> str | None:
        with self._connect() as conn:
            return tenant_migrations.current_revision(conn)

    def seed(self, admin_email: str, admin_name: str, admin_password_hash: str) -> None:
        with self._connect() as conn, conn.begin():
            seed(conn, admin_email=admin_email, admin_name=admin_name, admin_password_hash=admin_password_hash)

    def seed_admin(self, admin_email: str, admin_name: str, admin_password_hash: str) -> str | None:
        """The admin user in a database already seeded with the defaults (a warm spare); returns the schema
        revision it is at. One plain connection and one transaction, sent as one pipeline: on the fast path
        of a provisioning, a new engine's first-connect queries would cost more than the work."""
        statement, params = admin_user(admin_email, admin_name, admin_password_hash)
        try:
            with psycopg.connect(host=self.host, port=self.port, dbname=self.database, user=self.role,
                                 password=self.password, connect_timeout=10, application_name="tenant-control-plane",
                                 options=_UNBOUNDED, **self.tls) as conn:
                with conn.pipeline():
                    revision = conn.execute("SELECT version_num FROM alembic_version")
                    conn.execute(_pyformat(statement), params)
                    conn.commit()
                row = revision.fetchone()
        except psycopg.Error as exc:
            raise DatabaseServerError(f"tenant database {self.database}: {_message(exc)}") from exc
        return row[0] if row else None

    def run_check(self, query: str, timeout_ms: int) -> Any:
        """The first column of the first row of `query` (None without a row), run as the tenant's role in a
        read-only transaction bounded by a statement timeout: a health check between migration waves."""
        options = f"-c statement_timeout={int(timeout_ms)} -c lock_timeout={int(timeout_ms)} " \
                  "-c default_transaction_read_only=on"
        with self._connect(options) as conn:
            raw = conn.connection.dbapi_connection
            try:
                with raw.cursor() as cursor:
                    cursor.execute("SET TRANSACTION READ ONLY")
                    # No parameters: psycopg sends the text as is (a '%' in it is not a placeholder). Prepared:
                    # the extended protocol takes one statement, so "select 0; commit; ..." is refused outright
                    # (the simple protocol would run them all, and a COMMIT would end the read-only transaction).
                    cursor.execute(query, prepare=True)
                    row = cursor.fetchone() if cursor.description else None
            except Exception as exc:
                raise DatabaseServerError(f"tenant database {self.database}: {_message(exc)}") from exc
            finally:
                raw.rollback()
        return row[0] if row else None
