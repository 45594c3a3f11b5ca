"""Scheduled backups that keep each tenant's recovery point objective (its policy's `rpo_hours`, else its
plan's `backup_rpo_hours`, else 24: services.rpo).

With an RPO of a day or more: once a day, each tenant at its own time within the backup window
(staggered by a hash of its id), so a fleet does not start all its pg_dumps at once. With a shorter
RPO: around the clock, every ¾ of the RPO (at least 30 min), at a per-tenant offset.

The catalog decides what is due: a tenant's backup for a slot is an operation with the idempotency
key `scheduled-backup:<tenant>:<slot>`, so ticks from several scheduler replicas, or repeated ticks,
start each backup once. A scheduled backup that failed is retried with exponential backoff (2 min,
doubling, at most an hour apart) until it succeeds or the next slot's backup takes over: never
skipped silently (a backup older than the RPO is `backup_stale` and alerts).
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass
from datetime import datetime, time, timedelta, timezone

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from control_plane.catalog.backup_models import BackupPolicy, BackupTrigger
from control_plane.catalog.models import (Operation, OperationKind, OperationStatus, Tenant, TenantStatus,
                                          utcnow)
from control_plane.errors import ConfigurationError, ConflictError, LockedError, TenantNotFoundError
from control_plane.services.auth import SCHEDULER
from control_plane.logs import log_context
from control_plane.services import fleet
from control_plane.services.kinds.backup import request_backup
from control_plane.services.context import ServiceContext
from control_plane.services.fleet import TenantBackupState
from control_plane.services.rpo import rpo_hours_of_tenant

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackupWindow:
    start: time
    length: timedelta

    @classmethod
    def parse(cls, spec: str) -> "BackupWindow":
        """`HH:MM-HH:MM` in UTC; an end at or before the start runs past midnight; `00:00-24:00` is all day."""
        try:
            start_text, end_text = spec.split("-")
            start = datetime.strptime(start_text.strip(), "%H:%M")
            end_hour, end_minute = (int(part) for part in end_text.strip().split(":"))
            if not (0 <= end_hour <= 24 and 0 <= end_minute < 60) or (end_hour == 24 and end_minute):
                raise ValueError
        except ValueError:
            raise ConfigurationError(f"BACKUP_WINDOW must look like 01:00-05:00 (UTC), got {spec!r}") from None
        minutes = end_hour * 60 + end_minute - (start.hour * 60 + start.minute)
        if minutes <= 0:
            minutes += 24 * 60
        return cls(start.time(), timedelta(minutes=minutes))

    def offset(self, tenant_id: str) -> timedelta:
        """Where in the window the tenant's backup starts: stable, and spread evenly over the window."""
        seconds = int(self.length.total_seconds())
        return timedelta(seconds=zlib.crc32(f"backup-slot:{tenant_id}".encode()) % seconds)

    def latest_slot(self, tenant_id: str, now: datetime) -> datetime:
        """The tenant's most recent scheduled time at or before `now` (today's or yesterday's)."""
        for day in (now.date(), now.date() - timedelta(days=1)):
            slot = datetime.combine(day, self.start, tzinfo=timezone.utc) + self.offset(tenant_id)
            if slot <= now:
                return slot
        return slot - timedelta(days=1)  # a window crossing midnight, with today's slot tomorrow


def _key(tenant_id: str, slot: datetime, daily: bool = True) -> str:
    return f"scheduled-backup:{tenant_id}:{slot:%Y-%m-%d}" if daily else f"scheduled-backup:{tenant_id}:{slot:%Y-%m-%dT%H:%M}"


_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)
RETRY_FIRST = timedelta(minutes=2)
RETRY_MAX = timedelta(hours=1)


def sub_daily_period(rpo_hours: int) -> timedelta:
    """How often to back up to keep an RPO under a day: ¾ of it (room for the backup itself), ≥ 30 min."""
    return max(timedelta(minutes=30), timedelta(minutes=rpo_hours * 45))


def latest_periodic_slot(tenant_id: str, period: timedelta, now: datetime) -> datetime:
    """The tenant's most recent slot at or before `now` on a grid of `period`, shifted by its own offset."""
    seconds = int(period.total_seconds())
    offset = zlib.crc32(f"backup-slot:{tenant_id}".encode()) % seconds
    elapsed = int((now - _EPOCH).total_seconds()) - offset
    return _EPOCH + timedelta(seconds=offset + (elapsed // seconds) * seconds)


def retry_delay(attempts: int) -> timedelta:
    return min(RETRY_MAX, RETRY_FIRST * (2 ** max(0, attempts - 1)))


def schedule_due_backups(ctx: ServiceContext, now: datetime | None = None, limit: int = 100) -> list[str]:
    """Start the scheduled backups that are due; returns the new operations' ids (at most `limit`,
    earliest slot first: after an outage, the backlog drains over several ticks instead of at once)."""
    now = now or utcnow()
    window = BackupWindow.parse(ctx.settings.backup_window)
    with ctx.sessions() as session:
        tenants = session.execute(select(Tenant.id, Tenant.created_at, rpo_hours_of_tenant())
                                  .where(Tenant.status == TenantStatus.ACTIVE)).all()
        unscheduled = set(session.scalars(select(BackupPolicy.tenant_id).where(BackupPolicy.scheduled.is_(False))))
        due = []
        for tenant_id, created_at, rpo_hours in tenants:
            if tenant_id in unscheduled:
                continue
            if rpo_hours >= 24:
                slot = window.latest_slot(tenant_id, now)
                key = _key(tenant_id, slot)
            else:
                slot = latest_periodic_slot(tenant_id, sub_daily_period(rpo_hours), now)
                key = _key(tenant_id, slot, daily=False)
            # A tenant created after its slot waits for the next one (mass provisioning stays staggered).
            if created_at <= slot:
                due.append((slot, tenant_id, key))
        keys = [key for _, _, key in due]
        started_before = set(session.scalars(select(Operation.idempotency_key).where(
            Operation.requested_by == SCHEDULER.token_id, Operation.idempotency_key.in_(keys)))) if keys else set()
    started: list[str] = []
    for slot, tenant_id, key in sorted(due):
        if key in started_before:
            continue
        if len(started) >= limit:
            log.info("scheduled backups: %d more due, left for the next tick", len(due) - len(started))
            break
        try:
            op = request_backup(ctx, SCHEDULER, tenant_id, trigger=BackupTrigger.SCHEDULED, idempotency_key=key)
        except (ConflictError, LockedError, TenantNotFoundError) as exc:
            log.info("tenant %s: scheduled backup not started: %s", tenant_id, exc.detail)
            continue
        except IntegrityError:
            continue  # another scheduler replica started it a moment ago
        started.append(op.id)
        log.info("tenant %s operation %s: scheduled backup for %s started", tenant_id, op.id, slot.isoformat())
    return started + retry_failed_backups(ctx, now)


def retry_failed_backups(ctx: ServiceContext, now: datetime | None = None) -> list[str]:
    """Retry each active tenant's newest scheduled backup if it failed and its backoff has passed.

    Only the newest scheduled one per tenant: once the next slot's backup has started, it takes over.
    """
    from control_plane.services.operations import retry_operation

    now = now or utcnow()
    newest = (select(Operation.tenant_id, func.max(Operation.created_at).label("created_at"))
              .where(Operation.kind == OperationKind.BACKUP, Operation.requested_by == SCHEDULER.token_id)
              .group_by(Operation.tenant_id).subquery())
    with ctx.sessions() as session:
        failed = session.scalars(select(Operation).join(newest, (Operation.tenant_id == newest.c.tenant_id)
                                                        & (Operation.created_at == newest.c.created_at))
                                 .join(Tenant, Tenant.id == Operation.tenant_id)
                                 .where(Operation.status == OperationStatus.FAILED,
                                        Operation.requested_by == SCHEDULER.token_id,
                                        Tenant.status == TenantStatus.ACTIVE)).all()
        due = [op.id for op in failed if op.finished_at is None or op.finished_at + retry_delay(op.attempts) <= now]
    retried = []
    for op_id in due:
        try:
            retry_operation(ctx, SCHEDULER, op_id)
        except (ConflictError, LockedError, TenantNotFoundError) as exc:
            log.info("operation %s: scheduled backup not retried: %s", op_id, exc.detail)
            continue
        retried.append(op_id)
        log.warning("operation %s: scheduled backup failed; retrying (backoff)", op_id)
    return retried


def report_stale_backups(ctx: ServiceContext, now: datetime | None = None) -> list[TenantBackupState]:
    """Log a warning for every tenant whose newest backup is older than its RPO; returns them.

    The metric `control_plane_tenant_last_backup_age_seconds` and the alert TenantBackupStale say the same
    to Prometheus; this line is what an operator finds in the scheduler's log (run hourly).
    """
    stale = [state for state in fleet.tenant_backup_states(ctx, now) if state.age_seconds > state.rpo_seconds]
    for state in stale:
        with log_context(tenant_id=state.tenant_id):
            log.warning("tenant %s: newest backup is %.1f h old, past its RPO of %.1f h", state.tenant_id,
                        state.age_seconds / 3600, state.rpo_seconds / 3600)
    return stale
