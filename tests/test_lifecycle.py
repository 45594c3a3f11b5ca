"""Suspend, resume, migrate (up and down), delete, retry, and crash safety at every provisioning step."""
from __future__ import annotations

import os

import pytest

import tenant_migrations
from control_plane.adapters.postgres_admin import PostgresAdmin
from control_plane.adapters.tenant_database import TenantDatabase
from control_plane.services.kinds import provision
from helpers import create_tenant, databases, one, operation, roles, tenant

HEAD = tenant_migrations.head_revision()
FIRST = tenant_migrations.known_revisions()[0]


@pytest.fixture
def active(client, auth, run_jobs):
    create_tenant(client, auth, "life")
    run_jobs()
    assert tenant(client, auth, "life")["status"] == "active"
    return "life"


def test_suspend_resume_transitions(client, auth, active):
    suspended = client.post("/v1/tenants/life/suspend", headers=auth)
    assert suspended.status_code == 200 and suspended.get_json()["status"] == "suspended"
    assert client.post("/v1/tenants/life/resume", headers=auth).get_json()["status"] == "active"
    create_tenant(client, auth, "not-ready")
    refused = client.post("/v1/tenants/not-ready/suspend", headers=auth)
    assert refused.status_code == 409 and refused.mimetype == "application/problem+json"
    assert "provisioning" in refused.get_json()["detail"]


def test_migrate_down_and_back_up(client, auth, run_jobs, admin_url, active):
    down = client.post("/v1/tenants/life/migrate", json={"target": FIRST}, headers=auth)
    assert down.status_code == 202 and down.headers["Location"] == f"/v1/operations/{down.get_json()['id']}"
    assert tenant(client, auth, "life")["status"] == "migrating"
    run_jobs()
    assert operation(client, auth, down.get_json()["id"])["status"] == "succeeded"
    assert tenant(client, auth, "life")["schema_revision"] == FIRST
    assert one(admin_url, "SELECT version_num FROM alembic_version", dbname="tenant_life_db") == FIRST
    assert one(admin_url, "SELECT to_regclass('appointments')", dbname="tenant_life_db") is None

    client.post("/v1/tenants/life/migrate", json={"target": "head"}, headers=auth)
    run_jobs()
    body = tenant(client, auth, "life")
    assert body["status"] == "active" and body["schema_revision"] == HEAD
    assert one(admin_url, "SELECT version_num FROM alembic_version", dbname="tenant_life_db") == HEAD


def test_migrate_to_unknown_revision_is_422(client, auth, active):
    response = client.post("/v1/tenants/life/migrate", json={"target": "nope"}, headers=auth)
    assert response.status_code == 422 and "target" in response.get_json()["errors"]["json"]
    assert tenant(client, auth, "life")["status"] == "active"


def test_failed_migration_keeps_the_tenant_usable(client, auth, run_jobs, monkeypatch, active):
    def broken(self, target):
        raise RuntimeError("simulated migration failure")

    monkeypatch.setattr(TenantDatabase, "migrate", broken)
    op = client.post("/v1/tenants/life/migrate", json={"target": FIRST}, headers=auth).get_json()
    run_jobs()
    failed = operation(client, auth, op["id"])
    assert failed["status"] == "failed" and "simulated migration failure" in failed["error"]
    body = tenant(client, auth, "life")
    assert body["status"] == "active" and body["schema_revision"] == HEAD


def test_delete_retires_database_and_keeps_the_record(client, auth, run_jobs, admin_url, active):
    client.patch("/v1/tenants/life", json={"domains": ["life.example.com"]}, headers=auth)
    response = client.delete("/v1/tenants/life", headers=auth)
    assert response.status_code == 202
    assert tenant(client, auth, "life")["status"] == "deleting"
    run_jobs()
    done = operation(client, auth, response.get_json()["id"])
    assert done["status"] == "succeeded"
    # Kept for the grace period under its retired name (test_undelete.py), until the prune or a purge.
    assert databases(admin_url, "tenant_life%") == {done["result"]["retired_database"]}
    body = tenant(client, auth, "life")
    assert body["status"] == "deleted" and body["domains"] == []
    # The domain is free again; the id stays taken by the deleted record.
    assert client.post("/v1/tenants", headers=auth, json={
        "id": "life", "name": "x", "admin_email": "a@b.example"}).status_code == 409
    assert client.delete("/v1/tenants/life", headers=auth).status_code == 409
    assert client.patch("/v1/tenants/life", json={"name": "Zombie"}, headers=auth).status_code == 409


def test_patch_changes_name_plan_and_domains(client, auth):
    create_tenant(client, auth, "patchy", domains=["old.example.com"])
    create_tenant(client, auth, "holder", domains=["held.example.com"])
    assert client.post("/v1/plans", json={"name": "pro"}, headers=auth).status_code == 201  # plans are records
    body = client.patch("/v1/tenants/patchy", json={"name": "New", "plan": "pro", "domains": ["new.example.com"]},
                        headers=auth).get_json()
    assert (body["name"], body["plan"], body["domains"]) == ("New", "pro", ["new.example.com"])
    clash = client.patch("/v1/tenants/patchy", json={"domains": ["held.example.com"]}, headers=auth)
    assert clash.status_code == 409
    assert client.patch("/v1/tenants/patchy", json={"status": "active"}, headers=auth).status_code == 422
    assert client.patch("/v1/tenants/missing", json={"name": "x"}, headers=auth).status_code == 404


def _after(original, exc_factory):
    """The step runs to completion, then the job dies: the worst moment for idempotency."""
    def wrapper(*args, **kwargs):
        original(*args, **kwargs)
        raise exc_factory()
    return wrapper


def _crash():
    return RuntimeError("injected crash")


STEPS = {
    "create_role": (PostgresAdmin, "ensure_role"),
    "create_database": (PostgresAdmin, "ensure_database"),
    "restrict_access": (PostgresAdmin, "restrict_connect"),
    "migrate_schema": (TenantDatabase, "migrate"),
    "seed": (TenantDatabase, "seed"),
}


@pytest.mark.parametrize("step", [*STEPS, "activate"])
def test_crash_after_each_step_then_retry_converges(client, auth, run_jobs, monkeypatch, admin_url, step):
    with monkeypatch.context() as patch:
        if step == "activate":
            original = provision.audit.record

            def record_then_crash(session, actor, action, *args, **kwargs):
                original(session, actor, action, *args, **kwargs)
                if action == "tenant.provisioned":
                    raise _crash()

            patch.setattr(provision.audit, "record", record_then_crash)
        else:
            owner, name = STEPS[step]
            patch.setattr(owner, name, _after(getattr(owner, name), _crash))
        op = create_tenant(client, auth, "crashy")
        run_jobs()
        failed = operation(client, auth, op["id"])
        assert failed["status"] == "failed" and failed["error"].startswith(f"{step}: ")
        assert tenant(client, auth, "crashy")["status"] == "failed"

    retried = client.post(f"/v1/operations/{op['id']}/retry", headers=auth)
    assert retried.status_code == 202
    assert tenant(client, auth, "crashy")["status"] == "provisioning"
    run_jobs()
    done = operation(client, auth, op["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 2
    assert tenant(client, auth, "crashy")["status"] == "active"
    assert databases(admin_url, "tenant_crashy%") == {"tenant_crashy_db"}
    assert roles(admin_url, "tenant_crashy%") == {"tenant_crashy"}
    assert one(admin_url, "SELECT count(*) FROM users", dbname="tenant_crashy_db") == 1


def test_killed_work_horse_marks_the_operation_failed_and_retry_finishes(client, auth, run_jobs, monkeypatch, admin_url):
    def die(self, database, owner, template=None):
        os._exit(9)  # the work horse process vanishes mid-job, as with the OOM killer

    with monkeypatch.context() as patch:
        patch.setattr(PostgresAdmin, "ensure_database", die)
        op = create_tenant(client, auth, "killed")
        run_jobs()
    failed = operation(client, auth, op["id"])
    assert failed["status"] == "failed" and "worker process died" in failed["error"]
    assert client.post(f"/v1/operations/{op['id']}/retry", headers=auth).status_code == 202
    run_jobs()
    assert operation(client, auth, op["id"])["status"] == "succeeded"
    assert databases(admin_url, "tenant_killed%") == {"tenant_killed_db"}


def test_failed_tenant_can_be_deleted_without_leftovers(client, auth, run_jobs, monkeypatch, admin_url):
    with monkeypatch.context() as patch:
        patch.setattr(TenantDatabase, "migrate", _after(TenantDatabase.migrate, _crash))
        create_tenant(client, auth, "doomed")
        run_jobs()
    assert tenant(client, auth, "doomed")["status"] == "failed"
    client.delete("/v1/tenants/doomed?purge=true", headers=auth)
    run_jobs()
    assert tenant(client, auth, "doomed")["status"] == "deleted"
    assert databases(admin_url, "tenant_doomed%") == set() and roles(admin_url, "tenant_doomed%") == set()


def test_retry_refuses_an_operation_that_did_not_fail(client, auth):
    op = create_tenant(client, auth, "fine")
    response = client.post(f"/v1/operations/{op['id']}/retry", headers=auth)
    assert response.status_code == 409


def test_operation_lost_with_redis_is_redispatched(client, auth, run_jobs, ctx, settings, redis_conn):
    from datetime import timedelta

    from control_plane.catalog.models import Operation
    from control_plane.services.sweeper import sweep
    from rq import Queue

    op = create_tenant(client, auth, "lost")
    Queue(settings.queue_name, connection=redis_conn).empty()  # the job vanished (Redis restarted empty)
    with ctx.sessions() as session, session.begin():
        session.get(Operation, op["id"]).created_at -= timedelta(minutes=5)
    assert sweep(ctx).dispatched == [op["id"]]
    assert sweep(ctx).dispatched == []  # now pending in RQ: not dispatched twice
    run_jobs()
    assert operation(client, auth, op["id"])["status"] == "succeeded"
