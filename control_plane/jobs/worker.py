"""The project's RQ worker: queues, the worker class, and what happens when a work horse dies."""
from __future__ import annotations

import logging

from rq import Worker

import tenant_migrations

from control_plane.bootstrap import build_context, dispose, redis_client
from control_plane.catalog.db import transaction
from control_plane.catalog.models import Operation, Tenant
from control_plane.adapters.migration_job_queue import ITEM_JOB as MIGRATION_ITEM_JOB
from control_plane.jobs.migration_runs import migration_item_horse_killed
from control_plane.services.migration_dispatch import reconcile_runs
from control_plane.services.operations import redispatch_stalled
from control_plane.services.runner import HANDLERS
from control_plane.services.servers import ensure_default_server
from control_plane.settings import Settings

log = logging.getLogger(__name__)


def _mark_horse_killed(settings: Settings):
    def handler(job, pid: int, status: int, rusage) -> None:
        if job.func_name == MIGRATION_ITEM_JOB:
            return migration_item_horse_killed(settings, job.args[0], pid, status)
        operation_id = job.args[0] if job.args else None
        if not operation_id:
            return
        ctx = build_context(settings, pool_size=1)
        try:
            with transaction(ctx.sessions) as session:
                op = session.get(Operation, operation_id, with_for_update=True)
                if op is None or op.status.finished:
                    return
                op.fail(f"{op.step or op.kind.value}: the worker process died (exit status {status})")
                tenant = session.get(Tenant, op.tenant_id, with_for_update=True)
                HANDLERS[op.kind].on_failure(ctx, session, op, tenant)
            log.error("tenant %s operation %s: work horse %d died", op.tenant_id, operation_id, pid)
        finally:
            dispose(ctx)
    return handler


def run_worker(settings: Settings, burst: bool = False, with_scheduler: bool = False) -> bool:
    """Re-dispatch stalled operations, then work until stopped (or, with burst, until the queue is empty)."""
    ctx = build_context(settings, pool_size=1)
    try:
        ensure_default_server(ctx)
        redispatched = redispatch_stalled(ctx)
        if redispatched:
            log.info("re-dispatched %d stalled operations at start-up", len(redispatched))
        log.info("migration runs at start-up: %s", reconcile_runs(ctx))
    finally:
        dispose(ctx)
    return build_worker(settings).work(burst=burst, with_scheduler=with_scheduler, logging_level="INFO")


def _preload() -> None:
    """Import and parse once in the parent, so every forked work horse starts warm (copy-on-write)."""
    import control_plane.jobs  # noqa: F401  the job entry point and everything it imports
    import psycopg  # noqa: F401
    from sqlalchemy.dialects.postgresql import psycopg as _dialect  # noqa: F401

    tenant_migrations.script_directory()


def build_worker(settings: Settings) -> Worker:
    """RQ's default forking `Worker`, chosen deliberately.

    Each job runs in a fresh work horse process that builds its own engine and connections after the
    fork, so none crosses it; a job that leaks memory or crashes in libpq takes only its horse down;
    RQ can kill a horse that overruns its timeout. The parent holds no database connection while it
    works (start-up and `_mark_horse_killed` build and dispose their own).
    """
    _preload()
    return Worker([settings.queue_name], connection=redis_client(settings),
                  work_horse_killed_handler=_mark_horse_killed(settings))
