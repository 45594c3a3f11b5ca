"""Rollback of a migration run: a second run (kind `rollback`) with one item per tenant the first one moved,
each bringing its tenant back to the revision it started from.

How, per tenant: an Alembic downgrade when no revision on its way back declares `downgradable = False`
(see tenant_migrations.irreversible_revisions); otherwise the restore of its pre-migration backup
(services.rollback_restores, through the RESTORE kind). A tenant that needs a restore but has no backup
fails at once with the reason. The rollback run is dispatched like any run (concurrency, resume, cancel)
and never stops for a failure: every tenant gets its own outcome. Pure catalog logic.
"""
from __future__ import annotations

import logging
from collections import Counter

from sqlalchemy import select
from sqlalchemy.orm import Session

import tenant_migrations
from control_plane.catalog.migration_run_models import (MigrationRun, MigrationRunItem, MigrationRunStatus,
                                                        RollbackMethod, RunItemStatus, RunKind)
from control_plane.services import audit

log = logging.getLogger(__name__)

STOPPED_BY_ROLLING_BACK = ("canary", "budget", "gate")


def wanted(run: MigrationRun) -> bool:
    """The run asked for an automatic rollback and stopped for its failure budget or a failed gate."""
    return (run.rollback_on_failure and run.kind == RunKind.MIGRATE and run.status is MigrationRunStatus.FAILED
            and run.stopped_by in STOPPED_BY_ROLLING_BACK and not run.rolled_back_by)


def _moved(item: MigrationRunItem) -> bool:
    if item.status is RunItemStatus.SUCCEEDED:
        return item.to_revision != item.from_revision
    # A failed tenant moved if it reached a later revision before failing, or if where it is is unknown.
    return item.status is RunItemStatus.FAILED and item.started_at is not None and \
        item.to_revision != item.from_revision


def _method(item: MigrationRunItem, run_target: str) -> tuple[RollbackMethod, str | None]:
    """(how, why not a downgrade). Where a failed tenant is is unknown: assume the whole way to the target."""
    try:
        reached = item.to_revision if item.to_revision is not None else run_target
        blocking = tenant_migrations.irreversible_revisions(reached, item.from_revision)
    except ValueError as exc:
        return RollbackMethod.RESTORE, str(exc)
    if not blocking:
        return RollbackMethod.DOWNGRADE, None
    return RollbackMethod.RESTORE, f"revision(s) {', '.join(blocking)} declare downgradable = False"


def plan(session: Session, run: MigrationRun, actor: str) -> MigrationRun:
    """Record the rollback run of `run` (locked by the caller) and its items, started; the caller advances it."""
    items = session.scalars(select(MigrationRunItem).where(MigrationRunItem.run_id == run.id)
                            .order_by(MigrationRunItem.position)).all()
    moved = [item for item in items if _moved(item)]
    targets = Counter(item.from_revision for item in moved)
    rollback = MigrationRun(
        kind=RunKind.ROLLBACK, rollback_of=run.id, target="rollback",
        target_revision=(targets.most_common(1)[0][0] if targets else None) or tenant_migrations.BASE,
        selection={"rollback_of": run.id}, concurrency=run.concurrency, canary=0, max_failures=len(moved),
        backup_first=False, dry_run=False, lock_timeout_ms=run.lock_timeout_ms,
        statement_timeout_ms=run.statement_timeout_ms, status=MigrationRunStatus.QUEUED, actor=actor)
    session.add(rollback)
    session.flush()
    for position, item in enumerate(moved):
        method, why = _method(item, run.target_revision)
        backup_id = (item.backup or {}).get("backup_id")
        entry = MigrationRunItem(run_id=rollback.id, tenant_id=item.tenant_id, position=position,
                                 status=RunItemStatus.PENDING, canary=False, attempts=0, dispatch_token=0,
                                 wave=0, target_revision=item.from_revision, rollback_method=method.value,
                                 backup={"backup_id": backup_id} if backup_id else None)
        if method is RollbackMethod.RESTORE and not backup_id:
            entry.refuse(f"cannot roll back: {why} and the run took no pre-migration backup of this tenant "
                         "(run with backup_first)")
        session.add(entry)
    session.flush()
    run.result = {**(run.result or {}), "rollback_run_id": rollback.id}
    rollback.start()
    audit.record(session, actor, "migration_run.rollback_requested", run_id=run.id, rollback_run_id=rollback.id,
                 tenants=len(moved), restores=sum(_method(i, run.target_revision)[0] is RollbackMethod.RESTORE for i in moved))
    log.info("migration run %s: rollback run %s for %d tenant(s)", run.id, rollback.id, len(moved))
    return rollback
