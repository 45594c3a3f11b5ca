"""tenant_runtime core: isolation, the connection budget, reacting to the control plane, eviction, forks, Redis loss."""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter

import psycopg
import pytest
from sqlalchemy import text

from control_plane import naming
from helpers import tenant_login
from tenant_runtime import (
    ConnectionBudgetExceededError,
    TenantDatabaseUnavailableError,
    TenantNotFoundError,
    TenantSuspendedError,
)
from benchmarks._sessions import SessionSampler
from test_runtime_support import (  # noqa: F401 (fixtures)
    background_drops,
    bulk_tenants,
    provision,
    proxied_redis_url,
    redis_proxy,
    router_factory,
    server_connections,
    tenant_connections,
    wait_until,
)


def test_two_tenants_are_isolated(client, auth, run_jobs, ctx, router_factory):
    provision(client, auth, run_jobs, "rt-iso-a", "rt-iso-b")
    router = router_factory()

    with router.connection("rt-iso-a") as conn:
        conn.execute("INSERT INTO leads (full_name, email) VALUES ('Ana Lima', 'ana@a.example')")
        user, database, app_name = conn.execute(
            "SELECT current_user, current_database(), current_setting('application_name')").fetchone()
    assert (user, database) == ("tenant_rt_iso_a", "tenant_rt_iso_a_db")
    assert app_name == f"{router.settings.application_name}:rt-iso-a:{os.getpid()}@{os.uname().nodename}"[:63]

    with router.connection("rt-iso-b") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_rt_iso_b"
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 0
        conn.execute("INSERT INTO leads (full_name) VALUES ('Bruno')")

    with router.connection("rt-iso-a") as conn:
        assert [r[0] for r in conn.execute("SELECT full_name FROM leads")] == ["Ana Lima"]

    # An error inside the block rolls the transaction back.
    with pytest.raises(RuntimeError):
        with router.connection("rt-iso-a") as conn:
            conn.execute("INSERT INTO leads (full_name) VALUES ('never')")
            raise RuntimeError("boom")
    with router.connection("rt-iso-a") as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 1

    # The roles the router uses cannot reach each other's databases.
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        tenant_login(ctx, "rt-iso-a", dbname="tenant_rt_iso_b_db")
    with pytest.raises(TenantNotFoundError):
        with router.connection("rt-nobody"):
            pass


def test_budget_holds_with_300_tenants_and_32_threads(bulk_tenants, router_factory, admin_url):
    tenant_ids = [f"rt-budget-{n:03d}" for n in range(300)]
    bulk_tenants(tenant_ids)
    router = router_factory(max_connections=20, max_connections_per_tenant=4, acquire_timeout=20)
    served: Counter[str] = Counter()
    errors: list[str] = []
    timeouts: list[str] = []
    lock = threading.Lock()

    def hammer(worker: int) -> None:
        rng = random.Random(worker)
        # Random tenants, plus this thread's share of all of them so that every tenant is asked for.
        picks = tenant_ids[worker::32] + rng.choices(tenant_ids, k=40)
        rng.shuffle(picks)
        for tenant_id in picks:
            try:
                with router.connection(tenant_id) as conn:
                    identity = conn.execute("SELECT current_user, current_database()").fetchone()
                ok = identity == (naming.role_name(tenant_id), naming.database_name(tenant_id))
                with lock:
                    served[tenant_id] += 1
                    if not ok:
                        errors.append(f"{tenant_id} was served by {identity}")
            except ConnectionBudgetExceededError:  # the documented timeout
                with lock:
                    timeouts.append(tenant_id)
            except Exception as exc:
                with lock:
                    errors.append(f"{tenant_id}: {type(exc).__name__}: {exc}")

    with SessionSampler(admin_url, router.application_name_pattern()) as sampler:
        threads = [threading.Thread(target=hammer, args=(n,)) for n in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    metrics = router.metrics()
    assert errors == []
    assert set(served) == set(tenant_ids)
    assert sampler.samples > 10 and 1 <= sampler.peak <= 20, sampler.peak
    assert metrics["connections_open_peak"] <= 20
    assert metrics["connections_in_use"] == 0 and metrics["connections_open"] <= 20
    assert metrics["connections_reclaimed_total"] > 0  # idle connections of some tenants served others
    assert len(timeouts) == metrics["budget_rejections_total"] == 0


def test_acquire_times_out_at_the_budget_then_reclaims_an_idle_connection(bulk_tenants, router_factory, admin_url):
    bulk_tenants(["rt-cap-a", "rt-cap-b", "rt-cap-c"])
    router = router_factory(max_connections=2, max_connections_per_tenant=1, acquire_timeout=0.3)

    first = router.acquire("rt-cap-a")
    second = router.acquire("rt-cap-b")
    started = time.monotonic()
    with pytest.raises(ConnectionBudgetExceededError, match="all 2 connections"):
        router.acquire("rt-cap-c")
    assert 0.3 <= time.monotonic() - started < 2
    with pytest.raises(ConnectionBudgetExceededError, match="its 1 connections"):
        router.acquire("rt-cap-a")  # the per-tenant cap
    first.release(commit=True)

    # rt-cap-a's connection is idle now: rt-cap-c takes its slot by closing it.
    with router.connection("rt-cap-c") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_rt_cap_c"
        assert server_connections(admin_url, router.application_name_pattern()) == 2
    second.release(commit=False)
    metrics = router.metrics()
    assert metrics["connections_reclaimed_total"] == 1 and metrics["budget_rejections_total"] == 2
    assert tenant_connections(admin_url, router, "rt-cap-a") == 0


def test_a_hot_tenant_cannot_starve_the_others(bulk_tenants, router_factory, admin_url):
    cold = [f"rt-cold-{n}" for n in range(6)]
    bulk_tenants(["rt-hot", *cold])
    router = router_factory(max_connections=6, max_connections_per_tenant=3, acquire_timeout=10)
    stop = threading.Event()
    hot_served = Counter()

    def hot() -> None:
        while not stop.is_set():
            with router.connection("rt-hot") as conn:
                conn.execute("SELECT pg_sleep(0.005)")
            hot_served["n"] += 1

    hot_threads = [threading.Thread(target=hot) for _ in range(12)]
    for thread in hot_threads:
        thread.start()
    try:
        assert wait_until(lambda: hot_served["n"] > 20, 10)
        waits = []
        for tenant_id in cold * 3:
            started = time.monotonic()
            with router.connection(tenant_id) as conn:
                conn.execute("SELECT 1")
            waits.append(time.monotonic() - started)
            assert tenant_connections(admin_url, router, "rt-hot") <= 3
    finally:
        stop.set()
        for thread in hot_threads:
            thread.join()
    # Twelve threads keep the hot tenant busy, yet it holds at most its cap and the others get in fast.
    assert max(waits) < 1.0, waits
    assert router.metrics()["connections_open_peak"] <= 6


def _refused(router, tenant_id: str, error=TenantSuspendedError) -> bool:
    try:
        router.tenant(tenant_id)
    except error:
        return True
    return False


def _served(router, tenant_id: str) -> bool:
    try:
        with router.connection(tenant_id) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except TenantSuspendedError:
        return False


def test_suspend_is_refused_within_a_second_and_closes_its_connections(client, auth, run_jobs, router_factory,
                                                                       admin_url):
    provision(client, auth, run_jobs, "rt-susp", "rt-bystander")
    router = router_factory()
    leases = [router.acquire("rt-susp") for _ in range(3)]
    for lease in leases:
        lease.release(commit=True)
    held = router.acquire("rt-susp")  # a request still running when the suspend lands
    with router.connection("rt-bystander"):
        pass
    assert wait_until(lambda: router.metrics()["events_connected"] == 1, 5)
    assert tenant_connections(admin_url, router, "rt-susp") == 3

    assert client.post("/v1/tenants/rt-susp/suspend", headers=auth).status_code == 200
    elapsed = wait_until(lambda: _refused(router, "rt-susp"), 1.0)
    assert elapsed is not None and elapsed < 1.0
    with pytest.raises(TenantSuspendedError):
        router.acquire("rt-susp")
    # Its idle connections are closed at once, the one in use as soon as it is given back.
    assert wait_until(lambda: tenant_connections(admin_url, router, "rt-susp") == 1, 1.0) is not None
    held.release(commit=True)
    assert tenant_connections(admin_url, router, "rt-susp") == 0
    assert _served(router, "rt-bystander")

    assert client.post("/v1/tenants/rt-susp/resume", headers=auth).status_code == 200
    elapsed = wait_until(lambda: _served(router, "rt-susp"), 1.0)
    assert elapsed is not None and elapsed < 1.0


def test_idle_pools_are_closed(bulk_tenants, router_factory, admin_url):
    bulk_tenants(["rt-idle-a", "rt-idle-b"])
    router = router_factory(pool_idle_seconds=0.3)
    with router.connection("rt-idle-a"):
        pass
    last_used = time.monotonic()
    held = router.acquire("rt-idle-b")
    assert router.metrics()["pools_open"] == 2 and tenant_connections(admin_url, router, "rt-idle-a") == 1

    assert wait_until(lambda: router.metrics()["pools_open"] == 1, 5) is not None
    assert time.monotonic() - last_used >= 0.25  # not before it was idle for RUNTIME_POOL_IDLE_SECONDS
    assert tenant_connections(admin_url, router, "rt-idle-a") == 0
    assert router.tenant_pool_stats("rt-idle-b") == {"open": 1, "in_use": 1, "active": 1}  # busy: kept
    held.release(commit=True)
    assert wait_until(lambda: router.metrics()["pools_open"] == 0, 5) is not None
    assert tenant_connections(admin_url, router, "rt-idle-b") == 0
    assert router.metrics()["pool_evictions_total"] == {"idle": 2}


def test_open_pools_are_bounded_least_recently_used_first(bulk_tenants, router_factory, admin_url):
    tenant_ids = [f"rt-lru-{n}" for n in range(5)]
    bulk_tenants(tenant_ids)
    router = router_factory(max_open_pools=3, max_connections=10)
    held = router.acquire("rt-lru-0")  # busy the whole time: never evicted
    for tenant_id in tenant_ids[1:]:
        with router.connection(tenant_id):
            pass
    with router.connection("rt-lru-3"):  # a pool still open is reused: nothing evicted
        pass
    metrics = router.metrics()
    assert metrics["pools_open"] == 3
    assert metrics["pool_evictions_total"] == {"lru": 2}
    assert router.tenant_pool_stats("rt-lru-0") is not None
    assert router.tenant_pool_stats("rt-lru-1") is None and router.tenant_pool_stats("rt-lru-2") is None
    assert wait_until(lambda: tenant_connections(admin_url, router, "rt-lru-1")
                      + tenant_connections(admin_url, router, "rt-lru-2") == 0, 2) is not None
    held.release(commit=True)
    with router.connection("rt-lru-1"):  # evicts rt-lru-0, now idle and least recently used
        pass
    assert router.tenant_pool_stats("rt-lru-0") is None and router.metrics()["pools_open"] == 3


def test_a_forked_child_rebuilds_its_pools_and_leaves_the_parents_alone(bulk_tenants, router_factory):
    bulk_tenants(["rt-fork"])
    router = router_factory()
    with router.connection("rt-fork") as conn:
        parent_backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report, and never return into pytest
        status = 1
        try:
            os.close(read_end)
            inherited_pools = router.metrics()["pools_open"]
            with router.connection("rt-fork") as conn:
                backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            os.write(write_end, f"{inherited_pools} {backend}".encode())
            router.close()
            status = 0
        finally:
            os._exit(status)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = pipe.read()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    inherited_pools, child_backend = map(int, report.split())
    assert inherited_pools == 0  # the child starts with no pool of its own
    assert child_backend != parent_backend
    # The child closed its router and exited: the parent's pooled session is intact and reused.
    with router.connection("rt-fork") as conn:
        assert conn.execute("SELECT pg_backend_pid()").fetchone()[0] == parent_backend
    assert router.metrics()["pid"] == os.getpid()


def test_redis_down_falls_back_to_a_short_ttl_and_recovers(client, auth, run_jobs, router_factory, redis_proxy,
                                                           settings, caplog):
    provision(client, auth, run_jobs, "rt-redis")
    caplog.set_level(logging.INFO, logger="tenant_runtime")
    router = router_factory(redis_url=proxied_redis_url(settings, redis_proxy), fallback_ttl=0.5)
    assert _served(router, "rt-redis")
    assert wait_until(lambda: router.metrics()["events_connected"] == 1, 5) is not None

    redis_proxy.down()
    assert wait_until(lambda: router.metrics()["events_connected"] == 0, 2) is not None
    assert client.post("/v1/tenants/rt-redis/suspend", headers=auth).status_code == 200
    elapsed = wait_until(lambda: _refused(router, "rt-redis"), 2.0)  # no event: the 0.5 s TTL does it
    assert elapsed is not None and elapsed < 1.0
    # However many reconnection attempts fail meanwhile, the outage is logged once.
    assert wait_until(lambda: router.metrics()["events_connect_failures_total"] >= 3, 5) is not None
    outage = [r for r in caplog.records if "tenant change events unavailable" in r.getMessage()]
    assert len(outage) == 1 and outage[0].levelno == logging.WARNING

    redis_proxy.up()
    assert wait_until(lambda: router.metrics()["events_connected"] == 1, 10) is not None
    assert [r.levelno for r in caplog.records if "tenant change events restored" in r.getMessage()] == [logging.INFO]
    assert _refused(router, "rt-redis")  # cached again, now with the long TTL of live events...
    assert client.post("/v1/tenants/rt-redis/resume", headers=auth).status_code == 200
    elapsed = wait_until(lambda: _served(router, "rt-redis"), 1.0)  # ...so only the event can do this
    assert elapsed is not None and elapsed < 1.0


def test_a_moved_or_restored_database_is_followed_without_restart(client, auth, run_jobs, router_factory, ctx,
                                                                   admin_url):
    provision(client, auth, run_jobs, "rt-move")
    router = router_factory()
    with router.connection("rt-move") as conn:
        conn.execute("INSERT INTO leads (full_name) VALUES ('before the swap')")
    assert wait_until(lambda: router.metrics()["events_connected"] == 1, 5) is not None
    # What a restore or a move leaves behind: the tenant's data in another database (here a copy
    # made by the admin), the catalog pointing at it, and an event.
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute("CREATE DATABASE tenant_rt_move_v2 OWNER tenant_rt_move")
        admin.execute("REVOKE ALL ON DATABASE tenant_rt_move_v2 FROM PUBLIC")
        admin.execute("GRANT CONNECT ON DATABASE tenant_rt_move_v2 TO tenant_rt_move")
    try:
        with ctx.sessions() as session, session.begin():
            session.execute(text("UPDATE tenants SET database_name = 'tenant_rt_move_v2' WHERE id = 'rt-move'"))
        ctx.events.publish("rt-move", "status", status="active", database="tenant_rt_move_v2")

        def on_new_database() -> bool:
            with router.connection("rt-move") as conn:
                return conn.execute("SELECT current_database()").fetchone()[0] == "tenant_rt_move_v2"

        elapsed = wait_until(on_new_database, 1.0)
        assert elapsed is not None and elapsed < 1.0
        assert server_connections(admin_url, router.application_name("rt-move")) == 1
        with psycopg.connect(admin_url, autocommit=True) as admin:  # nothing left on the old database
            assert admin.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'tenant_rt_move_db' "
                                 "AND application_name = %s", (router.application_name("rt-move"),)).fetchone()[0] == 0
    finally:
        router.close()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute("DROP DATABASE IF EXISTS tenant_rt_move_v2 WITH (FORCE)")
        with ctx.sessions() as session, session.begin():  # so that the usual cleanup finds the original
            session.execute(text("UPDATE tenants SET database_name = 'tenant_rt_move_db' WHERE id = 'rt-move'"))


def test_an_unreachable_database_fails_fast_not_at_the_timeout(bulk_tenants, router_factory, ctx, caplog):
    bulk_tenants(["rt-gone"])
    with ctx.sessions() as session, session.begin():
        session.execute(text("UPDATE tenants SET database_name = 'rt_no_such_db' WHERE id = 'rt-gone'"))
    router = router_factory(acquire_timeout=10)
    started = time.monotonic()
    with pytest.raises(TenantDatabaseUnavailableError, match='database "rt_no_such_db" does not exist') as raised:
        router.acquire("rt-gone")
    assert time.monotonic() - started < 3
    assert raised.value.status == 503 and raised.value.retry_after == 5
    metrics = router.metrics()
    assert metrics["connect_errors_total"] >= 1 and metrics["connections_open"] == 0
    assert not any(router.settings.keyring in r.getMessage() for r in caplog.records)


def test_our_own_refusals_do_not_reach_the_logs(caplog):
    from tenant_runtime.pools import SlotRefusedError

    pool_log = logging.getLogger("psycopg.pool")
    with caplog.at_level(logging.WARNING, logger="psycopg.pool"):
        pool_log.warning("error connecting in %r: %s", "tenant:x", SlotRefusedError("no request waits"))
        pool_log.warning("reconnection attempt in pool %r failed after %s sec", "tenant:x", 0)
        pool_log.warning("error connecting in %r: %s", "tenant:x", OSError("Connection refused"))
        pool_log.warning("reconnection attempt in pool %r failed after %s sec", "tenant:x", 0)
    assert [r.getMessage() for r in caplog.records] == [
        "error connecting in 'tenant:x': Connection refused",
        "reconnection attempt in pool 'tenant:x' failed after 0 sec",
    ]
