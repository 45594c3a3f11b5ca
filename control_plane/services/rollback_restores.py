"""A rollback item whose tenant cannot be downgraded: its pre-migration backup restored in place, by the
RESTORE kind (the real restore path: verified download, scratch database, checks, safety backup, swap).

The item is marked running, then a RESTORE operation is requested and run here, in this job (it takes
the tenant's lock and work slot itself, so this job does not hold them), then the item records the
operation's outcome. A restore that fails leaves the live database as it was (the swap is one
transaction): the item fails with the reason and the tenant stays, intact, at the revision it had.
"""
from __future__ import annotations

import logging
from typing import Any

from control_plane.catalog.db import transaction
from control_plane.catalog.migration_run_models import RunItemStatus
from control_plane.catalog.models import Operation, OperationStatus, Tenant
from control_plane.services import audit
from control_plane.services.auth import SYSTEM
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.restore import IN_PLACE, request_restore
from control_plane.services.migration_dispatch import Claims, advance_noting_end, lock_item, lock_run, open_claim
from control_plane.services.runner import describe, execute_operation

log = logging.getLogger(__name__)


def restore_item(ctx: ServiceContext, run_id: str, item_id: str, token: int, worker: str) -> tuple[Claims, bool]:
    """Run a claimed restore item; (the items its end claimed, whether it ended the run)."""
    with transaction(ctx.sessions) as session:
        run, item, settled = open_claim(session, run_id, item_id, token)
        if settled is not None:
            return settled
        item.begin(worker)
        run.queued -= 1
        run.running += 1
        tenant_id, target, backup_id = item.tenant_id, item.target_revision, (item.backup or {}).get("backup_id")
        tenant = session.get(Tenant, tenant_id)
        before = tenant.schema_revision if tenant is not None else None
    error, result, operation_id = None, None, None
    try:
        if not backup_id:
            raise ValueError("no pre-migration backup of this tenant to restore")
        op = request_restore(ctx, SYSTEM, tenant_id, backup_id=backup_id, mode=IN_PLACE, schema_target=target,
                             idempotency_key=f"migration-rollback:{item_id}:{token}", enqueue=False)
        operation_id = op.id
        _note_operation(ctx, item_id, token, op.id)
        execute_operation(ctx, op.id)
        with ctx.sessions() as session:
            done = session.get(Operation, op.id)
            if done.status is OperationStatus.SUCCEEDED:
                result = done.result or {}
            else:
                error = done.error or f"the restore operation is {done.status.value}"
    except Exception as exc:  # the item boundary: a busy tenant (423), a refused restore... all recorded
        log.warning("tenant %s: rollback by restore failed (run %s item %s): %s", tenant_id, run_id, item_id,
                    describe(exc))
        error = describe(exc)
    return _finish(ctx, run_id, item_id, token, before, error, result, operation_id)


def _note_operation(ctx: ServiceContext, item_id: str, token: int, operation_id: str) -> None:
    with transaction(ctx.sessions) as session:
        item = lock_item(session, item_id)
        if item.status is RunItemStatus.RUNNING and item.dispatch_token == token:
            item.operation_id = operation_id


def _finish(ctx: ServiceContext, run_id: str, item_id: str, token: int, before: str | None, error: str | None,
            result: dict[str, Any] | None, operation_id: str | None) -> tuple[Claims, bool]:
    with transaction(ctx.sessions) as session:
        run = lock_run(session, run_id)
        item = lock_item(session, item_id)
        if item.status is not RunItemStatus.RUNNING or item.dispatch_token != token:
            return [], False  # settled by a recovery meanwhile
        tenant = session.get(Tenant, item.tenant_id)
        now = tenant.schema_revision if tenant is not None else None
        item.operation_id = operation_id or item.operation_id
        if error:
            item.fail(f"rollback by restore failed: {error}", before, now)
            audit.record(session, "system", "tenant.rollback_failed", item.tenant_id, operation_id, run_id=run_id,
                         method="restore", error=error)
        else:
            item.succeed(before, result.get("schema_revision", now))
            audit.record(session, "system", "tenant.rolled_back", item.tenant_id, operation_id, run_id=run_id,
                         method="restore", backup_id=result.get("backup_id"), to_revision=item.to_revision)
        log.info("tenant %s: rollback run %s item %s %s by restore", item.tenant_id, run_id, item_id,
                 item.status.value)
        return advance_noting_end(session, run)
