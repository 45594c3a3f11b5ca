"""Bulk migration runs on real PostgreSQL and RQ: concurrency across workers, canary, failure budget, resume."""
from __future__ import annotations

import pytest

from control_plane.catalog.migration_run_models import MigrationRun
from helpers import tenant
from migration_fleet import (FIRST, HEAD, database_revision, get_run, items_by_tenant, provision_fleet,
                             put_at_revision, run_parallel_workers, set_read_only, start_run)


@pytest.fixture(autouse=True)
def isolated_runs(monkeypatch, ctx):
    # Clone-from-template provisioning shares template databases across test sessions on this server;
    # these tests provision with plain CREATE DATABASE + migrations so nothing outside them can interfere.
    monkeypatch.setenv("PROVISION_FROM_TEMPLATE", "false")
    yield
    with ctx.sessions() as session, session.begin():
        session.query(MigrationRun).delete()


def test_thirty_tenants_to_head_with_concurrency_four_across_workers(client, auth, ctx, admin_url):
    ids = [f"mr-fleet-{n:02d}" for n in range(30)]
    provision_fleet(client, auth, ids, workers=4)
    put_at_revision(ctx, ids, FIRST)

    run = start_run(client, auth, target="head", tenants=ids, concurrency=4)
    assert run["status"] == "running" and run["counts"]["queued"] == 4 and run["counts"]["pending"] == 26
    run_parallel_workers(6)  # more workers than the limit: the catalog, not the worker count, bounds it

    done = get_run(client, auth, run["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"] == {"total": 30, "pending": 0, "queued": 0, "running": 0, "succeeded": 30,
                              "failed": 0, "skipped": 0}
    assert 2 <= done["peak_concurrency"] <= 4
    for item in done["items"]:
        assert (item["from_revision"], item["to_revision"], item["attempts"]) == (FIRST, HEAD, 1)
    for tenant_id in ids:
        assert database_revision(admin_url, tenant_id) == HEAD
        body = tenant(client, auth, tenant_id)
        assert (body["schema_revision"], body["status"]) == (HEAD, "active")
