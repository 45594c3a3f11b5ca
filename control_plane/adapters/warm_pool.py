"""WarmPool: spare tenant databases at the schema's head on one server, with their roles, ready to claim.

A spare is a clone of the server's template, already handed to its own role and closed to PUBLIC:
`cp_warm_<revision hash>_<id>` owned by role `cp_warm_<id>`. Claiming one renames both to a tenant's
names and gives the role its password; the database rename is the claim, so concurrent provisionings
never get the same spare (the loser finds the name gone and tries the next one) and no catalog row is
needed. Spares of another revision are dropped when the pool is refilled.
"""
from __future__ import annotations

import logging
import secrets
import zlib

import psycopg
from psycopg import sql

from control_plane.adapters.postgres_admin import PostgresAdmin
from control_plane.adapters.tenant_template import TenantTemplate
from control_plane.naming import warm_pool_lock_key

log = logging.getLogger(__name__)

PREFIX = "cp_warm_"


def _revision_tag(revision: str) -> str:
    return f"{zlib.crc32(revision.encode()):08x}"


class WarmPool:
    def __init__(self, admin: PostgresAdmin) -> None:
        self._admin = admin

    def spares(self, revision: str) -> list[str]:
        pattern = f"{PREFIX}{_revision_tag(revision)}_".replace("_", "\\_") + "%"
        with self._admin.connect() as conn:
            return [row[0] for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname", (pattern,))]

    def refill(self, revision: str, size: int) -> int:
        """Drop spares of other revisions, then create spares at `revision` until there are `size`.

        One refiller per server at a time (an advisory lock; a second one returns at once): a refiller
        drops half-made spares, which must never be another refiller's work in progress.
        """
        with self._admin.connect() as lock_conn:
            if not lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (warm_pool_lock_key(),)).fetchone()[0]:
                return 0
            try:
                self._drop_stale(revision)
                created = 0
                while len(self.spares(revision)) < size:
                    self._create(revision)
                    created += 1
                return created
            finally:
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", (warm_pool_lock_key(),))

    def _create(self, revision: str) -> None:
        spare_id = secrets.token_hex(6)
        database, role = f"{PREFIX}{_revision_tag(revision)}_{spare_id}", f"{PREFIX}{spare_id}"
        template = TenantTemplate(self._admin)
        with self._admin.connect() as conn:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))
        # Made under a temporary name and renamed when complete: a half-made spare is never claimed.
        building = f"cp_warming_{spare_id}"
        self._admin.ensure_database(building, owner=role, template=template.ensure(revision))
        template.hand_over(building, role)
        self._admin.restrict_connect(building, role)
        with self._admin.connect() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building),
                                                                        sql.Identifier(database)))
        log.info("warm pool: spare %s ready", database)

    def claim(self, revision: str, database: str, role: str, password: str) -> bool:
        """Turn a spare into `database` owned by login role `role`; False when the pool is empty."""
        for spare in self.spares(revision):
            with self._admin.connect() as conn:
                try:
                    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(spare),
                                                                                sql.Identifier(database)))
                except (psycopg.errors.InvalidCatalogName, psycopg.errors.ObjectInUse):
                    continue  # claimed by someone else a moment ago
            self.adopt(database, role, password)
            log.info("warm pool: %s claimed as %s", spare, database)
            return True
        return False

    def adopt(self, database: str, role: str, password: str) -> None:
        """The claimed database's spare role becomes `role` (idempotent: a retried claim converges)."""
        with self._admin.connect() as conn:
            owner = conn.execute("SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                                 "WHERE d.datname = %s", (database,)).fetchone()
            if owner and owner[0].startswith(PREFIX) and owner[0] != role:
                conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(owner[0]),
                                                                        sql.Identifier(role)))
        self._admin.ensure_role(role, password)

    def _drop_stale(self, revision: str) -> None:
        keep = f"{PREFIX}{_revision_tag(revision)}_"
        with self._admin.connect() as conn:
            stale = conn.execute(
                "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                "WHERE (d.datname LIKE 'cp\\_warm\\_%%' AND d.datname NOT LIKE %s) OR d.datname LIKE 'cp\\_warming\\_%%'",
                (keep.replace("_", "\\_") + "%",)).fetchall()
            for database, role in stale:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
                if role.startswith(PREFIX):
                    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
