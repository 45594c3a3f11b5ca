"""A deleted tenant's database: retired (renamed, connections refused, its role unable to log in) for
DELETED_TENANT_GRACE_DAYS so an undelete can bring it back, then dropped with the role by the prune job;
a purge drops every database the role owns at once."""
from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from control_plane import naming
from control_plane.catalog.backup_models import RetiredDatabase
from control_plane.catalog.models import Operation, OperationKind, Tenant, utcnow
from control_plane.errors import NotUndeletableError
from control_plane.services import audit
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)


def deletion_record(session: Session, tenant_id: str) -> RetiredDatabase | None:
    """The newest database a DELETE retired for the tenant that is not dropped yet (None: nothing to bring back)."""
    return session.scalars(
        select(RetiredDatabase).join(Operation, Operation.id == RetiredDatabase.operation_id)
        .where(RetiredDatabase.tenant_id == tenant_id, RetiredDatabase.dropped_at.is_(None),
               Operation.kind == OperationKind.DELETE)
        .order_by(RetiredDatabase.retired_at.desc())).first()


def retire_tenant_database(ctx: ServiceContext, session: Session, op: Operation,
                           tenant: Tenant) -> RetiredDatabase | None:
    """Retire the tenant's live database under `tenant_<id>_del_<op>`; every other database its role owns
    (a scratch or retired database a crashed restore left unrecorded) is dropped. Safe to run twice.

    Returns the record of the retired database, or None when there was no database to keep.
    """
    assert tenant.server is not None
    retired = naming.deleted_database_name(tenant.id, op.id)
    record = session.scalars(select(RetiredDatabase).where(RetiredDatabase.operation_id == op.id,
                                                           RetiredDatabase.database_name == retired)).first()
    if record is None:
        # Recorded before the rename that creates it, so the prune job can never miss it; what the tenant
        # was (status, domains) is kept on the operation for the undelete, before the deletion clears it.
        now = utcnow()
        record = RetiredDatabase(tenant_id=tenant.id, server_name=tenant.server.name, database_name=retired,
                                 operation_id=op.id, retired_at=now,
                                 drop_after=now + timedelta(days=ctx.settings.deleted_tenant_grace_days))
        session.add(record)
        op.params = {**op.params, "before": {"status": op.return_status.value if op.return_status else None,
                                             "domains": tenant.domains}}
        session.commit()
    admin = ctx.admin_for(tenant.server)
    # Login refused first: the rename below ends the sessions, and none may come back meanwhile.
    admin.set_login(tenant.role_name, False)
    admin.retire_database(tenant.database_name, retired)
    leftovers = admin.drop_databases_owned_by(tenant.role_name, keep=retired)
    if leftovers:
        audit.record(session, "system", "tenant.leftover_databases_dropped", tenant.id, op.id, databases=leftovers)
    if not admin.database_exists(retired):  # the tenant had no database (a failed provisioning): nothing kept
        record.dropped_at = utcnow()
        session.commit()
        return None
    session.commit()
    return record


def bring_back(ctx: ServiceContext, tenant: Tenant, record: RetiredDatabase) -> None:
    """Undo `retire_tenant_database`: the database under its live name, connections and the role's login
    allowed again. Safe to run twice."""
    assert tenant.server is not None
    admin = ctx.admin_for(tenant.server)
    if not (admin.database_exists(record.database_name) or admin.database_exists(tenant.database_name)):
        raise NotUndeletableError(tenant.id, f"its database is gone from server {tenant.server.name!r}")
    admin.unretire_database(record.database_name, tenant.database_name)
    admin.set_login(tenant.role_name, True)


def retire_again(ctx: ServiceContext, tenant: Tenant, record: RetiredDatabase) -> None:
    """An undelete that did not finish: the database back under its retired name, the role's login refused."""
    assert tenant.server is not None
    admin = ctx.admin_for(tenant.server)
    admin.set_login(tenant.role_name, False)
    admin.retire_database(tenant.database_name, record.database_name)


def drop_tenant_databases(ctx: ServiceContext, session: Session, tenant: Tenant, operation_id: str | None) -> list[str]:
    """Drop every database the tenant's role owns on its server (live, retired, scratch), then the role;
    records of retired databases there are marked dropped. Returns the databases dropped."""
    assert tenant.server is not None
    admin = ctx.admin_for(tenant.server)
    admin.drop_database(tenant.database_name)  # by name too: whoever owns it, it is the tenant's
    dropped = admin.drop_databases_owned_by(tenant.role_name)
    admin.drop_role(tenant.role_name)
    now = utcnow()
    for record in session.scalars(select(RetiredDatabase).where(RetiredDatabase.tenant_id == tenant.id,
                                                                RetiredDatabase.server_name == tenant.server.name,
                                                                RetiredDatabase.dropped_at.is_(None))):
        record.dropped_at = now
    if dropped:
        audit.record(session, "system", "tenant.leftover_databases_dropped", tenant.id, operation_id,
                     databases=dropped)
    return dropped
