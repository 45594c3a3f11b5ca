"""TLS to tenant servers (verify-full end to end, refusal with the wrong CA, REQUIRE_TLS) and no clear role
password in PostgreSQL's log (log_statement = 'all') after provisioning, backup, restore and key rotation."""
from __future__ import annotations

import shutil
from dataclasses import replace

import psycopg
import pytest

from backup_support import back_up, restore
from control_plane.catalog.models import DatabaseServer, Tenant
from control_plane.errors import ConfigurationError, InsecureServerError, ValidationError
from control_plane.services import servers
from control_plane.services.backup_keys import rotate_keys
from control_plane.services.context import role_secret_context
from control_plane.settings import Settings
from helpers import create_tenant, tenant
from tls_support import start_tls_server


@pytest.fixture(scope="module")
def tls_server():
    tls = start_tls_server()
    yield tls
    tls.server.stop()
    shutil.rmtree(tls.root, ignore_errors=True)


def role_password(ctx, tenant_id: str) -> str:
    with ctx.sessions() as session:
        row = session.get(Tenant, tenant_id)
        return ctx.keyring.decrypt(row.role_password_encrypted, role_secret_context(tenant_id))


def test_verify_full_end_to_end_and_no_role_password_in_the_server_log(client, auth, run_jobs, ctx, tls_server):
    refused = client.post("/v1/servers", headers=auth, json={"name": "tls", "admin_url": tls_server.url(
        tls_server.wrong_ca_file)})
    assert refused.status_code == 422 and "certificate" in refused.get_json()["detail"]
    registered = client.post("/v1/servers", headers=auth, json={"name": "tls", "admin_url": tls_server.url()})
    assert registered.status_code == 201
    with ctx.sessions() as session:
        assert session.get(DatabaseServer, "tls").tls == {"sslmode": "verify-full",
                                                          "sslrootcert": str(tls_server.ca_file)}
    client.post("/v1/servers/default/drain", headers=auth, json={})
    try:
        create_tenant(client, auth, "tls-clinic")
        run_jobs()
        assert tenant(client, auth, "tls-clinic")["status"] == "active"
        assert tenant(client, auth, "tls-clinic")["server"] == "tls"
        backup = back_up(client, auth, run_jobs, "tls-clinic")
        assert restore(client, auth, run_jobs, "tls-clinic", backup["id"], safety_backup=False)["status"] == "succeeded"
        rotate_keys(ctx)

        # Connections as the tenant role carry the registered TLS options: with the CA file swapped
        # for another CA's, they are refused; with it back, they work.
        with ctx.sessions() as session:
            database = ctx.database_of(session.get(Tenant, "tls-clinic"))
        good_ca = tls_server.ca_file.read_bytes()
        tls_server.ca_file.write_bytes(tls_server.wrong_ca_file.read_bytes())
        try:
            with pytest.raises(Exception, match="certificate verify failed"):
                database.current_revision()
        finally:
            tls_server.ca_file.write_bytes(good_ca)
        assert database.current_revision() is not None

        log = tls_server.log_text()
        assert "SCRAM-SHA-256$" in log  # the role DDL was logged, as a verifier
        assert role_password(ctx, "tls-clinic") not in log
        assert tls_server.server.password not in log
    finally:
        client.post("/v1/servers/default/drain", headers=auth, json={"draining": False})


def test_require_tls_refuses_unverified_connections(ctx, settings, tls_server, monkeypatch):
    for name, value in {"REQUIRE_TLS": "true", "CATALOG_DATABASE_URL": settings.catalog_database_url,
                        "REDIS_URL": settings.redis_url, "TENANT_DB_ADMIN_URL": settings.tenant_db_admin_url,
                        "BACKUP_STORE_URL": settings.backup_store_url, "KEYRING": settings.keyring}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env()
    for name in ("CATALOG_DATABASE_URL", "REDIS_URL", "TENANT_DB_ADMIN_URL"):
        assert name in refused.value.detail
    assert settings.tenant_db_admin_url not in refused.value.detail

    strict = replace(ctx, settings=replace(settings, require_tls=True))
    with pytest.raises(ValidationError, match="verify-full"):
        servers.register_server(strict, "test", "tls-weak", tls_server.url(sslmode="require"), None)
    registered = servers.register_server(strict, "test", "tls-strict", tls_server.url(), None)
    assert strict.admin_for(registered) is not None
    with strict.sessions() as session:
        default = session.get(DatabaseServer, "default")
    with pytest.raises(InsecureServerError):
        strict.admin_for(default)
    with psycopg.connect(tls_server.url()) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()[0] is True
