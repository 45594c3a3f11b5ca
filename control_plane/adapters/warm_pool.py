"""WarmPool: spare tenant databases at the schema's head on one server, with their roles, ready to claim.

A spare is a clone of the server's template, already handed to its own role, closed to PUBLIC and seeded
with what every tenant starts with: `cp_warm_<tag>_<id>` owned by role `cp_warm_<id>`, the tag naming the
revision (and the spare's format). Claiming one is one transaction on one connection: rename the database
and the role to the tenant's names, give the role its password and its plan's limits. The database rename
is the claim, so concurrent provisionings never get the same spare (the loser finds the name gone and tries
the next one) and no catalog row is needed. Spares of another tag are dropped when the pool is refilled.
"""
from __future__ import annotations

import logging
import secrets
import zlib

import psycopg
from psycopg import sql

from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from control_plane.adapters.postgres_admin import PostgresAdmin, limit_statements, login_options, scram_verifier
from control_plane.adapters.tenant_template import TenantTemplate
from control_plane.catalog.db import sqlalchemy_url
from control_plane.catalog.plan_models import RoleLimits
from control_plane.naming import warm_pool_lock_key
from tenant_migrations.seed import seed_defaults

log = logging.getLogger(__name__)

PREFIX = "cp_warm_"


# Part of the tag: spares made to an earlier recipe (e.g. not yet seeded) are stale like another revision's.
SPARE_FORMAT = "seeded-1"


def _revision_tag(revision: str) -> str:
    return f"{zlib.crc32(f'{revision}/{SPARE_FORMAT}'.encode()):08x}"


class WarmPool:
    def __init__(self, admin: PostgresAdmin) -> None:
        self._admin = admin

    def spares(self, revision: str) -> list[str]:
        return [database for database, _ in self._spares(revision)]

    def _spares(self, revision: str, conn: psycopg.Connection | None = None) -> list[tuple[str, str]]:
        """(database, role) of each spare at `revision`."""
        pattern = f"{PREFIX}{_revision_tag(revision)}_".replace("_", "\\_") + "%"
        query = ("SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                 "WHERE d.datname LIKE %s ORDER BY d.datname")
        if conn is not None:
            return [tuple(row) for row in conn.execute(query, (pattern,))]
        with self._admin.connect() as own:
            return [tuple(row) for row in own.execute(query, (pattern,))]

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
                # Server-wide and idempotent, done here once so that a claim need not.
                self._admin.close_other_databases()
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
        self._seed(building, role)
        with self._admin.connect() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(building),
                                                                        sql.Identifier(database)))
        log.info("warm pool: spare %s ready", database)

    def _seed(self, database: str, role: str) -> None:
        """What every tenant starts with, written as the spare's role (the owner of its tables)."""
        engine = create_engine(sqlalchemy_url(self._admin.url).set(database=database), poolclass=NullPool,
                               connect_args={"options": f"-c role={role}"})
        try:
            with engine.begin() as conn:
                seed_defaults(conn)
        finally:
            engine.dispose()

    def claim(self, revision: str, database: str, role: str, password: str, limits: RoleLimits) -> bool:
        """Turn a spare into `database` owned by login role `role`, with its password and its plan's limits;
        False when the pool is empty, or a database or role of that name already exists on this server.

        All in one transaction, sent as one pipeline: a claim is complete or not made at all.
        """
        with self._admin.connect() as conn:
            verifier = scram_verifier(conn, role, password)
            for spare, spare_role in self._spares(revision, conn):
                statements = [
                    # No wait for this commit's WAL flush: the admin user's commit in the claimed database
                    # comes next and flushes the WAL up to itself, this claim included, before the tenant is
                    # active; a claim lost in a crash before then is made again by the provisioning's retry.
                    sql.SQL("SET LOCAL synchronous_commit = off"),
                    sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(spare), sql.Identifier(database)),
                    sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(spare_role), sql.Identifier(role)),
                    sql.SQL("ALTER ROLE {} ").format(sql.Identifier(role)) + login_options(verifier),
                    *limit_statements(role, limits),
                ]
                try:
                    with conn.pipeline(), conn.transaction():
                        for statement in statements:
                            conn.execute(statement)
                except (psycopg.errors.InvalidCatalogName, psycopg.errors.ObjectInUse):
                    continue  # claimed by someone else a moment ago
                except psycopg.errors.DuplicateDatabase:
                    return False  # an earlier attempt's database: the caller adopts it
                except psycopg.errors.DuplicateObject:
                    log.warning("warm pool: role %s already exists on the server; %s is provisioned cold", role, database)
                    return False
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
