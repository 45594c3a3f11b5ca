"""The migration run API's edges (auth, validation, idempotency, listing), backup_first, the template, the drift report."""
from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

import tenant_migrations

from control_plane.adapters.tenant_template import TenantTemplate
from control_plane.catalog.models import Tenant, TokenRole
from control_plane.naming import database_name, template_database_name
from control_plane.services.auth import create_token
from helpers import tenant
from migration_fleet import FIRST, HEAD, Fleet, database_revision, get_run, items_by_tenant, put_at_revision, start_run
from migration_fleet import clean_world  # noqa: F401 (fixture: replaces conftest's teardown here)


@pytest.fixture(scope="module")
def module_fleet(app, ctx, settings, redis_conn):
    fleet = Fleet.provision(app, ctx, settings, redis_conn, [f"mr-api-{n}" for n in range(1, 7)])
    yield fleet
    fleet.destroy()


@pytest.fixture
def fleet(module_fleet):
    yield module_fleet.ids[:2]
    module_fleet.reset()


def test_runs_need_a_super_admin(client, ctx, fleet):
    assert client.post("/v1/migration-runs", json={}).status_code == 401
    tenant_token = create_token(ctx, TokenRole.TENANT_ADMIN, "clinic", fleet[0])[1]
    headers = {"Authorization": f"Bearer {tenant_token}"}
    for method, path in (("post", "/v1/migration-runs"), ("get", "/v1/migration-runs"),
                         ("get", "/v1/migrations/drift")):
        response = getattr(client, method)(path, json={} if method == "post" else None, headers=headers)
        assert response.status_code == 403 and response.mimetype == "application/problem+json"


@pytest.mark.parametrize("body,field", [
    ({"target": "nope"}, "target"), ({"target": "base"}, "target"), ({"concurrency": 0}, "concurrency"),
    ({"concurrency": 10_000}, "concurrency"), ({"canary": -1}, "canary"), ({"max_failures": -1}, "max_failures"),
    ({"tenants": ["mr-api-1", "mr-api-1"]}, "tenants"), ({"tenants": ["Bad Id"]}, "tenants"),
    ({"tenants": ["mr-api-missing"]}, "tenants"), ({"statuses": ["sleeping"]}, "statuses"),
    ({"lock_timeout_seconds": 0}, "lock_timeout_seconds"), ({"database": "postgres"}, "database"),
])
def test_invalid_runs_are_422_naming_the_field(client, auth, body, field):
    response = client.post("/v1/migration-runs", json=body, headers=auth)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"]["json"]


def test_idempotency_key_replays_the_run_and_refuses_another_body(client, auth, fleet):
    headers = {**auth, "Idempotency-Key": "deploy-42"}
    first = client.post("/v1/migration-runs", json={"tenants": fleet, "concurrency": 1}, headers=headers)
    again = client.post("/v1/migration-runs", json={"tenants": fleet, "concurrency": 1}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert first.get_json()["id"] == again.get_json()["id"]
    assert client.get("/v1/migration-runs", headers=auth).get_json()[0]["id"] == first.get_json()["id"]
    assert len(client.get("/v1/migration-runs", headers=auth).get_json()) == 1
    other = client.post("/v1/migration-runs", json={"tenants": fleet, "concurrency": 2}, headers=headers)
    assert other.status_code == 422

    # Cancel and resume honour the key too: a replay answers the run again, another request with it is 422.
    run_id = first.get_json()["id"]
    stop = {**auth, "Idempotency-Key": "stop-42"}
    assert client.post(f"/v1/migration-runs/{run_id}/cancel", headers=stop).status_code == 200
    assert client.post(f"/v1/migration-runs/{run_id}/cancel", headers=stop).status_code == 200
    reused = client.post(f"/v1/migration-runs/{run_id}/resume", headers=stop)
    assert reused.status_code == 422 and "Idempotency-Key" in reused.get_json()["errors"]["headers"]


def test_list_read_and_conflicts(client, auth, run_jobs, fleet):
    run = start_run(client, auth, tenants=fleet, concurrency=2)
    listed = client.get("/v1/migration-runs?status=running", headers=auth)
    assert [r["id"] for r in listed.get_json()] == [run["id"]] and "X-Pagination" in listed.headers
    run_jobs()
    assert client.get("/v1/migration-runs?status=running", headers=auth).get_json() == []
    done = get_run(client, auth, run["id"])
    assert done["counts"]["succeeded"] == 2 and done["requested_by"] == "token:tests"
    assert get_run(client, auth, run["id"], status="failed")["items"] == []
    assert client.get("/v1/migration-runs/nope", headers=auth).status_code == 404
    assert client.get(f"/v1/migration-runs/{run['id']}?status=bogus", headers=auth).status_code == 422
    for action in ("resume", "cancel"):
        response = client.post(f"/v1/migration-runs/{run['id']}/{action}", headers=auth)
        assert response.status_code == 409 and "succeeded" in response.get_json()["detail"]
    assert client.post("/v1/migration-runs/nope/resume", headers=auth).status_code == 404
    paths = client.get("/openapi.json").get_json()["paths"]
    assert {"/v1/migration-runs", "/v1/migration-runs/{run_id}", "/v1/migration-runs/{run_id}/resume",
            "/v1/migration-runs/{run_id}/cancel", "/v1/migrations/drift"} <= set(paths)


def test_backup_first_is_refused_without_a_backups_feature(client, auth, ctx, monkeypatch):
    monkeypatch.setattr(ctx, "pre_migration_backup", None)
    response = client.post("/v1/migration-runs", json={"backup_first": True}, headers=auth)
    assert response.status_code == 422 and "backup_first" in response.get_json()["errors"]["json"]


def test_a_destructive_revision_makes_the_run_back_up_first_for_real_and_a_failed_backup_skips(
        client, auth, ctx, run_jobs, admin_url, fleet, monkeypatch):
    # As if HEAD's revision file said `destructive = True` (read through Alembic's script directory).
    monkeypatch.setattr(tenant_migrations.script_directory().get_revision(HEAD).module, "destructive", True,
                        raising=False)
    backed, unbackable = fleet
    # pg_dump runs as the tenant's role: a table that role may not read makes the real backup fail.
    with psycopg.connect(admin_url, dbname=database_name(unbackable), autocommit=True) as conn:
        conn.execute("CREATE TABLE not_for_the_tenant (x int)")
    try:
        run = start_run(client, auth, tenants=fleet, max_failures=0)
        assert run["backup_first"] is True and run["result"] == {"destructive_revisions": [HEAD]}
        run_jobs()
    finally:
        with psycopg.connect(admin_url, dbname=database_name(unbackable), autocommit=True) as conn:
            conn.execute("DROP TABLE not_for_the_tenant")
    done = get_run(client, auth, run["id"])
    items = items_by_tenant(done)
    assert done["status"] == "succeeded", done  # a skipped tenant is not a failed migration
    assert (done["counts"]["succeeded"], done["counts"]["skipped"]) == (1, 1)

    backup = client.get(f"/v1/backups/{items[backed]['backup']['backup_id']}", headers=auth)
    assert backup.status_code == 200, backup.get_json()
    manifest = backup.get_json()
    assert (manifest["tenant_id"], manifest["status"], manifest["trigger"]) == (backed, "completed", "pre-migrate")
    assert manifest["schema_revision"] == FIRST  # taken before the migration
    assert items[backed]["status"] == "succeeded" and database_revision(admin_url, backed) == HEAD

    assert items[unbackable]["status"] == "skipped" and items[unbackable]["error"] is None
    assert items[unbackable]["skip_reason"].startswith("pre-migration backup failed")
    assert f"pg_dump of {database_name(unbackable)} exited with status 1" in items[unbackable]["skip_reason"]
    assert database_revision(admin_url, unbackable) == FIRST  # no backup, no migration
    assert tenant(client, auth, unbackable)["status"] == "active"


def test_backup_first_can_be_turned_off_and_is_off_when_nothing_destructive_is_crossed(client, auth, fleet,
                                                                                        monkeypatch):
    assert start_run(client, auth, tenants=fleet, dry_run=True)["backup_first"] is False
    monkeypatch.setattr(tenant_migrations.script_directory().get_revision(HEAD).module, "destructive", True,
                        raising=False)
    assert tenant_migrations.destructive_revisions(FIRST, HEAD) == [HEAD]
    assert tenant_migrations.destructive_revisions(HEAD, HEAD) == []
    assert tenant_migrations.destructive_revisions(HEAD, FIRST) == [HEAD]  # undoing it counts too
    assert tenant_migrations.destructive_revisions(None, FIRST) == []
    assert start_run(client, auth, tenants=fleet, dry_run=True, backup_first=False)["backup_first"] is False
    assert start_run(client, auth, tenants=fleet, dry_run=True)["backup_first"] is True


def test_a_run_to_head_rebuilds_the_provisioning_template(client, auth, run_jobs, fleet, monkeypatch, tmp_path):
    calls = tmp_path / "templates"

    def fake_ensure(self, revision):
        calls.open("a").write(revision + "\n")
        return template_database_name(revision)

    monkeypatch.setattr(TenantTemplate, "ensure", fake_ensure)
    monkeypatch.setenv("PROVISION_FROM_TEMPLATE", "true")
    run = start_run(client, auth, tenants=fleet)
    run_jobs()
    done = get_run(client, auth, run["id"])
    assert done["status"] == "succeeded"
    assert done["result"]["templates"] == {"default": {"template": template_database_name(HEAD)}}
    assert calls.read_text().split() == [HEAD]

    backwards = start_run(client, auth, tenants=fleet, target=FIRST)  # does not move head: no rebuild
    run_jobs()
    assert "templates" not in get_run(client, auth, backwards["id"])["result"]  # only its profile
    assert calls.read_text().split() == [HEAD]


def test_drift_report_finds_every_kind_of_drift(client, auth, ctx, admin_url, module_fleet):
    synced, behind, stale, future, gone, paused = ids = module_fleet.ids
    put_at_revision(ctx, [synced, paused], HEAD)
    client.post(f"/v1/tenants/{paused}/suspend", headers=auth)
    with ctx.sessions() as session, session.begin():  # someone downgraded it by hand: the catalog says head
        session.get(Tenant, stale).schema_revision = HEAD
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false").format(
            sql.Identifier(database_name(gone))))
    future_version = "UPDATE alembic_version SET version_num = %s"
    with psycopg.connect(admin_url, dbname=database_name(future), autocommit=True) as conn:
        conn.execute(future_version, ("0099_from_a_newer_release",))
    try:
        response = client.get("/v1/migrations/drift", headers=auth)
    finally:
        with psycopg.connect(admin_url, dbname=database_name(future), autocommit=True) as conn:
            conn.execute(future_version, (FIRST,))
        module_fleet.reset()

    assert response.status_code == 200
    report = response.get_json()
    assert report["head"] == HEAD and report["checked"] == len(ids) and report["in_sync"] == 2
    found = {entry["tenant_id"]: entry for entry in report["drifted"]}
    assert {t: found[t]["problems"] for t in found} == {
        behind: ["not_at_head"], stale: ["not_at_head", "catalog_mismatch"],
        future: ["unknown_revision", "catalog_mismatch"], gone: ["unreachable"]}
    assert found[stale]["catalog_revision"] == HEAD and found[stale]["database_revision"] == FIRST
    assert "not currently accepting connections" in found[gone]["error"]
    assert report["by_revision"] == {HEAD: 2, FIRST: 2, "0099_from_a_newer_release": 1}
