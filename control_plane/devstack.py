"""Private PostgreSQL and Redis servers for development and tests, and the `run`/`test` entry points.

`scripts/run` and `scripts/test` call this module (`python -m control_plane.devstack run|test|stop`);
production never imports it. Every server listens on 127.0.0.1 only and requires a password.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import logging
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType

import psycopg
import redis
from psycopg import sql
from redis.backoff import NoBackoff
from redis.retry import Retry

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
SUPERUSER = "cp_admin"
CATALOG_DATABASE = "control_plane"
POSTGRES_OS_USER = "postgres"
SETTING_NAMES = ("CATALOG_DATABASE_URL", "REDIS_URL", "TENANT_DB_ADMIN_URL", "BACKUP_STORE_URL", "KEYRING")
LOOPBACK = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
# sizeof(sockaddr_un.sun_path) on Linux, terminating NUL included.
_UNIX_SOCKET_PATH_MAX = 108


class DevstackError(RuntimeError):
    """A private server or the dev environment could not be prepared, started or stopped; says why."""


# --------------------------------------------------------------------------------------------------
# Small helpers


def running_as_root() -> bool:
    return os.geteuid() == 0


def devstack_dir(create: bool = False) -> Path:
    """Where the private servers live: `$DEVSTACK_DIR`, else `<repo>/.devstack`.

    With `create`, made traversable (0755) whatever the umask: the `postgres` OS user passes through it.
    """
    path = Path(os.environ.get("DEVSTACK_DIR") or REPO_ROOT / ".devstack").resolve()
    if create:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
    return path


def scratch_dir(prefix: str = "scratch") -> Path:
    """A new empty folder under `<devstack dir>/tmp` for a test's own extra servers.

    Unlike pytest's tmp_path (mode 0700 under /tmp when root), the `postgres` OS user can reach it.
    `test` stops every server left under `<devstack dir>/tmp` and deletes it at start and at exit.
    """
    parent = devstack_dir(create=True) / "tmp"
    parent.mkdir(exist_ok=True)
    parent.chmod(0o755)
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=parent))
    path.chmod(0o755)
    return path


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind `host:port` now (SO_REUSEADDR, as servers do, so TIME_WAIT is no obstacle)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _write_private(path: Path, value: str) -> None:
    """Write `value` to `path` with mode 0600 from the first byte on (no window where others can read it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    os.replace(tmp, path)


def _read_secret(path: Path, remedy: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        value = ""
    if not value:
        raise DevstackError(f"{path} is missing: {remedy}")
    return value


def _read_or_create_secret(path: Path, factory: Callable[[], str]) -> str:
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            path.chmod(0o600)
            return value
    value = factory()
    _write_private(path, value)
    return value


def _new_password() -> str:
    # URL-safe alphabet: the password goes into URLs and config files without escaping.
    return secrets.token_urlsafe(32)


def _new_keyring() -> str:
    return f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _process_is(pid: int, marker: bytes) -> bool:
    """Whether `pid` is a live (not zombie) process whose command line contains `marker`.

    Pid files outlive killed servers and pids get reused: a bare kill(pid, 0) is not proof.
    """
    if not _pid_alive(pid):
        return False
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume it is what the pid file says
    if stat_line.rsplit(")", 1)[-1].split()[:1] in (["Z"], ["X"]):
        return False
    return marker in _cmdline(pid)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _conf_quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _clean_env() -> dict[str, str]:
    # PGPORT, PGDATA, PGHOST... in the caller's environment must not redirect our pg_ctl/initdb.
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


# --------------------------------------------------------------------------------------------------
# System packages


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


def missing_system_packages() -> list[str]:
    """Debian packages that must be installed before private servers can start."""
    missing = []
    if find_postgres_bindir() is None:
        missing.append("postgresql")
    if shutil.which("redis-server") is None:
        missing.append("redis-server")
    return missing


def ensure_system_packages() -> None:
    """Install PostgreSQL and Redis with apt-get when missing (root only); otherwise say what to install.

    Debian's postgresql package starts a system cluster on 5432; nothing here uses it.
    """
    missing = missing_system_packages()
    if not missing:
        return
    if not running_as_root():
        raise DevstackError(
            "missing system packages: " + " ".join(missing)
            + f" (install them: sudo apt-get install -y {' '.join(missing)}; or run this script as root)"
        )
    logger.info("installing system packages: %s", " ".join(missing))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *missing], check=True, env=env)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise DevstackError(f"apt-get could not install {' '.join(missing)}: {exc}") from exc
    still = missing_system_packages()
    if still:
        raise DevstackError("still missing after apt-get install: " + " ".join(still))


# --------------------------------------------------------------------------------------------------
# PostgreSQL


class PostgresServer:
    """A private PostgreSQL cluster under `root`: `data/`, `socket/`, `postgres.log`, password and port files.

    The superuser is `cp_admin` with a random password kept 0600 in `root/superuser-password`; the
    port is remembered in `root/port` and reused while free. `fast=True` (tests only) turns off
    fsync, synchronous_commit and full_page_writes for this start; the default is durable. When the
    process runs as root, initdb/pg_ctl run as the `postgres` OS user, which then owns `root`.
    """

    def __init__(self, root: Path, port: int | None = None, *, fast: bool = False) -> None:
        self.root = Path(root).resolve()
        self.fast = fast
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log_file = self.root / "postgres.log"
        self.password_file = self.root / "superuser-password"
        self.port_file = self.root / "port"
        self._requested_port = port
        self._port = port
        self._bindir: Path | None = None

    def __repr__(self) -> str:
        return f"PostgresServer(root={str(self.root)!r}, port={self._port}, fast={self.fast})"

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

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
    def port(self) -> int:
        if self._port is None:
            self._port = self._running_port() or _read_int(self.port_file)
        if self._port is None:
            raise DevstackError(f"{self!r} has no port yet: start() it first")
        return self._port

    @property
    def password(self) -> str:
        return _read_secret(self.password_file, f"delete {self.root} to create a new cluster")

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
        return pid is not None and _process_is(pid, b"postgres")

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
            if attempt < 3 and "shared memory block" in _log_tail(self.log_file, 5):
                time.sleep(2)
                continue
            raise DevstackError(
                f"PostgreSQL under {self.root} did not start (pg_ctl exit {result.returncode}):\n"
                f"{result.stdout.strip()}\n--- {self.log_file} ---\n{_log_tail(self.log_file)}"
            )
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Fast shutdown (disconnects sessions, rolls back open transactions); no-op when not running."""
        if not self.is_running():
            return  # nothing, or a stale postmaster.pid whose pid may now be someone else's: never signal it
        pg_ctl = self.bindir / "pg_ctl"
        result = self._pg([pg_ctl, "stop", "-D", self.data_dir, "-m", "fast", "-w", "-t", "60"], check=False)
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
        blocker = None
        for folder in reversed(self.root.parents):
            st = folder.stat()
            if st.st_uid == user.pw_uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid == user.pw_gid:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                blocker = folder
                break
        where = f"{blocker} is not traversable by it (chmod o+x {blocker})" if blocker else "permission denied"
        return (
            f"the {POSTGRES_OS_USER!r} OS user, which runs PostgreSQL when we are root, cannot reach {self.root}: "
            f"{where}; or set DEVSTACK_DIR to a folder it can reach"
        )

    def _initdb(self) -> None:
        if self.data_dir.exists():
            # A data dir without PG_VERSION is what an interrupted initdb leaves; initdb refuses it.
            shutil.rmtree(self.data_dir)
        password = _read_or_create_secret(self.password_file, _new_password)
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
            fh.write("\n# Managed by control_plane.devstack, rewritten at every start.\ninclude = 'devstack.conf'\n")

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            if not port_is_free(self._requested_port):
                raise DevstackError(f"port {self._requested_port} on {LOOPBACK} is in use")
            return self._requested_port
        remembered = _read_int(self.port_file)
        if remembered and port_is_free(remembered):
            return remembered
        return free_port()

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
        if _pid_alive(pid) and not _process_is(pid, b""):
            _wait_gone(pid, 10)
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


# --------------------------------------------------------------------------------------------------
# Redis


class RedisServer:
    """A private `redis-server` under `root` that keeps nothing on disk and requires a password.

    The password is kept 0600 in `root/password` (and in `root/redis.conf`, also 0600, so it never
    appears on a command line); the port is remembered in `root/port` and reused while free.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.config_file = self.root / "redis.conf"
        self.pid_file = self.root / "redis.pid"
        self.log_file = self.root / "redis.log"
        self.password_file = self.root / "password"
        self.port_file = self.root / "port"
        self._requested_port = port
        self._port = port

    def __repr__(self) -> str:
        return f"RedisServer(root={str(self.root)!r}, port={self._port})"

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = _read_int(self.port_file)
        if self._port is None:
            raise DevstackError(f"{self!r} has no port yet: start() it first")
        return self._port

    @property
    def password(self) -> str:
        return _read_secret(self.password_file, "start() the server first")

    @property
    def url(self) -> str:
        """`redis://:<password>@127.0.0.1:<port>/0` (secret: never log it)."""
        return f"redis://:{urllib.parse.quote(self.password, safe='')}@{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        return self._client(self.port)

    def _client(self, port: int, timeout: float = 5.0) -> redis.Redis:
        # No retries: redis-py retries connection errors (AuthenticationError among them) with backoff,
        # which turns every probe of a stopped server into seconds of waiting.
        return redis.Redis(
            host=LOOPBACK, port=port, password=self.password, socket_timeout=timeout,
            socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0),
        )

    def _pid(self) -> int | None:
        """The pid in the pidfile if that process is alive and is a redis-server."""
        pid = _read_int(self.pid_file)
        if pid and _process_is(pid, b"redis"):
            return pid
        return None

    def _answers(self, port: int | None) -> bool:
        if port is None or not self.password_file.exists():
            return False
        try:
            probe = self._client(port, timeout=1.0)
            try:
                return bool(probe.ping())
            finally:
                probe.close()
        except (redis.RedisError, DevstackError):
            return False

    def is_running(self) -> bool:
        return self._pid() is not None and self._answers(_read_int(self.port_file))

    def start(self) -> RedisServer:
        """Start the server; one already running from this root is reused. Returns self."""
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise DevstackError("redis-server not found (apt-get install -y redis-server)")
        if self.is_running():
            self._port = _read_int(self.port_file)
            logger.info("Redis already running on %s:%s (%s)", LOOPBACK, self._port, self.root)
            return self
        self._kill_stray()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        password = _read_or_create_secret(self.password_file, _new_password)
        for attempt in range(3):
            port = self._choose_port()
            self._write_config(port, password)
            self.port_file.write_text(f"{port}\n", encoding="utf-8")
            result = subprocess.run(
                [redis_server, str(self.config_file)], cwd=self.root, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
            )
            if result.returncode == 0 and self._wait_ready(port):
                self._port = port
                logger.info("Redis started on %s:%s (%s)", LOOPBACK, port, self.root)
                return self
            self._kill_stray()
            if self._requested_port is None and attempt < 2 and not port_is_free(port):
                logger.warning("port %s was taken while Redis started; trying another", port)
                continue
            raise DevstackError(
                f"Redis under {self.root} did not start (exit {result.returncode}):\n{result.stdout.strip()}\n"
                f"--- {self.log_file} ---\n{_log_tail(self.log_file)}"
            )
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SHUTDOWN NOSAVE (the pidfile's SIGTERM if that fails); no-op when not running."""
        pid = self._pid()
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
            return
        try:
            client = self._client(_read_int(self.port_file) or 0)
            # ping first: redis-py's shutdown() reports success when it cannot connect at all.
            try:
                client.ping()
                client.shutdown(nosave=True)
            finally:
                client.close()
        except (redis.RedisError, DevstackError, OSError) as exc:
            logger.warning("Redis under %s refused SHUTDOWN (%s); sending SIGTERM", self.root, type(exc).__name__)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        if not _wait_gone(pid, 10):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _wait_gone(pid, 5)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        logger.info("Redis stopped (%s)", self.root)

    def _kill_stray(self) -> None:
        """A redis-server from this root that does not answer (killed session, lost password): end it."""
        pid = self._pid()
        if pid is not None:
            logger.warning("stopping an unresponsive Redis (pid %s) left under %s", pid, self.root)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            if not _wait_gone(pid, 10):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                _wait_gone(pid, 5)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            if not port_is_free(self._requested_port):
                raise DevstackError(f"port {self._requested_port} on {LOOPBACK} is in use")
            return self._requested_port
        remembered = _read_int(self.port_file)
        if remembered and port_is_free(remembered):
            return remembered
        return free_port()

    def _write_config(self, port: int, password: str) -> None:
        def quoted(value: str | Path) -> str:
            return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'

        lines = [
            f"bind {LOOPBACK}",
            f"port {port}",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            "daemonize yes",
            f"pidfile {quoted(self.pid_file)}",
            f"logfile {quoted(self.log_file)}",
            f"dir {quoted(self.root)}",
            f"requirepass {quoted(password)}",
        ]
        _write_private(self.config_file, "\n".join(lines))

    def _wait_ready(self, port: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers(port):
                return True
            pid = _read_int(self.pid_file)
            if pid and not _pid_alive(pid):
                return False
            time.sleep(0.05)
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited; a zombie counts as exited (PID 1 may take seconds to reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _process_is(pid, b""):
            return True
        time.sleep(0.02)
    return not _process_is(pid, b"")


def stop_servers_under(path: Path) -> int:
    """Stop every private PostgreSQL and Redis server whose folder lies under `path`; returns how many."""
    path = Path(path).resolve()
    if not path.is_dir():
        return 0
    stopped = 0
    for pid_file in sorted(path.rglob("postmaster.pid")):
        server = PostgresServer(pid_file.parent.parent)
        if server.data_dir == pid_file.parent and server.is_running():
            server.stop()
            stopped += 1
    for pid_file in sorted(path.rglob("redis.pid")):
        redis_server = RedisServer(pid_file.parent)
        if redis_server._pid() is not None:
            redis_server.stop()
            stopped += 1
    return stopped


# --------------------------------------------------------------------------------------------------
# The development environment


def _configured(name: str) -> bool:
    return bool(os.environ.get(name) or os.environ.get(f"{name}_FILE"))


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise DevstackError(
                f"{lock_path.parent} is in use by another devstack session (pid {holder}); "
                "stop it, or set DEVSTACK_DIR to another folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def dev_environment(base: Path, *, fast: bool = False, fresh: bool = False) -> Iterator[dict[str, str]]:
    """Yield the five settings, starting private servers under `base` for those not in os.environ.

    A setting given as NAME in os.environ is passed through; one given only as NAME_FILE is left out
    (merge the dict over os.environ). Private servers: PostgreSQL in `base/postgres` (catalog
    database `control_plane` and the admin URL's `postgres` database), Redis in `base/redis`;
    defaults `BACKUP_STORE_URL=file://<base>/backups`, `KEYRING` generated once into `base/keyring`.
    `base` is locked for the session; servers found running there are leftovers of a killed session
    and are adopted. On exit it stops the servers it started or adopted, nothing else. `fast` starts
    PostgreSQL without fsync (tests); `fresh` wipes `base` first.
    """
    base = Path(base).resolve()
    base.mkdir(parents=True, exist_ok=True)
    # The postgres OS user (when we are root) must traverse base to reach base/postgres.
    base.chmod(0o755)
    with _exclusive(base / ".lock"):
        if fresh:
            stop_servers_under(base)
            for child in base.iterdir():
                if child.name != ".lock":
                    shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        env: dict[str, str] = {name: os.environ[name] for name in SETTING_NAMES if os.environ.get(name)}
        started: list[PostgresServer | RedisServer] = []
        try:
            if not (_configured("CATALOG_DATABASE_URL") and _configured("TENANT_DB_ADMIN_URL")):
                postgres = PostgresServer(base / "postgres", fast=fast)
                started.append(postgres)  # before start(): an interrupted start is stopped too
                postgres.start()
                if not _configured("CATALOG_DATABASE_URL"):
                    env["CATALOG_DATABASE_URL"] = postgres.ensure_database(CATALOG_DATABASE)
                if not _configured("TENANT_DB_ADMIN_URL"):
                    env["TENANT_DB_ADMIN_URL"] = postgres.url
            if not _configured("REDIS_URL"):
                redis_server = RedisServer(base / "redis")
                started.append(redis_server)
                redis_server.start()
                env["REDIS_URL"] = redis_server.url
            if not _configured("BACKUP_STORE_URL"):
                backups = base / "backups"
                backups.mkdir(mode=0o700, exist_ok=True)
                env["BACKUP_STORE_URL"] = backups.as_uri()
            if not _configured("KEYRING"):
                env["KEYRING"] = _read_or_create_secret(base / "keyring", _new_keyring)
            yield env
        finally:
            for server in reversed(started):
                try:
                    server.stop()
                except Exception:  # boundary: keep stopping the others, report each failure
                    logger.exception("could not stop %r", server)


# --------------------------------------------------------------------------------------------------
# Commands


def _tenantctl() -> list[str]:
    script = Path(sys.executable).with_name("tenantctl")
    if os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "control_plane.cli"]


class _Stop(BaseException):
    """SIGINT or SIGTERM arrived: unwind, stopping what was started."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so a second Ctrl-C cannot interrupt the clean-up.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _Stop(signum)


def _kill_leftover_children(pids_file: Path) -> None:
    """End `serve`/`worker` processes a killed `run` left behind (each leads its own process group)."""
    for line in pids_file.read_text(encoding="utf-8").split() if pids_file.exists() else []:
        with contextlib.suppress(ValueError):
            pid = int(line)
            cmdline = _cmdline(pid)
            if _pid_alive(pid) and (b"control_plane" in cmdline or b"tenantctl" in cmdline):
                logger.warning("stopping process %s left by an earlier run", pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
                if not _wait_gone(pid, 15):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        pids_file.unlink()


def _stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("process %s ignored SIGTERM; killing it", child.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    # The worker's work horses share its process group; make sure none outlives it.
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevstackError(f"`tenantctl serve` exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers; readiness of its dependencies is /readyz's business
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise DevstackError(f"the API did not answer {url} within {timeout:.0f}s")


def _http_port(host: str, port: int | None) -> int:
    if port is not None:
        if not port_is_free(port, host):
            raise DevstackError(f"port {port} on {host} is in use (another `scripts/run`?): pass --port N")
        return port
    if port_is_free(DEFAULT_HTTP_PORT, host):
        return DEFAULT_HTTP_PORT
    chosen = free_port(host)
    logger.warning("port %s on %s is in use; the API will listen on %s instead", DEFAULT_HTTP_PORT, host, chosen)
    return chosen


def _print_banner(base_url: str, token: str, base: Path) -> None:
    auth = f'-H "Authorization: Bearer {token}"'
    body = '{"id":"acme-clinic","name":"Acme Clinic","admin_email":"owner@acme.example"}'
    print(
        "\n".join([
            "",
            "Control plane is running.",
            f"  API:   {base_url}",
            f"  Docs:  {base_url}/docs",
            f"  Token: {token}",
            "         (super_admin, created for this run; keep it to yourself)",
            "",
            "Create a tenant:",
            f"  curl -X POST {base_url}/v1/tenants {auth} -H \"Content-Type: application/json\" -d '{body}'",
            "Follow the operation it answers with (its id is in the body and the Location header):",
            f"  curl {base_url}/v1/operations/<operation-id> {auth}",
            "",
            "Use tenantctl from another shell:",
            f"  set -a; . {base / 'env'}; set +a; .venv/bin/tenantctl tenants list",
            "",
            f"Press Ctrl-C to stop. Data stays under {base} for the next run.",
            "",
        ]),
        flush=True,
    )


def cmd_run(host: str = LOOPBACK, port: int | None = None) -> int:
    """Catalog upgrade, API and one worker on private servers under `<devstack dir>/dev`, until Ctrl-C."""
    ensure_system_packages()
    base = devstack_dir(create=True) / "dev"
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[subprocess.Popen[bytes]] = []
    try:
        with dev_environment(base) as settings:
            pids_file = base / "processes.pid"
            try:
                _kill_leftover_children(pids_file)
                http_port = _http_port(host, port)
                env = {**os.environ, **settings, "PYTHONUNBUFFERED": "1"}
                tenantctl = _tenantctl()
                upgrade = subprocess.run([*tenantctl, "catalog", "upgrade"], env=env, cwd=REPO_ROOT, check=False)
                if upgrade.returncode:
                    raise DevstackError(f"`tenantctl catalog upgrade` failed (exit {upgrade.returncode}, see above)")
                created = subprocess.run(
                    [*tenantctl, "tokens", "create", "--role", "super_admin", "--name", "dev"],
                    env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False,
                )
                lines = [line.strip() for line in created.stdout.splitlines() if line.strip()]
                if created.returncode or not lines:
                    raise DevstackError(f"`tenantctl tokens create` failed (exit {created.returncode})")
                token = lines[-1]
                # For tenantctl in another shell: `set -a; . .devstack/dev/env; set +a` (0600, git-ignored).
                _write_private(base / "env", "".join(f"{name}={shlex.quote(value)}\n"
                                                      for name, value in sorted(settings.items())))
                for args in (["serve", "--host", host, "--port", str(http_port)], ["worker"]):
                    # Own process group: Ctrl-C reaches only us, and we stop each child with its descendants.
                    children.append(
                        subprocess.Popen([*tenantctl, *args], env=env, cwd=REPO_ROOT, start_new_session=True)
                    )
                pids_file.write_text("".join(f"{child.pid}\n" for child in children), encoding="utf-8")
                shown_host = LOOPBACK if host in ("0.0.0.0", "::", "") else host
                base_url = f"http://{'[' + shown_host + ']' if ':' in shown_host else shown_host}:{http_port}"
                _wait_http(f"{base_url}/healthz", children[0])
                _print_banner(base_url, token, base)
                while True:
                    for child, name in zip(children, ("serve", "worker"), strict=True):
                        if child.poll() is not None:
                            raise DevstackError(f"`tenantctl {name}` exited with code {child.returncode}")
                    time.sleep(0.5)
            finally:
                # Children first, while their database and Redis are still up; no signal may cut this short.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                _stop_children(children)
                with contextlib.suppress(FileNotFoundError):
                    pids_file.unlink()
    except _Stop:
        logger.info("stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_stop() -> int:
    """Stop private servers a killed `run` or `test` left behind; a live session's servers are left alone."""
    root = devstack_dir()
    stopped, busy = 0, 0
    for base in (root / "dev", root / "test", root / "bench"):
        if not base.is_dir():
            continue
        try:
            with _exclusive(base / ".lock"):
                stopped += stop_servers_under(base)
        except DevstackError as exc:
            logger.warning("%s", exc)
            busy += 1
    stopped += stop_servers_under(root / "tmp")
    logger.info("stopped %d private server(s)", stopped)
    return 1 if busy else 0


def cmd_test(pytest_args: Sequence[str]) -> int:
    """pytest with the settings of a fresh, fsync-less private stack under `<devstack dir>/test`."""
    return _run_in_stack("test", [sys.executable, "-m", "pytest", *pytest_args], fast=True)


def cmd_bench(name: str, bench_args: Sequence[str]) -> int:
    """`python -m benchmarks.<name>` on a fresh, durable private stack under `<devstack dir>/bench`
    (durable: the baselines each benchmark measures run on the same server, with fsync on as in production)."""
    return _run_in_stack("bench", [sys.executable, "-m", f"benchmarks.{name}", *bench_args], fast=False)


def _run_in_stack(kind: str, cmd: Sequence[str], *, fast: bool) -> int:
    ensure_system_packages()
    root = devstack_dir(create=True)
    scratch = root / "tmp"
    # Until the child runs, a signal unwinds through the clean-ups below.
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with dev_environment(root / kind, fast=fast, fresh=True) as settings:
            try:
                _clear_scratch(scratch)
                env = {**os.environ, **settings, "DEVSTACK_DIR": str(root)}
                return _run_foreground(cmd, env)
            finally:
                _clear_scratch(scratch)
    except _Stop as stop:
        return 128 + int(stop.args[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _clear_scratch(scratch: Path) -> None:
    if scratch.is_dir():
        left = stop_servers_under(scratch)
        if left:
            logger.warning("stopped %d server(s) that tests left running under %s", left, scratch)
        shutil.rmtree(scratch, ignore_errors=True)


def _run_foreground(cmd: Sequence[str], env: dict[str, str]) -> int:
    """Run `cmd` in our process group (a terminal's Ctrl-C reaches it directly, and --pdb keeps the
    terminal); a SIGTERM sent to us becomes a SIGINT to it so its fixtures still tear down."""
    child = subprocess.Popen(list(cmd), env=env, cwd=REPO_ROOT)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    usage = (
        "usage: python -m control_plane.devstack run [--host H] [--port P]\n"
        "       python -m control_plane.devstack test [pytest args...]\n"
        "       python -m control_plane.devstack bench NAME [args...]\n"
        "       python -m control_plane.devstack stop   (stop private servers left under the devstack dir)"
    )
    if not args or args[0] in ("-h", "--help"):
        print(usage)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    try:
        if command == "run":
            parser = argparse.ArgumentParser(prog="scripts/run", description="Run the control plane locally.")
            parser.add_argument("--host", default=LOOPBACK, help="address the API listens on (default %(default)s)")
            parser.add_argument("--port", type=int, default=None, help=f"API port (default {DEFAULT_HTTP_PORT})")
            options = parser.parse_args(rest)
            return cmd_run(options.host, options.port)
        if command == "test":
            return cmd_test(rest)
        if command == "bench" and rest:
            return cmd_bench(rest[0], rest[1:])
        if command == "stop":
            return cmd_stop()
    except DevstackError as exc:
        logger.error("%s", exc)
        return 1
    print(usage, file=sys.stderr)
    return 2


if __name__ == "__main__":
    # Run the importable module, not this __main__ copy, so logs are named control_plane.devstack.
    from control_plane import devstack

    sys.exit(devstack.main())
