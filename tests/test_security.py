"""Hardening that needs no special server: redaction, lock keys, what provisioning touches, what tenant admins see."""
from __future__ import annotations

import logging
import uuid
import zlib
from dataclasses import replace

import pytest
from click.testing import CliRunner
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from control_plane.api.disclosure import SUMMARY
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.db import create_catalog_engine
from control_plane.catalog.models import DatabaseServer, Operation, OperationKind, OperationStatus, TokenRole
from control_plane.cli import cli
from control_plane.errors import LockLostError
from control_plane.naming import tenant_lock_key
from control_plane.services.auth import create_token
from control_plane.services.context import server_secret_context
from control_plane.services.servers import DEFAULT_SERVER, ensure_default_server
from conftest import admin_connect
from helpers import create_tenant, one


def test_settings_print_without_secrets(settings):
    printed = repr(settings) + str(settings)
    for secret in (settings.keyring, settings.keyring.split(":", 1)[1]):
        assert secret not in printed
    from sqlalchemy import make_url
    for url in (settings.catalog_database_url, settings.tenant_db_admin_url):
        password = make_url(url).password
        assert password and password not in printed
    assert "***" in printed and "catalog_database_url" in printed


def test_catalog_engines_hide_bound_parameters(settings):
    engine = create_catalog_engine(settings.catalog_database_url)
    try:
        with engine.connect() as conn, pytest.raises(DBAPIError) as failure:
            conn.execute(text("SELECT CAST(:value AS text), 1 / 0"), {"value": "hidden-bound-secret"})
        assert "division by zero" in str(failure.value)
        assert "hidden-bound-secret" not in str(failure.value)
    finally:
        engine.dispose()


def test_lock_keys_are_64_bit_and_do_not_collide_like_crc32():
    # "plumless" and "buckeroo" are a known CRC-32 collision, and both are valid tenant ids.
    assert zlib.crc32(b"tenant:plumless") == zlib.crc32(b"tenant:buckeroo")
    assert tenant_lock_key("plumless") != tenant_lock_key("buckeroo")
    keys = {tenant_lock_key(f"clinic-{n}") for n in range(2000)}
    assert len(keys) == 2000
    assert all(-(2 ** 63) <= key < 2 ** 63 for key in keys)
    assert any(abs(key) >= 2 ** 40 for key in keys)


def test_swagger_ui_is_served_from_the_installed_package(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "cdn" not in html.lower() and "https://" not in html
    assert "/docs/assets/swagger-ui-bundle.js" in html
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and len(bundle.get_data()) > 100_000
    assert client.get("/docs/assets/../../settings.py").status_code == 404


def test_the_default_server_is_registered_once_and_changed_deliberately(ctx, settings, caplog, tmp_path):
    def stored_url() -> str:
        with ctx.sessions() as session:
            server = session.get(DatabaseServer, DEFAULT_SERVER)
            return ctx.keyring.decrypt(server.admin_url_encrypted, server_secret_context(DEFAULT_SERVER))

    original = stored_url()
    other_url = settings.tenant_db_admin_url + ("&" if "?" in settings.tenant_db_admin_url else "?") + \
        "application_name=elsewhere"
    other = replace(ctx, settings=replace(settings, tenant_db_admin_url=other_url))
    caplog.set_level(logging.WARNING, logger="control_plane.services.servers")
    assert ensure_default_server(other) is False
    assert stored_url() == original
    warning = [r.getMessage() for r in caplog.records if "differs" in r.getMessage()]
    assert warning and all(original not in message and other_url not in message for message in warning)

    url_file = tmp_path / "url"
    url_file.write_text(other_url)
    try:
        changed = CliRunner().invoke(cli, ["servers", "set-url", DEFAULT_SERVER, "--admin-url-file", str(url_file)],
                                     catch_exceptions=False)
        assert changed.exit_code == 0 and stored_url() == other_url
    finally:
        with ctx.sessions() as session, session.begin():
            session.get(DatabaseServer, DEFAULT_SERVER).admin_url_encrypted = ctx.keyring.encrypt(
                original, server_secret_context(DEFAULT_SERVER))


def test_tenant_admins_see_failures_summarised_and_no_storage_locations(client, auth, ctx):
    create_tenant(client, auth, "summed")
    _, tenant_token = create_token(ctx, TokenRole.TENANT_ADMIN, "summed-admin", "summed")
    internal = "could not connect to server at 10.1.2.3:5432 as cp_admin (database tenant_summed_db)"
    with ctx.sessions() as session, session.begin():
        op = Operation(kind=OperationKind.BACKUP, tenant_id="summed", status=OperationStatus.FAILED, error=internal,
                       result={"location": "s3://private-bucket/backups/summed/x/", "backup_id": "x"})
        session.add(op)
    as_admin = client.get(f"/v1/operations/{op.id}", headers={"Authorization": f"Bearer {tenant_token}"})
    assert as_admin.status_code == 200
    body = as_admin.get_data(as_text=True)
    assert "10.1.2.3" not in body and "private-bucket" not in body
    assert as_admin.get_json()["error"] == SUMMARY and as_admin.get_json()["result"] == {"backup_id": "x"}
    as_super = client.get(f"/v1/operations/{op.id}", headers=auth).get_json()
    assert as_super["error"] == internal and as_super["result"]["location"].startswith("s3://")


def test_provisioning_closes_only_the_shared_databases_and_clones_template0(client, auth, run_jobs, admin_url,
                                                                          monkeypatch):
    bystander = f"someone_elses_{uuid.uuid4().hex[:8]}"
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(bystander)))
    with admin_connect(admin_url, "template1") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS not_for_tenants (id int)")
    try:
        for tenant_id, from_template in (("owned-t", "true"), ("owned-m", "false")):
            monkeypatch.setenv("PROVISION_FROM_TEMPLATE", from_template)  # jobs read their settings at run time
            create_tenant(client, auth, tenant_id)
            run_jobs()
        for database in ("postgres", "template1"):
            assert one(admin_url, "SELECT has_database_privilege('public', %s, 'CONNECT')", database) is False
        assert one(admin_url, "SELECT has_database_privilege('public', %s, 'CONNECT')", bystander) is True
        for tenant_id in ("owned-t", "owned-m"):
            dbname = f"tenant_{tenant_id.replace('-', '_')}_db"
            assert one(admin_url, "SELECT to_regclass('public.not_for_tenants') IS NULL", dbname=dbname) is True
    finally:
        with admin_connect(admin_url, "template1") as conn:
            conn.execute("DROP TABLE IF EXISTS not_for_tenants")
        with admin_connect(admin_url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(bystander)))


def test_tenant_admins_have_a_daily_backup_allowance_and_a_retention_cap(client, auth, run_jobs, ctx, settings):
    create_tenant(client, auth, "fair")
    run_jobs()
    token_row, token = create_token(ctx, TokenRole.TENANT_ADMIN, "fair-admin", "fair")
    tenant_admin = {"Authorization": f"Bearer {token}"}

    too_long = client.post("/v1/tenants/fair/backups", json={"expires_in_days": 3650}, headers=tenant_admin)
    assert too_long.status_code == 422 and "expires_in_days" in too_long.get_json()["errors"]["json"]

    with ctx.sessions() as session, session.begin():  # the day's allowance, already used
        for _ in range(settings.tenant_admin_backups_per_day):
            session.add(Operation(kind=OperationKind.BACKUP, tenant_id="fair", status=OperationStatus.SUCCEEDED,
                                  params={"trigger": "manual"}, requested_by=token_row.id))
    refused = client.post("/v1/tenants/fair/backups", json={}, headers=tenant_admin)
    assert refused.status_code == 429 and 0 < int(refused.headers["Retry-After"]) <= 86400
    # Super admins are not limited, in number or in retention.
    assert client.post("/v1/tenants/fair/backups", json={"expires_in_days": 3650}, headers=auth).status_code == 202


def test_a_lost_lock_connection_is_detected_and_the_lock_freed(ctx, admin_url):
    key = tenant_lock_key("leased")
    high, low = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    with ctx.locks.hold("leased") as lease:
        lease.check()
        with admin_connect(admin_url) as conn:  # what a partition or a catalog failover does to the session
            ended = conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' "
                                 "AND classid::bigint = %s AND objid::bigint = %s", (high, low)).fetchone()[0]
        assert ended == 1
        with pytest.raises(LockLostError):
            lease.check()
    with ctx.locks.hold("leased", wait_seconds=1) as again:
        again.check()
