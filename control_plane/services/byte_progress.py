"""Bytes done of an estimated total, recorded on a running operation's `result` while a stream runs
(backups, restores, moves): tenantctl's follow bar and the console read `bytes_done` / `bytes_total`."""
from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from sqlalchemy import case, cast, func, literal, update
from sqlalchemy.dialects.postgresql import JSONB

from control_plane.catalog.db import transaction
from control_plane.catalog.models import Operation
from control_plane.services.context import ServiceContext

PROGRESS_SECONDS = 0.5  # how often a stream records its bytes on the operation


class ByteProgress:
    """Counts bytes and writes them, at most every PROGRESS_SECONDS, in a short transaction of its own.

    Its own transactions: the stream may be read by another thread (the S3 transfer manager's, pg_restore's
    feeder), which must not touch the job's session. The total is an estimate: it is never shown below
    what is done, and `finish()` makes it what was done.
    """

    def __init__(self, ctx: ServiceContext, operation_id: str | None, total: int) -> None:
        self._ctx = ctx
        self._operation_id = operation_id
        self.total = max(int(total), 0)
        self.done = 0
        self._last = time.monotonic()
        self._lock = threading.Lock()  # serialises `done` between the threads that add to it

    def fields(self) -> dict[str, int]:
        return {"bytes_done": self.done, "bytes_total": max(self.total, self.done)}

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
        self._maybe_record()

    def update(self, done: int) -> None:
        with self._lock:
            self.done = done
        self._maybe_record()

    def set(self, done: int, total: int) -> None:
        """Both measured (a copy whose progress is read from the servers)."""
        with self._lock:
            self.done, self.total = done, total
        self._maybe_record()

    def due(self) -> bool:
        """Whether the next count would be recorded (measure only then when measuring costs queries)."""
        return time.monotonic() - self._last >= PROGRESS_SECONDS

    def _maybe_record(self) -> None:
        if self.due():
            self.record()

    def record(self) -> None:
        if self._operation_id is None:
            return
        self._last = time.monotonic()
        # Merged into what the result already shows (a move's servers and mode), not replacing it; a result
        # that is not an object yet (SQL NULL or JSON null) starts from {}.
        shown = case((func.jsonb_typeof(Operation.result) == "object", Operation.result),
                     else_=cast(literal("{}"), JSONB))
        merged = shown.op("||", return_type=JSONB)(cast(literal(json.dumps(self.fields())), JSONB))
        with transaction(self._ctx.sessions) as session:
            session.execute(update(Operation).where(Operation.id == self._operation_id).values(result=merged))

    def finish(self) -> dict[str, int]:
        """The stream ended: the total is what was done; recorded, and returned for the operation's result."""
        self.total = self.done
        self.record()
        return self.fields()


class CountingWriter:
    """A binary sink that passes writes through and counts them (`count` is called with each write's size)."""

    def __init__(self, inner: BinaryIO, count: Callable[[int], Any]) -> None:
        self._inner = inner
        self._count = count

    def write(self, data: Any) -> int:
        written = self._inner.write(data)
        self._count(len(data))
        return written if written is not None else len(data)

    def flush(self) -> None:
        self._inner.flush()
