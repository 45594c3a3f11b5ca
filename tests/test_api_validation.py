"""The edge: bad input is refused with the field named, conflicts with 409, auth with 401/403."""
from __future__ import annotations

import threading

import pytest

from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token
from helpers import create_tenant, databases

VALID = {"id": "valid-clinic", "name": "Valid Clinic", "admin_email": "owner@valid.example"}


def _post(client, auth, **changes):
    body = {**VALID, **changes}
    body = {key: value for key, value in body.items() if value is not None}
    return client.post("/v1/tenants", json=body, headers=auth)


@pytest.mark.parametrize("bad_id", [
    "Acme", "acme'; DROP DATABASE postgres; --", "ac", "a" * 41, "acme--clinic", "acme-", "1acme", "acme_clinic",
    "acme clinic", 'ac"me', "", "ácme",
])
def test_malformed_ids_are_422_naming_the_field(client, auth, bad_id):
    response = _post(client, auth, id=bad_id)
    assert response.status_code == 422
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == 422 and "id" in body["errors"]["json"]


@pytest.mark.parametrize("field", ["id", "name", "admin_email"])
def test_missing_required_field(client, auth, field):
    response = _post(client, auth, **{field: None})
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]


@pytest.mark.parametrize("field,value", [
    ("admin_email", "not-an-email"), ("name", "x" * 201), ("domains", ["not a domain"]),
    ("domains", ["UPPER.example.com"]), ("domains", ["a.example.com", "a.example.com"]), ("plan", ""),
    ("admin_password", "short"), ("domains", "acme.example.com"),
])
def test_invalid_field_values(client, auth, field, value):
    response = _post(client, auth, **{field: value})
    assert response.status_code == 422
    assert field in response.get_json()["errors"]["json"]


def test_unknown_field_is_named(client, auth):
    response = _post(client, auth, database="postgres")
    assert response.status_code == 422
    assert "database" in response.get_json()["errors"]["json"]


def test_oversized_body_is_refused_as_problem(client, auth):
    response = _post(client, auth, name="x" * 100_000)
    assert response.status_code == 413
    assert response.mimetype == "application/problem+json"


def test_nothing_is_created_by_invalid_input(client, auth, admin_url):
    _post(client, auth, id="bad--id")
    assert client.get("/v1/tenants", headers=auth).get_json() == []


def test_duplicate_id_and_domain_are_409(client, auth):
    create_tenant(client, auth, "first", domains=["first.example.com"])
    again = _post(client, auth, id="first")
    assert again.status_code == 409 and again.mimetype == "application/problem+json"
    taken = _post(client, auth, id="second", domains=["first.example.com"])
    assert taken.status_code == 409 and "first.example.com" in taken.get_json()["detail"]


def test_concurrent_creates_of_one_id_give_one_tenant(app, auth, run_jobs, admin_url):
    statuses: list[int] = []
    barrier = threading.Barrier(20)

    def create() -> None:
        client = app.test_client()
        barrier.wait()
        statuses.append(_post(client, auth, id="racy").status_code)

    threads = [threading.Thread(target=create) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [202] + [409] * 19
    run_jobs()
    assert databases(admin_url, "tenant_racy%") == {"tenant_racy_db"}


def test_idempotency_key_replays_the_same_operation(client, auth):
    headers = {**auth, "Idempotency-Key": "create-once"}
    first = client.post("/v1/tenants", json=VALID, headers=headers)
    second = client.post("/v1/tenants", json=VALID, headers=headers)
    assert first.status_code == second.status_code == 202
    assert first.get_json()["id"] == second.get_json()["id"]
    other = client.post("/v1/tenants", json={**VALID, "name": "Other"}, headers=headers)
    assert other.status_code == 422 and "Idempotency-Key" in other.get_json()["errors"]["headers"]


def test_no_token_is_401_and_bad_token_is_401(client):
    assert client.get("/v1/tenants").status_code == 401
    response = client.get("/v1/tenants", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401 and response.mimetype == "application/problem+json"


def test_tenant_admin_is_scoped_to_its_tenant(client, auth, ctx):
    create_tenant(client, auth, "mine")
    create_tenant(client, auth, "theirs")
    _, token = create_token(ctx, TokenRole.TENANT_ADMIN, "mine-admin", "mine")
    scoped = {"Authorization": f"Bearer {token}"}
    assert client.get("/v1/tenants/mine", headers=scoped).status_code == 200
    assert client.get("/v1/tenants/theirs", headers=scoped).status_code == 403
    assert [t["id"] for t in client.get("/v1/tenants", headers=scoped).get_json()] == ["mine"]
    assert _post(client, scoped, id="new-one").status_code == 403
    assert client.delete("/v1/tenants/mine", headers=scoped).status_code == 403
    assert client.post("/v1/tenants/mine/suspend", headers=scoped).status_code == 403
    ops = client.get("/v1/operations", headers=scoped).get_json()
    assert ops and {op["tenant_id"] for op in ops} == {"mine"}


def test_list_filters_and_paginates(client, auth):
    for index in range(5):
        create_tenant(client, auth, f"page-{index}", name=f"Page {index}")
    create_tenant(client, auth, "other-one", name="Something else")
    response = client.get("/v1/tenants?q=page&page=2&page_size=2", headers=auth)
    assert [t["id"] for t in response.get_json()] == ["page-2", "page-3"]
    assert '"total": 5' in response.headers["X-Pagination"]
    assert len(client.get("/v1/tenants?status=provisioning", headers=auth).get_json()) == 6
    assert client.get("/v1/tenants?status=active", headers=auth).get_json() == []
    assert client.get("/v1/tenants?status=bogus", headers=auth).status_code == 422


def test_openapi_and_docs_are_served(client):
    spec = client.get("/openapi.json").get_json()
    assert "/v1/tenants" in spec["paths"] and "/v1/operations/{operation_id}" in spec["paths"]
    assert client.get("/docs").status_code == 200
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["catalog"] == "ok"


def test_metrics_count_tenants_and_operations(client, auth):
    create_tenant(client, auth, "metered")
    text = client.get("/metrics").get_data(as_text=True)
    assert 'control_plane_tenants{status="provisioning"} 1.0' in text
    assert 'control_plane_operations{kind="provision",status="queued"} 1.0' in text
