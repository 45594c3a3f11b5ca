"""RESTORE: a backup restored in place (swap the tenant's database) or as a new tenant (a clone).

Everything that can refuse happens before the live database is touched: the manifest and the data
object are checked (SHA-256, every chunk's authentication, the final-chunk marker) before anything is
decrypted for use; the archive is then restored into a fresh scratch database and checked (its size,
a clean pg_restore exit, a readable schema revision, brought to head). Only then, in place, is the live database swapped out
by rename in one transaction, under the tenant's lock; it is kept under a dated name for a grace
period. A failed or refused restore leaves the live database exactly as it was.
"""
from __future__ import annotations

import logging
import tempfile
from datetime import timedelta
from typing import Any

import tenant_migrations
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from control_plane import naming
from control_plane.backup_errors import BackupIntegrityError, BackupNotFoundError
from control_plane.catalog.backup_models import Backup, BackupTrigger, RetiredDatabase
from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantStatus, utcnow
from control_plane.errors import ControlPlaneError, IllegalTransitionError, TenantExistsError, ValidationError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.backup_copies import fetch_verified
from control_plane.services.byte_progress import ByteProgress, CountingWriter
from control_plane.services.backups import check_read, open_backup, perform_backup, require_restorable, tools_for
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.kinds.provision import new_tenant
from control_plane.services.operation_requests import request_work
from control_plane.services.pruning import drop_excess_retired
from control_plane.services.servers import choose_server

log = logging.getLogger(__name__)

IN_PLACE = "in_place"
NEW_TENANT = "new_tenant"
# After a disaster: the tenant's database is gone from its server; restore it there under its own name.
RECOVER = "recover"
# A tenant whose database went missing is often `failed` by then (reconcile marks it so): recover it too.
RECOVER_STARTS_FROM = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.FAILED})


def request_restore(ctx: ServiceContext, principal: Principal, tenant_id: str, *, backup_id: str,
                    mode: str = IN_PLACE, new_tenant_id: str | None = None, new_tenant_name: str | None = None,
                    safety_backup: bool = True, idempotency_key: str | None = None,
                    enqueue: bool = True, schema_target: str | None = None) -> Operation:
    """Record a RESTORE operation and enqueue it (unless the caller runs it itself: `enqueue=False`).

    In place: the tenant's admins or a super admin; the tenant stays usable until the swap.
    New tenant: super admins only; the new tenant is recorded now (provisioning) with its own role.
    Recover: super admins only; the tenant's database is missing from its server (after a disaster).
    `schema_target`: the schema revision the restored database is brought to (default head); the
    rollback of a migration run restores at the revision the tenant started from.
    """
    principal.require_tenant(tenant_id)
    if mode not in (IN_PLACE, NEW_TENANT, RECOVER):
        raise ValidationError("mode", "must be in_place or new_tenant")
    if mode == RECOVER:
        principal.require_super_admin()
    if mode == NEW_TENANT:
        principal.require_super_admin()
        if not new_tenant_id:
            raise ValidationError("new_tenant_id", "is required when mode is new_tenant")
        problem = naming.tenant_id_problem(new_tenant_id)
        if problem:
            raise ValidationError("new_tenant_id", problem)
    params: dict[str, Any] = {"backup_id": backup_id, "mode": mode, "source_tenant_id": tenant_id}
    if schema_target is not None:
        params["schema_target"] = schema_target
    if mode == IN_PLACE:
        params["safety_backup"] = safety_backup
    elif mode == NEW_TENANT:
        params["new_tenant_id"] = new_tenant_id
        if new_tenant_name:
            params["new_tenant_name"] = new_tenant_name
    target_id = new_tenant_id if mode == NEW_TENANT else tenant_id
    return request_work(ctx, principal, RESTORE, target_id, params, idempotency_key,
                        audit_action="tenant.restore_requested", enqueue=enqueue)

def _major(version: str | None) -> int:
    try:
        return int((version or "0").split(".")[0])
    except ValueError:
        return 0


class Restore(Kind):
    kind = OperationKind.RESTORE
    action = "restore"
    starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})
    repeatable = True  # the scratch database is recreated; the swap is one transaction
    failed_event = "tenant.restore_failed"

    # In place (and to recover a lost database) the tenant keeps its status until the swap; a new tenant
    # is provisioning until it is active, and failed if the restore fails.
    def starts(self, params: dict[str, Any]) -> frozenset[TenantStatus]:
        if params["mode"] == RECOVER:
            return RECOVER_STARTS_FROM
        return frozenset({TenantStatus.PROVISIONING}) if params["mode"] == NEW_TENANT else self.starts_from

    def holds(self, params: dict[str, Any]) -> TenantStatus | None:
        return TenantStatus.PROVISIONING if params["mode"] == NEW_TENANT else None

    def status_after_failure(self, op: Operation) -> TenantStatus | None:
        return TenantStatus.FAILED if op.params["mode"] == NEW_TENANT else op.return_status

    def status_after_cancel(self, op: Operation) -> TenantStatus | None:
        return self.status_after_failure(op)

    def retry_from(self, op: Operation) -> frozenset[TenantStatus]:
        return frozenset({TenantStatus.FAILED}) if op.params["mode"] == NEW_TENANT else self.starts(op.params)

    def prepare(self, ctx: ServiceContext, session: Session, principal: Principal, tenant_id: str,
                params: dict[str, Any]) -> Tenant:
        backup = session.get(Backup, params["backup_id"])
        if backup is None or backup.tenant_id != params["source_tenant_id"]:
            raise BackupNotFoundError(params["backup_id"])
        require_restorable(backup)
        if params["mode"] != NEW_TENANT:
            return super().prepare(ctx, session, principal, tenant_id, params)
        if session.get(Tenant, tenant_id) is not None:
            raise TenantExistsError(tenant_id)
        source = session.get(Tenant, params["source_tenant_id"])
        name = params.get("new_tenant_name") or \
            f"{source.name if source else params['source_tenant_id']} (restored {backup.id[:8]})"
        tenant = new_tenant(ctx, tenant_id, name[:200], source.plan if source else "standard")
        session.add(tenant)
        session.flush()
        return tenant

    def conflict(self, exc: Exception, tenant_id: str, params: dict[str, Any]) -> Exception:
        return TenantExistsError(tenant_id) if isinstance(exc, IntegrityError) else exc

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant,
            report: Report) -> dict[str, Any]:
        return _run(ctx, session, op, tenant, report)

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        """Leave things as they were: drop the scratch database (the live one was never touched)."""
        if tenant.server is not None:
            tools_for(ctx, tenant.server).drop_database(naming.restore_database_name(tenant.id, op.id))


RESTORE = Restore()


def _finish_swap(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant,
                 backup: Backup) -> dict[str, Any] | None:
    """A retry after an attempt that died at its swap: if the database it retired exists, the swap was done
    (it is one transaction) and only the catalog is left to finish; if not, forget the record."""
    records = session.scalars(select(RetiredDatabase).where(RetiredDatabase.operation_id == op.id,
                                                            RetiredDatabase.dropped_at.is_(None))).all()
    if not records:
        return None
    tools = tools_for(ctx, tenant.server)
    swapped = [r for r in records if tools.database_exists(r.database_name)]
    for record in records:
        if record not in swapped:
            session.delete(record)
    if not swapped:
        session.commit()
        return None
    retired = swapped[0].database_name
    password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
    live = ctx.tenant_database(tenant.server.host, tenant.server.port, tenant.database_name, tenant.role_name, password,
                               tls=tenant.server.tls or {})
    tenant.schema_revision = live.current_revision()
    if tenant.status is TenantStatus.RESTORING:
        tenant.return_to(op.return_status)
    audit.record(session, "system", "tenant.restored", tenant.id, op.id, backup_id=backup.id, retired_database=retired)
    session.commit()
    ctx.events.publish(tenant.id, "restored", database=tenant.database_name, retired_database=retired)
    ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                       database=tenant.database_name)
    return {"backup_id": backup.id, "mode": op.params["mode"], "tenant_id": tenant.id,
            "database": tenant.database_name, "schema_revision": tenant.schema_revision, "retired_database": retired,
            "dropped_retired_databases": _keep_few_retired(ctx, session, tenant)}


def _run(ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
    params = op.params
    in_place = params["mode"] == IN_PLACE
    recover = params["mode"] == RECOVER
    backup = session.get(Backup, params["backup_id"])
    if backup is None or backup.tenant_id != params["source_tenant_id"]:
        raise BackupNotFoundError(params["backup_id"])
    require_restorable(backup)
    if in_place:
        finished = _finish_swap(ctx, session, op, tenant, backup)
        if finished is not None:
            return finished
    if recover and tools_for(ctx, tenant.server).database_exists(tenant.database_name):
        raise IllegalTransitionError("tenant", tenant.id, "with its database present", "recover (restore in place)")

    scratch = naming.restore_database_name(tenant.id, op.id)
    with tempfile.TemporaryFile(prefix="tcp-restore-") as encrypted:  # ciphertext only: never plaintext on disk
        report("download_verify", 10)
        manifest, where = fetch_verified(ctx, session, backup, encrypted)

        password = ctx.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
        if not in_place:
            report("place", 35)
            if tenant.server_name is None:
                tenant.server = choose_server(session)
                session.commit()
            admin = ctx.admin_for(tenant.server)
            admin.ensure_role(tenant.role_name, password)
            admin.close_other_databases()
        tools = tools_for(ctx, tenant.server)

        report("restore", 40)
        if not in_place and tools.database_exists(tenant.database_name):
            # Left by an attempt that died between its rename and its commit: the tenant was never active.
            tools.drop_database(tenant.database_name)
        tools.create_database(scratch, owner=tenant.role_name)
        encrypted.seek(0)
        opened = open_backup(ctx, session, backup, encrypted)
        sizes: list[int] = []
        # Archive bytes fed to pg_restore of the backup's recorded archive size, on the operation's result.
        fed = ByteProgress(ctx, op.id, backup.archive_bytes or 0)
        tools.restore(scratch, tenant.role_name, password,
                      lambda stdin: sizes.append(opened.archive(CountingWriter(stdin, fed.add))),
                      archive_major=_major((manifest.get("postgresql") or {}).get("pg_dump_version")))
        check_read(opened, backup, sizes[0] if sizes else -1)
        fed_bytes = fed.finish()

    report("check", 70)
    restored = ctx.tenant_database(tenant.server.host, tenant.server.port, scratch, tenant.role_name, password,
                                   tls=tenant.server.tls or {})
    revision = restored.current_revision()
    if revision not in tenant_migrations.known_revisions():
        raise BackupIntegrityError(f"the restored database is at schema revision {revision!r}, which this "
                                   "release does not know")
    from_revision = revision
    target = params.get("schema_target", tenant_migrations.HEAD)
    if revision != tenant_migrations.resolve_target(target):
        report("migrate_schema", 75)
        revision = restored.migrate(target)

    result: dict[str, Any] = {"backup_id": backup.id, "mode": params["mode"], "tenant_id": tenant.id,
                              "database": tenant.database_name, "backup_schema_revision": from_revision,
                              "schema_revision": revision, **where, **fed_bytes}
    if recover:
        report("activate", 90)
        tools.rename(scratch, tenant.database_name)
        tenant.schema_revision = revision
        result["previous_status"] = tenant.status.value
        if tenant.status is TenantStatus.FAILED:
            tenant.recover_database()
        audit.record(session, "system", "tenant.recovered", tenant.id, op.id, backup_id=backup.id,
                     source=where["source"], previous_status=result["previous_status"])
        session.commit()
        ctx.events.publish(tenant.id, "restored", database=tenant.database_name)
        ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                           database=tenant.database_name)
        return result
    if not in_place:
        report("activate", 90, cancellable=False)
        tools.rename(scratch, tenant.database_name)
        tenant.schema_revision = revision
        tenant.activate()
        audit.record(session, "system", "tenant.cloned", tenant.id, op.id, source_tenant_id=backup.tenant_id,
                     backup_id=backup.id)
        session.commit()
        ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                           database=tenant.database_name)
        return result

    if params.get("safety_backup", True):
        report("safety_backup", 80)
        result["safety_backup_id"] = perform_backup(ctx, session, tenant, BackupTrigger.PRE_RESTORE, op.id).id

    report("swap", 90, cancellable=False)
    retired_at = utcnow()
    # Dated to the second: a second restore within the same second would take the first one's name.
    while tools.database_exists(retired := naming.retired_database_name(tenant.id, retired_at)):
        retired_at += timedelta(seconds=1)
    # Recorded before the rename that creates it: a crash right after the swap leaves nothing unknown
    # behind, and the retry sees the swap was done (see _finish_swap).
    record = RetiredDatabase(tenant_id=tenant.id, server_name=tenant.server_name, database_name=retired,
                             operation_id=op.id, retired_at=retired_at,
                             drop_after=retired_at + timedelta(days=ctx.settings.retired_database_days))
    session.add(record)
    tenant.begin_restore()
    session.commit()
    # Runtimes stop lending connections to this tenant before its sessions are ended.
    ctx.events.publish(tenant.id, "status", status=tenant.status.value)
    try:
        tools.swap(tenant.database_name, scratch, retired)
    except BaseException:
        session.delete(record)  # the swap is one transaction: nothing was renamed
        tenant.return_to(op.return_status)
        session.commit()
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
        raise
    tenant.schema_revision = revision
    tenant.return_to(op.return_status)
    audit.record(session, "system", "tenant.restored", tenant.id, op.id, backup_id=backup.id,
                 retired_database=retired, safety_backup_id=result.get("safety_backup_id"))
    session.commit()
    # The database behind the tenant's name changed: runtimes drop pooled connections and reload.
    ctx.events.publish(tenant.id, "restored", database=tenant.database_name, retired_database=retired)
    ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                       database=tenant.database_name)
    result["retired_database"] = retired
    result["dropped_retired_databases"] = _keep_few_retired(ctx, session, tenant)
    return result


def _keep_few_retired(ctx: ServiceContext, session: Session, tenant: Tenant) -> list[str]:
    """The restore is done: drop retired copies over the per-tenant allowance. A failure here is no failure
    of the restore; the hourly prune drops them instead."""
    try:
        return drop_excess_retired(ctx, session, tenant.id)
    except ControlPlaneError as exc:
        session.rollback()
        log.warning("tenant %s: older retired databases not dropped yet (the prune will): %s", tenant.id, exc.detail)
        return []
