"""SQLAlchemy sessions on the runtime's connections: one Session per unit of work, on its tenant's routed
connection, under the router's budget. SQLAlchemy keeps no pool of its own.

    with router.session("acme-clinic") as session:      # commits on success, rolls back on error
        session.add(Lead(full_name="Ana Souza"))

One Engine per router, with NullPool: it holds no connection. A unit of work leases a connection from the
router and hands it to that engine (SQLAlchemy sees the psycopg connection itself); its dialect never
closes it: the lease gives it back to its pool. So ORM models are declared once (tenant_migrations.models)
and used for every tenant, and statements are compiled and cached once for all tenants.
"""
from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Callable, Iterator

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from tenant_runtime.router import TenantRouter

# The connection being handed to the engine (set around engine.connect() only), and whether the rollbacks
# SQLAlchemy issues right now must leave the transaction alone (set around that connect when the connection
# carries work, and around Connection.close()): context variables, so each thread has its own.
_HANDED: ContextVar[psycopg.Connection | None] = ContextVar("tenant_runtime_handed", default=None)
_KEEP_TRANSACTION: ContextVar[bool] = ContextVar("tenant_runtime_keep_transaction", default=False)
_SET_UP = "_tenant_runtime_sqlalchemy_set_up"


class RoutedPsycopgDialect(PGDialect_psycopg):
    """PostgreSQL through psycopg, on connections the router lends: the lease, not SQLAlchemy, ends them."""

    supports_statement_cache = True

    def do_close(self, dbapi_connection: Any) -> None:
        """NullPool "closes" each connection after its unit of work: it stays open, its lease gives it back."""

    def do_rollback(self, dbapi_connection: Any) -> None:
        # Skipped in two places: the engine's first connection initialises the dialect (a few SELECTs) and
        # rolls back, which must not undo work done on the connection before; and closing a Connection
        # rolls back what SQLAlchemy thinks is its transaction, which the lease ends instead.
        if not _KEEP_TRANSACTION.get():
            super().do_rollback(dbapi_connection)

    def on_connect(self) -> Callable[[Any], None] | None:
        # With NullPool every hand-over is a new connection to SQLAlchemy, but the server session is
        # pooled: set it up (the dialect's notice logger) once, or the handlers would pile up.
        set_up = super().on_connect()
        if set_up is None:
            return None

        def once(dbapi_connection: Any) -> None:
            if not getattr(dbapi_connection, _SET_UP, False):
                set_up(dbapi_connection)
                setattr(dbapi_connection, _SET_UP, True)

        return once


registry.register("postgresql.tenant_runtime", __name__, "RoutedPsycopgDialect")


def _take_handed() -> psycopg.Connection:
    conn = _HANDED.get()
    if conn is None:
        raise RuntimeError("tenant_runtime's engine only connects through router.session() or TenantSessions.bind()")
    return conn


class TenantSessions:
    """Sessions on connections lent by one router (`router.sessions`), or by anything else without one.

    The lease owns the transaction: a Session flushes into it (session.commit() flushes, and does not
    commit), session.rollback() rolls it back, and the lease commits or rolls back at its end. So
    psycopg work and ORM work on one connection share one transaction. `session_options` go to
    sessionmaker; expire_on_commit is off by default, so objects stay readable after their unit of work.
    """

    def __init__(self, router: TenantRouter | None = None, **session_options: Any) -> None:
        self._router = router
        # No URL: every connection comes from the router (which knows host, database, role and password).
        self.engine: Engine = create_engine("postgresql+tenant_runtime://", poolclass=NullPool,
                                            creator=_take_handed, pool_reset_on_return=None)
        self.factory: sessionmaker[Session] = sessionmaker(
            **{"expire_on_commit": False, **session_options, "join_transaction_mode": "rollback_only"})

    def open(self, conn: psycopg.Connection) -> Session:
        """A Session on `conn` (a connection the router lent); end it with close() before the lease ends."""
        handed = _HANDED.set(conn)
        keep = _KEEP_TRANSACTION.set(conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE)
        try:
            connection = self.engine.connect()
        finally:
            _KEEP_TRANSACTION.reset(keep)
            _HANDED.reset(handed)
        # A transaction begun on the Connection, which the Session joins as "rollback_only": its commit()
        # flushes without committing, and its close() leaves the transaction to the lease.
        connection.begin()
        return self.factory(bind=connection)

    @staticmethod
    def close(session: Session, *, flush: bool = False) -> None:
        """Flush the session (through commit(), which runs its hooks) if asked, then close it and its Connection.

        The transaction stays open on the connection: the lease commits or rolls it back.
        """
        connection = session.bind
        try:
            if flush:
                session.commit()
        finally:
            try:
                session.close()
            finally:
                # Closing the Connection ends SQLAlchemy's record of the transaction, not the transaction.
                keep = _KEEP_TRANSACTION.set(True)
                try:
                    connection.close()
                finally:
                    _KEEP_TRANSACTION.reset(keep)

    @contextmanager
    def bind(self, conn: psycopg.Connection) -> Iterator[Session]:
        """A Session on `conn` for the block: flushed at its end unless it raises; the lease commits."""
        session = self.open(conn)
        try:
            yield session
        except BaseException:
            self.close(session)
            raise
        self.close(session, flush=True)

    @contextmanager
    def session(self, tenant_id: str, *, timeout: float | None = None) -> Iterator[Session]:
        """A Session on a connection to the tenant's database: committed on success, rolled back on error."""
        if self._router is None:
            raise RuntimeError("these sessions have no router: hand them connections with bind() or open()")
        with self._router.connection(tenant_id, timeout=timeout) as conn, self.bind(conn) as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
