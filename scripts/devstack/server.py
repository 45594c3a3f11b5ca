"""The base of the private servers: a root folder, a remembered port, a password kept 0600, start/stop."""
from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Self

from devstack.processes import DevstackError, free_port, port_is_free, read_int, LOOPBACK


def write_private(path: Path, value: str) -> None:
    """Write `value` to `path` with mode 0600 from the first byte on (no window where others can read it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    os.replace(tmp, path)


def read_secret(path: Path, remedy: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        value = ""
    if not value:
        raise DevstackError(f"{path} is missing: {remedy}")
    return value


def read_or_create_secret(path: Path, factory: Callable[[], str]) -> str:
    if path.exists():
        value = path.read_text(encoding="utf-8").strip()
        if value:
            path.chmod(0o600)
            return value
    value = factory()
    write_private(path, value)
    return value


def new_password() -> str:
    # URL-safe alphabet: the password goes into URLs and config files without escaping.
    return secrets.token_urlsafe(32)


class PrivateServer:
    """A server living under `root`, listening on 127.0.0.1 only, password required.

    The port is remembered in `root/port` and reused while free (or the one asked for); the password
    is generated once into `root/<password_file_name>` (0600). Subclasses implement start/stop/is_running.
    """

    password_file_name = "password"
    missing_password_remedy = "start() the server first"

    def __init__(self, root: Path, port: int | None = None) -> None:
        self.root = Path(root).resolve()
        self.password_file = self.root / self.password_file_name
        self.port_file = self.root / "port"
        self._requested_port = port
        self._port = port

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, port={self._port})"

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def is_running(self) -> bool:
        raise NotImplementedError

    @property
    def port(self) -> int:
        if self._port is None:
            self._port = self._running_port() or read_int(self.port_file)
        if self._port is None:
            raise DevstackError(f"{self!r} has no port yet: start() it first")
        return self._port

    @property
    def password(self) -> str:
        return read_secret(self.password_file, self.missing_password_remedy)

    def _running_port(self) -> int | None:
        return None

    def _choose_port(self) -> int:
        if self._requested_port is not None:
            if not port_is_free(self._requested_port):
                raise DevstackError(f"port {self._requested_port} on {LOOPBACK} is in use")
            return self._requested_port
        remembered = read_int(self.port_file)
        if remembered and port_is_free(remembered):
            return remembered
        return free_port()
