"""Fleet migration benchmark: N tenants from revision 1 to head, three ways, in the same run on the same server:
a sequential `alembic upgrade head` loop (one process per tenant, N <= 100 only), what a DBA does by hand
(Alembic's offline SQL, `alembic upgrade <rev>:head --sql`, applied by `xargs -P<concurrency> psql` as each
tenant's role), and the bulk migration runner (RQ worker processes, same concurrency). Prints tenants/s,
ratios and where the runner's time goes (the run's profile); asserts nothing.

The tenants are template clones with catalog rows inserted in bulk (benchmarks/_clone_fleet.py), and
every tenant is put back at revision 1 between two measurements (not timed).

Usage: scripts/bench migrations [N] [--concurrency C] [--workers W] [--no-sequential]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rq import Queue, Worker
from sqlalchemy import select

import tenant_migrations
from benchmarks._catalog import throwaway_catalog
from benchmarks._clone_fleet import (ALEMBIC_INI, Fleet, catalog_revisions, clone_fleet, drop_template,
                                     offline_sql, revisions_in, xargs_psql)
from control_plane.bootstrap import redis_client
from control_plane.catalog.migration_run_models import MigrationRun, MigrationRunStatus
from control_plane.catalog.models import Tenant
from control_plane.services import migration_runs
from control_plane.services.auth import SYSTEM
from control_plane.services.context import ServiceContext
from control_plane.services.migration_runs import RunRequest

HEAD = tenant_migrations.head_revision()
FIRST = tenant_migrations.known_revisions()[0]
SEQUENTIAL_MAX = 100
WORKER = ("from control_plane.jobs.worker import run_worker; from control_plane.settings import Settings; "
          "run_worker(Settings.from_env())")


def _wait(predicate, what: str, timeout: float = 3600, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)  # polling the catalog like an operator's client would


@contextmanager
def running_workers(ctx: ServiceContext, count: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
    queue = Queue(ctx.settings.queue_name, connection=redis_client(ctx.settings))
    try:
        _wait(lambda: len(Worker.all(queue=queue)) >= count, f"{count} workers to start", timeout=120)
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def reset_to_first(ctx: ServiceContext, fleet: Fleet, downgrade_sql: str, concurrency: int) -> None:
    """Every tenant back at revision 1, in its database and in the catalog (not timed)."""
    xargs_psql(fleet, downgrade_sql, concurrency)
    with ctx.sessions() as session, session.begin():
        session.execute(Tenant.__table__.update().where(Tenant.id.in_([t.id for t in fleet.tenants]))
                        .values(schema_revision=FIRST))
    check(ctx, fleet, FIRST, catalog=True)


def check(ctx: ServiceContext, fleet: Fleet, revision: str, *, catalog: bool) -> None:
    n = len(fleet.tenants)
    databases = revisions_in(fleet)
    if databases != {revision: n}:
        raise SystemExit(f"tenant databases are not all at {revision}: {databases}")
    if catalog and catalog_revisions(ctx, fleet) != {revision: n}:
        raise SystemExit(f"the catalog does not record {revision} for every tenant: {catalog_revisions(ctx, fleet)}")


def alembic_loop(ctx: ServiceContext, fleet: Fleet) -> float:
    """One `alembic upgrade head` process per tenant, one after the other: an operator's shell loop."""
    alembic = shutil.which("alembic", path=str(Path(sys.executable).parent)) or "alembic"
    urls = [f"postgresql+psycopg://{t.role}@{fleet.host}:{fleet.port}/{t.database}" for t in fleet.tenants]
    started = time.perf_counter()
    for t, url in zip(fleet.tenants, urls):
        # The password goes in the environment, not on the command line.
        subprocess.run([alembic, "-c", str(ALEMBIC_INI), "upgrade", "head"], check=True,
                       env={**os.environ, "TENANT_DATABASE_URL": url, "PGPASSWORD": t.password},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def raw_psql(fleet: Fleet, upgrade_sql: str, concurrency: int) -> float:
    started = time.perf_counter()
    xargs_psql(fleet, upgrade_sql, concurrency)
    return time.perf_counter() - started


def runner(ctx: ServiceContext, concurrency: int) -> tuple[float, MigrationRun]:
    started = time.perf_counter()
    run = migration_runs.request_run(ctx, SYSTEM, RunRequest(target="head", concurrency=concurrency))

    def ended() -> bool:
        with ctx.sessions() as session:
            return session.scalar(select(MigrationRun.status).where(MigrationRun.id == run.id)).finished

    _wait(ended, "the migration run", every=0.05)
    elapsed = time.perf_counter() - started
    with ctx.sessions() as session:
        run = session.get(MigrationRun, run.id)
    if run.status is not MigrationRunStatus.SUCCEEDED:
        raise SystemExit(f"the run {run.status.value}: {run.error}")
    return elapsed, run


def _row(label: str, n: int, seconds: float, raw: float) -> str:
    return (f"  {label:<46} {seconds:8.1f} s  {n / seconds:7.1f} tenants/s  {seconds / n * 1000:7.1f} ms/tenant  "
            f"{raw / seconds:5.2f}x raw")


def print_profile(run: MigrationRun, elapsed: float, workers: int) -> None:
    profile = (run.result or {}).get("profile")
    if not profile:
        print("  (the run recorded no profile)")
        return
    items = profile.get("items") or 1
    seconds = profile.get("seconds", {})
    busy = sum(seconds.values())
    print(f"  where the runner's time goes: summed over its {items} items, ms per item "
          f"({busy / (elapsed * workers) * 100:.0f}% of {workers} workers x {elapsed:.1f} s accounted for)")
    for phase, total in sorted(seconds.items(), key=lambda kv: -kv[1]):
        print(f"    {phase:<34} {total / items * 1000:7.2f} ms  {total / busy * 100:5.1f}%")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench migrations", description=__doc__.split("\n\n")[0])
    parser.add_argument("tenants", nargs="?", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=4, help="the run's limit, and xargs -P")
    parser.add_argument("--workers", type=int, help="RQ worker processes for the runner (default: concurrency)")
    parser.add_argument("--no-sequential", action="store_true", help="skip the sequential Alembic loop")
    args = parser.parse_args(argv)
    args.workers = args.workers or args.concurrency

    tag = uuid.uuid4().hex[:6]
    with throwaway_catalog("mr", PROVISION_FROM_TEMPLATE="false") as ctx:
        fleet = clone_fleet(ctx, [f"bench-mr-{tag}-{n:04d}" for n in range(args.tenants)], FIRST)
        try:
            run(ctx, args, fleet)
        finally:
            drop_template(ctx, fleet)


def run(ctx: ServiceContext, args: argparse.Namespace, fleet: Fleet) -> None:
    n, c = len(fleet.tenants), args.concurrency
    print(f"migrations: {n} tenants (template clones), {FIRST} -> {HEAD}, one PostgreSQL server (fsync on), "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    upgrade_sql = offline_sql(f"{FIRST}:{HEAD}")
    downgrade_sql = offline_sql(f"{HEAD}:{FIRST}", downgrade=True)
    check(ctx, fleet, FIRST, catalog=True)
    sequential = None
    if n <= SEQUENTIAL_MAX and not args.no_sequential:
        sequential = alembic_loop(ctx, fleet)
        check(ctx, fleet, HEAD, catalog=False)
        reset_to_first(ctx, fleet, downgrade_sql, c)
    raw = raw_psql(fleet, upgrade_sql, c)
    check(ctx, fleet, HEAD, catalog=False)
    reset_to_first(ctx, fleet, downgrade_sql, c)
    with running_workers(ctx, args.workers):
        elapsed, finished = runner(ctx, c)
    check(ctx, fleet, HEAD, catalog=True)
    print(f"  load average {os.getloadavg()[0]:.1f} at the end")
    if sequential is not None:
        print(_row("sequential `alembic upgrade head` loop", n, sequential, raw))
    print(_row(f"raw: alembic --sql | xargs -P{c} psql", n, raw, raw))
    print(_row(f"runner: concurrency {c}, {args.workers} workers", n, elapsed, raw))
    print(f"  runner / raw: {raw / elapsed:.2f}x (same run, same tenants, same server)")
    print_profile(finished, elapsed, args.workers)


if __name__ == "__main__":
    main(sys.argv[1:])
