"""Warm provisioning: spare databases at head claimed by concurrent provisionings, each exactly once."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from click.testing import CliRunner
from psycopg import sql
from rq.job import Job

import tenant_migrations
from control_plane.adapters.passwords import verify_password
from control_plane.adapters.tenant_database import TenantDatabase
from control_plane.app import create_app
from control_plane.cli import cli
from control_plane.errors import DatabaseServerError
from control_plane.naming import job_id
from control_plane.services import warm_pools
from helpers import create_tenant, databases, one, operation, tenant, tenant_login
from test_plans import role_limits

TENANTS = [f"warm-{index}" for index in range(10)]


@pytest.fixture
def warm(ctx, settings, admin_url, monkeypatch):
    """WARM_POOL_SIZE=2 for this test (the suite runs with 0); spares dropped after it."""
    monkeypatch.setenv("WARM_POOL_SIZE", "2")
    yield dataclasses.replace(ctx, settings=dataclasses.replace(settings, warm_pool_size=2))
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for (database, role) in conn.execute(
                "SELECT d.datname, r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                "WHERE d.datname LIKE 'cp\\_warm%'").fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def warm_app(warm):
    """An API whose requests claim spares themselves (the suite's `app` runs with WARM_POOL_SIZE=0)."""
    return create_app(ctx=warm)


def test_a_create_that_finds_a_spare_is_active_when_answered(warm_app, auth, warm, admin_url, redis_conn):
    assert warm_pools.refill_all(warm) == {"default": 2}
    client = warm_app.test_client()

    answer = create_tenant(client, auth, "warm-now")
    # Finished within the request: no job, no worker; the answer is the operation's first read.
    assert answer["status"] == "succeeded" and answer["result"]["warm"] is True, answer
    assert not Job.exists(job_id(answer["id"]), connection=redis_conn)
    generated_password = answer["result"]["admin_password"]
    assert "admin_password" not in operation(client, auth, answer["id"])["result"]
    assert tenant(client, auth, "warm-now")["status"] == "active"
    with tenant_login(warm, "warm-now") as conn:
        (password_hash,) = conn.execute("SELECT password_hash FROM users WHERE email = 'owner@warm-now.example'"
                                        ).fetchone()
        assert verify_password(password_hash, generated_password)
    assert len(databases(admin_url, "cp\\_warm\\_%")) == 1
    assert Job.exists("warm-pool-refill", connection=redis_conn)  # the spare taken is made again in the background


def test_ten_concurrent_creates_race_for_the_warm_pool(warm_app, auth, warm, admin_url):
    """Two spares, ten creates at once: two finish within their requests, each on its own spare; the eight
    others are queued, and workers provision them (from the spares refilled meanwhile, or cold)."""
    assert warm_pools.refill_all(warm) == {"default": 2}
    assert len(databases(admin_url, "cp\\_warm\\_%")) == 2
    assert warm_pools.refill_all(warm) == {"default": 0}  # full: nothing to do

    assert warm_app.test_client().post("/v1/plans", headers=auth, json={
        "name": "warm-plan", "connection_limit": 4, "statement_timeout_ms": 6000}).status_code == 201
    with ThreadPoolExecutor(len(TENANTS)) as requests:
        answers = list(requests.map(lambda tenant_id: create_tenant(warm_app.test_client(), auth, tenant_id,
                                                                    plan="warm-plan"), TENANTS))
    in_request = [answer for answer in answers if answer["status"] == "succeeded"]
    assert len(in_request) == 2 and all(answer["result"]["warm"] for answer in in_request), answers
    assert sum(answer["status"] == "queued" for answer in answers) == 8, answers

    workers = [subprocess.Popen([sys.executable, "-m", "control_plane.cli", "worker", "--burst"], env=os.environ,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    for worker in workers:
        assert worker.wait(timeout=300) == 0

    client = warm_app.test_client()
    results = [operation(client, auth, answer["id"]) for answer in answers]
    assert all(result["status"] == "succeeded" for result in results), results
    claimed = sum(result["result"]["warm"] for result in results)
    assert 2 <= claimed <= 10
    for tenant_id in TENANTS:
        assert tenant(client, auth, tenant_id)["status"] == "active"
        database, role = f"tenant_{tenant_id.replace('-', '_')}_db", f"tenant_{tenant_id.replace('-', '_')}"
        assert one(admin_url, "SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                              "WHERE d.datname = %s", database) == role
        # The plan's limits, given in the claim's own transaction to a claimed spare's role.
        assert role_limits(admin_url, role) == [4, ["statement_timeout=6000"]]
        with tenant_login(warm, tenant_id) as conn:  # its own password, its own objects, seeded
            assert conn.execute("SELECT email FROM users").fetchall() == [(f"owner@{tenant_id}.example",)]
            assert conn.execute("SELECT count(*) FROM pipeline_stages").fetchone()[0] == 5  # the spare's seed
            conn.execute("INSERT INTO leads (full_name) VALUES ('owned')")
    # Every spare claimed went to exactly one tenant; the refills left the pool full again.
    assert len(databases(admin_url, "cp\\_warm\\_%")) == 2
    assert not databases(admin_url, "cp\\_warming\\_%")


def test_a_step_failing_after_the_claim_in_the_request_leaves_it_to_a_worker(warm_app, auth, warm, admin_url,
                                                                             run_jobs, monkeypatch):
    """The spare is claimed in the request, then the admin user cannot be written: the answer is a queued
    operation, and the worker adopts the claimed database instead of taking another spare."""
    assert warm_pools.refill_all(warm) == {"default": 2}
    client = warm_app.test_client()

    def server_gone(*args, **kwargs):
        raise DatabaseServerError("tenant database tenant_warm_late_db: the server closed the connection")

    with monkeypatch.context() as patched:  # in this process only: the worker's horse must not inherit it
        patched.setattr(TenantDatabase, "seed_admin", server_gone)
        answer = create_tenant(client, auth, "warm-late")
    assert answer["status"] == "queued", answer
    assert one(admin_url, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
               "tenant_warm_late_db") == "tenant_warm_late"  # claimed, with its role
    assert len(databases(admin_url, "cp\\_warm\\_%")) == 1

    run_jobs()
    result = operation(client, auth, answer["id"])
    assert result["status"] == "succeeded" and result["attempts"] == 1, result
    assert tenant(client, auth, "warm-late")["status"] == "active"
    with tenant_login(warm, "warm-late") as conn:
        assert conn.execute("SELECT email FROM users").fetchall() == [("owner@warm-late.example",)]
        assert conn.execute("SELECT count(*) FROM pipeline_stages").fetchone()[0] == 5


def test_the_pool_is_rebuilt_when_head_moves(client, warm, admin_url, monkeypatch):
    """Spares made at an older head are dropped by the next refill and made again at the new head (`client`
    registers the default server)."""
    one_spare = dataclasses.replace(warm, settings=dataclasses.replace(warm.settings, warm_pool_size=1))
    old_head, head = tenant_migrations.known_revisions()[0], tenant_migrations.head_revision()
    assert old_head != head
    with monkeypatch.context() as patched:
        patched.setattr(tenant_migrations, "head_revision", lambda: old_head)
        assert warm_pools.refill_all(one_spare) == {"default": 1}
    (old_spare,) = databases(admin_url, "cp\\_warm\\_%")
    assert one(admin_url, "SELECT version_num FROM alembic_version", dbname=old_spare) == old_head
    old_role = one(admin_url, "SELECT r.rolname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                              "WHERE d.datname = %s", old_spare)

    assert warm_pools.refill_all(one_spare) == {"default": 1}  # head moved on: rebuilt
    (new_spare,) = databases(admin_url, "cp\\_warm\\_%")
    assert new_spare != old_spare
    assert one(admin_url, "SELECT version_num FROM alembic_version", dbname=new_spare) == head
    assert one(admin_url, "SELECT count(*) FROM pg_roles WHERE rolname = %s", old_role) == 0


def test_the_cli_shows_the_password_of_a_tenant_provisioned_within_its_call(warm, auth, warm_app):
    """`tenantctl tenants create --no-wait` (direct mode, WARM_POOL_SIZE=2 in its environment) finishes on a
    spare: the generated admin password, shown only once, is printed then."""
    assert warm_pools.refill_all(warm) == {"default": 2}
    created = CliRunner().invoke(cli, ["tenants", "create", "warm-cli", "--name", "Warm CLI", "--admin-email",
                                       "a@warm-cli.example", "--no-wait"], catch_exceptions=False)
    assert created.exit_code == 0, created.output
    assert "succeeded" in created.stderr and '"admin_password"' in created.stdout
    assert tenant(warm_app.test_client(), auth, "warm-cli")["status"] == "active"
