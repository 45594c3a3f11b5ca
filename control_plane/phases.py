"""Phases: wall time per named phase of a piece of work (time.perf_counter), for profiles; imports nothing."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator


class Phases:
    """Seconds per named phase, measured with time.perf_counter, until `drain` hands them over."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def drain(self) -> dict[str, float]:
        seconds, self.seconds = self.seconds, {}
        return seconds
