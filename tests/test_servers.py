"""Several database servers: registration, draining and placement, with a second real PostgreSQL."""
from __future__ import annotations

import shutil

import pytest

import devstack
from control_plane.catalog.models import DatabaseServer
from control_plane.services.context import server_secret_context
from helpers import catalog_tenant, create_tenant, databases, tenant, tenant_login


@pytest.fixture(scope="module")
def second_server():
    root = devstack.scratch_dir("servers")
    server = devstack.PostgresServer(root / "pg2", fast=True).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


def test_servers_are_listed_without_credentials(client, auth):
    servers = client.get("/v1/servers", headers=auth).get_json()
    assert [s["name"] for s in servers] == ["default"]
    assert "admin_url" not in servers[0] and "admin_url_encrypted" not in servers[0]


def test_register_drain_and_place_on_another_server(client, auth, run_jobs, ctx, second_server):
    registered = client.post("/v1/servers", headers=auth, json={"name": "pg2", "admin_url": second_server.url})
    assert registered.status_code == 201 and registered.get_json()["port"] == second_server.port
    assert second_server.password not in registered.get_data(as_text=True)
    assert client.post("/v1/servers", headers=auth, json={"name": "pg2", "admin_url": second_server.url}).status_code == 409

    drained = client.post("/v1/servers/default/drain", headers=auth, json={"move_tenants": False})
    assert drained.get_json()["status"] == "draining"
    create_tenant(client, auth, "elsewhere")
    run_jobs()
    body = tenant(client, auth, "elsewhere")
    assert body["status"] == "active" and body["server"] == "pg2"
    assert databases(second_server.url, "tenant_elsewhere%") == {"tenant_elsewhere_db"}
    with tenant_login(ctx, "elsewhere") as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == second_server.port

    client.delete("/v1/tenants/elsewhere?purge=true", headers=auth)  # dropped at once, on its own server
    run_jobs()
    assert databases(second_server.url, "tenant_elsewhere%") == set()

    client.post("/v1/servers/default/drain", headers=auth, json={"draining": False})
    client.post("/v1/servers/pg2/drain", headers=auth, json={"move_tenants": False})
    create_tenant(client, auth, "back-home")
    run_jobs()
    assert tenant(client, auth, "back-home")["server"] == "default"


def test_no_room_is_a_503_before_anything_is_recorded(client, auth):
    client.post("/v1/servers/default/drain", headers=auth, json={"move_tenants": False})
    try:
        response = client.post("/v1/tenants", headers=auth,
                               json={"id": "homeless", "name": "x", "admin_email": "a@homeless.example"})
        assert response.status_code == 503 and "no active, reachable database server" in response.get_json()["detail"]
        assert response.headers["Retry-After"] == "60"
        assert client.get("/v1/tenants/homeless", headers=auth).status_code == 404
    finally:
        client.post("/v1/servers/default/drain", headers=auth, json={"draining": False})


@pytest.mark.parametrize("body,field", [
    ({"name": "Bad Name", "admin_url": "postgresql://a@b/c"}, "name"),
    ({"name": "ok", "admin_url": "mysql://a@b/c"}, "admin_url"),
    ({"name": "ok"}, "admin_url"),
])
def test_invalid_server_registration_is_422(client, auth, body, field):
    response = client.post("/v1/servers", headers=auth, json=body)
    assert response.status_code == 422 and field in response.get_json()["errors"]["json"]


def test_unreachable_server_is_refused(client, auth):
    port = devstack.free_port()
    response = client.post("/v1/servers", headers=auth,
                           json={"name": "ghost", "admin_url": f"postgresql://nobody:pw@127.0.0.1:{port}/postgres"})
    assert response.status_code == 422 and "pw@" not in response.get_data(as_text=True)
    assert "admin_url" in response.get_json()["errors"]["json"]


def test_a_second_name_for_a_registered_cluster_is_refused(client, auth, admin_url):
    """The default server's cluster under another host name: refused before anything is recorded (a move
    between the two names would drop the tenant's own database as the target's leftover)."""
    alias = admin_url.replace("127.0.0.1", "localhost")
    assert alias != admin_url
    response = client.post("/v1/servers", headers=auth, json={"name": "alias", "admin_url": alias})
    assert response.status_code == 422, response.get_json()
    assert "same PostgreSQL cluster as server 'default'" in response.get_json()["errors"]["json"]["admin_url"][0]
    assert [s["name"] for s in client.get("/v1/servers", headers=auth).get_json()] == ["default"]


def test_a_move_between_two_names_of_one_cluster_is_refused(client, auth, ctx, admin_url):
    """Such a pair registered before registration refused it: the move is refused before anything is recorded
    (its target database would be the tenant's own)."""
    alias = admin_url.replace("127.0.0.1", "localhost")
    with ctx.sessions() as session:
        session.add(DatabaseServer(name="alias", host="localhost", port=5432,
                                   admin_url_encrypted=ctx.keyring.encrypt(alias, server_secret_context("alias"))))
        session.commit()
    catalog_tenant(ctx, "aliased")
    response = client.post("/v1/tenants/aliased/move", headers=auth, json={"server": "alias", "mode": "offline"})
    assert response.status_code == 422, response.get_json()
    assert "same PostgreSQL cluster" in response.get_json()["errors"]["json"]["server"][0]
    assert client.get("/v1/operations?tenant_id=aliased", headers=auth).get_json() == []
