"""`tenantctl tokens ...` and `tenantctl audit`: API tokens and the audit trail."""
from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import click

from control_plane.api.access_schemas import AuditEventSchema, TokenSchema
from control_plane.catalog.models import TokenRole
from control_plane.cli_output import json_option
from control_plane.cli_support import context
from control_plane.services import audit, auth
from control_plane.services.auth import SYSTEM

_DURATION = re.compile(r"^(\d+)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def _expires_in(value: str | None) -> timedelta | None | str:
    if value is None:
        return "default"
    if value == "never":
        return None
    match = _DURATION.fullmatch(value.strip())
    if not match or int(match.group(1)) == 0:
        raise click.BadParameter("a positive duration like 30d, 12h or 90m, or 'never'", param_hint="--expires-in")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


@click.group("tokens")
def tokens_group() -> None:
    """API tokens."""


@tokens_group.command("create")
@click.option("--role", type=click.Choice([r.value for r in TokenRole]), required=True)
@click.option("--tenant", "tenant_id", help="The tenant a tenant_admin token is scoped to.")
@click.option("--name", default="cli", show_default=True)
@click.option("--expires-in", help="30d, 12h, 90m or 'never' (default: TOKEN_DAYS_SUPER_ADMIN / TOKEN_DAYS_TENANT_ADMIN).")
@json_option
def tokens_create(role: str, tenant_id: str | None, name: str, expires_in: str | None, as_json: bool) -> None:
    """Create a token; it is printed once, alone on the last line (with --json, as `token` next to its record).

    Runs locally in both modes: it makes the API's first token.
    """
    token, plaintext = auth.create_token(context(), TokenRole(role), name, tenant_id,
                                         expires_in=_expires_in(expires_in), actor=SYSTEM.actor)
    expiry = f"expires {token.expires_at:%Y-%m-%d %H:%M}Z" if token.expires_at else "never expires"
    click.echo(f"created {role} token {token.id} ({name}), {expiry}", err=True)
    if as_json:
        click.echo(json.dumps({**TokenSchema().dump(token), "token": plaintext}, indent=2))
    else:
        click.echo(plaintext)


@tokens_group.command("list")
@click.option("--tenant", "tenant_id")
@click.option("--include-revoked", is_flag=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True)
@json_option
def tokens_list(tenant_id: str | None, include_revoked: bool, limit: int, as_json: bool) -> None:
    """Tokens, newest first (never their secret)."""
    items, _ = auth.list_tokens(context(), SYSTEM, offset=0, limit=limit, tenant_id=tenant_id,
                                include_revoked=include_revoked)
    rows = TokenSchema(many=True).dump(items)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "revoked" if row["revoked_at"] else f"expires {row['expires_at'] or 'never'}"
        click.echo(f"{row['id']}  {row['role']:<12} {row['tenant_id'] or '-':<20} {row['name']:<20} "
                   f"{state}  last used {row['last_used_at'] or 'never'}")


@tokens_group.command("revoke")
@click.argument("token_id")
@json_option
def tokens_revoke(token_id: str, as_json: bool) -> None:
    """Revoke a token: its next request gets 401."""
    token = auth.revoke_token(context(), SYSTEM, token_id)
    click.echo(json.dumps(TokenSchema().dump(token), indent=2) if as_json else f"revoked {token_id}")


@click.command("audit")
@click.option("--tenant", "tenant_id")
@click.option("--actor")
@click.option("--action", help="exact, or a family such as 'tenant.*'")
@click.option("--since", type=click.DateTime(), help="UTC")
@click.option("--until", type=click.DateTime(), help="UTC")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@json_option
def audit_command(tenant_id, actor, action, since: datetime | None, until: datetime | None, limit: int,
                  as_json: bool) -> None:
    """The audit trail, newest first."""
    items, _ = audit.list_events(context(), SYSTEM, offset=0, limit=limit, tenant_id=tenant_id, actor=actor,
                                 action=action, since=since and since.replace(tzinfo=timezone.utc),
                                 until=until and until.replace(tzinfo=timezone.utc))
    rows = AuditEventSchema(many=True).dump(items)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        details = " ".join(f"{k}={v}" for k, v in row["details"].items())
        click.echo(f"{row['at']}  {row['actor']:<24} {row['action']:<28} {row['tenant_id'] or '-':<20} {details}")
