"""Fleet migration benchmark: N tenants from revision 1 to head through the bulk migration runner (several
RQ worker processes) vs a sequential loop running the `alembic upgrade head` command once per tenant, both
in the same run on the same server. Prints; asserts nothing.

Usage: scripts/bench migrations [N] [--workers W] [--concurrency C]
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
from sqlalchemy import func, make_url, select

import tenant_migrations
from benchmarks._catalog import throwaway_catalog
from control_plane.bootstrap import redis_client
from control_plane.catalog.migration_run_models import MigrationRunStatus
from control_plane.catalog.models import Tenant, TenantStatus
from control_plane.services import migration_runs
from control_plane.services.kinds import provision as tenants
from control_plane.services.auth import SYSTEM
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.migration_runs import RunRequest

HEAD = tenant_migrations.head_revision()
FIRST = tenant_migrations.known_revisions()[0]
ALEMBIC_INI = Path(tenant_migrations.PACKAGE_DIR) / "alembic.ini"
WORKER = ("from control_plane.jobs.worker import run_worker; from control_plane.settings import Settings; "
          "run_worker(Settings.from_env())")


def _wait(predicate, what: str, timeout: float = 600, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(every)  # polling the catalog like an operator's client would


@contextmanager
def running_workers(ctx: ServiceContext, count: int) -> Iterator[None]:
    procs = [subprocess.Popen([sys.executable, "-c", WORKER], env=dict(os.environ),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(count)]
    connection = redis_client(ctx.settings)
    queue = Queue(ctx.settings.queue_name, connection=connection)
    try:
        _wait(lambda: len(Worker.all(queue=queue)) >= count, f"{count} workers to start", timeout=60)
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


def _count(ctx: ServiceContext, status: TenantStatus) -> int:
    with ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(Tenant).where(Tenant.status == status)) or 0


def provision(ctx: ServiceContext, ids: list[str]) -> None:
    for tenant_id in ids:
        tenants.request_tenant(ctx, SYSTEM, tenant_id=tenant_id, name=tenant_id,
                               admin_email=f"owner@{tenant_id}.example", admin_password="bench-password-123")
    _wait(lambda: _count(ctx, TenantStatus.ACTIVE) + _count(ctx, TenantStatus.FAILED) == len(ids),
          "provisioning")
    if _count(ctx, TenantStatus.FAILED):
        raise SystemExit(f"{_count(ctx, TenantStatus.FAILED)} tenants failed to provision")


def _tenant_url(ctx: ServiceContext, tenant: Tenant) -> str:
    password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
    return make_url("postgresql+psycopg://").set(username=tenant.role_name, password=password,
                                                 host=tenant.server.host, port=tenant.server.port,
                                                 database=tenant.database_name).render_as_string(hide_password=False)


def reset_to_first(ctx: ServiceContext, ids: list[str]) -> None:
    """Every tenant back at revision 1, in its database and in the catalog (not timed)."""
    with ctx.sessions() as session, session.begin():
        for tenant_id in ids:
            tenant = session.get(Tenant, tenant_id)
            ctx.database_of(tenant).migrate(FIRST)
            tenant.schema_revision = FIRST


def alembic_loop(ctx: ServiceContext, ids: list[str]) -> float:
    """The baseline: what an operator's shell loop does, one `alembic upgrade head` process per tenant."""
    alembic = shutil.which("alembic", path=str(Path(sys.executable).parent)) or "alembic"
    with ctx.sessions() as session:
        urls = [_tenant_url(ctx, session.get(Tenant, tenant_id)) for tenant_id in ids]
    started = time.perf_counter()
    for url in urls:
        # The URL (with the tenant role's password) goes in the environment, not on the command line.
        subprocess.run([alembic, "-c", str(ALEMBIC_INI), "upgrade", "head"], check=True,
                       env={**os.environ, "TENANT_DATABASE_URL": url},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def runner(ctx: ServiceContext, ids: list[str], concurrency: int) -> tuple[float, dict]:
    started = time.perf_counter()
    run = migration_runs.request_run(ctx, SYSTEM, RunRequest(target="head", concurrency=concurrency))

    def ended() -> bool:
        return migration_runs.get_run(ctx, SYSTEM, run.id).run.status.finished

    _wait(ended, "the migration run", every=0.02)
    elapsed = time.perf_counter() - started
    detail = migration_runs.get_run(ctx, SYSTEM, run.id)
    if detail.run.status is not MigrationRunStatus.SUCCEEDED:
        raise SystemExit(f"the run {detail.run.status.value}: {detail.run.error}")
    return elapsed, {"peak": detail.peak_concurrency, "counts": detail.run.counts}


def verify_at_head(ctx: ServiceContext, ids: list[str]) -> None:
    with ctx.sessions() as session:
        for tenant_id in ids:
            tenant = session.get(Tenant, tenant_id)
            if ctx.database_of(tenant).current_revision() != HEAD or tenant.schema_revision != HEAD:
                raise SystemExit(f"tenant {tenant_id} is not at head")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench migrations", description=__doc__.split("\n\n")[0])
    parser.add_argument("tenants", nargs="?", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4, help="RQ worker processes for the runner")
    parser.add_argument("--concurrency", type=int, default=4, help="the run's concurrency limit")
    args = parser.parse_args(argv)

    tag = uuid.uuid4().hex[:6]
    # Plain CREATE DATABASE + migrations: no template shared with other processes on this server.
    with throwaway_catalog("mr", PROVISION_FROM_TEMPLATE="false") as ctx:
        run(ctx, args, [f"bench-mr-{tag}-{n:04d}" for n in range(args.tenants)])


def run(ctx: ServiceContext, args: argparse.Namespace, ids: list[str]) -> None:
    print(f"migrations: {len(ids)} tenants, {FIRST} -> {HEAD}, one PostgreSQL server, {os.cpu_count()} CPUs",
          flush=True)
    with running_workers(ctx, args.workers):
        provision(ctx, ids)
        reset_to_first(ctx, ids)
        baseline = alembic_loop(ctx, ids)
        verify_db = [ctx.database_of(t).current_revision() for t in _tenants(ctx, ids[:3])]
        assert verify_db == [HEAD] * len(verify_db), verify_db
        reset_to_first(ctx, ids)
        elapsed, info = runner(ctx, ids, args.concurrency)
    verify_at_head(ctx, ids)
    n = len(ids)
    print(f"  {'sequential `alembic upgrade head` loop':<44} {baseline:7.1f} s  {n / baseline:6.1f} tenants/s  "
          f"{baseline / n * 1000:6.0f} ms/tenant")
    print(f"  {f'runner: {args.workers} workers, concurrency {args.concurrency}':<44} {elapsed:7.1f} s  "
          f"{n / elapsed:6.1f} tenants/s  {elapsed / n * 1000:6.0f} ms/tenant  "
          f"(peak {info['peak']} at once)")
    print(f"  speed-up: {baseline / elapsed:.1f}x the baseline (same run, same tenants, same server)")


def _tenants(ctx: ServiceContext, ids: list[str]) -> list[Tenant]:
    with ctx.sessions() as session:
        return [session.get(Tenant, tenant_id) for tenant_id in ids]


if __name__ == "__main__":
    main(sys.argv[1:])
