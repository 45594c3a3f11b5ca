"""`tenantctl runtime ...`: the credentials a tenant application's runtime gets (README, Security model)."""
from __future__ import annotations

import json

import click

from control_plane.cli_output import json_option
from control_plane.cli_support import context
from control_plane.services import runtime_access
from control_plane.services.auth import SYSTEM


@click.group("runtime")
def runtime_group() -> None:
    """Least-privilege access for tenant applications (tenant_runtime)."""


@runtime_group.command("grant")
@click.argument("role")
@json_option
def runtime_grant(role: str, as_json: bool) -> None:
    """Let catalog role ROLE (create it first, with LOGIN) read what the runtime reads, and nothing else;
    prints the statements it ran."""
    statements = list(runtime_access.grant_catalog_role(context(), SYSTEM, role))
    click.echo(json.dumps(statements, indent=2) if as_json else "\n".join(statements))


@runtime_group.command("events-user")
@click.argument("name")
@click.option("--password-file", type=click.File(), required=True,
              help="A file holding the user's password (keeps it out of shell history).")
def runtime_events_user(name: str, password_file) -> None:
    """Create (or reset) Redis user NAME: it may SUBSCRIBE to the change-events channel and nothing else."""
    runtime_access.create_events_user(context(), SYSTEM, name, password_file.read().strip())
    click.echo(f"Redis user {name} may subscribe to the tenant events channel only")
