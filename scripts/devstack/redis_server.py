"""A private `redis-server` that keeps nothing on disk and requires a password."""
from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
import urllib.parse
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from devstack.processes import LOOPBACK, DevstackError, log_tail, pid_alive, port_is_free, process_is, read_int, terminate
from devstack.server import PrivateServer, new_password, read_or_create_secret, write_private

logger = logging.getLogger(__name__)


class RedisServer(PrivateServer):
    """A private `redis-server` under `root` that keeps nothing on disk and requires a password.

    The password is kept 0600 in `root/password` (and in `root/redis.conf`, also 0600, so it never
    appears on a command line); the port is remembered in `root/port` and reused while free.
    """

    def __init__(self, root: Path, port: int | None = None) -> None:
        super().__init__(root, port)
        self.config_file = self.root / "redis.conf"
        self.pid_file = self.root / "redis.pid"
        self.log_file = self.root / "redis.log"

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

    def running_pid(self) -> int | None:
        """The pid in the pidfile if that process is alive and is a redis-server."""
        pid = read_int(self.pid_file)
        if pid and process_is(pid, b"redis"):
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
        return self.running_pid() is not None and self._answers(read_int(self.port_file))

    def start(self) -> RedisServer:
        """Start the server; one already running from this root is reused. Returns self."""
        redis_server = shutil.which("redis-server")
        if redis_server is None:
            raise DevstackError("redis-server not found (apt-get install -y redis-server)")
        if self.is_running():
            self._port = read_int(self.port_file)
            logger.info("Redis already running on %s:%s (%s)", LOOPBACK, self._port, self.root)
            return self
        self._kill_stray()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o700)
        password = read_or_create_secret(self.password_file, new_password)
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
                f"--- {self.log_file} ---\n{log_tail(self.log_file)}"
            )
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """SHUTDOWN NOSAVE (the pidfile's SIGTERM if that fails); no-op when not running."""
        pid = self.running_pid()
        if pid is None:
            with contextlib.suppress(FileNotFoundError):
                self.pid_file.unlink()
            return
        shut_down = False
        try:
            client = self._client(read_int(self.port_file) or 0)
            # ping first: redis-py's shutdown() reports success when it cannot connect at all.
            try:
                client.ping()
                client.shutdown(nosave=True)
                shut_down = True
            finally:
                client.close()
        except (redis.RedisError, DevstackError, OSError) as exc:
            logger.warning("Redis under %s refused SHUTDOWN (%s); sending SIGTERM", self.root, type(exc).__name__)
        terminate(pid, signalled=shut_down)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        logger.info("Redis stopped (%s)", self.root)

    def _kill_stray(self) -> None:
        """A redis-server from this root that does not answer (killed session, lost password): end it."""
        pid = self.running_pid()
        if pid is not None:
            logger.warning("stopping an unresponsive Redis (pid %s) left under %s", pid, self.root)
            terminate(pid)
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()

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
        write_private(self.config_file, "\n".join(lines))

    def _wait_ready(self, port: int, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._answers(port):
                return True
            pid = read_int(self.pid_file)
            if pid and not pid_alive(pid):
                return False
            time.sleep(0.05)
        return False
