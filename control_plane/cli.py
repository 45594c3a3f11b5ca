"""`tenantctl`: the processes (serve, worker) and everything the API does, from a terminal."""
from __future__ import annotations

import json
import os
import sys
import time

import click
from marshmallow import ValidationError as MarshmallowValidationError

from control_plane.cli_access import audit_command, tokens_group
from control_plane.cli_backups import backups_group, keys_group, scheduler_command
from control_plane.cli_migrations import migrations as migrations_group
from control_plane.cli_recovery import (catalog_backup, catalog_backups_list, catalog_restore, drills_group,
                                        fleet_group)
from control_plane.cli_examples import add_examples
from control_plane.cli_fleet import reconcile_command
from control_plane.cli_plans import plans_group
from control_plane.cli_runtime import runtime_group
from control_plane.cli_output import (EXIT_BY_STATUS, EXIT_FAILED, EXIT_USAGE, CommandError, json_option,
                                     wait_option)
from control_plane.cli_support import context, follow, started
from control_plane.catalog.db import create_catalog_engine, upgrade_catalog
from control_plane.catalog.models import OperationStatus, TenantStatus
from control_plane.errors import ControlPlaneError
from control_plane.logs import configure_logging
from control_plane.services import drains, operations, servers, tenants
from control_plane.services.auth import SYSTEM
from control_plane.services.kinds import delete, migrate, move, provision, undelete
from control_plane.settings import Settings


PROCESSES = ("serve", "worker", "scheduler")
CLI_EPILOG = """\b
Exit codes: 0 ok, 1 the operation failed, 2 usage or invalid input, 3 not found, 4 conflict or busy.
Shell completion (bash): eval "$(_TENANTCTL_COMPLETE=bash_source tenantctl)"  (zsh_source, fish_source)
"""


class TenantctlGroup(click.Group):
    """The root group: the project's errors end the command with the exit code their HTTP status maps to
    (the same codes as in API mode), whichever subcommand raised them."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ControlPlaneError as exc:
            raise CommandError(exc.detail, EXIT_BY_STATUS.get(getattr(exc, "status", 500), EXIT_FAILED)) from None
        except MarshmallowValidationError as exc:
            raise CommandError(str(exc.messages), EXIT_USAGE) from None


@click.group(cls=TenantctlGroup, epilog=CLI_EPILOG)
@click.version_option(package_name="tenant-control-plane", prog_name="tenantctl")
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """Operate the database-per-tenant control plane.

    With TENANTCTL_API_URL and TENANTCTL_TOKEN set, every tenant, operation, backup, drill, migration,
    server, fleet, queue, token (list, revoke), plan and audit command goes through the HTTP API (no catalog
    access or KEYRING needed); serve, worker, scheduler, catalog and tokens create always run locally.
    """
    # The long-running processes (serve, worker, scheduler) log at INFO; other commands only warn.
    process = click.get_current_context().invoked_subcommand in PROCESSES
    try:
        configure_logging("INFO" if verbose or process else "WARNING")
    except ControlPlaneError as exc:
        raise click.UsageError(exc.detail) from exc


@cli.group()
def catalog() -> None:
    """The catalog database."""


@catalog.command("upgrade")
def catalog_upgrade() -> None:
    """Bring the catalog schema to head and register the default database server."""
    settings = Settings.from_env()
    engine = create_catalog_engine(settings.catalog_database_url)
    try:
        upgrade_catalog(engine)
    finally:
        engine.dispose()
    context()  # registers the default server
    click.echo("catalog is at head", err=True)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=2, show_default=True, type=int)
def serve(host: str, port: int, workers: int) -> None:
    """Serve the API with gunicorn (each gunicorn worker builds its own app after the fork)."""
    from gunicorn.app.base import BaseApplication

    from control_plane.gunicorn_conf import access_log_format as ACCESS_LOG_FORMAT

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("accesslog", "-")
            self.cfg.set("access_log_format", ACCESS_LOG_FORMAT)
            self.cfg.set("logger_class", "control_plane.logs.GunicornLogger")
            # gunicorn's control socket is one path per OS user ($HOME/.gunicorn/gunicorn.ctl): a second
            # `serve` on the host (a dev stack beside a test run) would take it over and remove it on exit.
            self.cfg.set("control_socket_disable", True)

        def load(self):
            from control_plane.app import create_app

            return create_app()

    _Gunicorn().run()


@cli.command()
@click.option("--burst", is_flag=True, help="Exit when the queue is empty.")
def worker(burst: bool) -> None:
    """Run an RQ worker on the project's queue."""
    from control_plane.jobs.worker import run_worker

    run_worker(Settings.from_env(), burst=burst)


@cli.group("tenants")
def tenants_group() -> None:
    """Tenants."""


@tenants_group.command("create")
@click.argument("tenant_id")
@click.option("--name", required=True)
@click.option("--admin-email", required=True)
@click.option("--domain", "domains", multiple=True)
@click.option("--plan", default="standard", show_default=True)
@wait_option(help="Follow the provisioning.")
@json_option
def tenants_create(tenant_id: str, name: str, admin_email: str, domains: tuple[str, ...], plan: str, wait: bool,
                   as_json: bool) -> None:
    """Create a tenant and provision its database (follows the provisioning unless --no-wait)."""
    from control_plane.api.schemas import TenantCreateSchema

    body = TenantCreateSchema().load({"id": tenant_id, "name": name, "admin_email": admin_email,
                                      "domains": list(domains), "plan": plan})
    ctx = context()
    started(ctx, provision.request_tenant(ctx, SYSTEM, tenant_id=body.pop("id"), **body), wait, as_json)


@tenants_group.command("list")
@click.option("--status", type=click.Choice([s.value for s in TenantStatus]))
@click.option("--server")
@click.option("-q", "query")
@click.option("--backup-stale", is_flag=True, default=None, help="Only tenants whose newest backup is older than their RPO.")
@json_option
def tenants_list(status: str | None, server: str | None, query: str | None, backup_stale: bool | None,
                 as_json: bool) -> None:
    """List tenants (filter by status, server, a search -q over id, name and domains, or RPO)."""
    items, total = tenants.list_tenants(context(), SYSTEM, status=TenantStatus(status) if status else None,
                                        server=server, q=query, backup_stale=backup_stale, limit=10_000)
    if as_json:
        from control_plane.api.schemas import TenantSchema

        click.echo(json.dumps(TenantSchema(many=True).dump(items), indent=2, default=str))
        return
    click.echo(f"{'ID':<40} {'STATUS':<13} {'SERVER':<12} REVISION")
    for t in items:
        click.echo(f"{t.id:<40} {t.status.value:<13} {t.server_name or '-':<12} {t.schema_revision or '-'}")
    click.echo(f"{total} tenants", err=True)


@tenants_group.command("show")
@click.argument("tenant_id")
@json_option
def tenants_show(tenant_id: str, as_json: bool) -> None:
    """One tenant, as JSON (with or without --json)."""
    from control_plane.api.schemas import TenantSchema

    click.echo(json.dumps(TenantSchema().dump(tenants.get_tenant(context(), SYSTEM, tenant_id)), indent=2))


def _print_tenant(tenant, as_json: bool) -> None:
    """Its new status, or with --json the whole tenant."""
    from control_plane.api.schemas import TenantSchema

    click.echo(json.dumps(TenantSchema().dump(tenant), indent=2, default=str) if as_json else tenant.status.value)


@tenants_group.command("suspend")
@click.argument("tenant_id")
@json_option
def tenants_suspend(tenant_id: str, as_json: bool) -> None:
    """Suspend a tenant: tenant runtimes refuse its requests."""
    _print_tenant(tenants.suspend_tenant(context(), SYSTEM, tenant_id), as_json)


@tenants_group.command("resume")
@click.argument("tenant_id")
@json_option
def tenants_resume(tenant_id: str, as_json: bool) -> None:
    """Resume a suspended tenant."""
    _print_tenant(tenants.resume_tenant(context(), SYSTEM, tenant_id), as_json)


@tenants_group.command("migrate")
@click.argument("tenant_id")
@click.option("--target", default="head", show_default=True)
@wait_option()
@json_option
def tenants_migrate(tenant_id: str, target: str, wait: bool, as_json: bool) -> None:
    """Bring a tenant's schema to head or to a given revision."""
    ctx = context()
    started(ctx, migrate.request_migration(ctx, SYSTEM, tenant_id, target), wait, as_json)


@tenants_group.command("move")
@click.argument("tenant_id")
@click.option("--to", "server", required=True, help="The database server to move the tenant's database to.")
@click.option("--offline", is_flag=True, help="pg_dump | pg_restore while the tenant is held (no replication).")
@click.option("--online", is_flag=True, help="Refuse unless an online move (logical replication) is possible.")
@wait_option()
@json_option
def tenants_move(tenant_id: str, server: str, offline: bool, online: bool, wait: bool, as_json: bool) -> None:
    """Move a tenant to another server; without --online/--offline, online where the servers allow it."""
    if offline and online:
        raise click.UsageError("--online and --offline exclude each other")
    ctx = context()
    mode = "offline" if offline else "online" if online else None
    started(ctx, move.request_move(ctx, SYSTEM, tenant_id, server=server, mode=mode), wait, as_json)


@tenants_group.command("delete")
@click.argument("tenant_id")
@click.option("--final-backup/--no-final-backup", default=True, show_default=True)
@click.option("--purge", is_flag=True, help="Also destroy the tenant's backup key and delete its backups.")
@wait_option()
@click.confirmation_option(prompt="Delete the tenant (its database kept for the grace period; with --purge, "
                                  "dropped at once)?")
@json_option
def tenants_delete(tenant_id: str, final_backup: bool, purge: bool, wait: bool, as_json: bool) -> None:
    """Delete a tenant: final backup (unless --no-final-backup), then retire its database for
    DELETED_TENANT_GRACE_DAYS (`tenants undelete` brings it back); --purge drops everything at once."""
    ctx = context()
    started(ctx, delete.request_deletion(ctx, SYSTEM, tenant_id, final_backup=final_backup, purge=purge), wait,
            as_json)


@tenants_group.command("undelete")
@click.argument("tenant_id")
@wait_option()
@json_option
def tenants_undelete(tenant_id: str, wait: bool, as_json: bool) -> None:
    """Bring a deleted tenant back within its grace period: same id and data, its previous status and domains
    (its revoked tokens stay revoked)."""
    ctx = context()
    started(ctx, undelete.request_undelete(ctx, SYSTEM, tenant_id), wait, as_json)


@cli.group("operations")
def operations_group() -> None:
    """Asynchronous operations."""


@operations_group.command("show")
@click.argument("operation_id")
@click.option("--follow", "follow_progress", is_flag=True, help="Show progress until it finishes.")
@json_option
def operations_show(operation_id: str, follow_progress: bool, as_json: bool) -> None:
    """One operation, as JSON; --follow shows its progress until it ends (then its result, or with --json the
    operation)."""
    from control_plane.api.schemas import OperationSchema

    ctx = context()
    if follow_progress:
        follow(ctx, operation_id, as_json=as_json)
    else:
        click.echo(json.dumps(OperationSchema().dump(operations.get_operation(ctx, SYSTEM, operation_id)), indent=2))


@operations_group.command("retry")
@click.argument("operation_id")
@wait_option()
@json_option
def operations_retry(operation_id: str, wait: bool, as_json: bool) -> None:
    """Run a failed operation again; its steps resume where they stopped."""
    ctx = context()
    started(ctx, operations.retry_operation(ctx, SYSTEM, operation_id), wait, as_json)


@operations_group.command("cancel")
@click.argument("operation_id")
@wait_option(help="Follow it until it has stopped.")
@json_option
def operations_cancel(operation_id: str, wait: bool, as_json: bool) -> None:
    """Cancel a queued operation at once, a running one at its next safe step (undoing what it started)."""
    ctx = context()
    op = operations.cancel_operation(ctx, SYSTEM, operation_id)
    click.echo(f"operation {op.id} ({op.kind.value}) {op.status.value}", err=True)
    if wait:
        follow(ctx, op.id, expect=OperationStatus.CANCELLED, as_json=as_json)
    elif as_json:
        from control_plane.api.schemas import OperationSchema

        click.echo(json.dumps(OperationSchema().dump(op), indent=2))


@operations_group.command("sweep")
@json_option
def operations_sweep(as_json: bool) -> None:
    """What the scheduler does every minute: re-dispatch lost operations, fail and retry abandoned ones."""
    from control_plane.services.sweeper import sweep

    click.echo(json.dumps(sweep(context()).as_dict(), indent=2))


@cli.group("servers")
def servers_group() -> None:
    """Tenant database servers."""


def _server_view(server, count: int) -> dict:
    from control_plane.api.schemas import ServerSchema

    schema = ServerSchema()  # what GET /v1/servers shows (never the admin URL)
    return schema.dump({**{name: getattr(server, name, None) for name in schema.fields}, "status": server.health,
                        "tenants": count, "headroom": round(servers.headroom(server, count), 4)})


@servers_group.command("list")
@json_option
def servers_list(as_json: bool) -> None:
    """Tenant database servers with their status and tenant count."""
    found = servers.list_servers(context())
    if as_json:
        click.echo(json.dumps([_server_view(server, count) for server, count in found], indent=2))
        return
    for server, count in found:
        load = f"{server.connections}/{server.max_connections} connections" if server.max_connections else "not checked"
        click.echo(f"{server.name:<20} {server.host}:{server.port:<6} {server.health:<11} {count} tenants, {load}, "
                   f"headroom {servers.headroom(server, count):.2f}")


@servers_group.command("add")
@click.argument("name")
@click.option("--admin-url-file", type=click.File(), required=True,
              help="A file holding the admin URL (keeps the password out of shell history).")
@click.option("--max-tenants", type=int)
@json_option
def servers_add(name: str, admin_url_file, max_tenants: int | None, as_json: bool) -> None:
    """Register a tenant database server (its admin URL read from a file)."""
    server = servers.register_server(context(), SYSTEM.actor, name, admin_url_file.read().strip(), max_tenants)
    if as_json:
        click.echo(json.dumps(_server_view(server, 0), indent=2))
    else:
        click.echo(f"registered {server.name} at {server.host}:{server.port}")


@servers_group.command("set-url")
@click.argument("name")
@click.option("--admin-url-file", type=click.File(), required=True,
              help="A file holding the new admin URL (keeps the password out of shell history).")
@json_option
def servers_set_url(name: str, admin_url_file, as_json: bool) -> None:
    """Change a registered server's admin URL (TENANT_DB_ADMIN_URL is applied only on first registration)."""
    server = servers.replace_server(context(), SYSTEM.actor, name, admin_url_file.read().strip())
    if as_json:
        click.echo(json.dumps(_server_view(*servers.get_server(context(), name)), indent=2))
    else:
        click.echo(f"{server.name} now at {server.host}:{server.port}")


@servers_group.command("drain")
@click.argument("name")
@click.option("--undo", is_flag=True, help="Take new tenants again.")
@click.option("--no-move", is_flag=True, help="Only stop placing new tenants on it; its tenants stay.")
@click.option("--concurrency", type=click.IntRange(1, 50), default=3, show_default=True)
@click.option("--mode", type=click.Choice(["online", "offline"]), help="Default: each move chooses.")
@click.option("--follow/--no-follow", default=True, show_default=True, help="Show progress until the run ends.")
@json_option
def servers_drain(name: str, undo: bool, no_move: bool, concurrency: int, mode: str | None, follow: bool,
                  as_json: bool) -> None:
    """Move every tenant off a server (a run: see `servers drain-status`), and place none there."""
    ctx = context()
    if undo or no_move:
        server = servers.set_draining(ctx, SYSTEM.actor, name, not undo)
        click.echo(json.dumps(_server_view(*servers.get_server(ctx, name)), indent=2) if as_json
                   else server.status.value)
        return
    run = drains.start_drain(ctx, SYSTEM, name, concurrency=concurrency, mode=mode)
    click.echo(f"drain run {run.id}: {run.counts()['total']} tenants", err=True)
    if follow:
        _follow_drain(ctx, run.id, as_json)
    elif as_json:
        _print_drain(ctx, run.id)
    else:
        click.echo(run.id)


@servers_group.command("drain-status")
@click.argument("run_id")
@click.option("--follow", is_flag=True, help="Show progress until the run ends.")
@json_option
def servers_drain_status(run_id: str, follow: bool, as_json: bool) -> None:
    """A drain run's progress (with --json, the run with its per-tenant items)."""
    ctx = context()
    if follow:
        _follow_drain(ctx, run_id, as_json)
        return
    if as_json:
        _print_drain(ctx, run_id)
        return
    run = drains.get_drain(ctx, SYSTEM, run_id)
    click.echo(json.dumps({"status": run.status.value, **run.counts()}))


def _print_drain(ctx, run_id: str) -> None:
    from control_plane.api.schemas import DrainRunSchema

    click.echo(json.dumps(DrainRunSchema().dump(drains.get_drain(ctx, SYSTEM, run_id)), indent=2))


def _follow_drain(ctx, run_id: str, as_json: bool = False) -> None:
    last = None
    while True:
        run = drains.get_drain(ctx, SYSTEM, run_id)
        counts = run.counts()
        line = (f"{run.status.value:<9} moved {counts['moved']}/{counts['total']}, moving {counts['moving']}, "
                f"failed {counts['failed']}, skipped {counts['skipped']}")
        if line != last:
            click.echo(line, err=True)
            last = line
        if run.status.value != "running":
            break
        time.sleep(0.5)  # a human-facing poll, not synchronisation
    for item in run.items:
        if item.status.value == "failed":
            click.echo(f"  {item.tenant_id}: {item.error}", err=True)
    if as_json:
        _print_drain(ctx, run_id)
    if run.status.value != "succeeded":
        raise click.ClickException(run.error or f"drain {run.status.value}")


for feature_group in (tokens_group, audit_command, plans_group, runtime_group, backups_group, keys_group, scheduler_command,
                      migrations_group, fleet_group, drills_group):
    cli.add_command(feature_group)
fleet_group.add_command(reconcile_command)
for catalog_command in (catalog_backup, catalog_backups_list, catalog_restore):
    catalog.add_command(catalog_command)
add_examples(cli)


def main() -> None:
    try:
        if os.environ.get("TENANTCTL_API_URL"):
            from control_plane.cli_api import build_api_cli

            build_api_cli(cli)(standalone_mode=True, prog_name="tenantctl")
        cli(standalone_mode=True)
    except ControlPlaneError as exc:  # local mode: the exit code the API's status maps to, as in API mode
        click.echo(f"error: {exc.detail}", err=True)
        sys.exit(EXIT_BY_STATUS.get(getattr(exc, "status", 500), EXIT_FAILED))
    except MarshmallowValidationError as exc:
        click.echo(f"error: {exc.messages}", err=True)
        sys.exit(EXIT_USAGE)


if __name__ == "__main__":
    main()
