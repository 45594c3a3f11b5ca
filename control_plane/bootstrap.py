"""Composition root: builds engines, clients and adapters from Settings (in the app factory or a job)."""
from __future__ import annotations

import logging
from functools import partial

import redis
from sqlalchemy import Engine

from control_plane.adapters.backup_store import open_backup_store
from control_plane.adapters.crypto import ControlPlaneKeyring
from control_plane.adapters.events import RedisTenantEvents
from control_plane.adapters.job_queue import RqJobQueue
from control_plane.adapters.locks import PostgresTenantLocks
from control_plane.adapters.logical_replication import PostgresLogicalReplication
from control_plane.adapters.pg_backup import PostgresBackupTools
from control_plane.adapters.migration_job_queue import RqMigrationJobs
from control_plane.adapters.queue_monitor import RqQueueMonitor
from control_plane.adapters.postgres_admin import PostgresAdmin
from control_plane.adapters.tenant_database import TenantDatabase
from control_plane.adapters.runtime_access import RuntimeAccess
from control_plane.adapters.throttle import RedisFailureThrottle
from control_plane.adapters.tenant_template import TenantTemplate
from control_plane.adapters.warm_pool import WarmPool
from control_plane.catalog.db import create_catalog_engine, session_factory
from control_plane.naming import Lane, queue_name, queue_names
from control_plane.services.context import ServiceContext
from control_plane.settings import Settings

log = logging.getLogger(__name__)


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=30,
                                health_check_interval=30)


def build_context(settings: Settings, *, pool_size: int = 5, engine: Engine | None = None) -> ServiceContext:
    engine = engine or create_catalog_engine(settings.catalog_database_url, pool_size=pool_size,
                                             max_overflow=pool_size)
    client = redis_client(settings)
    ctx = ServiceContext(
        settings=settings,
        sessions=session_factory(engine),
        keyring=ControlPlaneKeyring.parse(settings.keyring, settings.runtime_keyring),
        queue=RqJobQueue(client, settings.queue_name, settings.job_timeout),
        events=RedisTenantEvents(client),
        locks=PostgresTenantLocks(engine),
        server_admin=partial(PostgresAdmin, shared_databases=settings.shared_databases),
        tenant_database=TenantDatabase,
        tenant_template=TenantTemplate,
        migration_jobs=RqMigrationJobs(client, settings.queue_name, settings.job_timeout),
        queue_monitor=RqQueueMonitor(client, queue_names(settings.queue_name)),
        logical_replication=PostgresLogicalReplication,
        warm_pool=WarmPool,
        request_warm_refill=partial(enqueue_warm_refill, client, queue_name(settings.queue_name, Lane.BACKGROUND)),
        auth_throttle=RedisFailureThrottle(client, settings.auth_failure_limit, settings.auth_failure_window_seconds),
        runtime_access=RuntimeAccess(settings.catalog_database_url, client),
    )
    attach_backups(ctx)
    attach_drains(ctx)
    return ctx


def enqueue_warm_refill(client: redis.Redis, queue_name: str) -> None:
    """One refill job at a time is enough (a second one finds the pool's lock taken and returns)."""
    from rq import Queue

    try:
        Queue(queue_name, connection=client).enqueue("control_plane.jobs.fleet.refill_warm_pools",
                                                     job_id="warm-pool-refill", job_timeout=600,
                                                     result_ttl=0, failure_ttl=3600)
    except redis.RedisError:
        log.warning("warm pool refill not enqueued (Redis unavailable); the scheduler's tick will do it")


def attach_drains(ctx: ServiceContext) -> ServiceContext:
    """A move that belongs to a server drain lets the drain start its next move when it ends."""
    from control_plane.services import drains

    ctx.after_move = partial(drains.on_move_finished, ctx)
    return ctx


def attach_backups(ctx: ServiceContext) -> ServiceContext:
    """The backup feature's adapters, and the DELETE hooks (which need the context itself)."""
    from control_plane.services import backups

    settings = ctx.settings

    def open_store(url: str):
        return open_backup_store(url, endpoint_url=settings.s3_endpoint_url,
                                 server_side_encryption=settings.s3_server_side_encryption,
                                 sse_kms_key_id=settings.s3_sse_kms_key_id)

    ctx.backup_store = open_store(settings.backup_store_url)
    ctx.copy_store = open_store(settings.backup_copy_store_url) if settings.backup_copy_store_url else None
    ctx.open_backup_store = open_store
    ctx.backup_tools = partial(PostgresBackupTools, bin_dir=settings.pg_bin_dir)
    ctx.final_backup = partial(backups.final_backup, ctx)
    ctx.before_drop = partial(backups.before_drop, ctx)
    ctx.pre_migration_backup = partial(backups.pre_migration_backup, ctx)
    return ctx


def dispose(ctx: ServiceContext) -> None:
    """Close the catalog pool (the engine behind the session factory)."""
    ctx.sessions.kw["bind"].dispose()
