"""Provisioning benchmark: median per-tenant time through the API with workers running, vs a raw
CREATE DATABASE on the same server in the same run, and where the time goes (phase by phase).
Prints; asserts nothing.

Each tenant is created alone (the next one once the last is active and, with a warm pool, the pool is
full again), as one API client creating one tenant would see it. The phases of one provisioning:
  http       POST /v1/tenants until its 202 (validation, the admin password's argon2 hash, one commit, enqueue)
  hand-off   RQ job enqueued → its work horse started (Redis, the worker's dequeue, the fork)
  set-up     work horse started → operation running (context, the tenant's lock, the start commit)
  <steps>    the operation's steps, from the worker's log (each step until the next)
  seen       operation finished → the client polling it sees it (poll interval, one GET)
"API call → active" ends at the commit that activates the tenant (the operation's finished_at); "seen"
adds the client's polling.

Usage: scripts/bench provision [N [STRATEGY]]   (STRATEGY: a word of its name, e.g. warm)
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

from psycopg import sql
from rq.exceptions import NoSuchJobError
from rq.job import Job

import tenant_migrations
from benchmarks._catalog import admin_connection, throwaway_catalog
from control_plane.adapters.warm_pool import WarmPool
from control_plane.app import create_app
from control_plane.bootstrap import redis_client
from control_plane.catalog.models import DatabaseServer, Operation, TokenRole
from control_plane.naming import job_id
from control_plane.services.auth import create_token

POLL_SECONDS = 0.002


@dataclasses.dataclass
class Sample:
    tenant_id: str
    operation_id: str
    posted: float    # wall clock, seconds
    answered: float
    seen: float

    @property
    def total(self) -> float:
        return self.seen - self.posted


def raw_create_database(conn, name: str) -> float:
    """One raw CREATE DATABASE (the server's default template and strategy); dropped again, untimed."""
    ident = sql.Identifier(name)
    started = time.perf_counter()
    conn.execute(sql.SQL("CREATE DATABASE {}").format(ident))
    elapsed = time.perf_counter() - started
    conn.execute(sql.SQL("DROP DATABASE {}").format(ident))
    return elapsed


def provision_one(client, headers, tenant_id: str) -> Sample:
    posted = time.time()
    response = client.post("/v1/tenants", headers=headers,
                           json={"id": tenant_id, "name": tenant_id, "admin_email": f"a@{tenant_id}.example"})
    answered = time.time()
    operation_url = response.headers["Location"]
    deadline = time.monotonic() + 120
    while True:  # poll the operation like an API client would
        status = client.get(operation_url, headers=headers).get_json()["status"]
        if status in ("succeeded", "failed", "cancelled"):
            break
        if time.monotonic() > deadline:
            raise SystemExit(f"provisioning {tenant_id} did not finish in 120 s (are the workers running?)")
        time.sleep(POLL_SECONDS)
    seen = time.time()
    if status != "succeeded":
        raise SystemExit(f"provisioning {tenant_id} {status}: {client.get(operation_url, headers=headers).get_json()}")
    return Sample(tenant_id, response.get_json()["id"], posted, answered, seen)


def wait_for_pool(ctx, size: int) -> None:
    """Until the default server's pool holds `size` spares again and no refill job is running."""
    with ctx.sessions() as session:
        admin = ctx.admin_for(session.get(DatabaseServer, "default"))
    deadline = time.monotonic() + 120
    while len(WarmPool(admin).spares(tenant_migrations.head_revision())) < size or refill_running(ctx):
        if time.monotonic() > deadline:
            raise SystemExit("the warm pool was not refilled within 120 s")
        time.sleep(0.02)


def refill_running(ctx) -> bool:
    try:
        job = Job.fetch("warm-pool-refill", connection=redis_client(ctx.settings))
    except NoSuchJobError:
        return False
    return job.get_status(refresh=False) in ("queued", "started")


def phases(ctx, samples: list[Sample], log_path: str) -> dict[str, list[float]]:
    """Seconds per phase and sample (see the module docstring)."""
    steps: dict[str, list[tuple[str, float]]] = defaultdict(list)
    with open(log_path, encoding="utf-8") as log:
        for line in log:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            message, op_id = record.get("message", ""), record.get("operation_id")
            at = datetime.fromisoformat(record["timestamp"]).timestamp() if op_id else 0.0
            if op_id and record.get("logger") == "control_plane.services.runner" and message.endswith("%)"):
                steps[op_id].append((message.rsplit(": ", 1)[1].split(" (")[0], at))
            elif op_id and record.get("logger") == "control_plane.adapters.warm_pool" and "claimed as" in message:
                steps[op_id].append(("seed + activate", at))  # the claim's own log line, no progress commit
    connection = redis_client(ctx.settings)
    found: dict[str, list[float]] = defaultdict(list)
    with ctx.sessions() as session:
        for sample in samples:
            op = session.get(Operation, sample.operation_id)
            running, finished = op.started_at.timestamp(), op.finished_at.timestamp()
            found["= to active"].append(finished - sample.posted)
            found["seen"].append(sample.seen - finished)
            try:
                job = Job.fetch(job_id(sample.operation_id), connection=connection)
            except NoSuchJobError:  # finished within the request (a warm spare): no job, no worker
                found["http: recorded"].append(running - sample.posted)
                found["  claim, seed, commit"].append(finished - running)
                found["  answer sent"].append(sample.answered - finished)
                continue
            enqueued = job.enqueued_at.replace(tzinfo=timezone.utc).timestamp()
            horse = job.started_at.replace(tzinfo=timezone.utc).timestamp()
            found["http"].append(sample.answered - sample.posted)
            found["hand-off"].append(horse - enqueued)
            found["set-up"].append(running - horse)
            marks = steps.get(sample.operation_id, [])
            ends = [at for _, at in marks[1:]] + [finished]
            for (step, at), end in zip(marks, ends):
                found[f"  {step}"].append(end - at)
    return found


def main(argv: list[str]) -> None:
    if any(arg.startswith("-") for arg in argv) or (argv and not argv[0].isdigit()):
        raise SystemExit("usage: scripts/bench provision [N [STRATEGY]]   (default 20, every strategy; STRATEGY: a "
                         "word of its name, e.g. warm)")
    count = int(argv[0]) if argv else 20
    only = argv[1] if len(argv) > 1 else ""  # e.g. "warm": only the strategies whose name contains it
    with throwaway_catalog("provision") as ctx:
        client = create_app(ctx=ctx).test_client()
        headers = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'bench')[1]}"}
        results: dict[str, tuple[list[Sample], list[float], dict[str, list[float]]]] = {}
        strategies = (("create + alembic upgrade", "false", 0), ("clone of the head template", "true", 0),
                      ("warm pool (WARM_POOL_SIZE=2)", "true", 2))
        with admin_connection() as raw_conn:
            for strategy, from_template, warm in strategies:
                if only not in strategy:
                    continue
                with running_workers(2, PROVISION_FROM_TEMPLATE=from_template, WARM_POOL_SIZE=str(warm)) as log_path:
                    provision_one(client, headers, f"bench-warm-{uuid.uuid4().hex[:6]}")  # builds the template
                    samples, raw = [], []
                    for index in range(count):
                        if warm:
                            wait_for_pool(ctx, warm)
                        # The baseline is measured next to each sample: the machine's load moves during a run.
                        raw.append(raw_create_database(raw_conn, f"bench_raw_{os.getpid()}_{index}"))
                        samples.append(provision_one(client, headers, f"bench-{uuid.uuid4().hex[:6]}-{index}"))
                    results[strategy] = (samples, raw, phases(ctx, samples, log_path))
        print(f"provision: {count} tenants one at a time through the API, 2 workers, same server (medians; each "
              "tenant created alone, with the warm pool full; a raw CREATE DATABASE measured before each)")
        for strategy, (samples, raw, found) in results.items():
            seen, raw_median = statistics.median(s.total for s in samples), statistics.median(raw)
            active = statistics.median(found["= to active"])
            print(f"  {strategy:<30} raw CREATE DATABASE {raw_median * 1000:6.1f} ms | API call → active "
                  f"{active * 1000:7.1f} ms {active / raw_median:5.2f}x raw | → seen by the polling client "
                  f"{seen * 1000:7.1f} ms {seen / raw_median:5.2f}x raw")
        every_raw = [value for _, raw, _ in results.values() for value in raw]
        print(f"  (raw CREATE DATABASE over the whole run: median {statistics.median(every_raw) * 1000:.1f} ms, "
              f"min {min(every_raw) * 1000:.1f}, max {max(every_raw) * 1000:.1f})")
        with ctx.sessions() as session:
            warm_ops = [sample.operation_id for sample in results.get(strategies[-1][0], ([],))[0]]
            claimed = sum(bool((session.get(Operation, op_id).result or {}).get("warm")) for op_id in warm_ops)
        print(f"  (warm pool: {claimed} of {count} provisionings claimed a spare)")
        print("where the time goes (median ms per phase; steps from the worker's log):")
        names = list(dict.fromkeys(name for _, _, found in results.values() for name in found))
        print(f"  {'phase':<22}" + "".join(f"{strategy[:26]:>28}" for strategy in results))
        for name in names:
            cells = []
            for _, _, found in results.values():
                values = found.get(name)
                cells.append(f"{statistics.median(values) * 1000:>28.1f}" if values else f"{'-':>28}")
            print(f"  {name:<22}" + "".join(cells))


@contextmanager
def running_workers(count: int, **env: str) -> Iterator[str]:
    """`count` workers with `env`; yields the path of their (JSON) log."""
    with tempfile.NamedTemporaryFile("w+", prefix="bench-provision-", suffix=".log", delete=False) as log:
        log_path = log.name
    with open(log_path, "a", encoding="utf-8") as log:
        workers = [subprocess.Popen([sys.executable, "-m", "control_plane.cli", "worker"],
                                    env={**os.environ, "LOG_FORMAT": "json", **env},
                                    stdout=subprocess.DEVNULL, stderr=log) for _ in range(count)]
        try:
            yield log_path
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
            os.unlink(log_path)


if __name__ == "__main__":
    main(sys.argv[1:])
