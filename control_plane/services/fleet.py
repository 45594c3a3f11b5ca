"""Fleet-wide figures read from the catalog: what /metrics and /readyz report."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select, text

from control_plane.catalog.backup_models import Backup, BackupStatus
from control_plane.catalog.migration_run_models import MigrationRun, MigrationRunStatus
from control_plane.catalog.models import DatabaseServer, Operation, OperationStatus, Tenant, TenantStatus, utcnow
from control_plane.services.context import ServiceContext
from control_plane.services.rpo import BACKED_UP_STATUSES, rpo_hours_of_tenant



def ping_catalog(ctx: ServiceContext) -> None:
    with ctx.sessions() as session:
        session.execute(text("SELECT 1"))


def tenants_by_status(ctx: ServiceContext) -> dict[str, int]:
    with ctx.sessions() as session:
        return {status.value: count for status, count in
                session.execute(select(Tenant.status, func.count()).group_by(Tenant.status))}


def operations_by_kind_and_status(ctx: ServiceContext) -> dict[tuple[str, str], int]:
    with ctx.sessions() as session:
        return {(kind.value, status.value): count for kind, status, count in session.execute(
            select(Operation.kind, Operation.status, func.count()).group_by(Operation.kind, Operation.status))}


@dataclass(frozen=True)
class RecentOperations:
    """Operations of the last `window`: how many started and finished (by kind and status), and the
    durations in seconds of those that finished (by kind)."""

    started: dict[str, int]
    finished: dict[tuple[str, str], int]
    durations: dict[str, list[float]]


def recent_operations(ctx: ServiceContext, window: timedelta = timedelta(hours=1)) -> RecentOperations:
    since = utcnow() - window
    with ctx.sessions() as session:
        started = {kind.value: count for kind, count in session.execute(
            select(Operation.kind, func.count()).where(Operation.started_at >= since).group_by(Operation.kind))}
        finished: dict[tuple[str, str], int] = {}
        durations: dict[str, list[float]] = {}
        for kind, status, started_at, finished_at in session.execute(
                select(Operation.kind, Operation.status, Operation.started_at, Operation.finished_at)
                .where(Operation.finished_at >= since)):
            finished[(kind.value, status.value)] = finished.get((kind.value, status.value), 0) + 1
            if started_at is not None and status in (OperationStatus.SUCCEEDED, OperationStatus.FAILED):
                durations.setdefault(kind.value, []).append((finished_at - started_at).total_seconds())
    return RecentOperations(started, finished, durations)


def oldest_unfinished_operations(ctx: ServiceContext, now: datetime | None = None) -> dict[tuple[str, str], float]:
    """(kind, status) → age in seconds of the oldest queued (since created) or running (since started) one."""
    now = now or utcnow()
    with ctx.sessions() as session:
        rows = session.execute(
            select(Operation.kind, Operation.status,
                   func.min(func.coalesce(Operation.started_at, Operation.created_at)))
            .where(Operation.status.in_((OperationStatus.QUEUED, OperationStatus.RUNNING)))
            .group_by(Operation.kind, Operation.status)).all()
    return {(kind.value, status.value): max(0.0, (now - since).total_seconds()) for kind, status, since in rows}


@dataclass(frozen=True)
class TenantBackupState:
    tenant_id: str
    age_seconds: float            # since the newest completed backup, or since creation without one
    rpo_seconds: float
    last_size_bytes: int | None   # of the newest completed backup, as stored


def tenant_backup_states(ctx: ServiceContext, now: datetime | None = None) -> list[TenantBackupState]:
    """Every tenant that must be backed up, with how old its newest backup is. One query per table."""
    now = now or utcnow()
    with ctx.sessions() as session:
        tenants = session.execute(select(Tenant.id, Tenant.created_at, Tenant.last_backup_at, rpo_hours_of_tenant())
                                  .where(Tenant.status.in_(BACKED_UP_STATUSES))).all()
        completed = Backup.status == BackupStatus.COMPLETED
        newest_at = (select(Backup.tenant_id, func.max(Backup.completed_at).label("at"))
                     .where(completed).group_by(Backup.tenant_id).subquery())
        newest = (select(Backup.tenant_id, Backup.completed_at, Backup.stored_bytes)
                  .join(newest_at, (Backup.tenant_id == newest_at.c.tenant_id) & (Backup.completed_at == newest_at.c.at))
                  .where(completed))
        latest = {tenant_id: (completed_at, size) for tenant_id, completed_at, size in session.execute(newest)}
    states = []
    for tenant_id, created_at, last_backup_at, rpo_hours in tenants:
        completed_at, size = latest.get(tenant_id, (None, None))
        since = max(filter(None, (completed_at, last_backup_at)), default=created_at)
        states.append(TenantBackupState(tenant_id, max(0.0, (now - since).total_seconds()),
                                        rpo_hours * 3600.0, size))
    return states


def backups_by_status(ctx: ServiceContext) -> dict[str, int]:
    with ctx.sessions() as session:
        return {status.value: count for status, count in
                session.execute(select(Backup.status, func.count()).group_by(Backup.status))}


def unfinished_migration_runs(ctx: ServiceContext) -> list[MigrationRun]:
    """Runs not finished yet (few at a time): their item counts are the runs' progress."""
    with ctx.sessions() as session:
        return list(session.scalars(select(MigrationRun).where(
            MigrationRun.status.in_((MigrationRunStatus.QUEUED, MigrationRunStatus.RUNNING)))))


def servers_with_tenant_counts(ctx: ServiceContext) -> list[tuple[DatabaseServer, int, dict[str, str]]]:
    """Every server, the tenants placed on it (not deleted), and its tenants' database name → tenant id."""
    with ctx.sessions() as session:
        servers = list(session.scalars(select(DatabaseServer)))
        placed = session.execute(select(Tenant.server_name, Tenant.database_name, Tenant.id)
                                 .where(Tenant.status != TenantStatus.DELETED, Tenant.server_name.is_not(None))).all()
    by_server: dict[str, dict[str, str]] = {}
    for server_name, database, tenant_id in placed:
        by_server.setdefault(server_name, {})[database] = tenant_id
    return [(server, len(by_server.get(server.name, {})), by_server.get(server.name, {})) for server in servers]
