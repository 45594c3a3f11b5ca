"""Servers' health, capacity and load, placement by headroom, 503 when full, removal of a drained server."""
from __future__ import annotations

import psycopg
from psycopg import sql

from control_plane.catalog.models import DatabaseServer
from control_plane.services import servers
from control_plane.services.context import server_secret_context
from fleet_support import fleet, logical_servers  # noqa: F401 (fixtures)
from helpers import create_tenant, tenant


def test_headroom_is_the_free_share_of_the_scarcest_resource():
    server = DatabaseServer(name="s", max_tenants=10, max_connections=100, connections=30,
                            max_size_bytes=1000, database_bytes=900)
    assert round(servers.headroom(server, 2), 3) == 0.1  # size is the bottleneck
    server.max_size_bytes = None
    assert round(servers.headroom(server, 2), 3) == 0.7  # then connections
    assert round(servers.headroom(server, 9), 3) == 0.1  # then tenants
    assert servers.headroom(DatabaseServer(name="unchecked"), 5) == 1.0


def test_placement_by_headroom_then_503_when_every_server_is_full(fleet):
    client, auth = fleet.client, fleet.auth
    fleet.place("first", "pg3")
    client.post("/v1/servers/default/drain", headers=auth, json={"move_tenants": False})
    try:
        assert client.patch("/v1/servers/pg2", headers=auth, json={"max_tenants": 2}).status_code == 200
        assert client.patch("/v1/servers/pg3", headers=auth, json={"max_tenants": 3}).get_json()["headroom"] < 0.67
        placed = []
        for index in range(4):
            create_tenant(client, auth, f"placed-{index}")
            fleet.run_jobs()
            placed.append(tenant(client, auth, f"placed-{index}")["server"])
        # pg2 (empty) first, then whichever has the larger free share: pg3 (2/3) over pg2 (1/2), ...
        assert placed == ["pg2", "pg3", "pg2", "pg3"]
        full = client.post("/v1/tenants", headers=auth, json={"id": "homeless", "name": "x", "admin_email": "a@b.example"})
        assert full.status_code == 503 and "room" in full.get_json()["detail"]
        assert client.get("/v1/tenants/homeless", headers=auth).status_code == 404
    finally:
        client.post("/v1/servers/default/drain", headers=auth, json={"draining": False})


def test_servers_report_health_capacity_and_load(fleet, ctx):
    fleet.place("loaded", "pg2")
    # A server whose admin can no longer log in is reported unreachable and gets no tenant.
    with psycopg.connect(fleet.url("pg3"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE flaky_admin LOGIN SUPERUSER PASSWORD {}").format(sql.Literal("flaky-pw-1")))
    try:
        flaky_url = fleet.url("pg3").replace(f"cp_admin:{fleet.servers['pg3'].password}", "flaky_admin:flaky-pw-1")
        # Recorded directly: registering it is refused, pg3's cluster being registered already (as pg3).
        with ctx.sessions() as session:
            session.add(DatabaseServer(name="flaky", host="127.0.0.1", port=fleet.servers["pg3"].port,
                                       admin_url_encrypted=ctx.keyring.encrypt(flaky_url,
                                                                               server_secret_context("flaky"))))
            session.commit()
        with psycopg.connect(fleet.url("pg3"), autocommit=True) as conn:
            conn.execute("ALTER ROLE flaky_admin NOLOGIN")
        assert servers.check_servers(ctx) == {"default": True, "pg2": True, "pg3": True, "flaky": False}
        listed = {s["name"]: s for s in fleet.client.get("/v1/servers", headers=fleet.auth).get_json()}
        assert listed["flaky"]["status"] == "unreachable" and listed["flaky"]["check_error"]
        pg2 = fleet.client.get("/v1/servers/pg2", headers=fleet.auth).get_json()
        assert pg2["status"] == "active" and pg2["tenants"] == 1
        assert pg2["max_connections"] == 200 and 0 < pg2["connections"] < 200
        assert pg2["database_bytes"] > 1_000_000 and pg2["checked_at"] is not None
        with ctx.sessions() as session:
            assert servers.choose_server(session).name != "flaky"
    finally:
        fleet.client.delete("/v1/servers/flaky", headers=fleet.auth)
        with psycopg.connect(fleet.url("pg3"), autocommit=True) as conn:
            conn.execute("DROP ROLE IF EXISTS flaky_admin")


def test_a_server_is_removed_only_once_empty(fleet):
    client, auth = fleet.client, fleet.auth
    fleet.place("lodger", "pg3")
    refused = client.delete("/v1/servers/pg3", headers=auth)
    assert refused.status_code == 409 and "drain" in refused.get_json()["detail"]
    assert client.delete("/v1/servers/default", headers=auth).status_code == 409
    assert client.delete("/v1/servers/nowhere", headers=auth).status_code == 404
    assert client.delete("/v1/servers/pg2", headers=auth).status_code == 204
    assert client.get("/v1/servers/pg2", headers=auth).status_code == 404
