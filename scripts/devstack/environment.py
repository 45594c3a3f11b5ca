"""The development environment: where the private servers live, and the five settings they provide.

`<repo>/.devstack` by default; when we are root and the `postgres` OS user cannot reach the
repository (a 0700 home or `mktemp -d`), a folder under /var/lib it can reach instead, with a
`.devstack` symlink to it in the repository. `DEVSTACK_DIR` overrides both.
"""
from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from devstack.postgres import PostgresServer, postgres_can_reach
from devstack.processes import DevstackError
from devstack.redis_server import RedisServer
from devstack.server import read_or_create_secret

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
CATALOG_DATABASE = "control_plane"
SETTING_NAMES = ("CATALOG_DATABASE_URL", "REDIS_URL", "TENANT_DB_ADMIN_URL", "BACKUP_STORE_URL", "KEYRING")
# Root-owned and not world-writable (unlike /tmp or /var/tmp): nobody else can plant a folder or link there.
FALLBACK_PARENT = Path("/var/lib/tenant-control-plane-dev")


def devstack_dir(create: bool = False) -> Path:
    """Where the private servers live: `$DEVSTACK_DIR`, else `<repo>/.devstack` (see the module's docstring).

    With `create`, made traversable (0755) whatever the umask: the `postgres` OS user passes through it.
    """
    given = os.environ.get("DEVSTACK_DIR")
    if given:
        path = Path(given).resolve()
    else:
        in_repo = REPO_ROOT / ".devstack"
        path = in_repo.resolve()
        if not postgres_can_reach(path.parent):
            path = fallback_devstack_dir()
            if create and not in_repo.exists() and not in_repo.is_symlink():
                in_repo.symlink_to(path, target_is_directory=True)
    if create:
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o755)
    return path


def fallback_devstack_dir() -> Path:
    """`/var/lib/tenant-control-plane-dev/<repo folder name>-<hash of its path>`: one per checkout."""
    digest = hashlib.sha256(os.fsencode(str(REPO_ROOT))).hexdigest()[:10]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", REPO_ROOT.name).strip("-.") or "repo"
    FALLBACK_PARENT.mkdir(mode=0o755, exist_ok=True)
    FALLBACK_PARENT.chmod(0o755)
    return FALLBACK_PARENT / f"{name}-{digest}"


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


def _new_keyring() -> str:
    return f"k1:{base64.b64encode(secrets.token_bytes(32)).decode()}"


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
        if redis_server.running_pid() is not None:
            redis_server.stop()
            stopped += 1
    return stopped



def _configured(name: str) -> bool:
    return bool(os.environ.get(name) or os.environ.get(f"{name}_FILE"))


@contextlib.contextmanager
def exclusive(lock_path: Path) -> Iterator[None]:
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
    with exclusive(base / ".lock"):
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
                env["KEYRING"] = read_or_create_secret(base / "keyring", _new_keyring)
            yield env
        finally:
            for server in reversed(started):
                try:
                    server.stop()
                except Exception:  # boundary: keep stopping the others, report each failure
                    logger.exception("could not stop %r", server)
