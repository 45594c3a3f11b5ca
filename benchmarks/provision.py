"""Provisioning benchmark: median per-tenant time through the API with workers running, vs a raw
CREATE DATABASE on the same server in the same run. Prints; asserts nothing.

Usage: scripts/bench provision [N]   (needs TENANT_DB_ADMIN_URL and REDIS_URL, as the tests do)
"""
from __future__ import annotations

import base64
import os
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager

import psycopg
from psycopg import sql
from sqlalchemy import make_url, text

from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.db import create_catalog_engine, upgrade_catalog
from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token


def _admin(url: str) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True)


def raw_create_database(admin_url: str, runs: int) -> list[float]:
    timings = []
    with _admin(admin_url) as conn:
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
    admin_url = os.environ["TENANT_DB_ADMIN_URL"]
    catalog_db = f"bench_catalog_{uuid.uuid4().hex[:8]}"
    with _admin(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(catalog_db)))
    os.environ.update({
        "CATALOG_DATABASE_URL": make_url(admin_url).set(database=catalog_db).render_as_string(hide_password=False),
        "BACKUP_STORE_URL": os.environ.get("BACKUP_STORE_URL", "file:///tmp/bench-backups"),
        "KEYRING": f"bench:{base64.b64encode(os.urandom(32)).decode()}",
        "QUEUE_NAME": f"bench-{uuid.uuid4().hex[:8]}",
    })
    engine = create_catalog_engine(os.environ["CATALOG_DATABASE_URL"])
    upgrade_catalog(engine)
    engine.dispose()
    ctx = build_context_from_env()
    try:
        client = create_app(ctx=ctx).test_client()
        headers = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'bench')[1]}"}
        raw = raw_create_database(admin_url, count)
        results = {}
        for strategy, from_template in (("create + alembic upgrade", "false"), ("clone of the head template", "true")):
            with running_workers(2, PROVISION_FROM_TEMPLATE=from_template):
                provision_through_api(client, headers, [f"bench-warm-{uuid.uuid4().hex[:6]}"])  # builds the template
                results[strategy] = provision_through_api(
                    client, headers, [f"bench-{uuid.uuid4().hex[:6]}-{i}" for i in range(count)])
        raw_median = statistics.median(raw)
        print(f"provision: {count} tenants one at a time through the API, 2 workers, same server")
        print(f"  {'raw CREATE DATABASE':<30} median {raw_median * 1000:7.1f} ms")
        for strategy, timings in results.items():
            median = statistics.median(timings)
            print(f"  {strategy:<30} median {median * 1000:7.1f} ms   {median / raw_median:5.2f}x raw")
        with ctx.sessions() as session:
            waits = session.execute(text(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM started_at - created_at)),"
                " percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))"
                " FROM operations")).one()
        print(f"  (all runs: median queue wait {waits[0] * 1000:.1f} ms, median job run {waits[1] * 1000:.1f} ms)")
    finally:
        cleanup(ctx, admin_url, catalog_db)


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


def build_context_from_env():
    from control_plane.settings import Settings

    return build_context(Settings.from_env())


def cleanup(ctx, admin_url: str, catalog_db: str) -> None:
    with ctx.sessions() as session:
        names = session.execute(text("SELECT database_name, role_name FROM tenants")).all()
    dispose(ctx)
    with _admin(admin_url) as conn:
        for database, role in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(catalog_db)))


if __name__ == "__main__":
    main(sys.argv[1:])
