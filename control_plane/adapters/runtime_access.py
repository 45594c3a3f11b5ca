"""RuntimeAccess: the least a tenant application's runtime needs, granted on the catalog (column-level SELECT)
and on Redis (a user that may only SUBSCRIBE to the change-events channel)."""
from __future__ import annotations

import psycopg
import redis
from psycopg import sql

from control_plane.errors import DatabaseServerError, DependencyUnavailableError
from tenant_runtime.catalog import READ_MODEL
from tenant_runtime.naming import TENANT_EVENTS_CHANNEL


def runtime_columns() -> dict[str, tuple[str, ...]]:
    """Table → the columns the runtime reads (its read model): exactly what its catalog role may SELECT."""
    return {clause.name: tuple(column.name for column in clause.c) for clause in READ_MODEL}


class RuntimeAccess:
    def __init__(self, catalog_url: str, redis_client: redis.Redis) -> None:
        self._catalog_url = catalog_url
        self._redis = redis_client

    def grant_catalog(self, role: str) -> list[str]:
        """Make `role` (an existing login role) the runtime's: CONNECT, USAGE, SELECT on the read model's
        columns and nothing else (earlier grants on the schema's tables are revoked first). The statements run."""
        ident = sql.Identifier(role)
        try:
            with psycopg.connect(self._catalog_url, autocommit=True, connect_timeout=10) as conn:
                if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                    raise DatabaseServerError(f"role {role!r} does not exist: create it first "
                                              "(CREATE ROLE ... LOGIN PASSWORD ...)")
                database = conn.execute("SELECT current_database()").fetchone()[0]
                statements = [
                    sql.SQL("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {}").format(ident),
                    sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database), ident),
                    sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident),
                ]
                for table, columns in runtime_columns().items():
                    statements.append(sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
                        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table), ident))
                with conn.transaction():
                    for statement in statements:
                        conn.execute(statement)
                return [statement.as_string(conn) for statement in statements]
        except psycopg.Error as exc:
            raise DatabaseServerError(f"catalog refused: {exc.diag.message_primary or exc}") from exc

    def create_events_user(self, name: str, password: str) -> None:
        """A Redis ACL user that may SUBSCRIBE to the events channel and nothing else (no key, no queue)."""
        try:
            self._redis.acl_setuser(name, enabled=True, reset=True, passwords=[f"+{password}"],
                                    channels=[TENANT_EVENTS_CHANNEL], categories=["-@all"],
                                    commands=["+subscribe", "+unsubscribe", "+ping"])
        except redis.RedisError as exc:
            raise DependencyUnavailableError(f"Redis refused to create the user: {exc}") from exc
