"""Private PostgreSQL and Redis servers for development and tests, and the `run`/`test`/`bench` entry points.

Dev-only: it lives under scripts/ (outside the wheel and the image); scripts/run, scripts/test and
scripts/bench run `python -m devstack` with scripts/ on PYTHONPATH, and pytest has it on its path.
Every server listens on 127.0.0.1 only and requires a password. Modules: `processes` (ports, pids,
children), `server` (the base of private servers), `postgres`, `redis_server`, `environment`
(where they live, the settings they provide), `commands` (the entry points).
"""
from devstack.environment import (
    CATALOG_DATABASE, REPO_ROOT, SETTING_NAMES, dev_environment, devstack_dir, scratch_dir, stop_servers_under,
)
from devstack.postgres import SUPERUSER, PostgresServer, find_postgres_bindir
from devstack.processes import LOOPBACK, DevstackError, free_port, port_is_free, running_as_root
from devstack.redis_server import RedisServer

__all__ = [
    "CATALOG_DATABASE", "LOOPBACK", "REPO_ROOT", "SETTING_NAMES", "SUPERUSER", "DevstackError", "PostgresServer",
    "RedisServer", "dev_environment", "devstack_dir", "find_postgres_bindir", "free_port", "port_is_free",
    "running_as_root", "scratch_dir", "stop_servers_under",
]
