"""SessionSampler: the peak number of a server's sessions whose application_name matches a pattern.

Shared by the runtime benchmark and the runtime tests (which import it from here): both check how many
sessions a router really opens, as the server sees them.
"""
from __future__ import annotations

import threading

import psycopg


class SessionSampler:
    """Samples pg_stat_activity in a thread every few milliseconds, keeping the highest count of matching
    sessions (`peak`) and how many samples it took (`samples`). Its own session is named so that no
    pattern of a router or a baseline matches it."""

    APPLICATION_NAME = "session-sampler"

    def __init__(self, admin_url: str, pattern: str, interval: float = 0.005) -> None:
        self.peak = 0
        self.samples = 0
        self._pattern = pattern
        self._interval = interval
        self._conn = psycopg.connect(admin_url, autocommit=True, application_name=self.APPLICATION_NAME)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SessionSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            count = self._conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                                       (self._pattern,)).fetchone()[0]
            self.peak = max(self.peak, count)
            self.samples += 1
            self._stop.wait(self._interval)
