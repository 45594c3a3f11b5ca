"""tenant_runtime.flask and the example clinic CRM: resolution strategies, bad inputs, problem answers."""
from __future__ import annotations

import time

import jwt
import pytest
from sqlalchemy import text

from tenant_runtime import TenantConflictError, TenantResolutionError, TenantRouter
from tenant_runtime.example_app import create_app
from test_runtime_support import provision, router_factory, wait_until  # noqa: F401 (fixture)

JWT_KEY = "a-test-signing-key-of-at-least-32-bytes!"


@pytest.fixture
def clinics(client, auth, run_jobs):
    provision(client, auth, run_jobs, "rt-web-a", "rt-web-b",
              **{"rt-web-a": {"domains": ["crm.clinic-a.test"]}})
    return "rt-web-a", "rt-web-b"


@pytest.fixture
def make_app(router_factory):
    def make(**options):
        options.setdefault("base_domain", "clinics.test")
        options.setdefault("strategies", ("domain", "subdomain", "header", "jwt"))  # the header is opt-in
        options.setdefault("jwt_key", JWT_KEY)
        router: TenantRouter = router_factory(**options)
        app = create_app(router)
        return app.test_client(), router
    return make


def token(tenant_id: str, *, key: str = JWT_KEY, expires_in: int = 60) -> str:
    return jwt.encode({"tenant_id": tenant_id, "sub": "user-1", "exp": int(time.time()) + expires_in}, key,
                      algorithm="HS256")


def assert_problem(response, status: int, title: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status and body["title"] == title and body["detail"]
    return body


def test_the_clinic_crm_serves_each_tenant_its_own_data(clinics, make_app):
    web, _ = make_app()
    a, b = {"X-Tenant-ID": "rt-web-a"}, {"X-Tenant-ID": "rt-web-b"}

    pipelines = web.get("/pipelines", headers=a).get_json()["items"]
    assert [p["name"] for p in pipelines] == ["Sales"]
    stages = pipelines[0]["stages"]
    assert stages[0]["name"] == "New" and len(stages) == 5
    users = web.get("/users", headers=a).get_json()["items"]
    assert [u["email"] for u in users] == ["owner@rt-web-a.example"] and "password_hash" not in users[0]

    created = web.post("/leads", json={"full_name": "Ana Lima", "email": "ana@example.com", "source": "instagram"},
                       headers=a)
    assert created.status_code == 201
    lead = created.get_json()
    assert created.headers["Location"] == f"/leads/{lead['id']}"
    assert lead["stage_id"] == stages[0]["id"] and lead["pipeline_id"] == pipelines[0]["id"]

    moved = web.post(f"/leads/{lead['id']}/move", json={"stage_id": stages[2]["id"]}, headers=a)
    assert moved.status_code == 200 and moved.get_json()["stage_id"] == stages[2]["id"]
    patched = web.patch(f"/leads/{lead['id']}", json={"phone": "+55 11 99999-0000", "notes": "botox"}, headers=a)
    assert patched.get_json()["phone"] == "+55 11 99999-0000"
    assert web.get(f"/leads/{lead['id']}", headers=a).get_json()["notes"] == "botox"
    listed = web.get(f"/leads?stage_id={stages[2]['id']}", headers=a).get_json()["items"]
    assert [item["id"] for item in listed] == [lead["id"]]

    # Tenant B sees none of it, and its own pipeline.
    assert web.get("/leads", headers=b).get_json()["items"] == []
    assert_problem(web.get(f"/leads/{lead['id']}", headers=b), 404, "Not found")
    other = web.post("/pipelines", json={"name": "Implants", "stages": ["Lead", "Surgery"]}, headers=b)
    assert other.status_code == 201
    assert [p["name"] for p in web.get("/pipelines", headers=a).get_json()["items"]] == ["Sales"]

    # A failed request leaves nothing behind: the transaction is rolled back.
    bad_stage = web.post("/leads", json={"full_name": "Nobody", "stage_id": 999999}, headers=a)
    assert_problem(bad_stage, 422, "Unprocessable entity")
    assert bad_stage.get_json()["errors"] == {"json": {"stage_id": ["stage 999999 does not exist"]}}
    assert len(web.get("/leads", headers=a).get_json()["items"]) == 1

    assert web.get("/healthz").get_json() == {"status": "ok"}  # exempt: no tenant needed
    metrics = web.get("/metrics").get_data(as_text=True)
    assert "tenant_runtime_connections_open" in metrics and "tenant_runtime_acquire_seconds_bucket" in metrics


def test_each_resolution_strategy(clinics, make_app):
    web, router = make_app()
    by_domain = web.get("/users", headers={"Host": "crm.clinic-a.test"})
    by_subdomain = web.get("/users", headers={"Host": "rt-web-b.clinics.test:8443"})
    by_header = web.get("/users", headers={"X-Tenant-ID": "rt-web-b"})
    by_jwt = web.get("/users", headers={"Authorization": f"Bearer {token('rt-web-a')}"})
    emails = [r.get_json()["items"][0]["email"] for r in (by_domain, by_subdomain, by_header, by_jwt)]
    assert emails == ["owner@rt-web-a.example", "owner@rt-web-b.example", "owner@rt-web-b.example",
                      "owner@rt-web-a.example"]
    # Agreeing strategies are fine.
    agree = web.get("/users", headers={"Host": "crm.clinic-a.test", "X-Tenant-ID": "rt-web-a",
                                       "Authorization": f"Bearer {token('rt-web-a')}"})
    assert agree.status_code == 200

    # The core API, including pre-verified claims and the path strategy.
    assert router.resolve(claims={"tenant_id": "rt-web-b"}) == "rt-web-b"
    assert router.resolve(host="CRM.Clinic-A.test.") == "rt-web-a"
    with_path = make_app(strategies=("path", "header"), path_prefix="/t/")[1]
    assert with_path.resolve(path="/t/rt-web-b/leads") == "rt-web-b"
    with pytest.raises(TenantResolutionError):
        with_path.resolve(path="/t/Not_A_Tenant/leads")


def test_bad_inputs_are_refused(clinics, make_app):
    web, _ = make_app()
    unknown_host = web.get("/users", headers={"Host": "nobody.example.org"})
    assert "nobody.example.org" in assert_problem(unknown_host, 404, "Tenant not found")["detail"]
    assert_problem(web.get("/users", headers={"Host": "rt-nobody.clinics.test"}), 404, "Tenant not found")
    assert_problem(web.get("/users", headers={"X-Tenant-ID": "rt-nobody"}), 404, "Tenant not found")
    assert_problem(web.get("/users", headers={"X-Tenant-ID": "DROP TABLE users;--"}), 400, "Bad tenant reference")

    forged = web.get("/users", headers={"Authorization": f"Bearer {token('rt-web-a', key='x' * 40)}"})
    assert_problem(forged, 401, "Invalid tenant token")
    assert forged.headers["WWW-Authenticate"].startswith("Bearer")
    expired = web.get("/users", headers={"Authorization": f"Bearer {token('rt-web-a', expires_in=-60)}"})
    assert "expired" in assert_problem(expired, 401, "Invalid tenant token")["detail"]
    none_alg = jwt.encode({"tenant_id": "rt-web-a", "exp": int(time.time()) + 60}, None, algorithm="none")
    assert_problem(web.get("/users", headers={"Authorization": f"Bearer {none_alg}"}), 401, "Invalid tenant token")

    # The host says A, the header says B: refused by default...
    contradicted = web.get("/users", headers={"Host": "crm.clinic-a.test", "X-Tenant-ID": "rt-web-b"})
    body = assert_problem(contradicted, 400, "Conflicting tenant references")
    assert "rt-web-a" in body["detail"] and "rt-web-b" in body["detail"]
    token_contradicts = web.get("/users", headers={"X-Tenant-ID": "rt-web-a",
                                                   "Authorization": f"Bearer {token('rt-web-b')}"})
    assert_problem(token_contradicts, 400, "Conflicting tenant references")

    # ...or the first strategy in the configured order wins.
    host_first, _ = make_app(on_conflict="first", strategies=("domain", "header"))
    header_first, _ = make_app(on_conflict="first", strategies=("header", "domain"))
    mixed = {"Host": "crm.clinic-a.test", "X-Tenant-ID": "rt-web-b"}
    assert host_first.get("/users", headers=mixed).get_json()["items"][0]["email"] == "owner@rt-web-a.example"
    assert header_first.get("/users", headers=mixed).get_json()["items"][0]["email"] == "owner@rt-web-b.example"


def test_unavailable_tenants_get_423_or_503(clinics, make_app, client, auth, ctx):
    web, router = make_app(max_connections=1, max_connections_per_tenant=1, acquire_timeout=0.2)
    a = {"X-Tenant-ID": "rt-web-a"}

    assert client.post("/v1/tenants/rt-web-a/suspend", headers=auth).status_code == 200
    assert wait_until(lambda: web.get("/users", headers=a).status_code == 423, 1.0) is not None
    suspended = web.get("/users", headers=a)
    assert assert_problem(suspended, 423, "Tenant suspended")["tenant_id"] == "rt-web-a"
    client.post("/v1/tenants/rt-web-a/resume", headers=auth)

    # Moves and restores belong to other operations; here the catalog is set as they would set it.
    for status in ("restoring", "moving"):
        with ctx.sessions() as session, session.begin():
            session.execute(text("UPDATE tenants SET status = :s WHERE id = 'rt-web-a'"), {"s": status})
        ctx.events.publish("rt-web-a", "status", status=status)
        assert wait_until(lambda: status in web.get("/users", headers=a).get_json()["detail"], 1.0) is not None
        unavailable = web.get("/users", headers=a)
        assert status in assert_problem(unavailable, 503, "Tenant unavailable")["detail"]
        assert unavailable.headers["Retry-After"] == "5"
    with ctx.sessions() as session, session.begin():
        session.execute(text("UPDATE tenants SET status = 'active' WHERE id = 'rt-web-a'"))
    ctx.events.publish("rt-web-a", "status", status="active")
    assert wait_until(lambda: web.get("/users", headers=a).status_code == 200, 1.0) is not None

    # The only connection of this process's budget is busy: 503 after the acquire timeout.
    held = router.acquire("rt-web-b")
    try:
        exhausted = web.get("/users", headers=a)
        assert_problem(exhausted, 503, "Connection budget exhausted")
        assert exhausted.headers["Retry-After"] == "1"
    finally:
        held.release(commit=True)
    # rt-web-b's connection is idle now: rt-web-a gets its slot (within the 0.2 s timeout, unless this
    # machine is very busy: then a retry, as a client would after Retry-After).
    assert wait_until(lambda: web.get("/users", headers=a).status_code == 200, 5) is not None


def test_resolution_settings_are_validated(settings):
    from tenant_runtime import RuntimeConfigurationError, RuntimeSettings

    base = {"catalog_database_url": settings.catalog_database_url, "keyring": settings.keyring}
    with pytest.raises(RuntimeConfigurationError, match="RUNTIME_JWT_KEY"):
        RuntimeSettings(**base, strategies=("jwt",))
    with pytest.raises(RuntimeConfigurationError, match="RUNTIME_MAX_CONNECTIONS_PER_TENANT"):
        RuntimeSettings(**base, max_connections=4, max_connections_per_tenant=5)
    with pytest.raises(RuntimeConfigurationError, match=r"missing required settings: RUNTIME_KEYRING \(or KEYRING\)"):
        RuntimeSettings.from_env({"CATALOG_DATABASE_URL": settings.catalog_database_url})
    from_env = RuntimeSettings.from_env({**{k.upper(): v for k, v in base.items()},
                                         "RUNTIME_MAX_CONNECTIONS": "40", "RUNTIME_ACQUIRE_TIMEOUT": "2.5",
                                         "RUNTIME_BASE_DOMAIN": "Clinics.Test", "RUNTIME_RESOLUTION": "subdomain,header"})
    assert (from_env.max_connections, from_env.acquire_timeout, from_env.base_domain) == (40, 2.5, "clinics.test")
    assert from_env.effective_strategies == ("subdomain", "header")
    assert "keyring" not in repr(from_env) and settings.catalog_database_url not in repr(from_env)
    with TenantRouter(from_env) as router, pytest.raises(TenantConflictError):
        router.resolve(host="rt-web-a.clinics.test", headers={"x-tenant-id": "rt-web-b"})  # a plain dict too
