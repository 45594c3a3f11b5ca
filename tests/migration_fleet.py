"""Helpers for the migration run tests: a fleet provisioned once per module, reset between tests; workers; sabotage.

Creating and dropping a database is the slow part of these tests (every DROP DATABASE forces a checkpoint),
so each test module provisions its tenants once and puts them back at revision 1, active and writable,
after every test, instead of the per-test teardown in conftest.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import pytest
from rq import Queue
from sqlalchemy import delete, insert

import psycopg
from psycopg import sql

import tenant_migrations
from control_plane.catalog.migration_run_models import MigrationRun
from control_plane.adapters.crypto import random_password
from control_plane.catalog.models import DatabaseServer, Tenant, TenantStatus, TokenRole
from control_plane.naming import database_name, role_name
from control_plane.services.context import role_secret_context
from control_plane.services.servers import DEFAULT_SERVER
from control_plane.services.auth import create_token
from helpers import create_tenant, one, operation, tenant

HEAD = tenant_migrations.head_revision()
CLONE_THREADS = 4
FIRST = tenant_migrations.known_revisions()[0]


@pytest.fixture(autouse=True)
def clean_world(monkeypatch):
    """Replaces conftest's per-test teardown in the fleet modules that import it: each module's fleet is
    reset after each test instead."""
    monkeypatch.setenv("PROVISION_FROM_TEMPLATE", "false")  # see Fleet.provision
    yield


def worker_processes(count: int, burst: bool = True) -> list[subprocess.Popen]:
    """`tenantctl worker` processes with this test session's environment (catalog, queue, keyring)."""
    # What `tenantctl worker [--burst]` runs, without loading the whole CLI.
    command = [sys.executable, "-c", "from control_plane.jobs.worker import run_worker; "
               "from control_plane.settings import Settings; import logging; logging.basicConfig(level='INFO'); "
               f"run_worker(Settings.from_env(), burst={burst})"]
    procs = []
    for _ in range(count):
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen(command, env=dict(os.environ), stdout=log, stderr=subprocess.STDOUT)
        proc.log = log  # type: ignore[attr-defined]
        procs.append(proc)
    return procs


def _output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)  # type: ignore[attr-defined]
    return proc.log.read().decode(errors="replace")[-4000:]  # type: ignore[attr-defined]


def run_parallel_workers(count: int, timeout: float = 120) -> None:
    """Several forking burst workers in their own processes, until the queue is empty; fails on a crash."""
    procs = worker_processes(count)
    try:
        for proc in procs:
            proc.wait(timeout=timeout)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for proc in procs:
        assert proc.returncode == 0, _output(proc)


@contextmanager
def running_workers(count: int) -> Iterator[list[subprocess.Popen]]:
    """Long-running workers for the duration of the block, stopped (warm shutdown) after it."""
    procs = worker_processes(count, burst=False)
    try:
        yield procs
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def provision_fleet(client, auth, tenant_ids: list[str], workers: int = 3, run=None) -> None:
    """Provision through the API; jobs run in `workers` parallel worker processes, or with `run` (run_jobs)."""
    operations = {tenant_id: create_tenant(client, auth, tenant_id)["id"] for tenant_id in tenant_ids}
    if run is not None:
        run()
    else:
        run_parallel_workers(workers)
    for tenant_id, operation_id in operations.items():
        assert tenant(client, auth, tenant_id)["status"] == "active", operation(client, auth, operation_id)


def put_at_revision(ctx, tenant_ids: list[str], revision: str = FIRST) -> None:
    """Migrate each tenant's database directly (no job) and record the revision in the catalog."""
    with ctx.sessions() as session, session.begin():
        for tenant_id in tenant_ids:
            row = session.get(Tenant, tenant_id)
            assert ctx.database_of(row).migrate(revision) == revision
            row.schema_revision = revision


def database_revision(admin_url: str, tenant_id: str) -> str | None:
    return one(admin_url, "SELECT version_num FROM alembic_version", dbname=f"tenant_{tenant_id.replace('-', '_')}_db")


def set_read_only(admin_url: str, tenant_id: str, read_only: bool) -> None:
    """Sabotage (or repair) a tenant: every new session of its database is read-only, so DDL fails."""
    database = sql.Identifier(f"tenant_{tenant_id.replace('-', '_')}_db")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        if read_only:
            conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(database))
        else:
            conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database))


def start_run(client, auth, **body) -> dict:
    response = client.post("/v1/migration-runs", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    assert response.headers["Location"] == f"/v1/migration-runs/{response.get_json()['id']}"
    return response.get_json()


def get_run(client, auth, run_id: str, **query) -> dict:
    response = client.get(f"/v1/migration-runs/{run_id}", query_string=query, headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def items_by_tenant(run: dict) -> dict[str, dict]:
    return {item["tenant_id"]: item for item in run["items"]}


class Fleet:
    """A module's tenants: provisioned once, reset after each test, dropped with the module."""

    def __init__(self, ctx, settings, redis_conn, ids: list[str]) -> None:
        self.ctx, self.settings, self.redis_conn, self.ids = ctx, settings, redis_conn, ids

    @classmethod
    def provision(cls, app, ctx, settings, redis_conn, ids: list[str], workers: int = 3) -> "Fleet":
        headers = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'fleet')[1]}"}
        with pytest.MonkeyPatch.context() as patch:
            # Clone-from-template provisioning shares template databases with other test sessions on this
            # server; plain CREATE DATABASE + migrations keeps this fleet independent of them.
            patch.setenv("PROVISION_FROM_TEMPLATE", "false")
            provision_fleet(app.test_client(), headers, ids, workers=workers)
        fleet = cls(ctx, settings, redis_conn, ids)
        put_at_revision(ctx, ids, FIRST)
        return fleet

    def reset(self) -> None:
        """Back to the state right after provisioning: no run, no job, every tenant active at revision 1."""
        Queue(self.settings.queue_name, connection=self.redis_conn).empty()
        admin_url = self.settings.tenant_db_admin_url
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for tenant_id in self.ids:
                database = sql.Identifier(f"tenant_{tenant_id.replace('-', '_')}_db")
                conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(database))
                conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(database))
        with self.ctx.sessions() as session, session.begin():
            session.execute(delete(MigrationRun))
            for tenant_id in self.ids:
                row = session.get(Tenant, tenant_id)
                database = self.ctx.database_of(row)
                if database.current_revision() != FIRST:
                    database.migrate(FIRST)
                row.schema_revision = FIRST
                row.status = TenantStatus.ACTIVE

    def destroy(self) -> None:
        """What conftest's per-test clean-up does, once for the module."""
        admin_url = self.settings.tenant_db_admin_url
        with psycopg.connect(self.settings.catalog_database_url, autocommit=True) as catalog:
            names = catalog.execute("SELECT database_name, role_name FROM tenants").fetchall()
            catalog.execute("TRUNCATE migration_runs, audit_events, operations, tenant_domains, api_tokens, tenants "
                            "CASCADE")
        with psycopg.connect(admin_url, autocommit=True) as conn:
            for database, role in names:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        Queue(self.settings.queue_name, connection=self.redis_conn).empty()


def clone_fleet(ctx, ids: list[str], revision: str = FIRST, server_name: str = DEFAULT_SERVER) -> None:
    """Many active tenants cheaply: a template database at `revision` cloned per tenant (CREATE DATABASE ...
    TEMPLATE), handed to the tenant's own role as provisioning does, and the catalog rows in one insert.
    Meant for a throwaway server (see test_migration_waves.own_server): dropping is left to its removal."""
    with ctx.sessions() as session:
        server = session.get(DatabaseServer, server_name)
    passwords = {tenant_id: random_password() for tenant_id in ids}
    with ctx.sessions() as session, session.begin():
        session.execute(insert(Tenant), [
            {"id": t, "name": t, "status": TenantStatus.ACTIVE, "server_name": server.name,
             "database_name": database_name(t), "role_name": role_name(t), "schema_revision": revision,
             "role_password_encrypted": ctx.keyring.encrypt(passwords[t], role_secret_context(t))} for t in ids])
    template = ctx.template_for(server)
    source = template.ensure(revision)

    def make(chunk: list[str]) -> None:
        with ctx.admin_for(server) as admin:
            for tenant_id in chunk:
                admin.ensure_role(role_name(tenant_id), passwords[tenant_id])
                admin.ensure_database(database_name(tenant_id), role_name(tenant_id), source)
                admin.restrict_connect(database_name(tenant_id), role_name(tenant_id))
                template.hand_over(database_name(tenant_id), role_name(tenant_id))

    with ThreadPoolExecutor(CLONE_THREADS) as pool:  # the server does the work, several at once
        list(pool.map(make, [ids[n::CLONE_THREADS] for n in range(CLONE_THREADS)]))

