"""The project's RQ worker: queues, the worker class, and what happens when a work horse dies."""
from __future__ import annotations

import logging
import time

import redis
from rq import Worker

import tenant_migrations

from control_plane.bootstrap import build_context, dispose, redis_client
from control_plane.adapters.job_queue import OPERATION_JOB
from control_plane.adapters.migration_job_queue import ITEM_JOB as MIGRATION_ITEM_JOB
from control_plane.jobs.migration_runs import migration_item_horse_killed
from control_plane.services.runner import fail_abandoned
from control_plane.services.sweeper import sweep
from control_plane.services.servers import ensure_default_server
from control_plane.naming import queue_names
from control_plane.settings import Settings

log = logging.getLogger(__name__)

# The dead horse's catalog session may take a moment to end and release the tenant lock.
KILLED_LOCK_WAIT_SECONDS = 10.0


def _mark_horse_killed(settings: Settings):
    def handler(job, pid: int, status: int, rusage) -> None:
        if job.func_name == MIGRATION_ITEM_JOB:
            return migration_item_horse_killed(settings, job.args[0], pid, status)
        if job.func_name != OPERATION_JOB or not job.args:
            return
        operation_id = job.args[0]
        ctx = build_context(settings, pool_size=1)
        try:
            fail_abandoned(ctx, operation_id, f"the worker process died (work horse {pid}, exit status {status})",
                           lock_wait=KILLED_LOCK_WAIT_SECONDS)
        finally:
            dispose(ctx)
    return handler


def run_worker(settings: Settings, burst: bool = False, with_scheduler: bool = False,
               retry_seconds: float = 5.0) -> bool:
    """Sweep (services.sweeper), then work until stopped (or, with burst, until the queue is empty).

    RQ retries a lost Redis only while it waits for a job; a Redis error while a work horse runs ends
    `work()` with "unhandled exception, quitting". The worker then starts again (a fresh registration;
    the horse carries on and the sweeper settles its operation), so a Redis blip never takes a worker down.
    """
    ctx = build_context(settings, pool_size=1)
    try:
        ensure_default_server(ctx)
        log.info("sweep at start-up: %s", sweep(ctx).as_dict())
    finally:
        dispose(ctx)
    while True:
        try:
            return build_worker(settings).work(burst=burst, with_scheduler=with_scheduler, logging_level="INFO")
        except redis.RedisError:
            log.warning("worker: Redis went away during a job; starting again in %.0f s", retry_seconds)
            time.sleep(retry_seconds)


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
    # Every lane, in priority order: RQ takes the next job from the first queue that has one.
    worker = Worker(queue_names(settings.queue_name), connection=redis_client(settings),
                  work_horse_killed_handler=_mark_horse_killed(settings))
    # Back on Redis within 15 s of its return (RQ's default backoff grows to 60 s): see the sweeper's guarantee.
    worker.max_connection_wait_time = 15
    return worker
