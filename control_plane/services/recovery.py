"""Recovering a database server's tenants after a disaster (typically right after a catalog restore).

For every tenant the catalog places on the server whose database is missing there: first adopt the
backups the store holds that the (older) restored catalog does not know, then restore the newest
restorable backup (RESTORE operations in mode `recover`, run here, a bounded number at a time), and
report per tenant what was recovered, from how old a backup, and how long it took. Tenants `failed`
because their database went missing (reconcile marks them so) are recovered too and become `active`.
"""
from __future__ import annotations

import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import naming
from control_plane.backup_errors import BackupStoreError
from control_plane.catalog.db import get_or_raise
from control_plane.catalog.backup_models import (Backup, BackupCopy, BackupStatus, BackupTrigger, CopyStatus,
                                                 TenantBackupKey)
from control_plane.catalog.models import DatabaseServer, Operation, OperationStatus, Tenant, utcnow
from control_plane.errors import ControlPlaneError, ServerNotFoundError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.backups import MAX_MANIFEST_BYTES, newest_restorable, tools_for
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.restore import RECOVER, RECOVER_STARTS_FROM, request_restore

log = logging.getLogger(__name__)


@dataclass
class Recovery:
    tenant_id: str
    status: str                      # recovered, failed, no_backup, present (its database was there)
    previous_status: str | None = None  # the tenant's status before (a recovered `failed` one is `active` now)
    backup_id: str | None = None
    backup_completed_at: str | None = None
    backup_age_seconds: float | None = None
    source: str | None = None        # primary or copy
    seconds: float | None = None
    operation_id: str | None = None
    error: str | None = None


def adopt_stored_backups(ctx: ServiceContext, session: Session, tenant_id: str) -> list[str]:
    """Record the tenant's completed backups that are in the store but not in the catalog (taken after the
    catalog backup that was restored). Only backups sealed with the tenant key the catalog holds are
    adopted; each is verified again when it is restored."""
    key = session.get(TenantBackupKey, tenant_id)
    if key is None or key.destroyed:
        return []
    known = set(session.scalars(select(Backup.id).where(Backup.tenant_id == tenant_id)))
    adopted: dict[str, Backup] = {}
    for store in filter(None, (ctx.backup_store, ctx.copy_store)):
        try:
            keys = store.list(naming.tenant_backups_prefix(tenant_id))
        except BackupStoreError as exc:
            log.warning("tenant %s: cannot list %s: %s", tenant_id, store.url, exc.detail)
            continue
        for object_key in keys:
            backup_id, _, name = object_key[len(tenant_id) + 1:].partition("/")
            if name != naming.BACKUP_MANIFEST_OBJECT or (backup_id in known and backup_id not in adopted):
                continue
            if backup_id in adopted:  # in the primary store and in the copy store: record both locations
                adopted[backup_id].copies.append(BackupCopy(store_url=store.url, status=CopyStatus.COMPLETED,
                                                            method="adopted", completed_at=utcnow()))
                continue
            try:
                manifest = json.loads(store.get_bytes(object_key, MAX_MANIFEST_BYTES))
                encryption, stored = manifest["encryption"], manifest["object"]
                if manifest["tenant_id"] != tenant_id or manifest["backup_id"] != backup_id \
                        or encryption["tenant_key_id"] != key.key_id:
                    continue
                backup = Backup(
                    id=backup_id, tenant_id=tenant_id, operation_id=manifest.get("operation_id"),
                    status=BackupStatus.COMPLETED, trigger=BackupTrigger(manifest["trigger"]), store_url=store.url,
                    object_prefix=naming.backup_prefix(tenant_id, backup_id), manifest=manifest,
                    schema_revision=manifest["schema_revision"],
                    server_version=manifest["postgresql"]["server_version"],
                    pg_dump_version=manifest["postgresql"]["pg_dump_version"], format_version=manifest["format_version"],
                    archive_bytes=manifest["archive"]["bytes"], stored_bytes=stored["bytes"], sha256=stored["sha256"],
                    tenant_key_id=key.key_id, keyring_key_id=encryption["keyring_key_id"],
                    created_at=datetime.fromisoformat(manifest["started_at"]),
                    completed_at=datetime.fromisoformat(manifest["finished_at"]))
                session.add(backup)
            except (BackupStoreError, ValueError, KeyError, TypeError) as exc:
                log.warning("tenant %s: not adopting %s from %s: %s", tenant_id, object_key, store.url, exc)
                continue
            known.add(backup_id)
            adopted[backup_id] = backup
    if adopted:
        audit.record(session, "system", "backups.adopted", tenant_id, None, backup_ids=list(adopted))
        tenant = session.get(Tenant, tenant_id)
        newest = max(b.completed_at for b in adopted.values())
        if tenant is not None and (tenant.last_backup_at is None or tenant.last_backup_at < newest):
            tenant.last_backup_at = newest
    session.commit()
    return list(adopted)



def recover_server(ctx: ServiceContext, principal: Principal, server_name: str, *, parallel: int = 4,
                   execute: Callable[[ServiceContext, str], None] | None = None) -> list[Recovery]:
    """Restore the newest backup of every tenant on `server_name` whose database is missing there.

    Runs the RESTORE operations itself (`execute`, the runner's by default), `parallel` at a time; safe
    to run again: tenants whose database is back are reported `present`.
    """
    from control_plane.services.runner import execute_operation

    principal.require_super_admin()
    execute = execute or execute_operation
    with ctx.sessions() as session:
        server = get_or_raise(session, DatabaseServer, server_name, ServerNotFoundError)
        tools = tools_for(ctx, server)
        tenants = session.scalars(select(Tenant).where(Tenant.server_name == server_name,
                                                       Tenant.status.in_(RECOVER_STARTS_FROM))
                                  .order_by(Tenant.id)).all()
        recoveries: list[Recovery] = []
        planned: list[tuple[Recovery, Backup]] = []
        for tenant in tenants:
            previous = tenant.status.value
            if tools.database_exists(tenant.database_name):
                recoveries.append(Recovery(tenant.id, "present", previous))
                continue
            adopt_stored_backups(ctx, session, tenant.id)
            backup = newest_restorable(session, tenant.id)
            if backup is None:
                recoveries.append(Recovery(tenant.id, "no_backup", previous, error="no restorable backup"))
                continue
            item = Recovery(tenant.id, "pending", previous, backup_id=backup.id,
                            backup_completed_at=backup.completed_at.isoformat(),
                            backup_age_seconds=round((utcnow() - backup.completed_at).total_seconds(), 1))
            recoveries.append(item)
            planned.append((item, backup))

    def run(item: Recovery) -> None:
        started = time.monotonic()
        try:
            op = request_restore(ctx, principal, item.tenant_id, backup_id=item.backup_id, mode=RECOVER,
                                 enqueue=False)
            item.operation_id = op.id
            execute(ctx, op.id)
        except Exception as exc:  # reported per tenant: one tenant's failure never stops the others
            item.error = exc.detail if isinstance(exc, ControlPlaneError) else f"{type(exc).__name__}: {exc}"
        item.seconds = round(time.monotonic() - started, 2)
        if item.operation_id:
            with ctx.sessions() as session:
                op = session.get(Operation, item.operation_id)
                item.status = "recovered" if op.status is OperationStatus.SUCCEEDED else "failed"
                item.error = op.error or item.error
                item.source = (op.result or {}).get("source")
        else:
            item.status = "failed"
        log.info("tenant %s: %s from backup %s (%s old) in %.1f s", item.tenant_id, item.status, item.backup_id,
                 item.backup_age_seconds, item.seconds)

    with ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="recover") as pool:
        list(pool.map(run, [item for item, _ in planned]))
    return recoveries


def as_dicts(recoveries: list[Recovery]) -> list[dict[str, Any]]:
    return [asdict(r) for r in recoveries]
