"""Token lifecycle (expiry, listing, revocation, throttling of failures) and the audit trail, through the API and CLI."""
from __future__ import annotations

import uuid
from datetime import timedelta

from click.testing import CliRunner

from control_plane.catalog.models import ApiToken, TokenRole, utcnow
from control_plane.cli import cli
from control_plane.naming import auth_failures_key
from control_plane.services.auth import create_token
from helpers import create_tenant


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_row(ctx, token_id: str) -> ApiToken:
    with ctx.sessions() as session:
        return session.get(ApiToken, token_id)


def test_tokens_expire_by_role_and_can_be_listed_and_revoked(client, auth, ctx):
    create_tenant(client, auth, "tok-a")
    create_tenant(client, auth, "tok-b")
    a_row, a_token = create_token(ctx, TokenRole.TENANT_ADMIN, "a-admin", "tok-a")
    b_row, _ = create_token(ctx, TokenRole.TENANT_ADMIN, "b-admin", "tok-b")
    assert timedelta(days=29) < a_row.expires_at - utcnow() <= timedelta(days=30)
    super_row, _ = create_token(ctx, TokenRole.SUPER_ADMIN, "ops", expires_in=None)
    assert super_row.expires_at is None

    listed = client.get("/v1/tokens", headers=auth)
    assert listed.status_code == 200
    ids = {t["id"] for t in listed.get_json()}
    assert {a_row.id, b_row.id, super_row.id} <= ids
    assert all("token_hash" not in t and "token" not in t for t in listed.get_json())
    # A tenant admin lists its own tenant's tokens only, and cannot revoke another tenant's.
    own = client.get("/v1/tokens", headers=bearer(a_token)).get_json()
    assert [t["id"] for t in own] == [a_row.id]
    assert client.get("/v1/tokens?tenant_id=tok-b", headers=bearer(a_token)).status_code == 403
    refused = client.delete(f"/v1/tokens/{b_row.id}", headers=bearer(a_token))
    assert refused.status_code == 404 and "tok-b" not in refused.get_data(as_text=True)
    assert token_row(ctx, b_row.id).revoked_at is None

    assert client.get("/v1/tenants/tok-a", headers=bearer(a_token)).status_code == 200
    assert client.delete(f"/v1/tokens/{a_row.id}", headers=auth).status_code == 204
    assert client.get("/v1/tenants/tok-a", headers=bearer(a_token)).status_code == 401  # the next request
    assert client.delete(f"/v1/tokens/{a_row.id}", headers=auth).status_code == 204    # idempotent
    assert a_row.id not in {t["id"] for t in client.get("/v1/tokens", headers=auth).get_json()}
    assert a_row.id in {t["id"] for t in client.get("/v1/tokens?include_revoked=true", headers=auth).get_json()}
    assert client.delete(f"/v1/tokens/{uuid.uuid4()}", headers=auth).status_code == 404


def test_an_expired_token_is_refused(client, ctx):
    row, token = create_token(ctx, TokenRole.SUPER_ADMIN, "short", expires_in=timedelta(hours=1))
    assert client.get("/v1/tenants", headers=bearer(token)).status_code == 200
    with ctx.sessions() as session, session.begin():
        session.get(ApiToken, row.id).expires_at = utcnow() - timedelta(seconds=1)
    assert client.get("/v1/tenants", headers=bearer(token)).status_code == 401


def test_last_used_at_is_written_at_most_once_a_minute(client, ctx):
    row, token = create_token(ctx, TokenRole.SUPER_ADMIN, "busy")
    assert client.get("/v1/tenants", headers=bearer(token)).status_code == 200
    first = token_row(ctx, row.id).last_used_at
    assert first is not None
    for _ in range(3):
        client.get("/v1/tenants", headers=bearer(token))
    assert token_row(ctx, row.id).last_used_at == first
    with ctx.sessions() as session, session.begin():
        session.get(ApiToken, row.id).last_used_at = first - timedelta(minutes=2)
    client.get("/v1/tenants", headers=bearer(token))
    assert token_row(ctx, row.id).last_used_at > first


def test_deleting_a_tenant_revokes_its_tokens(client, auth, ctx, run_jobs):
    create_tenant(client, auth, "tok-gone")
    run_jobs()
    row, token = create_token(ctx, TokenRole.TENANT_ADMIN, "gone-admin", "tok-gone")
    assert client.get("/v1/tenants/tok-gone", headers=bearer(token)).status_code == 200
    assert client.delete("/v1/tenants/tok-gone?final_backup=false", headers=auth).status_code == 202
    # Refused from the moment the deletion is requested, before the job runs.
    assert client.get("/v1/tenants/tok-gone", headers=bearer(token)).status_code == 401
    run_jobs()
    assert token_row(ctx, row.id).revoked_at is not None


def test_failed_authentications_are_throttled_per_client_address(client, ctx, settings, redis_conn):
    address = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.7"
    other = "10.255.255.8"
    _, token = create_token(ctx, TokenRole.SUPER_ADMIN, "victim")
    try:
        for _ in range(settings.auth_failure_limit):
            answer = client.get("/v1/tenants", headers=bearer("tcp_guess"), environ_base={"REMOTE_ADDR": address})
            assert answer.status_code == 401
        limited = client.get("/v1/tenants", headers=bearer(token), environ_base={"REMOTE_ADDR": address})
        assert limited.status_code == 429
        assert 0 < int(limited.headers["Retry-After"]) <= settings.auth_failure_window_seconds
        assert limited.get_json()["status"] == 429
        assert client.get("/v1/tenants", headers=bearer(token), environ_base={"REMOTE_ADDR": other}).status_code == 200
    finally:
        redis_conn.delete(auth_failures_key(address), auth_failures_key(other))


def test_audit_events_are_filtered_paginated_and_scoped(client, auth, ctx):
    create_tenant(client, auth, "aud-a")
    create_tenant(client, auth, "aud-b")
    _, a_token = create_token(ctx, TokenRole.TENANT_ADMIN, "aud-a-admin", "aud-a")

    everything = client.get("/v1/audit-events", headers=auth)
    assert everything.status_code == 200
    assert {"aud-a", "aud-b"} <= {e["tenant_id"] for e in everything.get_json()}
    only_a = client.get("/v1/audit-events?tenant_id=aud-a&action=tenant.*", headers=auth).get_json()
    assert only_a and {e["tenant_id"] for e in only_a} == {"aud-a"}
    assert all(e["action"].startswith("tenant.") for e in only_a)
    by_actor = client.get("/v1/audit-events?actor=token:tests", headers=auth).get_json()
    assert by_actor and {e["actor"] for e in by_actor} == {"token:tests"}
    future = (utcnow() + timedelta(hours=1)).isoformat()
    assert client.get("/v1/audit-events", headers=auth, query_string={"since": future}).get_json() == []
    paged = client.get("/v1/audit-events?page=1&page_size=1", headers=auth)
    assert len(paged.get_json()) == 1 and "X-Pagination" in paged.headers

    # A tenant admin sees its own tenant's events only, and is refused another tenant's.
    mine = client.get("/v1/audit-events", headers=bearer(a_token)).get_json()
    assert mine and {e["tenant_id"] for e in mine} == {"aud-a"}
    assert client.get("/v1/audit-events?tenant_id=aud-b", headers=bearer(a_token)).status_code == 403
    assert client.get("/v1/audit-events?since=yesterday", headers=auth).status_code == 422


def test_tokens_and_audit_from_the_cli(settings, client, auth):
    runner = CliRunner()
    created = runner.invoke(cli, ["tokens", "create", "--role", "super_admin", "--name", "cli-ops",
                                  "--expires-in", "12h"], catch_exceptions=False)
    assert created.exit_code == 0 and "expires" in created.stderr
    token = created.stdout.strip().splitlines()[-1]
    listed = runner.invoke(cli, ["tokens", "list", "--json"], catch_exceptions=False)
    rows = [row for row in __import__("json").loads(listed.stdout) if row["name"] == "cli-ops"]
    assert len(rows) == 1 and token not in listed.stdout
    assert runner.invoke(cli, ["tokens", "create", "--role", "super_admin", "--expires-in", "soon"]).exit_code == 2

    assert client.get("/v1/tenants", headers=bearer(token)).status_code == 200
    revoked = runner.invoke(cli, ["tokens", "revoke", rows[0]["id"]], catch_exceptions=False)
    assert revoked.exit_code == 0
    assert client.get("/v1/tenants", headers=bearer(token)).status_code == 401

    trail = runner.invoke(cli, ["audit", "--action", "token.*"], catch_exceptions=False)
    assert trail.exit_code == 0 and "token.revoked" in trail.stdout and "token.created" in trail.stdout
