"""Reconcile: what each database server holds compared with the catalog, and the safe repairs.

Findings per server: `orphan_databases` and `orphan_roles` (our naming, no catalog owner there),
`missing` (a tenant whose database or role is not on its server), `leftovers` (retired, restore-scratch
and quarantined databases past their grace period; replication slots, subscriptions and roles left by
moves that are no longer running) and, fleet-wide, schema `drift`. Repairs (`apply`): orphans are
quarantined (renamed `cp_quarantine_<YYYYMMDD>_...`, connections refused or login removed) and dropped
by a later run once the grace period has passed; leftovers past grace are dropped; a tenant whose
database is missing is marked `failed` with the reason and the newest backup that would bring it back.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import select

from control_plane.catalog.backup_models import Backup, BackupStatus, RetiredDatabase
from control_plane.catalog.db import transaction
from control_plane.catalog.models import AuditEvent, DatabaseServer, Operation, OperationStatus, Tenant, TenantStatus, utcnow
from control_plane.errors import ControlPlaneError
from control_plane.services import audit
from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext
from control_plane.services.schema_drift import drift_report

log = logging.getLogger(__name__)

QUARANTINE_PREFIX = "cp_quarantine_"
_QUARANTINED = re.compile(r"^cp_quarantine_(\d{8})_")
_SCRATCH = re.compile(r"^tenant_[a-z0-9_]+_rs_([0-9a-f]{8})$")
_MOVE = re.compile(r"^cp_move_([0-9a-f]{16})$")
# Tenants whose database and role must exist on their server.
_PLACED = (TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MIGRATING, TenantStatus.RESTORING,
           TenantStatus.MOVING)


def _quarantine_name(name: str, now: datetime) -> str:
    return f"{QUARANTINE_PREFIX}{now:%Y%m%d}_{name}"[:63]


def _quarantined_on(name: str) -> datetime | None:
    match = _QUARANTINED.match(name)
    return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=timezone.utc) if match else None


def _running_prefixes(session) -> set[str]:
    """Operation id prefixes (dashes removed) of operations not finished: their scratch objects are in use."""
    ids = session.scalars(select(Operation.id).where(Operation.status.in_((OperationStatus.QUEUED,
                                                                            OperationStatus.RUNNING)))).all()
    return {op_id.replace("-", "") for op_id in ids}


def _in_use(prefix: str, running: set[str]) -> bool:
    return any(op_id.startswith(prefix) for op_id in running)


def reconcile(ctx: ServiceContext, principal: Principal, *, apply: bool = False) -> dict[str, Any]:
    principal.require_super_admin()
    now = utcnow()
    grace = timedelta(days=ctx.settings.retired_database_days)
    with ctx.sessions() as session:
        servers = session.scalars(select(DatabaseServer).order_by(DatabaseServer.name)).all()
        tenants = session.scalars(select(Tenant).where(Tenant.status != TenantStatus.DELETED)).all()
        retired = session.scalars(select(RetiredDatabase).where(RetiredDatabase.dropped_at.is_(None))).all()
        running = _running_prefixes(session)
        report: dict[str, Any] = {"dry_run": not apply, "checked_at": now.isoformat(), "servers": {}}
        for server in servers:
            report["servers"][server.name] = _server_report(ctx, server, tenants, retired, running, now, grace)
    if apply:
        for name, found in report["servers"].items():
            if "error" not in found:
                found["repaired"] = _repair(ctx, principal, name, found, now)
    try:
        drift = drift_report(ctx, principal)
        report["drift"] = [vars(entry) for entry in drift["drifted"]]
    except ControlPlaneError as exc:
        report["drift_error"] = exc.detail
    report["counts"] = counts(report)
    return report


def counts(report: dict[str, Any]) -> dict[str, int]:
    totals = {"orphan_databases": 0, "orphan_roles": 0, "missing": 0, "leftovers": 0, "unreachable_servers": 0}
    for found in report["servers"].values():
        if "error" in found:
            totals["unreachable_servers"] += 1
            continue
        for key in ("orphan_databases", "orphan_roles", "missing", "leftovers"):
            totals[key] += len(found[key])
    totals["drift"] = len(report.get("drift", []))
    return totals


def _server_report(ctx: ServiceContext, server: DatabaseServer, tenants: list[Tenant],
                   retired: list[RetiredDatabase], running: set[str], now: datetime,
                   grace: timedelta) -> dict[str, Any]:
    try:
        seen = ctx.admin_for(server).inventory()
    except ControlPlaneError as exc:
        return {"error": exc.detail}
    here = [t for t in tenants if t.server_name == server.name]
    expected_databases = {t.database_name for t in here}
    retired_here = {r.database_name: r for r in retired if r.server_name == server.name}
    owners = {owner for _, owner, _ in seen["databases"]}
    databases = {name for name, _, _ in seen["databases"]}
    tenant_roles = {t.role_name for t in here}

    orphan_databases, leftovers = [], []
    for name, owner, _ in seen["databases"]:
        if name in expected_databases:
            continue
        if name in retired_here:
            if retired_here[name].drop_after <= now:
                leftovers.append({"kind": "retired_database", "name": name})
            continue
        quarantined = _quarantined_on(name)
        if quarantined is not None:
            if quarantined + grace <= now:
                leftovers.append({"kind": "quarantined_database", "name": name})
            continue
        scratch = _SCRATCH.match(name)
        if scratch:
            if not _in_use(scratch.group(1), running):
                leftovers.append({"kind": "scratch_database", "name": name})
            continue
        if re.match(r"^tenant_[a-z0-9_]+_db$", name):
            orphan_databases.append({"name": name, "owner": owner})
    orphan_roles = []
    for role in seen["roles"]:
        if role.startswith("cp_move_"):
            match = _MOVE.match(role)
            if not match or not _in_use(match.group(1), running):
                leftovers.append({"kind": "move_role", "name": role})
        elif role.startswith(QUARANTINE_PREFIX):
            quarantined = _quarantined_on(role)
            if quarantined is not None and quarantined + grace <= now and role not in owners:
                leftovers.append({"kind": "quarantined_role", "name": role})
        elif role not in tenant_roles and role not in owners:
            orphan_roles.append({"name": role})
    for slot, database, _ in seen["slots"]:
        match = _MOVE.match(slot)
        if (match and not _in_use(match.group(1), running)) or (slot.startswith("pg_") and "_sync_" in slot
                                                                  and not running):
            leftovers.append({"kind": "replication_slot", "name": slot, "database": database})
    for name, database in seen["subscriptions"]:
        match = _MOVE.match(name)
        if match and not _in_use(match.group(1), running):
            leftovers.append({"kind": "subscription", "name": name, "database": database})

    missing = []
    for tenant in here:
        if tenant.status not in _PLACED:
            continue
        lacks = [what for what, present in (("database", tenant.database_name in databases),
                                            ("role", tenant.role_name in seen["roles"])) if not present]
        if lacks:
            missing.append({"tenant_id": tenant.id, "status": tenant.status.value, "lacks": lacks})
    return {"orphan_databases": orphan_databases, "orphan_roles": orphan_roles, "missing": missing,
            "leftovers": leftovers}


def _repair(ctx: ServiceContext, principal: Principal, server_name: str, found: dict[str, Any],
            now: datetime) -> list[str]:
    done: list[str] = []
    with ctx.sessions() as session:
        server = session.get(DatabaseServer, server_name)
        admin = ctx.admin_for(server)
    # Subscriptions before slots before roles: each depends on the one before being gone.
    order = {"subscription": 0, "replication_slot": 1, "retired_database": 2, "scratch_database": 2,
             "quarantined_database": 2, "move_role": 3, "quarantined_role": 3}
    for leftover in sorted(found["leftovers"], key=lambda item: order[item["kind"]]):
        kind, name = leftover["kind"], leftover["name"]
        try:
            if kind == "subscription":
                admin.drop_subscription(leftover["database"], name)
            elif kind == "replication_slot":
                admin.drop_slot(name)
            elif kind.endswith("_database"):
                admin.drop_database(name)
                if kind == "retired_database":
                    _mark_retired_dropped(ctx, server_name, name, now)
            else:
                admin.drop_role_everywhere(name)
        except ControlPlaneError as exc:
            done.append(f"could not drop {kind} {name}: {exc.detail}")
            continue
        done.append(f"dropped {kind} {name}")
    # After the leftovers: a subscription left in an orphan database is dropped from inside it first.
    for orphan in found["orphan_databases"]:
        target = _quarantine_name(orphan["name"], now)
        admin.quarantine_database(orphan["name"], target)
        done.append(f"quarantined database {orphan['name']} as {target}")
    for orphan in found["orphan_roles"]:
        target = _quarantine_name(orphan["name"], now)
        admin.quarantine_role(orphan["name"], target)
        done.append(f"quarantined role {orphan['name']} as {target}")
    for gap in found["missing"]:
        if "database" in gap["lacks"]:
            done.append(_fail_missing(ctx, principal, gap["tenant_id"]))
    return done


def _mark_retired_dropped(ctx: ServiceContext, server_name: str, database: str, now: datetime) -> None:
    with transaction(ctx.sessions) as session:
        for row in session.scalars(select(RetiredDatabase).where(RetiredDatabase.server_name == server_name,
                                                                 RetiredDatabase.database_name == database,
                                                                 RetiredDatabase.dropped_at.is_(None))):
            row.dropped_at = now


def _fail_missing(ctx: ServiceContext, principal: Principal, tenant_id: str) -> str:
    """The tenant goes `failed` with the reason, naming the backup a restore would bring it back from."""
    with transaction(ctx.sessions) as session:
        tenant = session.get(Tenant, tenant_id, with_for_update=True)
        newest = session.scalars(select(Backup).where(Backup.tenant_id == tenant_id,
                                                      Backup.status == BackupStatus.COMPLETED)
                                 .order_by(Backup.completed_at.desc())).first()
        # The remedy that works on a `failed` tenant: an in-place restore refuses it (409), `fleet recover`
        # restores each missing tenant's newest backup on its server and makes it active again.
        remedy = (f"its newest backup is {newest.id}: `tenantctl fleet recover --server {tenant.server_name}` "
                  "restores it" if newest else "no completed backup exists")
        reason = f"database {tenant.database_name} is missing on server {tenant.server_name}; {remedy}"
        tenant.lose_database()
        audit.record(session, principal.actor, "tenant.database_missing", tenant_id, reason=reason,
                     backup_id=newest.id if newest else None)
    ctx.events.publish(tenant_id, "status", status=TenantStatus.FAILED.value)
    return f"marked tenant {tenant_id} failed: {reason}"



def daily_report(ctx: ServiceContext) -> dict[str, int]:
    """The scheduler's daily reconcile (report only): its counts are logged and kept as an audit event,
    which `/metrics` exports (`control_plane_reconcile_findings`)."""
    from control_plane.services.auth import SYSTEM

    found = counts(reconcile(ctx, SYSTEM, apply=False))
    with transaction(ctx.sessions) as session:
        audit.record(session, "system", "fleet.reconciled", **found)
    log.info("reconcile: %s", ", ".join(f"{key} {value}" for key, value in found.items()))
    return found


def last_counts(ctx: ServiceContext) -> dict[str, int] | None:
    """The counts of the newest daily reconcile, or None before the first."""
    with ctx.sessions() as session:
        event = session.scalars(select(AuditEvent).where(AuditEvent.action == "fleet.reconciled")
                                .order_by(AuditEvent.at.desc()).limit(1)).first()
        return dict(event.details) if event else None
