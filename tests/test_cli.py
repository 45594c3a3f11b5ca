"""tenantctl against the real catalog, queue and servers (in-process through click's runner)."""
from __future__ import annotations

import json

from click.testing import CliRunner

from control_plane.cli import cli
from helpers import databases


def invoke(*args: str, input: str | None = None):
    result = CliRunner().invoke(cli, list(args), input=input, catch_exceptions=False)
    return result


def test_tokens_create_prints_the_token_alone_on_the_last_line(settings, client):
    result = invoke("tokens", "create", "--role", "super_admin", "--name", "ops")
    assert result.exit_code == 0
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("tcp_") and " " not in token
    assert client.get("/v1/tenants", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_tenant_admin_token_needs_an_existing_tenant(settings):
    result = CliRunner().invoke(cli, ["tokens", "create", "--role", "tenant_admin", "--tenant", "nobody"])
    assert result.exit_code != 0


def test_tenant_lifecycle_from_the_cli(settings, run_jobs, admin_url):
    created = invoke("tenants", "create", "cli-clinic", "--name", "CLI Clinic", "--admin-email", "a@cli.example",
                     "--no-wait")
    assert created.exit_code == 0, created.output
    operation_id = created.stdout.strip().splitlines()[-1]
    run_jobs()
    shown = invoke("operations", "show", operation_id, "--follow")
    assert shown.exit_code == 0 and '"admin_password"' in shown.stdout
    listed = invoke("tenants", "list", "--status", "active")
    assert "cli-clinic" in listed.stdout
    assert invoke("tenants", "suspend", "cli-clinic").stdout.strip() == "suspended"
    assert invoke("tenants", "resume", "cli-clinic").stdout.strip() == "active"
    assert invoke("tenants", "migrate", "cli-clinic", "--target", "0001_clinic_crm", "--no-wait").exit_code == 0
    run_jobs()
    assert '"schema_revision": "0001_clinic_crm"' in invoke("tenants", "show", "cli-clinic").stdout
    deleted = invoke("tenants", "delete", "cli-clinic", "--no-wait", "--no-final-backup", "--yes")
    assert deleted.exit_code == 0
    run_jobs()
    [retired] = databases(admin_url, "tenant_cli_clinic%")  # kept for the grace period
    assert retired.startswith("tenant_cli_clinic_del_")
    undeleted = invoke("tenants", "undelete", "cli-clinic", "--no-wait", "--json")
    assert undeleted.exit_code == 0 and json.loads(undeleted.stdout)["kind"] == "undelete"
    run_jobs()
    assert '"status": "active"' in invoke("tenants", "show", "cli-clinic").stdout
    assert invoke("tenants", "delete", "cli-clinic", "--no-wait", "--purge", "--yes").exit_code == 0
    run_jobs()
    assert databases(admin_url, "tenant_cli_clinic%") == set()


def test_invalid_tenant_id_is_refused_with_the_field(settings):
    result = CliRunner().invoke(cli, ["tenants", "create", "Bad--Id", "--name", "x", "--admin-email", "a@b.example",
                                      "--no-wait"])
    assert result.exit_code != 0
    assert "id" in str(result.exception) or "id" in result.output
