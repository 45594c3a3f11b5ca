"""TenantDatabase: one tenant's database reached as the tenant's own role (schema and seed)."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from sqlalchemy import Connection, create_engine
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

import tenant_migrations
from tenant_migrations.seed import seed

from control_plane.errors import DatabaseServerError


@dataclass(frozen=True)
class TenantDatabase:
    host: str
    port: int
    database: str
    role: str
    password: str = field(repr=False)

    def url(self) -> URL:
        return URL.create("postgresql+psycopg", username=self.role, password=self.password,
                          host=self.host, port=self.port, database=self.database)

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        # NullPool: jobs are short-lived forked processes, a pool would only outlive its use.
        engine = create_engine(self.url(), poolclass=NullPool,
                               connect_args={"connect_timeout": 10, "application_name": "tenant-control-plane"})
        try:
            with engine.connect() as conn:
                yield conn
        except DBAPIError as exc:
            diag = getattr(exc.orig, "diag", None)
            message = getattr(diag, "message_primary", None) or str(exc.orig)
            raise DatabaseServerError(f"tenant database {self.database}: {message}") from exc
        finally:
            engine.dispose()

    def migrate(self, target: str) -> str | None:
        """Bring the schema to `target` (one transaction per revision); returns the revision reached."""
        with self._connect() as conn:
            return tenant_migrations.migrate(conn, target)

    def current_revision(self) -> str | None:
        with self._connect() as conn:
            return tenant_migrations.current_revision(conn)

    def seed(self, admin_email: str, admin_name: str, admin_password_hash: str) -> None:
        with self._connect() as conn, conn.begin():
            seed(conn, admin_email=admin_email, admin_name=admin_name, admin_password_hash=admin_password_hash)
