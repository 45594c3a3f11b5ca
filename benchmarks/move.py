"""Move benchmark: write freeze and total time of online and offline moves of one tenant between two
servers (wal_level=logical, durable) at two sizes, under a continuous writer through tenant_runtime,
next to a raw `pg_dump -Fc | pg_restore` of the same database in the same run. Prints; asserts nothing.

The freeze is the longest gap between two acknowledged writes of the writer (one row per transaction,
as fast as it can) during the move; `cut-over` is the operation's own measure (tenant `moving` → the
catalog switched). Usage: scripts/bench move [MB ...]   (default: 10 300)
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import devstack  # noqa: E402  (the dev-only package under scripts/)

from benchmarks._catalog import throwaway_catalog  # noqa: E402
from benchmarks.provision import running_workers  # noqa: E402
from control_plane.app import create_app  # noqa: E402
from control_plane.catalog.models import TokenRole  # noqa: E402
from control_plane.services.auth import create_token  # noqa: E402
from tenant_runtime import TenantRouter  # noqa: E402

ROW_BYTES = 1000


class Writer(threading.Thread):
    def __init__(self, router: TenantRouter, tenant_id: str) -> None:
        super().__init__(daemon=True)
        self.router, self.tenant_id = router, tenant_id
        self.acked: list[float] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.router.connection(self.tenant_id, timeout=5) as conn:
                    conn.execute("INSERT INTO leads (full_name) VALUES ('bench writer')")
                self.acked.append(time.monotonic())
            except Exception:  # refused or cut off: not acknowledged
                self.errors += 1
                time.sleep(0.001)

    def longest_gap(self, since: float) -> float:
        times = [t for t in self.acked if t >= since]
        return max((b - a for a, b in zip(times, times[1:])), default=0.0)


def _wait(client, headers, location: str, timeout: float = 3600) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(location, headers=headers).get_json()
        if body["status"] in ("succeeded", "failed", "cancelled"):
            if body["status"] != "succeeded":
                raise SystemExit(f"operation failed: {body}")
            return body
        if time.monotonic() > deadline:
            raise SystemExit(f"operation did not finish in {timeout:g} s")
        time.sleep(0.05)


def _fill(tenant_id: str, megabytes: int, server: devstack.PostgresServer) -> float:
    rows = megabytes * 1024 * 1024 // ROW_BYTES
    with psycopg.connect(server.url_for(f"tenant_{tenant_id.replace('-', '_')}_db"), autocommit=True) as conn:
        for start in range(0, rows, 50_000):
            conn.execute("INSERT INTO leads (full_name, notes) SELECT 'lead ' || g, repeat(md5(g::text), %s::int) "
                         "FROM generate_series(%s::int, %s::int) g", (ROW_BYTES // 32, start, min(start + 50_000, rows) - 1))
        conn.execute("VACUUM ANALYZE leads")
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0] / 1e6


def _raw_dump_restore(source: devstack.PostgresServer, target: devstack.PostgresServer, database: str) -> float:
    """`pg_dump -Fc | pg_restore` into a fresh database on the other server, as the superusers."""
    scratch = f"bench_raw_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{scratch}"')
    bindir = devstack.find_postgres_bindir()

    def env(server):
        return {**os.environ, "PGPASSWORD": server.password}

    def dsn(server, db):
        params = conninfo_to_dict(server.url)
        params.pop("password", None)
        return make_conninfo(**{**params, "dbname": db})

    started = time.perf_counter()
    dump = subprocess.Popen([str(bindir / "pg_dump"), "-Fc", "-d", dsn(source, database)], stdout=subprocess.PIPE,
                            env=env(source))
    restore = subprocess.run([str(bindir / "pg_restore"), "--no-owner", "-d", dsn(target, scratch)],
                             stdin=dump.stdout, env=env(target), check=False)
    dump.stdout.close()
    dump.wait()
    elapsed = time.perf_counter() - started
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{scratch}" WITH (FORCE)')
    if dump.returncode or restore.returncode:
        raise SystemExit("raw pg_dump | pg_restore failed")
    return elapsed


def _move(client, headers, writer: Writer, tenant_id: str, server: str, mode: str) -> tuple[float, float, float]:
    started = time.monotonic()
    response = client.post(f"/v1/tenants/{tenant_id}/move", headers=headers, json={"server": server, "mode": mode})
    if response.status_code != 202:
        raise SystemExit(f"move refused: {response.get_json()}")
    body = _wait(client, headers, response.headers["Location"])
    total = time.monotonic() - started
    time.sleep(1)  # let the writer show the first writes after the switch
    return total, writer.longest_gap(started), body["result"].get("freeze_ms", 0.0)


def main(argv: list[str]) -> None:
    if not all(arg.isdigit() for arg in argv):
        raise SystemExit("usage: scripts/bench move [SIZE_MB ...]   (default 10 300)")
    sizes = [int(arg) for arg in argv] or [10, 300]
    root = devstack.scratch_dir("bench-move")
    servers = {name: devstack.PostgresServer(root / name, logical=True) for name in ("src", "dst")}
    try:
        for server in servers.values():
            server.start()
        with throwaway_catalog("move") as ctx, running_workers(1):
            client = create_app(ctx=ctx).test_client()
            headers = {"Authorization": f"Bearer {create_token(ctx, TokenRole.SUPER_ADMIN, 'bench')[1]}"}
            for name, server in servers.items():
                client.post("/v1/servers", headers=headers, json={"name": name, "admin_url": server.url})
            client.post("/v1/servers/default/drain", headers=headers, json={"move_tenants": False})
            client.post("/v1/servers/dst/drain", headers=headers, json={"move_tenants": False})
            router = TenantRouter(catalog_database_url=ctx.settings.catalog_database_url,
                                  keyring=ctx.settings.keyring, redis_url=ctx.settings.redis_url,
                                  acquire_timeout=5)
            rows = []
            for megabytes in sizes:
                tenant_id = f"bench-move-{megabytes}"
                client.post("/v1/servers/dst/drain", headers=headers, json={"move_tenants": False})
                created = client.post("/v1/tenants", headers=headers,
                                      json={"id": tenant_id, "name": tenant_id, "admin_email": "a@bench.example"})
                _wait(client, headers, created.headers["Location"])
                size = _fill(tenant_id, megabytes, servers["src"])
                client.post("/v1/servers/dst/drain", headers=headers, json={"draining": False})
                raw = _raw_dump_restore(servers["src"], servers["dst"], f"tenant_{tenant_id.replace('-', '_')}_db")
                writer = Writer(router, tenant_id)
                writer.start()
                time.sleep(1)
                online = _move(client, headers, writer, tenant_id, "dst", "online")
                offline = _move(client, headers, writer, tenant_id, "src", "offline")
                writer.stop.set()
                writer.join(10)
                rows.append((megabytes, size, raw, online, offline, len(writer.acked), writer.errors))
            router.close()
        print("move: one tenant between two durable wal_level=logical servers, a writer through tenant_runtime")
        print(f"  {'size':>9} {'mode':<8} {'total s':>8} {'x raw':>6} {'freeze ms':>10} {'cut-over ms':>12}")
        for megabytes, size, raw, online, offline, acked, errors in rows:
            print(f"  {size:7.0f}MB {'raw':<8} {raw:8.2f} {1:6.2f} {'':>10} {'':>12}   pg_dump -Fc | pg_restore")
            for mode, (total, gap, freeze) in (("online", online), ("offline", offline)):
                print(f"  {size:7.0f}MB {mode:<8} {total:8.2f} {total / raw:6.2f} {gap * 1000:10.0f} {freeze:12.0f}")
            print(f"  {'':>9} writer: {acked} acknowledged writes, {errors} refused or cut off")
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1:])
