"""How fast operations recover: the time from a dependency's return to the operation running again.

- Redis: stopped, a backup requested (202, stays queued in the catalog), Redis started again; two forked
  workers and `tenantctl scheduler` stay up all along. Measured: Redis back → the operation running.
- A killed worker: kill -9 of the worker (and its work horse) while a backup runs; a supervisor starts a
  new one at once. Measured: the new worker started → the operation running again (its start-up sweep
  fails the abandoned attempt and retries it).

Prints median and worst over N trials each (default 10); asserts nothing. The README's guarantee is 90 s
with the scheduler's default 60 s interval; `--interval` shortens the sweep interval to see its share.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._catalog import throwaway_catalog

TENANT = "bench-recovery"


def _start(*args: str, env: dict[str, str], logs: Path) -> subprocess.Popen:
    log = open(logs / f"{args[0]}-{time.monotonic_ns()}.log", "wb")
    try:
        return subprocess.Popen([sys.executable, "-m", "control_plane.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait(condition, seconds: float = 300.0, poll: float = 0.02):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise SystemExit("timed out: the operation never ran again")


def main() -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench recovery", description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--interval", type=int, default=60, help="the scheduler's sweep interval (s, 10..3600)")
    args = parser.parse_args()

    from control_plane.catalog.models import Operation, TenantStatus
    from control_plane.services.auth import SYSTEM
    from control_plane.services.kinds import backup, provision
    from devstack.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as scratch:
        root, logs = Path(scratch), Path(scratch) / "logs"
        logs.mkdir()
        redis_server = RedisServer(root / "redis").start()
        with throwaway_catalog("recovery", pool_size=2, REDIS_URL=redis_server.url) as ctx:
            env = dict(os.environ)
            processes = [_start("worker", env=env, logs=logs), _start("worker", env=env, logs=logs),
                         _start("scheduler", "--interval", str(args.interval), env=env, logs=logs)]
            try:
                op = provision.request_tenant(ctx, SYSTEM, tenant_id=TENANT, name="Recovery clinic",
                                              admin_email="owner@recovery.example")

                def status(op_id: str) -> Operation:
                    with ctx.sessions() as session:
                        return session.get(Operation, op_id)

                _wait(lambda: status(op.id).status.finished)
                from control_plane.catalog.models import Tenant
                with ctx.sessions() as session:
                    assert session.get(Tenant, TENANT).status is TenantStatus.ACTIVE, "provisioning failed"

                redis_times = []
                for trial in range(args.trials):
                    redis_server.stop()
                    op = backup.request_backup(ctx, SYSTEM, TENANT)  # queued in the catalog only
                    time.sleep(1)  # a short outage (not synchronisation: the outage's length)
                    redis_server.start()
                    back = time.monotonic()
                    _wait(lambda: status(op.id).status.value != "queued")
                    redis_times.append(time.monotonic() - back)
                    _wait(lambda: status(op.id).status.finished)
                    print(f"  redis trial {trial + 1}: {redis_times[-1]:.1f} s", file=sys.stderr)

                for process in processes[:2]:
                    _stop(process)
                worker_times = []
                worker = _start("worker", env=env, logs=logs)
                for trial in range(args.trials):
                    op = backup.request_backup(ctx, SYSTEM, TENANT)
                    _wait(lambda: status(op.id).status.value == "running", poll=0.005)
                    _stop(worker, signal.SIGKILL)
                    worker = _start("worker", env=env, logs=logs)  # as a supervisor restarts it
                    restarted = time.monotonic()
                    _wait(lambda: (s := status(op.id)).attempts >= 2 and s.status.value != "failed")
                    worker_times.append(time.monotonic() - restarted)
                    _wait(lambda: status(op.id).status.finished)
                    print(f"  killed-worker trial {trial + 1}: {worker_times[-1]:.1f} s", file=sys.stderr)
                processes.append(worker)
            finally:
                for process in processes:
                    _stop(process)
                redis_server.stop()

    print(f"recovery: from a dependency's return to the operation running again ({args.trials} trials each; "
          f"scheduler sweep every {args.interval} s)")
    print(f"{'dependency':<40} {'median':>8} {'worst':>8}")
    for label, times in (("Redis (stopped, op requested, started)", redis_times),
                         ("killed worker (kill -9, restarted)", worker_times)):
        print(f"{label:<40} {statistics.median(times):>7.1f}s {max(times):>7.1f}s")


if __name__ == "__main__":
    main()
