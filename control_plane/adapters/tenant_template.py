"""TenantTemplate: a template database at the tenant schema's head on one server, cloned to provision.

Cloning a template (`CREATE DATABASE ... TEMPLATE`) costs about as much as any CREATE DATABASE, and
replaces running every migration for every new tenant. One template per revision: when head moves,
the next provisioning builds the new template and drops the older ones.
"""
from __future__ import annotations

import logging

from psycopg import sql
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

import tenant_migrations
from control_plane.adapters.postgres_admin import PostgresAdmin
from control_plane.catalog.db import sqlalchemy_url
from control_plane.naming import TEMPLATE_OWNER_ROLE, TEMPLATE_PREFIX, template_database_name, template_lock_key

log = logging.getLogger(__name__)


class TenantTemplate:
    """The template database is owned by the admin; the objects in it by a NOLOGIN role.

    That split matters: REASSIGN OWNED also moves *databases* owned by the source role, so the
    template database itself must not belong to the role whose objects are handed to each tenant.
    """

    def __init__(self, admin: PostgresAdmin) -> None:
        self._admin = admin

    def ensure(self, revision: str) -> str:
        """The template's name for `revision`, built first if it doesn't exist (once per server)."""
        name = template_database_name(revision)
        if self._is_ready(name):
            return name
        with self._admin.connect() as lock_conn:
            # Serialises builders across workers; decide under the lock, the build happens inside it too
            # because a half-built template must never be cloned.
            lock_conn.execute("SELECT pg_advisory_lock(%s)", (template_lock_key(),))
            try:
                if not self._is_ready(name):
                    self._build(name, revision)
            finally:
                lock_conn.execute("SELECT pg_advisory_unlock(%s)", (template_lock_key(),))
        return name

    def _is_ready(self, name: str) -> bool:
        return bool(self._admin.fetch_one(
            "SELECT 1 FROM pg_database WHERE datname = %s AND datistemplate AND NOT datallowconn", (name,)))

    def _build(self, name: str, revision: str) -> None:
        log.info("building tenant template %s", name)
        owner = sql.Identifier(TEMPLATE_OWNER_ROLE)
        db = sql.Identifier(name)
        with self._admin.connect() as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (TEMPLATE_OWNER_ROLE,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(owner))
            if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(owner))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db))  # a half-built one
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(db))  # not the server's template1
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        with self._admin.connect(name) as conn:
            conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(owner))
        engine = create_engine(sqlalchemy_url(self._admin.url).set(database=name), poolclass=NullPool,
                               connect_args={"options": f"-c role={TEMPLATE_OWNER_ROLE}"})
        try:
            with engine.connect() as conn:
                tenant_migrations.migrate(conn, revision)
        finally:
            engine.dispose()
        with self._admin.connect() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE true ALLOW_CONNECTIONS false").format(db))
            stale = [row[0] for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s AND datname <> %s",
                (TEMPLATE_PREFIX.replace("_", r"\_") + "%", name))]
            for old in stale:
                old_db = sql.Identifier(old)
                conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(old_db))
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(old_db))

    def hand_over(self, database: str, role: str) -> None:
        """Give the cloned objects to the tenant role (idempotent: nothing left to move is a no-op)."""
        with self._admin.connect(database) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(
                sql.Identifier(TEMPLATE_OWNER_ROLE), sql.Identifier(role)))
            conn.execute(sql.SQL("REVOKE ALL ON SCHEMA public FROM {}").format(sql.Identifier(TEMPLATE_OWNER_ROLE)))
