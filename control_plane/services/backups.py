"""Backing up one tenant: the job, the catalog record, reading a backup back, decrypting it, policies.

A backup streams pg_dump → zstd → AES-256-GCM chunks → the store (see adapters.backup_format), then
writes its manifest, reads the stored object back to check its SHA-256, and only then is `completed`.
Backups run under the tenant's lock (the runner's), so they never overlap a migration or a restore.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import closing
from datetime import timedelta
from typing import Any, BinaryIO

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session, object_session

from control_plane import naming
from control_plane.adapters.backup_format import (CHUNK_SIZE, CIPHER, COMPRESSION, FORMAT_VERSION, PG_ARCHIVE_MAGIC,
                                                  BackupHeader, IterReader, SealStats, new_key, seal,
                                                  wrap_data_key)
from control_plane.backup_errors import BackupIntegrityError, BackupNotFoundError, BackupStoreError
from control_plane.catalog.backup_models import (Backup, BackupPolicy, BackupStatus, BackupTrigger, CopyStatus,
                                                 RetiredDatabase)
from control_plane.catalog.db import transaction
from control_plane.catalog.models import Operation, Tenant, TenantStatus, new_id, utcnow
from control_plane.errors import (ControlPlaneError, IllegalTransitionError, OperationCancelledError, TenantNotFoundError,
                                  ValidationError)
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.backup_copies import copy_backup
from control_plane.services.byte_progress import ByteProgress
from control_plane.services.backup_keys import destroy_tenant_key, key_for_new_backup
from control_plane.services.backup_objects import (MAX_MANIFEST_BYTES, check_read, data_key, delete_objects,
                                                   load_manifest, manifest_key, open_backup, store_for, tools_for,
                                                   tools_for_server)
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.retention import Policy, policy_of

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 10.0


def _describe(exc: BaseException) -> str:
    return exc.detail if isinstance(exc, ControlPlaneError) else f"{type(exc).__name__}: {exc}"


def drop_retired_database(ctx: ServiceContext, session: Session, retired: RetiredDatabase) -> None:
    tools_for_server(ctx, session, retired.server_name).drop_database(retired.database_name)
    retired.dropped_at = utcnow()
    audit.record(session, "system", "database.retired_dropped", retired.tenant_id, retired.operation_id,
                 database=retired.database_name, server=retired.server_name)


def _role_password(ctx: ServiceContext, tenant: Tenant) -> str:
    return ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))


class _Heartbeat:
    """Keeps the operation's heartbeat fresh during a long stream (from whichever thread reads it).

    Its own short transactions: the stream may be read by the S3 transfer manager's submission thread,
    which must not touch the job's session.
    """

    def __init__(self, ctx: ServiceContext, operation_id: str | None, total_bytes: int) -> None:
        self._ctx = ctx
        self._operation_id = operation_id
        # Archive bytes streamed of the estimated total, on the operation's `result`.
        self.bytes = ByteProgress(ctx, operation_id, total_bytes)
        self._last = time.monotonic()

    def __call__(self, stats: SealStats) -> None:
        now = time.monotonic()
        self.bytes.update(stats.archive_bytes)
        if self._operation_id is None or now - self._last < HEARTBEAT_SECONDS:
            return
        self._last = now
        with transaction(self._ctx.sessions) as session:
            session.execute(update(Operation).where(Operation.id == self._operation_id).values(heartbeat_at=utcnow()))
            cancelled = session.scalar(select(Operation.cancel_requested_at).where(Operation.id == self._operation_id))
        if cancelled is not None:  # a safe point: the partial objects are deleted as for any failure
            raise OperationCancelledError("cancelled while the backup was streaming")
        log.info("operation %s: %d MB of archive streamed", self._operation_id, stats.archive_bytes >> 20)


# -- taking a backup -----------------------------------------------------------------------------------

def perform_backup(ctx: ServiceContext, session: Session, tenant: Tenant, trigger: BackupTrigger,
                   operation_id: str | None, expires_in_days: int | None = None) -> Backup:
    """Back the tenant's database up now. The caller holds the tenant's lock; `tenant` is in `session`.

    The catalog row is `running` while objects are written and `completed` only once the object and
    manifest are stored and the stored object's SHA-256 matches what was sent. Any failure marks the
    row `failed`, deletes what was written, and raises.
    """
    store = ctx.backup_store
    backup_id = new_id()
    tenant_key = key_for_new_backup(ctx, session, tenant.id)
    backup = Backup(id=backup_id, tenant_id=tenant.id, operation_id=operation_id, status=BackupStatus.RUNNING,
                    trigger=trigger, store_url=store.url, object_prefix=naming.backup_prefix(tenant.id, backup_id),
                    tenant_key_id=tenant_key.key_id, keyring_key_id=tenant_key.keyring_key_id,
                    format_version=FORMAT_VERSION)
    session.add(backup)
    session.commit()
    log.info("tenant %s operation %s: backup %s (%s) started", tenant.id, operation_id, backup_id, trigger.value)
    try:
        started_at = utcnow()
        tools = tools_for(ctx, tenant.server)
        _, server_version = tools.server_version()
        revision = ctx.database_of(tenant).current_revision()
        secret = new_key()  # this backup's data key: never stored unwrapped
        header = BackupHeader(backup_id=backup_id, tenant_id=tenant.id, tenant_key_id=tenant_key.key_id,
                              wrapped_data_key=wrap_data_key(tenant_key.key, secret, tenant.id, backup_id),
                              chunk_size=CHUNK_SIZE)
        stats = SealStats()
        level = ctx.settings.backup_zstd_level
        heartbeat = _Heartbeat(ctx, operation_id, tools.database_size(tenant.database_name))
        with tools.dump(tenant.database_name, tenant.role_name, _role_password(ctx, tenant)) as dump:
            pieces = seal(dump.archive, header, secret, stats, level=level,
                          threads=ctx.settings.backup_zstd_threads, on_progress=heartbeat)
            store.put(data_key(backup), IterReader(pieces))
        heartbeat.bytes.update(stats.archive_bytes)
        heartbeat.bytes.finish()
        client = dump.client
        table_rows = dump.row_counts()
        if stats.archive_head != PG_ARCHIVE_MAGIC:
            raise BackupIntegrityError("pg_dump did not produce a custom-format archive")
        finished_at = utcnow()
        manifest = {
            "format": "tenant-control-plane-backup",
            "format_version": FORMAT_VERSION,
            "backup_id": backup_id,
            "tenant_id": tenant.id,
            "trigger": trigger.value,
            "operation_id": operation_id,
            "schema_revision": revision,
            # Exact, taken in the snapshot pg_dump read: what a drill checks a restored copy against.
            "tables": table_rows,
            "postgresql": {"server_version": server_version, "pg_dump_version": client.version},
            "archive": {"format": "pg_dump custom (-Fc -Z0)", "bytes": stats.archive_bytes},
            "compression": {"algorithm": COMPRESSION, "level": level, "bytes": stats.compressed_bytes},
            "encryption": {"cipher": CIPHER, "chunk_bytes": header.chunk_size, "chunks": stats.chunks,
                           "data_key": "fresh per backup, wrapped by the tenant key, in the object header",
                           "tenant_key_id": tenant_key.key_id, "keyring_key_id": tenant_key.keyring_key_id},
            "object": {"name": naming.BACKUP_DATA_OBJECT, "bytes": stats.stored_bytes, "sha256": stats.sha256},
            "started_at": started_at.isoformat(),
            "finished_at": finished_at.isoformat(),
        }
        encoded = json.dumps(manifest, indent=2, sort_keys=True).encode()
        store.put_bytes(manifest_key(backup), encoded)

        # Read back what the store holds: only a stored object that matches is a backup.
        stored = store.digest(data_key(backup))
        if stored != (stats.stored_bytes, stats.sha256):
            raise BackupIntegrityError(f"the stored object ({stored[0]} bytes) does not match what was uploaded "
                                       f"({stats.stored_bytes} bytes, sha256 {stats.sha256})")
        if store.get_bytes(manifest_key(backup), MAX_MANIFEST_BYTES) != encoded:
            raise BackupIntegrityError("the stored manifest does not match what was written")

        completed_at = utcnow()
        backup.schema_revision = revision
        backup.server_version = server_version
        backup.pg_dump_version = client.version
        backup.archive_bytes = stats.archive_bytes
        backup.stored_bytes = stats.stored_bytes
        backup.sha256 = stats.sha256
        if expires_in_days is not None:
            backup.expires_at = completed_at + timedelta(days=expires_in_days)
        backup.complete(manifest, completed_at)
        tenant.last_backup_at = completed_at
        audit.record(session, "system", "backup.completed", tenant.id, operation_id, backup_id=backup_id,
                     trigger=trigger.value, stored_bytes=stats.stored_bytes, archive_bytes=stats.archive_bytes)
        session.commit()
    except BaseException as exc:
        session.rollback()
        _give_up(ctx, session, backup, _describe(exc))
        raise
    log.info("tenant %s operation %s: backup %s completed (%d → %d bytes)", tenant.id, operation_id, backup_id,
             backup.archive_bytes, backup.stored_bytes)
    copy_backup(ctx, session, backup)
    return backup


def _give_up(ctx: ServiceContext, session: Session, backup: Backup, error: str, commit: bool = True) -> None:
    """Mark a running backup failed and delete whatever it wrote (best effort: prune retries the delete).

    With `commit=False` the caller commits (an operation's failure handler runs inside its transaction).
    """
    backup = session.get(Backup, backup.id, populate_existing=True)
    if backup is None or backup.status is not BackupStatus.RUNNING:
        return
    backup.fail(error)
    if commit:
        session.commit()  # failed before anything is deleted: never a completed row without its objects
    try:
        delete_objects(ctx, backup)
        backup.deleted_at = utcnow()
    except Exception:  # the store may be what failed; prune deletes the leftovers later
        log.warning("tenant %s: could not delete the objects of failed backup %s", backup.tenant_id, backup.id,
                    exc_info=True)
    if commit:
        session.commit()


def abandon_attempts(ctx: ServiceContext, session: Session, operation_id: str, error: str,
                     commit: bool = True) -> None:
    """Backups an earlier attempt of this operation left `running` (its process died): failed, objects deleted."""
    for backup in session.scalars(select(Backup).where(Backup.operation_id == operation_id,
                                                       Backup.status == BackupStatus.RUNNING)).all():
        _give_up(ctx, session, backup, error, commit)


# -- reading ---------------------------------------------------------------------------------------------

def list_backups(ctx: ServiceContext, principal: Principal, tenant_id: str, *, status: BackupStatus | None = None,
                 trigger: BackupTrigger | None = None, offset: int = 0, limit: int = 50) -> tuple[list[Backup], int]:
    principal.require_tenant(tenant_id)
    query = select(Backup).where(Backup.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Backup.status == status)
    if trigger is not None:
        query = query.where(Backup.trigger == trigger)
    with ctx.sessions() as session:
        if session.get(Tenant, tenant_id) is None and not session.scalar(query.limit(1)):
            raise TenantNotFoundError(tenant_id)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(query.order_by(Backup.created_at.desc(), Backup.id).offset(offset).limit(limit)).all()
        return list(rows), total


def get_backup(ctx: ServiceContext, principal: Principal, backup_id: str) -> Backup:
    with ctx.sessions() as session:
        backup = session.get(Backup, backup_id)
        # The same answer whether it does not exist or belongs to someone else: ids are not a secret
        # worth a 403 oracle.
        if backup is None or not (principal.is_super_admin or principal.tenant_id == backup.tenant_id):
            raise BackupNotFoundError(backup_id)
        return backup


def newest_restorable(session: Session, tenant_id: str) -> Backup | None:
    """The tenant's newest backup that can still be restored (from its primary store or a copy)."""
    candidates = session.scalars(select(Backup).where(
        Backup.tenant_id == tenant_id, Backup.status.in_([BackupStatus.COMPLETED, BackupStatus.EXPIRED]))
        .order_by(Backup.completed_at.desc())).all()
    return next((b for b in candidates if b.restorable), None)


def require_restorable(backup: Backup) -> None:
    if not backup.restorable:
        raise IllegalTransitionError("backup", backup.id, backup.status.value, "restore or decrypt it")


def decrypt_backup(ctx: ServiceContext, principal: Principal, backup_id: str, sink: BinaryIO) -> Backup:
    """Write the backup's plain pg_dump archive to `sink`, authenticating every chunk on the way.

    Nothing unauthenticated is written; a backup that is cut short or altered raises part-way, so the
    caller must discard what was written when this raises.
    """
    principal.require_super_admin()
    with ctx.sessions() as session:
        backup = get_backup(ctx, principal, backup_id)
        require_restorable(backup)
        store = store_for(ctx, backup)
        load_manifest(store, backup)
        with closing(store.open(data_key(backup))) as stream:
            opened = open_backup(ctx, session, backup, stream)
            size = opened.archive(sink)
        check_read(opened, backup, size)
        audit.record(session, principal.actor, "backup.decrypted", backup.tenant_id, None, backup_id=backup.id)
        session.commit()
    return backup


# -- delete integration (hooks called by the DELETE kind) -----------------------------------------------

def final_backup(ctx: ServiceContext, tenant: Tenant, op: Operation) -> None:
    """Back up a tenant that is being deleted (trigger pre-delete), inside the DELETE operation.

    A tenant whose database never existed has nothing to keep; for a tenant that was `failed` before
    its deletion the backup is best effort; for any other a failed backup stops the deletion.
    """
    session = object_session(tenant)
    if op.params.get("purge") or tenant.server is None:
        return
    if not tools_for(ctx, tenant.server).database_exists(tenant.database_name):
        log.info("tenant %s operation %s: no database, no final backup", tenant.id, op.id)
        return
    if session.scalar(select(Backup.id).where(Backup.operation_id == op.id, Backup.status == BackupStatus.COMPLETED,
                                              Backup.trigger == BackupTrigger.PRE_DELETE)):
        # A retry after an attempt that died later: its final backup is taken, and the retirement it had
        # begun may already bar the role from logging in.
        return
    try:
        perform_backup(ctx, session, tenant, BackupTrigger.PRE_DELETE, op.id)
    except Exception:
        if op.return_status is not TenantStatus.FAILED:
            raise
        log.warning("tenant %s operation %s: final backup of a failed tenant failed; deleting anyway",
                    tenant.id, op.id, exc_info=True)


def pre_migration_backup(ctx: ServiceContext, tenant: Tenant, item_id: str) -> dict[str, Any]:
    """A verified backup (trigger pre-migrate) for a bulk migration run item; the caller holds the lock."""
    with ctx.sessions() as session:
        current = session.get(Tenant, tenant.id)
        if current is None:
            raise TenantNotFoundError(tenant.id)
        backup = perform_backup(ctx, session, current, BackupTrigger.PRE_MIGRATE, None)
        audit.record(session, "system", "backup.pre_migration", tenant.id, None, backup_id=backup.id,
                     migration_item_id=item_id)
        session.commit()
        return {"backup_id": backup.id, "location": backup.location}


def before_drop(ctx: ServiceContext, tenant: Tenant, op: Operation) -> None:
    """Before a tenant's database is retired or dropped: drop the databases restores, moves and an earlier
    delete retired (they belong to the role; not the one this delete retires, on a retry), and with
    `purge` crypto-shred the tenant's backups."""
    session = object_session(tenant)
    for retired in session.scalars(select(RetiredDatabase).where(
            RetiredDatabase.tenant_id == tenant.id, RetiredDatabase.dropped_at.is_(None),
            or_(RetiredDatabase.operation_id.is_(None), RetiredDatabase.operation_id != op.id))).all():
        drop_retired_database(ctx, session, retired)
        session.commit()
    if op.params.get("purge"):
        purge_backups(ctx, session, tenant.id, op.id)


def purge_backups(ctx: ServiceContext, session: Session, tenant_id: str, operation_id: str | None) -> dict[str, int]:
    """Crypto-shred a tenant's backups: destroy its key first (every copy anywhere becomes unreadable,
    replicas and object versions included), then delete the objects and mark the backups deleted."""
    destroyed = destroy_tenant_key(session, tenant_id)
    backups = session.scalars(select(Backup).where(Backup.tenant_id == tenant_id,
                                                   Backup.status != BackupStatus.RUNNING)).all()
    for backup in backups:
        if backup.status is not BackupStatus.DELETED:
            backup.mark_deleted()
    audit.record(session, "system", "tenant.backups_purged", tenant_id, operation_id,
                 key_destroyed=destroyed, backups=len(backups))
    session.commit()  # the key is gone before any object is touched
    deleted = 0
    stores = {b.store_url for b in backups} | {c.store_url for b in backups for c in b.copies} | {ctx.backup_store.url}
    if ctx.copy_store is not None:
        stores.add(ctx.copy_store.url)
    for url in stores:
        store = ctx.backup_store if url == ctx.backup_store.url else ctx.open_backup_store(url)
        try:
            deleted += store.delete_prefix(naming.tenant_backups_prefix(tenant_id))
        except BackupStoreError:
            # Unreadable already (the key is gone); prune cannot find them by status, so say it loudly.
            log.error("tenant %s: purge could not delete objects in %s; they are undecryptable, delete them "
                      "by hand", tenant_id, url, exc_info=True)
    now = utcnow()
    for backup in backups:
        backup.deleted_at = backup.deleted_at or now
        for copy in backup.copies:
            copy.status = CopyStatus.DELETED
            copy.deleted_at = copy.deleted_at or now
    session.commit()
    return {"backups": len(backups), "objects": deleted}


# -- policies --------------------------------------------------------------------------------------------

def get_policy(ctx: ServiceContext, principal: Principal, tenant_id: str) -> Policy:
    principal.require_tenant(tenant_id)
    with ctx.sessions() as session:
        if session.get(Tenant, tenant_id) is None:
            raise TenantNotFoundError(tenant_id)
        return policy_of(ctx, session, tenant_id)


# `rpo_hours` not given (None is a value: the tenant's own RPO dropped).
_UNSET: Any = object()


def set_policy(ctx: ServiceContext, principal: Principal, tenant_id: str, *, keep_last: int | None = None,
               keep_daily_days: int | None = None, scheduled: bool | None = None,
               rpo_hours: Any = _UNSET) -> Policy:
    """Change what is given; `rpo_hours=None` drops the tenant's own RPO (its plan's, or the default, applies)."""
    principal.require_super_admin()
    with transaction(ctx.sessions) as session:
        if session.get(Tenant, tenant_id) is None:
            raise TenantNotFoundError(tenant_id)
        current = policy_of(ctx, session, tenant_id)
        row = session.get(BackupPolicy, tenant_id, with_for_update=True)
        if row is None:
            row = BackupPolicy(tenant_id=tenant_id, keep_last=current.keep_last,
                               keep_daily_days=current.keep_daily_days, scheduled=current.scheduled, rpo_hours=None)
            session.add(row)
        if keep_last is not None:
            if keep_last < 1:
                raise ValidationError("keep_last", "must be at least 1")
            row.keep_last = keep_last
        if keep_daily_days is not None:
            row.keep_daily_days = keep_daily_days
        if scheduled is not None:
            row.scheduled = scheduled
        if rpo_hours is not _UNSET:
            if rpo_hours is not None and rpo_hours < 1:
                raise ValidationError("rpo_hours", "must be at least 1")
            row.rpo_hours = rpo_hours
        session.flush()
        updated = policy_of(ctx, session, tenant_id)
        audit.record(session, principal.actor, "backup_policy.updated", tenant_id, None,
                     keep_last=row.keep_last, keep_daily_days=row.keep_daily_days, scheduled=row.scheduled,
                     rpo_hours=row.rpo_hours)
        return updated
