"""Runtime benchmark: the example clinic CRM (ORM) through tenant_runtime, on fleet-shaped traffic.

`GET /leads?limit=20` from client threads in this process through Flask's WSGI test client (the figures
compare request paths, without HTTP parsing or a network), in these scenarios:
- one hot tenant through the runtime vs the same app on one fixed psycopg_pool pool (target >= 0.95x);
- Zipf-distributed traffic (s = 1.1: a few busy clinics, a long tail of quiet ones) over N tenants
  under a connection budget, vs the hot tenant (target >= 0.8x) and vs a connection per request;
- uniform round-robin over N tenants, vs the same app opening a connection per request (the physical
  ceiling when nothing can be reused; target >= 0.9x);
and, per unit of work, the ways of giving SQLAlchemy a routed connection (see tenant_runtime.sqlalchemy).
Prints throughput, p50/p99, pool hit rate, connections opened per second and peak server connections;
asserts nothing.

Usage: scripts/bench runtime [--threads 8] [--seconds 5] [--tenants 1000] [--budget 40] [--rounds 3]
[--zipf 1.1] [--psycopg] [--profile SCENARIO]
(needs TENANT_DB_ADMIN_URL and REDIS_URL, as the tests do; creates and drops its own databases)
"""
from __future__ import annotations

import argparse
import base64
import bisect
import contextlib
import cProfile
import itertools
import os
import pstats
import random
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
from sqlalchemy import create_engine, event, make_url, select
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

import tenant_migrations
from benchmarks._sessions import SessionSampler
from control_plane import naming
from control_plane.adapters.crypto import Keyring
from control_plane.catalog.db import create_catalog_engine, sqlalchemy_url, transaction, session_factory, upgrade_catalog
from control_plane.catalog.models import DatabaseServer, Tenant, TenantStatus
from control_plane.services.context import role_secret_context, server_secret_context
from tenant_migrations.models import Lead
from tenant_migrations.seed import seed
from tenant_runtime import TenantRouter
from tenant_runtime.example_app import create_app
from tenant_runtime.sqlalchemy import TenantSessions

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


# -- where the baselines' requests get their connection (and ORM session) -------------------------------

class BenchSource:
    """A baseline's per-request connection, and an ORM session on it through the same hand-over as the
    runtime's (so both sides pay the ORM alike); committed after the response like the runtime does."""

    sessions = TenantSessions()

    def take(self) -> psycopg.Connection:
        raise NotImplementedError

    def give_back(self, conn: psycopg.Connection) -> None:
        raise NotImplementedError

    def connection(self) -> psycopg.Connection:
        conn = g.get("_bench_conn")
        if conn is None:
            conn = g._bench_conn = self.take()
        return conn

    def session(self) -> Session:
        session = g.get("_bench_session")
        if session is None:
            session = g._bench_session = self.sessions.open(self.connection())
        return session

    def app(self, orm: bool) -> Flask:
        app = create_app(orm=orm, source=self)

        @app.after_request
        def finish(response):
            session, conn = g.pop("_bench_session", None), g.pop("_bench_conn", None)
            commit = response.status_code < 400
            try:
                if session is not None:
                    self.sessions.close(session, flush=commit)
                if conn is not None:
                    conn.commit() if commit else conn.rollback()
            finally:
                if conn is not None:
                    self.give_back(conn)
            return response

        return app


class SinglePool(BenchSource):
    """The hot-tenant baseline: every request on one fixed psycopg_pool pool to one database."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool

    def take(self) -> psycopg.Connection:
        return self.pool.getconn()

    def give_back(self, conn: psycopg.Connection) -> None:
        self.pool.putconn(conn)


class ConnectionPerRequest(BenchSource):
    """The ceiling when every request needs a new server session: each request opens its own connection
    to its tenant's database (named by X-Tenant-ID) and closes it afterwards; no pool, budget or catalog."""

    APPLICATION_NAME = f"{PREFIX}-per-request"

    def __init__(self, w: World) -> None:
        info = make_url(w.admin_url)
        self._server = {"host": info.host, "port": info.port or 5432}
        self._passwords = w.passwords

    def take(self) -> psycopg.Connection:
        tenant_id = request.headers["X-Tenant-ID"]
        return psycopg.connect(**self._server, dbname=naming.database_name(tenant_id),
                               user=naming.role_name(tenant_id), password=self._passwords[tenant_id],
                               application_name=self.APPLICATION_NAME)

    def give_back(self, conn: psycopg.Connection) -> None:
        conn.close()


# -- load ----------------------------------------------------------------------------------------------

@dataclass
class Result:
    name: str
    requests: int
    seconds: float
    latencies: list[float]
    errors: int
    peak_server: int | None = None
    hit_rate: float | None = None  # share of lent connections that were already open
    opened: int | None = None  # server sessions opened while measuring

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")


@dataclass
class Load:
    """What to send: `tenants[sequence[n % len(sequence)]]` for the n-th request (None: no header)."""

    name: str
    tenants: list[str] | None
    sequence: list[int]

    def headers(self) -> Callable[[int], dict[str, str]]:
        if self.tenants is None:
            return lambda n: {}
        headers = [{"X-Tenant-ID": tenant_id} for tenant_id in self.tenants]
        sequence = self.sequence
        return lambda n: headers[sequence[n % len(sequence)]]


def zipf_sequence(count: int, s: float, length: int = 200_000, seed: int = 11) -> list[int]:
    """Tenant indexes drawn with P(rank k) proportional to 1 / k**s (index 0 is the busiest)."""
    cumulative = list(itertools.accumulate(1 / k ** s for k in range(1, count + 1)))
    rng = random.Random(seed)
    return [bisect.bisect_left(cumulative, rng.random() * cumulative[-1]) for _ in range(length)]


def drive(name: str, app: Flask, load: Load, threads: int, seconds: float, *, admin_url: str, pattern: str,
          router: TenantRouter | None = None, warmup: float = 1.0, profile: bool = False) -> Result:
    """`threads` clients send requests back to back; only the `seconds` after `warmup` are counted."""
    counter = itertools.count()
    headers_for = load.headers()
    measure_from = time.monotonic() + warmup
    stop_at = measure_from + seconds
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors = [0] * threads
    counts: list[dict] = []
    profiles: list[cProfile.Profile] = []

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

    def profile_thread(frame, event, arg) -> None:
        # Every thread started from now on (clients, and the pools' workers that open connections)
        # gets a profiler of its own: it replaces this hook for that thread.
        profiler = cProfile.Profile()
        profiles.append(profiler)
        profiler.enable()

    def snapshot() -> None:
        if router is not None:
            counts.append(router.metrics())

    if profile:
        threading.setprofile(profile_thread)
    workers = [threading.Thread(target=client, args=(n,)) for n in range(threads)]
    start_measure = threading.Timer(warmup, snapshot)
    with SessionSampler(admin_url, pattern) as sampler:
        start_measure.start()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        start_measure.join()
        snapshot()
    threading.setprofile(None)
    flat = [x for per_thread in latencies for x in per_thread]
    result = Result(name, len(flat), seconds, flat, sum(errors), peak_server=sampler.peak)
    if router is not None and len(counts) == 2:
        acquired = counts[1]["acquires_total"] - counts[0]["acquires_total"]
        result.opened = counts[1]["connections_opened_total"] - counts[0]["connections_opened_total"]
        result.hit_rate = 1 - result.opened / acquired if acquired else None
    if profiles:
        stats = pstats.Stats(profiles[0])
        for other in profiles[1:]:
            stats.add(other)
        print(f"\nprofile of {name}, every thread started during the run ({len(profiles)}), by own time "
              f"(blocking waits show as lock acquires, select, recv):")
        stats.sort_stats("tottime").print_stats(30)
    return result


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


def free_connections(admin_url: str) -> int:
    with _admin(admin_url) as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])
        used = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchone()[0]
    return limit - used


# -- scenarios -----------------------------------------------------------------------------------------

@contextmanager
def fixed_pool(w: World, threads: int) -> Iterator[SinglePool]:
    hot = w.tenants[0]
    info = make_url(w.admin_url)
    pool = ConnectionPool(kwargs={"host": info.host, "port": info.port or 5432, "dbname": naming.database_name(hot),
                                  "user": naming.role_name(hot), "password": w.passwords[hot],
                                  "application_name": f"{PREFIX}-baseline"},
                          min_size=threads, max_size=threads, open=True)
    try:
        pool.wait()
        yield SinglePool(pool)
    finally:
        pool.close()


def make_router(w: World, threads: int, budget: int) -> TenantRouter:
    return TenantRouter(catalog_database_url=w.catalog_url, keyring=w.keyring, redis_url=os.environ.get("REDIS_URL"),
                        max_connections=budget, max_connections_per_tenant=min(threads, budget),
                        acquire_timeout=10, application_name=f"{PREFIX}-rt", strategies=("header",))


def run_router(w: World, load: Load, threads: int, seconds: float, budget: int, orm: bool,
               profile: bool = False) -> Result:
    """A fresh router (an app starting cold: its first second is warm-up), like an app's, for one load."""
    router = make_router(w, threads, budget)
    try:
        return drive(f"runtime: {load.name}", create_app(router, orm=orm), load, threads, seconds,
                     admin_url=w.admin_url, pattern=router.application_name_pattern(), router=router,
                     profile=profile)
    finally:
        router.close()


def run_connection_per_request(w: World, load: Load, threads: int, seconds: float, orm: bool) -> Result:
    result = drive(f"connection per request: {load.name}", ConnectionPerRequest(w).app(orm), load, threads,
                   seconds, admin_url=w.admin_url, pattern=ConnectionPerRequest.APPLICATION_NAME)
    result.hit_rate, result.opened = 0.0, result.requests
    return result


def show(result: Result, note: str = "") -> None:
    server = "-" if result.peak_server is None else str(result.peak_server)
    hit = "-" if result.hit_rate is None else f"{result.hit_rate:6.1%}"
    opened = "-" if result.opened is None else f"{result.opened / result.seconds:.0f}"
    print(f"  {result.name:<48} {result.rps:7.0f} {result.percentile(0.5):7.2f} {result.percentile(0.99):7.2f} "
          f"{result.errors:6d} {hit:>8} {opened:>8} {server:>6}  {note}", flush=True)


def orm_variants(w: World, seconds: float, rounds: int) -> None:
    """Per unit of work on one tenant, one thread: raw psycopg, the runtime's hand-over of a lent connection
    to a Session (router.session), and a NullPool engine whose creator leases on connect (the alternative)."""
    router = make_router(w, 1, 4)
    tenant = w.tenants[0]
    query = select(Lead).order_by(Lead.id.desc()).limit(20)

    # The alternative: the engine's creator leases on connect, its pool's check-in gives the lease back.
    leases: dict[int, object] = {}

    def lease_on_connect() -> psycopg.Connection:
        lease = router.acquire(tenant)
        leases[id(lease.connection)] = lease
        return lease.connection

    creator_engine = create_engine("postgresql+tenant_runtime://", poolclass=NullPool, pool_reset_on_return=None,
                                   creator=lease_on_connect)
    event.listen(creator_engine, "checkin",
                 lambda dbapi_connection, record: leases.pop(id(dbapi_connection)).release(commit=False))

    def raw() -> None:
        with router.connection(tenant) as conn:
            conn.execute("SELECT * FROM leads ORDER BY id DESC LIMIT 20").fetchall()

    def handed_over() -> None:
        with router.session(tenant) as session:
            session.scalars(query).all()

    def creator() -> None:
        with Session(creator_engine, expire_on_commit=False) as session, session.begin():
            session.scalars(query).all()

    variants = {"psycopg on router.connection() (no ORM)": raw,
                "router.session(): lent connection handed to a Session": handed_over,
                "NullPool engine whose creator leases on connect": creator}
    timings: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for fn in variants.values():
            fn()  # warm: pool, dialect, compiled cache
        for round_ in range(rounds):
            for name, fn in (variants.items() if round_ % 2 == 0 else reversed(variants.items())):
                done, stop = 0, time.perf_counter() + seconds
                while time.perf_counter() < stop:
                    fn()
                    done += 1
                timings[name].append(seconds / done)
    finally:
        creator_engine.dispose()
        router.close()
    raw_us = statistics.median(timings["psycopg on router.connection() (no ORM)"]) * 1e6
    print(f"\nORM hand-over, one thread, one tenant, 20 leads per unit of work (median of {rounds} rounds of "
          f"{seconds:g} s):")
    for name, values in timings.items():
        us = statistics.median(values) * 1e6
        print(f"  {name:<56} {us:8.0f} µs per unit of work  (+{us - raw_us:.0f} µs over psycopg)")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--budget", type=int, default=40)
    parser.add_argument("--zipf", type=float, default=1.1, help="the Zipf exponent s of the skewed traffic")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fixed-pool/hot pairs, alternating which goes first; medians shown")
    parser.add_argument("--psycopg", action="store_true", help="the app's psycopg path instead of the ORM")
    parser.add_argument("--profile", choices=("hot", "zipf", "round-robin"),
                        help="also run this scenario under cProfile and print where the client threads spend time")
    args = parser.parse_args(argv)
    admin_url = os.environ.get("TENANT_DB_ADMIN_URL")
    if not admin_url or not os.environ.get("REDIS_URL"):
        raise SystemExit("set TENANT_DB_ADMIN_URL and REDIS_URL (as for the tests)")
    spare = free_connections(admin_url)
    if spare < args.budget + args.threads + 10:
        raise SystemExit(f"the server has only {spare} free connections; lower --budget (needs budget + threads + 10)")
    orm = not args.psycopg

    with world(admin_url, args.tenants) as w:
        n = len(w.tenants)
        hot_load = Load("one hot tenant", w.tenants[:1], [0])
        zipf = Load(f"Zipf s={args.zipf:g} over {n} tenants", w.tenants, zipf_sequence(n, args.zipf))
        round_robin = Load(f"round-robin over {n} tenants", w.tenants, list(range(n)))
        fits = Load(f"round-robin over {args.budget} tenants", w.tenants[:args.budget], list(range(args.budget)))
        top = sum(1 for i in zipf.sequence if i < args.budget) / len(zipf.sequence)
        print(f"runtime: GET {PATH} on the example clinic CRM ({'ORM' if orm else 'psycopg'}), {args.threads} client "
              f"threads, budget {args.budget}, {args.seconds:g} s per run after 1 s of warm-up, in-process WSGI; "
              f"Zipf: the {args.budget} busiest tenants get {top:.0%} of the requests")
        print(f"  {'scenario':<48} {'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} {'hit rate':>8} "
              f"{'opened/s':>8} {'peak':>6}  (peak: most server sessions seen in pg_stat_activity)")

        fixed_results, hots = [], []
        router = make_router(w, args.threads, args.budget)  # long-lived, like an app's
        try:
            runtime = create_app(router, orm=orm)
            with fixed_pool(w, args.threads) as single:
                baseline = single.app(orm)
                for round_ in range(args.rounds):
                    # Alternate which runs first, so that a drift in the machine's load favours neither.
                    pair = [lambda: fixed_results.append(drive(
                                "fixed psycopg_pool pool, one database", baseline, Load("", None, [0]),
                                args.threads, args.seconds, admin_url=admin_url, pattern=f"{PREFIX}-baseline")),
                            lambda: hots.append(drive(
                                "runtime: one hot tenant", runtime, hot_load, args.threads, args.seconds,
                                admin_url=admin_url, pattern=router.application_name_pattern(), router=router))]
                    for run in pair if round_ % 2 == 0 else reversed(pair):
                        run()
                base_lat, hot_lat = interleave(baseline, runtime, {"X-Tenant-ID": w.tenants[0]}, args.threads,
                                               args.seconds * args.rounds)
        finally:
            router.close()
        ratios = sorted(h.rps / b.rps for b, h in zip(fixed_results, hots))
        fixed = sorted(fixed_results, key=lambda r: r.rps)[len(fixed_results) // 2]
        hot = sorted(hots, key=lambda r: r.rps)[len(hots) // 2]
        show(fixed, f"(median of {args.rounds} runs)")
        show(hot, f"{statistics.median(ratios):.2f}x fixed pool (median of per-round ratios "
                  f"{', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.95x)")
        interleaved = statistics.mean(base_lat) / statistics.mean(hot_lat)
        print(f"  {'':48} interleaved A/B ({len(base_lat) + len(hot_lat)} requests, each client alternating): "
              f"{interleaved:.2f}x fixed pool")

        skewed = run_router(w, zipf, args.threads, args.seconds, args.budget, orm)
        show(skewed, f"{skewed.rps / hot.rps:.2f}x hot (target >= 0.8x)")
        skewed_cpr = run_connection_per_request(w, zipf, args.threads, args.seconds, orm)
        show(skewed_cpr, f"the runtime is {skewed.rps / skewed_cpr.rps:.2f}x this")
        uniform = run_router(w, round_robin, args.threads, args.seconds, args.budget, orm)
        uniform_cpr = run_connection_per_request(w, round_robin, args.threads, args.seconds, orm)
        show(uniform, f"{uniform.rps / uniform_cpr.rps:.2f}x connection per request (target >= 0.9x)")
        show(uniform_cpr, "the ceiling when every request needs a new session")
        fitting = run_router(w, fits, args.threads, args.seconds, args.budget, orm)
        show(fitting, f"{fitting.rps / hot.rps:.2f}x hot (the working set fits the budget)")
        # The skewed run's ceiling: requests beyond the budget's busiest tenants need a new session, which
        # costs what a request of the connection-per-request run costs, however well the rest is pooled.
        miss_cost = hot.rps / uniform_cpr.rps
        print(f"  limit: at most {top:.0%} of the Zipf requests can find an open connection (those of the "
              f"{args.budget} busiest tenants); the others need a new session, {miss_cost:.1f}x the time of a "
              f"pooled request here, so the Zipf run cannot exceed {1 / (top + (1 - top) * miss_cost):.2f}x hot")
        orm_variants(w, max(args.seconds / 2, 1.0), args.rounds)
        if args.profile:  # an extra run of that scenario, under cProfile (slower: its figures are not comparable)
            load = {"hot": hot_load, "zipf": zipf, "round-robin": round_robin}[args.profile]
            run_router(w, load, args.threads, args.seconds, args.budget, orm, profile=True)


if __name__ == "__main__":
    main(sys.argv[1:])
