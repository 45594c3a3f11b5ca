"""Fixtures and helpers of the backup tests: a moto S3 server over HTTP, known rows, table fingerprints.

Test modules import the fixtures they use (`from backup_support import ...`); `backup_cleanup` is
autouse there and runs before conftest's `clean_world` tears down (it drops what that one cannot:
databases restores retired, scratch databases, the backup tables' rows, the stored objects).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from psycopg import sql

from control_plane import naming
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from control_plane.settings import Settings
from helpers import create_tenant, operation, tenant, tenant_login

# Tenant ids are unique per test session: several sessions (developers, CI) share one PostgreSQL, and
# database and role names are global to it.
RUN = uuid.uuid4().hex[:4]


def tid(name: str) -> str:
    return f"bk-{name}-{RUN}"


def db(tenant_id: str) -> str:
    return naming.database_name(tenant_id)


def role(tenant_id: str) -> str:
    """The tenant's role name, also the prefix of all its databases (live, scratch, retired)."""
    return naming.role_name(tenant_id)


TABLES = ("users", "pipelines", "pipeline_stages", "leads", "messages", "procedures", "appointments")


@pytest.fixture(autouse=True)
def backup_cleanup(request, admin_url):
    yield
    if "settings" not in request.fixturenames:
        return
    settings = request.getfixturevalue("settings")
    with psycopg.connect(settings.catalog_database_url, autocommit=True) as catalog:
        live = {row[0] for row in catalog.execute("SELECT database_name FROM tenants")}
        catalog.execute("TRUNCATE backups, backup_copies, tenant_backup_keys, backup_policies, retired_databases, "
                        "restore_drills")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        # Retired (dated) and scratch databases of this session's tenants: owned by tenant roles,
        # which clean_world drops next. Other sessions' databases carry another RUN.
        leftovers = [row[0] for row in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (rf"tenant\_bk\_%\_{RUN}\_%",))]
        for name in leftovers:
            if name not in live:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    root = Path(urlparse(settings.backup_store_url).path)
    if root.is_dir():
        for child in root.iterdir():
            shutil.rmtree(child) if child.is_dir() else child.unlink()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def moto_endpoint():
    """moto's standalone S3 server, over HTTP on a free port, for the whole session."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Werkzeug announces the socket once it listens: wait for that line, not for a timer.
        for line in proc.stderr:
            if "Running on" in line:
                break
        else:
            raise RuntimeError(f"moto server exited with status {proc.wait()}")
        # Keep draining its log so it never blocks on a full pipe.
        threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_settings(settings: Settings, moto_endpoint, monkeypatch):
    """The session's settings with an S3 store on moto (a fresh bucket); the environment too, for the
    forked work horses. The bucket is emptied and removed afterwards."""
    import boto3

    bucket = f"bk-{uuid.uuid4().hex[:12]}"
    env = {"BACKUP_STORE_URL": f"s3://{bucket}/backups", "S3_ENDPOINT_URL": moto_endpoint,
           "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    yield replace(settings, backup_store_url=env["BACKUP_STORE_URL"], s3_endpoint_url=moto_endpoint)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=item["Key"])
    s3.delete_bucket(Bucket=bucket)


@pytest.fixture
def s3_ctx(s3_settings):
    context = build_context(s3_settings)
    yield context
    dispose(context)


@pytest.fixture
def s3_client(s3_ctx):
    return create_app(ctx=s3_ctx).test_client()


@pytest.fixture
def s3_bucket(s3_settings, moto_endpoint):
    """(boto3 client, bucket, prefix) to look at the bucket directly."""
    import boto3

    parsed = urlparse(s3_settings.backup_store_url)
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1"), parsed.netloc, parsed.path.strip("/")


# -- helpers --------------------------------------------------------------------------------------------

def active_tenant(client, auth, run_jobs, tenant_id: str) -> None:
    create_tenant(client, auth, tenant_id)
    run_jobs()
    assert tenant(client, auth, tenant_id)["status"] == "active"


def write_rows(ctx, tenant_id: str, marker: str, leads: int = 40, messages_per_lead: int = 3) -> None:
    """Known rows in the tenant's own tables, through the tenant's role."""
    with tenant_login(ctx, tenant_id) as conn:
        for i in range(leads):
            lead_id = conn.execute(
                "INSERT INTO leads (full_name, email, phone, source, notes) VALUES (%s, %s, %s, 'web', %s) RETURNING id",
                (f"{marker} lead {i}", f"{marker}.{i}@clinic.example", f"+3400000{i:04d}",
                 f"{marker} note {i}: botox consultation follow-up")).fetchone()[0]
            for j in range(messages_per_lead):
                conn.execute("INSERT INTO messages (lead_id, direction, channel, body) VALUES (%s, %s, 'whatsapp', %s)",
                             (lead_id, "inbound" if j % 2 else "outbound", f"{marker} message {i}.{j}"))
        conn.execute("INSERT INTO procedures (name, duration_minutes, price) VALUES (%s, 30, 120.00)",
                     (f"{marker} peel",))


def fingerprint(ctx, tenant_id: str, dbname: str | None = None) -> dict[str, tuple[int, str]]:
    """Per table: row count and an md5 over every row in key order."""
    with tenant_login(ctx, tenant_id, dbname) as conn:
        return {table: conn.execute(sql.SQL("SELECT count(*), coalesce(md5(string_agg(t::text, '|' ORDER BY t.id)), '') "
                                            "FROM {} t").format(sql.Identifier(table))).fetchone()
                for table in TABLES}


def back_up(client, auth, run_jobs, tenant_id: str, **body) -> dict:
    """Start a backup through the API, run it, return the backup record."""
    response = client.post(f"/v1/tenants/{tenant_id}/backups", json=body, headers=auth)
    assert response.status_code == 202, response.get_json()
    run_jobs()
    done = operation(client, auth, response.get_json()["id"])
    assert done["status"] == "succeeded", done
    backup = client.get(f"/v1/backups/{done['result']['backup_id']}", headers=auth)
    assert backup.status_code == 200
    return backup.get_json()


def restore(client, auth, run_jobs, tenant_id: str, backup_id: str, **body) -> dict:
    """Start a restore through the API, run it, return the finished operation."""
    response = client.post(f"/v1/tenants/{tenant_id}/restore", json={"backup_id": backup_id, **body}, headers=auth)
    assert response.status_code == 202, response.get_json()
    run_jobs()
    return operation(client, auth, response.get_json()["id"])


def databases_like(admin_url: str, pattern: str) -> set[str]:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        return {row[0] for row in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,))}


def store_root(settings: Settings) -> Path:
    return Path(urlparse(settings.backup_store_url).path)


def chunk_spans(stored: bytes) -> list[tuple[int, int]]:
    """(start, end) of each framed chunk of a data object (length prefix included)."""
    import struct

    (header_length,) = struct.unpack(">I", stored[8:12])
    position, spans = 12 + header_length, []
    while position + 4 <= len(stored):
        (length,) = struct.unpack(">I", stored[position:position + 4])
        spans.append((position, position + 4 + length))
        position += 4 + length
    return spans
