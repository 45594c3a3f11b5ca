"""`tenantctl migrations`: start, watch, resume and cancel bulk migration runs; the drift report."""
from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import IO, Any

import click

from control_plane.bootstrap import build_context
from control_plane.cli_output import json_option
from control_plane.catalog.migration_run_models import MigrationRun, MigrationRunStatus, RunItemStatus
from control_plane.catalog.models import TenantStatus, utcnow
from control_plane.cli_waves import WaveAnnouncer, wave_line, waves_body
from control_plane.errors import ValidationError
from control_plane.services import migration_gates, migration_runs, schema_drift
from control_plane.services.auth import SYSTEM
from control_plane.services.context import ServiceContext
from control_plane.services.migration_runs import RunDetail, RunRequest
from control_plane.services.migration_waves import Wave
from control_plane.settings import Settings

POLL_SECONDS = 0.5  # a human-facing refresh, not synchronisation
BAR_WIDTH = 28


def _context() -> ServiceContext:
    return build_context(Settings.from_env(), pool_size=1)


def _ended(run: MigrationRun) -> bool:
    return run.status.finished or (run.status is MigrationRunStatus.CANCELLED and run.finished_at is not None)


def _seconds(delta_from: datetime | None, until: datetime | None = None) -> float:
    if delta_from is None:
        return 0.0
    return max(0.0, ((until or utcnow()) - delta_from).total_seconds())


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(run: MigrationRun, now: datetime | None = None) -> str:
    """`[#####.....] 12/30  ok 10  failed 1  skipped 1  running 4  3.2/s  ETA 0:06` for one run."""
    done = run.succeeded + run.failed + run.skipped
    total = run.total or 1
    filled = int(BAR_WIDTH * done / total)
    elapsed = _seconds(run.started_at, run.finished_at or now)
    migrated = run.succeeded + run.failed
    rate = migrated / elapsed if elapsed > 0 else 0.0
    remaining = run.pending + run.queued + run.running
    eta = _clock(remaining / rate) if rate > 0 and remaining else ("-" if remaining else "0:00")
    line = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{run.total}  ok {run.succeeded}  "
            f"failed {run.failed}  skipped {run.skipped}  running {run.running + run.queued}  "
            f"{rate:.1f}/s  ETA {eta}")
    if run.waves:
        line += f"  wave {run.current_wave + 1}/{len(run.waves)} {run.wave_status or ''}".rstrip()
    if run.stopping:
        line += "  (stopping: " + (run.error or "") + ")"
    elif run.status is MigrationRunStatus.CANCELLED and not _ended(run):
        line += "  (cancelled: waiting for running tenants)"
    return line


class _Progress:
    """One line rewritten in place on a terminal; on a pipe or file, a new line whenever it changes."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._last = ""

    def show(self, line: str) -> None:
        if line == self._last:
            return
        if self._tty:
            self._stream.write("\r\x1b[2K" + line)
        else:
            self._stream.write(line + "\n")
        self._stream.flush()
        self._last = line

    def announce(self, line: str) -> None:
        """A line of its own, above the progress line."""
        if self._tty and self._last:
            self._stream.write("\r\x1b[2K")
            self._last = ""
        self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._last:
            self._stream.write("\n")
            self._stream.flush()


def summary(detail: RunDetail, items: str = "problems") -> str:
    """The closing table: counts per status, then the items (all of them, or only those not succeeded)."""
    run = detail.run
    took = _seconds(run.started_at, run.finished_at)
    migrated = run.succeeded + run.failed
    lines = [f"migration run {run.id}: {run.status.value} in {took:.1f}s, {run.total} tenants to {run.target_revision}"
             + (f" ({migrated / took:.1f} tenants/s, peak concurrency {detail.peak_concurrency})" if took else "")]
    if run.error:
        lines.append(f"  {run.error}")
    lines.append("")
    lines.append(f"{'STATUS':<10} {'TENANTS':>7}")
    for status in RunItemStatus:
        lines.append(f"{status.value:<10} {getattr(run, status.value):>7}")
    lines.append(f"{'total':<10} {run.total:>7}")
    shown = detail.items if items == "all" else [
        item for item in detail.items if item.status is not RunItemStatus.SUCCEEDED] if items == "problems" else []
    if shown:
        lines.append("")
        lines.append(f"{'TENANT':<40} {'STATUS':<9} {'FROM':<30} {'TO':<30} {'TRIES':>5} {'SECONDS':>7}  DETAIL")
        for item in shown:
            seconds = f"{item.duration_seconds:.2f}" if item.duration_seconds is not None else ""
            detail_text = item.error or item.skip_reason or ("canary" if item.canary else "")
            lines.append(f"{item.tenant_id:<40} {item.status.value:<9} {item.from_revision or '-':<30} "
                         f"{item.to_revision or '-':<30} {item.attempts:>5} {seconds:>7}  {detail_text}")
    return "\n".join(lines)


def _as_json(detail: RunDetail) -> dict[str, Any]:
    from control_plane.api.migration_run_schemas import RunDetailSchema, RunDetailView

    return RunDetailSchema().dump(RunDetailView(detail))


def _print_run(ctx: ServiceContext, run_id: str) -> None:
    """The run with its per-tenant items, as the API shows it (--json)."""
    click.echo(json.dumps(_as_json(migration_runs.get_run(ctx, SYSTEM, run_id)), indent=2))


def _show_started(ctx: ServiceContext, run_id: str, follow: bool, items: str, as_json: bool) -> None:
    """After a command that starts or restarts a run: follow it, or print it (--json), or its id alone."""
    if follow:
        _follow(ctx, run_id, items, as_json)
    elif as_json:
        _print_run(ctx, run_id)
    else:
        click.echo(run_id)


def _follow(ctx: ServiceContext, run_id: str, items: str, as_json: bool = False) -> None:
    """Show the live progress line and each wave's changes until the run ends, then the summary; exit 1
    unless it succeeded."""
    progress = _Progress(sys.stderr)
    announcer = WaveAnnouncer()
    while True:
        # Here, and not only on the sweeper's minute: a pause that is over ends now, a gate left undone runs.
        migration_gates.proceed(ctx, run_id)
        detail = migration_runs.get_run(ctx, SYSTEM, run_id)
        for line in announcer.lines(_as_json(detail)):
            progress.announce(line)
        progress.show(progress_line(detail.run))
        if _ended(detail.run):
            break
        time.sleep(POLL_SECONDS)
    progress.close()
    _finish(detail, items, ctx if as_json else None)


def _finish(detail: RunDetail, items: str, json_from: ServiceContext | None = None) -> None:
    if json_from is not None:
        _print_run(json_from, detail.run.id)
    else:
        click.echo(summary(detail, items))
    if detail.run.status is not MigrationRunStatus.SUCCEEDED:
        sys.exit(1)


def _print_plan(run: MigrationRun) -> None:
    result: dict[str, Any] = run.result or {}
    for group in result.get("plan", []):
        click.echo(f"-- from {group['from_revision'] or 'base'} to {group['to_revision']}: "
                   f"{len(group['tenants'])} tenant(s): {', '.join(group['tenants'])}")
        if group.get("error"):
            click.echo(f"-- cannot render: {group['error']}")
        else:
            click.echo(group["sql"] or "-- nothing to do")
    for skipped in result.get("skipped", []):
        click.echo(f"-- skipped {skipped['tenant_id']}: {skipped['reason']}")


_WAVES = click.option("--waves", help="Staged waves as cumulative percents of the tenants, e.g. 1,10,100.")
_PAUSE = click.option("--pause", type=click.IntRange(0), help="Seconds to wait after each wave but the last.")
_MANUAL = click.option("--manual-pause", is_flag=True,
                       help="Wait after each wave but the last until `tenantctl migrations continue RUN`.")
_CHECK = click.option("--check", help="Health check after each wave: SQL that must return 0 on every migrated "
                                      "tenant (run read-only as the tenant's role).")
_CHECK_TIMEOUT = click.option("--check-timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 300),
                              help="Seconds the check may run on one tenant.")
_ROLLBACK_ON_FAILURE = click.option("--rollback-on-failure", is_flag=True,
                                    help="When a wave fails its budget or gate, roll back every tenant moved.")
# Like every command that starts work: --follow/--no-follow, or --wait/--no-wait (here not following is the default).
_FOLLOW = click.option("--follow/--no-follow", "--wait/--no-wait", "follow", default=False, show_default=True,
                       help="Show live progress, then a summary table; exit 1 unless it succeeded.")
_ITEMS = click.option("--items", type=click.Choice(["problems", "all", "none"]), default="problems", show_default=True,
                      help="Which tenants to list in the summary (problems: all but the succeeded).")


@click.group("migrations")
def migrations() -> None:
    """Bulk schema migrations across tenants, and schema drift."""


@migrations.command("run")
@click.option("--target", default="head", show_default=True, help="'head' or a tenant schema revision.")
@click.option("--tenant", "tenants", multiple=True, help="Only these tenants, in this order (repeat).")
@click.option("--status", "statuses", multiple=True, type=click.Choice([s.value for s in TenantStatus]),
              help="Only tenants in these statuses (non-active ones are recorded as skipped).")
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, migration_runs.MAX_CONCURRENCY))
@click.option("--canary", default=0, show_default=True, type=click.IntRange(0),
              help="The first N tenants go first and must all succeed before the rest start.")
@click.option("--max-failures", default=0, show_default=True, type=click.IntRange(0),
              help="Stop starting tenants once more than this many failed.")
@click.option("--backup-first/--no-backup-first", default=None,
              help="Back each tenant up before migrating it (default: when the run crosses a destructive revision).")
@click.option("--dry-run", is_flag=True, help="Print the SQL per starting revision; touch no tenant.")
@click.option("--lock-timeout", default=5.0, show_default=True, type=click.FloatRange(0.01),
              help="Seconds a migration statement may wait for a lock in the tenant database.")
@click.option("--statement-timeout", default=600.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds any one migration statement may run.")
@_WAVES
@_PAUSE
@_MANUAL
@_CHECK
@_CHECK_TIMEOUT
@_ROLLBACK_ON_FAILURE
@_FOLLOW
@_ITEMS
@json_option
def run_command(target: str, tenants: tuple[str, ...], statuses: tuple[str, ...], concurrency: int, canary: int,
                max_failures: int, backup_first: bool | None, dry_run: bool, lock_timeout: float, statement_timeout: float,
                waves: str | None, pause: int | None, manual_pause: bool, check: str | None, check_timeout: float,
                rollback_on_failure: bool, follow: bool, items: str, as_json: bool) -> None:
    """Bring every tenant (or a selection) to TARGET, CONCURRENCY at a time, in waves if asked."""
    ctx = _context()
    body = waves_body(waves, pause, manual_pause, max_failures)
    request = RunRequest(target=target, tenants=tenants or None,
                         statuses=tuple(TenantStatus(s) for s in statuses) or None, concurrency=concurrency,
                         canary=canary, max_failures=max_failures, backup_first=backup_first, dry_run=dry_run,
                         lock_timeout_seconds=lock_timeout, statement_timeout_seconds=statement_timeout,
                         waves=tuple(Wave.from_dict(w) for w in body) if body is not None else None, check=check,
                         check_timeout_seconds=check_timeout, rollback_on_failure=rollback_on_failure)
    try:
        run = migration_runs.request_run(ctx, SYSTEM, request)
    except ValidationError as exc:
        raise click.UsageError(exc.detail) from None
    if dry_run:
        if as_json:
            from control_plane.api.migration_run_schemas import RunSchema

            click.echo(json.dumps(RunSchema().dump(run), indent=2))
        else:
            _print_plan(run)
        return
    click.echo(f"migration run {run.id}: {run.total} tenants to {run.target_revision} "
               f"(concurrency {run.concurrency}, canary {run.canary}, max failures {run.max_failures}"
               + (f", {len(run.waves)} waves" if run.waves else "") + ")", err=True)
    _show_started(ctx, run.id, follow, items, as_json)


@migrations.command("status")
@click.argument("run_id")
@click.option("--follow", is_flag=True, help="Watch it until it ends.")
@json_option
@_ITEMS
def status_command(run_id: str, follow: bool, as_json: bool, items: str) -> None:
    """A run's counts and tenants."""
    ctx = _context()
    if follow:
        _follow(ctx, run_id, items, as_json)
        return
    if as_json:
        _print_run(ctx, run_id)
        return
    detail = migration_runs.get_run(ctx, SYSTEM, run_id)
    click.echo(progress_line(detail.run))
    if detail.run.waves:
        shown = _as_json(detail)
        for wave in shown["wave_progress"]:
            click.echo(wave_line(shown, wave))
    click.echo(summary(detail, items))


@migrations.command("list")
@click.option("--status", type=click.Choice([s.value for s in MigrationRunStatus]))
@click.option("--limit", default=20, show_default=True)
@json_option
def list_command(status: str | None, limit: int, as_json: bool) -> None:
    """Recent runs, newest first."""
    runs, total = migration_runs.list_runs(_context(), SYSTEM, status=MigrationRunStatus(status) if status else None,
                                           limit=limit)
    if as_json:
        from control_plane.api.migration_run_schemas import RunSchema

        click.echo(json.dumps(RunSchema(many=True).dump(runs), indent=2))
        return
    click.echo(f"{'RUN':<36} {'STATUS':<9} {'TARGET':<30} {'DONE':>9} {'FAILED':>6}  CREATED")
    for run in runs:
        done = run.succeeded + run.failed + run.skipped
        click.echo(f"{run.id:<36} {run.status.value:<9} {run.target_revision:<30} {f'{done}/{run.total}':>9} "
                   f"{run.failed:>6}  {run.created_at:%Y-%m-%d %H:%M:%S}")
    click.echo(f"{total} runs", err=True)


@migrations.command("resume")
@click.argument("run_id")
@_FOLLOW
@_ITEMS
@json_option
def resume_command(run_id: str, follow: bool, items: str, as_json: bool) -> None:
    """Re-queue a run's failed and pending tenants (and those whose worker died)."""
    ctx = _context()
    run = migration_runs.resume_run(ctx, SYSTEM, run_id)
    click.echo(f"migration run {run.id} resumed: {run.pending + run.queued} tenants to go", err=True)
    _show_started(ctx, run.id, follow, items, as_json)


@migrations.command("continue")
@click.argument("run_id")
@_FOLLOW
@_ITEMS
@json_option
def continue_command(run_id: str, follow: bool, items: str, as_json: bool) -> None:
    """End the pause after the current wave now: the next wave starts."""
    ctx = _context()
    run = migration_runs.continue_run(ctx, SYSTEM, run_id)
    click.echo(f"migration run {run.id}: wave {run.current_wave + 1} of {len(run.waves or [None])} started", err=True)
    _show_started(ctx, run.id, follow, items, as_json)


@migrations.command("rollback")
@click.argument("run_id")
@_FOLLOW
@_ITEMS
@json_option
def rollback_command(run_id: str, follow: bool, items: str, as_json: bool) -> None:
    """Bring every tenant a failed or cancelled run moved back to its starting revision (a rollback run)."""
    ctx = _context()
    rollback = migration_runs.rollback_run(ctx, SYSTEM, run_id)
    click.echo(f"rollback run {rollback.id} of {run_id}: {rollback.total} tenant(s) to bring back", err=True)
    _show_started(ctx, rollback.id, follow, items, as_json)


@migrations.command("cancel")
@click.argument("run_id")
@json_option
def cancel_command(run_id: str, as_json: bool) -> None:
    """Start no new tenant; those being migrated finish."""
    ctx = _context()
    run = migration_runs.cancel_run(ctx, SYSTEM, run_id)
    if as_json:
        _print_run(ctx, run.id)
    else:
        click.echo(f"migration run {run.id} cancelled; {run.running} tenant(s) still finishing")


@migrations.command("drift")
@click.option("--check", is_flag=True, help="Exit 1 when any tenant drifted.")
@click.option("--json", "as_json", is_flag=True)
def drift_command(check: bool, as_json: bool) -> None:
    """Tenants whose database revision differs from the catalog or from head, or is unknown."""
    report = schema_drift.drift_report(_context(), SYSTEM)
    if as_json:
        from control_plane.api.migration_run_schemas import DriftSchema

        click.echo(json.dumps(DriftSchema().dump(report), indent=2))
    else:
        click.echo(f"head {report['head']}: {report['in_sync']} of {report['checked']} tenants in sync")
        click.echo("by revision: " + ", ".join(f"{rev} {n}" for rev, n in sorted(report["by_revision"].items())))
        if report["drifted"]:
            click.echo(f"{'TENANT':<40} {'STATUS':<10} {'CATALOG':<30} {'DATABASE':<30} PROBLEMS")
            for entry in report["drifted"]:
                problems = ", ".join(entry.problems) + (f" ({entry.error})" if entry.error else "")
                click.echo(f"{entry.tenant_id:<40} {entry.status:<10} {entry.catalog_revision or '-':<30} "
                           f"{entry.database_revision or '-':<30} {problems}")
    if check and report["drifted"]:
        sys.exit(1)
