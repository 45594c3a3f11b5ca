"""The whole disaster: the catalog database and every tenant database are gone; the store, the copy store
and the KEYRING alone bring every tenant back, active, with the data of its newest backup."""
from __future__ import annotations

import json
import shutil
import time
import uuid

import pytest
from click.testing import CliRunner
from psycopg import sql
from sqlalchemy import make_url

from backup_support import back_up, fingerprint, tid, write_rows
from conftest import admin_connect
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.db import create_catalog_engine, upgrade_catalog
from control_plane.catalog.models import Tenant, TenantStatus, TokenRole
from control_plane.cli import cli
from control_plane.jobs.worker import build_worker
from control_plane.services import servers
from control_plane.services.auth import create_token
from control_plane.settings import Settings
from helpers import create_tenant, roles, tenant

ALPHA = tid("dr-alpha")
BRAVO = tid("dr-bravo")


def _invoke(*args: str):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def _drop(admin_url: str, catalog_db: str) -> None:
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(catalog_db)))
        for tenant_id in (ALPHA, BRAVO):
            slug = tenant_id.replace("-", "_")
            for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                        (f"tenant_{slug}%",)).fetchall():
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(f"tenant_{slug}")))


@pytest.fixture
def dr_world(admin_url, monkeypatch, tmp_path):
    """A control plane of its own (catalog, queue, store, copy store), so the test may destroy it."""
    catalog_db = f"cp_test_dr_{uuid.uuid4().hex[:8]}"
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(catalog_db)))
    env = {"CATALOG_DATABASE_URL": make_url(admin_url).set(database=catalog_db).render_as_string(hide_password=False),
           "BACKUP_STORE_URL": f"file://{tmp_path / 'store'}", "BACKUP_COPY_STORE_URL": f"file://{tmp_path / 'copy'}",
           "QUEUE_NAME": f"test-dr-{uuid.uuid4().hex[:8]}"}
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # the CLI and the forked work horses read the environment
    settings = Settings.from_env()
    engine = create_catalog_engine(settings.catalog_database_url)
    upgrade_catalog(engine)
    engine.dispose()
    yield settings, catalog_db, tmp_path
    _drop(admin_url, catalog_db)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_the_store_and_the_keyring_alone_bring_the_whole_fleet_back(dr_world, admin_url):
    settings, catalog_db, root = dr_world
    ctx = build_context(settings)
    servers.ensure_default_server(ctx)
    client = create_app(ctx=ctx).test_client()
    auth = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'dr')[1]}"}

    def run_jobs() -> None:
        build_worker(settings).work(burst=True, logging_level="WARNING")

    for tenant_id in (ALPHA, BRAVO):
        create_tenant(client, auth, tenant_id)
    run_jobs()
    write_rows(ctx, ALPHA, "alpha", leads=6)
    write_rows(ctx, BRAVO, "bravo", leads=4)
    back_up(client, auth, run_jobs, ALPHA)
    expected = {BRAVO: fingerprint(ctx, BRAVO)}
    back_up(client, auth, run_jobs, BRAVO)
    _invoke("catalog", "backup")
    # After the catalog backup: a newer backup the restored catalog will not know (adopted from the store).
    write_rows(ctx, ALPHA, "alpha-later", leads=2)
    expected[ALPHA] = fingerprint(ctx, ALPHA)
    newest = back_up(client, auth, run_jobs, ALPHA)
    write_rows(ctx, ALPHA, "lost", leads=1)  # after every backup: lost, as an RPO allows
    dispose(ctx)

    # The disaster: the catalog and every tenant database and role are gone; one primary object too.
    _drop(admin_url, catalog_db)
    (root / "store" / ALPHA / newest["id"] / "dump.pgc.zst.aes").unlink()
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(catalog_db)))

    started = time.monotonic()
    listed = json.loads(_invoke("catalog", "backups", "--json"))
    assert len(listed) == 1 and sorted(listed[0]["sources"]) == ["copy", "primary"]
    restored = json.loads(_invoke("catalog", "restore", "latest"))
    assert restored["tenants"] == 2 and restored["backup_id"] == listed[0]["backup_id"]
    # Reconcile may have run meanwhile and marked a tenant whose database is missing `failed`: recovered too.
    ctx = build_context(settings)
    try:
        with ctx.sessions() as session:
            session.get(Tenant, BRAVO).lose_database()
            session.commit()
    finally:
        dispose(ctx)
    url_file = root / "new-server-url"  # the replacement server (here the same one, at the same address)
    url_file.write_text(admin_url)
    recovered = {r["tenant_id"]: r for r in json.loads(_invoke("fleet", "recover", "--server", "default", "--json",
                                                               "--admin-url-file", str(url_file)))}
    took = time.monotonic() - started
    print(f"\nwhole-disaster recovery of {len(recovered)} tenants: {took:.1f} s")

    assert {t: r["status"] for t, r in recovered.items()} == {ALPHA: "recovered", BRAVO: "recovered"}
    assert {t: r["previous_status"] for t, r in recovered.items()} == {ALPHA: "active", BRAVO: "failed"}
    assert recovered[ALPHA]["backup_id"] == newest["id"] and recovered[ALPHA]["source"] == "copy"
    assert recovered[BRAVO]["source"] == "primary"
    ctx = build_context(settings)
    try:
        client = create_app(ctx=ctx).test_client()
        for tenant_id in (ALPHA, BRAVO):
            assert tenant(client, auth, tenant_id)["status"] == "active"
            assert fingerprint(ctx, tenant_id) == expected[tenant_id]
        assert {f"tenant_{t.replace('-', '_')}" for t in (ALPHA, BRAVO)} <= roles(admin_url)
        with ctx.sessions() as session:
            assert {session.get(Tenant, t).status for t in (ALPHA, BRAVO)} == {TenantStatus.ACTIVE}
        # Running it again changes nothing: both databases are there.
        again = json.loads(_invoke("fleet", "recover", "--server", "default", "--json"))
        assert {r["status"] for r in again} == {"present"}
    finally:
        dispose(ctx)


def test_catalog_restore_refuses_a_catalog_in_use_and_falls_back_to_the_copy(dr_world, admin_url):
    from control_plane.services.catalog_backups import CatalogNotEmptyError, restore_catalog

    settings, catalog_db, root = dr_world
    backup_id = _invoke("catalog", "backup").strip().splitlines()[-1]
    ctx = build_context(settings)
    try:
        with pytest.raises(CatalogNotEmptyError):
            restore_catalog(ctx, backup_id)
    finally:
        dispose(ctx)

    data = root / "store" / "_catalog" / backup_id / "dump.pgc.zst.aes"
    damaged = bytearray(data.read_bytes())
    damaged[-100] ^= 0x01
    data.write_bytes(bytes(damaged))
    _drop(admin_url, catalog_db)
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(catalog_db)))
    restored = json.loads(_invoke("catalog", "restore", backup_id))
    assert restored["source"] == "copy" and "failed authentication" in restored["fallback_reason"]
    ctx = build_context(settings)
    try:
        with ctx.sessions() as session:
            assert session.get(Tenant, ALPHA) is None  # the catalog is back, empty of tenants as it was
            assert [server.name for server, _ in servers.list_servers(ctx)] == ["default"]
    finally:
        dispose(ctx)
