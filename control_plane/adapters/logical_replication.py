"""PostgresLogicalReplication: one tenant database copied from a source server to a target server and
kept in step by PostgreSQL logical replication, then frozen, caught up and torn down (online moves).

Objects it creates, all named after the move (`cp_move_<id>`): on the source a login role with
REPLICATION and read access to the tenant's tables, a publication FOR ALL TABLES and the
subscription's replication slot(s); on the target a subscription in the tenant's new database.
`cleanup` removes every one of them whatever state a failed or killed attempt left them in.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from control_plane.adapters.postgres_admin import PostgresAdmin, scram_verifier
from control_plane.errors import DatabaseServerError

log = logging.getLogger(__name__)

# Connection options of the source admin URL that the subscription's connection keeps (TLS).
_TLS_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslcrl", "sslcompression", "sslsni")

# The tenant's tables with their TOAST and indexes (the catalogs, the same on both sides, left out).
_RELATION_BYTES = ("SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                   "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm') "
                   "AND n.nspname NOT IN ('pg_catalog', 'information_schema')")


class PostgresLogicalReplication:
    """Source and target are admin URLs; `source_host`/`source_port` are how the target reaches the source."""

    def __init__(self, source_admin_url: str, target_admin_url: str, source_host: str, source_port: int) -> None:
        self.source = PostgresAdmin(source_admin_url)
        self.target = PostgresAdmin(target_admin_url)
        self._source_url = source_admin_url
        self._source_host, self._source_port = source_host, source_port

    @contextmanager
    def _db(self, admin: PostgresAdmin, database: str) -> Iterator[psycopg.Connection]:
        with admin.connect(database) as conn:
            yield conn

    # -- can it be done -------------------------------------------------------------------------

    def obstacle(self, database: str) -> str | None:
        """Why an online move of `database` is impossible between these servers, or None."""
        for side, admin in (("source", self.source), ("target", self.target)):
            with admin.connect() as conn:
                if not conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]:
                    return (f"the {side} server's admin role is not a superuser (PostgreSQL needs one to create "
                            "publications for all tables and subscriptions)")
        with self.source.connect() as conn:
            wal_level = conn.execute("SHOW wal_level").fetchone()[0]
            if wal_level != "logical":
                return f"the source server has wal_level={wal_level}, logical replication needs wal_level=logical"
            free_slots = conn.execute(
                "SELECT current_setting('max_replication_slots')::int - count(*) FROM pg_replication_slots"
            ).fetchone()[0]
            if free_slots < 1:
                return "the source server has no free replication slot (max_replication_slots)"
        with self._db(self.source, database) as conn:
            missing = [row[0] for row in conn.execute(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg\\_%' AND c.relreplident IN ('d', 'n') "
                "AND (c.relreplident = 'n' OR NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid "
                "AND i.indisprimary)) ORDER BY 1")]
        if missing:
            return ("tables without a primary key or replica identity cannot be replicated: "
                    + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        return None

    # -- replication ----------------------------------------------------------------------------

    def prepare_source(self, database: str, name: str, password: str) -> None:
        """On the source: the login role the subscription connects as, and the cut-over's marker table
        (in schema `name`, created before the schema is copied so the target has it too)."""
        ident = sql.Identifier(name)
        with self.source.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
            conn.execute(sql.SQL("{} {} WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}")
                         .format(verb, ident, sql.Literal(scram_verifier(conn, name, password))))
        self.source.grant_connect(database, name)
        with self._db(self.source, database) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {}.marker (id int PRIMARY KEY)").format(ident))

    def subscribe(self, database: str, name: str, password: str) -> None:
        """Publish every table of `database` on the source; subscribe to it from the target's copy (same
        schema, empty), which first copies the data and then streams changes."""
        ident = sql.Identifier(name)
        with self._db(self.source, database) as conn:
            # The initial copy reads every table as this role.
            for (schema,) in conn.execute("SELECT nspname FROM pg_namespace WHERE nspname NOT LIKE 'pg\\_%' "
                                          "AND nspname <> 'information_schema'").fetchall():
                conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema), ident))
                conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(
                    sql.Identifier(schema), ident))
            if not conn.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("CREATE PUBLICATION {} FOR ALL TABLES").format(ident))
        options = {key: value for key, value in conninfo_to_dict(self._source_url).items() if key in _TLS_OPTIONS}
        conninfo = make_conninfo(host=self._source_host, port=str(self._source_port), dbname=database, user=name,
                                 password=password, application_name=name, connect_timeout="10", **options)
        with self._db(self.target, database) as conn:
            if not conn.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,)).fetchone():
                # The subscription's connection string must carry the replication role's password in clear
                # (PostgreSQL keeps it in pg_subscription): keep that statement out of the server's log when
                # the admin may say so (a superuser setting); the role is dropped when the move ends.
                quiet = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
                if quiet:
                    conn.execute("SET log_statement = 'none'")
                # Connects to the source and creates the slot there; the copy then runs in the background.
                conn.execute(sql.SQL("CREATE SUBSCRIPTION {} CONNECTION {} PUBLICATION {} "
                                     "WITH (copy_data = true, create_slot = true, enabled = true)")
                             .format(ident, sql.Literal(conninfo), ident))
                if quiet:
                    conn.execute("RESET log_statement")

    def copy_progress(self, database: str, name: str) -> tuple[int, int]:
        """(tables whose initial copy is done, tables); raises when the subscription reports errors."""
        with self._db(self.target, database) as conn:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE r.srsubstate = 'r'), count(r.*), "
                "coalesce(max(st.apply_error_count + st.sync_error_count), 0) "
                "FROM pg_subscription s LEFT JOIN pg_subscription_rel r ON r.srsubid = s.oid "
                "LEFT JOIN pg_stat_subscription_stats st ON st.subid = s.oid "
                "WHERE s.subname = %s GROUP BY s.oid", (name,)).fetchone()
        if row is None:
            raise DatabaseServerError(f"subscription {name} is missing on the target")
        if row[2]:
            raise DatabaseServerError(f"logical replication into {database} reported {row[2]} error(s); "
                                      "see the target server's log")
        return row[0], row[1]

    def copy_bytes(self, database: str) -> tuple[int, int]:
        """(bytes of table data and indexes on the target, the same on the source): how far the initial copy is."""
        sizes = []
        for admin in (self.target, self.source):
            with self._db(admin, database) as conn:
                sizes.append(int(conn.execute(_RELATION_BYTES).fetchone()[0]))
        return sizes[0], sizes[1]

    def lag_bytes(self, name: str) -> int | None:
        """WAL bytes the subscription has yet to confirm (None until its slot reports a position)."""
        with self.source.connect() as conn:
            row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                               "FROM pg_replication_slots WHERE slot_name = %s", (name,)).fetchone()
        return None if row is None or row[0] is None else max(int(row[0]), 0)

    @contextmanager
    def cut_over(self, database: str, name: str) -> Iterator["CutOver"]:
        """Connections to both copies of `database`, opened ahead so the write freeze pays for none."""
        with self._db(self.source, database) as source, self._db(self.target, database) as target:
            yield CutOver(source, target, database, name)

    # -- teardown -------------------------------------------------------------------------------

    def cleanup(self, source_database: str | None, target_database: str | None, name: str) -> None:
        """Drop subscription, slots, publication and role of move `name`; each only if it is there.

        The subscription is detached from its slot before it is dropped, so this never needs the
        source to be reachable from the target; the slots are then dropped on the source directly.
        """
        ident = sql.Identifier(name)
        if target_database and self.target.database_exists(target_database):
            with self._db(self.target, target_database) as conn:
                if conn.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,)).fetchone():
                    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                    conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
                    conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
        with self.source.connect() as conn:
            slots = conn.execute(
                "SELECT s.slot_name FROM pg_replication_slots s "
                "WHERE s.slot_name = %s OR (s.database = %s AND s.slot_name LIKE 'pg\\_%%\\_sync\\_%%')",
                (name, source_database or "")).fetchall()
            for (slot,) in slots:
                self._drop_slot(conn, slot)
        if source_database and self.source.database_exists(source_database):
            with self._db(self.source, source_database) as conn:
                conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(ident))
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))  # its grants, here and on the database
        with self.source.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (name,))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))

    @staticmethod
    def _drop_slot(conn: psycopg.Connection, slot: str) -> None:
        # A slot in use by a walsender (the subscription's apply or sync worker, ending) cannot be dropped.
        for _ in range(100):
            active = conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                  (slot,)).fetchone()
            if active is None:
                return
            if active[0] is not None:
                conn.execute("SELECT pg_terminate_backend(%s)", (active[0],))
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                return
            except psycopg.errors.ObjectInUse:
                time.sleep(0.05)
            except psycopg.errors.UndefinedObject:
                return
        raise DatabaseServerError(f"replication slot {slot} stayed in use")


class CutOver:
    """The steps of the write freeze, on connections (as admin) to the source and target copies."""

    def __init__(self, source: psycopg.Connection, target: psycopg.Connection, database: str, name: str) -> None:
        self._source, self._target = source, target
        self._database, self._name = database, name

    def _run(self, conn: psycopg.Connection, query, params: tuple | None = None) -> list:
        try:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []
        except psycopg.Error as exc:
            raise DatabaseServerError(f"database server refused: {exc.diag.message_primary or exc}") from exc

    def refuse_sessions(self, role: str, timeout: float = 10) -> None:
        """`role` may no longer log in on the source, and its sessions there are ended (waited for)."""
        self._run(self._source, sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(sql.Identifier(role)))
        deadline = time.monotonic() + timeout
        while self._run(self._source, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                      "WHERE usename = %s AND pid <> pg_backend_pid()", (role,))[0][0]:
            if time.monotonic() > deadline:
                raise DatabaseServerError(f"sessions of {role} did not end within {timeout:g} s")
            time.sleep(0.002)

    def catch_up(self, timeout: float) -> None:
        """Commit a marker row on the source and wait until the target has applied it: changes are applied
        in commit order, so every transaction the source committed before it is then on the target."""
        marker = sql.SQL("{}.marker").format(sql.Identifier(self._name))
        with self._source.transaction():
            self._run(self._source, "SET LOCAL synchronous_commit = on")
            self._run(self._source, sql.SQL("INSERT INTO {} VALUES (1) ON CONFLICT DO NOTHING").format(marker))
        deadline = time.monotonic() + timeout
        while not self._run(self._target, sql.SQL("SELECT 1 FROM {}").format(marker)):
            if time.monotonic() > deadline:
                raise DatabaseServerError(f"the target did not apply the source's last changes within {timeout:g} s")
            time.sleep(0.002)

    def stop_apply(self) -> None:
        self._run(self._target, sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(self._name)))

    def sync_sequences(self) -> int:
        """Every sequence of the target at the source's value (logical replication does not carry them)."""
        values = self._run(self._source, "SELECT format('%I.%I', schemaname, sequencename), last_value "
                                         "FROM pg_sequences WHERE last_value IS NOT NULL")
        for sequence, value in values:
            self._run(self._target, "SELECT setval(%s::regclass, %s, true)", (sequence, value))
        return len(values)
