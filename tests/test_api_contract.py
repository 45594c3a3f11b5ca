"""The API's contract: authorization before validation, problem+json documented for every error, bounded
input, control characters refused with the field named, and a catalog that refuses connections answered 503."""
from __future__ import annotations

import uuid
from dataclasses import replace

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import make_url

from control_plane.api.blueprint import undeclared_views
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.db import create_catalog_engine, upgrade_catalog
from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token
from helpers import create_tenant

GARBAGE = {"id": None, "name": 7, "admin_url": ["x"], "target": "\x00", "concurrency": 10**30, "nope": True}


@pytest.fixture
def tenant_admin(client, auth, ctx) -> dict[str, str]:
    create_tenant(client, auth, "own-clinic")
    create_tenant(client, auth, "other-clinic")
    return {"Authorization": f"Bearer {create_token(ctx, TokenRole.TENANT_ADMIN, 'own', 'own-clinic')[1]}"}


def test_every_v1_view_declares_who_may_call_it(app):
    assert undeclared_views(app) == []


@pytest.mark.parametrize("method,path", [
    ("post", "/v1/tenants"), ("patch", "/v1/tenants/own-clinic"), ("delete", "/v1/tenants/own-clinic?purge=maybe"),
    ("post", "/v1/tenants/own-clinic/migrate"), ("post", "/v1/servers"), ("post", "/v1/servers/default/drain"),
    ("post", "/v1/migration-runs"), ("get", "/v1/migration-runs?status=bogus"),
    ("put", "/v1/tenants/own-clinic/backup-policy"), ("post", "/v1/tenants/other-clinic/backups"),
    ("post", "/v1/tenants/other-clinic/restore"), ("get", "/v1/tenants/other-clinic/backups?status=bogus"),
])
def test_a_principal_that_may_not_call_an_endpoint_gets_403_whatever_the_body(client, tenant_admin, method, path):
    response = getattr(client, method)(path, json=GARBAGE, headers=tenant_admin)
    assert response.status_code == 403, response.get_json()
    assert response.mimetype == "application/problem+json"
    anonymous = getattr(client, method)(path, json=GARBAGE)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"] == "Bearer"
    assert anonymous.get_json()["status"] == 401


def test_a_principal_that_may_call_it_gets_the_422(client, tenant_admin):
    response = client.post("/v1/tenants/own-clinic/backups", json={"expires_in_days": 10**30}, headers=tenant_admin)
    assert response.status_code == 422 and "expires_in_days" in response.get_json()["errors"]["json"]


def _resolve(spec: dict, response: dict) -> dict:
    if "$ref" in response:
        return spec["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    return response


def test_the_openapi_document_describes_every_error_as_problem_json(client):
    spec = client.get("/openapi.json").get_json()
    assert "Error" not in spec["components"]["schemas"]
    assert set(spec["components"]["schemas"]["Problem"]["properties"]) >= {"status", "title", "detail", "errors"}
    seen = set()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            responses = operation["responses"]
            if path.startswith("/v1/"):
                assert {"401", "403", "503"} <= set(responses), f"{method} {path}"
            for status, response in responses.items():
                if status == "default" or int(status) >= 400:
                    seen.add(status)
                    assert list(_resolve(spec, response)["content"]) == ["application/problem+json"], (method, path)
    assert {"401", "403", "404", "409", "422", "503"} <= seen
    unauthorized = spec["components"]["responses"]["UNAUTHORIZED"]
    assert "WWW-Authenticate" in unauthorized["headers"]
    assert "Retry-After" in spec["components"]["responses"]["SERVICE_UNAVAILABLE"]["headers"]


@pytest.mark.parametrize("field,value", [("name", "Acme\x00Clinic"), ("name", "Acme\x1b[31m"), ("plan", "gold\n"),
                                         ("domains", ["a.example.com", "b\x00.example.com"])])
def test_control_characters_in_the_body_are_422_naming_the_field(client, auth, field, value):
    body = {"id": "ctrl-clinic", "name": "Ctrl", "admin_email": "owner@ctrl.example", field: value}
    response = client.post("/v1/tenants", json=body, headers=auth)
    assert response.status_code == 422 and response.mimetype == "application/problem+json"
    assert field in response.get_json()["errors"]["json"]


def test_control_characters_elsewhere_are_422_naming_the_field(client, auth):
    query = client.get("/v1/tenants?q=a%00b", headers=auth)
    assert query.status_code == 422 and "q" in query.get_json()["errors"]["query"]
    path = client.get("/v1/tenants/acme%00", headers=auth)
    assert path.status_code == 422 and "tenant_id" in path.get_json()["errors"]["path"]
    body = {"id": "ctrl-clinic", "name": "Ctrl", "admin_email": "owner@ctrl.example"}
    header = client.post("/v1/tenants", json=body, headers={**auth, "Idempotency-Key": "k\x01"})
    assert header.status_code == 422 and "Idempotency-Key" in header.get_json()["errors"]["headers"]
    patch = client.patch("/v1/tenants/nobody", json={"name": "a\x00"}, headers=auth)
    assert patch.status_code == 422 and "name" in patch.get_json()["errors"]["json"]


@pytest.mark.parametrize("method,path,body,location,field", [
    ("get", "/v1/tenants?page=100000000000000000000", None, "query", "page"),
    ("get", "/v1/operations?page_size=1000", None, "query", "page_size"),
    ("post", "/v1/migration-runs", {"canary": 2**40}, "json", "canary"),
    ("post", "/v1/migration-runs", {"max_failures": 2**31}, "json", "max_failures"),
    ("post", "/v1/migration-runs", {"concurrency": 10**6}, "json", "concurrency"),
    ("post", "/v1/migration-runs", {"lock_timeout_seconds": 1e300}, "json", "lock_timeout_seconds"),
    ("post", "/v1/servers", {"name": "big", "admin_url": "postgresql://h/x", "max_tenants": 2**31}, "json", "max_tenants"),
    ("put", "/v1/tenants/nobody/backup-policy", {"keep_last": 2**63}, "json", "keep_last"),
])
def test_integers_are_bounded(client, auth, method, path, body, location, field):
    response = getattr(client, method)(path, json=body, headers=auth)
    assert response.status_code == 422, response.get_json()
    assert field in response.get_json()["errors"][location]


@pytest.fixture
def refusable_catalog(settings, admin_url):
    """An app on a catalog of its own, and a switch that makes that catalog refuse every connection for real."""
    name = f"cp_test_refusing_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(settings.catalog_database_url).set(database=name).render_as_string(hide_password=False)
    engine = create_catalog_engine(url)
    upgrade_catalog(engine)
    engine.dispose()
    ctx = build_context(replace(settings, catalog_database_url=url))
    token = create_token(ctx, TokenRole.SUPER_ADMIN, "refusing")[1]

    def refuse(refusing: bool) -> None:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(name), sql.SQL("false" if refusing else "true")))
            if refusing:  # the pool's open connections go too, as when the server restarts
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))

    yield create_app(ctx=ctx).test_client(), {"Authorization": f"Bearer {token}"}, refuse
    dispose(ctx)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_catalog_refusing_connections_is_503_with_retry_after(refusable_catalog):
    client, auth, refuse = refusable_catalog
    assert client.get("/v1/tenants", headers=auth).status_code == 200
    refuse(True)
    for method, path, body in (("get", "/v1/tenants", None), ("get", "/v1/operations/x", None),
                               ("post", "/v1/tenants", {"id": "down-clinic", "name": "Down",
                                                        "admin_email": "owner@down.example"})):
        response = getattr(client, method)(path, json=body, headers=auth)
        assert response.status_code == 503, (path, response.get_json())
        assert response.mimetype == "application/problem+json" and int(response.headers["Retry-After"]) > 0
        assert "catalog" in response.get_json()["detail"]
    ready = client.get("/readyz")
    assert ready.status_code == 503 and int(ready.headers["Retry-After"]) > 0
    assert ready.get_json()["unavailable"] == ["catalog"] and ready.get_json()["checks"]["redis"] == "ok"
    refuse(False)
    assert client.get("/v1/tenants", headers=auth).status_code == 200
    assert client.get("/readyz").status_code == 200
