"""`tenantctl runtime ...`: the credentials a tenant application's runtime gets (README, Security model)."""
from __future__ import annotations

import click

from control_plane.cli_support import context
from control_plane.services import runtime_access
from control_plane.services.auth import SYSTEM


@click.group("runtime")
def runtime_group() -> None:
    """Least-privilege access for tenant applications (tenant_runtime)."""


@runtime_group.command("grant")
@click.argument("role")
def runtime_grant(role: str) -> None:
    """Let catalog role ROLE (create it first, with LOGIN) read what the runtime reads, and nothing else."""
    for statement in runtime_access.grant_catalog_role(context(), SYSTEM, role):
        click.echo(statement)


@runtime_group.command("events-user")
@click.argument("name")
@click.option("--password-file", type=click.File(), required=True,
              help="A file holding the user's password (keeps it out of shell history).")
def runtime_events_user(name: str, password_file) -> None:
    """Create (or reset) Redis user NAME: it may SUBSCRIBE to the change-events channel and nothing else."""
    runtime_access.create_events_user(context(), SYSTEM, name, password_file.read().strip())
    click.echo(f"Redis user {name} may subscribe to the tenant events channel only")
