"""One tenant of a migration run: take its lock, check it may be migrated, back it up, migrate, record, go on."""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload, lazyload

import tenant_migrations
from control_plane.catalog.db import transaction
from control_plane.catalog.migration_run_models import (MigrationRun, MigrationRunItem, MigrationRunStatus,
                                                        RollbackMethod, RunItemStatus)
from control_plane.catalog.models import DatabaseServer, ServerStatus, Tenant, TenantStatus, utcnow
from control_plane.errors import TenantBusyError, TenantMigrationError
from control_plane.services import audit
from control_plane.services.context import ServiceContext, TenantDatabasePort
from control_plane.services.migration_dispatch import (Claims, advance_noting_end, enqueue, lock_item,
                                                       lock_run, open_claim, recover_abandoned, requeue_lost)
from control_plane.services.migration_gates import proceed
from control_plane.services.migration_profile import Phases, add_to_profile
from control_plane.services.rollback_restores import restore_item
from control_plane.services.runner import describe

log = logging.getLogger(__name__)

# The tenant lock is normally free (a busy tenant is not `active` and gets skipped); wait at least this long.
MIN_TENANT_LOCK_WAIT_SECONDS = 5.0
# How long one job goes on from tenant to tenant before handing its next claim to RQ (see execute_item).
LANE_SECONDS = 60.0


@dataclass(frozen=True)
class _Claimed:
    """What starting a claimed item needs to know before its tenant's lock is taken."""
    item_id: str
    run_id: str
    tenant_id: str
    lock_timeout_ms: int
    rollback_method: str | None = None


@dataclass
class _Started:
    tenant: Tenant
    database: TenantDatabasePort
    target: str
    lock_timeout_ms: int
    statement_timeout_ms: int
    backup_first: bool


@dataclass
class _Outcome:
    from_revision: str | None = None
    reached: str | None = None
    reached_known: bool = False
    error: str | None = None
    skip_reason: str | None = None
    backup: dict[str, Any] | None = None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def execute_item(ctx: ServiceContext, item_id: str, token: int, lane_seconds: float = LANE_SECONDS,
                 phases: Phases | None = None) -> None:
    """Run a claimed item, then go on with the next one this item's end claimed, for up to `lane_seconds`.

    Every finishing item claims its successors under the run lock; this job keeps one of them for itself
    (a "lane") and enqueues the others, so a run pays RQ's fork and connection set-up once per lane rather
    than once per tenant. After `lane_seconds` the lane hands its next claim to RQ like the others, so a
    long run never monopolises a worker. Safe to run twice: a stale claim (token, status) does nothing.
    """
    deadline = time.monotonic() + lane_seconds
    phases = phases or Phases()
    known: _Claimed | None = None
    while True:
        run_id, claims, ended, known = _run_claim(ctx, item_id, token, phases, known)
        if run_id is None:
            return
        if ended:
            enqueue(ctx, claims)  # a rollback the run's end started
            rebuild_templates(ctx, run_id)
            return
        if not claims:
            # Nothing left to start, or every slot taken: make sure no slot is held by a dead worker's
            # item, and no claimed item waits for a job that Redis lost. Cheap when all is well.
            recover_abandoned(ctx, run_id=run_id, reason="the worker running it is gone")
            requeue_lost(ctx, run_id)
            proceed(ctx, run_id)  # the wave may be over: its health check, the next wave
            return
        if time.monotonic() >= deadline:
            enqueue(ctx, claims)
            return
        (item_id, token), others = claims[0], claims[1:]
        if known is not None and known.item_id != item_id:
            known = None
        with phases.phase("queue: enqueue other claims"):
            enqueue(ctx, others)


def _read_claim(ctx: ServiceContext, item_id: str, token: int, phases: Phases) -> _Claimed | None:
    with phases.phase("catalog: read the claim"), ctx.sessions() as session:
        row = session.execute(
            select(MigrationRunItem.run_id, MigrationRunItem.tenant_id, MigrationRun.lock_timeout_ms,
                   MigrationRunItem.queued_at, MigrationRunItem.rollback_method)
            .join(MigrationRun, MigrationRun.id == MigrationRunItem.run_id)
            .where(MigrationRunItem.id == item_id, MigrationRunItem.dispatch_token == token,
                   MigrationRunItem.status == RunItemStatus.QUEUED)).one_or_none()
    if row is None:
        return None
    run_id, tenant_id, lock_timeout_ms, queued_at, rollback_method = row
    if queued_at is not None:
        # From the claim to this job's start: Redis, the queue's wait for a free worker, RQ's fork.
        phases.add("queue: claim to job start", max(0.0, (utcnow() - queued_at).total_seconds()))
    return _Claimed(item_id, run_id, tenant_id, lock_timeout_ms, rollback_method)


def _run_claim(ctx: ServiceContext, item_id: str, token: int, phases: Phases,
               known: _Claimed | None) -> tuple[str | None, Claims, bool, _Claimed | None]:
    """One item: (its run, the items its end claimed, whether it ended the run, what is known of the first
    claimed item); run None if the claim is stale. `known`: this item as the end of the previous one saw it
    (its status and token are checked again when it starts)."""
    claimed = known or _read_claim(ctx, item_id, token, phases)
    if claimed is None:
        log.info("migration run item %s (claim %d) is no longer queued under this claim; nothing to do",
                 item_id, token)
        return None, [], False, None
    run_id = claimed.run_id
    if claimed.rollback_method == RollbackMethod.RESTORE:  # the RESTORE kind takes the tenant lock itself
        return (run_id, *restore_item(ctx, run_id, item_id, token, worker_name()), None)
    following: _Claimed | None = None
    try:
        # Held from before the item is marked running until after it is marked finished: "running" thus
        # always means "a live worker holds this lock", which is how abandoned items are recognised.
        lock_started = time.perf_counter()
        with ctx.locks.hold(claimed.tenant_id,
                            wait_seconds=max(claimed.lock_timeout_ms / 1000, MIN_TENANT_LOCK_WAIT_SECONDS)):
            phases.add("tenant lock: take", time.perf_counter() - lock_started)
            claims, ended, following = _execute_locked(ctx, run_id, item_id, token, phases)
            lock_started = time.perf_counter()
        phases.add("tenant lock: release", time.perf_counter() - lock_started)
    except TenantBusyError as exc:
        claims, ended = _not_started(ctx, run_id, item_id, token, describe(exc))
    return run_id, claims, ended, following


def _execute_locked(ctx: ServiceContext, run_id: str, item_id: str, token: int,
                    phases: Phases) -> tuple[Claims, bool, _Claimed | None]:
    with phases.phase("catalog: mark running"):
        started = _start(ctx, run_id, item_id, token)
    if not isinstance(started, _Started):
        return (*started, None)  # skipped, released or stale: (claims, whether the run ended)
    with phases.phase("events: publish"):
        ctx.events.publish(started.tenant.id, "status", status=TenantStatus.MIGRATING.value)
    outcome = _migrate(ctx, item_id, started, phases)
    return _finish(ctx, run_id, item_id, token, outcome, phases)


def _lock_tenant(session: Session, tenant_id: str) -> Tenant | None:
    # Its domains are not needed here: don't load them; its server, in the same query.
    return session.get(Tenant, tenant_id, with_for_update={"of": Tenant}, populate_existing=True,
                       options=[lazyload(Tenant.domain_rows), joinedload(Tenant.server)])


def _start(ctx: ServiceContext, run_id: str, item_id: str, token: int) -> _Started | tuple[Claims, bool]:
    """Mark the item running and the tenant migrating, or skip or release the item.

    The usual case (run going on, item still claimed, tenant active) needs no run lock: the item's row
    lock is what a cancel takes to release a queued item, so the two cannot both win, and a start changes
    no count the dispatcher decides on (queued and running items both hold their slot; the next
    `advance` re-counts). Only the other cases, which change what the dispatcher decides, take the run
    lock, in a transaction of their own so that locks are always taken run, item, tenant.
    """
    with transaction(ctx.sessions) as session:
        row = session.execute(
            select(MigrationRunItem, MigrationRun.status, MigrationRun.error, MigrationRun.target_revision,
                   MigrationRun.lock_timeout_ms, MigrationRun.statement_timeout_ms, MigrationRun.backup_first)
            .join(MigrationRun, MigrationRun.id == MigrationRunItem.run_id)
            .where(MigrationRunItem.id == item_id)
            .with_for_update(of=MigrationRunItem)
            .execution_options(populate_existing=True)).one_or_none()
        if row is None:
            return [], False
        item, status, error, target, lock_timeout_ms, statement_timeout_ms, backup_first = row
        if item.status is not RunItemStatus.QUEUED or item.dispatch_token != token:
            return [], False
        if status is MigrationRunStatus.RUNNING and error is None:
            tenant = _lock_tenant(session, item.tenant_id)
            if tenant is not None and tenant.status is TenantStatus.ACTIVE:
                tenant.begin_migration()
                item.begin(worker_name())
                # A rollback item has its own target: the revision its tenant started from.
                return _Started(tenant=tenant, database=ctx.database_of(tenant),
                                target=item.target_revision or target, lock_timeout_ms=lock_timeout_ms, statement_timeout_ms=statement_timeout_ms,
                                backup_first=backup_first)
        session.rollback()
    return _start_locked(ctx, run_id, item_id, token)


def _start_locked(ctx: ServiceContext, run_id: str, item_id: str, token: int) -> _Started | tuple[Claims, bool]:
    """Under the run lock: mark the item running and the tenant migrating, or skip or release the item."""
    with transaction(ctx.sessions) as session:
        run, item, settled = open_claim(session, run_id, item_id, token)
        if settled is not None:
            return settled
        tenant = _lock_tenant(session, item.tenant_id)
        if tenant is None or tenant.status is not TenantStatus.ACTIVE:
            # Never migrate a tenant behind the operator's back: suspended, failed, busy... are left alone.
            reason = "tenant no longer exists" if tenant is None else f"tenant is {tenant.status.value}"
            item.skip(reason)
            audit.record(session, "system", "migration_run.item_skipped", item.tenant_id, None, run_id=run.id,
                         reason=reason)
            return advance_noting_end(session, run)
        tenant.begin_migration()
        item.begin(worker_name())
        run.queued -= 1  # a queued item becoming running frees no slot: nothing to decide, just count
        run.running += 1
        return _Started(tenant=tenant, database=ctx.database_of(tenant),
                        target=item.target_revision or run.target_revision,
                        lock_timeout_ms=run.lock_timeout_ms, statement_timeout_ms=run.statement_timeout_ms,
                        backup_first=run.backup_first)


def _migrate(ctx: ServiceContext, item_id: str, started: _Started, phases: Phases) -> _Outcome:
    """The I/O, outside any catalog transaction, with the tenant lock held."""
    outcome = _Outcome()
    tenant_id = started.tenant.id
    if started.backup_first:
        try:
            if ctx.pre_migration_backup is None:
                raise RuntimeError("backup_first was asked but this deployment has no backups feature")
            outcome.backup = ctx.pre_migration_backup(started.tenant, item_id) or {}
        except Exception as exc:  # the item boundary: the tenant is not migrated without its backup
            log.exception("tenant %s: pre-migration backup failed (run item %s)", tenant_id, item_id)
            outcome.skip_reason = f"pre-migration backup failed: {describe(exc)}"
            return outcome
    try:
        outcome.from_revision, outcome.reached = _migrate_retrying_locks(ctx, item_id, started, phases)
        outcome.reached_known = True
    except TenantMigrationError as exc:
        log.warning("tenant %s: migration to %s failed: %s", tenant_id, started.target, exc.detail)
        outcome.error, outcome.from_revision = exc.detail, exc.from_revision
        outcome.reached, outcome.reached_known = exc.reached_revision, exc.reached_revision is not None
    except Exception as exc:  # the item boundary: record every failure on the item, once
        log.exception("tenant %s: migration to %s failed (run item %s)", tenant_id, started.target, item_id)
        outcome.error = describe(exc)
    if outcome.error and not outcome.reached_known:
        try:
            outcome.reached, outcome.reached_known = started.database.current_revision(), True
        except Exception:  # unreachable: the catalog keeps the revision it had
            log.warning("tenant %s: could not read its revision after a failed migration", tenant_id, exc_info=True)
    return outcome


def _migrate_retrying_locks(ctx: ServiceContext, item_id: str, started: _Started,
                            phases: Phases) -> tuple[str | None, str | None]:
    """migrate_bounded, tried again with a doubling backoff when it gives up at lock_timeout; (from, reached).

    Retried here rather than re-enqueued: the worker keeps the tenant lock and the run's slot, so nothing
    else starts on the tenant meanwhile and the run's concurrency stays what it says. A revision applied
    before the lock wait stays applied (one transaction per revision): the next try goes on from there.
    """
    retries, backoff = ctx.settings.migration_lock_retries, ctx.settings.migration_lock_backoff_ms / 1000
    first_from: str | None = None
    attempt = 0
    while True:
        attempt += 1
        try:
            before, reached = started.database.migrate_bounded(
                started.target, lock_timeout_ms=started.lock_timeout_ms,
                statement_timeout_ms=started.statement_timeout_ms, phases=phases)
            return (first_from if attempt > 1 else before), reached
        except TenantMigrationError as exc:
            if attempt == 1:
                first_from = exc.from_revision
            if not exc.lock_timeout:
                raise TenantMigrationError(exc.detail, first_from, exc.reached_revision) from exc
            if attempt > retries:
                raise TenantMigrationError(f"{exc.detail} (lock timeout on each of {attempt} attempts)", first_from,
                                           exc.reached_revision, lock_timeout=True) from exc
            delay = backoff * 2 ** (attempt - 1)
            log.warning("tenant %s: migration hit lock_timeout (run item %s, attempt %d of %d); retrying in %.1fs",
                        started.tenant.id, item_id, attempt, retries + 1, delay)
            with transaction(ctx.sessions) as session:
                audit.record(session, "system", "migration_run.item_lock_retry", started.tenant.id, None,
                             item_id=item_id, attempt=attempt, retry_in_seconds=delay, error=exc.detail)
            time.sleep(delay)


def _finish(ctx: ServiceContext, run_id: str, item_id: str, token: int, outcome: _Outcome,
            phases: Phases) -> tuple[Claims, bool, _Claimed | None]:
    finish_started = time.perf_counter()
    with transaction(ctx.sessions) as session:
        # The item and its tenant first, the run last: the run lock is what every worker's item end waits
        # for, so it is held only for the dispatcher's decision and the commit. No deadlock: nothing else
        # locks a running item or its tenant's row without holding the tenant's lock, which we hold.
        item = lock_item(session, item_id)
        if item.status is not RunItemStatus.RUNNING or item.dispatch_token != token:
            return [], False, None  # settled by someone else; cannot happen while we hold the tenant lock
        tenant = _lock_tenant(session, item.tenant_id)
        if outcome.reached_known:
            tenant.schema_revision = outcome.reached
        tenant.activate()
        item.backup = outcome.backup
        if outcome.skip_reason:
            # Not migrated without its backup; not a failure of the migration either (the budget is untouched).
            item.skip(outcome.skip_reason)
            audit.record(session, "system", "migration_run.item_skipped", tenant.id, None, run_id=run_id,
                         reason=outcome.skip_reason)
        elif outcome.error:
            item.fail(outcome.error, outcome.from_revision, outcome.reached if outcome.reached_known else None)
            audit.record(session, "system", "tenant.migration_failed", tenant.id, None, run_id=run_id,
                         from_revision=outcome.from_revision, revision=tenant.schema_revision, error=outcome.error)
        else:
            item.succeed(outcome.from_revision, outcome.reached)
            audit.record(session, "system", "tenant.migrated", tenant.id, None, run_id=run_id,
                         from_revision=outcome.from_revision, to_revision=outcome.reached)
        session.flush()
        locking = time.perf_counter()
        run = lock_run(session, run_id)
        run_lock_wait = time.perf_counter() - locking
        claims, ended = advance_noting_end(session, run)
        following = None
        if claims:
            # The lane goes on with the first claim: what it needs of it is at hand (no query), saving a read.
            first = session.get(MigrationRunItem, claims[0][0])
            following = _Claimed(first.id, run.id, first.tenant_id, run.lock_timeout_ms, first.rollback_method)
        # This transaction's own time is counted with the next item's (it is not over yet).
        run.result = add_to_profile(run.result, phases.drain())
    phases.add("catalog: record outcome", time.perf_counter() - finish_started - run_lock_wait)
    phases.add("catalog: record outcome, run lock wait", run_lock_wait)
    with phases.phase("events: publish"):
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
    log.info("tenant %s: run %s item %s %s (%s -> %s)", tenant.id, run_id, item_id, item.status.value,
             outcome.from_revision, outcome.reached)
    return claims, ended, following


def _not_started(ctx: ServiceContext, run_id: str, item_id: str, token: int, error: str) -> tuple[Claims, bool]:
    """The tenant lock could not be taken: another job works on the tenant."""
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        item = lock_item(session, item_id)
        if item.status is not RunItemStatus.QUEUED or item.dispatch_token != token:
            return [], False  # a duplicate job of an item that ran meanwhile
        if run.status is not MigrationRunStatus.RUNNING or run.stopping:
            item.release()
        else:
            item.fail(f"could not start: {error}")
        return advance_noting_end(session, run)


def rebuild_templates(ctx: ServiceContext, run_id: str) -> None:
    """A run that brought tenants to head rebuilds the provisioning template of every active server.

    Provisioning would build it on first use anyway; doing it now keeps that cost off the next tenant
    and drops the template of the previous head.
    """
    if not ctx.settings.provision_from_template:
        return
    head = tenant_migrations.head_revision()
    with ctx.sessions() as session:
        run = session.get(MigrationRun, run_id)
        if run.dry_run or run.target_revision != head:
            return
        servers = session.scalars(select(DatabaseServer).where(DatabaseServer.status == ServerStatus.ACTIVE)
                                  .order_by(DatabaseServer.name)).all()
    results: dict[str, Any] = {}
    for server in servers:
        try:
            results[server.name] = {"template": ctx.template_for(server).ensure(head)}
        except Exception as exc:  # best effort: provisioning rebuilds it on first use
            log.exception("migration run %s: could not rebuild the template on server %s", run_id, server.name)
            results[server.name] = {"error": describe(exc)}
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        run.result = {**(run.result or {}), "templates": results}
