"""Restore drills: prove a tenant's newest backup restores, and measure the RPO and RTO achieved.

A drill downloads and verifies the newest restorable backup (primary, else a copy), restores it as the
admin role into a scratch database on a server with room (never the live database), requires a clean
pg_restore, the backup's schema revision and every table's exact row count from its manifest, then
drops the scratch database. It records the backup used, its age (the recovery point achieved), the
time from download to a checked database (the recovery time achieved), and the reason of a failure.
"""
from __future__ import annotations

import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from control_plane import naming
from control_plane.backup_errors import BackupIntegrityError
from control_plane.catalog.backup_models import DrillResult, RestoreDrill
from control_plane.catalog.db import page
from control_plane.catalog.models import Operation, Tenant, utcnow
from control_plane.errors import TenantNotFoundError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.backup_copies import fetch_verified
from control_plane.services.backup_objects import check_read, open_backup, tools_for, tools_for_server
from control_plane.services.backups import newest_restorable
from control_plane.services.byte_progress import ByteProgress, CountingWriter
from control_plane.services.kinds.base import Report
from control_plane.services.context import ServiceContext
from control_plane.services.servers import choose_server

log = logging.getLogger(__name__)

class DrillFailedError(BackupIntegrityError):
    title = "Restore drill failed"



def _major(version: str | None) -> int:
    try:
        return int((version or "0").split(".")[0])
    except ValueError:
        return 0


def check_restored(manifest: dict[str, Any], counts: dict[str, int], revision: str | None) -> None:
    """The restored scratch database must hold exactly what the manifest says the dump read."""
    expected = manifest.get("tables")
    if not isinstance(expected, dict):
        raise DrillFailedError("the backup's manifest records no row counts (taken before drills existed): "
                               "nothing to check the restore against")
    if revision != manifest.get("schema_revision"):
        raise DrillFailedError(f"schema revision: the restore is at {revision!r}, the backup recorded "
                               f"{manifest.get('schema_revision')!r}")
    wrong = [f"{table} has {counts.get(table, 'no table')} rows, the manifest says {rows}"
             for table, rows in sorted(expected.items()) if counts.get(table) != rows]
    wrong += [f"{table} is not in the manifest" for table in sorted(set(counts) - set(expected))]
    if wrong:
        raise DrillFailedError("row counts differ from the manifest: " + "; ".join(wrong))


def perform_drill(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
    """One drill of the tenant's newest backup (the DRILL operation's run), recorded whatever its outcome.

    A drill that fails raises: the operation fails with the reason, and `drill_failed` records it.
    """
    drill = session.scalars(select(RestoreDrill).where(RestoreDrill.operation_id == op.id)).first()
    if drill is None:
        drill = RestoreDrill(tenant_id=tenant.id, operation_id=op.id)
        session.add(drill)
    drill.result, drill.reason, drill.started_at, drill.finished_at = DrillResult.RUNNING, None, utcnow(), None
    session.commit()
    scratch = naming.drill_database_name(tenant.id, op.id)
    tools = None
    try:
        backup = newest_restorable(session, tenant.id)
        if backup is None:
            raise DrillFailedError("the tenant has no restorable backup")
        drill.backup_id, drill.backup_completed_at = backup.id, backup.completed_at
        drill.rpo_seconds = round((utcnow() - backup.completed_at).total_seconds(), 3)
        server = choose_server(session)
        drill.server_name = server.name
        session.commit()
        tools = tools_for(ctx, server)
        started = time.monotonic()
        # The scratch database is made while the backup downloads (into a file of ciphertext only): both are
        # on the RTO's path, and neither needs the other.
        with tempfile.TemporaryFile(prefix="tcp-drill-") as encrypted, ThreadPoolExecutor(1) as aside:
            making = aside.submit(tools.create_scratch_database, scratch)
            report("download_verify", 10)
            manifest, where = fetch_verified(ctx, session, backup, encrypted)
            downloaded = time.monotonic()
            report("restore", 40)
            making.result()
            encrypted.seek(0)
            opened = open_backup(ctx, session, backup, encrypted)
            sizes: list[int] = []
            # Archive bytes fed to pg_restore of the backup's archive size, on the operation's result.
            fed = ByteProgress(ctx, op.id, backup.archive_bytes or 0)
            tools.restore_as_admin(scratch,
                                   lambda stdin: sizes.append(opened.archive(CountingWriter(stdin, fed.add))),
                                   archive_major=_major((manifest.get("postgresql") or {}).get("pg_dump_version")))
            check_read(opened, backup, sizes[0] if sizes else -1)
            fed_bytes = fed.finish()
        restored = time.monotonic()
        report("check", 80)
        counts, revision = tools.inspect_database(scratch)
        # The catalog's copy of the manifest is the reference: the stored one was only checked for
        # identity and checksum, the catalog's is what was recorded when the backup completed.
        check_restored(backup.manifest or manifest, counts, revision)
        checked = time.monotonic()
        drill.rto_seconds = round(checked - started, 3)
        drill.source = where["source"]
        drill.details = {"tables": len(counts), "rows": sum(counts.values()), "schema_revision": revision,
                         "archive_bytes": backup.archive_bytes, "stored_bytes": backup.stored_bytes,
                         "download_verify_seconds": round(downloaded - started, 3),
                         "restore_seconds": round(restored - downloaded, 3),
                         "check_seconds": round(checked - restored, 3), **where}
        drill.result, drill.finished_at = DrillResult.PASSED, utcnow()
        audit.record(session, "system", "drill.passed", tenant.id, op.id, backup_id=backup.id,
                     rpo_seconds=drill.rpo_seconds, rto_seconds=drill.rto_seconds, source=drill.source)
        session.commit()
    finally:
        if tools is not None:
            tools.drop_database(scratch)
    log.info("tenant %s operation %s: drill of backup %s passed (RPO %.0f s, RTO %.1f s, from %s)", tenant.id,
             op.id, drill.backup_id, drill.rpo_seconds, drill.rto_seconds, drill.source)
    return {"drill_id": drill.id, "result": drill.result.value, "backup_id": drill.backup_id,
            "rpo_seconds": drill.rpo_seconds, "rto_seconds": drill.rto_seconds, "server": drill.server_name,
            **drill.details, **fed_bytes}


def drill_failed(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
    """Record the failed drill with the operation's reason (the DRILL operation's undo: no commit here).

    The scratch database was dropped by the run; dropped again here when its worker died mid-run."""
    drill = session.scalars(select(RestoreDrill).where(RestoreDrill.operation_id == op.id)).first()
    if drill is None:
        drill = RestoreDrill(tenant_id=tenant.id, operation_id=op.id)
        session.add(drill)
    if drill.server_name is not None:
        try:
            tools_for_server(ctx, session, drill.server_name).drop_database(naming.drill_database_name(tenant.id, op.id))
        except Exception:  # the server may be what failed; the next drill of this operation drops it first
            log.warning("tenant %s operation %s: could not drop the drill's scratch database", tenant.id, op.id,
                        exc_info=True)
    drill.result, drill.reason, drill.finished_at = DrillResult.FAILED, op.error, utcnow()
    audit.record(session, "system", "drill.failed", tenant.id, op.id, backup_id=drill.backup_id, error=op.error)


def list_drills(ctx: ServiceContext, principal: Principal, *, tenant_id: str | None = None,
                result: DrillResult | None = None, offset: int = 0, limit: int = 50) -> tuple[list[RestoreDrill], int]:
    """Drills, newest first. A tenant admin sees its own tenant's only."""
    if tenant_id is None:
        principal.require_super_admin()
    else:
        principal.require_tenant(tenant_id)
    query = select(RestoreDrill)
    if tenant_id is not None:
        query = query.where(RestoreDrill.tenant_id == tenant_id)
    if result is not None:
        query = query.where(RestoreDrill.result == result)
    with ctx.sessions() as session:
        if tenant_id is not None and session.get(Tenant, tenant_id) is None:
            raise TenantNotFoundError(tenant_id)
        return page(session, query, RestoreDrill.started_at.desc(), RestoreDrill.id, offset=offset, limit=limit)


def latest_drills(ctx: ServiceContext) -> dict[str, tuple[RestoreDrill | None, datetime | None, datetime]]:
    """Per tenant with data: (its newest finished drill, when its newest drill passed, when it was created)."""
    from control_plane.services.rpo import BACKED_UP_STATUSES

    with ctx.sessions() as session:
        finished = RestoreDrill.result != DrillResult.RUNNING
        newest = (select(RestoreDrill.tenant_id, func.max(RestoreDrill.started_at).label("at"))
                  .where(finished).group_by(RestoreDrill.tenant_id).subquery())
        last = {d.tenant_id: d for d in session.scalars(select(RestoreDrill).join(
            newest, (RestoreDrill.tenant_id == newest.c.tenant_id) & (RestoreDrill.started_at == newest.c.at)))}
        passed = dict(session.execute(select(RestoreDrill.tenant_id, func.max(RestoreDrill.finished_at))
                                      .where(RestoreDrill.result == DrillResult.PASSED)
                                      .group_by(RestoreDrill.tenant_id)).all())
        tenants = session.execute(select(Tenant.id, Tenant.created_at)
                                  .where(Tenant.status.in_(BACKED_UP_STATUSES))).all()
    return {tenant_id: (last.get(tenant_id), passed.get(tenant_id), created_at) for tenant_id, created_at in tenants}

