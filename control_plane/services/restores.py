"""Restoring a backup: in place (swap the tenant's database) or as a new tenant (a clone).

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
from sqlalchemy.exc import IntegrityError

from control_plane import naming
from control_plane.adapters.crypto import random_password
from control_plane.backup_errors import BackupIntegrityError, BackupNotFoundError
from control_plane.catalog.backup_models import Backup, BackupTrigger, RetiredDatabase
from control_plane.catalog.db import transaction
from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantStatus, utcnow
from control_plane.errors import IllegalTransitionError, TenantExistsError, TenantNotFoundError, ValidationError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.backup_copies import fetch_verified
from control_plane.services.backups import (Report, check_read, open_backup, perform_backup, require_restorable,
                                            tools_for)
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.operations import dispatch, find_replay, fingerprint, new_operation
from control_plane.services.servers import choose_server

log = logging.getLogger(__name__)

IN_PLACE = "in_place"
NEW_TENANT = "new_tenant"
# After a disaster: the tenant's database is gone from its server; restore it there under its own name.
RECOVER = "recover"
RESTORABLE_IN_PLACE = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})


def request_restore(ctx: ServiceContext, principal: Principal, tenant_id: str, *, backup_id: str,
                    mode: str = IN_PLACE, new_tenant_id: str | None = None, new_tenant_name: str | None = None,
                    safety_backup: bool = True, idempotency_key: str | None = None,
                    enqueue: bool = True) -> Operation:
    """Record a RESTORE operation and enqueue it (unless the caller runs it itself: `enqueue=False`).

    In place: the tenant's admins or a super admin; the tenant stays usable until the swap.
    New tenant: super admins only; the new tenant is recorded now (provisioning) with its own role.
    Recover: super admins only; the tenant's database is missing from its server (after a disaster).
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
    if mode == IN_PLACE:
        params["safety_backup"] = safety_backup
    else:
        params["new_tenant_id"] = new_tenant_id
    target_id = new_tenant_id if mode == NEW_TENANT else tenant_id
    request_fingerprint = fingerprint(OperationKind.RESTORE, target_id, params)
    try:
        with transaction(ctx.sessions) as session:
            replay = find_replay(session, principal, idempotency_key, request_fingerprint)
            if replay is not None:
                return replay
            backup = session.get(Backup, backup_id)
            if backup is None or backup.tenant_id != tenant_id:
                raise BackupNotFoundError(backup_id)
            require_restorable(backup)
            if mode in (IN_PLACE, RECOVER):
                tenant = session.get(Tenant, tenant_id, with_for_update=True)
                if tenant is None:
                    raise TenantNotFoundError(tenant_id)
                if tenant.status not in RESTORABLE_IN_PLACE:
                    raise IllegalTransitionError("tenant", tenant_id, tenant.status.value, "restore")
                params["previous_status"] = tenant.status.value
            else:
                if session.get(Tenant, new_tenant_id) is not None:
                    raise TenantExistsError(new_tenant_id)
                source = session.get(Tenant, tenant_id)
                name = new_tenant_name or f"{source.name if source else tenant_id} (restored {backup_id[:8]})"
                session.add(Tenant(id=new_tenant_id, name=name[:200], plan=source.plan if source else "standard",
                                   status=TenantStatus.PROVISIONING, database_name=naming.database_name(new_tenant_id),
                                   role_name=naming.role_name(new_tenant_id),
                                   role_password_encrypted=ctx.keyring.encrypt(random_password(),
                                                                                role_secret_context(new_tenant_id))))
                session.flush()
            op = new_operation(principal, OperationKind.RESTORE, target_id, params, idempotency_key,
                               request_fingerprint)
            session.add(op)
            session.flush()
            audit.record(session, principal.actor, "tenant.restore_requested", target_id, op.id, **params)
    except IntegrityError as exc:
        with ctx.sessions() as session:
            replay = find_replay(session, principal, idempotency_key, request_fingerprint)
        if replay is not None:
            return replay
        raise TenantExistsError(target_id) from exc
    if enqueue:
        dispatch(ctx, op.id)
    return op


def _back_to_previous_status(tenant: Tenant, op: Operation) -> None:
    tenant.activate()
    if op.params.get("previous_status") == TenantStatus.SUSPENDED.value:
        tenant.suspend()


def _major(version: str | None) -> int:
    try:
        return int((version or "0").split(".")[0])
    except ValueError:
        return 0


def run_restore(ctx: ServiceContext, session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
    params = op.params
    in_place = params["mode"] == IN_PLACE
    recover = params["mode"] == RECOVER
    backup = session.get(Backup, params["backup_id"])
    if backup is None or backup.tenant_id != params["source_tenant_id"]:
        raise BackupNotFoundError(params["backup_id"])
    require_restorable(backup)
    if (in_place or recover) and tenant.status not in RESTORABLE_IN_PLACE:
        raise IllegalTransitionError("tenant", tenant.id, tenant.status.value, "restore")
    if not (in_place or recover) and tenant.status is not TenantStatus.PROVISIONING:
        raise IllegalTransitionError("tenant", tenant.id, tenant.status.value, "restore a backup into it")
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
        tools.restore(scratch, tenant.role_name, password, lambda stdin: sizes.append(opened.archive(stdin)),
                      archive_major=_major((manifest.get("postgresql") or {}).get("pg_dump_version")))
        check_read(opened, backup, sizes[0] if sizes else -1)

    report("check", 70)
    restored = ctx.tenant_database(tenant.server.host, tenant.server.port, scratch, tenant.role_name, password,
                                   tls=tenant.server.tls or {})
    revision = restored.current_revision()
    if revision not in tenant_migrations.known_revisions():
        raise BackupIntegrityError(f"the restored database is at schema revision {revision!r}, which this "
                                   "release does not know")
    from_revision = revision
    if revision != tenant_migrations.head_revision():
        report("migrate_schema", 75)
        revision = restored.migrate("head")

    result: dict[str, Any] = {"backup_id": backup.id, "mode": params["mode"], "tenant_id": tenant.id,
                              "database": tenant.database_name, "backup_schema_revision": from_revision,
                              "schema_revision": revision, **where}
    if recover:
        report("activate", 90)
        tools.rename(scratch, tenant.database_name)
        tenant.schema_revision = revision
        audit.record(session, "system", "tenant.recovered", tenant.id, op.id, backup_id=backup.id,
                     source=where["source"])
        session.commit()
        ctx.events.publish(tenant.id, "restored", database=tenant.database_name)
        return result
    if not in_place:
        report("activate", 90)
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

    report("swap", 90)
    tenant.begin_restore()
    session.commit()
    # Runtimes stop lending connections to this tenant before its sessions are ended.
    ctx.events.publish(tenant.id, "status", status=tenant.status.value)
    retired_at = utcnow()
    retired = naming.retired_database_name(tenant.id, retired_at)
    try:
        tools.swap(tenant.database_name, scratch, retired)
    except BaseException:
        _back_to_previous_status(tenant, op)
        session.commit()
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
        raise
    session.add(RetiredDatabase(tenant_id=tenant.id, server_name=tenant.server_name, database_name=retired,
                                operation_id=op.id, retired_at=retired_at,
                                drop_after=retired_at + timedelta(days=ctx.settings.retired_database_days)))
    tenant.schema_revision = revision
    _back_to_previous_status(tenant, op)
    audit.record(session, "system", "tenant.restored", tenant.id, op.id, backup_id=backup.id,
                 retired_database=retired, safety_backup_id=result.get("safety_backup_id"))
    session.commit()
    # The database behind the tenant's name changed: runtimes drop pooled connections and reload.
    ctx.events.publish(tenant.id, "restored", database=tenant.database_name, retired_database=retired)
    ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                       database=tenant.database_name)
    result["retired_database"] = retired
    return result


def restore_failed(ctx: ServiceContext, session, op: Operation, tenant: Tenant) -> None:
    """Leave things as they were: drop the scratch database; in place, give the tenant its status back."""
    if tenant.server is not None:
        try:
            tools_for(ctx, tenant.server).drop_database(naming.restore_database_name(tenant.id, op.id))
        except Exception:  # the server may be what failed; a retry recreates the scratch database anyway
            log.warning("tenant %s operation %s: could not drop the scratch database", tenant.id, op.id, exc_info=True)
    if op.params.get("mode") == RECOVER:
        pass  # nothing was live: the tenant keeps its status, its database is still missing
    elif op.params.get("mode") == IN_PLACE:
        if tenant.status is TenantStatus.RESTORING:
            _back_to_previous_status(tenant, op)
        ctx.events.publish(tenant.id, "status", status=tenant.status.value)
    else:
        tenant.fail()
    audit.record(session, "system", "tenant.restore_failed", tenant.id, op.id, error=op.error,
                 backup_id=op.params.get("backup_id"))


def retry_restore(tenant: Tenant, op: Operation) -> None:
    if op.params.get("mode") in (IN_PLACE, RECOVER):
        if tenant.status not in RESTORABLE_IN_PLACE:
            raise IllegalTransitionError("tenant", tenant.id, tenant.status.value, "restore")
    else:
        tenant.retry_provisioning()
