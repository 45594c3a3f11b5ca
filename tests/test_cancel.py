"""Cancel: a queued operation at once, a running one at its next safe step with its work undone; the
tenant back to its previous status; Idempotency-Key on cancel and retry."""
from __future__ import annotations

import tenant_migrations
from backup_support import (active_tenant, back_up, backup_cleanup, databases_like, db, role, store_root,  # noqa: F401
                            tid, write_rows)
from control_plane.adapters.postgres_admin import PostgresAdmin
from control_plane.adapters.tenant_database import TenantDatabase
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.models import Operation
from control_plane.services import operations
from control_plane.services.auth import SYSTEM
from control_plane.settings import Settings
from helpers import operation, roles, tenant

FIRST = tenant_migrations.known_revisions()[0]
HEAD = tenant_migrations.head_revision()


def _cancel_after(patch, owner, name: str) -> None:
    """Once `owner.name` has run (inside the work horse), cancel the running operation, as a person would."""
    original = getattr(owner, name)

    def run_then_cancel(*args, **kwargs):
        result = original(*args, **kwargs)
        ctx = build_context(Settings.from_env(), pool_size=1)
        try:
            with ctx.sessions() as session:
                running = session.query(Operation).filter(Operation.status == "running").one()
            operations.cancel_operation(ctx, SYSTEM, running.id)
        finally:
            dispose(ctx)
        return result

    patch.setattr(owner, name, run_then_cancel)


def _cancelled(client, auth, op_id: str) -> dict:
    body = operation(client, auth, op_id)
    assert body["status"] == "cancelled", body
    return body


def test_a_queued_operation_of_each_kind_is_cancelled_at_once(client, auth, run_jobs, admin_url):
    name = tid("queued")
    created = client.post("/v1/tenants", json={"id": name, "name": "Q", "admin_email": "a@q.example"}, headers=auth)
    cancelled = client.post(f"/v1/operations/{created.get_json()['id']}/cancel", headers=auth)
    assert cancelled.status_code == 202 and cancelled.get_json()["status"] == "cancelled"
    assert tenant(client, auth, name)["status"] == "failed"  # nothing was created; deletable
    assert client.post(f"/v1/operations/{created.get_json()['id']}/cancel", headers=auth).status_code == 409

    other = tid("qactive")
    active_tenant(client, auth, run_jobs, other)
    backup = back_up(client, auth, run_jobs, other)
    for method, path, body in (("post", f"/v1/tenants/{other}/backups", None),
                               ("post", f"/v1/tenants/{other}/migrate", {"target": FIRST}),
                               ("post", f"/v1/tenants/{other}/restore", {"backup_id": backup["id"]}),
                               ("delete", f"/v1/tenants/{other}", None)):
        started = getattr(client, method)(path, json=body, headers=auth)
        assert started.status_code == 202, (path, started.get_json())
        response = client.post(f"/v1/operations/{started.get_json()['id']}/cancel", headers=auth)
        assert response.status_code == 202 and response.get_json()["status"] == "cancelled", path
        assert tenant(client, auth, other)["status"] == "active", path  # its status back, its slot free
    run_jobs()  # the cancelled operations' jobs find them finished and do nothing
    assert tenant(client, auth, other)["schema_revision"] == HEAD


def test_cancel_a_running_provisioning_drops_what_it_created(client, auth, run_jobs, admin_url, monkeypatch):
    name = tid("runprov")
    _cancel_after(monkeypatch, PostgresAdmin, "ensure_database")
    op = client.post("/v1/tenants", json={"id": name, "name": "R", "admin_email": "a@r.example"}, headers=auth)
    run_jobs()
    body = _cancelled(client, auth, op.get_json()["id"])
    assert body["step"] == "restrict_access"  # it stopped at the boundary after the database was created
    assert tenant(client, auth, name)["status"] == "failed"
    assert databases_like(admin_url, role(name) + "%") == set() and roles(admin_url, role(name)) == set()


def test_cancel_a_running_migration_stays_at_the_last_completed_revision(client, auth, run_jobs, monkeypatch):
    name = tid("runmig")
    active_tenant(client, auth, run_jobs, name)
    _cancel_after(monkeypatch, TenantDatabase, "migrate")
    op = client.post(f"/v1/tenants/{name}/migrate", json={"target": "base"}, headers=auth)
    run_jobs()
    _cancelled(client, auth, op.get_json()["id"])
    body = tenant(client, auth, name)
    assert (body["status"], body["schema_revision"]) == ("active", FIRST)  # one revision down of two


def test_cancel_a_running_restore_drops_its_scratch_database(client, auth, run_jobs, admin_url, monkeypatch):
    name = tid("runres")
    active_tenant(client, auth, run_jobs, name)
    backup = back_up(client, auth, run_jobs, name)
    client.post(f"/v1/tenants/{name}/suspend", headers=auth)
    from control_plane.adapters.pg_backup import PostgresBackupTools
    _cancel_after(monkeypatch, PostgresBackupTools, "restore")
    op = client.post(f"/v1/tenants/{name}/restore", json={"backup_id": backup["id"]}, headers=auth)
    run_jobs()
    _cancelled(client, auth, op.get_json()["id"])
    assert tenant(client, auth, name)["status"] == "suspended"
    assert databases_like(admin_url, role(name) + "%") == {db(name)}


def test_cancel_a_running_backup_removes_its_partial_objects(ctx, settings, client, auth, run_jobs, monkeypatch):
    from control_plane.catalog.backup_models import Backup, BackupStatus
    from control_plane.services import backups
    name = tid("runbak")
    active_tenant(client, auth, run_jobs, name)
    write_rows(ctx, name, "stream")
    monkeypatch.setattr(backups, "HEARTBEAT_SECONDS", 0)  # every chunk streamed is a point to stop at
    _cancel_after(monkeypatch, backups._Heartbeat, "__init__")  # cancelled once the dump has started
    op = client.post(f"/v1/tenants/{name}/backups", headers=auth)
    run_jobs()
    # No step follows the stream's: cancelled (not succeeded) means it stopped while streaming.
    assert _cancelled(client, auth, op.get_json()["id"])["error"] == "cancelled at backup"
    assert tenant(client, auth, name)["status"] == "active"
    with ctx.sessions() as session:
        statuses = [b.status for b in session.query(Backup).filter(Backup.tenant_id == name)]
    assert statuses == [BackupStatus.FAILED]  # the attempt is recorded, never left running
    assert [p for p in (store_root(settings) / name).rglob("*") if p.is_file()] == []  # no partial object


def test_cancel_a_running_delete_after_its_final_backup_keeps_the_tenant(client, auth, run_jobs, admin_url,
                                                                          monkeypatch):
    from control_plane.services import backups
    name = tid("rundel")
    active_tenant(client, auth, run_jobs, name)
    _cancel_after(monkeypatch, backups, "final_backup")
    op = client.delete(f"/v1/tenants/{name}", headers=auth)
    run_jobs()
    _cancelled(client, auth, op.get_json()["id"])
    assert tenant(client, auth, name)["status"] == "active"
    assert databases_like(admin_url, role(name) + "%") == {db(name)}


def test_idempotency_key_on_retry_and_cancel(client, auth):
    name = tid("idem")
    op = client.post("/v1/tenants", json={"id": name, "name": "I", "admin_email": "a@i.example"},
                     headers=auth).get_json()
    headers = {**auth, "Idempotency-Key": "stop-it"}
    first = client.post(f"/v1/operations/{op['id']}/cancel", headers=headers)
    again = client.post(f"/v1/operations/{op['id']}/cancel", headers=headers)
    assert first.status_code == again.status_code == 202  # the replay answers, where a new cancel is 409
    assert again.get_json()["status"] == "cancelled"
    other = client.post(f"/v1/operations/{op['id']}/retry", headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.get_json()["errors"]["headers"]
