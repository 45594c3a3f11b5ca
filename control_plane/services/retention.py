"""Retention: which completed backups a tenant's policy keeps, and the prune job that deletes the rest.

A policy keeps the last N completed backups plus the newest backup of each UTC day for D days. A
backup with an explicit `expires_at` is kept until then, whatever the policy. A deleted tenant keeps
nothing by count: its backups (the final one included) go once the daily window has passed them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable, Protocol
from urllib.parse import urlparse

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from control_plane.catalog.backup_models import (Backup, BackupCopy, BackupPolicy, BackupStatus, CopyStatus,
                                                 RetiredDatabase)
from control_plane.catalog.models import Operation, Tenant, TenantStatus, utcnow
from control_plane.errors import TenantBusyError
from control_plane.services import audit
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    keep_last: int
    keep_daily_days: int
    scheduled: bool = True
    rpo_hours: int = 24  # recovery point objective: the newest backup must be younger than this


def default_policy(store_url: str) -> Policy:
    """The reference deployment's habit: daily backups kept 7 days on local disk, 90 days in S3."""
    return Policy(keep_last=7, keep_daily_days=90 if urlparse(store_url).scheme == "s3" else 7)


def policy_of(ctx: ServiceContext, session: Session, tenant_id: str) -> Policy:
    row = session.get(BackupPolicy, tenant_id)
    if row is None:
        return default_policy(ctx.settings.backup_store_url)
    return Policy(row.keep_last, row.keep_daily_days, row.scheduled, row.rpo_hours)


class _Dated(Protocol):
    id: str
    completed_at: datetime | None
    expires_at: datetime | None


def retained_ids(backups: Iterable[_Dated], policy: Policy, now: datetime, tenant_deleted: bool = False) -> set[str]:
    """The ids, among completed backups, that the policy keeps at `now`."""
    keep: set[str] = set()
    managed = []
    for backup in sorted(backups, key=lambda b: (b.completed_at, b.id), reverse=True):
        if backup.expires_at is not None:
            if backup.expires_at > now:
                keep.add(backup.id)
        else:
            managed.append(backup)
    keep.update(b.id for b in managed[:0 if tenant_deleted else policy.keep_last])
    horizon = now - timedelta(days=policy.keep_daily_days)
    days: set = set()
    for backup in managed:  # newest first: the first seen of each day is that day's newest
        if backup.completed_at <= horizon:
            break
        day = backup.completed_at.astimezone(timezone.utc).date()
        if day not in days:
            days.add(day)
            keep.add(backup.id)
    return keep


@dataclass
class PruneReport:
    expired: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)          # failed or abandoned attempts' leftovers
    dropped_databases: list[str] = field(default_factory=list)
    skipped_tenants: list[str] = field(default_factory=list)  # busy: pruned next time
    copied: list[str] = field(default_factory=list)           # backups whose missing copy was made
    expired_copies: list[str] = field(default_factory=list)


def prune_backups(ctx: ServiceContext, now: datetime | None = None, tenant_ids: list[str] | None = None) -> PruneReport:
    """Expire what each tenant's policy no longer keeps, clean failed attempts, drop retired databases due.

    Runs per tenant under the tenant's lock, so it never deletes a backup a restore is reading.
    """
    from control_plane.services.backup_copies import sync_copies
    from control_plane.services.backups import delete_objects, drop_retired_database

    now = now or utcnow()
    report = PruneReport()
    with ctx.sessions() as session:
        query = select(Backup.tenant_id).where(or_(
            Backup.status == BackupStatus.COMPLETED,
            (Backup.status.in_([BackupStatus.FAILED, BackupStatus.RUNNING, BackupStatus.EXPIRED])
             & Backup.deleted_at.is_(None)))).distinct()
        retired = select(RetiredDatabase.tenant_id).where(RetiredDatabase.dropped_at.is_(None),
                                                          RetiredDatabase.drop_after <= now).distinct()
        copied = select(Backup.tenant_id).join(BackupCopy).where(BackupCopy.status == CopyStatus.COMPLETED).distinct()
        candidates = sorted(set(session.scalars(query)) | set(session.scalars(retired)) | set(session.scalars(copied)))
    if tenant_ids is not None:
        candidates = [t for t in candidates if t in set(tenant_ids)]

    for tenant_id in candidates:
        try:
            with ctx.locks.hold(tenant_id, wait_seconds=5), ctx.sessions() as session:
                tenant = session.get(Tenant, tenant_id)
                deleted = tenant is None or tenant.status is TenantStatus.DELETED
                policy = policy_of(ctx, session, tenant_id)

                completed = session.scalars(select(Backup).where(
                    Backup.tenant_id == tenant_id, Backup.status == BackupStatus.COMPLETED)).all()
                keep = retained_ids(completed, policy, now, tenant_deleted=deleted)
                expired = [backup for backup in completed if backup.id not in keep]
                for backup in expired:
                    backup.expire()
                if expired:
                    audit.record(session, "system", "backups.expired", tenant_id, backup_ids=[b.id for b in expired],
                                 keep_last=policy.keep_last, keep_daily_days=policy.keep_daily_days)
                report.expired.extend(b.id for b in expired)
                session.commit()  # decided: from here on these are expired, whatever happens to the objects

                copies = sync_copies(ctx, session, tenant_id, policy, now, deleted)
                report.copied.extend(copies["copied"])
                report.expired_copies.extend(copies["expired_copies"])

                # Objects of expired backups, and of attempts that failed or whose job is gone.
                leftovers = session.scalars(select(Backup).where(
                    Backup.tenant_id == tenant_id, Backup.deleted_at.is_(None),
                    Backup.status.in_([BackupStatus.EXPIRED, BackupStatus.FAILED, BackupStatus.RUNNING]))).all()
                for backup in leftovers:
                    if backup.status is BackupStatus.RUNNING:
                        op = session.get(Operation, backup.operation_id) if backup.operation_id else None
                        if op is not None and not op.status.finished:
                            continue  # still being written (we hold the lock, so only a queued retry)
                        backup.fail("abandoned: its job ended without finishing it")
                    delete_objects(ctx, backup)
                    backup.deleted_at = now
                    if backup.status is not BackupStatus.EXPIRED:
                        report.cleaned.append(backup.id)
                    session.commit()

                due = session.scalars(select(RetiredDatabase).where(
                    RetiredDatabase.tenant_id == tenant_id, RetiredDatabase.dropped_at.is_(None),
                    RetiredDatabase.drop_after <= now)).all()
                for retired_db in due:
                    drop_retired_database(ctx, session, retired_db)
                    report.dropped_databases.append(retired_db.database_name)
                    session.commit()
        except TenantBusyError:
            log.info("tenant %s is busy: pruning it next time", tenant_id)
            report.skipped_tenants.append(tenant_id)
    return report
