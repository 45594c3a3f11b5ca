"""The second copy of every backup (BACKUP_COPY_STORE_URL), its own retention, and reading a backup from
the first of its locations that verifies (the primary store, then its copies).

A copy is `completed` only once the copy store holds the manifest and a data object whose SHA-256,
read back from that store, is the backup's. A failed copy does not fail the backup: it is recorded
and retried by the hourly prune until the copy store's retention would drop it anyway.
"""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, BinaryIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane.backup_errors import BackupIntegrityError, BackupStoreError
from control_plane.catalog.backup_models import Backup, BackupCopy, BackupStatus, CopyStatus
from control_plane.catalog.models import utcnow
from control_plane.errors import ControlPlaneError
from control_plane.services.backup_objects import (check_read, data_key, load_manifest, manifest_key, open_backup,
                                                   store_for)
from control_plane.services.context import ServiceContext
from control_plane.services.retention import Policy, retained_ids

log = logging.getLogger(__name__)


def _store(ctx: ServiceContext, url: str):
    if ctx.copy_store is not None and url == ctx.copy_store.url:
        return ctx.copy_store
    if url == ctx.backup_store.url:
        return ctx.backup_store
    return ctx.open_backup_store(url)


def copy_backup(ctx: ServiceContext, session: Session, backup: Backup) -> BackupCopy | None:
    """Copy a completed backup to the copy store and verify it there; None when no copy store is set.

    Never raises for a store failure: the copy is recorded `failed` with the reason (prune retries it).
    """

    target = ctx.copy_store
    if target is None or target.url == backup.store_url:
        return None
    copy = BackupCopy(backup_id=backup.id, store_url=target.url, status=CopyStatus.RUNNING)
    backup.copies.append(copy)
    session.commit()
    try:
        source = store_for(ctx, backup)
        copy.method = target.copy_from(source, data_key(backup))
        target.copy_from(source, manifest_key(backup))
        stored = target.digest(data_key(backup))
        if stored != (backup.stored_bytes, backup.sha256):
            raise BackupIntegrityError(f"the copied object ({stored[0]} bytes) does not match backup {backup.id}")
        copy.status = CopyStatus.COMPLETED
        copy.completed_at = utcnow()
        copy.error = None
        session.commit()
        log.info("tenant %s: backup %s copied to %s (%s)", backup.tenant_id, backup.id, target.url, copy.method)
    except Exception as exc:  # the copy's boundary: recorded on the copy, the backup stays completed
        session.rollback()
        copy.status = CopyStatus.FAILED
        copy.error = exc.detail if isinstance(exc, ControlPlaneError) else f"{type(exc).__name__}: {exc}"
        session.commit()
        log.warning("tenant %s: copying backup %s to %s failed: %s", backup.tenant_id, backup.id, target.url,
                    copy.error)
        _delete_copy_objects(ctx, copy)
        session.commit()
    return copy


def _delete_copy_objects(ctx: ServiceContext, copy: BackupCopy) -> None:
    try:
        _store(ctx, copy.store_url).delete_prefix(copy.backup.object_prefix)
        copy.deleted_at = utcnow()
    except BackupStoreError:
        log.warning("could not delete copy %s of backup %s", copy.id, copy.backup_id, exc_info=True)


def sync_copies(ctx: ServiceContext, session: Session, tenant_id: str, policy: Policy, now: datetime,
                tenant_deleted: bool) -> dict[str, list[str]]:
    """One tenant's copies: copy what should have a copy and has none, expire what the copy store's
    retention (the tenant's keep_last, and BACKUP_COPY_KEEP_DAILY_DAYS days of dailies) no longer keeps.
    The caller holds the tenant's lock."""
    report: dict[str, list[str]] = {"copied": [], "expired_copies": []}
    backups = session.scalars(select(Backup).where(
        Backup.tenant_id == tenant_id, Backup.status.in_([BackupStatus.COMPLETED, BackupStatus.EXPIRED]))).all()
    copy_policy = Policy(policy.keep_last, ctx.settings.backup_copy_keep_daily_days)
    keep = retained_ids([b for b in backups if b.usable_copies or b.status is BackupStatus.COMPLETED],
                        copy_policy, now, tenant_deleted)
    for backup in backups:
        for copy in backup.usable_copies:
            if backup.id not in keep:
                copy.status = CopyStatus.EXPIRED
                session.commit()
                _delete_copy_objects(ctx, copy)
                session.commit()
                report["expired_copies"].append(copy.id)
        if (ctx.copy_store is not None and backup.status is BackupStatus.COMPLETED and backup.id in keep
                and not any(c.store_url == ctx.copy_store.url for c in backup.usable_copies)):
            copy = copy_backup(ctx, session, backup)
            if copy is not None and copy.status is CopyStatus.COMPLETED:
                report["copied"].append(backup.id)
    return report


def fetch_verified(ctx: ServiceContext, session: Session, backup: Backup,
                   destination: BinaryIO) -> tuple[dict[str, Any], dict[str, Any]]:
    """Download the backup's data object into `destination` (a seekable temporary file) from the first
    location whose manifest and object verify (SHA-256, every chunk authenticated): the primary store,
    then each copy. Returns (manifest, where: {"source", "location", "fallback_reason"?}).

    A missing or damaged object falls back to the next location; a key that is gone does not (no copy
    can help: the same key seals them all).
    """

    locations: list[tuple[str, str, Any]] = []
    if backup.status is BackupStatus.COMPLETED:
        locations.append(("primary", backup.location, store_for(ctx, backup)))
    for copy in backup.usable_copies:
        locations.append(("copy", copy.location, _store(ctx, copy.store_url)))
    problems: list[str] = []
    last: Exception | None = None
    for source, location, store in locations:
        try:
            destination.seek(0)
            destination.truncate()
            manifest = load_manifest(store, backup)
            store.fetch(data_key(backup), destination)
            destination.seek(0)
            opened = open_backup(ctx, session, backup, destination)
            opened.authenticate()
            check_read(opened, backup)
        except (BackupStoreError, BackupIntegrityError) as exc:
            last = exc
            problems.append(f"{source} ({location}): {exc.detail}")
            log.warning("tenant %s: backup %s unusable at %s: %s", backup.tenant_id, backup.id, location, exc.detail)
            continue
        where: dict[str, Any] = {"source": source, "location": location}
        if problems:
            where["fallback_reason"] = "; ".join(problems)
        return manifest, where
    if not locations:
        raise BackupIntegrityError(f"backup {backup.id} has no location left to read it from")
    if len(locations) == 1:
        raise last
    raise BackupIntegrityError(f"no location of backup {backup.id} verified: " + "; ".join(problems))
