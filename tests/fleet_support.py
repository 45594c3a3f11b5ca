"""Fixtures shared by the fleet tests (moves, placement): two more PostgreSQL clusters with
wal_level=logical, registered as servers `pg2` and `pg3` for a test and wiped after it (no tests here).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Iterator

import psycopg
import pytest
from psycopg import sql

import devstack
from conftest import drop_templates
from helpers import create_tenant, tenant


@pytest.fixture(scope="session")
def logical_servers() -> Iterator[dict[str, devstack.PostgresServer]]:
    root = devstack.scratch_dir("fleet")
    servers = {name: devstack.PostgresServer(root / name, fast=True, logical=True) for name in ("pg2", "pg3")}
    try:
        for server in servers.values():
            server.start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


def wipe(url: str) -> None:
    """Everything tenants and moves leave on a server: subscriptions, slots, databases, roles."""
    with psycopg.connect(url, autocommit=True) as conn:
        ours = "datname LIKE 'tenant\\_%' OR datname LIKE 'cp\\_quarantine\\_%'"
        for (database,) in conn.execute(f"SELECT datname FROM pg_database WHERE {ours}").fetchall():
            conn.execute(sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(sql.Identifier(database)))
            with psycopg.connect(url, dbname=database, autocommit=True) as db:
                for (sub,) in db.execute("SELECT subname FROM pg_subscription "
                                         "WHERE subdbid = (SELECT oid FROM pg_database "
                                         "WHERE datname = current_database())").fetchall():
                    db.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(sql.Identifier(sub)))
                    db.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(sql.Identifier(sub)))
                    db.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(sub)))
        conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active_pid IS NOT NULL")
        for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall():
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:
                pass
        for (database,) in conn.execute(f"SELECT datname FROM pg_database WHERE {ours}").fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
        for (role,) in conn.execute("SELECT rolname FROM pg_roles "
                                    "WHERE rolname LIKE 'tenant\\_%' OR rolname LIKE 'cp\\_move\\_%' "
                                    "OR rolname LIKE 'cp\\_quarantine\\_%'").fetchall():
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    drop_templates(url)


@dataclass
class Fleet:
    client: object
    auth: dict
    run_jobs: object
    servers: dict[str, devstack.PostgresServer]

    def url(self, name: str) -> str:
        return self.servers[name].url

    def place(self, tenant_id: str, server: str) -> None:
        """Provision a tenant on `server` (the others draining meanwhile)."""
        others = ["default", *self.servers]
        for name in others:
            if name != server:
                self.client.post(f"/v1/servers/{name}/drain", headers=self.auth, json={"move_tenants": False})
        try:
            create_tenant(self.client, self.auth, tenant_id)
            self.run_jobs()
        finally:
            for name in others:
                if name != server:
                    self.client.post(f"/v1/servers/{name}/drain", headers=self.auth, json={"draining": False})
        body = tenant(self.client, self.auth, tenant_id)
        assert body["status"] == "active" and body["server"] == server, body


@pytest.fixture
def fleet(client, auth, run_jobs, logical_servers, admin_url, settings) -> Iterator[Fleet]:
    for name, server in logical_servers.items():
        response = client.post("/v1/servers", headers=auth, json={"name": name, "admin_url": server.url})
        assert response.status_code == 201, response.get_json()
    yield Fleet(client, auth, run_jobs, logical_servers)
    for server in logical_servers.values():
        wipe(server.url)
    with psycopg.connect(admin_url, autocommit=True) as conn:  # what moves off `default` retired there
        for (database,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tenant\\_%\\_mv\\_%'"):
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(database)))
    with psycopg.connect(settings.catalog_database_url, autocommit=True) as conn:
        conn.execute("DELETE FROM retired_databases WHERE server_name <> 'default'")
        conn.execute("TRUNCATE drain_runs CASCADE")
