"""Provisioning end to end: API → catalog → RQ worker → a real tenant database."""
from __future__ import annotations

import psycopg
import pytest

import tenant_migrations
from control_plane.adapters.passwords import verify_password
from helpers import create_tenant, databases, one, operation, roles, tenant, tenant_login


def test_create_tenant_provisions_an_isolated_database(client, auth, run_jobs, admin_url, ctx):
    accepted = create_tenant(client, auth, "acme-clinic", domains=["acme.example.com"])
    assert accepted["status"] == "queued" and accepted["kind"] == "provision"
    assert tenant(client, auth, "acme-clinic")["status"] == "provisioning"

    run_jobs()

    op = operation(client, auth, accepted["id"])
    assert op["status"] == "succeeded", op
    assert op["progress"] == 100 and op["step"] == "activate"
    generated_password = op["result"]["admin_password"]
    # Returned once: the second read no longer carries it.
    assert "admin_password" not in operation(client, auth, accepted["id"])["result"]

    body = tenant(client, auth, "acme-clinic")
    assert body["status"] == "active"
    assert body["database"] == "tenant_acme_clinic_db" and body["server"] == "default"
    assert body["domains"] == ["acme.example.com"]
    assert body["schema_revision"] == tenant_migrations.head_revision()

    owner = one(admin_url, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", "tenant_acme_clinic_db")
    assert owner == "tenant_acme_clinic"
    assert one(admin_url, "SELECT has_database_privilege('public', %s, 'CONNECT')", "tenant_acme_clinic_db") is False
    assert one(admin_url, "SELECT version_num FROM alembic_version", dbname="tenant_acme_clinic_db") == body["schema_revision"]

    with tenant_login(ctx, "acme-clinic") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_acme_clinic"
        email, role, password_hash = conn.execute("SELECT email, role, password_hash FROM users").fetchone()
        assert (email, role) == ("owner@acme-clinic.example", "admin")
        assert verify_password(password_hash, generated_password)
        stages = [r[0] for r in conn.execute(
            "SELECT s.name FROM pipeline_stages s JOIN pipelines p ON p.id = s.pipeline_id ORDER BY s.position")]
        assert stages[0] == "New" and len(stages) >= 4
        # Every table belongs to the tenant role, not to the admin that ran the job.
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' "
                            "AND tableowner <> current_user").fetchone()[0] == 0


def test_tenant_role_cannot_reach_another_tenant(client, auth, run_jobs, ctx):
    create_tenant(client, auth, "clinic-a")
    create_tenant(client, auth, "clinic-b")
    run_jobs()
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        tenant_login(ctx, "clinic-a", dbname="tenant_clinic_b_db")
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        tenant_login(ctx, "clinic-a", dbname="postgres")


def test_given_admin_password_is_hashed_and_never_echoed(client, auth, run_jobs, ctx):
    accepted = create_tenant(client, auth, "given-pw", admin_password="correct horse battery")
    run_jobs()
    op = operation(client, auth, accepted["id"])
    assert op["status"] == "succeeded" and "admin_password" not in op["result"]
    with tenant_login(ctx, "given-pw") as conn:
        stored = conn.execute("SELECT password_hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2id$") and verify_password(stored, "correct horse battery")


def test_running_the_job_twice_converges(client, auth, run_jobs, admin_url, ctx):
    from control_plane.services.runner import execute_operation

    accepted = create_tenant(client, auth, "twice")
    run_jobs()
    execute_operation(ctx, accepted["id"])  # a duplicate delivery of the same job
    assert operation(client, auth, accepted["id"])["attempts"] == 1
    assert databases(admin_url, "tenant_twice%") == {"tenant_twice_db"}
    assert roles(admin_url, "tenant_twice%") == {"tenant_twice"}
    assert tenant(client, auth, "twice")["status"] == "active"
