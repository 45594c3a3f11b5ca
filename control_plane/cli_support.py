"""What every tenantctl command shares: building the service context, following an operation."""
from __future__ import annotations

import json
import time

import click

from control_plane.bootstrap import build_context
from control_plane.catalog.models import OperationStatus
from control_plane.services import operations, servers
from control_plane.services.auth import SYSTEM
from control_plane.services.context import ServiceContext
from control_plane.settings import Settings


def context() -> ServiceContext:
    ctx = build_context(Settings.from_env(), pool_size=1)
    servers.ensure_default_server(ctx)
    return ctx


def follow(ctx: ServiceContext, operation_id: str, expect: OperationStatus = OperationStatus.SUCCEEDED) -> None:
    """Print the operation's progress until it finishes; exit 1 if it did not end as `expect`ed."""
    last = None
    while True:
        op = operations.get_operation(ctx, SYSTEM, operation_id)
        line = f"{op.status.value:<9} {op.progress:>3}%  {op.step or ''}"
        if line != last:
            click.echo(line, err=True)
            last = line
        if op.status.finished:
            break
        time.sleep(0.5)  # a human-facing poll, not synchronisation
    if op.result:
        click.echo(json.dumps(op.result, indent=2))
    if op.status is not expect:
        raise click.ClickException(op.error or f"operation {op.status.value}")


def started(ctx: ServiceContext, op, wait: bool) -> None:
    click.echo(f"operation {op.id} ({op.kind.value}) {op.status.value}", err=True)
    if wait:
        follow(ctx, op.id)
    else:
        click.echo(op.id)
