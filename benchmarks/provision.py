"""Provisioning benchmark: median per-tenant time through the API with workers running, vs a raw
CREATE DATABASE on the same server in the same run. Prints; asserts nothing.

Usage: scripts/bench provision [N]
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

from psycopg import sql
from sqlalchemy import text

from benchmarks._catalog import admin_connection, throwaway_catalog
from control_plane.app import create_app
from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token


def raw_create_database(runs: int) -> list[float]:
    timings = []
    with admin_connection() as conn:
        for index in range(runs):
            name = sql.Identifier(f"bench_raw_{os.getpid()}_{index}")
            started = time.perf_counter()
            conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
            timings.append(time.perf_counter() - started)
            conn.execute(sql.SQL("DROP DATABASE {}").format(name))
    return timings


def provision_through_api(client, headers, tenant_ids: list[str]) -> list[float]:
    timings = []
    for tenant_id in tenant_ids:
        started = time.perf_counter()
        response = client.post("/v1/tenants", headers=headers,
                               json={"id": tenant_id, "name": tenant_id, "admin_email": f"a@{tenant_id}.example"})
        operation_url = response.headers["Location"]
        deadline = time.monotonic() + 120
        while True:  # poll the operation like an API client would
            status = client.get(operation_url, headers=headers).get_json()["status"]
            if status in ("succeeded", "failed"):
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"provisioning {tenant_id} did not finish in 120 s (are the workers running?)")
            time.sleep(0.005)
        if status != "succeeded":
            raise SystemExit(f"provisioning {tenant_id} failed: {client.get(operation_url, headers=headers).get_json()}")
        timings.append(time.perf_counter() - started)
    return timings


def main(argv: list[str]) -> None:
    count = int(argv[0]) if argv else 20
    with throwaway_catalog("provision") as ctx:
        client = create_app(ctx=ctx).test_client()
        headers = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'bench')[1]}"}
        raw = raw_create_database(count)
        results = {}
        strategies = (("create + alembic upgrade", "false", "0"), ("clone of the head template", "true", "0"),
                      ("warm pool (WARM_POOL_SIZE=2)", "true", "2"))
        for strategy, from_template, warm in strategies:
            with running_workers(2, PROVISION_FROM_TEMPLATE=from_template, WARM_POOL_SIZE=warm):
                provision_through_api(client, headers, [f"bench-warm-{uuid.uuid4().hex[:6]}"])  # builds the template
                if warm != "0":
                    refill_pools(ctx, int(warm))
                results[strategy] = provision_through_api(
                    client, headers, [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)])
        raw_median = statistics.median(raw)
        print(f"provision: {count} tenants one at a time through the API, 2 workers, same server")
        print(f"  {'raw CREATE DATABASE':<30} median {raw_median * 1000:7.1f} ms")
        for strategy, timings in results.items():
            median = statistics.median(timings)
            print(f"  {strategy:<30} median {median * 1000:7.1f} ms   {median / raw_median:5.2f}x raw")
        with ctx.sessions() as session:
            warm_claims = session.execute(text(
                "SELECT count(*) FROM operations WHERE kind = 'provision' AND (result->>'warm')::boolean")).scalar()
            waits = session.execute(text(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))"
                " FROM operations")).one()
        print(f"  (warm pool: {warm_claims} of {count} provisionings claimed a spare, the others cloned the template "
              "while the pool refilled)")
        print(f"  (all runs: median queue wait {waits[0] * 1000:.1f} ms, median job run {waits[1] * 1000:.1f} ms)")


def refill_pools(ctx, size: int) -> None:
    """The pools full before measuring (the workers refill them after each claim from then on)."""
    import dataclasses

    from control_plane.services.warm_pools import refill_all

    refill_all(dataclasses.replace(ctx, settings=dataclasses.replace(ctx.settings, warm_pool_size=size)))


@contextmanager
def running_workers(count: int, **env: str):
    workers = [subprocess.Popen([sys.executable, "-m", "control_plane.cli", "worker"], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL) for _ in range(count)]
    try:
        yield
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)


if __name__ == "__main__":
    main(sys.argv[1:])
