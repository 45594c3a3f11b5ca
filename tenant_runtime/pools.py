"""PoolRegistry: one psycopg_pool pool per tenant, all under one hard budget of open server connections.

The budget counts *open* connections (in use, idle in a pool, or being opened): a connection is only
opened with a slot (TenantConnection.connect takes one; close() gives it back once the server session
has ended), so the cap holds whatever psycopg_pool decides. Each pool is capped at the per-tenant
maximum. When the budget is full, openers queue: those of tenants below their fair share of the budget
go first, in arrival order, closing idle connections of other tenants (surplus ones first, then the
least recently used) to make room. psycopg_pool grows a pool one connection at a time, so a tenant has
at most one place in that queue: a hot tenant cannot crowd it.
"""
from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from time import monotonic
from typing import Any, Callable

import psycopg

from tenant_runtime.errors import RouterClosedError
from tenant_runtime.metrics import AcquireStats
from tenant_runtime.pool_compat import CompatPool

log = logging.getLogger(__name__)

# A tenant whose connection was used this recently still counts as a user of the budget.
FAIR_SHARE_WINDOW = 1.0

# Key under which a pool's kwargs carry its PoolEntry to TenantConnection.connect (popped there).
ENTRY_KWARG = "_tenant_runtime_entry"


def failure_reason(exc: BaseException) -> str:
    """PostgreSQL's own words for a failed connection, without the host, port or any credential."""
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)
    if primary:
        return primary
    # libpq's connection errors have no diag: `connection to server at "h", port p failed: FATAL:  ...`
    first_line = str(exc).splitlines()[0] if str(exc) else ""
    match = re.search(r"FATAL:\s+(.*)", first_line) or re.search(r"failed:\s+([^:]*)$", first_line)
    return match.group(1).strip() if match else type(exc).__name__


class SlotRefusedError(Exception):
    """A connection attempt was dropped: its pool was retired, or no request waits for it any more."""


class _QuietRefusals(logging.Filter):
    """Drops psycopg_pool's warnings about a connection attempt that failed by our own decision (see
    SlotRefusedError): routine under contention, and counted in our metrics. Its "error connecting"
    record carries the error; the "reconnection attempt failed" record that may follow at once, in
    the same thread, is dropped along with it."""

    def __init__(self) -> None:
        super().__init__()
        self._after_refusal = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        refused = any(isinstance(arg, SlotRefusedError) for arg in args)
        follows_refusal = getattr(self._after_refusal, "flag", False)
        self._after_refusal.flag = refused
        if refused:
            return False
        return not (follows_refusal and str(record.msg).startswith("reconnection attempt in pool"))


logging.getLogger("psycopg.pool").addFilter(_QuietRefusals())


class TenantConnection(psycopg.Connection):
    """A psycopg connection that holds one budget slot from connect() until its server session is gone."""

    @classmethod
    def connect(cls, conninfo: str = "", **kwargs: Any) -> "TenantConnection":  # type: ignore[override]
        entry: PoolEntry = kwargs.pop(ENTRY_KWARG)
        registry = entry.registry
        registry.opening(entry, 1)
        try:
            registry.acquire_slot(entry)
            try:
                conn = super().connect(conninfo, **kwargs)
            except BaseException as exc:
                registry.release_slot(entry, opened=False)
                registry.connect_failed(entry, exc)
                raise
        finally:
            registry.opening(entry, -1)
        conn._runtime_entry = entry  # type: ignore[attr-defined]
        return conn  # type: ignore[return-value]

    def close(self) -> None:
        entry = self.__dict__.pop("_runtime_entry", None)
        if entry is None:  # not ours, or closed already
            super().close()
            return
        # The slot goes back only once the server session has ended, so that the server never sees
        # more sessions than the budget: a backend leaves pg_stat_activity before its process exits
        # and closes the socket, so the socket's end of file is that moment. We keep a duplicate of
        # the socket open across libpq's close to be able to wait for it.
        watch = None
        if not self.closed and not self.broken:
            try:
                watch = socket.socket(fileno=os.dup(self.pgconn.socket))
            except (OSError, psycopg.Error):
                watch = None
        try:
            super().close()
        finally:
            if watch is not None:
                _wait_for_eof(watch, SESSION_END_TIMEOUT)
            entry.registry.release_slot(entry, opened=True)


# How long close() waits for the server to end a session before giving its slot back anyway.
SESSION_END_TIMEOUT = 2.0


def _wait_for_eof(sock: socket.socket, timeout: float) -> None:
    deadline = monotonic() + timeout
    try:
        while (remaining := deadline - monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(4096):
                return
    except OSError:  # reset, timed out: either way there is nothing more to wait for
        pass
    finally:
        sock.close()


class TenantPool(CompatPool):
    def discard_openings(self) -> bool:
        # A retired pool opens nothing more: its connections would only hold budget slots.
        return self.kwargs[ENTRY_KWARG].retired


@dataclass(eq=False)
class PoolEntry:
    """One tenant's pool and its accounting; every counter is guarded by the registry's lock."""

    tenant_id: str
    fingerprint: tuple[Any, ...]
    registry: "PoolRegistry"
    pool: TenantPool | None = None
    active: int = 0  # threads between checkout and return: waiting for a connection or holding one
    in_use: int = 0
    open: int = 0
    opening: int = 0  # connections being opened (queued for a slot or connecting)
    last_used: float = field(default_factory=monotonic)
    opened: bool = False
    retired: bool = False
    connect_error: BaseException | None = None

    @property
    def idle(self) -> int:
        return self.open - self.in_use

    @property
    def busy(self) -> bool:
        """Requests or connection openings in flight: never closed for idleness or to make room."""
        return self.active > 0 or self.opening > 0


class _Ticket:
    __slots__ = ("entry",)

    def __init__(self, entry: PoolEntry) -> None:
        self.entry = entry


class PoolRegistry:
    def __init__(self, *, max_connections: int, max_open_pools: int,
                 on_retire: Callable[[list[PoolEntry]], None]) -> None:
        self.max_connections = max_connections
        self.max_open_pools = max_open_pools
        self._on_retire = on_retire
        # The condition's lock guards the entries, every counter, and the queue of openers.
        self._cond = threading.Condition(threading.Lock())  # never re-entered: a plain lock is cheaper
        self._entries: OrderedDict[str, PoolEntry] = OrderedDict()  # least recently used first
        self._queue: deque[_Ticket] = deque()
        self._closing = 0  # idle connections being closed to free a slot for the queue
        self._open = 0
        self._in_use = 0
        self._closed = False
        self.peak_open = 0
        self.opened_total = 0
        self.closed_total = 0
        self.connect_errors = 0
        self.slot_waits = 0
        self.slot_wait_seconds = 0.0
        self.reclaimed = 0
        self.evictions: Counter[str] = Counter()
        self.pools_created = 0
        self.acquires = AcquireStats()  # updated under this registry's lock

    # -- checkout / return (request threads) --------------------------------------------------------

    def checkout(self, tenant_id: str, fingerprint: tuple[Any, ...],
                 make_pool: Callable[[PoolEntry], TenantPool]) -> PoolEntry:
        """The tenant's entry (created if needed, replaced if its route changed), marked active."""
        retired: list[PoolEntry] = []
        with self._cond:
            if self._closed:
                raise RouterClosedError("the tenant router is closed")
            entry = self._entries.get(tenant_id)
            if entry is not None and entry.fingerprint == fingerprint:
                self._entries.move_to_end(tenant_id)
            else:
                fresh = PoolEntry(tenant_id=tenant_id, fingerprint=fingerprint, registry=self)
                fresh.pool = make_pool(fresh)  # not opened yet: no thread, no I/O under the lock
                if entry is not None:  # its route changed: new server, database or credentials
                    self._retire_locked(entry, "changed")
                    retired.append(entry)
                # Bounded registry: make room by closing idle pools, least recently used first, and
                # among those first the ones without a connection left (closing them costs nothing).
                # Pools with work in flight are never closed, so the bound can be exceeded by those.
                while len(self._entries) >= self.max_open_pools:
                    idle = (e for e in self._entries.values() if not e.busy)
                    victim = next((e for e in idle if e.open == 0), None) or next(
                        (e for e in self._entries.values() if not e.busy), None)
                    if victim is None:
                        break
                    self._retire_locked(victim, "lru")
                    retired.append(victim)
                entry = self._entries[tenant_id] = fresh
                self.pools_created += 1
            entry.active += 1
            entry.last_used = monotonic()
        if retired:
            self._on_retire(retired)
        return entry

    def lent(self, entry: PoolEntry, waited: float) -> None:
        with self._cond:
            entry.in_use += 1
            self._in_use += 1
            self.acquires.observe_locked(waited)

    def abandon(self, entry: PoolEntry) -> None:
        """A checkout that got no connection."""
        with self._cond:
            entry.active -= 1
            entry.last_used = monotonic()
            self._cond.notify_all()

    def returned(self, entry: PoolEntry) -> None:
        """A lent connection went back to its pool (or was closed): it may now be reclaimed."""
        with self._cond:
            entry.in_use -= 1
            entry.active -= 1
            self._in_use -= 1
            entry.last_used = monotonic()
            self._cond.notify_all()

    # -- budget slots (psycopg_pool worker threads, through TenantConnection) -----------------------

    def acquire_slot(self, entry: PoolEntry) -> None:
        """Block until `entry` may open one more server connection (see the module docstring).

        When the budget is full, openers of tenants below their fair share of it go first, in arrival
        order, and close idle connections of others to make room; a tenant at or above its share
        only takes a slot that frees up, and meanwhile its requests get its own connections back.
        An opening whose requests were all served meanwhile is dropped.
        """
        with self._cond:
            self._refuse_if_closed(entry)
            if not self._queue and self._open < self.max_connections:
                self._take_locked(entry)
                return
            ticket = _Ticket(entry)
            self._queue.append(ticket)
            self.slot_waits += 1
        started = monotonic()
        try:
            while True:
                victims: list[PoolEntry] = []
                with self._cond:
                    self._refuse_if_closed(entry)
                    if not entry.pool.waiting:
                        raise SlotRefusedError(f"no request of tenant {entry.tenant_id} waits any more")
                    share = self._fair_share_locked()
                    below = [t for t in self._queue if t.entry.open < share]
                    first = (below or self._queue)[0]
                    if first is ticket and self._open < self.max_connections:
                        self._take_locked(entry)
                        return
                    # Openers below their share take a slot from another tenant, by closing one of its
                    # idle connections; one closing per such opener, so that closings (each waiting for
                    # its session to end) run side by side. The first in line at or above its share
                    # (a busy tenant growing) may still take an idle connection of a tenant that no
                    # longer counts as a user of the budget: that starves nobody.
                    if self._open >= self.max_connections:
                        if entry.open < share and self._closing < len(below):
                            victims = self._victims_locked(exclude=entry)
                        elif first is ticket and not self._closing:
                            victims = self._victims_locked(exclude=entry, stale_only=True)
                        self._closing += bool(victims)
                    if not victims:
                        self._cond.wait(0.05)
                        continue
                closed = False
                try:
                    # Outside the lock: closing takes the victim pool's lock, and release_slot ours.
                    closed = any(victim.pool.close_idle(1) for victim in victims)
                finally:
                    with self._cond:
                        self._closing -= 1
                        if closed:
                            self.reclaimed += 1
                        else:
                            self._cond.wait(0.005)  # our idle counts ran ahead of the pools: let them settle
        finally:
            with self._cond:
                self.slot_wait_seconds += monotonic() - started
                try:
                    self._queue.remove(ticket)
                except ValueError:
                    pass
                self._cond.notify_all()

    def _fair_share_locked(self) -> int:
        """The budget divided among the tenants using connections now: requests in flight, or a
        connection used within the last FAIR_SHARE_WINDOW seconds (round-robin traffic needs them all)."""
        recent = monotonic() - FAIR_SHARE_WINDOW
        users = sum(1 for e in self._entries.values() if e.active or (e.open and e.last_used >= recent))
        return max(1, self.max_connections // max(1, users))

    def _victims_locked(self, exclude: PoolEntry, stale_only: bool = False) -> list[PoolEntry]:
        """Pools to take an idle connection from: first those of tenants that no longer count as users of
        the budget (unused for FAIR_SHARE_WINDOW), then those with the most idle (a surplus goes before
        anyone's only connection), then the least recently used. Under skewed traffic this keeps the busy
        tenants' connections and recycles the long tail's."""
        recent = monotonic() - FAIR_SHARE_WINDOW
        candidates = [e for e in self._entries.values() if e is not exclude and not e.retired and e.idle > 0
                      and not (stale_only and (e.active or e.last_used >= recent))]
        candidates.sort(key=lambda e: (e.last_used >= recent, -e.idle, e.last_used))
        return candidates

    def _refuse_if_closed(self, entry: PoolEntry) -> None:
        if self._closed or entry.retired:
            raise SlotRefusedError(f"the pool of tenant {entry.tenant_id} is closed")

    def _take_locked(self, entry: PoolEntry) -> None:
        self._open += 1
        entry.open += 1
        self.opened_total += 1
        self.peak_open = max(self.peak_open, self._open)
        # Promote the next in line: it may now reclaim an idle connection.
        self._cond.notify_all()

    def opening(self, entry: PoolEntry, delta: int) -> None:
        with self._cond:
            entry.opening += delta

    def release_slot(self, entry: PoolEntry, *, opened: bool) -> None:
        with self._cond:
            self._open -= 1
            entry.open -= 1
            if opened:
                self.closed_total += 1
            else:
                self.opened_total -= 1
            self._cond.notify_all()

    def connect_failed(self, entry: PoolEntry, exc: BaseException) -> None:
        if isinstance(exc, SlotRefusedError):
            return
        log.warning("tenant %s: connection to its database failed: %s", entry.tenant_id, failure_reason(exc))
        with self._cond:
            self.connect_errors += 1
            entry.connect_error = exc
            retired = self._retire_locked(entry, "error")
        # Closing the pool fails its waiting requests now, instead of at their timeout.
        if retired:
            self._on_retire([entry])

    # -- retirement ---------------------------------------------------------------------------------

    def _retire_locked(self, entry: PoolEntry, reason: str) -> bool:
        if entry.retired:
            return False
        entry.retired = True
        if self._entries.get(entry.tenant_id) is entry:
            del self._entries[entry.tenant_id]
        self.evictions[reason] += 1
        self._cond.notify_all()
        return True

    def retire_tenant(self, tenant_id: str, reason: str) -> None:
        with self._cond:
            entry = self._entries.get(tenant_id)
            if entry is None or not self._retire_locked(entry, reason):
                return
        self._on_retire([entry])

    def retire_idle(self, idle_seconds: float) -> None:
        cutoff = monotonic() - idle_seconds
        with self._cond:
            idle = [e for e in self._entries.values() if not e.busy and e.last_used <= cutoff]
            for entry in idle:
                self._retire_locked(entry, "idle")
        if idle:
            self._on_retire(idle)

    def retire_all(self, reason: str) -> None:
        with self._cond:
            entries = list(self._entries.values())
            for entry in entries:
                self._retire_locked(entry, reason)
        if entries:
            self._on_retire(entries)

    def close(self) -> None:
        with self._cond:
            self._closed = True
        self.retire_all("close")

    # -- observation --------------------------------------------------------------------------------

    def acquire_failed(self, kind: str) -> None:
        with self._cond:
            self.acquires.failures[kind] = self.acquires.failures.get(kind, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        with self._cond:
            return {
                **self.acquires.snapshot(),
                "pools_open": len(self._entries),
                "connections_open": self._open,
                "connections_in_use": self._in_use,
                "connections_idle": self._open - self._in_use,
                "connections_open_peak": self.peak_open,
                "connections_opened_total": self.opened_total,
                "connections_closed_total": self.closed_total,
                "connect_errors_total": self.connect_errors,
                "connections_reclaimed_total": self.reclaimed,
                "budget_limit": self.max_connections,
                "budget_waiting": len(self._queue),
                "budget_waits_total": self.slot_waits,
                "budget_wait_seconds_total": self.slot_wait_seconds,
                "pools_created_total": self.pools_created,
                "pool_evictions_total": dict(self.evictions),
            }

    def tenant_snapshot(self, tenant_id: str) -> dict[str, int] | None:
        with self._cond:
            entry = self._entries.get(tenant_id)
            if entry is None:
                return None
            return {"open": entry.open, "in_use": entry.in_use, "active": entry.active}
