"""Draining a server: every tenant moved off at a bounded concurrency, as a run with cancel and resume."""
from __future__ import annotations

from click.testing import CliRunner

from control_plane.cli import cli
from control_plane.services import drains
from fleet_support import fleet, logical_servers  # noqa: F401 (fixtures)
from helpers import create_tenant, databases, tenant, tenant_login

TENANTS = [f"drained-{index}" for index in range(10)]


def _run(fleet, run_id: str) -> dict:
    response = fleet.client.get(f"/v1/drain-runs/{run_id}", headers=fleet.auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_drain_of_ten_tenants_at_concurrency_3_with_cancel_and_resume(fleet, ctx):
    client, auth = fleet.client, fleet.auth
    for name in ("default", "pg3"):
        client.post(f"/v1/servers/{name}/drain", headers=auth, json={"move_tenants": False})
    for tenant_id in TENANTS:
        create_tenant(client, auth, tenant_id)
    fleet.run_jobs()
    for name in ("default", "pg3"):
        client.post(f"/v1/servers/{name}/drain", headers=auth, json={"draining": False})
    with tenant_login(ctx, TENANTS[0]) as conn:
        conn.execute("INSERT INTO leads (full_name) VALUES ('travels')")

    started = client.post("/v1/servers/pg2/drain", headers=auth, json={"concurrency": 3, "mode": "offline"})
    assert started.status_code == 202, started.get_json()
    run = started.get_json()
    assert started.headers["Location"] == f"/v1/drain-runs/{run['id']}"
    assert run["counts"]["total"] == 10 and run["counts"]["moving"] == 3 and run["counts"]["pending"] == 7
    assert client.get("/v1/servers/pg2", headers=auth).get_json()["status"] == "draining"
    assert client.post("/v1/servers/pg2/drain", headers=auth, json={}).status_code == 409  # one drain at a time

    cancelled = client.post(f"/v1/drain-runs/{run['id']}/cancel", headers=auth).get_json()
    assert cancelled["status"] == "cancelled"
    fleet.run_jobs()  # the three moves under way finish; no new one starts
    run = _run(fleet, run["id"])
    assert run["status"] == "cancelled" and run["counts"]["moved"] == 3 and run["counts"]["pending"] == 7

    resumed = client.post(f"/v1/drain-runs/{run['id']}/resume", headers=auth).get_json()
    assert resumed["status"] == "running" and resumed["counts"]["moving"] == 3
    fleet.run_jobs()
    run = _run(fleet, run["id"])
    assert run["status"] == "succeeded" and run["counts"]["moved"] == 10, run
    assert {item["target_server"] for item in run["items"]} <= {"default", "pg3"}
    for tenant_id in TENANTS:
        assert tenant(client, auth, tenant_id)["server"] in ("default", "pg3")
    assert not databases(fleet.url("pg2"), "tenant\\_drained\\_%\\_db")
    with tenant_login(ctx, TENANTS[0]) as conn:
        assert conn.execute("SELECT full_name FROM leads").fetchall() == [("travels",)]
    assert drains.advance_running(ctx) == []

    status = CliRunner().invoke(cli, ["servers", "drain-status", run["id"]])
    assert status.exit_code == 0 and '"moved": 10' in status.stdout
    listed = client.get("/v1/drain-runs", headers=auth).get_json()  # the console's runs page
    assert [(r["id"], r["counts"]["moved"]) for r in listed] == [(run["id"], 10)]
    assert client.delete("/v1/servers/pg2", headers=auth).status_code == 204
