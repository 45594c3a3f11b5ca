"""tenantctl through the API (TENANTCTL_API_URL, TENANTCTL_TOKEN) against a running API and worker: each
command group, --json parsed, exit codes (0 ok, 1 failed, 2 invalid, 3 not found, 4 conflict)."""
from __future__ import annotations

import json
import uuid

import click
import pytest
import requests
from click.testing import CliRunner, Result
from requests.adapters import HTTPAdapter

import tenant_migrations
from control_plane.catalog.models import TokenRole
from control_plane.cli import cli
from control_plane.cli_api import ApiClient, build_api_cli, new_idempotency_key
from control_plane.cli_output import OPERATION_COLUMNS, print_data
from control_plane.services.auth import create_token
from helpers import catalog_tenant, wait_until

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


class LosesTheFirstAnswer(HTTPAdapter):
    """The request reaches the API, its answer is lost on the way back (a timeout): once."""

    lost = False

    def send(self, request, **kwargs):
        response = super().send(request, **kwargs)
        if not self.lost:
            self.lost = True
            raise requests.ReadTimeout("the answer was lost")
        return response


def test_tenants_operations_and_backups_through_the_api(tenantctl, live_api, ctx) -> None:
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
    # The same Idempotency-Key twice (a script re-run): the same operation, the work started once.
    again = [as_json(tenantctl("tenants", "migrate", "api-clinic", "--idempotency-key", "rerun-1", "--json"))["id"]
             for _ in range(2)]
    assert again[0] == again[1] != migrated["id"]
    # A lost answer: the client retries once with the same key, and the API answers the work it started.
    client = ApiClient(live_api, create_token(ctx, TokenRole.SUPER_ADMIN, "flaky")[1])
    client.session.mount(live_api, adapter := LosesTheFirstAnswer())
    retried, _ = client.call("POST", "/v1/tenants/api-clinic/migrate", body={"target": "head"},
                             idempotency_key=new_idempotency_key())
    assert adapter.lost
    migrations = client.call("GET", "/v1/operations", params={"tenant_id": "api-clinic", "kind": "migrate"})[0]
    assert sorted(op["id"] for op in migrations) == sorted({migrated["id"], again[0], retried["id"]})
    wait_until(lambda: client.call("GET", f"/v1/operations/{retried['id']}")[0]["status"] == "succeeded",
               "the retried migrate to end")

    tenantctl("tenants", "show", "nobody-here", code=3)
    tenantctl("tenants", "create", "api-clinic", "--name", "x", "--admin-email", "a@b.example", code=4)
    invalid = tenantctl("tenants", "create", "Bad--Id", "--name", "x", "--admin-email", "a@b.example", code=2)
    assert "json.id: must be" in invalid.stderr and '{"json"' not in invalid.stderr  # the detail, said once

    backup_op = as_json(tenantctl("backups", "create", "api-clinic", "--json"))
    assert backup_op["kind"] == "backup" and backup_op["status"] == "succeeded"
    followed = tenantctl("backups", "create", "api-clinic", "--json")  # the bar follows the bytes streamed
    assert 0 < as_json(followed)["result"]["bytes_done"] <= as_json(followed)["result"]["bytes_total"]
    assert " of ~" in followed.stderr
    backups = as_json(tenantctl("backups", "list", "api-clinic", "--json"))
    assert [b["status"] for b in backups] == ["completed", "completed"]
    assert as_json(tenantctl("backups", "show", backups[0]["id"], "--json"))["tenant_id"] == "api-clinic"
    assert "rpo_hours" in as_json(tenantctl("backups", "policy", "api-clinic", "--json"))
    restoring = tenantctl("backups", "restore", "api-clinic", backups[0]["id"], "--new-tenant", "api-copy", "--json")
    restored = as_json(restoring)
    assert restored["status"] == "succeeded"
    # The archive bytes fed to pg_restore, of the backup's recorded archive size.
    assert restored["result"]["bytes_done"] == restored["result"]["bytes_total"] == backups[0]["archive_bytes"]
    assert " of ~" in restoring.stderr
    assert as_json(tenantctl("tenants", "show", "api-copy", "--json"))["status"] == "active"

    operations = as_json(tenantctl("operations", "list", "--tenant", "api-clinic", "--json"))
    assert {"provision", "migrate", "backup"} <= {op["kind"] for op in operations}
    shown = as_json(tenantctl("operations", "show", operations[0]["id"], "--json"))
    assert shown["id"] == operations[0]["id"]
    tenantctl("operations", "retry", operations[0]["id"], code=4)  # 409: it has not failed
    tenantctl("operations", "show", "00000000-0000-0000-0000-000000000000", code=3)
    tenantctl("operations", "cancel", operations[0]["id"], code=4)  # 409: it has already finished
    tenantctl("operations", "cancel", "00000000-0000-0000-0000-000000000000", code=3)

    [drill_op] = as_json(tenantctl("drills", "run", "api-clinic", "--json"))
    assert drill_op["kind"] == "drill" and drill_op["status"] == "succeeded"
    assert drill_op["result"]["bytes_done"] == drill_op["result"]["bytes_total"] == backups[0]["archive_bytes"]
    every = tenantctl("drills", "run", "--all", "--json", code=1)  # api-copy has no backup: its drill fails
    assert sorted((op["tenant_id"], op["status"]) for op in as_json(every)) == [("api-clinic", "succeeded"),
                                                                                ("api-copy", "failed")]
    assert "1 of 2 did not succeed: api-copy" in every.stderr
    tenantctl("drills", "run", "api-clinic", "--all", code=2)
    drills = as_json(tenantctl("drills", "list", "--tenant", "api-clinic", "--json"))
    assert [(d["tenant_id"], d["result"]) for d in drills] == [("api-clinic", "passed")] * 2
    assert drills[0]["id"] in {d["id"] for d in as_json(tenantctl("drills", "list", "--result", "passed", "--json"))}
    assert [d["tenant_id"] for d in as_json(tenantctl("drills", "list", "--result", "failed", "--json"))] == \
        ["api-copy"]
    tenantctl("drills", "list", "--result", "bogus", code=2)

    deleted = tenantctl("tenants", "delete", "api-copy", "--no-final-backup", "--yes", "--json")
    assert as_json(deleted)["kind"] == "delete" and as_json(deleted)["result"]["retired_database"]
    undeleted = tenantctl("tenants", "undelete", "api-copy", "--json")  # followed to its end, like its siblings
    assert (as_json(undeleted)["kind"], as_json(undeleted)["status"]) == ("undelete", "succeeded")
    assert as_json(tenantctl("tenants", "show", "api-copy", "--json"))["status"] == "active"
    tenantctl("tenants", "undelete", "api-copy", code=4)  # 409: it is not deleted
    tenantctl("tenants", "undelete", "nobody-here", code=3)


def test_servers_migrations_and_fleet_through_the_api(tenantctl, ctx) -> None:
    servers = as_json(tenantctl("servers", "list", "--json"))
    assert [s["name"] for s in servers] == ["default"] and "admin_url" not in servers[0]
    assert as_json(tenantctl("servers", "show", "default", "--json"))["name"] == "default"
    tenantctl("servers", "show", "nowhere", code=3)
    assert as_json(tenantctl("migrations", "list", "--json")) == []
    assert isinstance(as_json(tenantctl("migrations", "drift", "--json")), dict | list)
    assert as_json(tenantctl("fleet", "reconcile", "--json"))["dry_run"] is True
    assert as_json(tenantctl("fleet", "reconcile", "--apply", "--json"))["dry_run"] is False
    catalog_tenant(ctx, "api-stuck")  # on the only server: a drain has nowhere to move it and fails at once
    stuck = tenantctl("servers", "drain", "default", "--json", code=1)
    assert as_json(stuck)["status"] == "failed" and "could not be moved" in stuck.stderr
    assert as_json(tenantctl("servers", "drain", "default", "--undo", "--json"))["status"] == "active"
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


# Commands that print no data: the processes, and those that only write a file or confirm a change.
PRINTS_NO_DATA = {"serve", "worker", "catalog upgrade", "backups decrypt", "runtime events-user"}


def walk(group: click.Group, path: str = ""):
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            yield from walk(command, f"{path} {name}")
        else:
            yield f"{path} {name}".strip(), command


def test_lists_go_past_the_apis_largest_page_and_say_when_rows_are_left(tenantctl, ctx) -> None:
    for n in range(101):  # catalog rows only: one more than a page of the API holds
        catalog_tenant(ctx, f"paged-{n:03}")
    every = tenantctl("tenants", "list", "--limit", "500", "--json")
    assert len(as_json(every)) == 101 and "shown" not in every.stderr
    first = tenantctl("tenants", "list", "--json")
    assert len(as_json(first)) == 100 and "100 of 101 shown" in first.stderr
    assert [t["id"] for t in as_json(tenantctl("tenants", "list", "--limit", "2", "--json"))] == ["paged-000",
                                                                                                 "paged-001"]


def test_tables_never_cut_a_value(capsys, monkeypatch) -> None:
    """An id to copy, a one-time admin password: whole in a list and in a record, on an 80-column terminal."""
    monkeypatch.setenv("COLUMNS", "80")
    ids = [str(uuid.uuid4()) for _ in range(2)]
    print_data([{"id": op_id, "kind": "provision", "tenant_id": "a-rather-long-clinic-name", "status": "succeeded",
                 "progress": 100, "step": "activate", "error": None} for op_id in ids], OPERATION_COLUMNS, False)
    listed = capsys.readouterr().out
    assert all(op_id in listed for op_id in ids) and "a-rather-long-clinic-name" in listed
    password = "pw-" + uuid.uuid4().hex
    print_data({"id": ids[0], "result": {"database": "tenant_a_rather_long_clinic_name_db",
                                         "schema_revision": "0002_appointments_lead_score",
                                         "admin_password": password}}, (), False)
    shown = capsys.readouterr().out
    assert f"admin_password: {password}" in shown and "0002_appointments_lead_score" in shown


def test_every_command_has_help_examples_and_json_in_both_modes() -> None:
    for tree in (cli, API_CLI):
        for name, command in walk(tree):
            assert (command.help or "").strip(), f"tenantctl {name} has no help text"
            assert "Examples:" in (command.epilog or ""), f"tenantctl {name} has no examples"
            if name not in PRINTS_NO_DATA:
                assert any(p.name == "as_json" for p in command.params), f"tenantctl {name} has no --json"
    version = CliRunner().invoke(cli, ["--version"])
    assert version.exit_code == 0 and "tenantctl, version" in version.output
    root_help = CliRunner().invoke(cli, ["--help"]).output
    assert "Exit codes: 0 ok, 1 the operation failed, 2 usage" in root_help
    assert "drill, migration, server, fleet, queue, token (list, revoke), plan and audit" in " ".join(root_help.split())


def test_local_mode_json_and_exit_codes(settings) -> None:
    """Without TENANTCTL_API_URL: the same --json and the same exit codes as through the API."""
    def local(*args: str, code: int = 0) -> Result:
        result = CliRunner().invoke(cli, list(args))
        assert result.exit_code == code, (args, result.output, result.exception)
        return result

    servers = as_json(local("servers", "list", "--json"))
    assert [s["name"] for s in servers] == ["default"] and "admin_url" not in json.dumps(servers)
    assert as_json(local("tenants", "list", "--json")) == []
    assert "standard" in {p["name"] for p in as_json(local("plans", "list", "--json"))}
    assert as_json(local("plans", "create", "local-plan", "--connection-limit", "5", "--json"))["connection_limit"] == 5
    local("plans", "create", "local-plan", code=4)  # 409: it exists
    local("tenants", "show", "nobody-here", code=3)
    local("operations", "show", "00000000-0000-0000-0000-000000000000", "--json", code=3)
    local("tenants", "create", "Bad--Id", "--name", "x", "--admin-email", "a@b.example", "--no-wait", code=2)
    started = as_json(local("tenants", "create", "local-json", "--name", "Local", "--admin-email", "a@local.example",
                            "--no-wait", "--json"))
    assert started["kind"] == "provision" and started["status"] == "queued"
    assert as_json(local("operations", "show", started["id"], "--json"))["id"] == started["id"]


def test_migration_runs_in_waves_through_the_api(tenantctl, ctx) -> None:
    first = tenant_migrations.known_revisions()[0]
    for tenant_id in ("wave-one", "wave-two"):
        tenantctl("tenants", "create", tenant_id, "--name", tenant_id, "--admin-email", f"a@{tenant_id}.example")
        tenantctl("tenants", "migrate", tenant_id, "--target", first)
    run = as_json(tenantctl("migrations", "run", "--waves", "50,100", "--manual-pause", "--concurrency", "1",
                            "--check", "select count(*) from leads where score < 0", "--no-follow", "--json"))
    assert [w["percent"] for w in run["waves"]] == [50, 100] and run["waves"][0]["manual"] is True
    assert run["check"].startswith("select count(*)")

    def paused() -> bool:
        return as_json(tenantctl("migrations", "status", run["id"], "--json"))["wave_status"] == "waiting"

    wait_until(paused, "the first wave to pass its gate")
    followed = tenantctl("migrations", "continue", run["id"], "--wait", "--json")  # --wait/--follow alike
    assert as_json(followed)["status"] == "succeeded"
    assert "wave 2/2 (100%) passed: 1/1 done, ok 1" in followed.stderr and "gate passed on 1 tenant(s)" in followed.stderr
    tenantctl("migrations", "continue", run["id"], code=4)  # no longer paused: 409
    refused = tenantctl("migrations", "rollback", run["id"], code=4)
    assert "succeeded" in refused.stderr
    tenantctl("migrations", "run", "--waves", "50,10", code=2)
    tenantctl("migrations", "run", "--waves", "a,b", code=2)
