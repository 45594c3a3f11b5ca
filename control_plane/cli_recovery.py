"""Disaster recovery from the terminal: `tenantctl catalog backup|backups|restore`, `tenantctl fleet recover`,
`tenantctl drills run|list`."""
from __future__ import annotations

import json

import click

from control_plane.bootstrap import build_context, dispose
from control_plane.cli_output import json_option
from control_plane.cli_support import context
from control_plane.services import catalog_backups, recovery, servers
from control_plane.services.auth import SYSTEM
from control_plane.settings import Settings


def _human(size: int) -> str:
    from control_plane.cli_backups import _human as human

    return human(size)


@click.command("backup")
@json_option
def catalog_backup(as_json: bool) -> None:
    """Back the catalog up (encrypted, verified) to the store and the copy store; prints its id (with --json,
    its manifest)."""
    ctx = context()
    try:
        manifest = catalog_backups.backup_catalog(ctx)
    finally:
        dispose(ctx)
    click.echo(f"catalog backup {manifest['backup_id']}: {manifest['tenants']} tenants, "
               f"{_human(manifest['object']['bytes'])} in {', '.join(manifest['locations'])}", err=True)
    click.echo(json.dumps(manifest, indent=2, default=str) if as_json else manifest["backup_id"])


@click.command("backups")
@json_option
def catalog_backups_list(as_json: bool) -> None:
    """Catalog backups in the store and the copy store, newest first (reads the stores, not the catalog)."""
    ctx = build_context(Settings.from_env(), pool_size=1)  # the catalog may be gone: never touch it
    try:
        found = catalog_backups.list_catalog_backups(ctx)
    finally:
        dispose(ctx)
    if as_json:
        click.echo(json.dumps([{k: m[k] for k in ("backup_id", "finished_at", "tenants", "schema_revision",
                                                  "sources", "object")} for m in found], indent=2))
        return
    click.echo(f"{'ID':<36}  {'FINISHED':<32}  {'TENANTS':>7}  {'STORED':>9}  WHERE")
    for m in found:
        click.echo(f"{m['backup_id']:<36}  {m['finished_at']:<32}  {m['tenants']:>7}  "
                   f"{_human(m['object']['bytes']):>9}  {','.join(m['sources'])}")
    click.echo(f"{len(found)} catalog backups", err=True)


@click.command("restore")
@click.argument("backup_id")
@json_option
def catalog_restore(backup_id: str, as_json: bool) -> None:
    """Restore catalog backup BACKUP_ID (or `latest`) into the empty database CATALOG_DATABASE_URL names.

    Verifies it first (SHA-256, every chunk), checks every table's row count and the schema revision
    after, then brings the schema to head and registers TENANT_DB_ADMIN_URL as the default server.
    """
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        result = catalog_backups.restore_catalog(ctx, backup_id)
        servers.ensure_default_server(ctx)
    finally:
        dispose(ctx)
    click.echo(json.dumps(result, indent=2))


@click.group("fleet")
def fleet_group() -> None:
    """The fleet of tenant database servers."""


@fleet_group.command("recover")
@click.option("--server", "server_name", required=True, help="The server whose missing databases to restore.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 32),
              help="Restores at a time.")
@click.option("--admin-url-file", type=click.File(),
              help="The replacement server's admin URL, in a file: recorded for SERVER first (default: "
                   "TENANT_DB_ADMIN_URL for `default`, the recorded URL for others).")
@json_option
def fleet_recover(server_name: str, parallel: int, admin_url_file, as_json: bool) -> None:
    """Restore the newest backup of every tenant whose database is missing on SERVER (after a catalog restore).

    Backups in the store that the restored catalog does not know (taken after its backup) are adopted
    first. Tenants `failed` because their database is missing are recovered too, and become active
    (WAS says what they were). Exits 1 if any tenant could not be recovered.
    """
    settings = Settings.from_env()
    ctx = build_context(settings, pool_size=2 * parallel + 1)
    try:
        servers.ensure_default_server(ctx)
        if admin_url_file is not None:
            servers.replace_server(ctx, SYSTEM.actor, server_name, admin_url_file.read().strip())
        recoveries = recovery.recover_server(ctx, SYSTEM, server_name, parallel=parallel)
    finally:
        dispose(ctx)
    if as_json:
        click.echo(json.dumps(recovery.as_dicts(recoveries), indent=2))
    else:
        click.echo(f"{'TENANT':<40} {'WAS':<10} {'STATUS':<10} {'BACKUP AGE':>11} {'SECONDS':>8} {'FROM':<8} "
                   "BACKUP / ERROR")
        for r in recoveries:
            age = f"{r.backup_age_seconds / 3600:.1f} h" if r.backup_age_seconds is not None else "-"
            took = f"{r.seconds:.1f}" if r.seconds is not None else "-"
            click.echo(f"{r.tenant_id:<40} {r.previous_status or '-':<10} {r.status:<10} {age:>11} {took:>8} "
                       f"{r.source or '-':<8} {r.error or r.backup_id or ''}")
    if any(r.status in ("failed", "no_backup") for r in recoveries):
        raise SystemExit(1)


@click.group("drills")
def drills_group() -> None:
    """Restore drills: each tenant's newest backup restored into a scratch database and checked."""


@drills_group.command("run", epilog="""\b
Examples:
  tenantctl drills run acme-clinic --follow
  tenantctl drills run --all --json""")
@click.argument("tenant_ids", nargs=-1)
@click.option("--all", "all_tenants", is_flag=True, help="Every active tenant.")
@click.option("--follow/--no-follow", "follow_progress", default=False, show_default=True,
              help="Watch each drill to its end (they run side by side on the workers), then a table.")
@click.option("--json", "as_json", is_flag=True, help="Print the operations as JSON.")
def drills_run(tenant_ids: tuple[str, ...], all_tenants: bool, follow_progress: bool, as_json: bool) -> None:
    """Drill TENANT_IDS (or --all active tenants): each newest backup restored into a scratch database and
    checked. Prints the operations, or with --follow how each ended (exit 1 if one did not pass)."""
    from control_plane.api.schemas import OperationSchema
    from control_plane.catalog.models import TenantStatus
    from control_plane.cli_output import follow_all
    from control_plane.services import operations, tenants
    from control_plane.services.kinds.drill import request_drill

    if bool(tenant_ids) == all_tenants:
        raise click.UsageError("name tenants, or --all")
    ctx = context()
    if all_tenants:
        tenant_ids = tuple(t.id for t in tenants.list_tenants(ctx, SYSTEM, status=TenantStatus.ACTIVE,
                                                              limit=1_000_000)[0])
    started = []
    for tenant_id in tenant_ids:
        op = request_drill(ctx, SYSTEM, tenant_id)
        click.echo(f"tenant {op.tenant_id}: drill operation {op.id}", err=True)
        started.append(OperationSchema().dump(op))
    follow_all(started, lambda op_id: OperationSchema().dump(operations.get_operation(ctx, SYSTEM, op_id)),
               follow_progress, as_json)


@drills_group.command("list")
@click.option("--tenant", "tenant_id")
@click.option("--result", type=click.Choice(["running", "passed", "failed"]))
@json_option
def drills_list(tenant_id: str | None, result: str | None, as_json: bool) -> None:
    """Drills, newest first."""
    from control_plane.api.drill_schemas import DrillSchema
    from control_plane.catalog.backup_models import DrillResult
    from control_plane.services import drills

    items, total = drills.list_drills(context(), SYSTEM, tenant_id=tenant_id,
                                      result=DrillResult(result) if result else None, limit=10_000)
    if as_json:
        click.echo(json.dumps(DrillSchema(many=True).dump(items), indent=2))
        return
    click.echo(f"{'TENANT':<40} {'RESULT':<8} {'STARTED':<25} {'RPO':>8} {'RTO':>8} {'FROM':<8} REASON")
    for d in items:
        rpo = f"{d.rpo_seconds / 3600:.1f}h" if d.rpo_seconds is not None else "-"
        rto = f"{d.rto_seconds:.1f}s" if d.rto_seconds is not None else "-"
        click.echo(f"{d.tenant_id:<40} {d.result.value:<8} {d.started_at.isoformat(timespec='seconds'):<25} "
                   f"{rpo:>8} {rto:>8} {d.source or '-':<8} {d.reason or ''}")
    click.echo(f"{total} drills", err=True)
