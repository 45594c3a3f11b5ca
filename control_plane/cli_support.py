"""What every tenantctl command shares: building the service context, following an operation."""
from __future__ import annotations

import json

import click

from control_plane.bootstrap import build_context
from control_plane.cli_output import follow_bar
from control_plane.catalog.models import OperationStatus
from control_plane.services import operations, servers
from control_plane.services.auth import SYSTEM
from control_plane.services.context import ServiceContext
from control_plane.settings import Settings


def context() -> ServiceContext:
    ctx = build_context(Settings.from_env(), pool_size=1)
    servers.ensure_default_server(ctx)
    return ctx


def follow(ctx: ServiceContext, operation_id: str, expect: OperationStatus = OperationStatus.SUCCEEDED,
           as_json: bool = False, first: dict | None = None) -> None:
    """A progress bar (percent, bytes, step, ETA) on stderr until the operation finishes; then its result (or,
    with `as_json`, the whole operation) on stdout; exit 1 if it did not end as `expect`ed."""
    from control_plane.api.schemas import OperationSchema

    def fetch(op_id: str) -> dict:
        return OperationSchema().dump(operations.get_operation(ctx, SYSTEM, op_id))

    op = follow_bar(first or fetch(operation_id), fetch)
    if as_json:
        click.echo(json.dumps(op, indent=2))
    elif op["result"]:
        click.echo(json.dumps(op["result"], indent=2))
    if op["status"] != expect.value:
        raise click.ClickException(op["error"] or f"operation {op['status']}")


def started(ctx: ServiceContext, op, wait: bool, as_json: bool = False) -> None:
    """Work was requested: follow it (`wait`), else print its id (with `as_json`, the operation)."""
    from control_plane.api.schemas import OperationSchema

    click.echo(f"operation {op.id} ({op.kind.value}) {op.status.value}", err=True)
    if op.status.finished:  # finished within the request (a warm provisioning): its result, shown only once, now
        follow(ctx, op.id, as_json=as_json, first=OperationSchema().dump(op))
    elif wait:
        follow(ctx, op.id, as_json=as_json)
    elif as_json:
        click.echo(json.dumps(OperationSchema().dump(op), indent=2))
    else:
        click.echo(op.id)
