"""Plans as catalog records, their limits on each tenant's role (connection limit, timeouts), API and CLI."""
from __future__ import annotations

import json

from click.testing import CliRunner
from sqlalchemy import select

from control_plane.catalog.models import AuditEvent, TokenRole
from control_plane.naming import TENANT_EVENTS_CHANNEL
from control_plane.services.servers import check_servers
from control_plane.cli import cli
from control_plane.services.auth import create_token
from helpers import create_tenant, one, tenant_login


def role_limits(admin_url: str, role: str):
    return one(admin_url, "SELECT json_build_array(rolconnlimit, rolconfig) FROM pg_roles WHERE rolname = %s", role)


def test_plan_limits_follow_the_plan_and_the_tenants_plan(client, auth, run_jobs, admin_url, ctx):
    created = client.post("/v1/plans", headers=auth, json={
        "name": "small", "connection_limit": 3, "statement_timeout_ms": 5000,
        "idle_in_transaction_timeout_ms": 10000, "storage_quota_bytes": 50_000_000, "backup_rpo_hours": 24})
    assert created.status_code == 201, created.get_json()
    assert client.post("/v1/plans", headers=auth, json={"name": "small"}).status_code == 409
    assert client.post("/v1/plans", headers=auth, json={"name": "bad", "connection_limit": 0}).status_code == 422

    unknown = client.post("/v1/tenants", headers=auth, json={"id": "on-nothing", "name": "x", "plan": "gold",
                                                             "admin_email": "a@on-nothing.example"})
    assert unknown.status_code == 422 and "plan" in unknown.get_json()["errors"]["json"]

    create_tenant(client, auth, "planned", plan="small")
    run_jobs()
    assert role_limits(admin_url, "tenant_planned") == [
        3, ["statement_timeout=5000", "idle_in_transaction_session_timeout=10000"]]
    with tenant_login(ctx, "planned") as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "5s"

    changed = client.patch("/v1/plans/small", headers=auth, json={"connection_limit": 5, "statement_timeout_ms": None})
    assert changed.status_code == 200 and changed.get_json()["statement_timeout_ms"] is None
    assert role_limits(admin_url, "tenant_planned") == [5, ["idle_in_transaction_session_timeout=10000"]]

    moved = client.patch("/v1/tenants/planned", headers=auth, json={"plan": "standard"})
    assert moved.status_code == 200
    assert role_limits(admin_url, "tenant_planned") == [-1, None]
    assert client.patch("/v1/tenants/planned", headers=auth, json={"plan": "gold"}).status_code == 422

    listed = client.get("/v1/plans", headers=auth).get_json()
    assert {p["name"] for p in listed} >= {"standard", "small"}
    assert client.get("/v1/plans/nope", headers=auth).status_code == 404
    _, tenant_token = create_token(ctx, TokenRole.TENANT_ADMIN, "planned-admin", "planned")
    tenant_admin = {"Authorization": f"Bearer {tenant_token}"}
    assert client.get("/v1/plans", headers=tenant_admin).status_code == 403
    assert client.patch("/v1/plans/small", headers=tenant_admin, json={"connection_limit": 100}).status_code == 403


def test_plans_from_the_cli(settings):
    runner = CliRunner()
    assert runner.invoke(cli, ["plans", "create", "cli-plan", "--connection-limit", "7"],
                         catch_exceptions=False).exit_code == 0
    assert runner.invoke(cli, ["plans", "set", "cli-plan", "--statement-timeout-ms", "3000", "--unset",
                               "connection_limit"], catch_exceptions=False).exit_code == 0
    listed = runner.invoke(cli, ["plans", "list"], catch_exceptions=False).stdout
    assert "cli-plan" in listed and "statement_timeout_ms=3000" in listed and "connection_limit" not in listed
    assert runner.invoke(cli, ["plans", "create", "cli-bad", "--connection-limit", "0"]).exit_code == 2


def test_storage_quota_crossings_are_announced_once_each(client, auth, run_jobs, ctx, admin_url, redis_conn):
    assert client.post("/v1/plans", headers=auth, json={"name": "metered", "storage_quota_bytes": 10 ** 12}).status_code == 201
    create_tenant(client, auth, "quota-clinic", plan="metered")
    run_jobs()
    size = one(admin_url, "SELECT pg_database_size('tenant_quota_clinic_db')")
    events = redis_conn.pubsub()
    events.subscribe(TENANT_EVENTS_CHANNEL)

    def crossings() -> list[int]:
        with ctx.sessions() as session:
            return [e.details["level"] for e in session.scalars(
                select(AuditEvent).where(AuditEvent.action == "tenant.storage_quota").order_by(AuditEvent.id))]

    check_servers(ctx)
    assert crossings() == []
    for quota, expected in ((int(size / 0.9), [80]), (int(size / 0.85), [80]), (size // 2, [80, 100]),
                            (10 ** 12, [80, 100, 0])):
        client.patch("/v1/plans/metered", headers=auth, json={"storage_quota_bytes": quota})
        check_servers(ctx)
        assert crossings() == expected
    announced = []
    while (message := events.get_message(timeout=1)) is not None:
        if message["type"] == "message" and json.loads(message["data"])["change"] == "storage_quota":
            announced.append(json.loads(message["data"])["level"])
    events.close()
    assert announced == [80, 100, 0]
    assert 'control_plane_tenant_storage_quota_bytes{tenant_id="quota-clinic"} 1e+12' in \
        client.get("/metrics").get_data(as_text=True)
