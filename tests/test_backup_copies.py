"""The second copy of every backup: copied and verified, recorded, restored from when the primary object is
missing or damaged (and said so), kept by its own retention, purged with the rest; per-table row counts
in the manifest."""
from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlparse

import pytest

from backup_support import (active_tenant, back_up, backup_cleanup, fingerprint, moto_endpoint, restore,  # noqa: F401
                            s3_bucket, s3_settings, tid, write_rows)
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.backup_models import Backup, BackupStatus, CopyStatus
from control_plane.catalog.models import utcnow
from control_plane.services.pruning import prune_backups
from helpers import tenant_login

KEPT = tid("kept")
LOST = tid("lost")
S3COPY = tid("s3copy")


@pytest.fixture
def copy_root(tmp_path_factory):
    return tmp_path_factory.mktemp("copies")


@pytest.fixture
def copy_ctx(settings, copy_root, monkeypatch):
    url = f"file://{copy_root}"
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", url)  # the forked work horses read the environment
    context = build_context(replace(settings, backup_copy_store_url=url))
    yield context
    dispose(context)


@pytest.fixture
def copy_client(copy_ctx):
    return create_app(ctx=copy_ctx).test_client()


def _counts(ctx, tenant_id: str) -> dict[str, int]:
    with tenant_login(ctx, tenant_id) as conn:
        rows = conn.execute("SELECT schemaname || '.' || relname FROM pg_stat_user_tables").fetchall()
        return {name: conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for (name,) in rows}


def test_every_backup_is_copied_and_a_lost_primary_falls_back_to_the_copy(copy_client, auth, run_jobs, copy_ctx,
                                                                          settings, copy_root):
    active_tenant(copy_client, auth, run_jobs, LOST)
    write_rows(copy_ctx, LOST, "known", leads=7)
    known = fingerprint(copy_ctx, LOST)
    backup = back_up(copy_client, auth, run_jobs, LOST)

    # Exact row counts, taken in the dump's snapshot, are in the manifest.
    assert backup["manifest"]["tables"] == _counts(copy_ctx, LOST)
    assert backup["manifest"]["tables"]["public.leads"] == 7

    # The copy is recorded, verified, and byte-identical.
    [copy] = backup["copies"]
    assert copy["status"] == "completed" and copy["method"] == "streamed"
    assert copy["location"] == f"file://{copy_root}/{LOST}/{backup['id']}/"
    copied = copy_root / LOST / backup["id"] / "dump.pgc.zst.aes"
    assert hashlib.sha256(copied.read_bytes()).hexdigest() == backup["sha256"]

    # The primary object disappears: the restore reads the copy and says so.
    primary = Path(urlparse(settings.backup_store_url).path) / LOST / backup["id"] / "dump.pgc.zst.aes"
    primary.unlink()
    write_rows(copy_ctx, LOST, "later", leads=2)
    done = restore(copy_client, auth, run_jobs, LOST, backup["id"], safety_backup=False)
    assert done["status"] == "succeeded", done
    assert done["result"]["source"] == "copy"
    assert "primary" in done["result"]["fallback_reason"] and "does not exist" in done["result"]["fallback_reason"]
    assert fingerprint(copy_ctx, LOST) == known

    # Both damaged: refused, naming both locations.
    copied.write_bytes(copied.read_bytes()[:-10])
    failed = restore(copy_client, auth, run_jobs, LOST, backup["id"], safety_backup=False)
    assert failed["status"] == "failed"
    assert "primary" in failed["error"] and "copy" in failed["error"] and "truncated" in failed["error"]

    # Purge deletes both stores' objects.
    response = copy_client.delete(f"/v1/tenants/{LOST}?purge=true", headers=auth)
    assert response.status_code == 202
    run_jobs()
    assert not (copy_root / LOST).exists()


def test_the_copy_outlives_the_primary_and_has_its_own_retention(copy_client, auth, run_jobs, copy_ctx, settings,
                                                                 copy_root):
    active_tenant(copy_client, auth, run_jobs, KEPT)
    backup = back_up(copy_client, auth, run_jobs, KEPT)
    copy_client.put(f"/v1/tenants/{KEPT}/backup-policy", json={"keep_last": 1, "keep_daily_days": 7}, headers=auth)
    newer = back_up(copy_client, auth, run_jobs, KEPT)
    with copy_ctx.sessions() as session:  # the first backup is 20 days old: past the primary's 7 days
        session.get(Backup, backup["id"]).completed_at = utcnow() - timedelta(days=20)
        session.commit()

    report = prune_backups(copy_ctx, tenant_ids=[KEPT])
    assert report.expired == [backup["id"]] and report.expired_copies == []
    old = copy_client.get(f"/v1/backups/{backup['id']}", headers=auth).get_json()
    assert old["status"] == "expired" and old["copies"][0]["status"] == "completed"
    assert (copy_root / KEPT / backup["id"]).is_dir()
    # Still restorable, from the copy.
    done = restore(copy_client, auth, run_jobs, KEPT, backup["id"], safety_backup=False)
    assert done["status"] == "succeeded" and done["result"]["source"] == "copy", done

    # Past the copy's own 90 days it goes too; the newest stays everywhere.
    with copy_ctx.sessions() as session:
        session.get(Backup, backup["id"]).completed_at = utcnow() - timedelta(days=91)
        session.commit()
    report = prune_backups(copy_ctx, tenant_ids=[KEPT])
    assert len(report.expired_copies) == 1
    assert not (copy_root / KEPT / backup["id"]).exists() and (copy_root / KEPT / newer["id"]).is_dir()
    with copy_ctx.sessions() as session:
        assert session.get(Backup, backup["id"]).status is BackupStatus.EXPIRED
        assert not session.get(Backup, backup["id"]).restorable


def test_a_copy_within_one_s3_service_is_server_side_and_a_missed_copy_is_made_by_prune(
        s3_settings, s3_bucket, moto_endpoint, auth, run_jobs, monkeypatch):
    s3, bucket, _ = s3_bucket
    s3.create_bucket(Bucket=f"{bucket}-copy")
    copy_url = f"s3://{bucket}-copy/offsite"
    monkeypatch.setenv("BACKUP_COPY_STORE_URL", copy_url)
    ctx = build_context(replace(s3_settings, backup_copy_store_url=copy_url))
    try:
        client = create_app(ctx=ctx).test_client()
        active_tenant(client, auth, run_jobs, S3COPY)
        backup = back_up(client, auth, run_jobs, S3COPY)
        [copy] = backup["copies"]
        assert copy["status"] == "completed" and copy["method"] == "server-side"
        key = f"offsite/{S3COPY}/{backup['id']}/dump.pgc.zst.aes"
        body = s3.get_object(Bucket=f"{bucket}-copy", Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == backup["sha256"]

        # A copy that failed (the copy store was down) is made by the next prune.
        s3.delete_object(Bucket=f"{bucket}-copy", Key=key)
        with ctx.sessions() as session:
            session.get(Backup, backup["id"]).copies[0].status = CopyStatus.FAILED
            session.commit()
        assert prune_backups(ctx, tenant_ids=[S3COPY]).copied == [backup["id"]]
        assert s3.get_object(Bucket=f"{bucket}-copy", Key=key)["ContentLength"] == backup["stored_bytes"]
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=f"{bucket}-copy"):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=f"{bucket}-copy", Key=item["Key"])
        s3.delete_bucket(Bucket=f"{bucket}-copy")
        dispose(ctx)
