"""tenant_runtime.sqlalchemy: ORM sessions on the router's connections, per unit of work and per Flask request."""
from __future__ import annotations

import threading

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import event, func, select, text
from sqlalchemy.exc import IntegrityError

from tenant_migrations.models import Lead, Message, Pipeline, TenantBase, User
from tenant_runtime.flask import db_session, get_connection
from tenant_runtime.example_app import create_app
from benchmarks._sessions import SessionSampler
from test_runtime_support import (background_drops, bulk_tenants, provision,  # noqa: F401
                                  router_factory, server_connections)


@pytest.fixture
def clinics(client, auth, run_jobs):
    provision(client, auth, run_jobs, "rt-orm-a", "rt-orm-b")
    return "rt-orm-a", "rt-orm-b"


class CheckedOut:
    """SQLAlchemy connections handed out by the router's engine and not yet given back."""

    def __init__(self, router) -> None:
        self.count = 0
        event.listen(router.sessions.engine, "checkout", lambda *args: self._add(1))
        event.listen(router.sessions.engine, "checkin", lambda *args: self._add(-1))

    def _add(self, delta: int) -> None:
        self.count += delta


def lead_names(router, tenant_id: str) -> list[str]:
    with router.session(tenant_id) as session:
        return list(session.scalars(select(Lead.full_name).order_by(Lead.id)))


def test_sessions_are_per_tenant_and_commit_or_roll_back(clinics, router_factory):
    router = router_factory(max_connections=2, max_connections_per_tenant=2)
    checked_out = CheckedOut(router)
    a, b = clinics

    with router.session(a) as session:
        sales = session.scalars(select(Pipeline)).one()
        assert [stage.name for stage in sales.stages][:2] == ["New", "Contacted"]
        lead = Lead(full_name="Ana Lima", email="ana@example.com", pipeline_id=sales.id, stage_id=sales.stages[0].id)
        lead.messages.append(Message(direction="inbound", channel="whatsapp", body="Hello"))
        session.add(lead)
    assert lead.id is not None and lead.score == 0 and lead.created_at is not None  # server-filled, readable after
    assert lead_names(router, a) == ["Ana Lima"]
    with router.session(b) as session:  # the same models, another tenant's database
        assert session.scalar(select(func.count()).select_from(Lead)) == 0
        assert session.scalars(select(User.email)).all() == ["owner@rt-orm-b.example"]
        assert session.scalar(text("SELECT current_database()")) == "tenant_rt_orm_b_db"

    with pytest.raises(RuntimeError, match="changed my mind"):
        with router.session(a) as session:
            session.add(Lead(full_name="Rolled Back"))
            session.flush()
            raise RuntimeError("changed my mind")
    with pytest.raises(IntegrityError):  # fails at the commit's flush: rolled back, connection still usable
        with router.session(a) as session:
            session.add(Lead(full_name="Also rolled back"))
            session.add(Pipeline(name="Sales", position=9))
    assert lead_names(router, a) == ["Ana Lima"]
    assert router.metrics()["connections_in_use"] == 0 and checked_out.count == 0


def test_a_session_joins_work_done_on_its_connection_before(clinics, router_factory):
    router = router_factory()  # a fresh engine: its first connection initialises the dialect (and rolls back)
    a, _ = clinics
    with router.connection(a) as conn:
        conn.execute("INSERT INTO leads (full_name) VALUES ('Before the session')")
        with router.sessions.bind(conn) as session:
            session.add(Lead(full_name="In the session"))
            session.flush()
            assert session.scalar(select(func.count()).select_from(Lead)) == 2
    assert lead_names(router, a) == ["Before the session", "In the session"]


def test_the_orm_path_stays_within_the_budget(bulk_tenants, router_factory, admin_url):
    tenants = [f"rt-orm-budget-{n}" for n in range(6)]
    bulk_tenants(tenants)
    router = router_factory(max_connections=3, max_connections_per_tenant=2, acquire_timeout=30)
    checked_out = CheckedOut(router)
    done: list[int] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        for n in range(6):
            with router.session(tenants[(index + n) % len(tenants)]) as session:
                session.execute(text("SELECT pg_sleep(0.01)"))
                with lock:
                    done.append(session.scalar(text("SELECT 1")))

    with SessionSampler(admin_url, router.application_name_pattern()) as sampler:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(done) == 48
    assert 1 <= sampler.peak <= 3 and router.metrics()["connections_open_peak"] <= 3
    assert server_connections(admin_url, router.application_name_pattern()) <= 3
    assert checked_out.count == 0  # SQLAlchemy holds nothing between units of work


@pytest.mark.parametrize("orm", [True, False], ids=["orm", "psycopg"])
def test_the_clinic_crm_on_both_paths(clinics, router_factory, orm):
    router = router_factory(strategies=("header",))  # these requests name their tenant in X-Tenant-ID
    web = create_app(router, orm=orm).test_client()
    a, b = {"X-Tenant-ID": "rt-orm-a"}, {"X-Tenant-ID": "rt-orm-b"}

    stages = web.get("/pipelines", headers=a).get_json()["items"][0]["stages"]
    created = web.post("/leads", json={"full_name": "Bia Rocha", "phone": "+55 11 98888-0000"}, headers=a)
    assert created.status_code == 201, created.get_data(as_text=True)
    lead = created.get_json()
    assert lead["stage_id"] == stages[0]["id"] and lead["score"] == 0 and lead["created_at"]
    moved = web.post(f"/leads/{lead['id']}/move", json={"stage_id": stages[1]["id"]}, headers=a).get_json()
    assert moved["stage_id"] == stages[1]["id"] and moved["updated_at"] >= lead["updated_at"]
    assert web.patch(f"/leads/{lead['id']}", json={"notes": "fillers"}, headers=a).get_json()["notes"] == "fillers"

    message = web.post(f"/leads/{lead['id']}/messages", json={"direction": "inbound", "channel": "whatsapp",
                                                              "body": "Oi!"}, headers=a)
    assert message.status_code == 201 and message.get_json()["status"] == "queued"
    booked = web.post(f"/leads/{lead['id']}/appointments", headers=a,
                      json={"starts_at": "2026-12-01T10:00:00+00:00", "ends_at": "2026-12-01T10:30:00+00:00"})
    assert booked.status_code == 201 and booked.get_json()["status"] == "scheduled"
    assert [m["body"] for m in web.get(f"/leads/{lead['id']}/messages", headers=a).get_json()["items"]] == ["Oi!"]
    assert len(web.get(f"/leads/{lead['id']}/appointments", headers=a).get_json()["items"]) == 1
    assert web.get("/leads?q=bia", headers=a).get_json()["items"][0]["id"] == lead["id"]

    # Isolation, validation, conflicts: nothing of a failed request stays.
    assert web.get(f"/leads/{lead['id']}", headers=b).status_code == 404
    assert web.post(f"/leads/{lead['id']}/messages", json={"direction": "sideways", "channel": "sms", "body": "x"},
                    headers=a).status_code == 422
    duplicate = web.post("/pipelines", json={"name": "Sales", "stages": ["x"]}, headers=a)
    assert duplicate.status_code == 409 and "uq_pipelines_name" in duplicate.get_json()["detail"]
    assert [p["name"] for p in web.get("/pipelines", headers=a).get_json()["items"]] == ["Sales"]
    assert web.post("/pipelines", json={"name": "Implants", "stages": ["Lead", "Surgery"]}, headers=b).status_code == 201
    assert [p["name"] for p in web.get("/pipelines", headers=b).get_json()["items"]] == ["Sales", "Implants"]
    assert router.metrics()["connections_in_use"] == 0


def test_the_request_session_is_closed_and_rolled_back_on_errors(clinics, router_factory):
    router = router_factory(strategies=("header",))  # these requests name their tenant in X-Tenant-ID
    checked_out = CheckedOut(router)
    app = create_app(router)

    @app.post("/boom")
    def boom():
        db_session().add(Lead(full_name="Never saved"))
        db_session().flush()
        raise RuntimeError("boom")

    @app.post("/both")
    def both():  # psycopg and the ORM share the request's connection and transaction
        get_connection().execute("INSERT INTO leads (full_name) VALUES ('via psycopg')")
        db_session().add(Lead(full_name="via the ORM"))  # flushed by the commit after the response
        return {"leads": db_session().scalar(select(func.count()).select_from(Lead))}

    @app.post("/refused")
    def refused():
        db_session().add(Lead(full_name="Refused"))
        db_session().flush()
        return {"error": "no"}, 422

    web = app.test_client()
    headers = {"X-Tenant-ID": "rt-orm-a"}
    assert web.post("/boom", headers=headers).status_code == 500
    assert web.post("/refused", headers=headers).status_code == 422
    assert web.post("/both", headers=headers).get_json() == {"leads": 2}
    assert lead_names(router, "rt-orm-a") == ["via psycopg", "via the ORM"]
    assert router.metrics()["connections_in_use"] == 0 and checked_out.count == 0
    assert router.tenant_pool_stats("rt-orm-a")["in_use"] == 0


def test_the_models_match_the_migrated_schema(clinics, router_factory):
    router = router_factory()
    with router.connection(clinics[0]) as conn, router.sessions.bind(conn) as session:
        diffs = compare_metadata(MigrationContext.configure(session.connection()), TenantBase.metadata)
    # Tables, columns, types and nullability agree; indexes and unique constraints live in the database only.
    kinds = {diff[0] if isinstance(diff, tuple) else diff[0][0] for diff in diffs}
    assert kinds <= {"remove_index", "remove_constraint"}, diffs
