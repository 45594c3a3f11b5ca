"""`tenantctl plans ...`: plans and their per-tenant limits."""
from __future__ import annotations

import json

import click

from control_plane.api.plans import PlanCreateSchema, PlanLimitsSchema, PlanSchema
from control_plane.cli_output import json_option
from control_plane.cli_support import context
from control_plane.services import plans
from control_plane.services.auth import SYSTEM


def _limit_options(command):
    for option in reversed((
        click.option("--description"),
        click.option("--connection-limit", type=int, help="sessions of the tenant's role on its server"),
        click.option("--statement-timeout-ms", type=int),
        click.option("--idle-in-transaction-timeout-ms", type=int),
        click.option("--storage-quota-bytes", type=int),
        click.option("--backup-rpo-hours", type=int),
    )):
        command = option(command)
    return command


def _given(values: dict) -> dict:
    return {key: value for key, value in values.items() if value is not None}


def _validated(schema, body: dict) -> dict:
    from marshmallow import ValidationError as SchemaError

    try:
        return schema.load(body)
    except SchemaError as exc:
        raise click.UsageError("; ".join(f"{k}: {' '.join(v)}" for k, v in exc.messages.items())) from None


@click.group("plans")
def plans_group() -> None:
    """Plans: per-tenant limits applied to each tenant's database role."""


@plans_group.command("list")
@json_option
def plans_list(as_json: bool) -> None:
    """Plans and their per-tenant limits."""
    rows = PlanSchema(many=True).dump(plans.list_plans(context(), SYSTEM))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        limits = " ".join(f"{k}={row[k]}" for k in plans.LIMIT_FIELDS if k != "description" and row.get(k) is not None)
        click.echo(f"{row['name']:<20} {limits or 'no limits'}")


@plans_group.command("create")
@click.argument("name")
@_limit_options
@json_option
def plans_create(name: str, as_json: bool, **limits) -> None:
    """Create a plan with the given limits."""
    body = _validated(PlanCreateSchema(), {"name": name, **_given(limits)})
    plan = plans.create_plan(context(), SYSTEM, body.pop("name"), **body)
    click.echo(json.dumps(PlanSchema().dump(plan), indent=2) if as_json else f"created plan {plan.name}")


@plans_group.command("set")
@click.argument("name")
@_limit_options
@click.option("--unset", multiple=True, type=click.Choice([f for f in plans.LIMIT_FIELDS]),
              help="remove a limit (repeatable)")
@json_option
def plans_set(name: str, unset: tuple[str, ...], as_json: bool, **limits) -> None:
    """Change a plan's limits; the roles of its tenants are updated at once."""
    body = _validated(PlanLimitsSchema(), {**_given(limits), **{field: None for field in unset}})
    plan = plans.update_plan(context(), SYSTEM, name, **body)
    click.echo(json.dumps(PlanSchema().dump(plan), indent=2) if as_json else f"updated plan {name}")


@plans_group.command("apply")
@click.argument("name")
@json_option
def plans_apply(name: str, as_json: bool) -> None:
    """Apply a plan's limits again to all its tenants (after a server was unreachable)."""
    plans.get_plan(context(), SYSTEM, name)
    applied = plans.apply_plan(context(), name)
    click.echo(json.dumps({"plan": name, "tenants": applied}) if as_json else f"applied to {applied} tenants")
