"""Nothing stranded: an operation requested while Redis is down runs when it returns (forked workers and
the scheduler at its default interval stay up); kill -9 of the worker and its work horse at a random point
of each kind, workers restarted as a supervisor would, and every operation still ends succeeded with the
world as it should be (moves: tests/test_moves.py)."""
from __future__ import annotations

import os
import random
import time
from dataclasses import replace

from rq import Worker
from sqlalchemy import select

import tenant_migrations
from backup_support import backup_cleanup, fingerprint, store_root, tid  # noqa: F401
from control_plane import naming
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose, redis_client
from control_plane.catalog.backup_models import Backup, BackupStatus, RetiredDatabase
from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token
from crash_support import SEED, crash_at_random_point, ended, processes  # noqa: F401 (fixture)
from devstack.redis_server import RedisServer
from helpers import create_tenant, databases, one, operation, roles, tenant, tenant_login, wait_until

FIRST = tenant_migrations.known_revisions()[0]
HEAD = tenant_migrations.head_revision()


def test_an_operation_requested_while_redis_is_down_runs_when_it_is_back(settings, tmp_path, processes):
    """The guarantee: within 90 s of Redis's return, with the scheduler at its default (60 s) interval (a
    worker that sees Redis come back sweeps at once). One worker was running a job when Redis went: RQ quits
    there, and the worker process starts working again instead."""
    from rq import Queue
    from rq.job import JobStatus

    server = RedisServer(tmp_path / "redis").start()
    own = replace(settings, redis_url=server.url)
    ctx = build_context(own)
    try:
        env = {**os.environ, "REDIS_URL": server.url}
        workers = [processes("worker", env=env) for _ in range(2)]
        processes("scheduler", env=env)
        connection = redis_client(own)
        try:
            wait_until(lambda: len(Worker.all(connection=connection)) == 2, "both workers up", 60)
        except AssertionError as exc:  # rare under load: say what the workers were doing
            raise AssertionError(f"{exc}; exit codes {[worker.poll() for worker in workers]}; logs: "
                                 + " || ".join(processes.log(worker)[-2000:] for worker in workers)) from None
        client = create_app(ctx=ctx).test_client()
        auth = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'tests')[1]}"}
        queue = Queue(settings.queue_name, connection=connection)
        busy = queue.enqueue(time.sleep, 2)
        wait_until(lambda: busy.get_status(refresh=True) == JobStatus.STARTED, "a job running", 60)

        server.stop()
        op = create_tenant(client, auth, "outage")  # 202: the catalog, not Redis, holds what must happen
        assert operation(client, auth, op["id"])["status"] == "queued"
        server.start()

        wait_until(lambda: operation(client, auth, op["id"])["status"] != "queued",
                   "the operation running again after Redis's return", 90)
        wait_until(lambda: tenant(client, auth, "outage")["status"] == "active", "the tenant active", 120)
        assert operation(client, auth, op["id"])["status"] == "succeeded"
        assert [worker.poll() for worker in workers] == [None, None]  # both stayed up all along
        assert any("sweep after a Redis outage:" in processes.log(worker) for worker in workers)
        # Both work again, the one that had a job too: two long jobs run at the same time, which takes two
        # workers (a quick job could be finished by one worker before the other is back at the queue).
        jobs = [queue.enqueue(time.sleep, 10) for _ in range(2)]
        wait_until(lambda: all(job.get_status(refresh=True) == JobStatus.STARTED for job in jobs),
                   "both running at once", 60)
        for job in jobs:
            job.refresh()
        assert len({job.worker_name for job in jobs}) == 2
    finally:
        processes.stop()
        dispose(ctx)
        server.stop()


def test_one_worker_sweeps_after_an_outage_while_the_others_skip(client, auth, ctx, settings, redis_conn):
    from rq import Queue

    from control_plane.jobs.worker import sweep_after_outage

    op = create_tenant(client, auth, tid("outage"))
    Queue(settings.queue_name, connection=redis_conn).empty()  # its enqueue was lost in the outage
    key = naming.recovery_sweep_key(settings.queue_name)
    redis_conn.set(key, "another-worker")
    assert sweep_after_outage(settings, redis_conn, "this-worker") is False  # another one is sweeping
    assert not ctx.queue.is_pending(op["id"])
    redis_conn.delete(key)
    assert sweep_after_outage(settings, redis_conn, "this-worker") is True
    assert ctx.queue.is_pending(op["id"])  # dispatched again at once (no grace: queued means never enqueued)
    assert redis_conn.get(key) is None  # released: the next outage's return sweeps again


def test_kill_9_at_a_random_point_of_each_kind_then_the_operation_succeeds(ctx, settings, client, auth, processes,
                                                                           admin_url):
    """Each kind killed (worker and work horse) at a point of its progress a seeded random chooses; a new
    worker's start-up sweep fails the attempt, undoes it and retries it: it ends succeeded, attempt 2."""
    rng = random.Random(SEED)
    name = tid("crash")
    database, role = naming.database_name(name), naming.role_name(name)

    def leftovers() -> set[str]:
        """The tenant's databases the catalog does not know (neither live nor recorded as retired)."""
        with ctx.sessions() as session:
            retired = set(session.scalars(select(RetiredDatabase.database_name)
                                          .where(RetiredDatabase.tenant_id == name, RetiredDatabase.dropped_at.is_(None))))
        return databases(admin_url, role.replace("_", r"\_") + "%") - {database} - retired

    worker = None

    def crash(response, points: list[int]) -> dict:
        nonlocal worker
        assert response.status_code == 202, response.get_json()
        op_id = response.get_json()["id"]
        worker, step = crash_at_random_point(ctx, processes, worker, op_id, points, rng)
        ended(ctx, op_id, 90, f"operation killed at {step} to end (seed {SEED})")
        done = operation(client, auth, op_id)
        assert (done["status"], done["attempts"]) == ("succeeded", 2), (step, SEED, done)
        return done

    body = {"id": name, "name": "Crash clinic", "admin_email": "owner@crash.example"}
    crash(client.post("/v1/tenants", json=body, headers=auth),
          [10, 15, 30, 40, 55, 80])  # claim_spare, create_role, create_database, restrict_access, migrate, seed
    assert tenant(client, auth, name)["status"] == "active" and leftovers() == set()
    assert roles(admin_url, role) == {role}
    with tenant_login(ctx, name) as conn:
        conn.execute("INSERT INTO leads (full_name) SELECT 'lead ' || g FROM generate_series(1, 50) g")
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1
    data = fingerprint(ctx, name)

    backup = crash(client.post(f"/v1/tenants/{name}/backups", headers=auth), [10])
    with ctx.sessions() as session:
        backups = {b.id: b.status for b in session.scalars(select(Backup).where(Backup.tenant_id == name))}
    assert list(backups.values()).count(BackupStatus.COMPLETED) == 1 and BackupStatus.RUNNING not in backups.values()
    # The killed attempt's partial objects are gone: only completed backups have objects in the store.
    stored = {path.name for path in (store_root(settings) / name).iterdir()}
    assert stored <= {b for b, status in backups.items() if status is BackupStatus.COMPLETED}, stored
    assert tenant(client, auth, name)["status"] == "active" and fingerprint(ctx, name) == data

    for target, revision in ((FIRST, FIRST), ("head", HEAD)):
        crash(client.post(f"/v1/tenants/{name}/migrate", json={"target": target}, headers=auth), [10])
        body = tenant(client, auth, name)
        assert (body["status"], body["schema_revision"]) == ("active", revision)
        assert one(admin_url, "SELECT version_num FROM alembic_version", dbname=database) == revision
        with tenant_login(ctx, name) as conn:
            assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 50
    assert fingerprint(ctx, name) == data and leftovers() == set()

    with tenant_login(ctx, name) as conn:
        conn.execute("DELETE FROM leads WHERE full_name LIKE 'lead 1%'")
    crash(client.post(f"/v1/tenants/{name}/restore", json={"backup_id": backup["result"]["backup_id"]}, headers=auth),
          [10, 40, 70, 80, 90])  # download_verify, restore, check, safety_backup, swap
    assert tenant(client, auth, name)["status"] == "active" and leftovers() == set()
    assert fingerprint(ctx, name) == data  # as backed up
    assert roles(admin_url, role) == {role}

    deleted = crash(client.delete(f"/v1/tenants/{name}", headers=auth), [10, 30, 50])  # final backup, release, retire
    assert tenant(client, auth, name)["status"] == "deleted" and leftovers() == set()
    assert databases(admin_url, role.replace("_", r"\_") + "%") == {deleted["result"]["retired_database"]}
    assert one(admin_url, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", role) is False

    crash(client.post(f"/v1/tenants/{name}/undelete", headers=auth), [10])  # check (bring_back is over in ms)
    assert tenant(client, auth, name)["status"] == "active" and leftovers() == set()
    assert fingerprint(ctx, name) == data

    crash(client.delete(f"/v1/tenants/{name}?purge=true", headers=auth), [30, 50])  # release, drop
    assert tenant(client, auth, name)["status"] == "deleted"
    assert leftovers() == set() and roles(admin_url, role) == set()
    assert databases(admin_url, role.replace("_", r"\_") + "%") == set()
