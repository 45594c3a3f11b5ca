"""Per-tenant advisory locks in the catalog database: all work on one tenant runs one at a time."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError, OperationalError

from control_plane.errors import CatalogUnavailableError, LockLostError, TenantBusyError
from control_plane.naming import tenant_lock_key

log = logging.getLogger(__name__)


class TenantLease:
    """A held tenant lock; `check()` proves it is still held (call it between steps of long work).

    `share()` lends the lock's connection to the job's catalog session: one connection for the whole job
    (the lock is session-level, so the session's commits and rollbacks leave it held).
    """

    def __init__(self, conn: Connection, tenant_id: str, key: int) -> None:
        self._conn, self.tenant_id = conn, tenant_id
        self._shared = False
        # pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32 bits).
        self._high, self._low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF

    def share(self) -> Connection:
        """The lock's connection, for a Session that controls its transactions (join_transaction_mode
        "control_fully"); from now on `check()` reads inside that session's transaction, never ending it."""
        self._shared = True
        return self._conn

    def check(self) -> None:
        try:
            held = self._conn.execute(text(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid() AND classid::bigint = :high AND objid::bigint = :low AND objsubid = 1)"),
                {"high": self._high, "low": self._low}).scalar()
            if not self._shared:
                self._conn.rollback()  # never leave the lock's session idle in a transaction
        except (DBAPIError, CatalogUnavailableError) as exc:
            raise LockLostError(self.tenant_id) from exc
        if not held:
            raise LockLostError(self.tenant_id)


class PostgresTenantLocks:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def hold(self, tenant_id: str, wait_seconds: float = 30) -> Iterator[TenantLease]:
        """Hold the tenant's session-level advisory lock on a dedicated catalog connection.

        Session-level (not transaction-level) so the job can commit progress while holding it; if the
        worker dies, PostgreSQL releases it with the connection.
        """
        key = tenant_lock_key(tenant_id)
        with self._engine.connect() as conn:
            try:
                # The lock must not outlive a dead node by long: the server probes this connection after
                # 10 s idle, every 5 s, 3 times (harmless on the pooled connection after the lock is gone).
                # The lock is normally free: try it in the same round trip, and wait only if it is not.
                taken = conn.execute(text(
                    "SELECT set_config('tcp_keepalives_idle', '10', false), "
                    "set_config('tcp_keepalives_interval', '5', false), "
                    "set_config('tcp_keepalives_count', '3', false), pg_try_advisory_lock(:key)"),
                    {"key": key}).one()[3]
                if not taken:
                    # Transaction-local: a session-level lock_timeout would stay on the pooled connection and
                    # later make unrelated row locks (SELECT ... FOR UPDATE) time out. At least 1 ms: 0 means
                    # wait forever.
                    conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"),
                                 {"ms": f"{max(1, int(wait_seconds * 1000))}"})
                    conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                conn.commit()
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
                    raise TenantBusyError(tenant_id) from exc
                raise
            try:
                yield TenantLease(conn, tenant_id, key)
            finally:
                try:
                    conn.rollback()
                    conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    conn.commit()
                except (DBAPIError, CatalogUnavailableError):
                    # The lock's session is gone, and the lock went with it: nothing left to release.
                    log.warning("tenant %s: its lock connection was gone when the work ended", tenant_id)
                    conn.invalidate()
