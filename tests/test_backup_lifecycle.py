"""Backups over time: a crash mid-upload, one snapshot under concurrent writes, retention and pruning,
key rotation, and the staggered daily schedule."""
from __future__ import annotations

import base64
import os
import threading
import time
from datetime import timedelta

import psycopg
import pytest
from click.testing import CliRunner

import tenant_migrations

from backup_support import (active_tenant, back_up, backup_cleanup, db, fingerprint, restore, role,  # noqa: F401
                            store_root, tid, write_rows)
from control_plane import naming
from control_plane.adapters.backup_store import FileBackupStore
from control_plane.catalog.models import TokenRole, utcnow
from control_plane.cli import cli
from control_plane.errors import ConfigurationError
from control_plane.settings import Settings
from control_plane.services.auth import create_token
from control_plane.services.backup_schedule import BackupWindow, schedule_due_backups
from control_plane.services.pruning import prune_backups
from helpers import operation, tenant, tenant_login

BUSY = tid("busy")
BUSY_COPY = tid("busy-copy")
CRASH = tid("crash")
CRON = tid("cron")
GRACE = tid("grace")
KEEP = tid("keep")
PILE = tid("pile")
OLDER = tid("older")
ROTATE = tid("rotate")
SCHED_A = tid("sched-a")
SCHED_B = tid("sched-b")
SCHED_OFF = tid("sched-off")


def _catalog(settings, query: str, *params):
    with psycopg.connect(settings.catalog_database_url, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def test_a_crash_mid_upload_leaves_no_backup_and_the_retry_succeeds(client, auth, run_jobs, ctx, settings,
                                                                    monkeypatch):
    active_tenant(client, auth, run_jobs, CRASH)
    write_rows(ctx, CRASH, "known")
    live = fingerprint(ctx, CRASH)
    original = FileBackupStore.put

    def die_half_way(self, key, source):
        if key.endswith(naming.BACKUP_DATA_OBJECT):
            partial = self._path(key).with_name("dump.pgc.zst.aes.tmp-crashed")
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(source.read(4096))
            os._exit(9)  # the work horse vanishes mid-upload (OOM killer, node lost)
        return original(self, key, source)

    with monkeypatch.context() as patch:
        patch.setattr(FileBackupStore, "put", die_half_way)
        started = client.post(f"/v1/tenants/{CRASH}/backups", json={}, headers=auth).get_json()
        run_jobs()
    failed = operation(client, auth, started["id"])
    assert failed["status"] == "failed" and "worker process died" in failed["error"]
    rows = _catalog(settings, f"SELECT status, deleted_at IS NOT NULL FROM backups WHERE tenant_id = '{CRASH}'")
    assert rows == [("failed", True)]
    assert not (store_root(settings) / CRASH).exists()  # the partial object went with it
    assert tenant(client, auth, CRASH)["last_backup_at"] is None
    assert fingerprint(ctx, CRASH) == live

    assert client.post(f"/v1/operations/{started['id']}/retry", headers=auth).status_code == 202
    run_jobs()
    done = operation(client, auth, started["id"])
    assert done["status"] == "succeeded" and done["attempts"] == 2
    statuses = sorted(r[0] for r in _catalog(settings, f"SELECT status FROM backups WHERE tenant_id = '{CRASH}'"))
    assert statuses == ["completed", "failed"]
    assert restore(client, auth, run_jobs, CRASH, done["result"]["backup_id"])["status"] == "succeeded"
    assert fingerprint(ctx, CRASH) == live


def test_a_backup_under_concurrent_writes_is_one_snapshot(client, auth, run_jobs, ctx, admin_url):
    """pg_dump takes its snapshot, then locks each table. We hold a lock on one table so pg_dump stops
    right after its snapshot, commit more rows while it waits, then let it go: none of them may appear,
    and the paired rows (one lead, one message per transaction) must stay paired."""
    active_tenant(client, auth, run_jobs, BUSY)
    writer = tenant_login(ctx, BUSY)

    def write_pair(n: int) -> None:
        with writer.transaction():
            lead = writer.execute("INSERT INTO leads (full_name) VALUES (%s) RETURNING id", (f"pair {n}",)).fetchone()[0]
            writer.execute("INSERT INTO messages (lead_id, direction, channel, body) VALUES (%s, 'inbound', 'sms', 'x')",
                           (lead,))

    for n in range(20):
        write_pair(n)
    blocker = tenant_login(ctx, BUSY)
    blocker.autocommit = False
    blocker.execute("LOCK TABLE procedures IN ACCESS EXCLUSIVE MODE")
    seen_waiting = threading.Event()

    def write_while_pg_dump_waits() -> None:
        deadline = time.monotonic() + 60
        try:
            with psycopg.connect(admin_url, autocommit=True) as watcher:
                while time.monotonic() < deadline:  # polls a condition; no fixed sleep
                    if watcher.execute("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) "
                                       f"WHERE NOT l.granted AND a.datname = '{db(BUSY)}' "
                                       "AND a.application_name = 'tenant-control-plane' "
                                       "AND a.query ILIKE 'LOCK TABLE%'").fetchone()[0]:
                        seen_waiting.set()
                        break
            for n in range(20, 30):
                write_pair(n)
        finally:
            blocker.rollback()

    helper = threading.Thread(target=write_while_pg_dump_waits)
    helper.start()
    backup = back_up(client, auth, run_jobs, BUSY)
    helper.join()
    assert seen_waiting.is_set(), "pg_dump never waited on the lock: the test proved nothing"
    assert writer.execute("SELECT count(*) FROM leads").fetchone()[0] == 30

    clone = restore(client, auth, run_jobs, BUSY, backup["id"], mode="new_tenant", new_tenant_id=BUSY_COPY)
    assert clone["status"] == "succeeded"
    with tenant_login(ctx, BUSY_COPY) as copy:
        assert copy.execute("SELECT count(*) FROM leads").fetchone()[0] == 20
        assert copy.execute("SELECT count(*) FROM messages").fetchone()[0] == 20
    writer.close()
    blocker.close()


def test_retention_keeps_exactly_what_the_policy_says(client, auth, run_jobs, ctx, settings):
    active_tenant(client, auth, run_jobs, KEEP)
    policy = client.put(f"/v1/tenants/{KEEP}/backup-policy", json={"keep_last": 1, "keep_daily_days": 5}, headers=auth)
    assert policy.status_code == 200 and policy.get_json() == {"keep_last": 1, "keep_daily_days": 5, "scheduled": True,
                                                             "rpo_hours": 24, "rpo_source": "default"}
    made = {name: back_up(client, auth, run_jobs, KEEP)["id"]
            for name in ("old", "day3", "day1_early", "day1_late", "today")}
    pinned = back_up(client, auth, run_jobs, KEEP, expires_in_days=30)["id"]
    # Pretend the backups were taken over the last days (relative to a fixed noon, whatever the clock says).
    noon = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    taken = {"old": noon - timedelta(days=10), "day3": noon - timedelta(days=3),
             "day1_early": noon - timedelta(days=1, hours=2), "day1_late": noon - timedelta(days=1, hours=1),
             "today": noon - timedelta(minutes=5)}
    for name, when in taken.items():
        _catalog(settings, "UPDATE backups SET completed_at = %s WHERE id = %s RETURNING id", when, made[name])
    _catalog(settings, "UPDATE backups SET completed_at = %s WHERE id = %s RETURNING id", noon - timedelta(days=40),
             pinned)

    report = prune_backups(ctx, now=noon, tenant_ids=[KEEP])
    assert sorted(report.expired) == sorted([made["old"], made["day1_early"]])
    statuses = dict(_catalog(settings, f"SELECT id, status FROM backups WHERE tenant_id = '{KEEP}'"))
    kept = {name for name, backup_id in made.items() if statuses[backup_id] == "completed"}
    assert kept == {"today", "day1_late", "day3"} and statuses[pinned] == "completed"
    assert {statuses[made[name]] for name in ("old", "day1_early")} == {"expired"}
    folders = {p.name for p in (store_root(settings) / KEEP).iterdir()}
    assert folders == {made["today"], made["day1_late"], made["day3"], pinned}
    # Running it again changes nothing.
    assert prune_backups(ctx, now=noon, tenant_ids=[KEEP]).expired == []
    assert dict(_catalog(settings, f"SELECT id, status FROM backups WHERE tenant_id = '{KEEP}'")) == statuses


def test_retired_databases_are_dropped_after_their_grace_period(client, auth, run_jobs, ctx, settings, admin_url):
    from backup_support import databases_like

    active_tenant(client, auth, run_jobs, GRACE)
    backup = back_up(client, auth, run_jobs, GRACE)
    retired = restore(client, auth, run_jobs, GRACE, backup["id"], safety_backup=False)["result"]["retired_database"]
    assert retired in databases_like(admin_url, f"{role(GRACE)}%")
    CliRunner().invoke(cli, ["backups", "prune", "--tenant", GRACE])
    assert retired in databases_like(admin_url, f"{role(GRACE)}%")  # still in its grace period
    _catalog(settings, "UPDATE retired_databases SET drop_after = now() - interval '1 minute' RETURNING id")
    CliRunner().invoke(cli, ["backups", "prune", "--tenant", GRACE])
    assert databases_like(admin_url, f"{role(GRACE)}%") == {db(GRACE)}


def test_restores_keep_at_most_the_allowed_retired_copies_per_tenant(client, auth, run_jobs, ctx, settings,
                                                                    admin_url, monkeypatch):
    from backup_support import databases_like
    from control_plane.services.kinds import restore as restore_kind

    active_tenant(client, auth, run_jobs, PILE)
    backup = back_up(client, auth, run_jobs, PILE)
    now = utcnow()
    monkeypatch.setattr(restore_kind, "utcnow", lambda: now)  # all three restores in one second: still three names
    tenant_admin = {"Authorization": f"Bearer {create_token(ctx, TokenRole.TENANT_ADMIN, 'pile', PILE)[1]}"}
    retired = []
    for _ in range(3):  # a tenant admin restoring again and again, without the pre-restore backup
        done = restore(client, tenant_admin, run_jobs, PILE, backup["id"], safety_backup=False)
        assert done["status"] == "succeeded", done
        retired.append(done["result"]["retired_database"])
    assert settings.retired_databases_per_tenant == 2
    assert done["result"]["dropped_retired_databases"] == [retired[0]]  # the oldest, once the third restore succeeded
    assert databases_like(admin_url, f"{role(PILE)}%") == {db(PILE), retired[1], retired[2]}
    assert _catalog(settings, "SELECT database_name FROM retired_databases WHERE dropped_at IS NOT NULL") == [(retired[0],)]

    # A lower allowance reaches copies already kept at the next prune: the newest stays.
    monkeypatch.setenv("RETIRED_DATABASES_PER_TENANT", "1")
    pruned = CliRunner().invoke(cli, ["backups", "prune", "--tenant", PILE])
    assert pruned.exit_code == 0, pruned.output
    assert databases_like(admin_url, f"{role(PILE)}%") == {db(PILE), retired[2]}


def test_the_retired_copies_allowance_is_at_least_one(monkeypatch):
    monkeypatch.setenv("RETIRED_DATABASES_PER_TENANT", "0")  # the newest copy is the latest restore's undo
    with pytest.raises(ConfigurationError, match="RETIRED_DATABASES_PER_TENANT must be at least 1"):
        Settings.from_env()


def test_key_rotation_rewraps_and_old_backups_stay_restorable(client, auth, run_jobs, ctx, settings, monkeypatch):
    active_tenant(client, auth, run_jobs, ROTATE)
    write_rows(ctx, ROTATE, "known")
    known = fingerprint(ctx, ROTATE)
    old = back_up(client, auth, run_jobs, ROTATE)
    assert old["keyring_key_id"] == "test1"
    write_rows(ctx, ROTATE, "later", leads=2)
    original = settings.keyring
    new_key = f"k2:{base64.b64encode(os.urandom(32)).decode()}"
    try:
        monkeypatch.setenv("KEYRING", f"{new_key},{original}")
        result = CliRunner().invoke(cli, ["keys", "rotate"])
        assert result.exit_code == 0, result.output
        assert '"tenant_keys": 1' in result.output
        assert _catalog(settings, "SELECT keyring_key_id, wrapped_key LIKE 'v1.k2.%%' FROM tenant_backup_keys "
                                  f"WHERE tenant_id = '{ROTATE}'") == [("k2", True)]
        # The old KEYRING key is retired: the workers only have k2 now, and the backup, sealed before
        # the rotation, still restores.
        monkeypatch.setenv("KEYRING", new_key)
        done = restore(client, auth, run_jobs, ROTATE, old["id"])
        assert done["status"] == "succeeded", done["error"]
    finally:
        # Hand every secret back to the session's key for the tests that follow.
        monkeypatch.setenv("KEYRING", f"{original},{new_key}")
        assert CliRunner().invoke(cli, ["keys", "rotate"]).exit_code == 0
        monkeypatch.setenv("KEYRING", original)
    assert fingerprint(ctx, ROTATE) == known


def test_scheduler_staggers_daily_backups_and_starts_each_once(client, auth, run_jobs, ctx, settings):
    for tenant_id in (SCHED_A, SCHED_B, SCHED_OFF):
        active_tenant(client, auth, run_jobs, tenant_id)
    client.put(f"/v1/tenants/{SCHED_OFF}/backup-policy", json={"scheduled": False}, headers=auth)
    later = utcnow() + timedelta(days=2)  # every tenant's slot has passed since it was created

    started = schedule_due_backups(ctx, now=later)
    assert schedule_due_backups(ctx, now=later) == []  # a second tick (or replica) starts nothing again
    ops = {operation(client, auth, op_id)["tenant_id"] for op_id in started}
    assert ops == {SCHED_A, SCHED_B}
    window = BackupWindow.parse(settings.backup_window)
    assert window.offset(SCHED_A) != window.offset(SCHED_B)
    run_jobs()
    for tenant_id in (SCHED_A, SCHED_B):
        listed = client.get(f"/v1/tenants/{tenant_id}/backups", headers=auth).get_json()
        assert [(b["trigger"], b["status"]) for b in listed] == [("scheduled", "completed")]
    assert client.get(f"/v1/tenants/{SCHED_OFF}/backups", headers=auth).get_json() == []
    # The next day's slot starts the next backup.
    assert len(schedule_due_backups(ctx, now=later + timedelta(days=1))) == 2

    result = CliRunner().invoke(cli, ["scheduler", "--once"])
    assert result.exit_code == 0 and '"started"' in result.output


def test_restoring_an_older_backup_brings_its_schema_to_head(client, auth, run_jobs, ctx, admin_url):
    first, head = tenant_migrations.known_revisions()[0], tenant_migrations.head_revision()
    active_tenant(client, auth, run_jobs, OLDER)
    client.post(f"/v1/tenants/{OLDER}/migrate", json={"target": first}, headers=auth)
    run_jobs()
    with tenant_login(ctx, OLDER) as conn:
        conn.execute("INSERT INTO leads (full_name, email) VALUES ('kept across revisions', 'k@clinic.example')")
    old = back_up(client, auth, run_jobs, OLDER)
    assert old["schema_revision"] == first
    client.post(f"/v1/tenants/{OLDER}/migrate", json={"target": "head"}, headers=auth)
    run_jobs()

    done = restore(client, auth, run_jobs, OLDER, old["id"], safety_backup=False)
    assert done["status"] == "succeeded", done
    assert (done["result"]["backup_schema_revision"], done["result"]["schema_revision"]) == (first, head)
    assert tenant(client, auth, OLDER)["schema_revision"] == head
    with tenant_login(ctx, OLDER) as conn:
        assert conn.execute("SELECT score FROM leads WHERE full_name = 'kept across revisions'").fetchone() == (40,)


def test_the_scheduler_process_enqueues_ticks_that_workers_run(client, auth, run_jobs, settings, redis_conn):
    from rq.cron import get_cron_job_history_key

    from control_plane.jobs.backups import build_cron

    active_tenant(client, auth, run_jobs, CRON)
    _catalog(settings, f"UPDATE tenants SET created_at = now() - interval '3 days' WHERE id = '{CRON}' RETURNING id")
    cron = build_cron(settings)
    try:
        enqueued = cron.enqueue_jobs()  # what the scheduler's loop does each time it wakes up
        # Interval jobs (the backup tick, and the fleet's own) start at once; cron ones (prune at :17...) wait.
        names = {job.name for job in enqueued}
        assert f"{settings.queue_name}:schedule-backups" in names
        assert f"{settings.queue_name}:prune-backups" not in names
        run_jobs()  # the tick starts the day's backup, which the same burst worker then runs
    finally:
        for job in cron.get_jobs():
            redis_conn.delete(get_cron_job_history_key(job.name))
    listed = client.get(f"/v1/tenants/{CRON}/backups", headers=auth).get_json()
    assert [(b["trigger"], b["status"]) for b in listed] == [("scheduled", "completed")]
