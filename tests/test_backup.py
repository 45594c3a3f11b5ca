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
from backup_support import (active_tenant, back_up, backup_cleanup, databases_like, db, fingerprint, restore,  # noqa: F401
                            role, store_root, tid, write_rows)
from control_plane.adapters.pg_backup import choose_client
from control_plane.backup_errors import BackupKeyError
from control_plane.catalog.backup_models import Backup
from control_plane.catalog.models import TokenRole
from control_plane.cli import cli
from control_plane.naming import TENANT_EVENTS_CHANNEL
from control_plane.services import backups as backup_service
from control_plane.services.auth import create_token
from helpers import one, operation, roles, tenant, tenant_login

BACK = tid("back")
CLONE = tid("clone")
COPY = tid("copy")
ERASED = tid("erased")
LEAVING = tid("leaving")
MINE = tid("mine")
OPAQUE = tid("opaque")
PLAIN = tid("plain")
ROUND = tid("round")
THEIRS = tid("theirs")


def test_round_trip_in_place_and_as_new_tenant(client, auth, run_jobs, ctx, settings, admin_url, redis_conn):
    active_tenant(client, auth, run_jobs, ROUND)
    write_rows(ctx, ROUND, "known")
    known = fingerprint(ctx, ROUND)
    backup = back_up(client, auth, run_jobs, ROUND)
    assert backup["status"] == "completed" and backup["trigger"] == "manual"
    assert tenant(client, auth, ROUND)["last_backup_at"] == backup["completed_at"]

    # Change and delete rows after the backup.
    write_rows(ctx, ROUND, "later", leads=5)
    with tenant_login(ctx, ROUND) as conn:
        conn.execute("DELETE FROM leads WHERE full_name LIKE 'known lead 1%'")
        conn.execute("UPDATE procedures SET price = 1")
    assert fingerprint(ctx, ROUND) != known
    app_session = tenant_login(ctx, ROUND)  # a tenant app's open connection to the old database
    events = redis_conn.pubsub()
    events.subscribe(TENANT_EVENTS_CHANNEL)

    done = restore(client, auth, run_jobs, ROUND, backup["id"])
    assert done["status"] == "succeeded", done
    assert fingerprint(ctx, ROUND) == known
    with pytest.raises(psycopg.OperationalError):
        app_session.execute("SELECT 1")  # ended by the swap
    app_session.close()
    changes: list[tuple] = []
    while ("status", "active") not in changes:  # already published: each read returns at once
        message = events.get_message(timeout=5.0)
        assert message is not None, changes
        if message["type"] == "message" and json.loads(message["data"])["tenant_id"] == ROUND:
            body = json.loads(message["data"])
            changes.append((body["change"], body.get("status")))
    events.close()
    assert changes == [("status", "restoring"), ("restored", None), ("status", "active")]
    body = tenant(client, auth, ROUND)
    assert body["status"] == "active"
    retired = done["result"]["retired_database"]
    assert databases_like(admin_url, f"{role(ROUND)}%") == {db(ROUND), retired}
    assert done["result"]["safety_backup_id"]

    cloned = restore(client, auth, run_jobs, ROUND, backup["id"], mode="new_tenant", new_tenant_id=CLONE)
    assert cloned["status"] == "succeeded", cloned
    assert tenant(client, auth, CLONE)["status"] == "active"
    assert fingerprint(ctx, CLONE) == known
    assert role(CLONE) in roles(admin_url, role(CLONE))
    assert one(admin_url, f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db(CLONE)}'") \
        == role(CLONE)
    assert one(admin_url, "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                          f"WHERE n.nspname = 'public' AND pg_get_userbyid(c.relowner) <> '{role(CLONE)}'",
               dbname=db(CLONE)) == 0


def test_stored_bytes_are_not_plaintext_and_the_layout_is_documented(client, auth, run_jobs, ctx, settings):
    active_tenant(client, auth, run_jobs, OPAQUE)
    write_rows(ctx, OPAQUE, "secretive")
    backup = back_up(client, auth, run_jobs, OPAQUE)
    folder = store_root(settings) / OPAQUE / backup["id"]
    assert sorted(p.name for p in folder.iterdir()) == ["dump.pgc.zst.aes", "manifest.json"]
    assert backup["location"] == f"{settings.backup_store_url}/{OPAQUE}/{backup['id']}/"
    data = (folder / "dump.pgc.zst.aes").read_bytes()
    assert b"PGDMP" not in data and b"secretive" not in data and b"clinic.example" not in data
    assert len(data) == backup["stored_bytes"] < backup["archive_bytes"]
    assert hashlib.sha256(data).hexdigest() == backup["sha256"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest == backup["manifest"]
    assert manifest["tenant_id"] == OPAQUE and manifest["backup_id"] == backup["id"]
    assert manifest["schema_revision"] == tenant_migrations.head_revision()
    assert manifest["object"] == {"name": "dump.pgc.zst.aes", "bytes": len(data), "sha256": backup["sha256"]}
    assert manifest["encryption"]["cipher"] == "AES-256-GCM" and manifest["encryption"]["keyring_key_id"] == "test1"
    assert manifest["postgresql"]["server_version"].startswith("15")
    assert int(manifest["postgresql"]["pg_dump_version"].split(".")[0]) >= 15
    assert b"secretive" not in (folder / "manifest.json").read_bytes()


def test_decrypt_gives_an_archive_stock_pg_restore_reads(client, auth, run_jobs, ctx, admin_url, tmp_path):
    active_tenant(client, auth, run_jobs, PLAIN)
    write_rows(ctx, PLAIN, "known")
    known = fingerprint(ctx, PLAIN)
    backup = back_up(client, auth, run_jobs, PLAIN)
    out = tmp_path / f"{PLAIN}.pgdump"
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
    path = next((Path(urlparse(ctx.settings.backup_store_url).path) / PLAIN / backup["id"]).glob("dump*"))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    damaged = tmp_path / "damaged.pgdump"
    result = CliRunner().invoke(cli, ["backups", "decrypt", backup["id"], "-o", str(damaged)])
    assert result.exit_code != 0 and "failed authentication" in result.stderr
    assert not damaged.exists() and not list(tmp_path.glob(".damaged*"))


def test_tenant_admins_back_up_and_restore_their_own_tenant_only(client, auth, run_jobs, ctx):
    active_tenant(client, auth, run_jobs, MINE)
    active_tenant(client, auth, run_jobs, THEIRS)
    theirs = back_up(client, auth, run_jobs, THEIRS)
    mine = {"Authorization": f"Bearer {create_token(ctx, TokenRole.TENANT_ADMIN, 'owner', MINE)[1]}"}

    started = client.post(f"/v1/tenants/{MINE}/backups", json={}, headers=mine)
    assert started.status_code == 202 and started.headers["Location"] == f"/v1/operations/{started.get_json()['id']}"
    run_jobs()
    done = operation(client, mine, started.get_json()["id"])
    assert done["status"] == "succeeded"
    listed = client.get(f"/v1/tenants/{MINE}/backups", headers=mine)
    assert listed.status_code == 200 and [b["id"] for b in listed.get_json()] == [done["result"]["backup_id"]]
    assert client.get(f"/v1/backups/{done['result']['backup_id']}", headers=mine).status_code == 200
    assert restore(client, mine, run_jobs, MINE, done["result"]["backup_id"])["status"] == "succeeded"

    assert client.post(f"/v1/tenants/{THEIRS}/backups", json={}, headers=mine).status_code == 403
    assert client.get(f"/v1/tenants/{THEIRS}/backups", headers=mine).status_code == 403
    assert client.get(f"/v1/backups/{theirs['id']}", headers=mine).status_code == 404
    assert client.post(f"/v1/tenants/{THEIRS}/restore", json={"backup_id": theirs["id"]}, headers=mine).status_code == 403
    clone = client.post(f"/v1/tenants/{MINE}/restore", headers=mine,
                        json={"backup_id": done["result"]["backup_id"], "mode": "new_tenant", "new_tenant_id": COPY})
    assert clone.status_code == 403
    assert client.get(f"/v1/tenants/{MINE}/backups").status_code == 401
    # Someone else's backup id is not restorable through my tenant, even by a super admin.
    assert client.post(f"/v1/tenants/{MINE}/restore", json={"backup_id": theirs["id"]}, headers=auth).status_code == 404
    missing = client.post(f"/v1/tenants/{MINE}/restore", json={"backup_id": theirs["id"], "mode": "new_tenant"},
                          headers=auth)
    assert missing.status_code == 422 and "new_tenant_id" in missing.get_json()["errors"]["json"]


def test_delete_takes_a_final_backup_and_purge_shreds_every_backup(client, auth, run_jobs, ctx, settings, admin_url):
    active_tenant(client, auth, run_jobs, LEAVING)
    write_rows(ctx, LEAVING, "known")
    client.delete(f"/v1/tenants/{LEAVING}", headers=auth)
    run_jobs()
    assert tenant(client, auth, LEAVING)["status"] == "deleted"
    final = client.get(f"/v1/tenants/{LEAVING}/backups", headers=auth).get_json()
    assert [(b["trigger"], b["status"]) for b in final] == [("pre-delete", "completed")]
    # The deleted tenant comes back from its final backup, as a new tenant.
    assert restore(client, auth, run_jobs, LEAVING, final[0]["id"], mode="new_tenant",
                   new_tenant_id=BACK)["status"] == "succeeded"
    assert one(admin_url, "SELECT count(*) FROM leads", dbname=db(BACK)) == 40

    active_tenant(client, auth, run_jobs, ERASED)
    write_rows(ctx, ERASED, "personal")
    old = back_up(client, auth, run_jobs, ERASED)
    restore(client, auth, run_jobs, ERASED, old["id"], safety_backup=False)  # leaves a retired database
    folder = store_root(settings) / ERASED / old["id"]
    copy = (folder / "dump.pgc.zst.aes").read_bytes()  # a replica someone kept somewhere

    response = client.delete(f"/v1/tenants/{ERASED}?purge=true", headers=auth)
    assert response.status_code == 202
    run_jobs()
    assert operation(client, auth, response.get_json()["id"])["status"] == "succeeded"
    assert databases_like(admin_url, f"{role(ERASED)}%") == set()
    assert not (store_root(settings) / ERASED).exists()
    listed = client.get(f"/v1/tenants/{ERASED}/backups", headers=auth).get_json()
    assert {b["status"] for b in listed} == {"deleted"} and all(b["deleted_at"] for b in listed)
    assert not any(b["trigger"] == "pre-delete" for b in listed)

    # The copy cannot be decrypted any more: the tenant's key is gone from the catalog.
    with ctx.sessions() as session:
        record = session.get(Backup, old["id"])
        with pytest.raises(BackupKeyError, match="destroyed"):
            backup_service.open_backup(ctx, session, record, io.BytesIO(copy))
    assert one(settings.catalog_database_url,
               "SELECT wrapped_key IS NULL AND destroyed_at IS NOT NULL FROM tenant_backup_keys "
               f"WHERE tenant_id = '{ERASED}'") is True


def test_readiness_checks_the_backup_store(client, tmp_path):
    body = client.get("/readyz").get_json()
    assert body["checks"]["backup_store"] == "ok"
