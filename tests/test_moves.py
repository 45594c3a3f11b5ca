"""Moving tenants between servers: online under a continuous writer, offline, refusals, undo."""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from datetime import timedelta

import psycopg
from click.testing import CliRunner

from control_plane.catalog.models import Tenant, utcnow
from control_plane.cli import cli
from control_plane.services.context import role_secret_context
from control_plane.jobs.worker import build_worker
from control_plane.services.pruning import prune_backups

from crash_support import SEED, crash_at_random_point, ended, processes  # noqa: F401 (fixture)
from fleet_support import Fleet, fleet, logical_servers  # noqa: F401 (fixtures)
from helpers import databases, one, operation, roles, tenant, tenant_login
from test_plans import role_limits
from test_runtime_support import router_factory  # noqa: F401 (fixture)


class Writer(threading.Thread):
    """Inserts leads through tenant_runtime as fast as it can; keeps the id of every acknowledged row."""

    def __init__(self, router, tenant_id: str) -> None:
        super().__init__(daemon=True)
        self.router, self.tenant_id = router, tenant_id
        self.acked: list[tuple[int, float]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                with self.router.connection(self.tenant_id, timeout=10) as conn:
                    row = conn.execute("INSERT INTO leads (full_name) VALUES (%s) RETURNING id", (f"w{n}",)).fetchone()
                self.acked.append((row[0], time.monotonic()))
            except Exception as exc:  # refused or cut off during the cut-over: not acknowledged
                self.errors.append(type(exc).__name__)

    def longest_gap(self) -> float:
        times = [at for _, at in self.acked]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def _move(fleet: Fleet, tenant_id: str, **body) -> dict:
    response = fleet.client.post(f"/v1/tenants/{tenant_id}/move", headers=fleet.auth, json=body)
    assert response.status_code == 202, response.get_json()
    return response.get_json()


def _replication_leftovers(url: str) -> list:
    with psycopg.connect(url, autocommit=True) as conn:
        return (conn.execute("SELECT slot_name FROM pg_replication_slots").fetchall()
                + conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'cp\\_move\\_%'").fetchall())


def test_online_move_under_a_continuous_writer_loses_no_acknowledged_write(fleet, router_factory, ctx):
    fleet.place("mover", "pg2")
    with tenant_login(ctx, "mover") as conn:
        conn.execute("INSERT INTO leads (full_name) SELECT 'seed ' || g FROM generate_series(1, 2000) g")
    writer = Writer(router_factory(), "mover")
    writer.start()
    try:
        deadline = time.monotonic() + 30
        while len(writer.acked) < 50 and time.monotonic() < deadline:
            time.sleep(0.01)
        op = _move(fleet, "mover", server="pg3")
        assert op["result"]["mode"] == "online"
        fleet.run_jobs()
        moved_at = len(writer.acked)
        deadline = time.monotonic() + 30
        while len(writer.acked) < moved_at + 50 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        writer.stop.set()
        writer.join(30)

    done = operation(fleet.client, fleet.auth, op["id"])
    assert done["status"] == "succeeded", done
    body = tenant(fleet.client, fleet.auth, "mover")
    assert body["server"] == "pg3" and body["status"] == "active"
    acked = {row_id for row_id, _ in writer.acked}
    with tenant_login(ctx, "mover") as conn:
        assert conn.execute("SELECT inet_server_port()").fetchone()[0] == fleet.servers["pg3"].port
        found = {r[0] for r in conn.execute("SELECT id FROM leads WHERE full_name LIKE 'w%%'")}
        assert conn.execute("SELECT count(*) FROM leads WHERE full_name LIKE 'seed %%'").fetchone()[0] == 2000
    missing = acked - found
    assert not missing, f"{len(missing)} acknowledged rows missing on the target"
    # The initial copy's bytes were recorded for the follow bar, next to what the result showed.
    assert done["result"]["bytes_done"] == done["result"]["bytes_total"] > 0 and done["result"]["mode"] == "online"
    # Writes went on after the cut-over, on the target: its identity sequence was carried past the source's.
    assert any(at > 0 for _, at in writer.acked[moved_at:])
    print(f"\nonline move: {len(acked)} acknowledged writes, longest gap {writer.longest_gap() * 1000:.0f} ms, "
          f"cut-over freeze {done['result']['freeze_ms']} ms, errors {len(writer.errors)}, "
          f"copy {done['result']['copy_seconds']} s, move {done['finished_at']} - {done['started_at']}")

    retired = done["result"]["retired_database"]
    assert databases(fleet.url("pg2"), "tenant\\_mover%") == {retired}
    assert one(fleet.url("pg2"), "SELECT datallowconn FROM pg_database WHERE datname = %s", retired) is False
    assert _replication_leftovers(fleet.url("pg2")) == [] and _replication_leftovers(fleet.url("pg3")) == []
    assert one(fleet.url("pg3"), "SELECT count(*) FROM pg_subscription") == 0


def test_offline_move_of_a_suspended_tenant_when_online_is_impossible(fleet, ctx, admin_url):
    fleet.place("sleeper", "default")
    with tenant_login(ctx, "sleeper") as conn:
        conn.execute("INSERT INTO leads (full_name) VALUES ('kept')")
    assert fleet.client.post("/v1/plans", headers=fleet.auth, json={
        "name": "tight", "connection_limit": 4, "statement_timeout_ms": 6000,
        "idle_in_transaction_timeout_ms": 7000}).status_code == 201
    assert fleet.client.patch("/v1/tenants/sleeper", headers=fleet.auth, json={"plan": "tight"}).status_code == 200
    assert fleet.client.post("/v1/tenants/sleeper/suspend", headers=fleet.auth).status_code == 200

    refused = fleet.client.post("/v1/tenants/sleeper/move", headers=fleet.auth, json={"server": "pg2", "mode": "online"})
    assert refused.status_code == 422 and "wal_level" in refused.get_json()["detail"]

    op = _move(fleet, "sleeper", server="pg2")
    assert op["result"]["mode"] == "offline"  # chosen, since online is impossible from `default`
    fleet.run_jobs()
    done = operation(fleet.client, fleet.auth, op["id"])
    assert done["status"] == "succeeded", done
    body = tenant(fleet.client, fleet.auth, "sleeper")
    assert body["server"] == "pg2" and body["status"] == "suspended"
    with tenant_login(ctx, "sleeper") as conn:
        assert conn.execute("SELECT full_name FROM leads").fetchall() == [("kept",)]
    assert databases(admin_url, "tenant\\_sleeper%") == {done["result"]["retired_database"]}
    assert done["result"]["bytes_done"] == done["result"]["bytes_total"] == done["result"]["archive_bytes"] > 0
    assert "tenant_sleeper" in roles(fleet.url("pg2"))
    # The plan's limits came along: on the target's role, not only on the source's.
    assert role_limits(fleet.url("pg2"), "tenant_sleeper") == [
        4, ["statement_timeout=6000", "idle_in_transaction_session_timeout=7000"]]

    # The role left on `default` owns the retired source: reconcile sees no orphan there meanwhile. Once the
    # prune job drops that database after its grace period, the role goes too; the one on pg2 stays.
    def flagged() -> list:
        found = fleet.client.get("/v1/fleet/reconcile", headers=fleet.auth).get_json()["servers"]["default"]
        return [item for kind in ("orphan_roles", "orphan_databases") for item in found[kind]
                if "sleeper" in item["name"]]

    assert flagged() == [] and "tenant_sleeper" in roles(admin_url)
    assert prune_backups(ctx, tenant_ids=["sleeper"]).dropped_roles == []  # not due yet
    later = utcnow() + timedelta(days=ctx.settings.retired_database_days + 1)
    pruned = prune_backups(ctx, now=later, tenant_ids=["sleeper"])
    assert pruned.dropped_databases == [done["result"]["retired_database"]]
    assert pruned.dropped_roles == ["tenant_sleeper"]
    assert databases(admin_url, "tenant\\_sleeper%") == set() and "tenant_sleeper" not in roles(admin_url)
    assert flagged() == [] and "tenant_sleeper" in roles(fleet.url("pg2"))


def test_move_refusals_and_the_cli(fleet):
    fleet.place("stay", "pg2")
    cases = [({"server": "pg2"}, 422), ({"server": "nowhere"}, 404), ({"server": "pg3", "mode": "sideways"}, 422),
             ({}, 422), ({"server": "pg3", "mode": None, "extra": 1}, 422)]
    for body, status in cases:
        response = fleet.client.post("/v1/tenants/stay/move", headers=fleet.auth, json=body)
        assert response.status_code == status, (body, response.get_json())
    assert fleet.client.post("/v1/tenants/ghost/move", headers=fleet.auth, json={"server": "pg3"}).status_code == 404
    fleet.client.post("/v1/servers/pg3/drain", headers=fleet.auth, json={"move_tenants": False})
    assert fleet.client.post("/v1/tenants/stay/move", headers=fleet.auth, json={"server": "pg3"}).status_code == 409
    fleet.client.post("/v1/servers/pg3/drain", headers=fleet.auth, json={"draining": False})

    assert CliRunner().invoke(cli, ["tenants", "move", "stay", "--to", "pg3", "--online", "--offline"]).exit_code == 2
    started = CliRunner().invoke(cli, ["tenants", "move", "stay", "--to", "pg3", "--no-follow"], catch_exceptions=False)
    assert started.exit_code == 0, started.output
    fleet.run_jobs()
    followed = CliRunner().invoke(cli, ["operations", "show", started.stdout.strip().splitlines()[-1], "--follow"])
    assert followed.exit_code == 0 and '"mode": "online"' in followed.stdout
    assert tenant(fleet.client, fleet.auth, "stay")["server"] == "pg3"


def _kill_horse_at(worker, ctx, operation_id: str, step: str, killed: list) -> None:
    """Kill -9 the work horse running the operation as soon as it reports `step`."""
    from control_plane.catalog.models import Operation

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not killed:
        with ctx.sessions() as session:
            op = session.get(Operation, operation_id)
            if op.status.finished:
                return
            at = op.step
        if at == step and worker.horse_pid:
            os.kill(worker.horse_pid, signal.SIGKILL)
            killed.append(step)
            return
        time.sleep(0.002)


def test_kill_9_at_each_phase_is_undone_or_finished_by_retry(fleet, ctx, settings):
    fleet.place("phoenix", "pg2")
    with tenant_login(ctx, "phoenix") as conn:
        conn.execute("INSERT INTO leads (full_name) SELECT 'seed ' || g FROM generate_series(1, 500) g")
    here, there = "pg2", "pg3"
    for step in ("copy_schema", "copy_data", "cut_over", "clean_up"):
        op = _move(fleet, "phoenix", server=there, mode="online")
        worker = build_worker(settings)
        killed: list[str] = []
        killer = threading.Thread(target=_kill_horse_at, args=(worker, ctx, op["id"], step, killed), daemon=True)
        killer.start()
        worker.work(burst=True, logging_level="WARNING")
        killer.join(60)
        failed = operation(fleet.client, fleet.auth, op["id"])
        assert killed == [step] and failed["status"] == "failed", (step, failed)

        # Served from exactly one database: the one the catalog names, with every row; the other server
        # keeps nothing of the tenant but, after the switch, the retired source.
        body = tenant(fleet.client, fleet.auth, "phoenix")
        assert body["status"] == "active" and body["server"] in (here, there), (step, body)
        with tenant_login(ctx, "phoenix") as conn:
            assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 500
        if body["server"] == here:
            assert not databases(fleet.url(there), "tenant\\_phoenix\\_db"), step
            assert _replication_leftovers(fleet.url(here)) == [] and _replication_leftovers(fleet.url(there)) == []

        retried = fleet.client.post(f"/v1/operations/{op['id']}/retry", headers=fleet.auth)
        assert retried.status_code == 202, retried.get_json()
        fleet.run_jobs()
        assert operation(fleet.client, fleet.auth, op["id"])["status"] == "succeeded", step
        assert tenant(fleet.client, fleet.auth, "phoenix")["server"] == there
        with tenant_login(ctx, "phoenix") as conn:
            assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 500
        assert databases(fleet.url(there), "tenant\\_phoenix\\_db") == {"tenant_phoenix_db"}
        assert not databases(fleet.url(here), "tenant\\_phoenix\\_db")
        assert _replication_leftovers(fleet.url(here)) == [] and _replication_leftovers(fleet.url(there)) == []
        here, there = there, here



def test_kill_9_of_worker_and_horse_mid_move_then_it_succeeds_by_itself(fleet, ctx, processes):
    """A lost node mid-move (the worker and its work horse killed -9 at a point a seeded random chooses): the
    replacement worker's start-up sweep fails the attempt, undoes it and retries it, without anyone."""
    processes.standby()  # its imports meanwhile
    fleet.place("lazarus", "pg2")
    with tenant_login(ctx, "lazarus") as conn:
        conn.execute("INSERT INTO leads (full_name) SELECT 'seed ' || g FROM generate_series(1, 500) g")
    op = _move(fleet, "lazarus", server="pg3", mode="online")
    # prepare_target, copy_schema, start_replication, catch_up, cut_over (clean-up: the test above)
    _, step = crash_at_random_point(ctx, processes, None, op["id"], [5, 10, 15, 78, 85], random.Random(SEED))
    ended(ctx, op["id"], 120, f"the move killed at {step} to end (seed {SEED})")
    done = operation(fleet.client, fleet.auth, op["id"])
    assert (done["status"], done["attempts"]) == ("succeeded", 2), (step, SEED, done)
    body = tenant(fleet.client, fleet.auth, "lazarus")
    assert (body["status"], body["server"]) == ("active", "pg3")
    with tenant_login(ctx, "lazarus") as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 500
    assert databases(fleet.url("pg3"), "tenant\\_lazarus\\_db") == {"tenant_lazarus_db"}
    assert not databases(fleet.url("pg2"), "tenant\\_lazarus\\_db")
    assert _replication_leftovers(fleet.url("pg2")) == [] and _replication_leftovers(fleet.url("pg3")) == []


def test_cancel_queued_then_running_before_the_cut_over_leaves_the_source_untouched(fleet, ctx, settings):
    from control_plane.catalog.models import Operation

    fleet.place("undecided", "pg2")
    with tenant_login(ctx, "undecided") as conn:
        conn.execute("INSERT INTO leads (full_name) SELECT 'seed ' || g FROM generate_series(1, 500) g")
    queued = _move(fleet, "undecided", server="pg3", mode="online")  # no worker yet: cancelled at once
    response = fleet.client.post(f"/v1/operations/{queued['id']}/cancel", headers=fleet.auth)
    assert response.status_code == 202 and response.get_json()["status"] == "cancelled", response.get_json()
    body = tenant(fleet.client, fleet.auth, "undecided")
    assert (body["status"], body["server"]) == ("active", "pg2")

    op = _move(fleet, "undecided", server="pg3", mode="online")
    answers: list[int] = []

    def cancel_once_replicating() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with ctx.sessions() as session:
                current = session.get(Operation, op["id"])
                if current.status.finished:
                    return
                step = current.step
            if step in ("start_replication", "copy_data", "catch_up"):
                answers.append(fleet.client.post(f"/v1/operations/{op['id']}/cancel", headers=fleet.auth).status_code)
                return
            time.sleep(0.002)

    canceller = threading.Thread(target=cancel_once_replicating, daemon=True)
    canceller.start()
    build_worker(settings).work(burst=True, logging_level="WARNING")
    canceller.join(60)
    done = operation(fleet.client, fleet.auth, op["id"])
    assert answers and answers[0] in (200, 202) and done["status"] == "cancelled", (answers, done)
    body = tenant(fleet.client, fleet.auth, "undecided")
    assert body["server"] == "pg2" and body["status"] == "active"
    with tenant_login(ctx, "undecided") as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 500
    assert not databases(fleet.url("pg3"), "tenant\\_undecided%")
    assert _replication_leftovers(fleet.url("pg2")) == [] and _replication_leftovers(fleet.url("pg3")) == []
    assert one(fleet.url("pg3"), "SELECT count(*) FROM pg_subscription") == 0
    assert one(fleet.url("pg2"), "SELECT count(*) FROM pg_publication", dbname="tenant_undecided_db") == 0


def _log_statements(fleet: Fleet, value: str) -> None:
    for name in ("pg2", "pg3"):
        with psycopg.connect(fleet.url(name), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET log_statement = '{value}'")
            conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 30  # the reload is asynchronous: poll until new sessions see it
        while one(fleet.url(name), "SHOW log_statement") != value:
            assert time.monotonic() < deadline, f"log_statement never became {value} on {name}"
            time.sleep(0.05)


def test_online_move_logs_no_role_password_with_log_statement_all(fleet, ctx):
    fleet.place("quiet", "pg2")
    with ctx.sessions() as session:
        row = session.get(Tenant, "quiet")
        password = ctx.keyring.decrypt(row.role_password_encrypted, role_secret_context("quiet"))
    offsets = {name: fleet.servers[name].log_file.stat().st_size for name in ("pg2", "pg3")}
    _log_statements(fleet, "all")
    try:
        op = _move(fleet, "quiet", server="pg3", mode="online")
        fleet.run_jobs()
    finally:
        _log_statements(fleet, "none")
    assert operation(fleet.client, fleet.auth, op["id"])["status"] == "succeeded"
    logs = {}
    for name, offset in offsets.items():
        with open(fleet.servers[name].log_file, "rb") as f:
            f.seek(offset)
            logs[name] = f.read().decode("utf-8", errors="replace")
    assert "SCRAM-SHA-256$" in logs["pg3"]  # the role DDL on the target was logged, as a verifier
    assert "CREATE PUBLICATION" in logs["pg2"]  # statements were logged during the move
    for name, text in logs.items():
        assert password not in text, name
        assert "CREATE SUBSCRIPTION" not in text and "password=" not in text, name
