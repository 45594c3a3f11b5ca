"""A private PostgreSQL cluster (initdb, pg_ctl as the `postgres` OS user when root) and where its binaries are."""
from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path

import psycopg
from psycopg import sql

from devstack.processes import (
    LOOPBACK, DevstackError, log_tail, pid_alive, port_is_free, process_is, running_as_root, wait_gone,
)
from devstack.server import PrivateServer, new_password, read_or_create_secret

logger = logging.getLogger(__name__)

SUPERUSER = "cp_admin"
POSTGRES_OS_USER = "postgres"
# sizeof(sockaddr_un.sun_path) on Linux, terminating NUL included.
_UNIX_SOCKET_PATH_MAX = 108


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean_env() -> dict[str, str]:
    # PGPORT, PGDATA, PGHOST... in the caller's environment must not redirect our pg_ctl/initdb.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def postgres_os_user() -> pwd.struct_passwd | None:
    """The account initdb/postgres run as: `postgres` when we are root, else ourselves (None)."""
    if not running_as_root():
        return None
    try:
        return pwd.getpwnam(POSTGRES_OS_USER)
    except KeyError:
        raise DevstackError(
            f"running as root, but there is no {POSTGRES_OS_USER!r} OS user to run PostgreSQL as "
            "(apt-get install -y postgresql creates it)"
        ) from None


def postgres_can_reach(path: Path) -> bool:
    """Whether the OS user PostgreSQL runs as may traverse every folder down to `path` (always, unless root)."""
    user = postgres_os_user()
    return user is None or first_blocker(path, user) is None


def first_blocker(path: Path, user: pwd.struct_passwd) -> Path | None:
    """The first folder on the way to `path` (itself included, if it exists) that `user` cannot traverse."""
    path = Path(path).resolve()
    for folder in [*reversed(path.parents), path]:
        try:
            st = folder.stat()
        except FileNotFoundError:
            return None
        if st.st_uid == user.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid == user.pw_gid or folder.group() in _groups_of(user):
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            return folder
    return None


def _groups_of(user: pwd.struct_passwd) -> set[str]:
    import grp

    return {group.gr_name for group in grp.getgrall() if user.pw_name in group.gr_mem}


def find_postgres_bindir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: `pg_config --bindir`, else the newest /usr/lib/postgresql/N/bin."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))

    def version_key(path: Path) -> tuple[int, ...]:
        try:
            return tuple(int(part) for part in path.parent.name.split("."))
        except ValueError:
            return (-1,)

    candidates.extend(sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


class PostgresServer(PrivateServer):
    """A private PostgreSQL cluster under `root`: `data/`, `socket/`, `postgres.log`, password and port files.

    The superuser is `cp_admin` with a random password kept 0600 in `root/superuser-password`; the
    port is remembered in `root/port` and reused while free. `fast=True` (tests only) turns off
    fsync, synchronous_commit and full_page_writes for this start; the default is durable. `logical=True`
    sets `wal_level = logical` (source or target of online tenant moves). When the process runs as root,
    initdb/pg_ctl run as the `postgres` OS user, which then owns `root`.
    """

    password_file_name = "superuser-password"

    def __init__(self, root: Path, port: int | None = None, *, fast: bool = False, logical: bool = False) -> None:
        super().__init__(root, port)
        self.missing_password_remedy = f"delete {self.root} to create a new cluster"
        self.fast = fast
        self.logical = logical
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_file = self.root / "postgres.log"
        self._bindir: Path | None = None

    def __repr__(self) -> str:
        return f"PostgresServer(root={str(self.root)!r}, port={self._port}, fast={self.fast})"

    # -- facts

    @property
    def bindir(self) -> Path:
        if self._bindir is None:
            found = find_postgres_bindir()
            if found is None:
                raise DevstackError("PostgreSQL server binaries not found (apt-get install -y postgresql)")
            self._bindir = found
        return self._bindir

    @property
    def url(self) -> str:
        """`postgresql://cp_admin:<password>@127.0.0.1:<port>/postgres` (secret: never log it)."""
        return self.url_for("postgres")

    def url_for(self, dbname: str) -> str:
        password = urllib.parse.quote(self.password, safe="")
        return f"postgresql://{SUPERUSER}:{password}@{LOOPBACK}:{self.port}/{urllib.parse.quote(dbname, safe='')}"

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").is_file()

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and process_is(pid, b"postgres")

    # -- lifecycle

    def start(self) -> PostgresServer:
        """Start the cluster (initdb first if needed); a running cluster is reused as is. Returns self."""
        if self.is_running():
            self._port = self._running_port()
            logger.info("PostgreSQL already running on %s:%s (%s)", LOOPBACK, self._port, self.root)
            return self
        self._prepare_root()
        if not self.is_initialized():
            self._initdb()
        elif not self.password_file.exists():
            raise DevstackError(f"{self.password_file} is missing: delete {self.root} to create a new cluster")
        self._remove_stale_lock_files()
        for attempt in range(4):
            port = self._choose_port()
            self._write_settings(port)
            result = self._pg(
                [self.bindir / "pg_ctl", "start", "-w", "-t", "60", "-D", self.data_dir, "-l", self.log_file],
                check=False,
            )
            if result.returncode == 0:
                self._port = port
                self.port_file.write_text(f"{port}\n", encoding="utf-8")
                logger.info(
                    "PostgreSQL started on %s:%s (%s%s)", LOOPBACK, port, self.root, ", fsync off" if self.fast else ""
                )
                return self
            # Someone may have taken a port we picked between the check and the bind: pick again.
            if self._requested_port is None and attempt < 3 and not port_is_free(port):
                logger.warning("port %s was taken while PostgreSQL started; trying another", port)
                continue
            # Backends of a killed postmaster hold its shared memory for a moment after it died.
            if attempt < 3 and "shared memory block" in log_tail(self.log_file, 5):
                time.sleep(2)
                continue
            raise DevstackError(
                f"PostgreSQL under {self.root} did not start (pg_ctl exit {result.returncode}):\n"
                f"{result.stdout.strip()}\n--- {self.log_file} ---\n{log_tail(self.log_file)}"
            )
        raise AssertionError("unreachable")

    def stop(self, immediate: bool = False) -> None:
        """Fast shutdown (disconnects sessions, rolls back open transactions); no-op when not running.
        `immediate`: no shutdown checkpoint, for a server whose data is thrown away right after."""
        if not self.is_running():
            return  # nothing, or a stale postmaster.pid whose pid may now be someone else's: never signal it
        pg_ctl = self.bindir / "pg_ctl"
        mode = "immediate" if immediate else "fast"
        result = self._pg([pg_ctl, "stop", "-D", self.data_dir, "-m", mode, "-w", "-t", "60"], check=False)
        if result.returncode != 0 and self.is_running():
            logger.warning("PostgreSQL under %s ignored a fast shutdown; stopping it immediately", self.root)
            self._pg([pg_ctl, "stop", "-D", self.data_dir, "-m", "immediate", "-w", "-t", "30"], check=False)
            if self.is_running():
                raise DevstackError(f"PostgreSQL under {self.root} would not stop:\n{result.stdout.strip()}")
        logger.info("PostgreSQL stopped (%s)", self.root)

    def ensure_database(self, dbname: str) -> str:
        """Create `dbname` (owned by cp_admin) unless it exists; returns its URL."""
        # CREATE DATABASE refuses a transaction block.
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
                logger.info("created database %s", dbname)
        return self.url_for(dbname)

    # -- internals

    def _os_user(self) -> pwd.struct_passwd | None:
        return postgres_os_user()

    def _chown(self, path: Path) -> None:
        user = self._os_user()
        if user is not None:
            os.chown(path, user.pw_uid, user.pw_gid)

    def _pg(self, cmd: Sequence[str | Path], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [str(part) for part in cmd]
        if self._os_user() is not None:
            argv = ["runuser", "-u", POSTGRES_OS_USER, "--", *argv]
        # cwd: a folder the postgres user can enter (initdb warns about an unreadable cwd such as /root).
        cwd = self.root if self.root.is_dir() else Path("/")
        result = subprocess.run(
            argv, cwd=cwd, env=_clean_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
        )
        if check and result.returncode != 0:
            raise DevstackError(f"{Path(cmd[0]).name} failed (exit {result.returncode}):\n{result.stdout.strip()}")
        return result

    def _prepare_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        self._chown(self.root)
        self.socket_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(self.socket_dir)
        user = self._os_user()
        if user is not None:
            probe = subprocess.run(
                ["runuser", "-u", POSTGRES_OS_USER, "--", "test", "-w", str(self.root), "-a", "-x", str(self.root)],
                cwd="/", check=False,
            )
            if probe.returncode != 0:
                raise DevstackError(self._unreachable_message(user))

    def _unreachable_message(self, user: pwd.struct_passwd) -> str:
        blocker = first_blocker(self.root, user)
        where = f"{blocker} is not traversable by it (chmod o+x {blocker})" if blocker else "permission denied"
        return (
            f"the {POSTGRES_OS_USER!r} OS user, which runs PostgreSQL when we are root, cannot reach {self.root}: "
            f"{where}; or set DEVSTACK_DIR to a folder it can reach"
        )

    def _initdb(self) -> None:
        if self.data_dir.exists():
            # A data dir without PG_VERSION is what an interrupted initdb leaves; initdb refuses it.
            shutil.rmtree(self.data_dir)
        password = read_or_create_secret(self.password_file, new_password)
        # The password file stays ours (root-only when root); initdb reads a throwaway copy it owns.
        fd, pwfile = tempfile.mkstemp(prefix=".initdb-pw-", dir=self.root)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(password + "\n")
            self._chown(Path(pwfile))
            cmd: list[str | Path] = [
                self.bindir / "initdb", "-D", self.data_dir, "-U", SUPERUSER, f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "--encoding=UTF8", *_initdb_locale_args(),
            ]
            if self.fast:
                cmd.append("--no-sync")
            logger.info("initializing a PostgreSQL cluster under %s", self.root)
            self._pg(cmd)
        finally:
            os.unlink(pwfile)
        with (self.data_dir / "postgresql.conf").open("a", encoding="utf-8") as fh:
            fh.write("\n# Managed by the dev stack (scripts/devstack), rewritten at every start.\ninclude = 'devstack.conf'\n")

    def _write_settings(self, port: int) -> None:
        socket_path = self.socket_dir / f".s.PGSQL.{port}"
        if len(os.fsencode(str(socket_path))) < _UNIX_SOCKET_PATH_MAX:
            socket_dirs = str(self.socket_dir)
        else:
            logger.warning("%s is too long for a unix socket path: TCP only", socket_path)
            socket_dirs = ""
        lines = [
            f"listen_addresses = {_conf_quote(LOOPBACK)}",
            f"port = {port}",
            f"unix_socket_directories = {_conf_quote(socket_dirs)}",
            "max_connections = 200",
            "password_encryption = 'scram-sha-256'",
        ]
        if self.fast:
            # Tests only: a crash may lose or corrupt data, which a throwaway cluster can afford.
            lines += ["fsync = off", "synchronous_commit = off", "full_page_writes = off"]
        if self.logical:
            lines += ["wal_level = logical", "max_replication_slots = 20", "max_wal_senders = 20",
                      "max_logical_replication_workers = 20", "max_worker_processes = 32",
                      "max_sync_workers_per_subscription = 8"]
        target = self.data_dir / "devstack.conf"
        target.write_text("\n".join(lines) + "\n", encoding="utf-8")
        target.chmod(0o600)
        self._chown(target)

    def _remove_stale_lock_files(self) -> None:
        """Clear what a killed postmaster left: postgres refuses to start while the pid they name lives."""
        pid = self._postmaster_pid()
        if pid is None:
            return
        logger.warning("removing the lock files of a killed PostgreSQL (pid %s) under %s", pid, self.root)
        # A killed postmaster stays a zombie until reaped; an unrelated process with a reused pid never goes.
        if pid_alive(pid) and not process_is(pid, b""):
            wait_gone(pid, 10)
        for lock in [self.data_dir / "postmaster.pid", *self.socket_dir.glob(".s.PGSQL.*.lock")]:
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.data_dir / "postmaster.pid").read_text(encoding="utf-8").split()[0])
        except (OSError, IndexError, ValueError):
            return None

    def _running_port(self) -> int | None:
        # postmaster.pid, line 4: the port the running postmaster listens on.
        try:
            lines = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
            return int(lines[3])
        except (OSError, IndexError, ValueError):
            return None


def _initdb_locale_args() -> list[str]:
    try:
        listed = subprocess.run(["locale", "-a"], capture_output=True, text=True, check=False).stdout
    except OSError:
        listed = ""
    names = {line.strip().lower().replace("-", "") for line in listed.splitlines()}
    return ["--locale=C.UTF-8"] if "c.utf8" in names else ["--no-locale"]
