"""Per-tenant backup keys: created on a tenant's first backup, wrapped by the KEYRING head, rotated by
re-wrapping (no backup is re-encrypted), destroyed to crypto-shred every backup of the tenant."""
from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.adapters.backup_format import new_key
from control_plane.adapters.crypto import Keyring
from control_plane.backup_errors import BackupKeyError
from control_plane.catalog.backup_models import TenantBackupKey
from control_plane.catalog.db import transaction
from control_plane.catalog.models import DatabaseServer, Operation, Tenant
from control_plane.errors import DecryptionError
from control_plane.services import audit
from control_plane.services.context import (ServiceContext, operation_secret_context, role_secret_context,
                                            server_secret_context)

log = logging.getLogger(__name__)


def tenant_key_context(tenant_id: str) -> str:
    return f"tenant-backup-key:{tenant_id}"


@dataclass(frozen=True)
class TenantKey:
    key_id: str
    key: bytes
    keyring_key_id: str


def _unwrap(ctx: ServiceContext, row: TenantBackupKey) -> bytes:
    try:
        return base64.b64decode(ctx.keyring.decrypt(row.wrapped_key, tenant_key_context(row.tenant_id)))
    except DecryptionError as exc:
        raise BackupKeyError(
            f"the backup key of tenant {row.tenant_id!r} is wrapped by KEYRING key "
            f"{Keyring.key_id_of(row.wrapped_key)!r}, which the KEYRING cannot open: {exc.detail}") from exc


def _destroyed(tenant_id: str) -> BackupKeyError:
    return BackupKeyError(f"the backup key of tenant {tenant_id!r} was destroyed (purged): "
                          "its backups can no longer be decrypted")


def key_for_new_backup(ctx: ServiceContext, session: Session, tenant_id: str) -> TenantKey:
    """The tenant's key, created (and committed) on its first backup. The caller holds the tenant's lock."""
    row = session.get(TenantBackupKey, tenant_id, with_for_update=True)
    if row is None:
        row = TenantBackupKey(tenant_id=tenant_id, keyring_key_id=ctx.keyring.current_key_id,
                              wrapped_key=ctx.keyring.encrypt(base64.b64encode(new_key()).decode(),
                                                              tenant_key_context(tenant_id)))
        session.add(row)
        session.commit()
    elif row.destroyed:
        raise _destroyed(tenant_id)
    return TenantKey(row.key_id, _unwrap(ctx, row), Keyring.key_id_of(row.wrapped_key))


def key_for_existing_backup(ctx: ServiceContext, session: Session, tenant_id: str, key_id: str | None) -> bytes:
    row = session.get(TenantBackupKey, tenant_id)
    if row is None or row.destroyed:
        raise _destroyed(tenant_id)
    if key_id is not None and row.key_id != key_id:
        raise BackupKeyError(f"the backup was sealed with tenant key {key_id!r}, tenant {tenant_id!r} has {row.key_id!r}")
    return _unwrap(ctx, row)


def destroy_tenant_key(session: Session, tenant_id: str) -> bool:
    """Crypto-shred: forget the tenant's key. True when there was a key to destroy."""
    row = session.get(TenantBackupKey, tenant_id, with_for_update=True)
    if row is None:
        # Recorded as destroyed anyway: a later backup under this id must not quietly start a new key.
        row = TenantBackupKey(tenant_id=tenant_id)
        session.add(row)
        had_key = False
    else:
        had_key = not row.destroyed
    row.destroy()
    return had_key


def rotate_keys(ctx: ServiceContext, actor: str = "system") -> dict[str, int]:
    """Re-wrap every secret the KEYRING protects under its current (first) key, data untouched.

    Tenant backup keys first (what `keys rotate` is for), then the other KEYRING-encrypted catalog
    values (tenant role passwords, server admin URLs, pending one-time secrets), so the old KEYRING key
    can be removed afterwards. Each row is rewrapped in its own short transaction; running it again
    after an interruption finishes the job.
    """
    keyring = ctx.keyring
    counts = {"tenant_keys": 0, "role_passwords": 0, "server_urls": 0, "operation_secrets": 0}

    def rewrap_all(model, pk_column, column: str, context_of, counter: str, where=None) -> None:
        with ctx.sessions() as session:
            query = select(pk_column).where(getattr(model, column).is_not(None))
            if where is not None:
                query = query.where(where)
            ids = session.scalars(query).all()
        for pk in ids:
            with transaction(ctx.sessions) as session:
                row = session.get(model, pk, with_for_update=True)
                value = getattr(row, column) if row is not None else None
                if not value:
                    continue
                # Role passwords go under RUNTIME_KEYRING's current key, the rest under KEYRING's.
                rewrapped = keyring.rewrap(value, context_of(pk))
                if rewrapped == value:
                    continue
                if isinstance(row, TenantBackupKey):
                    row.rewrap(rewrapped, keyring.current_key_id)
                else:
                    setattr(row, column, rewrapped)
                counts[counter] += 1

    rewrap_all(TenantBackupKey, TenantBackupKey.tenant_id, "wrapped_key", tenant_key_context, "tenant_keys")
    rewrap_all(Tenant, Tenant.id, "role_password_encrypted", role_secret_context, "role_passwords")
    rewrap_all(DatabaseServer, DatabaseServer.name, "admin_url_encrypted", server_secret_context, "server_urls")
    rewrap_all(Operation, Operation.id, "one_time_secret_encrypted", operation_secret_context, "operation_secrets")
    with transaction(ctx.sessions) as session:
        audit.record(session, actor, "keys.rotated", None, None, key_id=keyring.current_key_id, **counts)
    log.info("re-wrapped under KEYRING key %s: %s", keyring.current_key_id, counts)
    return counts
