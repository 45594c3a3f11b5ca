"""Test helpers that act like a client of the API and look at the world directly."""
from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TypeVar

import psycopg
from psycopg import sql

from control_plane import naming
from control_plane.catalog.models import Tenant, TenantStatus, utcnow
from control_plane.services.context import role_secret_context


def create_tenant(client, auth, tenant_id: str, **extra) -> dict:
    body = {"id": tenant_id, "name": f"Clinic {tenant_id}", "admin_email": f"owner@{tenant_id}.example", **extra}
    response = client.post("/v1/tenants", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def operation(client, auth, operation_id: str) -> dict:
    response = client.get(f"/v1/operations/{operation_id}", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def tenant(client, auth, tenant_id: str) -> dict:
    response = client.get(f"/v1/tenants/{tenant_id}", headers=auth)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def one(admin_url: str, query: str, *params, dbname: str | None = None):
    kwargs = {"autocommit": True, **({"dbname": dbname} if dbname else {})}
    with psycopg.connect(admin_url, **kwargs) as conn:
        row = conn.execute(query, params).fetchone()
        return row[0] if row else None


def databases(admin_url: str, like: str = "tenant_%") -> set[str]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (like,))}


def roles(admin_url: str, like: str = "tenant_%") -> set[str]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (like,))}


def tenant_login(ctx, tenant_id: str, dbname: str | None = None) -> psycopg.Connection:
    """Connect as the tenant's own role (password decrypted from the catalog), optionally to another database."""
    from control_plane.catalog.models import Tenant
    from control_plane.services.context import role_secret_context

    with ctx.sessions() as session:
        row = session.get(Tenant, tenant_id)
        password = ctx.keyring.decrypt(row.role_password_encrypted, role_secret_context(tenant_id))
        return psycopg.connect(host=row.server.host, port=row.server.port, user=row.role_name, password=password,
                               dbname=dbname or row.database_name, autocommit=True, connect_timeout=5)


def quote(identifier: str) -> sql.Identifier:
    return sql.Identifier(identifier)


T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout: float = 120.0, poll: float = 0.2) -> T:
    """Poll `condition` until it holds (a generous deadline: 2 shared cores), else fail naming `what`;
    returns what it returned."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)
    return value


def catalog_tenant(ctx, tenant_id: str, *, created_ago: timedelta = timedelta(days=1),
                   backed_up_ago: timedelta | None = None, plan: str = "standard") -> None:
    """An active tenant as a catalog row only (no database): enough for what requests, the scheduler and
    the staleness filter decide, as long as no job runs."""
    now = utcnow()
    with ctx.sessions() as session:
        session.add(Tenant(id=tenant_id, name=tenant_id, status=TenantStatus.ACTIVE, server_name="default",
                           database_name=naming.database_name(tenant_id), role_name=naming.role_name(tenant_id),
                           role_password_encrypted=ctx.keyring.encrypt("x", role_secret_context(tenant_id)),
                           created_at=now - created_ago, plan=plan,
                           last_backup_at=now - backed_up_ago if backed_up_ago is not None else None))
        session.commit()
