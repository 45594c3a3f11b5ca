"""MIGRATE: bring one tenant's schema to a revision (up or down), one revision at a time."""
from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

import tenant_migrations
from control_plane.catalog.models import Operation, OperationKind, Tenant, TenantStatus
from control_plane.errors import ValidationError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.base import Kind, Report
from control_plane.services.operation_requests import request_work

log = logging.getLogger(__name__)


def path(current: str | None, target: str | None) -> list[str | None]:
    """The revisions to pass through from `current` to `target` (target last; None is base)."""
    known: list[str | None] = [None, *tenant_migrations.known_revisions()]
    start, end = known.index(current), known.index(target)
    if end >= start:
        return known[start + 1:end + 1]
    return list(reversed(known[end:start]))


class Migrate(Kind):
    kind = OperationKind.MIGRATE
    action = "migrate"
    starts_from = frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED})
    busy_status = TenantStatus.MIGRATING
    repeatable = True  # each revision commits on its own: a rerun goes on from where the database is
    failed_event = "tenant.migration_failed"

    def run(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant, report: Report) -> dict[str, Any]:
        report("migrate_schema", 10)
        database = ctx.database_of(tenant)
        before = database.current_revision()
        steps = path(before, tenant_migrations.resolve_target(op.params["target"]))
        tenant.schema_revision = before
        for done, revision in enumerate(steps):
            if done:  # a step boundary: a cancel leaves the database at the last completed revision
                report("migrate_schema", 10 + 80 * done // len(steps))
            tenant.schema_revision = database.migrate(revision or tenant_migrations.BASE)
            session.commit()
        tenant.return_to(op.return_status or TenantStatus.ACTIVE)
        audit.record(session, "system", "tenant.migrated", tenant.id, op.id,
                     from_revision=before, to_revision=tenant.schema_revision)
        session.commit()
        ctx.events.publish(tenant.id, "status", status=tenant.status.value, server=tenant.server_name,
                           database=tenant.database_name)
        return {"from_revision": before, "schema_revision": tenant.schema_revision}

    def undo(self, ctx: ServiceContext, session: Session, op: Operation, tenant: Tenant) -> None:
        # Each revision runs in its own transaction: the database is intact at whatever revision it reached.
        try:
            tenant.schema_revision = ctx.database_of(tenant).current_revision()
        except Exception:  # the database may be unreachable, which is likely why we failed
            log.warning("tenant %s: could not read its revision after a failed migration", tenant.id, exc_info=True)


MIGRATE = Migrate()


def request_migration(ctx: ServiceContext, principal: Principal, tenant_id: str, target: str,
                      idempotency_key: str | None = None) -> Operation:
    principal.require_super_admin()
    try:
        tenant_migrations.resolve_target(target)
    except ValueError as exc:
        raise ValidationError("target", str(exc)) from exc
    return request_work(ctx, principal, MIGRATE, tenant_id, {"target": target}, idempotency_key)
