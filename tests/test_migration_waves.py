"""Staged waves of migration runs (pauses, health gates, continue) and rollback of a failed run, on real
PostgreSQL, RQ and the real backup and restore paths."""
from __future__ import annotations

import shutil
from datetime import timedelta

import psycopg
import psycopg.sql
import pytest
from sqlalchemy import update

import devstack
import tenant_migrations
from control_plane.catalog.migration_run_models import MigrationRun
from control_plane.catalog.models import Tenant, utcnow
from control_plane.naming import database_name, role_name
from control_plane.services import migration_gates
from helpers import one, tenant, wait_until
from migration_fleet import (FIRST, HEAD, Fleet, clone_fleet, database_revision, get_run, items_by_tenant,
                             running_workers, set_read_only, start_run)
from migration_fleet import clean_world  # noqa: F401 (fixture: replaces conftest's teardown here)

BROKEN_CHECK = "select count(*) from leads where full_name like 'broken%'"


@pytest.fixture(scope="module")
def module_fleet(app, ctx, settings, redis_conn):
    fleet = Fleet.provision(app, ctx, settings, redis_conn, [f"mw-{n}" for n in range(1, 7)], workers=2)
    yield fleet
    fleet.destroy()


@pytest.fixture
def fleet(module_fleet, admin_url):
    yield module_fleet.ids
    module_fleet.reset()
    for tenant_id in module_fleet.ids:
        _sql(admin_url, tenant_id, "DELETE FROM leads WHERE full_name LIKE 'broken%' OR full_name = 'after'")
    live = {database_name(t) for t in module_fleet.ids}
    with psycopg.connect(admin_url, autocommit=True) as conn:  # what restores retired
        for (name,) in conn.execute(r"SELECT datname FROM pg_database WHERE datname LIKE 'tenant\_mw\_%'").fetchall():
            if name not in live:
                conn.execute(psycopg.sql.SQL("DROP DATABASE {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


def _sql(admin_url: str, tenant_id: str, query: str) -> None:
    with psycopg.connect(admin_url, dbname=database_name(tenant_id), autocommit=True) as conn:
        conn.execute(query)


def _break(admin_url: str, tenant_id: str) -> None:
    """Data the health check finds: a lead the check counts."""
    _sql(admin_url, tenant_id, "INSERT INTO leads (full_name) VALUES ('broken lead')")


def test_a_timed_pause_then_a_gate_failing_in_wave_two_never_starts_wave_three(
        fleet, client, auth, ctx, run_jobs, admin_url):
    _break(admin_url, fleet[3])  # in wave 2
    waves = [{"percent": 20, "wait_seconds": 3600}, {"percent": 60}, {"percent": 100}]
    run = start_run(client, auth, tenants=fleet, concurrency=2, waves=waves, check=BROKEN_CHECK)
    assert (run["current_wave"], run["wave_status"], run["counts"]["queued"]) == (1, "running", 2)
    run_jobs()

    paused = get_run(client, auth, run["id"])
    assert (paused["status"], paused["current_wave"], paused["wave_status"]) == ("running", 1, "waiting")
    first, second, third = paused["wave_progress"]
    assert (first["status"], first["total"], first["counts"]["succeeded"]) == ("waiting", 2, 2)
    assert first["gate"]["passed"] is True and first["gate"]["checked"] == 2
    assert (second["status"], second["total"], third["status"], third["total"]) == ("not started", 2,
                                                                                  "not started", 2)
    assert [database_revision(admin_url, t) for t in fleet] == [HEAD, HEAD] + [FIRST] * 4
    assert items_by_tenant(paused)[fleet[0]]["check_result"] == {"ok": True, "value": 0}

    # The sweeper's tick leaves a pause alone until it is over...
    migration_gates.tick(ctx)
    assert get_run(client, auth, run["id"])["wave_status"] == "waiting"
    with ctx.sessions() as session, session.begin():  # ...as if the hour had passed
        session.execute(update(MigrationRun).where(MigrationRun.id == run["id"])
                        .values(wave_ready_at=utcnow() - timedelta(seconds=1)))
    assert migration_gates.tick(ctx) == 1
    assert get_run(client, auth, run["id"])["current_wave"] == 2
    run_jobs()

    done = get_run(client, auth, run["id"])
    assert (done["status"], done["stopped_by"], done["wave_status"]) == ("failed", "gate", "failed")
    assert done["error"].startswith(f"wave 2 of 3: health gate failed on 1 of 2 tenant(s) ({fleet[3]}: returned 1)")
    second = done["wave_progress"][1]
    assert second["status"] == "failed" and second["gate"]["failed"][0]["tenant_id"] == fleet[3]
    assert done["wave_progress"][2]["status"] == "not started"
    items = items_by_tenant(done)
    assert items[fleet[3]]["check_result"] == {"ok": False, "value": 1} and items[fleet[3]]["status"] == "succeeded"
    for rest in fleet[4:]:  # wave 3 never started
        assert items[rest]["status"] == "pending" and items[rest]["started_at"] is None and items[rest]["wave"] == 3
        assert database_revision(admin_url, rest) == FIRST
    assert done["rollback_run_id"] is None  # not asked for


def test_a_manual_pause_waits_for_continue_which_honours_the_idempotency_key(fleet, client, auth, ctx, run_jobs,
                                                                             admin_url):
    ids = fleet[:3]
    run = start_run(client, auth, tenants=ids, waves=[{"tenants": [ids[2]], "manual": True}, {"percent": 100}])
    early = client.post(f"/v1/migration-runs/{run['id']}/continue", headers=auth)
    assert early.status_code == 409 and "not paused" in early.get_json()["detail"]
    run_jobs()
    paused = get_run(client, auth, run["id"])
    assert (paused["wave_status"], paused["wave_ready_at"]) == ("waiting", None)
    assert [database_revision(admin_url, t) for t in ids] == [FIRST, FIRST, HEAD]
    migration_gates.tick(ctx)  # a manual pause has no end of its own
    assert get_run(client, auth, run["id"])["wave_status"] == "waiting"

    headers = {**auth, "Idempotency-Key": "wave-2-go"}
    go = client.post(f"/v1/migration-runs/{run['id']}/continue", headers=headers)
    again = client.post(f"/v1/migration-runs/{run['id']}/continue", headers=headers)
    assert go.status_code == again.status_code == 202 and go.headers["Location"] == f"/v1/migration-runs/{run['id']}"
    assert go.get_json()["current_wave"] == 2 and again.get_json()["id"] == run["id"]
    assert client.post(f"/v1/migration-runs/{run['id']}/continue", headers=auth).status_code == 409
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert done["status"] == "succeeded" and [w["status"] for w in done["wave_progress"]] == ["passed", "passed"]
    assert all(database_revision(admin_url, t) == HEAD for t in ids)
    assert client.post("/v1/migration-runs/nope/continue", headers=auth).status_code == 404


@pytest.mark.parametrize("body,field", [
    ({"waves": [{"percent": 10}, {"percent": 5}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": 10}, {"percent": 50}]}, "waves"),
    ({"waves": [{"percent": 0}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": 10, "tenants": ["mw-1"]}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": 100, "wait_seconds": 5}]}, "waves"),
    ({"waves": [{"percent": 10, "wait_seconds": -1}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": 10, "wait_seconds": 10, "manual": True}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": 10, "max_failures": -1}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": 10, "max_error_rate": 2}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": 10, "colour": "red"}, {"percent": 100}]}, "waves"),
    ({"waves": [{"percent": n} for n in range(1, 23)] + [{"percent": 100}]}, "waves"),
    ({"waves": []}, "waves"),
    ({"waves": [{"tenants": ["mw-1"]}, {"tenants": ["mw-1"]}]}, "waves"),
    ({"tenants": ["mw-1", "mw-2"], "waves": [{"tenants": ["mw-3"]}, {"percent": 100}]}, "waves"),
    ({"tenants": ["mw-1", "mw-2"], "waves": [{"tenants": ["mw-1"]}]}, "waves"),
    ({"canary": 1, "waves": [{"percent": 100}]}, "canary"),
    ({"check": "x" * 2001}, "check"), ({"check": "select 1\x00"}, "check"), ({"check": "select\x1b 1"}, "check"),
    ({"check": ""}, "check"), ({"check_timeout_seconds": 0}, "check_timeout_seconds"),
    ({"rollback_on_failure": "maybe"}, "rollback_on_failure"),
])
def test_invalid_waves_and_checks_are_422_naming_the_field(client, auth, fleet, body, field):
    response = client.post("/v1/migration-runs", json=body, headers=auth)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"], response.get_json()


def test_a_run_stopped_by_its_budget_rolls_back_by_downgrade_when_it_asked(fleet, client, auth, run_jobs,
                                                                           admin_url):
    ids = fleet[:4]
    set_read_only(admin_url, ids[3], True)  # fails in wave 2
    run = start_run(client, auth, tenants=ids, concurrency=1, rollback_on_failure=True,
                    waves=[{"percent": 50}, {"percent": 100, "max_failures": 0}])
    run_jobs()  # the run, then its rollback run, which the run's end started

    done = get_run(client, auth, run["id"])
    assert (done["status"], done["stopped_by"]) == ("failed", "budget")
    assert done["error"].startswith("wave 2 of 2: failure budget exhausted: 1 tenant(s) failed")
    rollback = get_run(client, auth, done["rollback_run_id"])
    assert (rollback["kind"], rollback["rollback_of"], rollback["status"]) == ("rollback", run["id"], "succeeded")
    items = items_by_tenant(rollback)
    assert sorted(items) == sorted(ids[:3])  # the failed tenant never moved: nothing to bring back
    for tenant_id in ids[:3]:
        assert (items[tenant_id]["rollback_method"], items[tenant_id]["status"]) == ("downgrade", "succeeded")
        assert (items[tenant_id]["from_revision"], items[tenant_id]["to_revision"]) == (HEAD, FIRST)
        assert database_revision(admin_url, tenant_id) == FIRST
        assert (tenant(client, auth, tenant_id)["schema_revision"], tenant(client, auth, tenant_id)["status"]) == (
            FIRST, "active")
    resumed = client.post(f"/v1/migration-runs/{run['id']}/resume", headers=auth)
    assert resumed.status_code == 409 and "rolled back" in resumed.get_json()["detail"]
    again = client.post(f"/v1/migration-runs/{run['id']}/rollback", headers=auth)
    assert again.status_code == 409 and done["rollback_run_id"] in again.get_json()["detail"]


def test_a_revision_that_cannot_downgrade_is_rolled_back_by_restoring_the_pre_migration_backup(
        fleet, client, auth, ctx, settings, run_jobs, admin_url, monkeypatch):
    # As if HEAD's revision file said `destructive = True` and `downgradable = False`: the run backs up
    # first (item 3), and its rollback must restore those backups rather than downgrade.
    module = tenant_migrations.script_directory().get_revision(HEAD).module
    monkeypatch.setattr(module, "destructive", True, raising=False)
    monkeypatch.setattr(module, "downgradable", False, raising=False)
    assert tenant_migrations.irreversible_revisions(HEAD, FIRST) == [HEAD]
    ids = fleet[:3]
    _break(admin_url, ids[2])
    run = start_run(client, auth, tenants=ids, concurrency=2, check=BROKEN_CHECK,
                    waves=[{"percent": 60}, {"percent": 100}])
    assert run["backup_first"] is True
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert (done["status"], done["stopped_by"]) == ("failed", "gate") and done["error"].startswith("wave 2 of 2")
    assert all(database_revision(admin_url, t) == HEAD for t in ids)
    for tenant_id in ids:  # written after the migration: a restore brings back the data as it was before it
        _sql(admin_url, tenant_id, "INSERT INTO leads (full_name) VALUES ('after')")
    # One tenant's backup is refused at restore (its checksum no longer matches): it must stay intact.
    refused = items_by_tenant(done)[ids[1]]["backup"]["backup_id"]
    with psycopg.connect(settings.catalog_database_url, autocommit=True) as conn:
        conn.execute("UPDATE backups SET sha256 = %s WHERE id = %s", ("0" * 64, refused))

    headers = {**auth, "Idempotency-Key": "undo-it"}
    response = client.post(f"/v1/migration-runs/{run['id']}/rollback", headers=headers)
    assert response.status_code == 202, response.get_json()
    rollback_id = response.get_json()["id"]
    assert client.post(f"/v1/migration-runs/{run['id']}/rollback", headers=headers).get_json()["id"] == rollback_id
    run_jobs()

    rollback = get_run(client, auth, rollback_id)
    items = items_by_tenant(rollback)
    assert rollback["status"] == "failed" and rollback["counts"]["succeeded"] == 2, rollback
    for tenant_id in (ids[0], ids[2]):
        item = items[tenant_id]
        assert (item["rollback_method"], item["status"], item["to_revision"]) == ("restore", "succeeded", FIRST)
        operation = client.get(f"/v1/operations/{item['operation_id']}", headers=auth).get_json()
        assert (operation["kind"], operation["status"]) == ("restore", "succeeded")
        assert operation["result"]["backup_id"] == items_by_tenant(done)[tenant_id]["backup"]["backup_id"]
        assert database_revision(admin_url, tenant_id) == FIRST
        assert one(admin_url, "SELECT count(*) FROM leads WHERE full_name = 'after'",
                   dbname=database_name(tenant_id)) == 0  # restored, not downgraded
        assert tenant(client, auth, tenant_id)["schema_revision"] == FIRST
    failed = items[ids[1]]
    assert failed["status"] == "failed" and failed["error"].startswith("rollback by restore failed")
    assert "checksum" in failed["error"] or "SHA-256" in failed["error"], failed["error"]
    # Never half-way: the live database is the migrated one, untouched, and the tenant is usable.
    assert database_revision(admin_url, ids[1]) == HEAD
    assert one(admin_url, "SELECT count(*) FROM leads WHERE full_name = 'after'", dbname=database_name(ids[1])) == 1
    assert (tenant(client, auth, ids[1])["status"], tenant(client, auth, ids[1])["schema_revision"]) == ("active",
                                                                                                          HEAD)


@pytest.fixture
def own_server(client, auth, settings):
    """A throwaway PostgreSQL server registered for one test: stopped and removed afterwards, which is far
    cheaper than hundreds of DROP DATABASE (each one forces a checkpoint)."""
    root = devstack.scratch_dir("waves")
    server = devstack.PostgresServer(root / "pg", fast=True)
    server.start()
    try:
        response = client.post("/v1/servers", headers=auth, json={"name": "waves", "admin_url": server.url})
        assert response.status_code == 201, response.get_json()
        yield "waves"
    finally:
        with psycopg.connect(settings.catalog_database_url, autocommit=True) as conn:
            conn.execute("DELETE FROM migration_runs")
            conn.execute("DELETE FROM tenants WHERE server_name = 'waves'")
            conn.execute("DELETE FROM database_servers WHERE name = 'waves'")
        server.stop(immediate=True)  # its data goes next: no shutdown checkpoint
        shutil.rmtree(root, ignore_errors=True)


def test_two_hundred_tenants_through_three_waves_at_concurrency_four(ctx, client, auth, own_server, admin_url):
    ids = [f"mw-many-{n:03d}" for n in range(200)]
    clone_fleet(ctx, ids, FIRST, own_server)
    run = start_run(client, auth, tenants=ids, concurrency=4, check="select count(*) from leads where score < 0",
                    waves=[{"percent": 1}, {"percent": 10}, {"percent": 100}])
    with running_workers(4):
        wait_until(lambda: get_run(client, auth, run["id"])["status"] != "running", "the run to end", timeout=300)

    done = get_run(client, auth, run["id"])
    assert done["status"] == "succeeded", done["error"]
    assert done["counts"]["succeeded"] == 200 and 1 <= done["peak_concurrency"] <= 4
    waves = done["wave_progress"]
    assert [(w["total"], w["counts"]["succeeded"], w["status"]) for w in waves] == [
        (2, 2, "passed"), (18, 18, "passed"), (180, 180, "passed")]
    assert [w["gate"]["checked"] for w in waves] == [2, 18, 180]
    # A wave starts only once the one before it has ended.
    items = done["items"]
    for wave in (1, 2):
        ended = max(i["finished_at"] for i in items if i["wave"] == wave)
        assert ended < min(i["started_at"] for i in items if i["wave"] == wave + 1)
    with ctx.sessions() as session:
        databases = [ctx.database_of(session.get(Tenant, t)) for t in ids]
    assert {database.current_revision() for database in databases} == {HEAD}


def test_the_check_runs_read_only_as_the_tenant_one_statement_bounded_in_time(fleet, ctx, admin_url):
    with ctx.sessions() as session:
        database = ctx.database_of(session.get(Tenant, fleet[0]))
    _break(admin_url, fleet[0])
    assert migration_gates.check_tenant(database, BROKEN_CHECK, 5000) == {"ok": False, "value": 1}
    assert migration_gates.check_tenant(database, "select current_user", 5000) == {"ok": False,
                                                                                  "value": role_name(fleet[0])}
    for query, error in (("delete from leads", "read-only transaction"),
                         ("select 0; delete from leads", "multiple commands"),
                         ("commit; set default_transaction_read_only = off; delete from leads", "multiple commands"),
                         ("select pg_sleep(5)", "statement timeout"),
                         ("select count(*) from nowhere", "does not exist")):
        verdict = migration_gates.check_tenant(database, query, 200)
        assert verdict["ok"] is False and error in verdict["error"], (query, verdict)
    assert one(admin_url, "SELECT count(*) FROM leads", dbname=database_name(fleet[0])) >= 1  # nothing deleted

