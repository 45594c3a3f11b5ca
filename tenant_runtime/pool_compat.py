"""The one place that touches psycopg_pool's private names; checked at import against the supported versions.

The runtime needs two things psycopg_pool has no public API for: closing idle connections on demand (to
give a budget slot back now), and skipping the openings nobody waits for. `CompatPool` does both; the
rest of the runtime only uses its public methods.
"""
from __future__ import annotations

import inspect
import re
from typing import Any

import psycopg_pool
from psycopg_pool import ConnectionPool

# The first release with every name below (`_close_connection` appeared in 3.2.8), and the first we have
# not checked. Keep in step with pyproject.toml's psycopg-pool pin.
SUPPORTED_SINCE = (3, 2, 8)
SUPPORTED_BEFORE = (3, 4)
SUPPORTED = ">=3.2.8,<3.4"

_CLASS_NAMES = ("_close_connection", "_add_connection")
_INSTANCE_NAMES = ("_pool", "_nconns", "_nconns_min", "_waiting", "_growing")


class UnsupportedPsycopgPoolError(ImportError):
    """The installed psycopg_pool lacks internals tenant_runtime relies on."""


def _version(text: str) -> tuple[int, ...]:
    """`3.2.8` → (3, 2, 8); a pre-release or local suffix (`3.3.0.dev1`, `3.4b1`) is ignored."""
    return tuple(int(part) for part in re.findall(r"\d+", re.match(r"[\d.]*", text).group(0)))


def check(version: str, pool_class: type = ConnectionPool) -> None:
    """Raise UnsupportedPsycopgPoolError unless `pool_class` (psycopg_pool `version`) has what CompatPool uses."""
    problems = []
    if not SUPPORTED_SINCE <= _version(version) < SUPPORTED_BEFORE:
        problems.append(f"version {version} is outside the supported range")
    problems += [f"ConnectionPool.{name} is missing" for name in _CLASS_NAMES if not hasattr(pool_class, name)]
    add = getattr(pool_class, "_add_connection", None)
    if add is not None and "growing" not in inspect.signature(add).parameters:
        problems.append("ConnectionPool._add_connection takes no `growing` argument")
    probe = pool_class("", min_size=0, max_size=1, open=False)  # no thread, no connection
    problems += [f"ConnectionPool().{name} is missing" for name in _INSTANCE_NAMES if not hasattr(probe, name)]
    # `_lock` exists from __init__ on (3.3), or from open() on, made by _ensure_lock() (3.2).
    if not (hasattr(probe, "_lock") or hasattr(pool_class, "_ensure_lock")):
        problems.append("ConnectionPool()._lock is missing")
    if problems:
        raise UnsupportedPsycopgPoolError(
            f"tenant_runtime supports psycopg-pool {SUPPORTED} (pip install 'psycopg-pool{SUPPORTED}'): "
            + "; ".join(problems))


check(psycopg_pool.__version__)


class CompatPool(ConnectionPool):
    """A ConnectionPool that can close idle connections on demand and skip unwanted openings."""

    def close_idle(self, count: int = 1) -> int:
        """Close up to `count` idle connections and shrink the pool by as many, without replacing them.

        psycopg_pool shrinks by itself only one connection per `max_idle` period (its ShrinkPool task),
        and every other way it discards a connection opens a replacement. The budget needs a slot back
        now, so this does what ShrinkPool does, on demand, under the pool's own lock.
        """
        with self._lock:
            taken = []
            while self._pool and len(taken) < count:
                taken.append(self._pool.popleft())
            self._nconns -= len(taken)
            self._nconns_min = min(self._nconns_min, len(self._pool))
        for conn in taken:
            self._close_connection(conn)
        return len(taken)

    def discard_openings(self) -> bool:
        """Whether to skip every opening now (a subclass says; checked under the pool's lock)."""
        return False

    def _add_connection(self, attempt: Any, growing: bool = False) -> None:
        # psycopg_pool also opens connections nobody is waiting for: replacements of broken or expired
        # ones, growth for a request that was served meanwhile. With min_size 0 they would only sit
        # idle on a budget slot: skip them and uncount them, as its ShrinkPool does. Deciding under the
        # pool's lock keeps this atomic with a request joining the queue (which grows the pool itself).
        with self._lock:
            if self.discard_openings() or not self._waiting:
                self._nconns -= 1
                if growing:
                    self._growing = False
                return
        super()._add_connection(attempt, growing=growing)

    @property
    def waiting(self) -> int:
        """Requests queued in this pool (read without its lock: a hint)."""
        return len(self._waiting)
