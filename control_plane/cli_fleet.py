"""`tenantctl fleet reconcile`: the reconcile report, and its repairs with --apply."""
from __future__ import annotations

import json

import click

from control_plane.cli_output import json_option
from control_plane.cli_support import context
from control_plane.services import reconcile
from control_plane.services.auth import SYSTEM


@click.command("reconcile")
@click.option("--apply", "apply_repairs", is_flag=True, help="Repair what is safe (default: report only).")
@json_option
def reconcile_command(apply_repairs: bool, as_json: bool) -> None:
    """Orphans, missing databases, leftovers past grace and drift on every server; --apply repairs."""
    report = reconcile.reconcile(context(), SYSTEM, apply=apply_repairs)
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
        return
    for name, found in report["servers"].items():
        if "error" in found:
            click.echo(f"{name}: unreachable ({found['error']})")
            continue
        click.echo(f"{name}: {len(found['orphan_databases'])} orphan databases, {len(found['orphan_roles'])} orphan "
                   f"roles, {len(found['missing'])} missing, {len(found['leftovers'])} leftovers")
        for item in found["orphan_databases"] + found["orphan_roles"]:
            click.echo(f"  orphan {item['name']}")
        for item in found["missing"]:
            click.echo(f"  missing {item['tenant_id']}: {', '.join(item['lacks'])}")
        for item in found["leftovers"]:
            click.echo(f"  leftover {item['kind']} {item['name']}")
        for line in found.get("repaired", []):
            click.echo(f"  repaired: {line}")
    click.echo(f"drift: {len(report.get('drift', []))} tenants" + ("" if report["dry_run"] else " (report only)"))
