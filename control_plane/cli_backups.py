"""`tenantctl backups ...`, `tenantctl keys rotate` and `tenantctl scheduler`."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from control_plane.catalog.backup_models import BackupStatus
from control_plane.cli_output import json_option, wait_option
from control_plane.cli_support import context, started
from control_plane.services import backups
from control_plane.services.kinds import backup as backup_kind
from control_plane.services.kinds import restore as restores
from control_plane.services.auth import SYSTEM


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


@click.group("backups")
def backups_group() -> None:
    """Encrypted per-tenant backups, restores and retention."""


@backups_group.command("create")
@click.argument("tenant_id")
@click.option("--expires-in-days", type=click.IntRange(1, 3650), help="Keep it this long, whatever the policy.")
@wait_option()
@json_option
def backups_create(tenant_id: str, expires_in_days: int | None, wait: bool, as_json: bool) -> None:
    """Back a tenant up now (a bar shows the bytes streamed unless --no-wait)."""
    ctx = context()
    started(ctx, backup_kind.request_backup(ctx, SYSTEM, tenant_id, expires_in_days=expires_in_days), wait, as_json)


@backups_group.command("list")
@click.argument("tenant_id")
@click.option("--status", type=click.Choice([s.value for s in BackupStatus]))
@json_option
def backups_list(tenant_id: str, status: str | None, as_json: bool) -> None:
    """A tenant's backups, newest first."""
    items, total = backups.list_backups(context(), SYSTEM, tenant_id,
                                        status=BackupStatus(status) if status else None, limit=10_000)
    if as_json:
        from control_plane.api.backup_schemas import BackupSchema

        click.echo(json.dumps(BackupSchema(many=True).dump(items), indent=2))
        return
    click.echo(f"{'ID':<36}  {'STATUS':<9}  {'TRIGGER':<11}  {'COMPLETED':<25}  {'ARCHIVE':>9}  {'STORED':>9}  REVISION")
    for b in items:
        completed = b.completed_at.isoformat(timespec="seconds") if b.completed_at else "-"
        click.echo(f"{b.id:<36}  {b.status.value:<9}  {b.trigger.value:<11}  {completed:<25}  "
                   f"{_human(b.archive_bytes):>9}  {_human(b.stored_bytes):>9}  {b.schema_revision or '-'}")
    click.echo(f"{total} backups", err=True)


@backups_group.command("show")
@click.argument("backup_id")
@json_option
def backups_show(backup_id: str, as_json: bool) -> None:
    """One backup's catalog record and manifest, as JSON (with or without --json)."""
    from control_plane.api.backup_schemas import BackupManifestSchema

    click.echo(json.dumps(BackupManifestSchema().dump(backups.get_backup(context(), SYSTEM, backup_id)), indent=2))


@backups_group.command("decrypt")
@click.argument("backup_id")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the plain pg_dump archive ('-' for stdout).")
def backups_decrypt(backup_id: str, output: str) -> None:
    """Verify and decrypt a backup into a plain pg_dump custom-format archive (for stock pg_restore).

    Every chunk is authenticated before it is written; if verification fails part-way, the partial
    output file is removed and the command exits non-zero.
    """
    ctx = context()
    if output == "-":
        backups.decrypt_backup(ctx, SYSTEM, backup_id, sys.stdout.buffer)
        sys.stdout.buffer.flush()
        return
    target = Path(output)
    partial = target.with_name(f".{target.name}.partial")
    try:
        # The archive is the tenant's whole database in clear: readable by its owner only.
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as sink:
            backup = backups.decrypt_backup(ctx, SYSTEM, backup_id, sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    click.echo(f"wrote {target} ({_human(target.stat().st_size)}): tenant {backup.tenant_id}, "
               f"schema revision {backup.schema_revision}, pg_dump {backup.pg_dump_version}", err=True)
    click.echo(f"restore it with: pg_restore --no-owner --no-privileges -d <database> {target}", err=True)


@backups_group.command("restore")
@click.argument("tenant_id")
@click.argument("backup_id")
@click.option("--new-tenant", "new_tenant_id", help="Restore as this new tenant (a clone) instead of in place.")
@click.option("--safety-backup/--no-safety-backup", default=True, show_default=True,
              help="In place: back the current database up first.")
@wait_option()
@json_option
def backups_restore(tenant_id: str, backup_id: str, new_tenant_id: str | None, safety_backup: bool,
                    wait: bool, as_json: bool) -> None:
    """Restore a backup of TENANT_ID in place, or as a new tenant (a bar shows the archive bytes restored)."""
    ctx = context()
    op = restores.request_restore(ctx, SYSTEM, tenant_id, backup_id=backup_id,
                                  mode=restores.NEW_TENANT if new_tenant_id else restores.IN_PLACE,
                                  new_tenant_id=new_tenant_id, safety_backup=safety_backup)
    started(ctx, op, wait, as_json)


@backups_group.command("prune")
@click.option("--tenant", "tenant_ids", multiple=True, help="Only these tenants (default: all).")
@json_option
def backups_prune(tenant_ids: tuple[str, ...], as_json: bool) -> None:
    """Expire what the retention policies no longer keep; drop retired databases past their grace period."""
    from control_plane.services.pruning import prune_backups

    report = prune_backups(context(), tenant_ids=list(tenant_ids) or None)
    click.echo(json.dumps(vars(report), indent=2))


@backups_group.command("policy")
@click.argument("tenant_id")
@click.option("--keep-last", type=click.IntRange(1, 1000))
@click.option("--keep-daily-days", type=click.IntRange(0, 3650))
@click.option("--scheduled/--not-scheduled", default=None)
@click.option("--rpo-hours", type=click.IntRange(1, 24 * 90),
              help="This tenant's recovery point objective (default: its plan's backup_rpo_hours, else 24).")
@click.option("--plan-rpo", is_flag=True, help="Drop the tenant's own RPO: its plan's (or 24 h) applies.")
@json_option
def backups_policy(tenant_id: str, keep_last: int | None, keep_daily_days: int | None,
                   scheduled: bool | None, rpo_hours: int | None, plan_rpo: bool, as_json: bool) -> None:
    """Show, or with options change, a tenant's retention policy."""
    ctx = context()
    rpo = {"rpo_hours": None} if plan_rpo else {"rpo_hours": rpo_hours} if rpo_hours is not None else {}
    if keep_last is None and keep_daily_days is None and scheduled is None and not rpo:
        policy = backups.get_policy(ctx, SYSTEM, tenant_id)
    else:
        policy = backups.set_policy(ctx, SYSTEM, tenant_id, keep_last=keep_last, keep_daily_days=keep_daily_days,
                                    scheduled=scheduled, **rpo)
    click.echo(json.dumps(vars(policy), indent=2))


@click.group("keys")
def keys_group() -> None:
    """The KEYRING."""


@keys_group.command("rotate")
@json_option
def keys_rotate(as_json: bool) -> None:
    """Re-wrap tenant backup keys (and the catalog's other secrets) under the KEYRING's first key.

    Put the new key first in KEYRING, keep the old one after it, run this, then remove the old key.
    No backup is re-encrypted: old backups stay restorable.
    """
    from control_plane.services.backup_keys import rotate_keys

    ctx = context()
    counts = rotate_keys(ctx, SYSTEM.actor)
    click.echo(json.dumps({"keyring_key_id": ctx.keyring.current_key_id, "rewrapped": counts}, indent=2))


@click.command("scheduler")
@click.option("--once", is_flag=True, help="Start what is due and prune now, then exit (for cron and tests).")
@click.option("--interval", default=60, show_default=True, type=click.IntRange(10, 3600),
              help="Seconds between schedule ticks and operation sweeps.")
@json_option
def scheduler_command(once: bool, interval: int, as_json: bool) -> None:
    """Daily staggered backups of every active tenant, hourly pruning and stale-backup warnings (RQ's
    cron scheduler enqueues the ticks; workers run them)."""
    from control_plane.services.backup_schedule import report_stale_backups, schedule_due_backups
    from control_plane.services.pruning import prune_backups

    if once:
        from control_plane.services.drill_schedule import schedule_due_drills

        ctx = context()
        started = schedule_due_backups(ctx) + schedule_due_drills(ctx)
        report = prune_backups(ctx)
        stale = [state.tenant_id for state in report_stale_backups(ctx)]
        click.echo(json.dumps({"started": started, "pruned": vars(report), "stale_backups": stale}, indent=2))
        return

    from control_plane.jobs.backups import run_cron
    from control_plane.settings import Settings

    run_cron(Settings.from_env(), interval)
