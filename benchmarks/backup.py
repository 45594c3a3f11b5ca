"""Backup benchmark: a tenant database grown to two sizes (a few hundred MB), each measured against
baselines taken in the same run. Prints; asserts nothing.

The data is clinic-CRM-like: leads with free-text notes drawn from a Zipf-weighted vocabulary, and
messages that are half automated reminder/confirmation templates and half free text. How well a
backup compresses depends on this mix: free text alone stores at about 0.26 of the archive (zstd 3).

- backup throughput: our BACKUP job (pg_dump -Fc -Z0 → zstd → AES-256-GCM chunks → store, manifest,
  read-back check, catalog) vs raw `pg_dump -Fc -Z0 > /dev/null`, same server, role and client;
- stored size vs the raw archive;
- peak RSS of the job process (the RQ work horse's code path, run in a child process) at both sizes;
- restore time: our in-place RESTORE job (copy, verify every chunk, pg_restore from the stream,
  checks, swap) vs raw `pg_restore` of a local archive file into a fresh database;
- the reference user's method on the same database and store: `pg_dump -Fc` (its default compression)
  streamed to the store unencrypted: time and stored size against ours;
- where the time goes: the CPU seconds of each stage (pg_dump client, zstd, AES-GCM + SHA-256) on the
  same archive, against the cores there are.

Usage: scripts/bench backup [--s3] [SIZE_MB ...]   (default 150 450)
`--s3` measures an S3 store: moto's server on a free port, a fresh bucket. Set BACKUP_STORE_URL to
measure another store (default: a file:// directory under /tmp).
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import urlparse

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

REPEATS = 3
# The second level measured: the smallest stored object at about the reference method's (gzip 6) ratio.
ALT_LEVEL = 6
RESTORE_REPEATS = 2
TENANT = "bench-backup"


# -- the child process: one operation, as a work horse runs it ------------------------------------------

def _memory_kb(field: str) -> int:
    """VmHWM (peak) or VmRSS of this process: per address space, so unlike ru_maxrss it does not
    inherit the forking parent's high-water mark across exec."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def run_operation_child(operation_id: str) -> None:
    from control_plane.jobs import run_operation

    imported = _memory_kb("VmHWM")
    started, usage = time.perf_counter(), os.times()
    run_operation(operation_id)
    elapsed, done = time.perf_counter() - started, os.times()
    # This process's threads (zstd, AES, store) and its children (pg_dump / pg_restore).
    cpu = sum(done[:4]) - sum(usage[:4])
    print(json.dumps({"seconds": elapsed, "maxrss_kb": _memory_kb("VmHWM"), "rss_after_imports_kb": imported,
                      "cpu_s": cpu}))


def in_child(operation_id: str, **env: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.backup", "_run", operation_id],
                         capture_output=True, text=True, env={**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"operation {operation_id} failed in its process:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- data ---------------------------------------------------------------------------------------------

FIRST = ("Ana Maria Lucia Carmen Laura Marta Paula Sara Elena Julia Sofia Irene Clara Alba Nuria Rosa Eva Ines Lola "
         "Noelia Carlos Javier David Daniel Pablo Jorge Luis Miguel Sergio Adrian Alvaro Diego Raul Ivan Oscar").split()
LAST = ("Garcia Rodriguez Gonzalez Fernandez Lopez Martinez Sanchez Perez Gomez Martin Jimenez Ruiz Hernandez Diaz "
        "Moreno Munoz Alvarez Romero Alonso Gutierrez Navarro Torres Dominguez Vazquez Ramos Gil Ramirez Serrano").split()
VOCABULARY = (
    "the patient asked about botox filler consultation price appointment next week follow up after treatment "
    "session results skin laser hair removal peel hydrafacial lips cheeks jawline wrinkles forehead crow feet "
    "under eye dark circles acne scars pigmentation melasma rosacea sensitive dry oily combination booked "
    "rescheduled cancelled confirmed deposit paid card cash installments discount promotion instagram whatsapp "
    "referral friend google ads website form called back voicemail no answer interested not interested thinking "
    "about it wants photos before after recovery time swelling bruising numbing cream doctor nurse clinic "
    "madrid barcelona valencia sevilla monday tuesday wednesday thursday friday saturday morning afternoon "
    "evening please call send information brochure quote budget allergy medication pregnant breastfeeding "
    "contraindication consent form signed reminder sent two days before arrived late on time satisfied happy "
    "unhappy complaint refund touch up free of charge second session package of three maintenance every months "
    "and or with for to of in on at is was will be has have had a an this that it she he they we you our your"
).split()
WEIGHTS = [1 / (rank + 1) ** 0.9 for rank in range(len(VOCABULARY))]  # Zipf-like, like real notes
SOURCES = ("instagram", "whatsapp", "website", "referral", "google", "walk-in", "phone")
CHANNELS = ("whatsapp", "email", "sms", "instagram", "phone")
STATUSES = ("queued", "sent", "delivered", "read", "failed")


TEMPLATES = (  # what a clinic CRM sends in bulk: automated WhatsApp/SMS reminders and confirmations
    "Hola {first}, te recordamos tu cita de {procedure} el {day} a las {hour}:{minute:02d} en nuestra clinica de "
    "{city}. Responde SI para confirmar o NO para cancelar.",
    "Hola {first}, tu cita de {procedure} queda confirmada para el {day} a las {hour}:{minute:02d}. Si necesitas "
    "cambiarla, llamanos al 91 000 00 00.",
    "{first}, gracias por tu visita de hoy. Recuerda seguir las indicaciones tras tu tratamiento de {procedure} "
    "y escribenos si tienes cualquier duda.",
)
PROCEDURES = ("botox", "acido hialuronico", "peeling quimico", "depilacion laser", "hydrafacial", "mesoterapia")
DAYS = ("lunes", "martes", "miercoles", "jueves", "viernes", "sabado")
CITIES = ("Madrid", "Barcelona", "Valencia", "Sevilla")


def message_body(rng: random.Random) -> str:
    """Half automated templates, half free text written by staff or patients."""
    if rng.random() < 0.5:
        return rng.choice(TEMPLATES).format(first=rng.choice(FIRST), procedure=rng.choice(PROCEDURES),
                                            day=rng.choice(DAYS), hour=rng.randrange(9, 20),
                                            minute=rng.choice((0, 15, 30, 45)), city=rng.choice(CITIES))
    return sentence(rng, 4, 40)


def sentence(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choices(VOCABULARY, WEIGHTS, k=rng.randint(low, high))).capitalize() + "."


def grow(conn: psycopg.Connection, rng: random.Random, target_mb: int) -> int:
    """Add clinic-like leads and messages until the database holds `target_mb` MB; returns its size."""
    epoch = datetime(2024, 1, 1, tzinfo=timezone.utc)
    while (size := conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]) < target_mb << 20:
        first_id = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM leads").fetchone()[0]
        batch = 20_000
        with conn.cursor().copy("COPY leads (full_name, email, phone, source, notes, created_at, updated_at, score) "
                                "FROM STDIN") as copy:
            for i in range(batch):
                first, last = rng.choice(FIRST), rng.choice(LAST)
                when = epoch + timedelta(seconds=rng.randrange(2 * 365 * 86400))
                copy.write_row((f"{first} {last}", f"{first.lower()}.{last.lower()}{first_id + i}@example.com",
                                f"+34 6{rng.randrange(10**7, 10**8)}", rng.choice(SOURCES),
                                sentence(rng, 15, 80), when, when, rng.choice((0, 30, 40, 70, 100))))
        with conn.cursor().copy("COPY messages (lead_id, direction, channel, body, status, sent_at, created_at) "
                                "FROM STDIN") as copy:
            for _ in range(batch * 4):
                when = epoch + timedelta(seconds=rng.randrange(2 * 365 * 86400))
                copy.write_row((first_id + rng.randrange(batch), rng.choice(("inbound", "outbound")),
                                rng.choice(CHANNELS), message_body(rng), rng.choice(STATUSES), when, when))
        conn.commit()
    return size


# -- an S3 store: moto's server ---------------------------------------------------------------------------

def start_moto() -> subprocess.Popen:
    """moto's S3 server on a free port, a fresh bucket, and the environment pointing at it (children too)."""
    import socket
    import threading

    import boto3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        if "Running on" in line:
            break
    else:
        raise SystemExit(f"moto server exited with status {proc.wait()}")
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({"BACKUP_STORE_URL": "s3://bench-backups/backups", "S3_ENDPOINT_URL": endpoint,
                       "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                       "AWS_DEFAULT_REGION": "us-east-1"})
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="bench-backups")
    return proc


# -- baselines ----------------------------------------------------------------------------------------

class _Counting:
    """A readable stream that counts what passes through it (the reference method's stored size)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.size = 0

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.size += len(data)
        return data


def reference_backup(store, dump: list[str], env: dict, key: str) -> tuple[float, int]:
    """The reference user's method: `pg_dump -Fc` (default compression) streamed to the store unencrypted."""
    started = time.perf_counter()
    proc = subprocess.Popen([*dump, "--format=custom"], stdout=subprocess.PIPE, env=env)
    counted = _Counting(proc.stdout)
    store.put(key, counted)
    if proc.wait() != 0:
        raise SystemExit("reference pg_dump failed")
    return time.perf_counter() - started, counted.size


def stage_costs(archive_path: str, level: int) -> dict[str, float]:
    """CPU seconds of our stages on the raw archive, each alone in this process (one core each)."""
    import hashlib

    import zstandard
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    def cpu() -> float:
        usage = os.times()
        return usage.user + usage.system

    costs: dict[str, float] = {}
    with open(archive_path, "rb") as source:
        raw = source.read()
    for name, lvl in (("zstd", level), ("zstd_alt", ALT_LEVEL)):
        started = cpu()
        compressed = zstandard.ZstdCompressor(level=lvl).compress(raw)
        costs[name] = cpu() - started
    started = cpu()
    aes, digest = AESGCM(os.urandom(32)), hashlib.sha256()
    for offset in range(0, len(compressed), 1 << 20):
        digest.update(aes.encrypt(b"\0" * 12, compressed[offset:offset + (1 << 20)], b""))
    costs["aes_sha"] = cpu() - started
    started = cpu()
    hashlib.sha256(compressed).hexdigest()
    costs["readback_sha"] = cpu() - started
    return costs


def children_cpu() -> float:
    usage = os.times()
    return usage.children_user + usage.children_system

def client_args(admin_url: str, database: str, role: str) -> str:
    params = conninfo_to_dict(admin_url)
    params.pop("password", None)
    params.update(dbname=database, user=role)
    return make_conninfo(**params)


def timed(args: list[str], env: dict, **kwargs) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True, **kwargs)
    return time.perf_counter() - started


# -- the benchmark ------------------------------------------------------------------------------------

def main(argv: list[str]) -> None:
    s3 = "--s3" in argv
    sizes = [int(a) for a in argv if a != "--s3"] or [150, 450]
    # Imported here, not at the top: the child process (`_run`) imports only what a work horse needs.
    from benchmarks._catalog import throwaway_catalog

    work = tempfile.mkdtemp(prefix="bench-backup-")
    moto = start_moto() if s3 else None
    store = {} if os.environ.get("BACKUP_STORE_URL") else {"BACKUP_STORE_URL": f"file://{work}/store"}
    try:
        with throwaway_catalog("backup", pool_size=2, **store) as ctx:
            measure(ctx, sizes, work)
    finally:
        if moto is not None:
            moto.terminate()
            moto.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)
        store_url = urlparse(os.environ["BACKUP_STORE_URL"])
        if store_url.scheme == "file" and not store_url.path.startswith(work):
            shutil.rmtree(os.path.join(store_url.path, TENANT), ignore_errors=True)


def measure(ctx, sizes: list[int], work: str) -> None:
    from control_plane.adapters.pg_backup import choose_client
    from control_plane.catalog.backup_models import Backup
    from control_plane.catalog.models import Tenant
    from control_plane.services.kinds import backup as backups
    from control_plane.services.kinds import provision as tenants
    from control_plane.services.kinds import restore as restores
    from control_plane.services.auth import SYSTEM
    from control_plane.services.context import role_secret_context
    from control_plane.services.kinds.drill import request_drill
    from control_plane.services.runner import execute_operation

    admin_url = os.environ["TENANT_DB_ADMIN_URL"]
    rows = []
    op = tenants.request_tenant(ctx, SYSTEM, tenant_id=TENANT, name="Benchmark clinic",
                                admin_email="owner@bench.example")
    execute_operation(ctx, op.id)
    with ctx.sessions() as session:
        record = session.get(Tenant, TENANT)
        database, role = record.database_name, record.role_name
        password = ctx.keyring.decrypt(record.role_password_encrypted, role_secret_context(TENANT))
    with psycopg.connect(admin_url, autocommit=True) as admin:
        major = int(admin.execute("SHOW server_version_num").fetchone()[0]) // 10000
    client = choose_client(major)
    env = {"PATH": os.environ.get("PATH", ""), "PGPASSWORD": password}
    conninfo = client_args(admin_url, database, role)
    rng = random.Random(20261129)
    raw_archive = os.path.join(work, "raw.pgdump")

    for target in sizes:
        with psycopg.connect(admin_url, dbname=database) as data:
            db_size = grow(data, rng, target)
        dump = [client.pg_dump, "--format=custom", "--compress=0", "--no-password", f"--dbname={conninfo}"]
        raw_times, ours, fast, backup_ids, reference, raw_cpu = [], [], [], [], [], []
        for attempt in range(REPEATS):  # interleaved, so all see the same cache and load
            with open(os.devnull, "wb") as null:
                before = children_cpu()
                raw_times.append(timed(dump, env, stdout=null))
                raw_cpu.append(children_cpu() - before)
            reference.append(reference_backup(ctx.backup_store, [d for d in dump if d != "--compress=0"
                                                                 and d != "--format=custom"], env,
                                              f"{TENANT}/reference-{target}-{attempt}/dump.pgc"))
            op = backups.request_backup(ctx, SYSTEM, TENANT)
            ours.append(in_child(op.id))
            backup_ids.append(finished(ctx, op.id).result["backup_id"])
            op = backups.request_backup(ctx, SYSTEM, TENANT)
            fast.append(in_child(op.id, BACKUP_ZSTD_LEVEL=str(ALT_LEVEL)))
            fast_id = finished(ctx, op.id).result["backup_id"]
        timed([*dump, f"--file={raw_archive}"], env)
        archive_size = os.path.getsize(raw_archive)
        costs = stage_costs(raw_archive, ctx.settings.backup_zstd_level)
        for attempt in range(REPEATS):  # the reference method's objects
            ctx.backup_store.delete_prefix(f"{TENANT}/reference-{target}-{attempt}/")
        with ctx.sessions() as session:
            backup = session.get(Backup, backup_ids[-1])
            stored, ours_archive = backup.stored_bytes, backup.archive_bytes
            stored_fast = session.get(Backup, fast_id).stored_bytes

        # Restore: raw pg_restore of the local file into a fresh database, vs our in-place restore.
        raw_restores, restored, drilled, drill_rto = [], [], [], []
        for _ in range(RESTORE_REPEATS):
            scratch = f"bench_raw_restore_{uuid.uuid4().hex[:6]}"
            with psycopg.connect(admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(scratch),
                                                                           sql.Identifier(role)))
            try:
                raw_restores.append(timed([client.pg_restore, "--no-owner", "--no-privileges", "--exit-on-error",
                                           "--no-password", f"--dbname={client_args(admin_url, scratch, role)}",
                                           raw_archive], env))
            finally:
                with psycopg.connect(admin_url, autocommit=True) as admin:
                    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(scratch)))
            op = restores.request_restore(ctx, SYSTEM, TENANT, backup_id=backup_ids[-1], safety_backup=False)
            restored.append(in_child(op.id))
            finished(ctx, op.id)
            # A drill of the newest backup (the zstd 6 one): its RTO is download + verify + restore + check.
            op = request_drill(ctx, SYSTEM, TENANT)
            drilled.append(in_child(op.id))
            drill_rto.append(finished(ctx, op.id).result["rto_seconds"])

        rows.append({
            "target_mb": target, "db_mb": db_size / 2**20, "archive_mb": archive_size / 2**20,
            "ours_archive_mb": ours_archive / 2**20, "stored_mb": stored / 2**20,
            "raw_dump_s": min(raw_times), "raw_dump_all": raw_times, "backup_s": min(r["seconds"] for r in ours),
            "backup_all": [r["seconds"] for r in ours],
            "fast_s": min(r["seconds"] for r in fast), "fast_all": [r["seconds"] for r in fast],
            "fast_stored_mb": stored_fast / 2**20, "fast_rss_mb": max(r["maxrss_kb"] for r in fast) / 1024,
            "backup_rss_mb": max(r["maxrss_kb"] for r in ours) / 1024,
            "idle_rss_mb": max(r["rss_after_imports_kb"] for r in ours) / 1024,
            "raw_restore_s": min(raw_restores), "restore_s": min(r["seconds"] for r in restored),
            "restore_rss_mb": max(r["maxrss_kb"] for r in restored) / 1024,
            "drill_rto_s": min(drill_rto), "drill_s": min(r["seconds"] for r in drilled),
            "drill_rss_mb": max(r["maxrss_kb"] for r in drilled) / 1024,
            "reference_s": min(t for t, _ in reference), "reference_mb": reference[-1][1] / 2**20,
            "reference_all": [t for t, _ in reference], "raw_dump_cpu_s": min(raw_cpu),
            "backup_cpu_s": min(r.get("cpu_s", 0.0) for r in ours), **{f"cost_{k}": v for k, v in costs.items()},
        })
        print_row(rows[-1], flush=True)
    print_summary(rows, client.version, ctx.settings.backup_zstd_level)


def finished(ctx, operation_id: str):
    from control_plane.catalog.models import Operation

    with ctx.sessions() as session:
        op = session.get(Operation, operation_id)
        if op.status.value != "succeeded":
            raise SystemExit(f"{op.kind.value} failed: {op.error}")
        return op


def print_row(row: dict, flush: bool = False) -> None:
    print(f"[{row['target_mb']} MB target] database {row['db_mb']:.0f} MB, raw archive {row['archive_mb']:.0f} MB: "
          f"raw pg_dump {row['raw_dump_s']:.2f}s, backup {row['backup_s']:.2f}s (zstd {ALT_LEVEL}: {row['fast_s']:.2f}s), "
          f"raw pg_restore {row['raw_restore_s']:.2f}s, restore {row['restore_s']:.2f}s", flush=flush, file=sys.stderr)


def print_summary(rows: list[dict], client_version: str, level: int) -> None:
    load = os.getloadavg()[0]
    store = urlparse(os.environ["BACKUP_STORE_URL"]).scheme + "://" + (
        " (moto server)" if os.environ.get("S3_ENDPOINT_URL") else "")
    print()
    print(f"backup benchmark: one tenant database on the same host, {store} store, pg_dump/pg_restore "
          f"{client_version}, {os.cpu_count()} CPUs (load average {load:.1f}); times are the best of {REPEATS} "
          f"backups / {RESTORE_REPEATS} restores, interleaved with their baselines")
    print()
    print("backup throughput and stored size (baseline: pg_dump -Fc -Z0 > /dev/null, same role, same client)")
    print(f"{'database':>9} {'archive':>8} | {'raw dump':>8} | {'backup zstd ' + str(level):>16} {'vs raw':>7} "
          f"{'stored':>8} {'/archive':>8} {'peak RSS':>9} | {'backup zstd ' + str(ALT_LEVEL):>14} {'vs raw':>7} {'stored':>8} "
          f"{'/archive':>8} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['db_mb']:7.0f}MB {r['archive_mb']:6.0f}MB | {r['raw_dump_s']:7.2f}s | {r['backup_s']:15.2f}s "
              f"{r['raw_dump_s'] / r['backup_s']:6.2f}x {r['stored_mb']:6.1f}MB {r['stored_mb'] / r['archive_mb']:7.3f}x "
              f"{r['backup_rss_mb']:7.1f}MB | {r['fast_s']:13.2f}s {r['raw_dump_s'] / r['fast_s']:6.2f}x "
              f"{r['fast_stored_mb']:6.1f}MB {r['fast_stored_mb'] / r['archive_mb']:7.3f}x {r['fast_rss_mb']:7.1f}MB")
    print("  vs raw = raw pg_dump time / backup time (throughput ratio, target >= 0.9); /archive = stored size / raw "
          "archive size (target <= 0.2); peak RSS = VmHWM of the job process (target flat, <= 128 MB)")
    print(f"  job process after its imports, before any work: {max(r['idle_rss_mb'] for r in rows):.1f} MB")
    print()
    print("restore (baseline: pg_restore of a local archive file into a fresh database, same role)")
    print(f"{'database':>9} | {'raw pg_restore':>14} | {'restore':>8} {'vs raw':>7} {'peak RSS':>9} | "
          f"{'drill RTO':>9} {'vs raw':>7} {'drill job':>9} {'peak RSS':>9}")
    for r in rows:
        print(f"{r['db_mb']:7.0f}MB | {r['raw_restore_s']:13.2f}s | {r['restore_s']:7.2f}s "
              f"{r['restore_s'] / r['raw_restore_s']:6.2f}x {r['restore_rss_mb']:7.1f}MB | {r['drill_rto_s']:8.2f}s "
              f"{r['drill_rto_s'] / r['raw_restore_s']:6.2f}x {r['drill_s']:8.2f}s {r['drill_rss_mb']:7.1f}MB")
    print("  restore = the in-place RESTORE job (copy the object, authenticate every chunk, pg_restore from the "
          "decrypting stream into a scratch database, check, swap); vs raw = restore time / raw time;\n  drill RTO = "
          "what the drill records (download, verify, pg_restore, row counts and revision checked; target <= 1.2x raw), "
          "drill job = the whole operation (also drops the scratch database)")
    print()
    print("the reference user's method (pg_dump -Fc, default compression, streamed to the same store, unencrypted)")
    print(f"{'database':>9} | {'reference':>9} {'stored':>8} | {'ours zstd ' + str(level):>13} {'speed-up':>8} "
          f"{'size ratio':>10} | {'ours zstd ' + str(ALT_LEVEL):>13} {'speed-up':>8} {'size ratio':>10}")
    for r in rows:
        print(f"{r['db_mb']:7.0f}MB | {r['reference_s']:8.2f}s {r['reference_mb']:6.1f}MB | {r['backup_s']:12.2f}s "
              f"{r['reference_s'] / r['backup_s']:7.2f}x {r['stored_mb'] / r['reference_mb']:9.3f}x | "
              f"{r['fast_s']:12.2f}s {r['reference_s'] / r['fast_s']:7.2f}x {r['fast_stored_mb'] / r['reference_mb']:9.3f}x")
    print("  speed-up = reference time / our time (target > 1); size ratio = our stored object / theirs (target <= 1)")
    print()
    cores = os.cpu_count() or 1
    print(f"where the time goes (CPU seconds; {cores} cores; stages measured alone on the same archive)")
    print(f"{'database':>9} | {'raw wall':>8} {'pg_dump':>8} | {'zstd ' + str(level):>6} {'zstd ' + str(ALT_LEVEL):>6} {'aes+sha':>7} "
          f"{'readback':>8} | {'job CPU':>7} {'backup wall':>11} {'extra cores':>11}")
    for r in rows:
        ours_cpu = r["cost_zstd"] + r["cost_aes_sha"] + r["cost_readback_sha"]
        print(f"{r['db_mb']:7.0f}MB | {r['raw_dump_s']:7.2f}s {r['raw_dump_cpu_s']:7.2f}s | {r['cost_zstd']:5.2f}s "
              f"{r['cost_zstd_alt']:5.2f}s {r['cost_aes_sha']:6.2f}s {r['cost_readback_sha']:7.2f}s | "
              f"{r['backup_cpu_s']:6.2f}s {r['backup_s']:10.2f}s {ours_cpu / r['raw_dump_s']:10.2f}")
    print("  raw wall: pg_dump -Fc -Z0 > /dev/null; pg_dump: its client CPU (the server backend that feeds it "
          "uses about as much again,\n  not counted); zstd/aes+sha/readback: what our pipeline adds on top; job CPU: "
          "the backup job's own CPU with pg_dump's;\n  extra cores: the added stages' CPU / raw wall: how many "
          "cores beyond what pg_dump and its backend use our pipeline needs to keep pace with the raw dump")
    print()
    print("all runs (s): " + "; ".join(
        f"{r['target_mb']}MB raw {['%.2f' % t for t in r['raw_dump_all']]} backup {['%.2f' % t for t in r['backup_all']]}"
        f" zstd-{ALT_LEVEL} {['%.2f' % t for t in r['fast_all']]}" for r in rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_run"]:
        run_operation_child(sys.argv[2])
    else:
        main(sys.argv[1:])
