"""Backups and restores end to end on the file:// store: round trips, clone, stored bytes, API access."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import psycopg
import pytest
from click.testing import CliRunner
from sqlalchemy import make_url

import tenant_migrations
from backup_support import (active_tenant, back_up, backup_cleanup, databases_like, fingerprint, restore,  # noqa: F401
                            store_root, write_rows)
from control_plane.adapters.pg_backup import choose_client
from control_plane.backup_errors import BackupKeyError
from control_plane.catalog.backup_models import Backup
from control_plane.catalog.models import TokenRole
from control_plane.cli import cli
from control_plane.naming import TENANT_EVENTS_CHANNEL
from control_plane.services import backups as backup_service
from control_plane.services.auth import create_token
from helpers import one, operation, roles, tenant, tenant_login


def test_round_trip_in_place_and_as_new_tenant(client, auth, run_jobs, ctx, settings, admin_url, redis_conn):
    active_tenant(client, auth, run_jobs, "bk-round")
    write_rows(ctx, "bk-round", "known")
    known = fingerprint(ctx, "bk-round")
    backup = back_up(client, auth, run_jobs, "bk-round")
    assert backup["status"] == "completed" and backup["trigger"] == "manual"
    assert tenant(client, auth, "bk-round")["last_backup_at"] == backup["completed_at"]

    # Change and delete rows after the backup.
    write_rows(ctx, "bk-round", "later", leads=5)
    with tenant_login(ctx, "bk-round") as conn:
        conn.execute("DELETE FROM leads WHERE full_name LIKE 'known lead 1%'")
        conn.execute("UPDATE procedures SET price = 1")
    assert fingerprint(ctx, "bk-round") != known
    app_session = tenant_login(ctx, "bk-round")  # a tenant app's open connection to the old database
    events = redis_conn.pubsub()
    events.subscribe(TENANT_EVENTS_CHANNEL)

    done = restore(client, auth, run_jobs, "bk-round", backup["id"])
    assert done["status"] == "succeeded", done
    assert fingerprint(ctx, "bk-round") == known
    with pytest.raises(psycopg.OperationalError):
        app_session.execute("SELECT 1")  # ended by the swap
    app_session.close()
    changes: list[tuple] = []
    while ("status", "active") not in changes:  # already published: each read returns at once
        message = events.get_message(timeout=5.0)
        assert message is not None, changes
        if message["type"] == "message" and json.loads(message["data"])["tenant_id"] == "bk-round":
            body = json.loads(message["data"])
            changes.append((body["change"], body.get("status")))
    events.close()
    assert changes == [("status", "restoring"), ("restored", None), ("status", "active")]
    body = tenant(client, auth, "bk-round")
    assert body["status"] == "active"
    retired = done["result"]["retired_database"]
    assert databases_like(admin_url, "tenant_bk_round%") == {"tenant_bk_round_db", retired}
    assert done["result"]["safety_backup_id"]

    cloned = restore(client, auth, run_jobs, "bk-round", backup["id"], mode="new_tenant", new_tenant_id="bk-clone")
    assert cloned["status"] == "succeeded", cloned
    assert tenant(client, auth, "bk-clone")["status"] == "active"
    assert fingerprint(ctx, "bk-clone") == known
    assert "tenant_bk_clone" in roles(admin_url, "tenant_bk_clone")
    assert one(admin_url, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'tenant_bk_clone_db'") \
        == "tenant_bk_clone"
    assert one(admin_url, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          "WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> 'tenant_bk_clone'",
               dbname="tenant_bk_clone_db") == 0


def test_stored_bytes_are_not_plaintext_and_the_layout_is_documented(client, auth, run_jobs, ctx, settings):
    active_tenant(client, auth, run_jobs, "bk-opaque")
    write_rows(ctx, "bk-opaque", "secretive")
    backup = back_up(client, auth, run_jobs, "bk-opaque")
    folder = store_root(settings) / "bk-opaque" / backup["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["dump.pgc.zst.aes", "manifest.json"]
    assert backup["location"] == f"{settings.backup_store_url}/bk-opaque/{backup['id']}/"
    data = (folder / "dump.pgc.zst.aes").read_bytes()
    assert b"PGDMP" not in data and b"secretive" not in data and b"clinic.example" not in data
    assert len(data) == backup["stored_bytes"] < backup["archive_bytes"]
    assert hashlib.sha256(data).hexdigest() == backup["sha256"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == backup["manifest"]
    assert manifest["tenant_id"] == "bk-opaque" and manifest["backup_id"] == backup["id"]
    assert manifest["schema_revision"] == tenant_migrations.head_revision()
    assert manifest["object"] == {"name": "dump.pgc.zst.aes", "bytes": len(data), "sha256": backup["sha256"]}
    assert manifest["encryption"]["cipher"] == "AES-256-GCM" and manifest["encryption"]["keyring_key_id"] == "test1"
    assert manifest["postgresql"]["server_version"].startswith("15")
    assert int(manifest["postgresql"]["pg_dump_version"].split(".")[0]) >= 15
    assert b"secretive" not in (folder / "manifest.json").read_bytes()


def test_decrypt_gives_an_archive_stock_pg_restore_reads(client, auth, run_jobs, ctx, admin_url, tmp_path):
    active_tenant(client, auth, run_jobs, "bk-plain")
    write_rows(ctx, "bk-plain", "known")
    known = fingerprint(ctx, "bk-plain")
    backup = back_up(client, auth, run_jobs, "bk-plain")
    out = tmp_path / "bk-plain.pgdump"
    result = CliRunner().invoke(cli, ["backups", "decrypt", backup["id"], "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:5] == b"PGDMP" and out.stat().st_size == backup["archive_bytes"]
    assert out.stat().st_mode & 0o077 == 0

    client_bin = choose_client(15).bin_dir
    listing = subprocess.run([f"{client_bin}/pg_restore", "--list", str(out)], capture_output=True, text=True)
    assert listing.returncode == 0 and "TABLE DATA public leads" in listing.stdout
    scratch = "bk_plain_check"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {scratch}")
        conn.execute(f"CREATE DATABASE {scratch}")
    try:
        restored = subprocess.run([f"{client_bin}/pg_restore", "--no-owner", "--no-privileges", "--exit-on-error",
                                   "-d", make_url(admin_url).set(database=scratch).render_as_string(False), str(out)],
                                  capture_output=True, text=True)
        assert restored.returncode == 0, restored.stderr
        assert one(admin_url, "SELECT count(*) FROM leads", dbname=scratch) == known["leads"][0]
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")

    # A damaged backup leaves no output file behind.
    path = next((Path(urlparse(ctx.settings.backup_store_url).path) / "bk-plain" / backup["id"]).glob("dump*"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    damaged = tmp_path / "damaged.pgdump"
    result = CliRunner().invoke(cli, ["backups", "decrypt", backup["id"], "-o", str(damaged)])
    assert result.exit_code != 0 and "failed authentication" in str(result.exception)
    assert not damaged.exists() and not list(tmp_path.glob(".damaged*"))


def test_tenant_admins_back_up_and_restore_their_own_tenant_only(client, auth, run_jobs, ctx):
    active_tenant(client, auth, run_jobs, "bk-mine")
    active_tenant(client, auth, run_jobs, "bk-theirs")
    theirs = back_up(client, auth, run_jobs, "bk-theirs")
    mine = {"Authorization": f"Bearer {create_token(ctx, TokenRole.TENANT_ADMIN, 'owner', 'bk-mine')[1]}"}

    started = client.post("/v1/tenants/bk-mine/backups", json={}, headers=mine)
    assert started.status_code == 202 and started.headers["Location"] == f"/v1/operations/{started.get_json()['id']}"
    run_jobs()
    done = operation(client, mine, started.get_json()["id"])
    assert done["status"] == "succeeded"
    listed = client.get("/v1/tenants/bk-mine/backups", headers=mine)
    assert listed.status_code == 200 and [b["id"] for b in listed.get_json()] == [done["result"]["backup_id"]]
    assert client.get(f"/v1/backups/{done['result']['backup_id']}", headers=mine).status_code == 200
    assert restore(client, mine, run_jobs, "bk-mine", done["result"]["backup_id"])["status"] == "succeeded"

    assert client.post("/v1/tenants/bk-theirs/backups", json={}, headers=mine).status_code == 403
    assert client.get("/v1/tenants/bk-theirs/backups", headers=mine).status_code == 403
    assert client.get(f"/v1/backups/{theirs['id']}", headers=mine).status_code == 404
    assert client.post("/v1/tenants/bk-theirs/restore", json={"backup_id": theirs["id"]}, headers=mine).status_code == 403
    clone = client.post("/v1/tenants/bk-mine/restore", headers=mine,
                        json={"backup_id": done["result"]["backup_id"], "mode": "new_tenant", "new_tenant_id": "bk-copy"})
    assert clone.status_code == 403
    assert client.get("/v1/tenants/bk-mine/backups").status_code == 401
    # Someone else's backup id is not restorable through my tenant, even by a super admin.
    assert client.post("/v1/tenants/bk-mine/restore", json={"backup_id": theirs["id"]}, headers=auth).status_code == 404
    missing = client.post("/v1/tenants/bk-mine/restore", json={"backup_id": theirs["id"], "mode": "new_tenant"},
                          headers=auth)
    assert missing.status_code == 422 and "new_tenant_id" in missing.get_json()["errors"]["json"]


def test_delete_takes_a_final_backup_and_purge_shreds_every_backup(client, auth, run_jobs, ctx, settings, admin_url):
    active_tenant(client, auth, run_jobs, "bk-leaving")
    write_rows(ctx, "bk-leaving", "known")
    client.delete("/v1/tenants/bk-leaving", headers=auth)
    run_jobs()
    assert tenant(client, auth, "bk-leaving")["status"] == "deleted"
    final = client.get("/v1/tenants/bk-leaving/backups", headers=auth).get_json()
    assert [(b["trigger"], b["status"]) for b in final] == [("pre-delete", "completed")]
    # The deleted tenant comes back from its final backup, as a new tenant.
    assert restore(client, auth, run_jobs, "bk-leaving", final[0]["id"], mode="new_tenant",
                   new_tenant_id="bk-back")["status"] == "succeeded"
    assert one(admin_url, "SELECT count(*) FROM leads", dbname="tenant_bk_back_db") == 40

    active_tenant(client, auth, run_jobs, "bk-erased")
    write_rows(ctx, "bk-erased", "personal")
    old = back_up(client, auth, run_jobs, "bk-erased")
    restore(client, auth, run_jobs, "bk-erased", old["id"], safety_backup=False)  # leaves a retired database
    folder = store_root(settings) / "bk-erased" / old["id"]
    copy = (folder / "dump.pgc.zst.aes").read_bytes()  # a replica someone kept somewhere

    response = client.delete("/v1/tenants/bk-erased?purge=true", headers=auth)
    assert response.status_code == 202
    run_jobs()
    assert operation(client, auth, response.get_json()["id"])["status"] == "succeeded"
    assert databases_like(admin_url, "tenant_bk_erased%") == set()
    assert not (store_root(settings) / "bk-erased").exists()
    listed = client.get("/v1/tenants/bk-erased/backups", headers=auth).get_json()
    assert {b["status"] for b in listed} == {"deleted"} and all(b["deleted_at"] for b in listed)
    assert not any(b["trigger"] == "pre-delete" for b in listed)

    # The copy cannot be decrypted any more: the tenant's key is gone from the catalog.
    with ctx.sessions() as session:
        record = session.get(Backup, old["id"])
        with pytest.raises(BackupKeyError, match="destroyed"):
            backup_service.open_backup(ctx, session, record, io.BytesIO(copy))
    assert one(settings.catalog_database_url,
               "SELECT wrapped_key IS NULL AND destroyed_at IS NOT NULL FROM tenant_backup_keys "
               "WHERE tenant_id = 'bk-erased'") is True


def test_readiness_checks_the_backup_store(client, tmp_path):
    body = client.get("/readyz").get_json()
    assert body["checks"]["backup_store"] == "ok"
