"""Backup benchmark: a tenant database grown to two sizes, each measured against baselines taken in the
same run, on the same database and the same stores. Prints; asserts nothing. On a shared machine the
figures are noisy: read the ratios (each the best of a few runs interleaved with its baseline).

The data is clinic-CRM-like: leads with free-text notes drawn from a Zipf-weighted vocabulary, and
messages that are half automated reminder/confirmation templates and half free text.

Per size:
- the reference user's method, `pg_dump -Fc` (its default gzip compression) streamed unencrypted to the
  store, vs our BACKUP job (pg_dump -Fc -Z0 → zstd → AES-256-GCM chunks → store, manifest, read-back
  check, catalog) at the configured level and at level 3: time and stored size;
- both vs raw `pg_dump -Fc -Z0 > /dev/null` (same server, role and client): the throughput ratio;
- a restore drill's RTO (download, verify, pg_restore from the decrypting stream, row counts) and the
  in-place RESTORE job vs raw `pg_restore` of the decrypted archive from a local file;
- peak RSS (VmHWM) of the job process at both sizes, for a file store and an S3 store (moto's server
  on a free port), backup and drill;
- where the time goes: CPU seconds of pg_dump, its server backend, zstd and AES-GCM + SHA-256 on the
  same archive, against the cores there are.

Usage: scripts/bench backup [SIZE_MB ...]   (default 30 200)
"""
from __future__ import annotations

import json
import os
import random
import shutil
import statistics
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
# The second level measured: the fast one (about twice zstd 7's speed, several percent larger than gzip).
ALT_LEVEL = 3
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


def store_child(mode: str, size_mb: int) -> None:
    """One S3 store transfer alone (`put` a stream of size_mb MB, or `get` it into a temporary file), as a
    backup or a drill does it: its peak RSS above the process's after its imports."""
    from control_plane.adapters.backup_format import IterReader
    from control_plane.adapters.backup_store import S3BackupStore

    store = S3BackupStore(S3_STORE, endpoint_url=os.environ["S3_ENDPOINT_URL"])
    store.ping()
    before = _memory_kb("VmHWM")
    key = f"store-memory/{size_mb}"
    if mode == "put":
        block = os.urandom(1 << 20)  # incompressible, like a sealed backup
        store.put(key, IterReader(block for _ in range(size_mb)))
    else:
        with tempfile.TemporaryFile() as destination:
            store.fetch(key, destination)
    print(json.dumps({"grew_kb": _memory_kb("VmHWM") - before}))


def store_memory(sizes_mb: tuple[int, ...] = (8, 64, 256)) -> dict[tuple[str, int], float]:
    """MB the S3 store's upload and download add to a process's peak, per object size."""
    grew = {}
    for mode in ("put", "get"):
        for size in sizes_mb:
            out = subprocess.run([sys.executable, "-m", "benchmarks.backup", "_store", mode, str(size)],
                                 capture_output=True, text=True, check=True)
            grew[(mode, size)] = json.loads(out.stdout.strip().splitlines()[-1])["grew_kb"] / 1024
    return grew


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

S3_STORE = "s3://bench-backups/backups"


def start_moto() -> subprocess.Popen:
    """moto's S3 server on a free port, a fresh bucket, and the environment pointing at it (children too):
    the store S3_STORE."""
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
    os.environ.update({"S3_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
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


def backend_cpu_meter(admin_url: str):
    """A function returning the CPU seconds of the PostgreSQL server's ended backends so far (the
    postmaster's reaped children), or None when the server is not local (then not measured)."""
    try:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            data_dir = conn.execute("SHOW data_directory").fetchone()[0]
        with open(os.path.join(data_dir, "postmaster.pid")) as pid_file:
            pid = int(pid_file.readline())
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, psycopg.Error):
        return lambda: None

    def reaped() -> float | None:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            return None
        return (int(fields[13]) + int(fields[14])) / ticks  # cutime + cstime

    return reaped


def reaped_since(meter, before: float) -> float:
    """The backend CPU added since `before`, once the postmaster has reaped the dump's backend (it exits
    a moment after its client does)."""
    deadline = time.monotonic() + 2
    while (now := meter()) is not None and now <= before and time.monotonic() < deadline:
        time.sleep(0.02)
    # Another backend (autovacuum's) may have ended first: wait until the count stops moving.
    settled = now
    while now is not None and time.monotonic() < deadline:
        time.sleep(0.2)
        if (now := meter()) == settled:
            break
        settled = now
    return (now or before) - before


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
    if any(a.startswith("-") for a in argv):
        raise SystemExit("usage: scripts/bench backup [SIZE_MB ...]   (default 30 200)")
    sizes = [int(a) for a in argv] or [30, 200]
    # Imported here, not at the top: the child process (`_run`) imports only what a work horse needs.
    from benchmarks._catalog import throwaway_catalog

    work = tempfile.mkdtemp(prefix="bench-backup-")
    moto = start_moto()
    try:
        with throwaway_catalog("backup", pool_size=2, BACKUP_STORE_URL=f"file://{work}/store") as ctx:
            measure(ctx, sizes, work)
    finally:
        moto.terminate()
        moto.wait(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


def measure(ctx, sizes: list[int], work: str) -> None:
    from control_plane.adapters.pg_backup import choose_client
    from control_plane.catalog.backup_models import Backup
    from control_plane.catalog.models import Tenant
    from control_plane.services.auth import SYSTEM
    from control_plane.services.context import role_secret_context
    from control_plane.services.kinds import backup as backups
    from control_plane.services.kinds import provision as tenants
    from control_plane.services.kinds import restore as restores
    from control_plane.services.kinds.drill import request_drill
    from control_plane.services.runner import execute_operation

    admin_url = os.environ["TENANT_DB_ADMIN_URL"]
    s3_store = ctx.open_backup_store(S3_STORE)
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
    backend_cpu = backend_cpu_meter(admin_url)

    def backup(**env_overrides: str) -> tuple[dict, str]:
        op = backups.request_backup(ctx, SYSTEM, TENANT)
        backend_before = backend_cpu()
        measured = in_child(op.id, **env_overrides)
        # The job's server backends (pg_dump's, the snapshot's row counts, the catalog's) end with it.
        measured["backend_cpu_s"] = reaped_since(backend_cpu, backend_before) if backend_before is not None else None
        return measured, finished(ctx, op.id).result["backup_id"]

    def drill(**env_overrides: str) -> tuple[dict, dict]:
        op = request_drill(ctx, SYSTEM, TENANT)
        measured = in_child(op.id, **env_overrides)
        return measured, finished(ctx, op.id).result

    for target in sizes:
        with psycopg.connect(admin_url, dbname=database) as data:
            db_size = grow(data, rng, target)
        dump = [client.pg_dump, "--format=custom", "--compress=0", "--no-password", f"--dbname={conninfo}"]
        reference_dump = [d for d in dump if d not in ("--compress=0", "--format=custom")]
        raw_times, raw_cpu, raw_backend, reference, ours, fast = [], [], [], [], [], []
        for attempt in range(REPEATS):  # interleaved, so all see the same cache and load
            with open(os.devnull, "wb") as null:
                before, backend_before = children_cpu(), backend_cpu()
                raw_times.append(timed(dump, env, stdout=null))
                raw_cpu.append(children_cpu() - before)
                if backend_before is not None:
                    raw_backend.append(reaped_since(backend_cpu, backend_before))
            reference.append(reference_backup(ctx.backup_store, reference_dump, env,
                                              f"{TENANT}/reference-{target}-{attempt}/dump.pgc"))
            ours.append(backup())
            fast.append(backup(BACKUP_ZSTD_LEVEL=str(ALT_LEVEL)))
        # The S3 store (moto): one backup each way, and a drill of ours (the newest backup now).
        s3_reference = reference_backup(s3_store, reference_dump, env, f"{TENANT}/reference-{target}/dump.pgc")
        s3_ours, _ = backup(BACKUP_STORE_URL=S3_STORE)
        s3_drill = drill()
        # The newest backup again in the file store: the drills and the restore below read it.
        ours.append(backup())
        timed([*dump, f"--file={raw_archive}"], env)
        archive_size = os.path.getsize(raw_archive)
        costs = stage_costs(raw_archive, ctx.settings.backup_zstd_level)
        for attempt in range(REPEATS):  # the reference method's objects
            ctx.backup_store.delete_prefix(f"{TENANT}/reference-{target}-{attempt}/")
        s3_store.delete_prefix(f"{TENANT}/reference-{target}/")
        with ctx.sessions() as session:
            newest = session.get(Backup, ours[-1][1])
            stored, ours_archive = newest.stored_bytes, newest.archive_bytes
            stored_fast = session.get(Backup, fast[-1][1]).stored_bytes

        # Restore: raw pg_restore of the archive from a local file, vs a drill and our in-place restore.
        raw_restores, drills = [], []
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
            drills.append(drill())
        op = restores.request_restore(ctx, SYSTEM, TENANT, backup_id=ours[-1][1], safety_backup=False)
        restored = in_child(op.id)
        finished(ctx, op.id)

        best_drill = min(drills, key=lambda d: d[1]["rto_seconds"])[1]
        rows.append({
            "target_mb": target, "db_mb": db_size / 2**20, "archive_mb": archive_size / 2**20,
            "ours_archive_mb": ours_archive / 2**20, "stored_mb": stored / 2**20,
            "fast_stored_mb": stored_fast / 2**20,
            "raw_dump_s": min(raw_times), "raw_dump_all": raw_times,
            "raw_dump_cpu_s": min(raw_cpu), "raw_backend_cpu_s": statistics.median(raw_backend) if raw_backend else None,
            "backup_s": min(m["seconds"] for m, _ in ours), "backup_all": [m["seconds"] for m, _ in ours],
            "backup_cpu_s": min(m["cpu_s"] + (m["backend_cpu_s"] or 0) for m, _ in ours),
            "fast_cpu_s": min(m["cpu_s"] + (m["backend_cpu_s"] or 0) for m, _ in fast),
            "fast_s": min(m["seconds"] for m, _ in fast), "fast_all": [m["seconds"] for m, _ in fast],
            "reference_s": min(t for t, _ in reference), "reference_mb": reference[-1][1] / 2**20,
            "reference_all": [t for t, _ in reference],
            "s3_reference_s": s3_reference[0], "s3_backup_s": s3_ours["seconds"],
            "backup_rss_mb": max(m["maxrss_kb"] for m, _ in ours) / 1024,
            "s3_backup_rss_mb": s3_ours["maxrss_kb"] / 1024,
            "idle_rss_mb": max(m["rss_after_imports_kb"] for m, _ in ours) / 1024,
            "raw_restore_s": min(raw_restores), "raw_restore_all": raw_restores,
            "drill_rto_s": best_drill["rto_seconds"], "drill_all": [d[1]["rto_seconds"] for d in drills],
            "drill_download_s": best_drill["download_verify_seconds"],
            "drill_restore_s": best_drill["restore_seconds"], "drill_check_s": best_drill["check_seconds"],
            "drill_rss_mb": max(m["maxrss_kb"] for m, _ in drills) / 1024,
            "s3_drill_rto_s": s3_drill[1]["rto_seconds"], "s3_drill_rss_mb": s3_drill[0]["maxrss_kb"] / 1024,
            "s3_drill_download_s": s3_drill[1]["download_verify_seconds"],
            "restore_s": restored["seconds"], "restore_rss_mb": restored["maxrss_kb"] / 1024,
            **{f"cost_{k}": v for k, v in costs.items()},
        })
        print_row(rows[-1], flush=True)
    print_summary(rows, client.version, ctx.settings.backup_zstd_level, ctx.settings.backup_zstd_threads,
                  store_memory())


def finished(ctx, operation_id: str):
    from control_plane.catalog.models import Operation

    with ctx.sessions() as session:
        op = session.get(Operation, operation_id)
        if op.status.value != "succeeded":
            raise SystemExit(f"{op.kind.value} failed: {op.error}")
        return op


def print_row(row: dict, flush: bool = False) -> None:
    print(f"[{row['target_mb']} MB target] database {row['db_mb']:.0f} MB, raw archive {row['archive_mb']:.0f} MB: "
          f"raw pg_dump {row['raw_dump_s']:.2f}s, reference {row['reference_s']:.2f}s, backup {row['backup_s']:.2f}s "
          f"(zstd {ALT_LEVEL}: {row['fast_s']:.2f}s), raw pg_restore {row['raw_restore_s']:.2f}s, "
          f"drill RTO {row['drill_rto_s']:.2f}s", flush=flush, file=sys.stderr)


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "n/a"


def _bound(raw_s: float, cpu_s: float, cores: int) -> str:
    """The best throughput ratio vs raw that `cpu_s` of work allows on `cores` cores."""
    return _ratio(raw_s, max(raw_s, cpu_s / cores))


def print_summary(rows: list[dict], client_version: str, level: int, threads: int,
                  store_grew: dict[tuple[str, int], float]) -> None:
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print()
    print(f"backup benchmark: one tenant database, file store and S3 store (moto server) on the same host, "
          f"pg_dump/pg_restore {client_version}, {cores} CPUs (load average {load:.1f} at the end: the machine is "
          f"shared, figures are noisy; read the ratios); ours = zstd {level} with {threads} worker threads; times "
          f"are the best of {REPEATS}+ runs interleaved with their baselines")
    print()
    print("1. the reference user's method (pg_dump -Fc, its default gzip, streamed unencrypted to the same store) "
          "vs ours")
    print(f"{'database':>9} {'archive':>8} | {'reference':>9} {'stored':>8} | {'ours':>7} {'speed-up':>8} {'stored':>8} "
          f"{'size':>6} | {'zstd ' + str(ALT_LEVEL):>7} {'speed-up':>8} {'stored':>8} {'size':>6} | "
          f"{'S3: ref':>7} {'ours':>7} {'speed-up':>8}")
    for r in rows:
        print(f"{r['db_mb']:7.0f}MB {r['archive_mb']:6.0f}MB | {r['reference_s']:8.2f}s {r['reference_mb']:6.1f}MB | "
              f"{r['backup_s']:6.2f}s {_ratio(r['reference_s'], r['backup_s']):>8} {r['stored_mb']:6.1f}MB "
              f"{_ratio(r['stored_mb'], r['reference_mb']):>6} | {r['fast_s']:6.2f}s "
              f"{_ratio(r['reference_s'], r['fast_s']):>8} {r['fast_stored_mb']:6.1f}MB "
              f"{_ratio(r['fast_stored_mb'], r['reference_mb']):>6} | {r['s3_reference_s']:6.2f}s "
              f"{r['s3_backup_s']:6.2f}s {_ratio(r['s3_reference_s'], r['s3_backup_s']):>8}")
    print("  speed-up = reference time / our time (target > 1); size = our stored object / theirs (target <= 1.00x);"
          "\n  ours includes what the reference does not: encryption, manifest, row counts, reading the stored "
          "object back, catalog records")
    print()
    print("2. throughput vs raw `pg_dump -Fc -Z0 > /dev/null` (same role, same client), and where the CPU goes "
          "(CPU seconds)")
    print(f"{'database':>9} | {'raw':>6} {'ours':>6} {'vs raw':>6} {'zstd ' + str(ALT_LEVEL):>7} {'vs raw':>6} | "
          f"{'raw CPU':>7} {'ours CPU':>8} {'ratio':>5} {'zstd ' + str(ALT_LEVEL) + ' CPU':>10} {'ratio':>5} | "
          f"{'zstd ' + str(level):>7} {'zstd ' + str(ALT_LEVEL):>7} {'aes+sha':>7} {'readback':>8} | "
          f"{'cores at raw speed':>18} | {f'best on {cores} cores':>16}")
    for r in rows:
        raw_cpu = r["raw_dump_cpu_s"] + (r["raw_backend_cpu_s"] or 0)
        print(f"{r['db_mb']:7.0f}MB | {r['raw_dump_s']:5.2f}s {r['backup_s']:5.2f}s "
              f"{_ratio(r['raw_dump_s'], r['backup_s']):>6} {r['fast_s']:6.2f}s {_ratio(r['raw_dump_s'], r['fast_s']):>6} | "
              f"{raw_cpu:6.2f}s {r['backup_cpu_s']:7.2f}s {_ratio(raw_cpu, r['backup_cpu_s']):>5} "
              f"{r['fast_cpu_s']:9.2f}s {_ratio(raw_cpu, r['fast_cpu_s']):>5} | "
              f"{r['cost_zstd']:6.2f}s {r['cost_zstd_alt']:6.2f}s {r['cost_aes_sha']:6.2f}s {r['cost_readback_sha']:7.2f}s | "
              f"{r['backup_cpu_s'] / r['raw_dump_s']:5.2f} (zstd {ALT_LEVEL}: {r['fast_cpu_s'] / r['raw_dump_s']:4.2f}) | "
              f"{_bound(r['raw_dump_s'], r['backup_cpu_s'], cores):>5} (zstd {ALT_LEVEL}: "
              f"{_bound(r['raw_dump_s'], r['fast_cpu_s'], cores)})")
    print("  vs raw = raw time / our time (target >= 0.9x). raw CPU = pg_dump's and its server backend's; ours CPU = "
          "the job process's, pg_dump's and every\n  server backend it used; ratio = raw CPU / ours CPU: what the "
          "throughput ratio tends to when the cores are saturated (by others too).\n  zstd/aes+sha/readback = our "
          "added stages alone on the same archive, one core each. cores at raw speed = ours CPU / raw time: on an "
          "idle\n  machine with at least that many cores the pipeline can keep pace with raw pg_dump; best on N cores = "
          "raw time / max(raw time, ours CPU / N): the\n  highest vs-raw ratio this much work allows on this machine's "
          "cores, however well it is spread over them (the limit the target meets here)")
    print()
    print("3. restore drill RTO vs raw `pg_restore` of the decrypted archive from a local file (into a fresh "
          "database, no --jobs)")
    print(f"{'database':>9} | {'raw':>6} | {'drill RTO':>9} {'vs raw':>6} ({'download+verify':>15} {'pg_restore':>10} "
          f"{'checks':>6}) | {'S3 drill':>8} {'vs raw':>6} ({'download+verify':>15}) | {'restore job':>11} "
          f"{'vs raw':>6}")
    for r in rows:
        print(f"{r['db_mb']:7.0f}MB | {r['raw_restore_s']:5.2f}s | {r['drill_rto_s']:8.2f}s "
              f"{_ratio(r['drill_rto_s'], r['raw_restore_s']):>6} ({r['drill_download_s']:14.2f}s "
              f"{r['drill_restore_s']:9.2f}s {r['drill_check_s']:5.2f}s) | {r['s3_drill_rto_s']:7.2f}s "
              f"{_ratio(r['s3_drill_rto_s'], r['raw_restore_s']):>6} ({r['s3_drill_download_s']:14.2f}s) | "
              f"{r['restore_s']:10.2f}s "
              f"{_ratio(r['restore_s'], r['raw_restore_s']):>6}")
    print("  drill RTO = download, verify (SHA-256, every chunk), pg_restore from the decrypting stream, row counts "
          "and revision checked (target <= 1.2x raw);\n  restore job = the whole in-place RESTORE operation "
          "(also brings the schema to head, swaps, records)")
    print()
    print("4. peak RSS (VmHWM of the job process, which runs it as a work horse does; pg_dump/pg_restore not "
          "included)")
    print(f"{'database':>9} | {'backup file':>11} {'backup S3':>9} | {'drill file':>10} {'drill S3':>8} | "
          f"{'restore file':>12}")
    for r in rows:
        print(f"{r['db_mb']:7.0f}MB | {r['backup_rss_mb']:9.1f}MB {r['s3_backup_rss_mb']:7.1f}MB | "
              f"{r['drill_rss_mb']:8.1f}MB {r['s3_drill_rss_mb']:6.1f}MB | {r['restore_rss_mb']:10.1f}MB")
    print(f"  target: flat as the database grows; the job process after its imports, before any work: "
          f"{max(r['idle_rss_mb'] for r in rows):.1f} MB")
    sizes = sorted({size for _, size in store_grew})
    print("  the S3 store alone, what a transfer adds to the peak by stored object size (a stored object is about "
          "0.15x its database):")
    for mode, what in (("put", "upload from a stream"), ("get", "download to a file")):
        print(f"    {what:22} " + "  ".join(f"{size:4d} MB: +{store_grew[(mode, size)]:5.1f} MB" for size in sizes))
    print("    bounded by the parts in memory (8 MB parts, at most 2 waiting + 1 being read; 16 x 256 KB download "
          "blocks): flat once the object passes ~30 MB")
    print()
    print("all runs (s): " + "; ".join(
        f"{r['target_mb']}MB raw {['%.2f' % t for t in r['raw_dump_all']]} reference "
        f"{['%.2f' % t for t in r['reference_all']]} ours {['%.2f' % t for t in r['backup_all']]} zstd-{ALT_LEVEL} "
        f"{['%.2f' % t for t in r['fast_all']]} raw pg_restore {['%.2f' % t for t in r['raw_restore_all']]} "
        f"drill {['%.2f' % t for t in r['drill_all']]}" for r in rows))


if __name__ == "__main__":
    if sys.argv[1:2] == ["_run"]:
        run_operation_child(sys.argv[2])
    elif sys.argv[1:2] == ["_store"]:
        store_child(sys.argv[2], int(sys.argv[3]))
    else:
        main(sys.argv[1:])
