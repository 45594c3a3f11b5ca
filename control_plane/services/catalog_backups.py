"""Backing up and restoring the catalog itself: without it every tenant backup is unreadable ciphertext
(the catalog holds the wrapped tenant keys and the server list).

A catalog backup has the tenant backups' format and guarantees (pg_dump → zstd → AES-256-GCM chunks,
SHA-256 read back, a manifest with exact per-table row counts taken in the dump's snapshot), under
`_catalog/<backup_id>/` in the store and the copy store. Its data key is wrapped by a fresh catalog key,
itself wrapped by the KEYRING in the manifest: the store and the KEYRING alone restore it. Listing and
restoring read the stores, never the catalog, which may be gone.
"""
from __future__ import annotations

import base64
import json
import logging
import tempfile
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text

from control_plane import naming
from control_plane.adapters.backup_format import (CHUNK_SIZE, CIPHER, COMPRESSION, FORMAT_VERSION, PG_ARCHIVE_MAGIC,
                                                  BackupHeader, IterReader, OpenedBackup, SealStats, new_key, seal,
                                                  wrap_data_key)
from control_plane.backup_errors import BackupIntegrityError, BackupNotFoundError, BackupStoreError
from control_plane.catalog.db import upgrade_catalog
from control_plane.catalog.models import new_id, utcnow
from control_plane.errors import ConflictError, DecryptionError
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "tenant-control-plane-catalog-backup"
KEEP_AT_LEAST = 3
_MAX_MANIFEST = 256 * 1024


def _key_context(backup_id: str) -> str:
    return f"catalog-backup-key:{backup_id}"


def _data(backup_id: str) -> str:
    return naming.catalog_backup_prefix(backup_id) + naming.BACKUP_DATA_OBJECT


def _manifest(backup_id: str) -> str:
    return naming.catalog_backup_prefix(backup_id) + naming.BACKUP_MANIFEST_OBJECT


def _stores(ctx: ServiceContext) -> list[tuple[str, Any]]:
    stores = [("primary", ctx.backup_store)]
    if ctx.copy_store is not None and ctx.copy_store.url != ctx.backup_store.url:
        stores.append(("copy", ctx.copy_store))
    return stores


class CatalogNotEmptyError(ConflictError):
    title = "Catalog database is not empty"


def _catalog_tools(ctx: ServiceContext):
    return ctx.backup_tools(ctx.settings.catalog_database_url)


def _catalog_revision(ctx: ServiceContext) -> str | None:
    with ctx.sessions() as session:
        return session.execute(text("SELECT version_num FROM alembic_version")).scalar()


# -- backing up ------------------------------------------------------------------------------------------

def backup_catalog(ctx: ServiceContext) -> dict[str, Any]:
    """Dump, seal and store the catalog in the store, then copy it to the copy store; returns the manifest.

    Each store's object is read back and must match its SHA-256 before the backup counts there.
    """
    backup_id = new_id()
    store = ctx.backup_store
    catalog_key = new_key()
    data_key = new_key()
    header = BackupHeader(backup_id=backup_id, tenant_id=naming.CATALOG_BACKUP_SUBJECT, tenant_key_id="catalog-key",
                          wrapped_data_key=wrap_data_key(catalog_key, data_key, naming.CATALOG_BACKUP_SUBJECT,
                                                         backup_id), chunk_size=CHUNK_SIZE)
    started_at = utcnow()
    tools = _catalog_tools(ctx)
    _, server_version = tools.server_version()
    revision = _catalog_revision(ctx)
    stats = SealStats()
    level = ctx.settings.backup_zstd_level
    try:
        with tools.dump_own_database() as dump:
            store.put(_data(backup_id), IterReader(seal(dump.archive, header, data_key, stats, level=level,
                                                        threads=ctx.settings.backup_zstd_threads)))
        tables = dump.row_counts()
        if stats.archive_head != PG_ARCHIVE_MAGIC:
            raise BackupIntegrityError("pg_dump did not produce a custom-format archive")
        manifest = {
            "format": MANIFEST_FORMAT,
            "format_version": FORMAT_VERSION,
            "backup_id": backup_id,
            "schema_revision": revision,
            "tables": tables,
            "tenants": tables.get("public.tenants", 0),
            "postgresql": {"server_version": server_version, "pg_dump_version": dump.client.version},
            "archive": {"format": "pg_dump custom (-Fc -Z0)", "bytes": stats.archive_bytes},
            "compression": {"algorithm": COMPRESSION, "level": level, "bytes": stats.compressed_bytes},
            "encryption": {"cipher": CIPHER, "chunk_bytes": header.chunk_size, "chunks": stats.chunks,
                           "catalog_key": ctx.keyring.encrypt(base64.b64encode(catalog_key).decode(),
                                                              _key_context(backup_id)),
                           "keyring_key_id": ctx.keyring.current_key_id},
            "object": {"name": naming.BACKUP_DATA_OBJECT, "bytes": stats.stored_bytes, "sha256": stats.sha256},
            "started_at": started_at.isoformat(),
            "finished_at": utcnow().isoformat(),
        }
        encoded = json.dumps(manifest, indent=2, sort_keys=True).encode()
        store.put_bytes(_manifest(backup_id), encoded)
        _check_stored(store, backup_id, manifest, encoded)
    except BaseException:
        _delete_quietly(store, backup_id)
        raise
    locations = [f"{store.url}/{naming.catalog_backup_prefix(backup_id)}"]
    if ctx.copy_store is not None and ctx.copy_store.url != store.url:
        copy = ctx.copy_store
        try:
            copy.copy_from(store, _data(backup_id))
            copy.copy_from(store, _manifest(backup_id))
            _check_stored(copy, backup_id, manifest, encoded)
            locations.append(f"{copy.url}/{naming.catalog_backup_prefix(backup_id)}")
        except (BackupStoreError, BackupIntegrityError) as exc:
            _delete_quietly(copy, backup_id)
            log.error("catalog backup %s: copying it to %s failed: %s", backup_id, copy.url, exc.detail)
    log.info("catalog backup %s: %d tenants, %d bytes stored in %s", backup_id, manifest["tenants"],
             stats.stored_bytes, ", ".join(locations))
    return {**manifest, "locations": locations}


def _check_stored(store, backup_id: str, manifest: dict[str, Any], encoded: bytes) -> None:
    stored = store.digest(_data(backup_id))
    expected = (manifest["object"]["bytes"], manifest["object"]["sha256"])
    if stored != expected:
        raise BackupIntegrityError(f"catalog backup {backup_id}: the stored object does not match what was written")
    if store.get_bytes(_manifest(backup_id), _MAX_MANIFEST) != encoded:
        raise BackupIntegrityError(f"catalog backup {backup_id}: the stored manifest does not match")


def _delete_quietly(store, backup_id: str) -> None:
    try:
        store.delete_prefix(naming.catalog_backup_prefix(backup_id))
    except BackupStoreError:
        log.warning("catalog backup %s: could not delete what was written", backup_id, exc_info=True)


# -- listing ---------------------------------------------------------------------------------------------

def _read_manifest(store, backup_id: str) -> dict[str, Any]:
    try:
        manifest = json.loads(store.get_bytes(_manifest(backup_id), _MAX_MANIFEST))
    except ValueError as exc:
        raise BackupIntegrityError(f"the manifest of catalog backup {backup_id} is not valid JSON") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or manifest.get("backup_id") != backup_id:
        raise BackupIntegrityError(f"the manifest under {_manifest(backup_id)} is not catalog backup {backup_id}'s")
    return manifest


def list_catalog_backups(ctx: ServiceContext) -> list[dict[str, Any]]:
    """Catalog backups found in the store and the copy store, newest first, each with where it is."""
    found: dict[str, dict[str, Any]] = {}
    for source, store in _stores(ctx):
        try:
            keys = store.list(naming.CATALOG_BACKUPS_PREFIX)
        except BackupStoreError as exc:
            log.warning("catalog backups: cannot list %s: %s", store.url, exc.detail)
            continue
        for key in keys:
            folder, _, name = key[len(naming.CATALOG_BACKUPS_PREFIX):].partition("/")
            if name != naming.BACKUP_MANIFEST_OBJECT:
                continue
            try:
                manifest = found.get(folder) or _read_manifest(store, folder)
            except (BackupStoreError, BackupIntegrityError) as exc:
                log.warning("catalog backups: skipping %s in %s: %s", folder, store.url, exc.detail)
                continue
            entry = found.setdefault(folder, {**manifest, "sources": []})
            entry["sources"].append(source)
    return sorted(found.values(), key=lambda m: m["finished_at"], reverse=True)


def prune_catalog_backups(ctx: ServiceContext, now: datetime | None = None) -> list[str]:
    """Delete catalog backups older than CATALOG_BACKUP_KEEP_DAYS, always keeping the newest few."""
    now = now or utcnow()
    horizon = now - timedelta(days=ctx.settings.catalog_backup_keep_days)
    deleted = []
    for manifest in list_catalog_backups(ctx)[KEEP_AT_LEAST:]:
        if datetime.fromisoformat(manifest["finished_at"]) < horizon:
            for _, store in _stores(ctx):
                _delete_quietly(store, manifest["backup_id"])
            deleted.append(manifest["backup_id"])
    return deleted


# -- restoring -------------------------------------------------------------------------------------------

def restore_catalog(ctx: ServiceContext, backup_id: str = "latest") -> dict[str, Any]:
    """Restore a catalog backup into the empty database CATALOG_DATABASE_URL names, check it, bring it to head.

    Verified before anything is written (SHA-256 and every chunk, from the store or else the copy store);
    checked after: a clean pg_restore, the manifest's schema revision, every table's exact row count.
    """
    if backup_id == "latest":
        available = list_catalog_backups(ctx)
        if not available:
            raise BackupNotFoundError("latest")
        backup_id = available[0]["backup_id"]
    tools = _catalog_tools(ctx)
    present = tools.own_row_counts()
    if present:
        raise CatalogNotEmptyError(f"the catalog database already has {len(present)} tables: restore into an empty "
                                   "database (create one and point CATALOG_DATABASE_URL at it)")
    problems: list[str] = []
    for source, store in _stores(ctx):
        with tempfile.TemporaryFile(prefix="tcp-catalog-") as encrypted:
            try:
                manifest = _read_manifest(store, backup_id)
                store.fetch(_data(backup_id), encrypted)
                encrypted.seek(0)
                opened = _open(ctx, manifest, encrypted)
                opened.authenticate()
                if (opened.stored_bytes, opened.sha256) != (manifest["object"]["bytes"], manifest["object"]["sha256"]):
                    raise BackupIntegrityError(f"catalog backup {backup_id}: checksum mismatch")
            except (BackupStoreError, BackupIntegrityError) as exc:
                problems.append(f"{source} ({store.url}): {exc.detail}")
                continue
            encrypted.seek(0)
            opened = _open(ctx, manifest, encrypted)
            sizes: list[int] = []
            tools.restore_own_database(lambda stdin: sizes.append(opened.archive(stdin)),
                                       archive_major=int(manifest["postgresql"]["pg_dump_version"].split(".")[0]))
            if sizes != [manifest["archive"]["bytes"]]:
                raise BackupIntegrityError(f"catalog backup {backup_id} decrypted to {sizes} bytes, "
                                           f"{manifest['archive']['bytes']} were recorded")
            break
    else:
        raise BackupIntegrityError(f"catalog backup {backup_id} could not be read: " + "; ".join(problems))

    counts = tools.own_row_counts()
    if counts != manifest["tables"]:
        differ = sorted(t for t in set(counts) | set(manifest["tables"]) if counts.get(t) != manifest["tables"].get(t))
        raise BackupIntegrityError(f"the restored catalog's row counts differ from the manifest in: {', '.join(differ)}")
    revision = _catalog_revision(ctx)
    if revision != manifest["schema_revision"]:
        raise BackupIntegrityError(f"the restored catalog is at revision {revision}, the manifest says "
                                   f"{manifest['schema_revision']}")
    upgrade_catalog(ctx.sessions.kw["bind"])
    log.info("catalog restored from backup %s (%s, %d tenants)", backup_id, source, manifest["tenants"])
    return {"backup_id": backup_id, "source": source, "fallback_reason": "; ".join(problems) or None,
            "tenants": manifest["tenants"], "tables": len(counts), "backup_finished_at": manifest["finished_at"],
            "schema_revision": revision, "now_at": _catalog_revision(ctx)}


def _open(ctx: ServiceContext, manifest: dict[str, Any], stream) -> OpenedBackup:
    backup_id = manifest["backup_id"]
    try:
        catalog_key = base64.b64decode(ctx.keyring.decrypt(manifest["encryption"]["catalog_key"],
                                                           _key_context(backup_id)))
    except (DecryptionError, KeyError, TypeError) as exc:
        raise BackupIntegrityError(f"catalog backup {backup_id}: its key does not open with this KEYRING") from exc
    return OpenedBackup(stream, expect_backup_id=backup_id, expect_tenant_id=naming.CATALOG_BACKUP_SUBJECT,
                        key_for=lambda header: catalog_key)
