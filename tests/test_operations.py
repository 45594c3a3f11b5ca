"""One operation at a time per tenant: 423 naming the running operation, 409 for what a status forbids."""
from __future__ import annotations

import psycopg
from psycopg import sql

from backup_support import active_tenant, back_up, backup_cleanup, databases_like, role, tid  # noqa: F401
from control_plane import naming
from helpers import operation, roles, tenant

BUSY = tid("busy")
GONE = tid("gone")
SWAPPED = tid("swapped")


def _refused_as_busy(response, holder: str) -> None:
    assert response.status_code == 423, response.get_json()
    body = response.get_json()
    assert response.mimetype == "application/problem+json" and body["status"] == 423
    assert body["operation_id"] == holder and holder in body["detail"]
    assert int(response.headers["Retry-After"]) > 0


def test_a_busy_tenant_answers_423_naming_its_operation_and_reads_go_on(client, auth, run_jobs):
    active_tenant(client, auth, run_jobs, BUSY)
    backup = back_up(client, auth, run_jobs, BUSY)

    # A queued backup holds the tenant's work slot, though the tenant stays active (and readable).
    queued = client.post(f"/v1/tenants/{BUSY}/backups", headers=auth)
    assert queued.status_code == 202
    holder = queued.get_json()["id"]
    assert tenant(client, auth, BUSY)["status"] == "active"
    _refused_as_busy(client.post(f"/v1/tenants/{BUSY}/migrate", json={"target": "head"}, headers=auth), holder)
    _refused_as_busy(client.delete(f"/v1/tenants/{BUSY}", headers=auth), holder)
    _refused_as_busy(client.post(f"/v1/tenants/{BUSY}/backups", headers=auth), holder)
    _refused_as_busy(client.post(f"/v1/tenants/{BUSY}/restore", json={"backup_id": backup["id"]}, headers=auth),
                     holder)
    assert client.get(f"/v1/tenants/{BUSY}/backups", headers=auth).status_code == 200
    assert client.get(f"/v1/operations/{holder}", headers=auth).status_code == 200

    run_jobs()
    assert operation(client, auth, holder)["status"] == "succeeded"
    # The slot is free again: the next operation starts, and holds it in turn.
    migrate = client.post(f"/v1/tenants/{BUSY}/migrate", json={"target": "head"}, headers=auth)
    assert migrate.status_code == 202
    _refused_as_busy(client.post(f"/v1/tenants/{BUSY}/restore", json={"backup_id": backup["id"]}, headers=auth),
                     migrate.get_json()["id"])
    run_jobs()
    assert tenant(client, auth, BUSY)["status"] == "active"


def test_what_the_status_forbids_is_409(client, auth, run_jobs):
    active_tenant(client, auth, run_jobs, GONE)
    client.delete(f"/v1/tenants/{GONE}?final_backup=false", headers=auth)
    run_jobs()
    assert tenant(client, auth, GONE)["status"] == "deleted"
    for response in (client.post(f"/v1/tenants/{GONE}/migrate", json={"target": "head"}, headers=auth),
                     client.post(f"/v1/tenants/{GONE}/backups", headers=auth),
                     client.delete(f"/v1/tenants/{GONE}", headers=auth)):
        assert response.status_code == 409 and "deleted" in response.get_json()["detail"]


def test_purge_after_a_crash_mid_swap_leaves_no_database_owned_by_the_role(client, auth, run_jobs, admin_url):
    active_tenant(client, auth, run_jobs, SWAPPED)
    # What a restore killed between its swap and its catalog commit would leave: a scratch database and a
    # retired one, both owned by the tenant's role and unknown to the catalog.
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for name in (naming.restore_database_name(SWAPPED, "deadbeef-0000"), role(SWAPPED) + "_20261130_000000"):
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(role(SWAPPED))))
    purge = client.delete(f"/v1/tenants/{SWAPPED}?purge=true", headers=auth)
    assert purge.status_code == 202
    run_jobs()
    assert operation(client, auth, purge.get_json()["id"])["status"] == "succeeded"
    assert tenant(client, auth, SWAPPED)["status"] == "deleted"
    assert databases_like(admin_url, role(SWAPPED) + "%") == set() and roles(admin_url, role(SWAPPED)) == set()


def test_byte_progress_is_merged_into_the_result_grows_and_never_shows_a_total_below_what_is_done(ctx, monkeypatch):
    from control_plane.catalog.models import Operation, OperationKind, OperationStatus
    from control_plane.services import byte_progress

    monkeypatch.setattr(byte_progress, "PROGRESS_SECONDS", 0.0)  # every count recorded
    with ctx.sessions() as session, session.begin():
        op = Operation(kind=OperationKind.MOVE, status=OperationStatus.RUNNING, result={"mode": "online"})
        session.add(op)

    def recorded() -> dict:
        with ctx.sessions() as session:
            return session.get(Operation, op.id).result

    with ctx.sessions() as session, session.begin():  # a result still JSON null starts from {}
        nothing = Operation(kind=OperationKind.RESTORE, status=OperationStatus.RUNNING, result=None)
        session.add(nothing)
    byte_progress.ByteProgress(ctx, nothing.id, 10).add(5)
    with ctx.sessions() as session:
        assert session.get(Operation, nothing.id).result == {"bytes_done": 5, "bytes_total": 10}

    progress = byte_progress.ByteProgress(ctx, op.id, 1000)
    seen = []
    for count in (100, 400, 800):  # the estimate (1000) is passed by the last count
        progress.add(count)
        seen.append(recorded())
    assert [r["bytes_done"] for r in seen] == [100, 500, 1300]
    assert [r["bytes_total"] for r in seen] == [1000, 1000, 1300]
    assert all(r["mode"] == "online" for r in seen)  # what the result showed is kept
    assert progress.finish() == {"bytes_done": 1300, "bytes_total": 1300} and recorded()["bytes_total"] == 1300
