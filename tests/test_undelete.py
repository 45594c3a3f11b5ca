"""Safe delete: a deleted tenant's database is retired for DELETED_TENANT_GRACE_DAYS, undelete brings the
tenant back as it was, the prune job drops database and role after the grace period, purge at once."""
from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import select

from backup_support import active_tenant, backup_cleanup, databases_like, role, tid  # noqa: F401
from control_plane import naming
from control_plane.catalog.backup_models import RetiredDatabase
from control_plane.catalog.models import TokenRole, utcnow
from control_plane.services.auth import create_token
from control_plane.services.pruning import prune_backups
from helpers import create_tenant, one, operation, roles, tenant, tenant_login

BACK = tid("back")
LATE = tid("late")
ERASED = tid("erased")


def _retired(ctx, tenant_id: str) -> list[RetiredDatabase]:
    with ctx.sessions() as session:
        return list(session.scalars(select(RetiredDatabase).where(RetiredDatabase.tenant_id == tenant_id)))


def _delete(client, auth, run_jobs, tenant_id: str, query: str = "final_backup=false") -> dict:
    response = client.delete(f"/v1/tenants/{tenant_id}?{query}", headers=auth)
    assert response.status_code == 202, response.get_json()
    run_jobs()
    done = operation(client, auth, response.get_json()["id"])
    assert done["status"] == "succeeded", done
    return done


def _can_log_in(admin_url: str, tenant_id: str) -> bool:
    return one(admin_url, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", role(tenant_id))


def test_delete_retires_the_database_and_undelete_brings_the_tenant_back_as_it_was(
        client, auth, ctx, run_jobs, admin_url):
    create_tenant(client, auth, BACK, domains=[f"{BACK}.example.com"])
    run_jobs()
    with tenant_login(ctx, BACK) as conn:
        conn.execute("INSERT INTO leads (full_name) VALUES ('kept through the delete')")
    assert client.post(f"/v1/tenants/{BACK}/suspend", headers=auth).status_code == 200
    _, token = create_token(ctx, TokenRole.TENANT_ADMIN, "back-admin", BACK)
    # What a restore killed mid-swap would leave: a database of the role the catalog does not know.
    scratch = naming.restore_database_name(BACK, "deadbeef-0000")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(scratch), sql.Identifier(role(BACK))))

    deleted = _delete(client, auth, run_jobs, BACK)
    retired = deleted["result"]["retired_database"]
    body = tenant(client, auth, BACK)
    assert (body["status"], body["domains"]) == ("deleted", [])
    # Retired, not dropped: renamed, connections refused, the role unable to log in; the scratch one dropped.
    assert databases_like(admin_url, role(BACK) + "%") == {retired}
    assert one(admin_url, "SELECT datallowconn FROM pg_database WHERE datname = %s", retired) is False
    assert _can_log_in(admin_url, BACK) is False
    with pytest.raises(psycopg.OperationalError):
        tenant_login(ctx, BACK, dbname=retired)
    [record] = _retired(ctx, BACK)
    assert (record.database_name, record.operation_id, record.dropped_at) == (retired, deleted["id"], None)
    assert timedelta(days=6) < record.drop_after - utcnow() <= timedelta(days=7)

    headers = {**auth, "Idempotency-Key": f"undelete-{BACK}"}
    response = client.post(f"/v1/tenants/{BACK}/undelete", headers=headers)
    assert response.status_code == 202, response.get_json()
    assert response.headers["Location"] == f"/v1/operations/{response.get_json()['id']}"
    assert client.post(f"/v1/tenants/{BACK}/undelete", headers=headers).get_json()["id"] == response.get_json()["id"]
    run_jobs()
    assert operation(client, auth, response.get_json()["id"])["status"] == "succeeded"
    body = tenant(client, auth, BACK)
    assert (body["status"], body["domains"], body["database"]) == ("suspended", [f"{BACK}.example.com"],
                                                                   naming.database_name(BACK))
    assert _can_log_in(admin_url, BACK) is True
    with tenant_login(ctx, BACK) as conn:
        assert conn.execute("SELECT full_name FROM leads").fetchall() == [("kept through the delete",)]
    assert databases_like(admin_url, role(BACK) + "%") == {naming.database_name(BACK)} and _retired(ctx, BACK) == []
    # Its tokens stay revoked; and it is no longer deleted.
    assert client.get(f"/v1/tenants/{BACK}", headers={"Authorization": f"Bearer {token}"}).status_code == 401
    again = client.post(f"/v1/tenants/{BACK}/undelete", headers=auth)
    assert again.status_code == 409 and "suspended" in again.get_json()["detail"]


def test_after_the_grace_period_undelete_is_409_and_the_prune_drops_database_and_role(
        client, auth, ctx, run_jobs, admin_url):
    create_tenant(client, auth, LATE, domains=[f"{LATE}.example.com"])
    run_jobs()
    _delete(client, auth, run_jobs, LATE)
    # Its domain went to another tenant meanwhile: the undelete names it.
    create_tenant(client, auth, tid("heir"), domains=[f"{LATE}.example.com"])
    taken = client.post(f"/v1/tenants/{LATE}/undelete", headers=auth)
    assert taken.status_code == 409 and f"{LATE}.example.com" in taken.get_json()["detail"]

    with ctx.sessions() as session, session.begin():
        session.scalars(select(RetiredDatabase).where(RetiredDatabase.tenant_id == LATE)).one().drop_after = \
            utcnow() - timedelta(seconds=1)
    late = client.post(f"/v1/tenants/{LATE}/undelete", headers=auth)
    assert late.status_code == 409 and late.mimetype == "application/problem+json"
    assert "grace period ended" in late.get_json()["detail"]

    report = prune_backups(ctx, tenant_ids=[LATE])
    assert report.dropped_roles == [role(LATE)]
    assert databases_like(admin_url, role(LATE) + "%") == set() and roles(admin_url, role(LATE)) == set()
    assert all(r.dropped_at is not None for r in _retired(ctx, LATE))
    gone = client.post(f"/v1/tenants/{LATE}/undelete", headers=auth)
    assert gone.status_code == 409 and "dropped" in gone.get_json()["detail"]
    assert tenant(client, auth, LATE)["status"] == "deleted"


def test_purge_of_a_deleted_tenant_drops_its_retired_database_and_role(client, auth, ctx, run_jobs, admin_url):
    active_tenant(client, auth, run_jobs, ERASED)
    _delete(client, auth, run_jobs, ERASED)
    assert len(databases_like(admin_url, role(ERASED) + "%")) == 1
    assert client.delete(f"/v1/tenants/{ERASED}", headers=auth).status_code == 409  # deleted already

    _delete(client, auth, run_jobs, ERASED, "purge=true")
    assert databases_like(admin_url, role(ERASED) + "%") == set() and roles(admin_url, role(ERASED)) == set()
    assert all(r.dropped_at is not None for r in _retired(ctx, ERASED))
    assert tenant(client, auth, ERASED)["status"] == "deleted"
    assert client.post(f"/v1/tenants/{ERASED}/undelete", headers=auth).status_code == 409
