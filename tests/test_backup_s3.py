"""The S3 store against moto's standalone server over HTTP: round trip, what lands in the bucket,
a tampered object refused, readiness."""
from __future__ import annotations

import hashlib
from dataclasses import replace

from backup_support import (active_tenant, back_up, backup_cleanup, db, fingerprint, moto_endpoint, restore,  # noqa: F401
                            s3_bucket, s3_client, s3_ctx, s3_settings, tid, write_rows)
from control_plane.adapters.backup_store import S3BackupStore
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from helpers import one, tenant

S3 = tid("s3")
S3_BAD = tid("s3-bad")


def _objects(s3, bucket: str, prefix: str) -> dict[str, bytes]:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {item["Key"]: s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read() for item in listed}


def test_s3_round_trip_and_the_bucket_holds_only_ciphertext(s3_client, auth, run_jobs, s3_ctx, s3_bucket, admin_url):
    s3, bucket, prefix = s3_bucket
    active_tenant(s3_client, auth, run_jobs, S3)
    write_rows(s3_ctx, S3, "known")
    known = fingerprint(s3_ctx, S3)
    backup = back_up(s3_client, auth, run_jobs, S3)
    assert backup["location"] == f"s3://{bucket}/{prefix}/{S3}/{backup['id']}/"

    objects = _objects(s3, bucket, f"{prefix}/{S3}/")
    data_key = f"{prefix}/{S3}/{backup['id']}/dump.pgc.zst.aes"
    assert set(objects) == {data_key, f"{prefix}/{S3}/{backup['id']}/manifest.json"}
    data = objects[data_key]
    assert hashlib.sha256(data).hexdigest() == backup["sha256"] and len(data) == backup["stored_bytes"]
    assert b"PGDMP" not in data and b"known lead" not in data and b"clinic.example" not in data

    write_rows(s3_ctx, S3, "later", leads=4)
    done = restore(s3_client, auth, run_jobs, S3, backup["id"])
    assert done["status"] == "succeeded", done
    assert fingerprint(s3_ctx, S3) == known
    # The safety backup went to the bucket too.
    safety = done["result"]["safety_backup_id"]
    assert f"{prefix}/{S3}/{safety}/manifest.json" in _objects(s3, bucket, f"{prefix}/{S3}/")


def test_s3_tampered_object_is_refused_before_the_live_database_is_touched(s3_client, auth, run_jobs, s3_ctx,
                                                                           s3_bucket, admin_url):
    s3, bucket, prefix = s3_bucket
    active_tenant(s3_client, auth, run_jobs, S3_BAD)
    write_rows(s3_ctx, S3_BAD, "known")
    backup = back_up(s3_client, auth, run_jobs, S3_BAD)
    write_rows(s3_ctx, S3_BAD, "live", leads=2)
    live = fingerprint(s3_ctx, S3_BAD)
    oid = one(admin_url, f"SELECT oid FROM pg_database WHERE datname = '{db(S3_BAD)}'")
    key = f"{prefix}/{S3_BAD}/{backup['id']}/dump.pgc.zst.aes"
    data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[-40] ^= 0xFF
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))

    done = restore(s3_client, auth, run_jobs, S3_BAD, backup["id"])
    assert done["status"] == "failed" and "failed authentication" in done["error"]
    assert tenant(s3_client, auth, S3_BAD)["status"] == "active"
    assert fingerprint(s3_ctx, S3_BAD) == live
    assert one(admin_url, f"SELECT oid FROM pg_database WHERE datname = '{db(S3_BAD)}'") == oid


def test_s3_store_streams_multipart_and_cleans_up(s3_settings, s3_bucket):
    """A stream larger than a part goes up as a multipart upload; delete_prefix removes objects and
    aborts multipart uploads a killed job would have left."""
    import io
    import os

    s3, bucket, prefix = s3_bucket
    store = S3BackupStore(s3_settings.backup_store_url, endpoint_url=s3_settings.s3_endpoint_url,
                          part_size=5 << 20, concurrency=2)
    payload = os.urandom(12 << 20)
    store.put("bk-x/b1/dump.pgc.zst.aes", io.BytesIO(payload))
    assert store.digest("bk-x/b1/dump.pgc.zst.aes") == (len(payload), hashlib.sha256(payload).hexdigest())
    head = s3.head_object(Bucket=bucket, Key=f"{prefix}/bk-x/b1/dump.pgc.zst.aes")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    s3.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/bk-x/b1/orphan")
    assert store.list("bk-x/") == ["bk-x/b1/dump.pgc.zst.aes"]
    assert store.delete_prefix("bk-x/b1/") == 1
    assert store.list("bk-x/") == []
    assert s3.list_multipart_uploads(Bucket=bucket, Prefix=f"{prefix}/bk-x/").get("Uploads", []) == []


def test_readiness_reports_an_unreachable_bucket(s3_settings):
    broken = build_context(replace(s3_settings, backup_store_url="s3://bk-no-such-bucket/x"))
    try:
        body = create_app(ctx=broken).test_client().get("/readyz")
        assert body.status_code == 503
        assert body.get_json()["checks"]["backup_store"].startswith("unavailable")
    finally:
        dispose(broken)
