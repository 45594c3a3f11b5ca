"""Catalog list speed as the fleet grows: p95 of the console's list, get and search requests and of
the operations list through the API (in-process, auth and serialization included) at 100 tenants,
then at 10,000 (bulk-inserted catalog rows, no databases behind them). Prints; asserts nothing.

Usage: scripts/bench catalog [--small N] [--large N] [--rounds N]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from collections.abc import Callable

from sqlalchemy import text

from benchmarks._catalog import throwaway_catalog
from control_plane.app import create_app
from control_plane.catalog.models import TokenRole
from control_plane.services.auth import create_token

# Each tenant: a name, two domains, three finished operations (the console's typical reads).
# Tenant n: id t<12 hex digits> (ids share no prefix, as real ones don't), a name, two domains, and three
# finished operations (the console's typical reads).
def tenant_id(n: int) -> str:
    return "t" + hashlib.md5(f"id{n}".encode()).hexdigest()[:12]


INSERT_TENANTS = text("""
    WITH new AS (
        INSERT INTO tenants (id, name, plan, status, server_name, database_name, role_name, role_password_encrypted,
                             schema_revision, created_at, updated_at)
        SELECT 't' || left(md5('id' || n), 12), 'Clinic ' || md5(n::text), 'standard', 'active', 'default',
               'tenant_bench_' || n || '_db', 'tenant_bench_' || n, 'x', 'head',
               now() - make_interval(secs => n), now()
        FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS n
        RETURNING id, created_at)
    , domains AS (
        INSERT INTO tenant_domains (domain, tenant_id)
        SELECT id || suffix, id FROM new, (VALUES ('.clinic.example'), ('.crm.example')) AS d(suffix))
    INSERT INTO operations (id, kind, tenant_id, status, progress, params, attempts, created_at)
    SELECT gen_random_uuid()::text, kind, new.id, 'succeeded', 100, '{}', 1, new.created_at + make_interval(secs => k)
    FROM new, unnest(ARRAY['provision', 'backup', 'migrate']) WITH ORDINALITY AS o(kind, k)
""")


def grow(ctx, first: int, last: int) -> None:
    with ctx.sessions() as session:
        session.execute(INSERT_TENANTS, {"first": first, "last": last})
        session.commit()
        session.execute(text("ANALYZE"))


def timed_get(client, headers, path: str) -> float:
    started = time.perf_counter()
    response = client.get(path, headers=headers)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise SystemExit(f"GET {path}: {response.status_code} {response.get_data(as_text=True)[:200]}")
    return elapsed


def requests_for(tenants: int) -> dict[str, Callable[[int], str]]:
    # Ids and search terms spread over the whole fleet, so caches don't flatter the large catalog.
    def some(i: int) -> int:
        return 1 + (i * 7919) % tenants

    def name_part(i: int) -> str:
        return hashlib.md5(str(some(i)).encode()).hexdigest()[3:11]

    return {
        "list tenants (page of 50)": lambda i: "/v1/tenants?page_size=50",
        "list tenants, status filter": lambda i: "/v1/tenants?status=active&page_size=50",
        "get one tenant": lambda i: f"/v1/tenants/{tenant_id(some(i))}",
        "search q (id)": lambda i: f"/v1/tenants?q={tenant_id(some(i))}",
        "search q (part of a name)": lambda i: f"/v1/tenants?q={name_part(i)}",
        "search q (domain)": lambda i: f"/v1/tenants?q={tenant_id(some(i))[5:]}.crm",
        "search q (no match)": lambda i: "/v1/tenants?q=nomatchxyz",
        "list operations (page of 50)": lambda i: "/v1/operations?page_size=50",
        "operations of one tenant": lambda i: f"/v1/operations?tenant_id={tenant_id(some(i))}",
    }


def p95(timings: list[float]) -> float:
    return statistics.quantiles(timings, n=20)[-1]


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="scripts/bench catalog")
    parser.add_argument("--small", type=int, default=100)
    parser.add_argument("--large", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args(argv)
    # Two catalogs on the same server, queried alternately: a noisy neighbour slows both alike.
    with throwaway_catalog("catalog_small") as small_ctx, throwaway_catalog("catalog_large") as large_ctx:
        sides = []
        for ctx, tenants in ((small_ctx, args.small), (large_ctx, args.large)):
            grow(ctx, 1, tenants)
            headers = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'bench')[1]}"}
            sides.append((create_app(ctx=ctx).test_client(), headers, requests_for(tenants)))
        results: dict[str, tuple[float, float]] = {}
        for name in sides[0][2]:
            timings: tuple[list[float], list[float]] = ([], [])
            for i in range(-5, args.rounds):  # 5 warm-up rounds
                for side, (client, headers, requests) in enumerate(sides):
                    elapsed = timed_get(client, headers, requests[name](i))
                    if i >= 0:
                        timings[side].append(elapsed)
            results[name] = (p95(timings[0]), p95(timings[1]))
        for ctx in (small_ctx, large_ctx):
            with ctx.sessions() as session:  # rows only (no database or role exists behind them)
                session.execute(text("DELETE FROM operations"))
                session.execute(text("DELETE FROM tenants"))
                session.commit()
    print(f"catalog: p95 of {args.rounds} requests each through the API (in-process), a catalog of {args.small} "
          f"vs one of {args.large} tenants (2 domains, 3 operations each), queried alternately")
    print(f"  {'request':<30} {'p95 @' + str(args.small):>11} {'p95 @' + str(args.large):>12} {'ratio':>7}")
    for name, (small, large) in results.items():
        print(f"  {name:<30} {small:8.2f} ms {large:9.2f} ms {large / small:6.2f}x")


if __name__ == "__main__":
    main(sys.argv[1:])
