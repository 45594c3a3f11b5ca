"""A tenant admin pointed at another tenant's ids, on every /v1 endpoint: 403 or 404, and nothing of it revealed."""
from __future__ import annotations

import re

from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token
from helpers import create_tenant, operation

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def test_a_tenant_admin_reaches_nothing_of_another_tenant(app, client, auth, run_jobs, ctx):
    create_tenant(client, auth, "mine-clinic", domains=["mine.example"])
    create_tenant(client, auth, "their-clinic", domains=["secret-theirs.example"], name="Their Secret Clinic")
    run_jobs()
    started = client.post("/v1/tenants/their-clinic/backups", json={}, headers=auth).get_json()
    run_jobs()
    their_backup = operation(client, auth, started["id"])["result"]["backup_id"]
    their_token, _ = create_token(ctx, TokenRole.TENANT_ADMIN, "their-admin", "their-clinic")
    run = client.post("/v1/migration-runs", json={"target": "head", "dry_run": True}, headers=auth).get_json()
    _, mine = create_token(ctx, TokenRole.TENANT_ADMIN, "mine-admin", "mine-clinic")
    headers = {"Authorization": f"Bearer {mine}"}

    # Every path variable of every /v1 endpoint filled with the other tenant's ids.
    ids = {"tenant_id": "their-clinic", "operation_id": started["id"], "backup_id": their_backup,
           "token_id": their_token.id, "name": "default", "run_id": run.get("id", "x"), "drill_id": "x"}
    secrets = ("Their Secret Clinic", "secret-theirs.example", "tenant_their_clinic_db", ctx.settings.backup_store_url)
    checked = 0
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/") or not rule.arguments:
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", lambda m: ids.get(m.group(1), "x"), rule.rule)
        for method in sorted(rule.methods & set(METHODS)):
            answer = client.open(path, method=method, json={}, headers=headers)
            assert answer.status_code in (403, 404), (method, path, answer.status_code, answer.get_json())
            body = answer.get_data(as_text=True)
            assert not any(secret in body for secret in secrets), (method, path, body)
            checked += 1
    assert checked >= 15

    # Restoring its own tenant from the other tenant's backup is "no such backup".
    stolen = client.post("/v1/tenants/mine-clinic/restore", json={"backup_id": their_backup}, headers=headers)
    assert stolen.status_code in (403, 404)
    # Filters naming the other tenant are refused; unfiltered lists show only its own tenant.
    for path in ("/v1/operations?tenant_id=their-clinic", "/v1/tokens?tenant_id=their-clinic",
                 "/v1/audit-events?tenant_id=their-clinic"):
        answer = client.get(path, headers=headers)
        assert answer.status_code == 403 or answer.get_json() == [], (path, answer.status_code)
    for path in ("/v1/tenants", "/v1/operations", "/v1/tokens", "/v1/audit-events"):
        answer = client.get(path, headers=headers)
        assert answer.status_code in (200, 403), path
        assert "their-clinic" not in answer.get_data(as_text=True), path
    for path in ("/v1/servers", "/v1/migration-runs"):
        assert client.get(path, headers=headers).status_code == 403, path
