"""Per-tenant advisory locks in the catalog database: all work on one tenant runs one at a time."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from control_plane.errors import TenantBusyError
from control_plane.naming import tenant_lock_key


class PostgresTenantLocks:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def hold(self, tenant_id: str, wait_seconds: float = 30) -> Iterator[None]:
        """Hold the tenant's session-level advisory lock on a dedicated catalog connection.

        Session-level (not transaction-level) so the job can commit progress while holding it; if the
        worker dies, PostgreSQL releases it with the connection.
        """
        key = tenant_lock_key(tenant_id)
        with self._engine.connect() as conn:
            try:
                # Transaction-local: a session-level lock_timeout would stay on the pooled connection and
                # later make unrelated row locks (SELECT ... FOR UPDATE) time out. At least 1 ms: 0 means wait forever.
                conn.execute(text("SELECT set_config('lock_timeout', :ms, true)"),
                             {"ms": f"{max(1, int(wait_seconds * 1000))}"})
                conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
                conn.commit()
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) == "55P03":  # lock_not_available
                    raise TenantBusyError(tenant_id) from exc
                raise
            try:
                yield
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
