"""Nothing stranded: an operation requested while Redis is down runs when it returns (forked workers and
the scheduler stay up); kill -9 of the worker at a random step of each kind, workers restarted as a
supervisor would, and every operation still ends succeeded with the world as it should be."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
from rq import Worker
from sqlalchemy import select

import tenant_migrations
from backup_support import backup_cleanup, tid  # noqa: F401
from control_plane import naming
from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose, redis_client
from control_plane.catalog.backup_models import Backup, BackupStatus, RetiredDatabase
from control_plane.catalog.models import Operation, TokenRole
from control_plane.services.auth import create_token
from devstack.redis_server import RedisServer
from helpers import create_tenant, databases, one, operation, roles, tenant, tenant_login

FIRST = tenant_migrations.known_revisions()[0]
HEAD = tenant_migrations.head_revision()


def wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds:.0f} s: {what}")
        time.sleep(0.05)


@pytest.fixture
def processes(tmp_path):
    """Starts `tenantctl` processes (each in its own process group); stops whatever is left afterwards."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(tmp_path / f"{args[0]}-{len(started)}.log", "wb")
        process = subprocess.Popen([sys.executable, "-m", "control_plane.cli", *args], env=env or dict(os.environ),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        log.close()
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in started:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def kill_9(process: subprocess.Popen) -> None:
    """The worker and its work horse die at once, as when a node is lost (nothing gets to clean up)."""
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def test_an_operation_requested_while_redis_is_down_runs_when_it_is_back(settings, tmp_path, processes):
    server = RedisServer(tmp_path / "redis").start()
    own = replace(settings, redis_url=server.url)
    ctx = build_context(own)
    try:
        env = {**os.environ, "REDIS_URL": server.url}
        workers = [processes("worker", env=env) for _ in range(2)]
        processes("scheduler", "--interval", "10", env=env)
        connection = redis_client(own)
        wait_until(lambda: len(Worker.all(connection=connection)) == 2, 60, "both workers up")
        client = create_app(ctx=ctx).test_client()
        auth = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'tests')[1]}"}

        server.stop()
        op = create_tenant(client, auth, "outage")  # 202: the catalog, not Redis, holds what must happen
        assert operation(client, auth, op["id"])["status"] == "queued"
        server.start()

        wait_until(lambda: tenant(client, auth, "outage")["status"] == "active", 90, "the tenant active")
        assert operation(client, auth, op["id"])["status"] == "succeeded"
        assert [worker.poll() for worker in workers] == [None, None]  # both stayed up all along
    finally:
        dispose(ctx)
        server.stop()


def _step_reached(ctx, operation_id: str, step: str) -> bool:
    with ctx.sessions() as session:
        op = session.get(Operation, operation_id)
        return op.status.finished or (op.status.value == "running" and op.step == step)


def _crash_and_recover(ctx, client, auth, processes, response, steps: list[str]) -> dict:
    """Run the requested operation in a worker killed -9 at a random one of its steps; start a new worker
    (its start-up sweep fails the abandoned operation and retries it); return the finished operation."""
    assert response.status_code == 202, response.get_json()
    op_id = response.get_json()["id"]
    step = random.choice(steps)
    worker = processes("worker")
    wait_until(lambda: _step_reached(ctx, op_id, step), 60, f"step {step}")
    kill_9(worker)
    replacement = processes("worker")
    done = wait_until(lambda: (op := operation(client, auth, op_id))["status"] in ("succeeded", "cancelled") and op,
                      90, f"operation killed at {step} to succeed")
    kill_9(replacement)  # nothing is running: a plain stop
    assert done["status"] == "succeeded", (step, done)
    return done


def test_kill_9_at_a_random_step_of_each_kind_then_the_operation_succeeds(ctx, client, auth, processes, admin_url):
    name = tid("crash")
    database, role = naming.database_name(name), naming.role_name(name)

    def leftovers() -> set[str]:
        """The tenant's databases the catalog does not know (neither live nor recorded as retired)."""
        with ctx.sessions() as session:
            retired = set(session.scalars(select(RetiredDatabase.database_name)
                                          .where(RetiredDatabase.tenant_id == name, RetiredDatabase.dropped_at.is_(None))))
        return databases(admin_url, role.replace("_", r"\_") + "%") - {database} - retired

    body = {"id": name, "name": "Crash clinic", "admin_email": "owner@crash.example"}
    _crash_and_recover(ctx, client, auth, processes, client.post("/v1/tenants", json=body, headers=auth),
                       ["place", "create_role", "create_database", "restrict_access", "migrate_schema", "seed"])
    assert tenant(client, auth, name)["status"] == "active" and leftovers() == set()
    assert role in roles(admin_url, role)
    with tenant_login(ctx, name) as conn:
        conn.execute("INSERT INTO leads (full_name) SELECT 'lead ' || g FROM generate_series(1, 50) g")
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 1

    backup = _crash_and_recover(ctx, client, auth, processes, client.post(f"/v1/tenants/{name}/backups", headers=auth),
                                ["backup"])
    with ctx.sessions() as session:
        statuses = [b.status for b in session.scalars(select(Backup).where(Backup.tenant_id == name))]
    assert BackupStatus.RUNNING not in statuses and statuses.count(BackupStatus.COMPLETED) == 1

    for target, revision in ((FIRST, FIRST), ("head", HEAD)):
        _crash_and_recover(ctx, client, auth, processes,
                           client.post(f"/v1/tenants/{name}/migrate", json={"target": target}, headers=auth),
                           ["migrate_schema"])
        body = tenant(client, auth, name)
        assert (body["status"], body["schema_revision"]) == ("active", revision)
        assert one(admin_url, "SELECT version_num FROM alembic_version", dbname=database) == revision

    with tenant_login(ctx, name) as conn:
        conn.execute("DELETE FROM leads WHERE full_name LIKE 'lead 1%'")
    _crash_and_recover(ctx, client, auth, processes,
                       client.post(f"/v1/tenants/{name}/restore", json={"backup_id": backup["result"]["backup_id"]},
                                   headers=auth),
                       ["download_verify", "restore", "check", "safety_backup", "swap"])
    assert tenant(client, auth, name)["status"] == "active" and leftovers() == set()
    with tenant_login(ctx, name) as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 50  # as backed up

    _crash_and_recover(ctx, client, auth, processes, client.delete(f"/v1/tenants/{name}", headers=auth),
                       ["final_backup", "release_backups", "drop_database", "drop_role"])
    assert tenant(client, auth, name)["status"] == "deleted"
    assert databases(admin_url, role.replace("_", r"\_") + "%") == set() and roles(admin_url, role) == set()


def test_a_worker_survives_redis_going_away_while_a_job_runs(settings, tmp_path, processes):
    """RQ quits on a Redis error while a work horse runs; the worker process starts working again instead."""
    from rq import Queue
    from rq.job import JobStatus

    server = RedisServer(tmp_path / "redis").start()
    try:
        connection = redis_client(replace(settings, redis_url=server.url))
        worker = processes("worker", env={**os.environ, "REDIS_URL": server.url})
        wait_until(lambda: len(Worker.all(connection=connection)) == 1, 60, "the worker up")
        queue = Queue(settings.queue_name, connection=connection)
        running = queue.enqueue(time.sleep, 3)
        wait_until(lambda: running.get_status(refresh=True) == JobStatus.STARTED, 60, "the job running")

        server.stop()
        server.start()

        after = queue.enqueue(time.sleep, 0)
        wait_until(lambda: after.get_status(refresh=True) == JobStatus.FINISHED, 90, "a job after the outage done")
        assert worker.poll() is None  # the same process, still working
    finally:
        server.stop()
