"""The drift report: tenants whose database revision differs from the catalog or from head, or is unknown."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

import tenant_migrations
from control_plane.catalog.models import Tenant, TenantStatus
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext, TenantDatabasePort
from control_plane.services.runner import describe

log = logging.getLogger(__name__)

# Tenants whose database must exist. Provisioning, deleting and deleted ones are in flux or gone; a failed
# one may never have had a database.
CHECKED_STATUSES = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MIGRATING, TenantStatus.RESTORING,
                    TenantStatus.MOVING)
READERS = 8  # databases read at once (each read is one short connection as the tenant's role)

CATALOG_MISMATCH = "catalog_mismatch"  # the database is not at the revision the catalog records
NOT_AT_HEAD = "not_at_head"
UNKNOWN_REVISION = "unknown_revision"  # a revision this code does not know (a newer release migrated it?)
NO_REVISION = "no_revision"  # no alembic_version: an empty or foreign database
UNREACHABLE = "unreachable"


@dataclass
class DriftEntry:
    tenant_id: str
    status: str
    server: str | None
    catalog_revision: str | None
    database_revision: str | None
    problems: list[str] = field(default_factory=list)
    error: str | None = None


def _read(database: TenantDatabasePort) -> tuple[str | None, str | None]:
    try:
        return database.current_revision(), None
    except Exception as exc:  # one unreachable database is a finding, not a failure of the report
        return None, describe(exc)


def drift_report(ctx: ServiceContext, principal: Principal) -> dict[str, Any]:
    """Reads every checked tenant's alembic_version (a few at a time) and compares."""
    principal.require_super_admin()
    head = tenant_migrations.head_revision()
    known = tenant_migrations.known_revisions()
    with ctx.sessions() as session:
        tenants = session.scalars(select(Tenant).where(Tenant.status.in_(CHECKED_STATUSES),
                                                       Tenant.server_name.is_not(None)).order_by(Tenant.id)).all()
        targets = [(tenant, ctx.database_of(tenant)) for tenant in tenants]
    with ThreadPoolExecutor(max_workers=READERS) as pool:
        revisions = list(pool.map(lambda pair: _read(pair[1]), targets))

    drifted: list[DriftEntry] = []
    by_revision: dict[str, int] = {}
    for (tenant, _), (revision, error) in zip(targets, revisions):
        entry = DriftEntry(tenant_id=tenant.id, status=tenant.status.value, server=tenant.server_name,
                           catalog_revision=tenant.schema_revision, database_revision=revision, error=error)
        if error:
            entry.problems.append(UNREACHABLE)
        else:
            by_revision[revision or "none"] = by_revision.get(revision or "none", 0) + 1
            if revision is None:
                entry.problems.append(NO_REVISION)
            elif revision not in known:
                entry.problems.append(UNKNOWN_REVISION)
            elif revision != head:
                entry.problems.append(NOT_AT_HEAD)
            if revision != tenant.schema_revision:
                entry.problems.append(CATALOG_MISMATCH)
        if entry.problems:
            drifted.append(entry)
    log.info("drift report: %d tenants checked, %d drifted", len(targets), len(drifted))
    return {"head": head, "known_revisions": known, "checked": len(targets), "in_sync": len(targets) - len(drifted),
            "by_revision": by_revision, "drifted": drifted}
