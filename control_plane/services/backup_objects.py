"""Reaching a backup's objects and a server's backup tools: object keys, stores, reading a backup back."""
from __future__ import annotations

import json
from typing import Any, BinaryIO

from sqlalchemy.orm import Session

from control_plane import naming
from control_plane.adapters.backup_format import BackupHeader, OpenedBackup
from control_plane.backup_errors import BackupIntegrityError
from control_plane.catalog.db import get_or_raise
from control_plane.catalog.backup_models import Backup
from control_plane.catalog.models import DatabaseServer
from control_plane.errors import ServerNotFoundError
from control_plane.services.backup_keys import key_for_existing_backup
from control_plane.services.context import ServiceContext, server_secret_context

MAX_MANIFEST_BYTES = 256 * 1024


def tools_for(ctx: ServiceContext, server: DatabaseServer):
    return ctx.backup_tools(ctx.keyring.decrypt(server.admin_url_encrypted, server_secret_context(server.name)))


def tools_for_server(ctx: ServiceContext, session: Session, server_name: str):
    server = get_or_raise(session, DatabaseServer, server_name, ServerNotFoundError)
    return tools_for(ctx, server)


def store_for(ctx: ServiceContext, backup: Backup):
    """The store holding `backup`: the current one, or the one BACKUP_STORE_URL named when it was taken."""
    if backup.store_url == ctx.backup_store.url:
        return ctx.backup_store
    return ctx.open_backup_store(backup.store_url)


def data_key(backup: Backup) -> str:
    return backup.object_prefix + naming.BACKUP_DATA_OBJECT


def manifest_key(backup: Backup) -> str:
    return backup.object_prefix + naming.BACKUP_MANIFEST_OBJECT


def delete_objects(ctx: ServiceContext, backup: Backup) -> int:
    return store_for(ctx, backup).delete_prefix(backup.object_prefix)


def load_manifest(store, backup: Backup) -> dict[str, Any]:
    """The manifest stored next to the data, checked against the catalog's record of the backup."""
    try:
        manifest = json.loads(store.get_bytes(manifest_key(backup), MAX_MANIFEST_BYTES))
    except ValueError as exc:
        raise BackupIntegrityError(f"the manifest of backup {backup.id} is not valid JSON") from exc
    if not isinstance(manifest, dict):
        raise BackupIntegrityError(f"the manifest of backup {backup.id} is malformed")
    if manifest.get("backup_id") != backup.id or manifest.get("tenant_id") != backup.tenant_id:
        raise BackupIntegrityError(
            f"the manifest stored with backup {backup.id} belongs to backup {manifest.get('backup_id')!r} "
            f"of tenant {manifest.get('tenant_id')!r}")
    recorded = manifest.get("object") or {}
    if recorded.get("sha256") != backup.sha256 or recorded.get("bytes") != backup.stored_bytes:
        raise BackupIntegrityError(f"the manifest of backup {backup.id} disagrees with the catalog "
                                   "on the data object's size or checksum")
    return manifest


def open_backup(ctx: ServiceContext, session: Session, backup: Backup, stream: BinaryIO) -> OpenedBackup:
    """Start reading a data object: header checked against the backup, data key unwrapped with the tenant key."""
    tenant_key = key_for_existing_backup(ctx, session, backup.tenant_id, backup.tenant_key_id)

    def key_for(header: BackupHeader) -> bytes:
        if header.tenant_key_id != backup.tenant_key_id:
            raise BackupIntegrityError(f"the data object was sealed with tenant key {header.tenant_key_id}, "
                                       f"the catalog says {backup.tenant_key_id}")
        return tenant_key

    return OpenedBackup(stream, expect_backup_id=backup.id, expect_tenant_id=backup.tenant_id, key_for=key_for)


def check_read(opened: OpenedBackup, backup: Backup, archive_bytes: int | None = None) -> None:
    """After a full read: the bytes read are exactly the object the catalog recorded (and, when the
    archive was decompressed, it has the recorded size)."""
    if opened.sha256 != backup.sha256 or opened.stored_bytes != backup.stored_bytes:
        raise BackupIntegrityError(f"checksum mismatch: the data object of backup {backup.id} is not the one "
                                   "that was recorded (sha256 or size differ)")
    if archive_bytes is not None and archive_bytes != backup.archive_bytes:
        raise BackupIntegrityError(f"backup {backup.id} decrypted to {archive_bytes} bytes, "
                                   f"{backup.archive_bytes} were recorded")
