"""Runtime benchmark: the example clinic CRM through tenant_runtime vs the same app on one fixed pool.

Prints requests/s and p50/p99 latency of `GET /leads?limit=20` for: the app on one psycopg_pool pool
to one database (baseline); the app through the runtime on one hot tenant; the runtime over many
tenants round-robin under a connection budget (with the peak server connections observed); and the
runtime round-robin over as many tenants as the budget, where every tenant keeps a connection.
Requests go through Flask's WSGI test client from client threads in this process: the figures
compare the request paths, without HTTP parsing or a network. Prints; asserts nothing.

Usage: scripts/bench runtime [--threads 8] [--seconds 5] [--tenants 1000] [--budget 40] [--rounds 3]
(needs TENANT_DB_ADMIN_URL and REDIS_URL, as the tests do; creates and drops its own databases)
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import itertools
import os
import secrets
import statistics
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import psycopg
from flask import Flask, g, request
from psycopg import sql
from psycopg_pool import ConnectionPool
from sqlalchemy import create_engine, make_url
from sqlalchemy.pool import NullPool

import tenant_migrations
from control_plane import naming
from control_plane.adapters.crypto import Keyring
from control_plane.catalog.db import create_catalog_engine, sqlalchemy_url, transaction, session_factory, upgrade_catalog
from control_plane.catalog.models import DatabaseServer, Tenant, TenantStatus
from control_plane.services.context import role_secret_context, server_secret_context
from tenant_runtime import TenantRouter
from tenant_runtime.example_app import create_app
from tenant_migrations.seed import seed

PREFIX = f"rtb{uuid.uuid4().hex[:5]}"  # this run's tenants, roles and databases
TEMPLATE_OWNER = f"{PREFIX}_owner"
TEMPLATE_DB = f"{PREFIX}_template"
LEADS_PER_TENANT = 50
PATH = "/leads?limit=20"


def _admin(url: str, dbname: str | None = None) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=True, **({"dbname": dbname} if dbname else {}))


# -- the world: a catalog, a template at the schema's head, N tenants cloned from it -----------------

@dataclass
class World:
    admin_url: str
    catalog_db: str
    catalog_url: str
    keyring: str
    tenants: list[str]
    passwords: dict[str, str]


def build_template(admin_url: str) -> None:
    """Like the control plane's TenantTemplate, under this run's own names: objects owned by a NOLOGIN
    role, so each clone hands them to its tenant role with REASSIGN OWNED."""
    owner = sql.Identifier(TEMPLATE_OWNER)
    with _admin(admin_url) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(owner))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE_DB)))
    with _admin(admin_url, TEMPLATE_DB) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(owner))
    engine = create_engine(sqlalchemy_url(admin_url).set(database=TEMPLATE_DB), poolclass=NullPool,
                           connect_args={"options": f"-c role={TEMPLATE_OWNER}"})
    try:
        with engine.connect() as conn:
            tenant_migrations.migrate(conn, "head")
            with conn.begin():
                seed(conn, admin_email="owner@clinic.example", admin_name="Owner", admin_password_hash="x")
                conn.exec_driver_sql(
                    "INSERT INTO leads (full_name, email, pipeline_id, stage_id) "
                    "SELECT 'Lead ' || n, 'lead' || n || '@example.com', s.pipeline_id, s.id "
                    f"FROM generate_series(1, {LEADS_PER_TENANT}) n, "
                    "(SELECT pipeline_id, id FROM pipeline_stages ORDER BY position LIMIT 1) s")
    finally:
        engine.dispose()


def clone_tenants(admin_url: str, tenant_ids: list[str], passwords: dict[str, str], workers: int = 4) -> None:
    def clone(tenant_id: str) -> None:
        role, database = sql.Identifier(naming.role_name(tenant_id)), sql.Identifier(naming.database_name(tenant_id))
        with _admin(admin_url) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(role, sql.Literal(passwords[tenant_id])))
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {} STRATEGY FILE_COPY").format(
                database, sql.Identifier(TEMPLATE_DB), role))
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
            conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, role))
        with _admin(admin_url, naming.database_name(tenant_id)) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO {}").format(sql.Identifier(TEMPLATE_OWNER), role))

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(clone, tenant_ids))


@contextmanager
def world(admin_url: str, count: int) -> Iterator[World]:
    catalog_db = f"{PREFIX}_catalog"
    catalog_url = make_url(admin_url).set(database=catalog_db).render_as_string(hide_password=False)
    keyring_spec = f"bench:{base64.b64encode(os.urandom(32)).decode()}"
    keyring = Keyring.parse(keyring_spec)
    tenants = [f"{PREFIX}-{n:04d}" for n in range(count)]
    passwords = {tenant_id: secrets.token_urlsafe(18) for tenant_id in tenants}
    engine = None
    try:
        with _admin(admin_url) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(catalog_db)))
        engine = create_catalog_engine(catalog_url)
        upgrade_catalog(engine)
        started = time.monotonic()
        build_template(admin_url)
        clone_tenants(admin_url, tenants, passwords)
        host, port = make_url(admin_url).host, make_url(admin_url).port or 5432
        with transaction(session_factory(engine)) as session:
            session.add(DatabaseServer(name="default", host=host, port=port,
                                       admin_url_encrypted=keyring.encrypt(admin_url, server_secret_context("default"))))
            session.flush()
            session.add_all([Tenant(id=t, name=t, plan="standard", status=TenantStatus.ACTIVE, server_name="default",
                                    database_name=naming.database_name(t), role_name=naming.role_name(t),
                                    role_password_encrypted=keyring.encrypt(passwords[t], role_secret_context(t)))
                             for t in tenants])
        print(f"setup: {count} tenant databases cloned from a template at {tenant_migrations.head_revision()} "
              f"({LEADS_PER_TENANT} leads each) in {time.monotonic() - started:.1f} s", flush=True)
        yield World(admin_url, catalog_db, catalog_url, keyring_spec, tenants, passwords)
    finally:
        if engine is not None:
            engine.dispose()
        teardown(admin_url, tenants, catalog_db)


def teardown(admin_url: str, tenants: list[str], catalog_db: str) -> None:
    def drop(tenant_id: str) -> None:
        with _admin(admin_url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(naming.database_name(tenant_id))))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(naming.role_name(tenant_id))))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(drop, tenants))
    with _admin(admin_url) as conn:
        for database in (TEMPLATE_DB, catalog_db):
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(TEMPLATE_OWNER)))


# -- the two ways of giving the app its connections --------------------------------------------------

class SinglePool:
    """The baseline: every request on one psycopg_pool pool to one database, committed like the runtime does."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def connection(self) -> psycopg.Connection:
        conn = g.get("_bench_conn")
        if conn is None:
            conn = g._bench_conn = self.pool.getconn()
        return conn

    def install(self, app: Flask) -> None:
        @app.after_request
        def finish(response):
            conn = g.pop("_bench_conn", None)
            if conn is not None:
                try:
                    conn.commit() if response.status_code < 400 else conn.rollback()
                finally:
                    self.pool.putconn(conn)
            return response


# -- load ----------------------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    peak_server: int | None = None
    peak_router: int | None = None
    opened: int = 0
    total_requests: int = 0  # warm-up included, like the router's counters

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


def drive(name: str, app: Flask, headers_for: Callable[[int], dict[str, str]], threads: int, seconds: float,
          warmup: float = 1.0) -> Result:
    """`threads` clients send requests back to back; only the `seconds` after `warmup` are counted."""
    counter = itertools.count()
    measure_from = time.monotonic() + warmup
    stop_at = measure_from + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads

    def client(index: int) -> None:
        web = app.test_client()
        while (now := time.monotonic()) < stop_at:
            started = time.perf_counter()
            response = web.get(PATH, headers=headers_for(next(counter)))
            elapsed = time.perf_counter() - started
            if now >= measure_from:
                latencies[index].append(elapsed)
                if response.status_code != 200:
                    errors[index] += 1

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    flat = [x for per_thread in latencies for x in per_thread]
    return Result(name, len(flat), seconds, flat, sum(errors), total_requests=next(counter))


def interleave(baseline: Flask, runtime: Flask, runtime_headers: dict[str, str], threads: int, seconds: float,
               warmup: float = 1.0) -> tuple[list[float], list[float]]:
    """Each client thread alternates between the two apps request by request, so both see the same
    machine at the same moment: drift in the load of a shared machine cancels out."""
    measure_from = time.monotonic() + warmup
    stop_at = measure_from + seconds
    lock = threading.Lock()
    latencies: tuple[list[float], list[float]] = ([], [])

    def client(index: int) -> None:
        webs = (baseline.test_client(), runtime.test_client())
        headers = ({}, runtime_headers)
        turn = index % 2
        while (now := time.monotonic()) < stop_at:
            started = time.perf_counter()
            webs[turn].get(PATH, headers=headers[turn])
            elapsed = time.perf_counter() - started
            if now >= measure_from:
                with lock:
                    latencies[turn].append(elapsed)
            turn = 1 - turn

    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies


class Sampler:
    """Highest number of server sessions matching a LIKE pattern, sampled every few milliseconds."""

    def __init__(self, admin_url: str, pattern: str) -> None:
        self.peak = 0
        self._pattern = pattern
        self._conn = _admin(admin_url)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            count = self._conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                                       (self._pattern,)).fetchone()[0]
            self.peak = max(self.peak, count)
            self._stop.wait(0.005)


def free_connections(admin_url: str) -> int:
    with _admin(admin_url) as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        used = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]
    return limit - used


# -- scenarios -----------------------------------------------------------------------------------------

@contextmanager
def baseline_app(w: World, threads: int) -> Iterator[Flask]:
    hot = w.tenants[0]
    info = make_url(w.admin_url)
    pool = ConnectionPool(kwargs={"host": info.host, "port": info.port or 5432, "dbname": naming.database_name(hot),
                                  "user": naming.role_name(hot), "password": w.passwords[hot],
                                  "application_name": f"{PREFIX}-baseline"},
                          min_size=threads, max_size=threads, open=True)
    try:
        pool.wait()
        single = SinglePool(pool)
        app = create_app(connection=single.connection)
        single.install(app)
        yield app
    finally:
        pool.close()


def make_router(w: World, threads: int, budget: int) -> TenantRouter:
    return TenantRouter(catalog_database_url=w.catalog_url, keyring=w.keyring, redis_url=os.environ.get("REDIS_URL"),
                        max_connections=budget, max_connections_per_tenant=min(threads, budget),
                        acquire_timeout=10, application_name=f"{PREFIX}-rt")


def run_router(w: World, name: str, tenants: list[str], threads: int, seconds: float, budget: int,
               sample: bool = True) -> Result:
    """`sample`: watch pg_stat_activity meanwhile (it costs CPU: off when comparing with the baseline)."""
    router = make_router(w, threads, budget)
    try:
        app = create_app(router)
        headers = [{"X-Tenant-ID": tenant_id} for tenant_id in tenants]
        sampler = Sampler(w.admin_url, router.application_name_pattern()) if sample else None
        with sampler or contextlib.nullcontext():
            result = drive(name, app, lambda n: headers[n % len(headers)], threads, seconds)
        metrics = router.metrics()
        result.peak_server = sampler.peak if sampler else None
        result.peak_router = metrics["connections_open_peak"]
        result.opened = metrics["connections_opened_total"]
        return result
    finally:
        router.close()


class ConnectionPerRequest:
    """The ceiling when every request needs a new server session: the same app, each request opening
    its own connection to its tenant's database (named by X-Tenant-ID) and closing it afterwards; no
    pool, no budget, no catalog."""

    def __init__(self, w: World) -> None:
        info = make_url(w.admin_url)
        self._server = {"host": info.host, "port": info.port or 5432}
        self._passwords = w.passwords

    def connection(self) -> psycopg.Connection:
        conn = g.get("_bench_conn")
        if conn is None:
            tenant_id = request.headers["X-Tenant-ID"]
            conn = g._bench_conn = psycopg.connect(
                **self._server, dbname=naming.database_name(tenant_id), user=naming.role_name(tenant_id),
                password=self._passwords[tenant_id], application_name=f"{PREFIX}-ceiling")
        return conn

    def install(self, app: Flask) -> None:
        @app.after_request
        def finish(response):
            conn = g.pop("_bench_conn", None)
            if conn is not None:
                try:
                    conn.commit() if response.status_code < 400 else conn.rollback()
                finally:
                    conn.close()
            return response


def run_connection_per_request(w: World, threads: int, seconds: float) -> Result:
    source = ConnectionPerRequest(w)
    app = create_app(connection=source.connection)
    source.install(app)
    headers = [{"X-Tenant-ID": tenant_id} for tenant_id in w.tenants]
    return drive("no pool: a new connection per request, round-robin", app, lambda n: headers[n % len(headers)],
                 threads, seconds)


def show(result: Result, note: str = "") -> None:
    server = "-" if result.peak_server is None else result.peak_server
    router = "-" if result.peak_router is None else result.peak_router
    peaks = f"{server:>4} / {router:<4}"
    print(f"  {result.name:<52} {result.rps:8.0f} {result.percentile(0.5):8.2f} {result.percentile(0.99):8.2f} "
          f"{result.errors:7d}   {peaks} {note}", flush=True)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=5,
                        help="baseline/hot pairs, alternating which goes first; medians shown")
    args = parser.parse_args(argv)
    admin_url = os.environ.get("TENANT_DB_ADMIN_URL")
    if not admin_url or not os.environ.get("REDIS_URL"):
        raise SystemExit("set TENANT_DB_ADMIN_URL and REDIS_URL (as for the tests)")
    spare = free_connections(admin_url)
    if spare < args.budget + args.threads + 10:
        raise SystemExit(f"the server has only {spare} free connections; lower --budget (needs budget + threads + 10)")

    with world(admin_url, args.tenants) as w:
        print(f"runtime: GET {PATH} on the example clinic CRM, {args.threads} client threads, "
              f"{args.seconds:g} s per run after 1 s of warm-up, in-process WSGI")
        print(f"  {'scenario':<52} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}   peak conns server / router")
        baselines, hots = [], []
        router = make_router(w, args.threads, args.budget)  # long-lived, like an app's
        try:
            runtime = create_app(router)
            hot_headers = {"X-Tenant-ID": w.tenants[0]}
            with baseline_app(w, args.threads) as baseline:
                for round_ in range(args.rounds):
                    # Alternate which runs first, so that a drift in the machine's load favours neither.
                    pair = [lambda: baselines.append(drive("baseline: one psycopg_pool pool, one database",
                                                           baseline, lambda n: {}, args.threads, args.seconds)),
                            lambda: hots.append(drive("runtime: one hot tenant", runtime, lambda n: hot_headers,
                                                      args.threads, args.seconds))]
                    for run in pair if round_ % 2 == 0 else reversed(pair):
                        run()
                base_lat, hot_lat = interleave(baseline, runtime, hot_headers, args.threads,
                                               args.seconds * args.rounds)
            for result in hots:
                result.peak_router = router.metrics()["connections_open_peak"]
        finally:
            router.close()
        ratios = sorted(h.rps / b.rps for b, h in zip(baselines, hots))
        baseline = sorted(baselines, key=lambda r: r.rps)[len(baselines) // 2]
        hot = sorted(hots, key=lambda r: r.rps)[len(hots) // 2]
        show(baseline, f"(median of {args.rounds} runs)")
        show(hot, f"{statistics.median(ratios):.2f}x baseline (median of per-round ratios; target >= 0.95x)")
        print(f"  {'':52} per-round ratios, sorted: {', '.join(f'{r:.2f}' for r in ratios)}")
        ratio = statistics.mean(base_lat) / statistics.mean(hot_lat)
        print(f"  interleaved: each client thread alternates baseline and runtime, {args.seconds * args.rounds:g} s")
        for name, lat in (("baseline", base_lat), ("runtime, one hot tenant", hot_lat)):
            ordered = sorted(lat)
            print(f"    {name:<50} mean {statistics.mean(lat) * 1000:6.2f} ms   p50 {ordered[len(ordered) // 2] * 1000:6.2f}"
                  f"   p99 {ordered[int(0.99 * len(ordered))] * 1000:6.2f}   ({len(lat)} requests)")
        print(f"    throughput ratio runtime/baseline at equal concurrency (inverse ratio of mean latencies): "
              f"{ratio:.2f}x (target >= 0.95x)")
        many = run_router(w, f"runtime: {len(w.tenants)} tenants round-robin, budget {args.budget}", w.tenants,
                          args.threads, args.seconds, args.budget)
        show(many, f"{many.rps / hot.rps:.2f}x hot (target >= 0.8x)")
        fits = run_router(w, f"runtime: {args.budget} tenants round-robin, budget {args.budget}",
                          w.tenants[:args.budget], args.threads, args.seconds, args.budget)
        show(fits, f"{fits.rps / hot.rps:.2f}x hot (working set = budget)")
        ceiling = run_connection_per_request(w, args.threads, args.seconds)
        show(ceiling, f"the ceiling when every request needs a session: the {len(w.tenants)}-tenant run "
                      f"is {many.rps / ceiling.rps:.2f}x of it")
        print(f"  the {len(w.tenants)}-tenant run opened {many.opened / max(many.total_requests, 1):.2f} server sessions "
              f"per request (its working set exceeds the budget: each request needs a new session)")
        print("  peak conns: most sessions seen in pg_stat_activity (sampled every 5 ms) / the router's own count")


if __name__ == "__main__":
    main(sys.argv[1:])
