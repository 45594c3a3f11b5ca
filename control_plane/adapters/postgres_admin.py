"""PostgresAdmin: role and database administration on one tenant database server (psycopg, autocommit)."""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator

import psycopg
from psycopg import sql

from control_plane.catalog.plan_models import RoleLimits
from control_plane.errors import DatabaseServerError
from control_plane.naming import server_acl_lock_key

log = logging.getLogger(__name__)

# Databases every PostgreSQL server has, on which provisioning closes PUBLIC's CONNECT.
DEFAULT_SHARED_DATABASES = ("postgres", "template1")


def scram_verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    """The SCRAM-SHA-256 verifier of `password`, computed here (libpq), so the password never reaches the server.

    `CREATE/ALTER ROLE ... PASSWORD '<verifier>'` is what the server logs (log_statement, a failing
    statement): the verifier proves a password but cannot be used to log in with.
    """
    return conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256").decode()


def login_options(verifier: str) -> sql.Composed:
    """What a tenant role is: it logs in with this password (a SCRAM verifier) and has no other attribute."""
    return sql.SQL("WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD {}").format(
        sql.Literal(verifier))


def limit_statements(role: str, limits: RoleLimits) -> list[sql.Composed]:
    """The plan's limits on `role`: its CONNECTION LIMIT and per-session timeouts (RESET when unset)."""
    ident = sql.Identifier(role)
    limit = -1 if limits.connection_limit is None else int(limits.connection_limit)
    statements = [sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(ident, sql.Literal(limit))]
    for name, value in limits.settings().items():
        if value is None:
            statements.append(sql.SQL("ALTER ROLE {} RESET {}").format(ident, sql.Identifier(name)))
        else:
            statements.append(sql.SQL("ALTER ROLE {} SET {} = {}").format(
                ident, sql.Identifier(name), sql.Literal(str(int(value)))))
    return statements


def _server_error(exc: psycopg.Error) -> DatabaseServerError:
    # The message is PostgreSQL's; it never contains the DSN or its password.
    return DatabaseServerError(f"database server refused: {exc.diag.message_primary or exc}")


class _IdleConnections:
    """Admin connections kept open between `with admin:` blocks, per process and admin URL (opt-in: the
    API's in-request provisioning, where a new authenticated session would cost a fifth of the request).

    At most one per URL (a second block at the same time opens and closes its own), none reused after
    MAX_IDLE_SECONDS (the server or a firewall may have dropped it meanwhile). A forked child never uses,
    nor closes, its parent's connections (closing one would end the parent's session on the shared socket).
    """

    MAX_IDLE_SECONDS = 30.0
    PER_URL = 1

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._by_url: dict[str, list[tuple[psycopg.Connection, float]]] = {}
        self._parents: list[object] = []  # a forked child keeps these referenced, never closed

    def take(self, url: str) -> psycopg.Connection | None:
        with self._lock:
            if self._pid != os.getpid():
                self._parents.append(self._by_url)
                self._pid, self._by_url = os.getpid(), {}
            stack = self._by_url.get(url, [])
            while stack:
                conn, since = stack.pop()
                if not conn.closed and time.monotonic() - since < self.MAX_IDLE_SECONDS:
                    return conn
                conn.close()
        return None

    def give(self, url: str, conn: psycopg.Connection) -> None:
        if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
            with self._lock:
                stack = self._by_url.setdefault(url, [])
                if self._pid == os.getpid() and len(stack) < self.PER_URL:
                    stack.append((conn, time.monotonic()))
                    return
        conn.close()


_IDLE = _IdleConnections()


class PostgresAdmin:
    """Every identifier goes through `sql.Identifier`; every value through a bound parameter.

    Used as a context manager (`with admin:`), it keeps one connection to the maintenance database for
    all the calls inside the block: a provisioning makes a dozen administrative calls, and a new
    authenticated session for each would cost more than the work itself. Outside a block, each call
    opens and closes its own connection.
    """

    def __init__(self, admin_url: str, connect_timeout: int = 10,
                 shared_databases: tuple[str, ...] = DEFAULT_SHARED_DATABASES, *,
                 reuse_connection: bool = False) -> None:
        self._url = admin_url
        self._shared_databases = shared_databases
        self._connect_timeout = connect_timeout
        self._reuse = reuse_connection  # the block's connection comes from, and goes back to, _IDLE
        self._held: psycopg.Connection | None = None

    @property
    def url(self) -> str:
        """The admin DSN (a secret: never log it)."""
        return self._url

    def __enter__(self) -> "PostgresAdmin":
        self._held = (_IDLE.take(self._url) if self._reuse else None) or self._open(None)
        return self

    def __exit__(self, exc_type: object, *exc_info: object) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if self._reuse and exc_type is None:
            _IDLE.give(self._url, held)
        else:
            held.close()

    def _open(self, dbname: str | None) -> psycopg.Connection:
        # CREATE/DROP DATABASE refuse a transaction block: autocommit throughout.
        kwargs: dict[str, Any] = {"autocommit": True, "connect_timeout": self._connect_timeout,
                                  "application_name": "tenant-control-plane"}
        if dbname:
            kwargs["dbname"] = dbname
        try:
            return psycopg.connect(self._url, **kwargs)
        except psycopg.Error as exc:
            raise _server_error(exc) from exc

    @contextmanager
    def connect(self, dbname: str | None = None) -> Iterator[psycopg.Connection]:
        held = self._held if dbname is None and self._held is not None and not self._held.closed else None
        conn = held or self._open(dbname)
        try:
            yield conn
        except psycopg.Error as exc:
            raise _server_error(exc) from exc
        finally:
            if conn is not held:
                conn.close()

    def fetch_one(self, query: sql.Composable | str, params: tuple = ()) -> Any:
        with self.connect() as conn:
            row = conn.execute(query, params).fetchone()
            return row[0] if row else None

    def server_version(self) -> int:
        return int(self.fetch_one("SHOW server_version_num"))

    def ping(self) -> None:
        self.fetch_one("SELECT 1")

    def cluster_identity(self) -> str:
        """What tells one running PostgreSQL cluster from another, whatever host name reaches it: its
        postmaster's start time (microseconds) and port; readable without superuser, unlike system_identifier."""
        return str(self.fetch_one("SELECT pg_postmaster_start_time()::text || ' port ' || current_setting('port')"))

    def database_exists(self, database: str) -> bool:
        return bool(self.fetch_one("SELECT 1 FROM pg_database WHERE datname = %s", (database,)))

    def ensure_role(self, role: str, password: str) -> None:
        """Create the login role, or reset its password if it exists (a resumed provisioning converges)."""
        ident = sql.Identifier(role)
        with self.connect() as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            verb = sql.SQL("ALTER ROLE") if exists else sql.SQL("CREATE ROLE")
            conn.execute(sql.SQL("{} {} ").format(verb, ident) + login_options(scram_verifier(conn, role, password)))
            # A non-superuser admin must be a member of the role to create a database owned by it
            # and to drop it later; a superuser needs nothing.
            is_super = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
            if not is_super:
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))

    def apply_limits(self, role: str, limits: RoleLimits) -> None:
        """The plan's limits on the tenant's role: CONNECTION LIMIT and per-session timeouts (RESET when unset).

        Role settings apply to new sessions; CONNECTION LIMIT counts every session of the role on this
        server, so N application replicas together cannot take more than the plan allows.
        """
        with self.connect() as conn:
            for statement in limit_statements(role, limits):
                conn.execute(statement)

    def ensure_database(self, database: str, owner: str, template: str | None = None) -> bool:
        """Create the database owned by `owner` unless it exists; True when it was created now.

        From `template` (our template database) or else `template0`: `template1` is the server's, and
        whatever someone added to it (objects, extensions, grants) must not land in a tenant's database.
        """
        with self.connect() as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                return False
            query = sql.SQL("CREATE DATABASE {} OWNER {} TEMPLATE {}").format(
                sql.Identifier(database), sql.Identifier(owner), sql.Identifier(template or "template0"))
            conn.execute(query)
            return True

    @contextmanager
    def _acl_lock(self, conn: psycopg.Connection) -> Iterator[None]:
        # GRANT/REVOKE rewrite the database's pg_database row. Two provisionings at once (one revoking
        # PUBLIC on every open database, the other restricting its new one) would update the same row
        # and fail with "tuple concurrently updated": database ACL changes on a server go one at a time.
        conn.execute("SELECT pg_advisory_lock(%s)", (server_acl_lock_key(),))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (server_acl_lock_key(),))

    def restrict_connect(self, database: str, role: str) -> None:
        """Only the tenant's role (and superusers) may connect; PUBLIC may not."""
        with self.connect() as conn, self._acl_lock(conn):
            db = sql.Identifier(database)
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
            conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(db, sql.Identifier(role)))

    def grant_connect(self, database: str, role: str) -> None:
        with self.connect() as conn, self._acl_lock(conn):
            conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(database),
                                                                            sql.Identifier(role)))

    def set_login(self, role: str, allowed: bool) -> None:
        """Let the role log in, or refuse its new sessions (open ones stay until ended)."""
        with self.connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} WITH {}").format(
                sql.Identifier(role), sql.SQL("LOGIN" if allowed else "NOLOGIN")))

    def end_sessions(self, database: str, role: str, timeout: float = 10) -> None:
        """End `role`'s sessions on `database` and wait until they are gone."""
        deadline = time.monotonic() + timeout
        with self.connect() as conn:
            while conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                               "WHERE datname = %s AND usename = %s AND pid <> pg_backend_pid()",
                               (database, role)).fetchone()[0]:
                if time.monotonic() > deadline:
                    raise DatabaseServerError(f"sessions of {role} on {database} did not end within {timeout:g} s")
                time.sleep(0.005)

    def retire_database(self, database: str, retired: str) -> None:
        """Rename `database` to `retired` and refuse connections to it (kept for a grace period)."""
        with self.connect() as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone():
                return  # renamed already (a retried move)
            db = sql.Identifier(database)
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(db))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(db, sql.Identifier(retired)))

    def unretire_database(self, retired: str, database: str) -> None:
        """Undo `retire_database`: `retired` takes back the name `database` and accepts connections again."""
        with self.connect() as conn:
            db = sql.Identifier(database)
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (retired,)).fetchone():
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(retired), db))
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(db))

    def close_other_databases(self) -> None:
        """Revoke PUBLIC's CONNECT on the server's shared databases (`postgres`, `template1` by default).

        PostgreSQL grants CONNECT to PUBLIC by default, so without this a tenant role could log in to
        `postgres`. Only the databases named in `shared_databases` are touched: another application's
        database on the same server is not ours to change. The admin keeps access through an explicit
        grant made first; owners and superusers keep theirs anyway.
        """
        with self.connect() as conn, self._acl_lock(conn):
            open_databases = [row[0] for row in conn.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s) "
                "AND has_database_privilege('public', datname, 'CONNECT')", (list(self._shared_databases),)).fetchall()]
            for database in open_databases:
                db = sql.Identifier(database)
                try:
                    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO CURRENT_USER").format(db))
                    conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(db))
                except psycopg.errors.InsufficientPrivilege:
                    log.warning("cannot revoke PUBLIC's CONNECT on database %s: not its owner", database)

    def drop_database(self, database: str) -> None:
        with self.connect() as conn:
            # WITH (FORCE) ends the sessions still open on it (tenant apps, a crashed job's connection).
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))

    def drop_databases_owned_by(self, role: str, keep: str | None = None) -> list[str]:
        """Drop every database `role` owns (live, retired copies, restore scratch databases) but `keep`;
        their names."""
        with self.connect() as conn:
            owned = [row[0] for row in conn.execute(
                "SELECT d.datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = %s "
                "AND NOT d.datistemplate AND d.datname IS DISTINCT FROM %s ORDER BY 1", (role, keep))]
            for database in owned:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        return owned

    def drop_role(self, role: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    def inventory(self) -> dict[str, Any]:
        """What the control plane may have left on this server, by our naming: tenant and quarantined
        databases (name, owner, connections allowed), tenant, move and quarantined roles, replication
        slots and subscriptions (both cluster-wide catalogs)."""
        with self.connect() as conn:
            databases = conn.execute(
                "SELECT d.datname, r.rolname, d.datallowconn FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                "WHERE d.datname LIKE 'tenant\\_%%' OR d.datname LIKE 'cp\\_quarantine\\_%%'").fetchall()
            roles = [row[0] for row in conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%%' OR rolname LIKE 'cp\\_move\\_%%' "
                "OR rolname LIKE 'cp\\_quarantine\\_%%'")]
            slots = conn.execute("SELECT slot_name, database, active_pid FROM pg_replication_slots").fetchall()
            subscriptions = conn.execute(
                "SELECT s.subname, d.datname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid").fetchall()
        return {"databases": [tuple(row) for row in databases], "roles": roles,
                "slots": [tuple(row) for row in slots], "subscriptions": [tuple(row) for row in subscriptions]}

    def quarantine_database(self, database: str, new_name: str) -> None:
        """Refuse connections to `database`, end its sessions and rename it (kept until dropped after a grace)."""
        db = sql.Identifier(database)
        with self.connect() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(db))
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(db, sql.Identifier(new_name)))

    def quarantine_role(self, role: str, new_name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("ALTER ROLE {} WITH NOLOGIN").format(sql.Identifier(role)))
            conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(sql.Identifier(role), sql.Identifier(new_name)))

    def drop_role_if_unused(self, role: str) -> bool:
        """Drop `role` if it owns nothing on this server: no database, and no object in any database (its
        grants on databases are revoked with it, in one transaction). True when it was dropped now."""
        with self.connect() as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                return False
            if conn.execute("SELECT 1 FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE r.rolname = %s",
                            (role,)).fetchone():
                return False
            try:
                with conn.transaction():
                    self._revoke_database_grants(conn, role)
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
            except psycopg.errors.DependentObjectsStillExist:
                return False  # it owns objects (or holds grants) inside some database: not ours to drop blind
        return True

    @staticmethod
    def _revoke_database_grants(conn: psycopg.Connection, role: str) -> None:
        for (database,) in conn.execute(
                "SELECT datname FROM pg_database d WHERE EXISTS (SELECT 1 FROM aclexplode(d.datacl) a "
                "JOIN pg_roles r ON r.oid = a.grantee WHERE r.rolname = %s)", (role,)).fetchall():
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(sql.Identifier(database),
                                                                            sql.Identifier(role)))

    def drop_role_everywhere(self, role: str) -> None:
        """Drop a role that owns no database: its grants on databases are revoked first."""
        with self.connect() as conn:
            self._revoke_database_grants(conn, role)
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

    def drop_slot(self, slot: str) -> None:
        with self.connect() as conn:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                         "WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                         (slot,))

    def drop_subscription(self, database: str, name: str) -> None:
        """Detached from its slot first, so the publisher need not be reachable."""
        ident = sql.Identifier(name)
        with self.connect(database) as conn:
            if conn.execute("SELECT 1 FROM pg_subscription WHERE subname = %s", (name,)).fetchone():
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
                conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
                conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))

    def usage(self) -> dict[str, Any]:
        """Connections in use, `max_connections`, and the size in bytes of every tenant database.

        One round trip. `pg_database_size` stats every file of a database: callers cache this for minutes.
        """
        with self.connect() as conn:
            in_use, limit = conn.execute(
                "SELECT (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),"
                " current_setting('max_connections')::int").fetchone()
            sizes = dict(conn.execute(
                "SELECT datname, pg_database_size(oid) FROM pg_database "
                "WHERE datname LIKE 'tenant\\_%%\\_db' AND datallowconn").fetchall())
        return {"connections": in_use, "max_connections": limit, "database_sizes": sizes}
