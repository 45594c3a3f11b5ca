"""PostgresBackupTools: pg_dump and pg_restore against one database server, and the swap of a restore.

pg_dump/pg_restore run as the tenant's own role (it owns every object of its database), with the
password in the child's environment only (never on a command line), and a client whose major
version is at least the server's: the lowest such installed client, so archives stay readable by
as many pg_restore versions as possible.
"""
from __future__ import annotations

import fcntl
import glob
import logging
import os
import queue
import re
import shutil
import subprocess
import threading
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import BinaryIO, Callable, Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from control_plane.adapters.postgres_admin import PostgresAdmin
from control_plane.backup_errors import BackupToolError
from control_plane.errors import DatabaseServerError
from control_plane.naming import APPLICATION_NAME

log = logging.getLogger(__name__)

_CANDIDATE_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/pgsql-*/bin", "/usr/local/pgsql/bin",
                   "/opt/homebrew/opt/postgresql@*/bin", "/usr/local/opt/postgresql@*/bin")
_VERSION = re.compile(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?")
# What the client processes may see of our environment: no KEYRING, no cloud credentials.
_PASS_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")
_LOCK_WAIT = "300s"


@dataclass(frozen=True)
class PgClient:
    bin_dir: str
    major: int
    version: str

    @property
    def pg_dump(self) -> str:
        return os.path.join(self.bin_dir, "pg_dump")

    @property
    def pg_restore(self) -> str:
        return os.path.join(self.bin_dir, "pg_restore")


def _probe(bin_dir: str) -> PgClient | None:
    dump, restore = os.path.join(bin_dir, "pg_dump"), os.path.join(bin_dir, "pg_restore")
    if not (os.access(dump, os.X_OK) and os.access(restore, os.X_OK)):
        return None
    try:
        out = subprocess.run([dump, "--version"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(out)
    if not match:
        return None
    major = int(match.group(1))
    return PgClient(bin_dir, major, f"{major}.{match.group(2) or 0}")


@lru_cache(maxsize=8)
def installed_clients(bin_dir: str | None = None) -> tuple[PgClient, ...]:
    """Client installations found (PG_BIN_DIR alone when set), lowest major version first."""
    if bin_dir:
        dirs = [bin_dir]
    else:
        dirs = sorted({d for pattern in _CANDIDATE_DIRS for d in glob.glob(pattern)})
        on_path = shutil.which("pg_dump")
        if on_path:
            dirs.append(os.path.dirname(os.path.realpath(on_path)))
    found = {c.bin_dir: c for c in filter(None, (_probe(d) for d in dict.fromkeys(dirs)))}
    return tuple(sorted(found.values(), key=lambda c: (c.major, c.version)))


def choose_client(min_major: int, bin_dir: str | None = None) -> PgClient:
    for client in installed_clients(bin_dir):
        if client.major >= min_major:
            return client
    have = ", ".join(f"{c.version} in {c.bin_dir}" for c in installed_clients(bin_dir)) or "none"
    raise BackupToolError(f"no pg_dump/pg_restore of major version {min_major} or newer is installed "
                          f"(found: {have}); install postgresql-client-{min_major} or set PG_BIN_DIR")


class _StderrTail:
    """Drains a child's stderr in a thread (so it never blocks on a full pipe), keeping the last lines."""

    def __init__(self, stream: BinaryIO, lines: int = 20) -> None:
        self._lines: deque[str] = deque(maxlen=lines)
        self._thread = threading.Thread(target=self._drain, args=(stream,), daemon=True)
        self._thread.start()

    def _drain(self, stream: BinaryIO) -> None:
        with stream:
            for raw in stream:
                self._lines.append(raw.decode(errors="replace").rstrip())

    def text(self) -> str:
        self._thread.join(timeout=10)
        return " | ".join(line for line in self._lines if line)


def _widen_pipe(stream: BinaryIO) -> None:
    """A 1 MB pipe instead of 64 KB (Linux; best effort): fewer, larger reads and writes, and room for
    the side that is momentarily faster to run ahead instead of stalling."""
    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (AttributeError, OSError):
        pass


class _Prefetch:
    """Reads a pipe ahead in its own thread, into a bounded queue (at most `depth` blocks in memory).

    pg_dump writes into a 64 KB pipe: without read-ahead it stalls whenever we compress or encrypt,
    and the two run one after the other instead of side by side.
    """

    _END = b""

    def __init__(self, stream: BinaryIO, block: int = 1 << 20, depth: int = 4) -> None:
        self._queue: queue.Queue[bytes | BaseException] = queue.Queue(maxsize=depth)
        self._stream = stream
        self._block = block
        self._buffer = memoryview(b"")
        self._done = False
        self._stop = threading.Event()
        _widen_pipe(stream)
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            while not self._stop.is_set():
                block = self._stream.read(self._block)
                self._put(block)
                if not block:
                    return
        except BaseException as exc:  # handed to the reader, which raises it
            self._put(exc)

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def read(self, size: int = -1) -> bytes:
        if not self._buffer:
            if self._done:
                return b""
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            if not item:
                self._done = True
                return b""
            self._buffer = memoryview(item)
        if size is None or size < 0:
            size = len(self._buffer)
        piece, self._buffer = self._buffer[:size], self._buffer[size:]
        return bytes(piece)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


_TABLES = sql.SQL(
    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%' "
    "ORDER BY 1, 2")


def _count_rows(conn: psycopg.Connection) -> dict[str, int]:
    """`{"schema.table": rows}` for every ordinary table (partitions counted on their own)."""
    counts = {}
    for schema, table in conn.execute(_TABLES).fetchall():
        query = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
        counts[f"{schema}.{table}"] = conn.execute(query).fetchone()[0]
    return counts


class _RowCounts:
    """Counts every table's rows on the snapshot's connection, in a thread, while pg_dump reads."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self._conn = conn
        self._result: dict[str, int] | BaseException = {}
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = _count_rows(self._conn)
        except BaseException as exc:  # handed to whoever asks for the counts
            self._result = exc

    def join(self) -> None:
        self._thread.join()

    def result(self) -> dict[str, int]:
        self.join()
        if isinstance(self._result, BaseException):
            raise DatabaseServerError(f"counting rows in the dump's snapshot failed: {self._result}")
        return self._result


@dataclass
class DumpStream:
    archive: BinaryIO
    client: PgClient
    _counts: _RowCounts | None

    def row_counts(self) -> dict[str, int]:
        """Exact row count per table in the snapshot the archive was read from."""
        assert self._counts is not None, "dumped with count_rows=False"
        return self._counts.result()


class PostgresBackupTools:
    def __init__(self, admin_url: str, bin_dir: str | None = None) -> None:
        self._admin_url = admin_url
        self._admin = PostgresAdmin(admin_url)
        self._bin_dir = bin_dir
        self._version: tuple[int, str] | None = None

    # -- connections -------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[psycopg.Connection]:
        try:
            with psycopg.connect(self._admin_url, autocommit=True, connect_timeout=10,
                                 application_name=APPLICATION_NAME) as conn:
                yield conn
        except psycopg.Error as exc:
            raise DatabaseServerError(f"database server refused: {exc.diag.message_primary or exc}") from exc

    def _conninfo(self, database: str, role: str) -> str:
        """The admin URL's connection options (host, port, TLS settings) for `role` on `database`, no password."""
        params = conninfo_to_dict(self._admin_url)
        for secret in ("password", "passfile", "service"):
            params.pop(secret, None)
        params.update(dbname=database, user=role, application_name=APPLICATION_NAME, connect_timeout="10")
        return make_conninfo(**params)

    @staticmethod
    def _env(password: str) -> dict[str, str]:
        env = {name: os.environ[name] for name in _PASS_ENV if name in os.environ}
        env.update({k: v for k, v in os.environ.items() if k.startswith("PGSSL")})
        env["PGPASSWORD"] = password
        return env

    # -- server ------------------------------------------------------------------------------------

    def server_version(self) -> tuple[int, str]:
        """(major, "15.20") of the server (asked once per instance: an instance serves one job)."""
        if self._version is None:
            with self._connect() as conn:
                number = int(conn.execute("SHOW server_version_num").fetchone()[0])
                text = conn.execute("SHOW server_version").fetchone()[0].split()[0]
            self._version = (number // 10000, text)
        return self._version

    def database_exists(self, database: str) -> bool:
        return self._admin.database_exists(database)

    def database_size(self, database: str) -> int:
        """pg_database_size: an estimate of a dump's archive size (indexes are not dumped, TOAST is)."""
        with self._connect() as conn:
            return int(conn.execute("SELECT pg_database_size(%s)", (database,)).fetchone()[0])

    def create_database(self, database: str, owner: str) -> None:
        """A fresh, empty database only `owner` may connect to (dropped first if a failed attempt left it).
        On one admin session of its own (so that another thread may use this instance meanwhile)."""
        with PostgresAdmin(self._admin_url) as admin:
            admin.drop_database(database)
            admin.ensure_database(database, owner=owner)
            admin.restrict_connect(database, owner)

    def drop_database(self, database: str) -> None:
        self._admin.drop_database(database)

    # -- pg_dump / pg_restore ----------------------------------------------------------------------

    @contextmanager
    def dump(self, database: str, role: str, password: str, *, schema_only: bool = False,
             count_rows: bool = True) -> Iterator["DumpStream"]:
        """pg_dump's custom-format archive (uncompressed: we compress) as a stream, read to its end by the caller.

        The archive is read in a snapshot exported by a transaction of our own, in which every table's
        exact row count is taken too (`DumpStream.row_counts()`, once the archive has been read): the
        counts describe exactly the data in the archive, whatever writes happen meanwhile. A non-zero
        exit status raises when the block ends, so a cut-short archive is never taken for a whole one.
        """
        major, _ = self.server_version()
        client = choose_client(major, self._bin_dir)
        try:
            snapshot = psycopg.connect(self._conninfo(database, role), password=password or None,
                                       autocommit=False)
        except psycopg.Error as exc:
            raise DatabaseServerError(f"database server refused: {exc.diag.message_primary or exc}") from exc
        with snapshot:
            # The exporting transaction must stay open until pg_dump has imported its snapshot: it ends
            # with this block, after pg_dump exits.
            snapshot.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            snapshot.read_only = True
            snapshot_id = snapshot.execute("SELECT pg_export_snapshot()").fetchone()[0]
            args = [client.pg_dump, "--format=custom", "--compress=0", "--no-password",
                    f"--lock-wait-timeout={_LOCK_WAIT}", f"--snapshot={snapshot_id}",
                    f"--dbname={self._conninfo(database, role)}"]
            if schema_only:
                args.append("--schema-only")
            try:
                proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=self._env(password))
            except OSError as exc:
                raise BackupToolError(f"could not start pg_dump: {exc.strerror}") from exc
            stderr = _StderrTail(proc.stderr)
            archive = _Prefetch(proc.stdout)
            # Counted while pg_dump reads: the snapshot connection belongs to the counting thread until joined.
            counts = _RowCounts(snapshot) if count_rows else None
            try:
                yield DumpStream(archive, client, counts)
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            finally:
                archive.close()
                proc.stdout.close()
                if counts is not None:
                    counts.join()
            status = proc.wait()
            if status != 0:
                raise BackupToolError(f"pg_dump of {database} exited with status {status}: {stderr.text()}")

    @contextmanager
    def dump_own_database(self) -> Iterator["DumpStream"]:
        """`dump` of the database the URL names, as its own user (the catalog backs itself up this way)."""
        params = conninfo_to_dict(self._admin_url)
        with self.dump(params.get("dbname") or params.get("user") or "postgres", params.get("user") or "",
                       params.get("password") or "") as stream:
            yield stream

    def restore_own_database(self, feed: Callable[[BinaryIO], None], archive_major: int = 0) -> None:
        """`restore` into the (empty) database the URL names, as its own user."""
        params = conninfo_to_dict(self._admin_url)
        self.restore(params.get("dbname") or params.get("user") or "postgres", params.get("user") or "",
                     params.get("password") or "", feed, archive_major)

    def row_counts(self, database: str, role: str, password: str) -> dict[str, int]:
        """Every table's exact row count now (what a restored database is checked against)."""
        try:
            with psycopg.connect(self._conninfo(database, role), password=password or None) as conn:
                return _count_rows(conn)
        except psycopg.Error as exc:
            raise DatabaseServerError(f"database server refused: {exc.diag.message_primary or exc}") from exc

    def _admin_identity(self) -> tuple[str, str]:
        params = conninfo_to_dict(self._admin_url)
        return params.get("user") or "", params.get("password") or ""

    def create_scratch_database(self, database: str) -> None:
        """A fresh database owned by the admin role, that only it may connect to (restore drills)."""
        user, _ = self._admin_identity()
        self.create_database(database, owner=user)

    def restore_as_admin(self, database: str, feed: Callable[[BinaryIO], None], archive_major: int = 0) -> None:
        """`restore` as the admin role: the tenant's role need not exist on this server."""
        user, password = self._admin_identity()
        self.restore(database, user, password, feed, archive_major)

    def inspect_database(self, database: str) -> tuple[dict[str, int], str | None]:
        """(every table's exact row count, the Alembic revision or None) of a database, as the admin."""
        user, password = self._admin_identity()
        try:
            with psycopg.connect(self._conninfo(database, user), password=password or None) as conn:
                counts = _count_rows(conn)
                revision = None
                if "public.alembic_version" in counts:
                    row = conn.execute("SELECT version_num FROM public.alembic_version").fetchone()
                    revision = row[0] if row else None
                return counts, revision
        except psycopg.Error as exc:
            raise DatabaseServerError(f"database server refused: {exc.diag.message_primary or exc}") from exc

    def own_row_counts(self) -> dict[str, int]:
        params = conninfo_to_dict(self._admin_url)
        return self.row_counts(params.get("dbname") or params.get("user") or "postgres", params.get("user") or "",
                               params.get("password") or "")

    def restore(self, database: str, role: str, password: str, feed: Callable[[BinaryIO], None],
                archive_major: int = 0) -> None:
        """pg_restore into `database` as `role`, reading the archive `feed` writes to its stdin.

        Objects end up owned by `role` (--no-owner) without the source's grants (--no-privileges);
        the first error stops the restore (--exit-on-error) and raises with pg_restore's message.
        """
        major, _ = self.server_version()
        client = choose_client(max(major, archive_major), self._bin_dir)
        args = [client.pg_restore, "--no-owner", "--no-privileges", "--no-publications", "--no-subscriptions",
                "--exit-on-error", "--no-password",
                f"--dbname={self._conninfo(database, role)}"]
        try:
            proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=self._env(password))
        except OSError as exc:
            raise BackupToolError(f"could not start pg_restore: {exc.strerror}") from exc
        _widen_pipe(proc.stdin)
        stderr = _StderrTail(proc.stderr)
        try:
            try:
                feed(proc.stdin)
                proc.stdin.close()
            except BrokenPipeError:
                pass  # pg_restore stopped reading: its exit status and message say why
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        status = proc.wait()
        message = stderr.text()
        if status != 0:
            raise BackupToolError(f"pg_restore into {database} exited with status {status}: {message}")

    def copy_into(self, target: "PostgresBackupTools", database: str, role: str, password: str, *,
                  schema_only: bool = False, on_bytes: Callable[[int], object] | None = None) -> int:
        """Stream `database` (pg_dump as this server's admin) into the same-named empty database on `target`
        (pg_restore as `role`, who then owns every object); returns the archive's size in bytes.
        `on_bytes` is called with each block's size as it is fed."""
        params = conninfo_to_dict(self._admin_url)
        copied = 0
        with self.dump(database, params.get("user") or "", params.get("password") or "",
                       schema_only=schema_only, count_rows=False) as stream:
            def feed(stdin: BinaryIO) -> None:
                nonlocal copied
                while block := stream.archive.read(1 << 20):
                    stdin.write(block)
                    copied += len(block)
                    if on_bytes is not None:
                        on_bytes(len(block))
            target.restore(database, role, password, feed, archive_major=stream.client.major)
        return copied

    # -- the swap ----------------------------------------------------------------------------------

    @staticmethod
    def _terminate(conn: psycopg.Connection, database: str) -> None:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE datname = %s AND pid <> pg_backend_pid()", (database,))

    def swap(self, live: str, replacement: str, retired: str, attempts: int = 5) -> None:
        """Rename `live` to `retired` and `replacement` to `live` in one transaction: all or nothing.

        New sessions on `live` are refused first (ALLOW_CONNECTIONS false), open ones are ended; the
        retired database keeps refusing connections. If the swap cannot happen, `live` is given back
        exactly as it was, connections allowed.
        """
        live_id, replacement_id, retired_id = sql.Identifier(live), sql.Identifier(replacement), sql.Identifier(retired)
        with self._connect() as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(live_id))
            try:
                for attempt in range(1, attempts + 1):
                    self._terminate(conn, live)
                    self._terminate(conn, replacement)
                    try:
                        # RENAME waits up to 5 s for the terminated sessions to go, then refuses.
                        with conn.transaction():
                            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(live_id, retired_id))
                            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(replacement_id, live_id))
                        return
                    except psycopg.errors.ObjectInUse:
                        log.warning("swap of %s: sessions still open (attempt %d of %d)", live, attempt, attempts)
                raise DatabaseServerError(f"could not swap {live}: sessions kept it busy")
            except BaseException:
                conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(live_id))
                raise

    def rename(self, database: str, new_name: str) -> None:
        with self._connect() as conn:
            self._terminate(conn, database)
            conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(database),
                                                                            sql.Identifier(new_name)))
