"""The prune job: expire what retention no longer keeps, clean failed attempts, sync copies, drop retired
databases that are due (and the role of a deleted tenant whose grace period is over, or of a moved tenant
on the server it left, once it owns nothing there)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from control_plane import naming
from control_plane.catalog.backup_models import Backup, BackupCopy, BackupStatus, CopyStatus, RetiredDatabase
from control_plane.catalog.models import DatabaseServer, Operation, Tenant, TenantStatus, utcnow
from control_plane.errors import TenantBusyError
from control_plane.services import audit
from control_plane.services.backup_copies import sync_copies
from control_plane.services.backups import delete_objects, drop_retired_database
from control_plane.services.context import ServiceContext
from control_plane.services.retention import policy_of, retained_ids
from control_plane.services.retired_tenants import deletion_record, drop_tenant_databases

log = logging.getLogger(__name__)


@dataclass
class PruneReport:
    expired: list[str] = field(default_factory=list)
    cleaned: list[str] = field(default_factory=list)          # failed or abandoned attempts' leftovers
    dropped_databases: list[str] = field(default_factory=list)
    dropped_roles: list[str] = field(default_factory=list)    # of deleted tenants past grace; left by moves
    skipped_tenants: list[str] = field(default_factory=list)  # busy: pruned next time
    copied: list[str] = field(default_factory=list)           # backups whose missing copy was made
    expired_copies: list[str] = field(default_factory=list)


def _drop_role_left_behind(ctx: ServiceContext, session: Session, tenant: Tenant | None,
                           retired: RetiredDatabase) -> bool:
    """After a move, the tenant's role stays on the server it left, owning the retired source database
    (so reconcile sees an owner, not an orphan). Once that database is dropped and the role owns nothing
    else there, it goes too; never on the server the tenant lives on. True when it was dropped now."""
    if tenant is not None and tenant.server_name == retired.server_name:
        return False  # an in-place restore's retired database: the role is the live tenant's
    role = naming.role_name(retired.tenant_id)
    admin = ctx.admin_for(session.get(DatabaseServer, retired.server_name))
    if not admin.drop_role_if_unused(role):
        return False
    audit.record(session, "system", "role.left_behind_dropped", retired.tenant_id, retired.operation_id,
                 role=role, server=retired.server_name)
    return True


def prune_backups(ctx: ServiceContext, now: datetime | None = None, tenant_ids: list[str] | None = None) -> PruneReport:
    """Expire what each tenant's policy no longer keeps, clean failed attempts, drop retired databases due.

    Runs per tenant under the tenant's lock, so it never deletes a backup a restore is reading.
    """
    now = now or utcnow()
    report = PruneReport()
    with ctx.sessions() as session:
        query = select(Backup.tenant_id).where(or_(
            Backup.status == BackupStatus.COMPLETED,
            (Backup.status.in_([BackupStatus.FAILED, BackupStatus.RUNNING, BackupStatus.EXPIRED])
             & Backup.deleted_at.is_(None)))).distinct()
        undropped = RetiredDatabase.dropped_at.is_(None)
        retired = select(RetiredDatabase.tenant_id).where(undropped, RetiredDatabase.drop_after <= now).union(
            select(RetiredDatabase.tenant_id).where(undropped).group_by(RetiredDatabase.tenant_id)
            .having(func.count() > ctx.settings.retired_databases_per_tenant))
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
                    if _drop_role_left_behind(ctx, session, tenant, retired_db):
                        report.dropped_roles.append(naming.role_name(tenant_id))
                        session.commit()
                report.dropped_databases.extend(drop_excess_retired(ctx, session, tenant_id))
                if due and deleted and tenant is not None and tenant.server is not None \
                        and deletion_record(session, tenant_id) is None:
                    # A deleted tenant's grace period is over: whatever else its role owns, then the role.
                    report.dropped_databases.extend(drop_tenant_databases(ctx, session, tenant, None))
                    report.dropped_roles.append(tenant.role_name)
                    session.commit()
        except TenantBusyError:
            log.info("tenant %s is busy: pruning it next time", tenant_id)
            report.skipped_tenants.append(tenant_id)
    return report


def drop_excess_retired(ctx: ServiceContext, session: Session, tenant_id: str) -> list[str]:
    """Keep the tenant's newest RETIRED_DATABASES_PER_TENANT retired databases, drop the others (oldest first).

    Each retired database is a full copy of the tenant on its server, so a tenant admin restoring again
    and again must not pile them up. Older states stay recoverable from backups (an in-place restore
    takes a pre-restore backup unless told not to). Call under the tenant's lock; commits each drop.
    """
    undropped = session.scalars(select(RetiredDatabase).where(
        RetiredDatabase.tenant_id == tenant_id, RetiredDatabase.dropped_at.is_(None))
        .order_by(RetiredDatabase.retired_at.desc(), RetiredDatabase.id)).all()
    dropped = []
    for retired_db in reversed(undropped[ctx.settings.retired_databases_per_tenant:]):
        drop_retired_database(ctx, session, retired_db)
        session.commit()
        dropped.append(retired_db.database_name)
        log.info("tenant %s: retired database %s dropped (over %d kept per tenant)", tenant_id,
                 retired_db.database_name, ctx.settings.retired_databases_per_tenant)
    return dropped
