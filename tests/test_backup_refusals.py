"""A damaged, truncated, reordered or foreign backup, or a missing key, is refused before the live
database is touched: the restore fails saying why, and the tenant's database is exactly as it was."""
from __future__ import annotations

import base64
import json
import os
import re

import psycopg
import pytest

from backup_support import (active_tenant, back_up, backup_cleanup, chunk_spans, databases_like, db,  # noqa: F401
                            fingerprint, restore, role, store_root, tid, write_rows)
from control_plane import naming
from control_plane.adapters.crypto import Keyring
from control_plane.services import backups as backup_service
from control_plane.services.backup_keys import tenant_key_context
from helpers import one, tenant

TENANT = REFUSE = tid("refuse")


def _object(settings, backup: dict):
    return store_root(settings) / TENANT / backup["id"] / naming.BACKUP_DATA_OBJECT


def _manifest(settings, backup: dict):
    return store_root(settings) / TENANT / backup["id"] / naming.BACKUP_MANIFEST_OBJECT


def _flip(path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _catalog(settings, query: str, *params) -> None:
    with psycopg.connect(settings.catalog_database_url, autocommit=True) as conn:
        conn.execute(query, params)


def flip_header(settings, backup, other):
    _flip(_object(settings, backup), 30)


def flip_chunk_body(settings, backup, other):
    path = _object(settings, backup)
    start, end = chunk_spans(path.read_bytes())[2]
    _flip(path, (start + end) // 2)


def flip_length(settings, backup, other):
    path = _object(settings, backup)
    _flip(path, chunk_spans(path.read_bytes())[1][0] + 3)


def flip_last_tag(settings, backup, other):
    path = _object(settings, backup)
    _flip(path, path.stat().st_size - 2)


def truncate(settings, backup, other):
    path = _object(settings, backup)
    path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


def swap_chunks(settings, backup, other):
    path = _object(settings, backup)
    data = path.read_bytes()
    (a0, a1), (b0, b1) = chunk_spans(data)[1:3]
    path.write_bytes(data[:a0] + data[b0:b1] + data[a0:a1] + data[b1:])


def drop_last_chunk_and_forge_the_records(settings, backup, other):
    """Someone with write access to the store AND the catalog: checksums are made to match. The
    chunk authentication still knows the stream lost its end."""
    import hashlib

    path = _object(settings, backup)
    data = path.read_bytes()
    data = data[:chunk_spans(data)[-1][0]]
    path.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    manifest = json.loads(_manifest(settings, backup).read_text())
    manifest["object"].update(bytes=len(data), sha256=digest)
    _manifest(settings, backup).write_text(json.dumps(manifest))
    _catalog(settings, "UPDATE backups SET sha256 = %s, stored_bytes = %s WHERE id = %s", digest, len(data), backup["id"])


def foreign_manifest(settings, backup, other):
    _manifest(settings, backup).write_bytes(
        (store_root(settings) / TENANT / other["id"] / naming.BACKUP_MANIFEST_OBJECT).read_bytes())


def foreign_data_object(settings, backup, other):
    _object(settings, backup).write_bytes(_object(settings, other).read_bytes())


def catalog_checksum_differs(settings, backup, other):
    _catalog(settings, "UPDATE backups SET sha256 = %s WHERE id = %s", "0" * 64, backup["id"])


def key_destroyed(settings, backup, other):
    _catalog(settings, "UPDATE tenant_backup_keys SET wrapped_key = NULL, destroyed_at = now() WHERE tenant_id = %s",
             TENANT)


def keyring_lost_the_key(settings, backup, other):
    """The tenant key is wrapped by a KEYRING key the workers no longer have."""
    gone = Keyring.parse(f"gone:{base64.b64encode(os.urandom(32)).decode()}")
    wrapped = gone.encrypt(base64.b64encode(os.urandom(32)).decode(), tenant_key_context(TENANT))
    _catalog(settings, "UPDATE tenant_backup_keys SET wrapped_key = %s WHERE tenant_id = %s", wrapped, TENANT)


CASES = {
    flip_header: "header|belongs to backup|failed authentication|does not open",
    flip_chunk_body: "chunk 2 failed authentication",
    flip_length: "chunk 1",
    flip_last_tag: "failed authentication",
    truncate: "truncated",
    swap_chunks: "chunk 1 failed authentication",
    drop_last_chunk_and_forge_the_records: "without the final-chunk marker",
    foreign_manifest: "belongs to backup",
    foreign_data_object: "belongs to backup",
    catalog_checksum_differs: "disagrees with the catalog",
    key_destroyed: "destroyed \\(purged\\)",
    keyring_lost_the_key: "KEYRING key 'gone'",
}


@pytest.mark.parametrize("tamper", list(CASES), ids=[f.__name__ for f in CASES])
def test_refused_restore_leaves_the_live_database_untouched(client, auth, run_jobs, ctx, settings, admin_url,
                                                            monkeypatch, tamper):
    monkeypatch.setattr(backup_service, "CHUNK_SIZE", 1024)  # several chunks (six or so) from a small database
    active_tenant(client, auth, run_jobs, TENANT)
    write_rows(ctx, TENANT, "known")
    backup = back_up(client, auth, run_jobs, TENANT)
    other = back_up(client, auth, run_jobs, TENANT)
    assert len(chunk_spans(_object(settings, backup).read_bytes())) >= 4
    write_rows(ctx, TENANT, "live", leads=3)
    live = fingerprint(ctx, TENANT)
    oid = one(admin_url, f"SELECT oid FROM pg_database WHERE datname = '{db(REFUSE)}'")

    tamper(settings, backup, other)
    done = restore(client, auth, run_jobs, TENANT, backup["id"])

    assert done["status"] == "failed"
    assert done["error"] and re.search(CASES[tamper], done["error"]), done["error"]
    assert tenant(client, auth, TENANT)["status"] == "active"
    assert fingerprint(ctx, TENANT) == live
    assert one(admin_url, f"SELECT oid FROM pg_database WHERE datname = '{db(REFUSE)}'") == oid
    assert databases_like(admin_url, f"{role(REFUSE)}%") == {db(REFUSE)}  # no scratch, no retired
