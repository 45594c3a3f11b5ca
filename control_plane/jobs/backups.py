"""RQ entry points of the backup schedule: the scheduler's tick and the prune job (safe to run twice)."""
from __future__ import annotations

import logging
import time
from typing import Any

import redis
from rq.cron import CronScheduler
from rq.exceptions import StopRequested

from control_plane.bootstrap import build_context, dispose, redis_client
from control_plane.jobs.fleet import advance_drains, check_servers, refill_warm_pools, report_reconcile
from control_plane.jobs.sweeper import sweep_operations
from control_plane.naming import Lane, queue_name
from control_plane.services.backup_schedule import report_stale_backups, schedule_due_backups
from control_plane.services.drill_schedule import schedule_due_drills
from control_plane.services.pruning import prune_backups as prune
from control_plane.settings import Settings

log = logging.getLogger(__name__)


def schedule_backups() -> list[str]:
    """Start the backups that are due (each tenant at its slot), the retries of failed ones, and the weekly
    restore drills that are due."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return schedule_due_backups(ctx) + schedule_due_drills(ctx)
    finally:
        dispose(ctx)


def prune_backups() -> dict[str, Any]:
    """Expire backups the retention policies no longer keep; drop retired databases past their grace."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return vars(prune(ctx))
    finally:
        dispose(ctx)


def backup_catalog() -> str:
    """The daily catalog backup (store and copy store), then the catalog backups' retention."""
    from control_plane.services.catalog_backups import backup_catalog as back_up, prune_catalog_backups

    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        backup_id = back_up(ctx)["backup_id"]
        prune_catalog_backups(ctx)
        return backup_id
    finally:
        dispose(ctx)


def warn_stale_backups() -> list[str]:
    """Log a warning for each tenant whose newest backup is past its RPO (the alert's log-side twin)."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return [state.tenant_id for state in report_stale_backups(ctx)]
    finally:
        dispose(ctx)


def build_cron(settings: Settings, interval: int = 60) -> CronScheduler:
    """RQ's cron scheduler with the backup schedule: a tick every `interval` seconds, a prune and a
    stale-backup warning every hour, a catalog backup every day (00:41 UTC, before the default backup window),
    the database servers' health and load check, the server drains' tick and the warm pools' refill every
    `interval` seconds,
    and the reconcile report daily (02:53 UTC).

    The scheduler only enqueues; workers run the jobs. The catalog decides what a tick starts, so
    several schedulers (or a restarted one) never start a tenant's daily backup twice.
    """
    cron = CronScheduler(connection=redis_client(settings), name=f"tenantctl-scheduler:{settings.queue_name}")
    # Nothing stranded: lost jobs re-dispatched, dead workers' operations failed and retried (services.sweeper).
    cron.register(sweep_operations, queue_name=settings.queue_name, interval=interval, job_timeout=600,
                  name=f"{settings.queue_name}:sweep-operations")
    cron.register(schedule_backups, queue_name=settings.queue_name, interval=interval, job_timeout=600,
                  name=f"{settings.queue_name}:schedule-backups")
    cron.register(prune_backups, queue_name=settings.queue_name, cron="17 * * * *", job_timeout=settings.job_timeout,
                  name=f"{settings.queue_name}:prune-backups")
    cron.register(backup_catalog, queue_name=settings.queue_name, cron="41 0 * * *", job_timeout=settings.job_timeout,
                  name=f"{settings.queue_name}:backup-catalog")
    cron.register(check_servers, queue_name=settings.queue_name, interval=interval, job_timeout=300,
                  name=f"{settings.queue_name}:check-servers")
    cron.register(advance_drains, queue_name=settings.queue_name, interval=interval, job_timeout=300,
                  name=f"{settings.queue_name}:advance-drains")
    cron.register(refill_warm_pools, queue_name=queue_name(settings.queue_name, Lane.BACKGROUND), interval=interval,
                  job_timeout=600,
                  name=f"{settings.queue_name}:refill-warm-pools")
    cron.register(report_reconcile, queue_name=settings.queue_name, cron="53 2 * * *", job_timeout=1800,
                  name=f"{settings.queue_name}:reconcile-report")
    cron.register(warn_stale_backups, queue_name=settings.queue_name, cron="47 * * * *", job_timeout=600,
                  name=f"{settings.queue_name}:warn-stale-backups")
    return cron


def run_cron(settings: Settings, interval: int = 60, retry_seconds: float = 5.0) -> None:
    """The scheduler process: RQ's cron scheduler, started again whenever Redis goes away and comes back
    (RQ's own loop ends on a Redis error); a fresh one enqueues its interval jobs, the sweep first, at once."""
    while True:
        try:
            build_cron(settings, interval).start()
            return  # stopped by a signal
        except redis.RedisError:
            log.warning("scheduler: Redis unavailable; starting again in %.0f s", retry_seconds)
            try:
                time.sleep(retry_seconds)
            except StopRequested:
                return
