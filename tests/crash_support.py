"""Worker processes for crash tests: `tenantctl` processes started as a supervisor would, killed -9 as a lost
node is (the worker, its work horse and the horse's own children at once), and a seeded choice of the moment.

RQ's work horse calls setpgrp(), so killing the worker's process group misses it: an orphaned horse would
finish the job and the "crash" would test nothing. `kill_9` kills the whole process tree (devstack.processes).
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from control_plane.catalog.models import Operation
from devstack.processes import freeze_tree, kill_tree, stop_warmly, thaw_tree
from helpers import wait_until

# Reproducible kill points: CRASH_SEED=<n> replays a run (failures name the seed).
SEED = int(os.environ.get("CRASH_SEED") or random.randrange(2**32))


# A worker process that has imported everything and waits for a line on stdin before it starts working
# (`tenantctl worker` from there: the start-up sweep, then RQ). Python's imports take seconds on a loaded
# machine; a supervisor's restart is modelled by the line, so the tests do not wait for them each time.
STANDBY = r"""
import sys
from control_plane.cli import cli
from control_plane.jobs.worker import _preload
_preload()
if sys.stdin.readline() == "start\n":  # not at EOF: a test that went away starts nothing
    cli(["worker"])
"""


class Processes:
    """Starts `tenantctl` processes as a supervisor would (logs in <dir>/<n>.log)."""

    def __init__(self, logs: Path) -> None:
        self.logs, self.started = logs, []
        self._standby: dict[str | None, subprocess.Popen] = {}

    def _start(self, argv: list[str], env: dict[str, str] | None, stdin) -> subprocess.Popen:
        with open(self.logs / f"{len(self.started)}.log", "wb") as log:
            process = subprocess.Popen(argv, env=env or dict(os.environ), stdin=stdin, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(process)
        return process

    def __call__(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        return self._start([sys.executable, "-m", "control_plane.cli", *args], env, subprocess.DEVNULL)

    def standby(self, env: dict[str, str] | None = None) -> None:
        """Make a worker ready (imports done) to start at once; call it early to overlap the imports."""
        key = repr(sorted(env.items())) if env else None
        if key not in self._standby:
            self._standby[key] = self._start([sys.executable, "-c", STANDBY], env, subprocess.PIPE)

    def worker(self, env: dict[str, str] | None = None) -> subprocess.Popen:
        """A worker, started now (the standby made ready beforehand), and the next standby made ready."""
        self.standby(env)
        process = self._standby.pop(repr(sorted(env.items())) if env else None)
        process.stdin.write(b"start\n")
        process.stdin.close()
        self.standby(env)
        return process

    def log(self, process: subprocess.Popen) -> str:
        return (self.logs / f"{self.started.index(process)}.log").read_text(errors="replace")

    def stop(self, *processes: subprocess.Popen) -> None:
        """A warm shutdown (RQ finishes its job first); kill -9 of what is still there after 30 s. Stop
        processes before the Redis they use: without it they only retry."""
        if not processes:
            self._standby.clear()
        stop_warmly(processes or self.started)


@pytest.fixture
def processes(tmp_path) -> Iterator[Processes]:
    """`tenantctl` processes for a test; whatever is left is stopped afterwards, work horses included."""
    started = Processes(tmp_path)
    yield started
    started.stop()


def kill_9(process: subprocess.Popen) -> list[int]:
    """kill -9 of the worker, its work horse and the horse's children (pg_dump...) at once, as when their
    node is lost: the worker never sees its horse die (no killed-horse handler runs). Returns the pids."""
    killed = kill_tree(process.pid)
    process.wait()
    return killed


def _state(ctx, operation_id: str) -> tuple[str, int, str | None]:
    with ctx.sessions() as session:
        op = session.get(Operation, operation_id)
        return op.status.value, op.progress, op.step


def ended(ctx, operation_id: str, seconds: float, what: str) -> Operation:
    """The operation once it has ended for good (not failed with an automatic retry still to come)."""
    def done() -> Operation | None:
        with ctx.sessions() as session:
            op = session.get(Operation, operation_id)
            return op if op.status.finished and op.retry_at is None else None
    return wait_until(done, what, seconds, poll=0.02)


def crash_at_random_point(ctx, processes: Processes, worker: subprocess.Popen | None, operation_id: str,
                          points: list[int], rng: random.Random,
                          env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Let `worker` (a new one if None) run the operation to a point of its progress that `rng` chooses
    among `points` (the progress its steps report: the kill comes at the first look at or past it); kill -9
    the worker and its work horse; start a replacement, as a supervisor would (its start-up sweep fails the
    abandoned attempt, undoing it, and retries it). Returns the replacement and the step killed at."""
    point = rng.choice(points)
    worker = worker or processes.worker(env=env)

    def due() -> tuple[str, int, str | None] | None:
        # Looked at with the worker's tree stopped, and left stopped when due: a short last step (a seed of a
        # few ms) could otherwise commit the operation's end between the look and the kill.
        frozen = freeze_tree(worker.pid)
        status, progress, _ = state = _state(ctx, operation_id)
        if status == "running" and progress >= point or status not in ("queued", "running"):
            return state
        thaw_tree(frozen)
        return None

    status, _, step = wait_until(due, f"operation {operation_id} at {point}% (seed {SEED})", 90, poll=0.005)
    killed = kill_9(worker)
    assert status == "running", f"ended before {point}%: {status} (seed {SEED})"
    assert len(killed) >= 2, f"no work horse under the worker at {step} (seed {SEED})"  # the horse died too
    return processes.worker(env=env), step
