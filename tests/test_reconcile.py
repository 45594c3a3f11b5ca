"""Reconcile: every kind of leftover made by hand is reported, then repaired (quarantined or dropped)."""
from __future__ import annotations

from datetime import timedelta

import psycopg
from click.testing import CliRunner

from control_plane.catalog.backup_models import RetiredDatabase
from control_plane.catalog.models import AuditEvent, utcnow
from control_plane.cli import cli
from fleet_support import fleet, logical_servers  # noqa: F401 (fixtures)
from helpers import databases, one, roles, tenant


def _by_hand(url: str, *statements: str, dbname: str | None = None) -> None:
    with psycopg.connect(url, autocommit=True, **({"dbname": dbname} if dbname else {})) as conn:
        for statement in statements:
            conn.execute(statement)


def test_reconcile_reports_and_repairs_each_kind_of_leftover(fleet, ctx):
    client, auth = fleet.client, fleet.auth
    pg2, pg3 = fleet.url("pg2"), fleet.url("pg3")
    fleet.place("kept", "pg2")
    fleet.place("vanish", "pg2")
    _by_hand(pg2, "DROP DATABASE tenant_vanish_db WITH (FORCE)",
             "CREATE ROLE tenant_stray", "CREATE DATABASE tenant_stray_db OWNER tenant_stray",
             "CREATE ROLE tenant_lonely LOGIN",
             "CREATE DATABASE tenant_kept_rs_deadbeef", "CREATE DATABASE tenant_kept_20200101_000000",
             "CREATE DATABASE cp_quarantine_20200101_tenant_old_db",
             "CREATE ROLE cp_move_0123456789abcdef LOGIN REPLICATION")
    _by_hand(pg2, "SELECT pg_create_logical_replication_slot('cp_move_0123456789abcdef', 'pgoutput')",
             dbname="tenant_kept_db")
    _by_hand(pg3, "CREATE DATABASE tenant_sub_host_db")
    _by_hand(pg3, "CREATE SUBSCRIPTION cp_move_fedcba9876543210 CONNECTION 'host=127.0.0.1 port=1 dbname=x' "
                  "PUBLICATION p WITH (connect = false)", dbname="tenant_sub_host_db")
    with ctx.sessions() as session:
        session.add(RetiredDatabase(tenant_id="kept", server_name="pg2", database_name="tenant_kept_20200101_000000",
                                    retired_at=utcnow() - timedelta(days=30), drop_after=utcnow() - timedelta(days=1)))
        session.commit()

    report = client.get("/v1/fleet/reconcile", headers=auth).get_json()
    on_pg2, on_pg3 = report["servers"]["pg2"], report["servers"]["pg3"]
    assert {o["name"] for o in on_pg2["orphan_databases"]} == {"tenant_stray_db"}
    assert {o["name"] for o in on_pg2["orphan_roles"]} == {"tenant_lonely"}
    assert on_pg2["missing"] == [{"tenant_id": "vanish", "status": "active", "lacks": ["database"]}]
    assert {(o["kind"], o["name"]) for o in on_pg2["leftovers"]} == {
        ("scratch_database", "tenant_kept_rs_deadbeef"), ("retired_database", "tenant_kept_20200101_000000"),
        ("quarantined_database", "cp_quarantine_20200101_tenant_old_db"),
        ("move_role", "cp_move_0123456789abcdef"), ("replication_slot", "cp_move_0123456789abcdef")}
    assert {(o["kind"], o["name"]) for o in on_pg3["leftovers"]} == {("subscription", "cp_move_fedcba9876543210")}
    assert {o["name"] for o in on_pg3["orphan_databases"]} == {"tenant_sub_host_db"}
    assert report["counts"]["missing"] == 1 and report["dry_run"] is True
    # The report changed nothing.
    assert "tenant_stray_db" in databases(pg2) and tenant(client, auth, "vanish")["status"] == "active"

    applied = client.post("/v1/fleet/reconcile", headers=auth, json={"dry_run": False}).get_json()
    assert applied["dry_run"] is False and applied["servers"]["pg2"]["repaired"]
    today = f"cp_quarantine_{utcnow():%Y%m%d}_"
    assert databases(pg2, "tenant\\_%") == {"tenant_kept_db"}
    assert databases(pg2, "cp\\_quarantine\\_%") == {today + "tenant_stray_db"}
    assert one(pg2, "SELECT datallowconn FROM pg_database WHERE datname = %s", today + "tenant_stray_db") is False
    assert roles(pg2, "tenant\\_lonely") == set()
    assert one(pg2, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", today + "tenant_lonely") is False
    assert roles(pg2, "cp\\_move\\_%") == set() and one(pg2, "SELECT count(*) FROM pg_replication_slots") == 0
    assert one(pg3, "SELECT count(*) FROM pg_subscription") == 0
    vanished = tenant(client, auth, "vanish")
    assert vanished["status"] == "failed"
    with ctx.sessions() as session:
        reason = session.query(AuditEvent).filter_by(tenant_id="vanish", action="tenant.database_missing").one()
        assert "tenant_vanish_db is missing on server pg2; no completed backup exists" in reason.details["reason"]
        assert session.query(RetiredDatabase).filter_by(database_name="tenant_kept_20200101_000000").one().dropped_at

    again = CliRunner().invoke(cli, ["fleet", "reconcile"])
    assert again.exit_code == 0 and "pg2: 0 orphan databases, 0 orphan roles, 0 missing, 0 leftovers" in again.stdout


def test_the_daily_report_is_exported_as_metrics(fleet, ctx, client, auth):
    from control_plane.services import reconcile

    fleet.place("counted", "pg2")
    with psycopg.connect(fleet.url("pg2"), autocommit=True) as conn:
        conn.execute("CREATE ROLE tenant_orphaned")
    found = reconcile.daily_report(ctx)
    assert found["orphan_roles"] == 1 and found["missing"] == 0
    metrics = client.get("/metrics", headers=auth).get_data(as_text=True)
    assert 'control_plane_reconcile_findings{kind="orphan_roles"} 1.0' in metrics


def test_the_remedy_named_for_a_missing_database_brings_the_tenant_back(fleet, ctx):
    """Reconcile marks the tenant failed and names what to run; running it recovers the tenant (the in-place
    restore it used to name refuses a failed tenant)."""
    client, auth = fleet.client, fleet.auth
    fleet.place("lost", "pg2")
    backup = client.post("/v1/tenants/lost/backups", headers=auth, json={})
    assert backup.status_code == 202, backup.get_json()
    fleet.run_jobs()
    _by_hand(fleet.url("pg2"), "DROP DATABASE tenant_lost_db WITH (FORCE)")
    repaired = client.post("/v1/fleet/reconcile", headers=auth, json={"dry_run": False}).get_json()
    [note] = [line for line in repaired["servers"]["pg2"]["repaired"] if "lost" in line]
    command = note.split("`")[1]
    assert command == "tenantctl fleet recover --server pg2" and tenant(client, auth, "lost")["status"] == "failed"
    recovered = CliRunner().invoke(cli, command.split()[1:])
    assert recovered.exit_code == 0, recovered.output
    assert tenant(client, auth, "lost")["status"] == "active" and "tenant_lost_db" in databases(fleet.url("pg2"))
