"""tenantctl through the API (TENANTCTL_API_URL, TENANTCTL_TOKEN) against a running API and worker: each
command group, --json parsed, exit codes (0 ok, 1 failed, 2 invalid, 3 not found, 4 conflict)."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner, Result

from control_plane.catalog.models import TokenRole
from control_plane.cli import cli
from control_plane.cli_api import build_api_cli
from control_plane.services.auth import create_token

API_CLI = build_api_cli(cli)


@pytest.fixture
def tenantctl(live_api: str, ctx):
    env = {"TENANTCTL_API_URL": live_api, "TENANTCTL_TOKEN": create_token(ctx, TokenRole.SUPER_ADMIN, "cli")[1],
           "CATALOG_DATABASE_URL": "", "KEYRING": ""}  # nothing local: the API only

    def run(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(API_CLI, list(args), env=env)
        assert result.exit_code == code, (args, result.output, result.exception)
        return result

    return run


def as_json(result: Result):
    return json.loads(result.stdout)


def test_tenants_operations_and_backups_through_the_api(tenantctl) -> None:
    created = tenantctl("tenants", "create", "api-clinic", "--name", "API Clinic", "--admin-email", "a@api.example",
                        "--domain", "api.example.com", "--json")
    assert as_json(created)["status"] == "succeeded" and "provision" in created.stderr
    assert [t["id"] for t in as_json(tenantctl("tenants", "list", "-q", "api.example", "--json"))] == ["api-clinic"]
    assert "API Clinic" in tenantctl("tenants", "list").stdout  # a table
    assert as_json(tenantctl("tenants", "show", "api-clinic", "--json"))["status"] == "active"
    assert as_json(tenantctl("tenants", "update", "api-clinic", "--name", "API Clinic Ltd", "--json"))["name"] == \
        "API Clinic Ltd"
    assert as_json(tenantctl("tenants", "suspend", "api-clinic", "--json"))["status"] == "suspended"
    assert as_json(tenantctl("tenants", "resume", "api-clinic", "--json"))["status"] == "active"
    migrated = as_json(tenantctl("tenants", "migrate", "api-clinic", "--target", "head", "--json"))
    assert migrated["kind"] == "migrate" and migrated["status"] == "succeeded"

    tenantctl("tenants", "show", "nobody-here", code=3)
    tenantctl("tenants", "create", "api-clinic", "--name", "x", "--admin-email", "a@b.example", code=4)
    invalid = tenantctl("tenants", "create", "Bad--Id", "--name", "x", "--admin-email", "a@b.example", code=2)
    assert "id" in invalid.stderr

    backup_op = as_json(tenantctl("backups", "create", "api-clinic", "--json"))
    assert backup_op["kind"] == "backup" and backup_op["status"] == "succeeded"
    followed = tenantctl("backups", "create", "api-clinic", "--json")  # the bar follows the bytes streamed
    assert 0 < as_json(followed)["result"]["bytes_done"] <= as_json(followed)["result"]["bytes_total"]
    assert " of ~" in followed.stderr
    backups = as_json(tenantctl("backups", "list", "api-clinic", "--json"))
    assert [b["status"] for b in backups] == ["completed", "completed"]
    assert as_json(tenantctl("backups", "show", backups[0]["id"], "--json"))["tenant_id"] == "api-clinic"
    assert "rpo_hours" in as_json(tenantctl("backups", "policy", "api-clinic", "--json"))
    restored = as_json(tenantctl("backups", "restore", "api-clinic", backups[0]["id"], "--new-tenant", "api-copy",
                                 "--json"))
    assert restored["status"] == "succeeded"
    assert as_json(tenantctl("tenants", "show", "api-copy", "--json"))["status"] == "active"

    operations = as_json(tenantctl("operations", "list", "--tenant", "api-clinic", "--json"))
    assert {"provision", "migrate", "backup"} <= {op["kind"] for op in operations}
    shown = as_json(tenantctl("operations", "show", operations[0]["id"], "--json"))
    assert shown["id"] == operations[0]["id"]
    tenantctl("operations", "retry", operations[0]["id"], code=4)  # 409: it has not failed
    tenantctl("operations", "show", "00000000-0000-0000-0000-000000000000", code=3)
    tenantctl("operations", "cancel", operations[0]["id"], code=4)  # 409: it has already finished
    tenantctl("operations", "cancel", "00000000-0000-0000-0000-000000000000", code=3)

    drill_op = as_json(tenantctl("drills", "run", "api-clinic", "--json"))
    assert drill_op["kind"] == "drill" and drill_op["status"] == "succeeded"
    drills = as_json(tenantctl("drills", "list", "--tenant", "api-clinic", "--json"))
    assert [(d["tenant_id"], d["result"]) for d in drills] == [("api-clinic", "passed")]
    assert drills[0]["id"] in {d["id"] for d in as_json(tenantctl("drills", "list", "--result", "passed", "--json"))}
    assert as_json(tenantctl("drills", "list", "--result", "failed", "--json")) == []
    tenantctl("drills", "list", "--result", "bogus", code=2)

    deleted = tenantctl("tenants", "delete", "api-copy", "--no-final-backup", "--yes", "--json")
    assert as_json(deleted)["kind"] == "delete"


def test_servers_migrations_and_fleet_through_the_api(tenantctl) -> None:
    servers = as_json(tenantctl("servers", "list", "--json"))
    assert [s["name"] for s in servers] == ["default"] and "admin_url" not in servers[0]
    assert as_json(tenantctl("servers", "show", "default", "--json"))["name"] == "default"
    tenantctl("servers", "show", "nowhere", code=3)
    assert as_json(tenantctl("migrations", "list", "--json")) == []
    assert isinstance(as_json(tenantctl("migrations", "drift", "--json")), dict | list)
    assert isinstance(as_json(tenantctl("fleet", "reconcile", "--json")), dict)
    assert isinstance(as_json(tenantctl("queues", "list", "--json")), dict | list)


def test_tokens_plans_and_audit_through_the_api(tenantctl) -> None:
    tokens = as_json(tenantctl("tokens", "list", "--json"))
    assert [t["name"] for t in tokens] == ["cli"] and all("secret" not in json.dumps(t) for t in tokens)
    assert "standard" in {p["name"] for p in as_json(tenantctl("plans", "list", "--json"))}
    created = as_json(tenantctl("plans", "create", "premium", "--connection-limit", "40", "--json"))
    assert created["connection_limit"] == 40
    assert as_json(tenantctl("plans", "set", "premium", "--connection-limit", "60", "--json"))["connection_limit"] == 60
    tenantctl("plans", "create", "premium", code=4)
    tenantctl("tokens", "revoke", "no-such-token", code=3)
    events = as_json(tenantctl("audit", "--action", "plan.*", "--json"))
    assert events and all(e["action"].startswith("plan.") for e in events)


def test_a_tenant_admin_token_sees_only_its_tenant(live_api: str, ctx, tenantctl) -> None:
    tenantctl("tenants", "create", "own-clinic", "--name", "Own", "--admin-email", "a@own.example")
    token = create_token(ctx, TokenRole.TENANT_ADMIN, "own", "own-clinic")[1]
    env = {"TENANTCTL_API_URL": live_api, "TENANTCTL_TOKEN": token}
    listed = CliRunner().invoke(API_CLI, ["tenants", "list", "--json"], env=env)
    assert [t["id"] for t in json.loads(listed.stdout)] == ["own-clinic"]
    refused = CliRunner().invoke(API_CLI, ["servers", "list"], env=env)
    assert refused.exit_code == 1 and "403" in refused.stderr


def test_every_command_has_help_and_the_api_ones_examples_and_json() -> None:
    def walk(group: click.Group, path: str = ""):
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                yield from walk(command, f"{path} {name}")
            else:
                yield f"{path} {name}".strip(), command

    for tree in (cli, API_CLI):
        for name, command in walk(tree):
            assert (command.help or "").strip(), f"tenantctl {name} has no help text"
    for name, command in walk(API_CLI):
        if name not in ("tokens create", "serve", "worker", "scheduler") and not name.startswith("catalog"):
            assert "Examples:" in (command.epilog or ""), name
            assert any(p.name == "as_json" for p in command.params), name
    version = CliRunner().invoke(cli, ["--version"])
    assert version.exit_code == 0 and "tenantctl, version" in version.output
