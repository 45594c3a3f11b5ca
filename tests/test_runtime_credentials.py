"""Least privilege for tenant applications: a runtime with only its documented credentials (RUNTIME_KEYRING,
a catalog role made by `tenantctl runtime grant`, a Redis user that may only subscribe) serves its tenants,
hears the control plane's events, and can neither decrypt a server's admin URL nor enqueue a job. Also: the
tenant header is off by default and, when on, believed only from trusted proxies."""
from __future__ import annotations

import base64
import os
import secrets
import uuid

import psycopg
import pytest
import redis
from click.testing import CliRunner
from psycopg import sql
from rq import Queue
from sqlalchemy import make_url

from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.models import DatabaseServer, Tenant
from control_plane.cli import cli
from control_plane.services.backup_keys import rotate_keys
from control_plane.services.context import server_secret_context
from control_plane.settings import Settings
from conftest import admin_connect
from test_runtime_support import provision, router_factory, wait_until  # noqa: F401 (fixture)
from tenant_runtime import TenantNotFoundError, TenantSuspendedError
from tenant_runtime.crypto import Keyring
from tenant_runtime.errors import DecryptionError
from tenant_runtime.resolution import TenantResolver
from tenant_runtime.settings import RuntimeSettings


@pytest.fixture
def runtime_credentials(settings, tmp_path):
    """A catalog login role and a Redis user, granted through tenantctl as the README says; removed after."""
    role, password = f"rt_app_{uuid.uuid4().hex[:8]}", secrets.token_urlsafe(18)
    user = f"rt-events-{uuid.uuid4().hex[:8]}"
    with admin_connect(settings.catalog_database_url) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password)))
    password_file = tmp_path / "events-password"
    password_file.write_text(password)
    runner = CliRunner()
    granted = runner.invoke(cli, ["runtime", "grant", role], catch_exceptions=False)
    assert granted.exit_code == 0 and "GRANT SELECT" in granted.stdout
    created = runner.invoke(cli, ["runtime", "events-user", user, "--password-file", str(password_file)],
                            catch_exceptions=False)
    assert created.exit_code == 0
    catalog_url = make_url(settings.catalog_database_url).set(username=role, password=password)
    redis_url = make_url(settings.redis_url)
    events_url = f"redis://{user}:{password}@{redis_url.host}:{redis_url.port}/0"
    yield catalog_url.render_as_string(hide_password=False), events_url
    with admin_connect(settings.catalog_database_url) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))
    redis.Redis.from_url(settings.redis_url).acl_deluser(user)


def test_a_runtime_with_its_own_credentials_serves_tenants_and_nothing_more(
        client, auth, run_jobs, settings, monkeypatch, router_factory, runtime_credentials):
    runtime_keyring = f"rt1:{base64.b64encode(os.urandom(32)).decode()}"
    monkeypatch.setenv("RUNTIME_KEYRING", runtime_keyring)  # the control plane's workers read it too
    plane = build_context(Settings.from_env())
    try:
        provision(client, auth, run_jobs, "rt-least")
        # An existing catalog: the role password was sealed under KEYRING; `keys rotate` moves it.
        assert rotate_keys(plane)["role_passwords"] >= 1
        assert rotate_keys(plane)["role_passwords"] == 0  # converged
        with plane.sessions() as session:
            assert Keyring.key_id_of(session.get(Tenant, "rt-least").role_password_encrypted) == "rt1"
            admin_url_sealed = session.get(DatabaseServer, "default").admin_url_encrypted

        catalog_url, events_url = runtime_credentials
        router = router_factory(catalog_database_url=catalog_url, keyring=runtime_keyring, redis_url=events_url)
        with router.connection("rt-least") as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_rt_least"
        # It hears the control plane: a suspension reaches it through its subscribe-only Redis user.
        assert wait_until(lambda: router.metrics()["events_connected"], timeout=10) is not None
        assert client.post("/v1/tenants/rt-least/suspend", headers=auth).status_code == 200
        def refused() -> bool:
            try:
                with router.connection("rt-least"):
                    return False
            except TenantSuspendedError:
                return True
        assert wait_until(refused, timeout=10) is not None

        # It cannot decrypt a server's admin URL: no SELECT on the column, and no key for it anyway.
        with psycopg.connect(catalog_url) as conn:
            for forbidden in ("SELECT admin_url_encrypted FROM database_servers", "SELECT * FROM tenants",
                              "SELECT token_hash FROM api_tokens", "SELECT * FROM tenant_backup_keys",
                              "UPDATE tenants SET status = 'active'"):
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    conn.execute(forbidden)
                conn.rollback()
        with pytest.raises(DecryptionError):
            Keyring.parse(runtime_keyring).decrypt(admin_url_sealed, server_secret_context("default"))

        # It cannot enqueue a job (RQ jobs are pickled: that would be code execution in the workers).
        limited = redis.Redis.from_url(events_url)
        with pytest.raises(redis.exceptions.NoPermissionError):
            Queue(settings.queue_name, connection=limited).enqueue("os.getcwd")
        with pytest.raises(redis.exceptions.NoPermissionError):
            limited.lpush(f"rq:queue:{settings.queue_name}", "x")
    finally:
        dispose(plane)


def test_the_tenant_header_is_off_by_default_and_believed_only_from_trusted_proxies():
    base = {"catalog_database_url": "postgresql://runtime@catalog/cp", "keyring": Keyring.generate_spec()}
    assert "header" not in RuntimeSettings(**base).effective_strategies
    headers = {"X-Tenant-ID": "clinic-b", "Host": "clinic-a.example"}
    domains = {"clinic-a.example": "clinic-a"}.get
    default = TenantResolver(RuntimeSettings(**base), domains)
    assert default.resolve(headers=headers, peer="203.0.113.9") == "clinic-a"  # the header is not read

    proxied = RuntimeSettings.from_env({"RUNTIME_CATALOG_URL": base["catalog_database_url"],
                                        "RUNTIME_KEYRING": base["keyring"], "RUNTIME_RESOLUTION": "header",
                                        "RUNTIME_TRUSTED_PROXIES": "10.0.0.0/8, 192.0.2.7"})
    resolver = TenantResolver(proxied, domains)
    assert resolver.resolve(headers=headers, peer="10.1.2.3") == "clinic-b"
    assert resolver.resolve(headers=headers, peer="192.0.2.7") == "clinic-b"
    for untrusted in ("203.0.113.9", None, "not-an-address"):
        with pytest.raises(TenantNotFoundError):
            resolver.resolve(headers=headers, peer=untrusted)
