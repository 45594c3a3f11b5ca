"""Bulk migration runs on real PostgreSQL and RQ: concurrency across workers, canary, failure budget, resume."""
from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from rq import Queue
from sqlalchemy import func, select, text

from control_plane.adapters.tenant_database import TenantDatabase
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.migration_run_models import MigrationRunItem
from control_plane.catalog.models import AuditEvent, Tenant, TenantStatus
from control_plane.naming import database_name
from control_plane.services.auth import SYSTEM
from control_plane.services.migration_runs import cancel_run
from control_plane.settings import Settings
from helpers import one, tenant
from migration_fleet import (FIRST, HEAD, Fleet, database_revision, get_run, items_by_tenant, put_at_revision,
                             run_parallel_workers, set_read_only, start_run)
from migration_fleet import clean_world  # noqa: F401 (fixture: replaces conftest's teardown here)


@pytest.fixture(scope="module")
def module_fleet(app, ctx, settings, redis_conn):
    fleet = Fleet.provision(app, ctx, settings, redis_conn, [f"mr-fleet-{n:02d}" for n in range(30)], workers=3)
    yield fleet
    fleet.destroy()


@pytest.fixture
def fleet(module_fleet):
    yield module_fleet
    module_fleet.reset()


def test_thirty_tenants_to_head_with_concurrency_four_across_workers(client, auth, admin_url, fleet):
    ids = fleet.ids
    assert len(ids) == 30 and all(database_revision(admin_url, t) == FIRST for t in ids)

    run = start_run(client, auth, target="head", tenants=ids, concurrency=4)
    assert run["status"] == "running" and run["counts"]["queued"] == 4 and run["counts"]["pending"] == 26
    run_parallel_workers(6)  # more workers than the limit: the catalog, not the worker count, bounds it

    done = get_run(client, auth, run["id"])
    assert done["status"] == "succeeded", done
    assert done["counts"] == {"total": 30, "pending": 0, "queued": 0, "running": 0, "succeeded": 30,
                              "failed": 0, "skipped": 0}
    assert 2 <= done["peak_concurrency"] <= 4
    profile = done["result"]["profile"]  # where the time went, summed by the workers over every item
    assert profile["items"] == 30
    assert {"tenant lock: take", "catalog: mark running", "tenant db: connect", "alembic: revisions",
            "catalog: record outcome"} <= set(profile["seconds"])
    assert profile["seconds"]["alembic: revisions"] > 0
    for item in done["items"]:
        assert (item["from_revision"], item["to_revision"], item["attempts"]) == (FIRST, HEAD, 1)
    for tenant_id in ids:
        assert database_revision(admin_url, tenant_id) == HEAD
        body = tenant(client, auth, tenant_id)
        assert (body["schema_revision"], body["status"]) == (HEAD, "active")


def test_sabotaged_tenant_fails_intact_others_finish_within_budget_then_resume_converges(
        fleet, client, auth, ctx, run_jobs, admin_url):
    ids = fleet.ids[:5]
    broken = ids[2]
    set_read_only(admin_url, broken, True)

    run = start_run(client, auth, tenants=ids, concurrency=2, max_failures=2)
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert done["status"] == "failed" and "1 tenant(s) failed" in done["error"]
    assert (done["counts"]["succeeded"], done["counts"]["failed"]) == (4, 1)
    item = items_by_tenant(done)[broken]
    assert item["status"] == "failed" and "read-only transaction" in item["error"]
    assert (item["from_revision"], item["to_revision"]) == (FIRST, FIRST)
    # Intact at revision 1: the failed revision's transaction rolled back, the catalog agrees, the tenant is usable.
    assert database_revision(admin_url, broken) == FIRST
    assert one(admin_url, "SELECT to_regclass('appointments')", dbname=database_name(broken)) is None
    assert (tenant(client, auth, broken)["schema_revision"], tenant(client, auth, broken)["status"]) == (FIRST, "active")
    failed_only = get_run(client, auth, run["id"], status="failed")
    assert [i["tenant_id"] for i in failed_only["items"]] == [broken] and failed_only["counts"]["total"] == 5

    set_read_only(admin_url, broken, False)
    resumed = client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    assert resumed.status_code == 202 and resumed.get_json()["status"] == "running"
    run_jobs()
    final = get_run(client, auth, run["id"])
    assert final["status"] == "succeeded" and final["error"] is None and final["counts"]["succeeded"] == 5
    assert items_by_tenant(final)[broken]["attempts"] == 2
    assert all(database_revision(admin_url, t) == HEAD for t in ids)
    assert tenant(client, auth, broken)["schema_revision"] == HEAD


def test_a_failing_canary_starts_nothing_else(fleet, client, auth, ctx, run_jobs, admin_url):
    ids = fleet.ids[:5]
    set_read_only(admin_url, ids[1], True)

    run = start_run(client, auth, tenants=ids, concurrency=4, canary=2, max_failures=10)
    assert run["counts"]["queued"] == 2  # only the canary wave is claimed, whatever the concurrency
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert done["status"] == "failed" and done["error"].startswith(f"canary failed ({ids[1]})")
    items = items_by_tenant(done)
    assert items[ids[0]]["status"] == "succeeded" and items[ids[1]]["status"] == "failed"
    assert [items[t]["canary"] for t in ids] == [True, True, False, False, False]
    for rest in ids[2:]:
        assert items[rest]["status"] == "pending" and items[rest]["started_at"] is None
        assert database_revision(admin_url, rest) == FIRST

    set_read_only(admin_url, ids[1], False)
    client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    run_jobs()
    assert get_run(client, auth, run["id"])["status"] == "succeeded"
    assert all(database_revision(admin_url, t) == HEAD for t in ids)


def test_spent_failure_budget_stops_new_items(fleet, client, auth, ctx, run_jobs, admin_url):
    ids = fleet.ids[:4]
    set_read_only(admin_url, ids[1], True)
    run = start_run(client, auth, tenants=ids, concurrency=1, max_failures=0)
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert done["status"] == "failed" and done["error"].startswith("failure budget exhausted")
    assert [i["status"] for i in done["items"]] == ["succeeded", "failed", "pending", "pending"]
    assert [database_revision(admin_url, t) for t in ids] == [HEAD, FIRST, FIRST, FIRST]


def test_cancel_stops_new_items_and_running_ones_finish(fleet, client, auth, ctx, run_jobs, admin_url, monkeypatch):
    ids = fleet.ids[:4]
    run = start_run(client, auth, tenants=ids, concurrency=1)
    original = TenantDatabase.migrate_bounded

    def cancel_while_migrating(self, target, **kwargs):
        # The operator cancels while the first tenant is being migrated (this runs in the work horse).
        other = build_context(Settings.from_env(), pool_size=1)
        try:
            cancel_run(other, SYSTEM, run["id"])
        finally:
            dispose(other)
        return original(self, target, **kwargs)

    monkeypatch.setattr(TenantDatabase, "migrate_bounded", cancel_while_migrating)
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert done["status"] == "cancelled" and done["finished_at"] is not None
    assert [i["status"] for i in done["items"]] == ["succeeded", "pending", "pending", "pending"]
    assert [database_revision(admin_url, t) for t in ids] == [HEAD, FIRST, FIRST, FIRST]
    again = client.post(f"/v1/migration-runs/{run['id']}/cancel", headers=auth)
    assert again.status_code == 200 and again.get_json()["status"] == "cancelled"

    monkeypatch.setattr(TenantDatabase, "migrate_bounded", original)
    client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)  # a cancelled run can go on later
    run_jobs()
    assert get_run(client, auth, run["id"])["status"] == "succeeded"
    assert all(database_revision(admin_url, t) == HEAD for t in ids)


def test_cancel_before_any_worker_releases_queued_items(fleet, client, auth, ctx, run_jobs, admin_url):
    ids = fleet.ids[:3]
    run = start_run(client, auth, tenants=ids, concurrency=2)
    cancelled = client.post(f"/v1/migration-runs/{run['id']}/cancel", headers=auth).get_json()
    assert cancelled["status"] == "cancelled" and cancelled["counts"]["pending"] == 3
    run_jobs()  # the two jobs already in the queue find their items released and do nothing
    done = get_run(client, auth, run["id"])
    assert [i["status"] for i in done["items"]] == ["pending"] * 3 and done["finished_at"] is not None
    assert all(database_revision(admin_url, t) == FIRST for t in ids)


def test_killed_worker_item_is_failed_at_once_and_resume_recovers_it(fleet, client, auth, ctx, run_jobs, admin_url,
                                                                     monkeypatch):
    ids = fleet.ids[:4]
    victim = ids[1]
    original = TenantDatabase.migrate_bounded

    def die(self, target, **kwargs):
        if self.database == database_name(victim):
            os._exit(9)  # the work horse vanishes mid-migration, as with the OOM killer
        return original(self, target, **kwargs)

    monkeypatch.setattr(TenantDatabase, "migrate_bounded", die)
    run = start_run(client, auth, tenants=ids, concurrency=2, max_failures=1)
    run_jobs()
    done = get_run(client, auth, run["id"])
    item = items_by_tenant(done)[victim]
    assert item["status"] == "failed" and "worker process died" in item["error"]
    assert done["status"] == "failed" and done["counts"]["succeeded"] == 3  # the others went on
    assert (tenant(client, auth, victim)["status"], tenant(client, auth, victim)["schema_revision"]) == ("active", FIRST)

    monkeypatch.setattr(TenantDatabase, "migrate_bounded", original)
    client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    run_jobs()
    assert get_run(client, auth, run["id"])["status"] == "succeeded"
    assert database_revision(admin_url, victim) == HEAD


def _abandon_first_item(ctx, settings, redis_conn, run_id: str) -> str:
    """As if a worker took the first item, marked it running, then vanished with its machine (no handler ran)."""
    with ctx.sessions() as session, session.begin():
        item = session.scalars(select(MigrationRunItem).where(MigrationRunItem.run_id == run_id)
                               .order_by(MigrationRunItem.position)).first()
        tenant_row = session.get(Tenant, item.tenant_id)
        item.begin("vanished-host:4242")
        tenant_row.begin_migration()
        tenant_id = item.tenant_id
    Queue(settings.queue_name, connection=redis_conn).empty()  # the job went down with the worker
    return tenant_id


def test_abandoned_item_is_retried_by_resume(fleet, client, auth, ctx, run_jobs, admin_url, settings, redis_conn):
    ids = fleet.ids[:2]
    run = start_run(client, auth, tenants=ids, concurrency=1)
    lost = _abandon_first_item(ctx, settings, redis_conn, run["id"])
    assert items_by_tenant(get_run(client, auth, run["id"]))[lost]["status"] == "running"
    client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert done["status"] == "succeeded" and items_by_tenant(done)[lost]["attempts"] == 2
    assert all(database_revision(admin_url, t) == HEAD for t in ids)
    assert tenant(client, auth, lost)["status"] == "active"


def test_worker_start_up_fails_abandoned_items_and_the_run_goes_on(fleet, client, auth, ctx, run_jobs, admin_url, settings,
                                                                   redis_conn):
    ids = fleet.ids[:2]
    run = start_run(client, auth, tenants=ids, concurrency=1, max_failures=1)
    lost = _abandon_first_item(ctx, settings, redis_conn, run["id"])
    run_parallel_workers(1)  # `tenantctl worker` reconciles runs at start-up
    done = get_run(client, auth, run["id"])
    items = items_by_tenant(done)
    assert items[lost]["status"] == "failed" and "the worker running it is gone" in items[lost]["error"]
    assert items[ids[1]]["status"] == "succeeded" and done["status"] == "failed"
    assert tenant(client, auth, lost)["status"] == "active"


def test_items_lost_with_redis_are_enqueued_again_by_resume(fleet, client, auth, ctx, run_jobs, admin_url, settings,
                                                            redis_conn):
    ids = fleet.ids[:2]
    run = start_run(client, auth, tenants=ids, concurrency=2)
    Queue(settings.queue_name, connection=redis_conn).empty()  # Redis restarted empty
    with ctx.sessions() as session, session.begin():
        for item in session.scalars(select(MigrationRunItem).where(MigrationRunItem.run_id == run["id"])):
            item.queued_at -= timedelta(minutes=1)
    client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    run_jobs()
    assert get_run(client, auth, run["id"])["status"] == "succeeded"
    assert all(database_revision(admin_url, t) == HEAD for t in ids)


def test_tenants_that_are_not_active_are_skipped_with_the_reason(fleet, client, auth, ctx, run_jobs, admin_url):
    ids = fleet.ids[:5]
    active, suspended, failed, provisioning, late = ids
    client.post(f"/v1/tenants/{suspended}/suspend", headers=auth)
    with ctx.sessions() as session, session.begin():
        session.get(Tenant, failed).status = TenantStatus.FAILED
        session.get(Tenant, provisioning).status = TenantStatus.PROVISIONING

    run = start_run(client, auth, concurrency=1, tenants=ids)
    # Suspended after the run was created, before its turn: checked again when its item starts.
    client.post(f"/v1/tenants/{late}/suspend", headers=auth)
    run_jobs()
    done = get_run(client, auth, run["id"])
    items = items_by_tenant(done)
    assert done["status"] == "succeeded" and done["counts"]["skipped"] == 4
    assert items[active]["status"] == "succeeded"
    assert {t: items[t]["skip_reason"] for t in ids[1:]} == {
        suspended: "tenant is suspended", failed: "tenant is failed", provisioning: "tenant is provisioning",
        late: "tenant is suspended"}
    assert [database_revision(admin_url, t) for t in ids] == [HEAD, FIRST, FIRST, FIRST, FIRST]
    assert tenant(client, auth, late)["status"] == "suspended"


def test_dry_run_renders_sql_per_starting_revision_and_touches_nothing(fleet, client, auth, ctx, admin_url, settings,
                                                                      redis_conn, monkeypatch):
    ids = fleet.ids[:4]
    put_at_revision(ctx, [ids[2]], HEAD)
    client.post(f"/v1/tenants/{ids[3]}/suspend", headers=auth)

    def no_tenant_connections(self, *args, **kwargs):
        raise AssertionError("a dry run connected to a tenant database")

    with monkeypatch.context() as patch:
        patch.setattr(TenantDatabase, "_connect", no_tenant_connections)
        run = start_run(client, auth, dry_run=True, tenants=ids)
    assert run["status"] == "succeeded" and run["dry_run"] and run["counts"]["total"] == 0
    plan = {group["from_revision"]: group for group in run["result"]["plan"]}
    assert set(plan) == {FIRST, HEAD}
    assert plan[FIRST]["tenants"] == ids[:2] and "CREATE TABLE appointments" in plan[FIRST]["sql"]
    assert plan[HEAD]["tenants"] == [ids[2]] and plan[HEAD]["sql"] == ""
    assert run["result"]["skipped"] == [{"tenant_id": ids[3], "reason": "tenant is suspended"}]
    assert Queue(settings.queue_name, connection=redis_conn).count == 0
    assert [database_revision(admin_url, t) for t in ids] == [FIRST, FIRST, HEAD, FIRST]
    assert client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth).status_code == 409


def _lock_retries(ctx, tenant_id: str) -> int:
    with ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(AuditEvent).where(
            AuditEvent.action == "migration_run.item_lock_retry", AuditEvent.tenant_id == tenant_id))


def test_a_tenant_held_busy_forever_fails_after_bounded_lock_timeout_retries(fleet, client, auth, ctx, run_jobs,
                                                                             admin_url, monkeypatch):
    """lock_timeout: DDL queued behind an open transaction would block every query on the table behind it."""
    monkeypatch.setenv("MIGRATION_LOCK_RETRIES", "2")
    monkeypatch.setenv("MIGRATION_LOCK_BACKOFF_MS", "100")
    ids = fleet.ids[:2]
    busy = ids[0]
    retries_before = _lock_retries(ctx, busy)
    with psycopg.connect(admin_url, dbname=database_name(busy)) as app_session:
        app_session.execute("SELECT count(*) FROM leads")  # an open transaction holding ACCESS SHARE on leads
        run = start_run(client, auth, tenants=ids, concurrency=1, max_failures=1, lock_timeout_seconds=0.2)
        run_jobs()
        app_session.rollback()
    done = get_run(client, auth, run["id"])
    item = items_by_tenant(done)[busy]
    assert item["status"] == "failed" and "lock timeout" in item["error"] and item["to_revision"] == FIRST
    assert "on each of 3 attempts" in item["error"] and item["from_revision"] == FIRST
    assert _lock_retries(ctx, busy) - retries_before == 2  # two retries, then it counts as a failure
    assert items_by_tenant(done)[ids[1]]["status"] == "succeeded"
    assert database_revision(admin_url, busy) == FIRST
    assert tenant(client, auth, busy)["status"] == "active"
    client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    run_jobs()
    assert get_run(client, auth, run["id"])["status"] == "succeeded"


def test_a_tenant_busy_for_a_while_is_migrated_after_lock_timeout_retries(fleet, client, auth, ctx, run_jobs,
                                                                          admin_url, monkeypatch):
    monkeypatch.setenv("MIGRATION_LOCK_RETRIES", "5")
    monkeypatch.setenv("MIGRATION_LOCK_BACKOFF_MS", "300")
    busy = fleet.ids[0]
    retries_before = _lock_retries(ctx, busy)
    app_session = psycopg.connect(admin_url, dbname=database_name(busy))
    app_session.execute("SELECT count(*) FROM leads")

    def end_the_transaction_after_a_retry() -> None:
        # The application's transaction ends once the migration has given up on it at least once.
        deadline = time.monotonic() + 60
        while _lock_retries(ctx, busy) == retries_before and time.monotonic() < deadline:
            time.sleep(0.02)
        app_session.rollback()

    releaser = threading.Thread(target=end_the_transaction_after_a_retry)
    try:
        run = start_run(client, auth, tenants=[busy], concurrency=1, max_failures=0, lock_timeout_seconds=0.2)
        releaser.start()
        run_jobs()
    finally:
        releaser.join()
        app_session.close()
    done = get_run(client, auth, run["id"])
    item = items_by_tenant(done)[busy]
    assert done["status"] == "succeeded", done
    assert (item["status"], item["from_revision"], item["to_revision"], item["attempts"]) == (
        "succeeded", FIRST, HEAD, 1)
    assert _lock_retries(ctx, busy) > retries_before
    assert database_revision(admin_url, busy) == HEAD


def test_a_tenant_locked_by_other_work_fails_to_start_and_the_lane_goes_on(fleet, client, auth, ctx, run_jobs,
                                                                           settings, admin_url):
    ids = fleet.ids[:3]
    busy = ids[1]
    run = start_run(client, auth, tenants=ids, concurrency=1, max_failures=1, lock_timeout_seconds=0.2)
    with ctx.locks.hold(busy):  # another job works on this tenant for the whole run
        run_jobs()  # one lane: the first tenant, then the busy one (waits, gives up), then the third
    done = get_run(client, auth, run["id"])
    items = items_by_tenant(done)
    assert items[busy]["status"] == "failed" and items[busy]["error"].startswith("could not start")
    assert [items[t]["status"] for t in (ids[0], ids[2])] == ["succeeded", "succeeded"]
    assert [database_revision(admin_url, t) for t in ids] == [HEAD, FIRST, HEAD]
    with ctx.sessions() as session:  # the lane let go of every tenant lock it took
        assert session.scalar(select(func.count()).select_from(text("pg_locks"))
                              .where(text("locktype = 'advisory'"))) == 0

    client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    run_jobs()
    assert get_run(client, auth, run["id"])["status"] == "succeeded"
    assert database_revision(admin_url, busy) == HEAD
