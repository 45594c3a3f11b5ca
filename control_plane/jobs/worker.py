"""The project's RQ worker: queues, the worker class, and what happens when a work horse dies."""
from __future__ import annotations

import gc
import logging
import time
from datetime import timedelta

import redis
from rq import Queue, Worker

import tenant_migrations

from control_plane.bootstrap import build_context, dispose, redis_client
from control_plane.adapters.job_queue import OPERATION_JOB
from control_plane.adapters.migration_job_queue import ITEM_JOB as MIGRATION_ITEM_JOB
from control_plane.jobs import prepare_catalog_engine
from control_plane.jobs.migration_runs import migration_item_horse_killed
from control_plane.services.runner import fail_abandoned
from control_plane.services.sweeper import sweep
from control_plane.services.servers import ensure_default_server
from control_plane.naming import queue_names, recovery_sweep_key
from control_plane.settings import Settings

log = logging.getLogger(__name__)

# The dead horse's catalog session may take a moment to end and release the tenant lock.
KILLED_LOCK_WAIT_SECONDS = 10.0
# How long the one sweeper after an outage holds its lock at most (were it to die while sweeping).
RECOVERY_SWEEP_LOCK_SECONDS = 60


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


def sweep_after_outage(settings: Settings, connection: redis.Redis, name: str) -> bool:
    """Redis is back after an outage: sweep at once, so what was requested meanwhile (queued in the catalog
    only) runs now rather than at the scheduler's next sweep. Workers return together: one sweeps (a Redis
    lock, held while it sweeps), the others skip, as the sweep under way started after Redis was back.
    Returns whether this worker swept."""
    key = recovery_sweep_key(settings.queue_name)
    try:
        if not connection.set(key, name, nx=True, ex=RECOVERY_SWEEP_LOCK_SECONDS):
            return False
    except redis.RedisError:  # gone again: the next return sweeps
        return False
    ctx = build_context(settings, pool_size=1)  # in this parent process, disposed here: nothing crosses a fork
    try:
        # Queued right now means never enqueued: the outage ate the request's enqueue (a duplicate does nothing).
        log.info("sweep after a Redis outage: %s", sweep(ctx, lost_after=timedelta(0)).as_dict())
    except Exception:  # the catalog may still be down too: the scheduler's next sweep repairs instead
        log.exception("sweep after a Redis outage failed")
    finally:
        dispose(ctx)
        try:
            if connection.get(key) == name.encode():  # ours still (not expired and taken by another)
                connection.delete(key)  # the next outage's return sweeps again
        except redis.RedisError:
            pass  # it expires
    return True


def run_worker(settings: Settings, burst: bool = False, with_scheduler: bool = False,
               retry_seconds: float = 5.0) -> bool:
    """Sweep (services.sweeper), then work until stopped (or, with burst, until the queue is empty).

    RQ retries a lost Redis only while it waits for a job; a Redis error while a work horse runs ends
    `work()` with "unhandled exception, quitting". The worker then starts again (a fresh registration;
    the horse carries on and the sweeper settles its operation), so a Redis blip never takes a worker down;
    once the fresh worker is registered, Redis is back and it sweeps (`sweep_after_outage`).
    """
    ctx = build_context(settings, pool_size=1)
    try:
        ensure_default_server(ctx)
        log.info("sweep at start-up: %s", sweep(ctx).as_dict())
    finally:
        dispose(ctx)
    outage = False
    while True:
        try:
            worker = build_worker(settings)
            worker.redis_lost = outage
            return worker.work(burst=burst, with_scheduler=with_scheduler, logging_level="INFO")
        except redis.RedisError:
            log.warning("worker: Redis went away during a job; starting again in %.0f s", retry_seconds)
            outage = True
            time.sleep(retry_seconds)


def _preload() -> None:
    """Import and parse once in the parent, so every forked work horse starts warm (copy-on-write)."""
    import control_plane.jobs  # noqa: F401  the job entry point and everything it imports
    import psycopg  # noqa: F401
    from sqlalchemy.dialects.postgresql import psycopg as _dialect  # noqa: F401
    from sqlalchemy.orm import configure_mappers

    tenant_migrations.script_directory()
    configure_mappers()  # SQLAlchemy does it at the first query otherwise: in every horse, a tenth of a second
    # What the parent holds from now on is never collected again: a horse's garbage collector would
    # otherwise touch (and so copy) the parent's pages after every fork.
    gc.freeze()


class ProjectWorker(Worker):
    """RQ's forking `Worker` that notices Redis coming back after an outage and then sweeps at once
    (`sweep_after_outage`). RQ retries a lost Redis silently while it waits for a job; the queue class
    below notes the error, and the next heartbeat that reaches Redis acts on it."""

    def __init__(self, *args, settings: Settings, **kwargs) -> None:
        worker = self

        class OutageNotingQueue(Queue):
            @classmethod
            def dequeue_any(cls, *a, **kw):
                try:
                    return super().dequeue_any(*a, **kw)
                except (redis.ConnectionError, redis.TimeoutError):
                    worker.redis_lost = True
                    raise

        super().__init__(*args, queue_class=OutageNotingQueue, **kwargs)
        self.settings = settings
        self.redis_lost = False

    def heartbeat(self, timeout: int | None = None, pipeline=None) -> None:
        try:
            super().heartbeat(timeout, pipeline)
        except (redis.ConnectionError, redis.TimeoutError):
            self.redis_lost = True
            raise
        if self.redis_lost and pipeline is None:  # this call reached Redis: it is back
            self.redis_lost = False
            sweep_after_outage(self.settings, self.connection, self.name)


def build_worker(settings: Settings) -> ProjectWorker:
    """RQ's default forking `Worker` (ProjectWorker adds only the sweep after a Redis outage), chosen deliberately.

    Each job runs in a fresh work horse process that opens its own connections after the fork (its
    catalog engine is the parent's, connectionless, given a new pool: `prepare_catalog_engine`), so none
    crosses it; a job that leaks memory or crashes in libpq takes only its horse down;
    RQ can kill a horse that overruns its timeout. The parent holds no database connection while it
    works (start-up, the sweep after an outage and `_mark_horse_killed` build and dispose their own).
    """
    _preload()
    prepare_catalog_engine(settings)
    # Every lane, in priority order: RQ takes the next job from the first queue that has one.
    worker = ProjectWorker(queue_names(settings.queue_name), connection=redis_client(settings), settings=settings,
                           work_horse_killed_handler=_mark_horse_killed(settings))
    # Back on Redis within 15 s of its return (RQ's default backoff grows to 60 s): see the sweeper's guarantee.
    worker.max_connection_wait_time = 15
    return worker
