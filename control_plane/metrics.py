"""Every Prometheus metric the control plane exports: its name, help, labels and where its value comes from.

Two kinds:
- process metrics (HTTP requests and their latency), counted by the API process that served them;
- fleet metrics, read at scrape time from the catalog, Redis and the database servers by the sources
  registered with `@fleet_source`. Every API replica reports the same fleet values: aggregate them
  with `max without (instance)` (as deploy/prometheus/alerts.yml does).

Label cardinality is bounded (see "Metrics" in the README):
  method ≤ 7 · route: the Flask rule (`/v1/tenants/<tenant_id>`, ~40; `<unmatched>` for 404s) · status:
  HTTP codes (~15) · kind, status (operation kinds and statuses, ≤ 10 each) · queue, state (≤ 5) ·
  server (database servers: tens) · run_id (unfinished migration runs only: a handful) · tenant_id:
  one series per tenant in each `control_plane_tenant_*` gauge (4 gauges: ~40k series at 10k tenants).
Never label with operation ids, request ids, users or free text.

To add fleet metrics (drills, moves, quotas...): write a function taking the ServiceContext and
yielding prometheus_client metric families and decorate it with `@fleet_source("name")` in this module
(imports of its services inside the function keep this module light). A source that fails is reported by
`control_plane_metrics_source_up` instead of breaking the scrape.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric

from control_plane.services import fleet, reconcile
from control_plane.services.quotas import storage_quotas
from control_plane.services.context import ServiceContext

log = logging.getLogger(__name__)

PROCESS_REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "control_plane_http_requests", "HTTP requests served, by method, route template and status code",
    ["method", "route", "status"], registry=PROCESS_REGISTRY)
HTTP_DURATION = Histogram(
    "control_plane_http_request_duration_seconds", "HTTP request latency, by method and route template",
    ["method", "route"], registry=PROCESS_REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

# Operation durations: from seconds (a suspend) to hours (a backup of a big tenant).
OPERATION_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600)
# Database servers are asked for their connections and database sizes at most this often (per process):
# `pg_database_size` of thousands of databases is too costly for every scrape.
SERVER_USAGE_TTL = 60.0

FleetSource = Callable[[ServiceContext], Iterable[Metric]]
FLEET_SOURCES: dict[str, FleetSource] = {}


def fleet_source(name: str) -> Callable[[FleetSource], FleetSource]:
    """Register a function yielding fleet metric families; `name` labels its up/down status."""
    def register(source: FleetSource) -> FleetSource:
        FLEET_SOURCES[name] = source
        return source
    return register


def observe_request(method: str, route: str, status: int, seconds: float) -> None:
    HTTP_REQUESTS.labels(method, route, str(status)).inc()
    HTTP_DURATION.labels(method, route).observe(seconds)


class FleetCollector:
    """Runs every fleet source at scrape time; a failing source is logged and reported, not raised."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def collect(self) -> Iterable[Metric]:
        up = GaugeMetricFamily("control_plane_metrics_source_up",
                               "1 when the source of a group of fleet metrics answered this scrape", labels=["source"])
        for name, source in FLEET_SOURCES.items():
            try:
                families = list(source(self._ctx))
            except Exception:  # a scrape boundary: one unreachable dependency must not hide the rest
                log.warning("metrics source %s failed", name, exc_info=True)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


def render(ctx: ServiceContext) -> bytes:
    """The text exposition of /metrics: this process's metrics, then the fleet's."""
    fleet_registry = CollectorRegistry(auto_describe=False)
    fleet_registry.register(FleetCollector(ctx))
    return generate_latest(PROCESS_REGISTRY) + generate_latest(fleet_registry)


# --- fleet sources -----------------------------------------------------------------------------------

@fleet_source("reconcile")
def _reconcile(ctx: ServiceContext) -> Iterable[Metric]:
    findings = GaugeMetricFamily("control_plane_reconcile_findings",
                                 "Findings of the newest daily reconcile report (orphans, missing, leftovers, drift...)",
                                 labels=["kind"])
    for kind, count in (reconcile.last_counts(ctx) or {}).items():
        findings.add_metric([kind], count)
    yield findings


@fleet_source("catalog")
def _catalog(ctx: ServiceContext) -> Iterable[Metric]:
    tenants = GaugeMetricFamily("control_plane_tenants", "Tenants by status", labels=["status"])
    for status, count in fleet.tenants_by_status(ctx).items():
        tenants.add_metric([status], count)
    yield tenants

    operations = GaugeMetricFamily("control_plane_operations", "Operations in the catalog by kind and status",
                                   labels=["kind", "status"])
    for (kind, status), count in fleet.operations_by_kind_and_status(ctx).items():
        operations.add_metric([kind, status], count)
    yield operations

    recent = fleet.recent_operations(ctx)
    started = GaugeMetricFamily("control_plane_operations_started_last_hour",
                                "Operations started in the last hour, by kind", labels=["kind"])
    for kind, count in recent.started.items():
        started.add_metric([kind], count)
    yield started
    finished = GaugeMetricFamily("control_plane_operations_finished_last_hour",
                                 "Operations finished in the last hour, by kind and final status (succeeded, "
                                 "failed, cancelled)", labels=["kind", "status"])
    for (kind, status), count in recent.finished.items():
        finished.add_metric([kind, status], count)
    yield finished
    durations = GaugeHistogramMetricFamily("control_plane_operation_duration_seconds",
                                           "Run time of the operations that finished in the last hour, by kind",
                                           labels=["kind"])
    for kind, values in recent.durations.items():
        buckets = [(str(float(bound)), sum(1 for v in values if v <= bound)) for bound in OPERATION_BUCKETS]
        durations.add_metric([kind], buckets + [("+Inf", len(values))], gsum_value=sum(values))
    yield durations

    oldest = GaugeMetricFamily("control_plane_operation_oldest_age_seconds",
                               "Age of the oldest unfinished operation: since creation when queued, since its "
                               "start when running", labels=["kind", "status"])
    for (kind, status), age in fleet.oldest_unfinished_operations(ctx).items():
        oldest.add_metric([kind, status], age)
    yield oldest

    runs = GaugeMetricFamily("control_plane_migration_run_items",
                             "Items of unfinished bulk migration runs by status (the runs' progress)",
                             labels=["run_id", "status"])
    for run in fleet.unfinished_migration_runs(ctx):
        for status in ("pending", "queued", "running", "succeeded", "failed", "skipped"):
            runs.add_metric([run.id, status], getattr(run, status))
    yield runs


@fleet_source("backups")
def _backups(ctx: ServiceContext) -> Iterable[Metric]:
    by_status = GaugeMetricFamily("control_plane_backups", "Backups in the catalog by status", labels=["status"])
    for status, count in fleet.backups_by_status(ctx).items():
        by_status.add_metric([status], count)
    yield by_status

    age = GaugeMetricFamily("control_plane_tenant_last_backup_age_seconds",
                            "Seconds since the tenant's newest completed backup (since its creation if it has none)",
                            labels=["tenant_id"])
    rpo = GaugeMetricFamily("control_plane_tenant_backup_rpo_seconds",
                            "The tenant's recovery point objective: how old its newest backup may be",
                            labels=["tenant_id"])
    size = GaugeMetricFamily("control_plane_tenant_last_backup_size_bytes",
                             "Stored size of the tenant's newest completed backup", labels=["tenant_id"])
    for state in fleet.tenant_backup_states(ctx):
        age.add_metric([state.tenant_id], state.age_seconds)
        rpo.add_metric([state.tenant_id], state.rpo_seconds)
        if state.last_size_bytes is not None:
            size.add_metric([state.tenant_id], state.last_size_bytes)
    yield age
    yield rpo
    yield size


@fleet_source("drills")
def _drills(ctx: ServiceContext) -> Iterable[Metric]:
    from control_plane.catalog.models import utcnow
    from control_plane.services.drills import latest_drills

    at = GaugeMetricFamily("control_plane_tenant_last_drill_timestamp_seconds",
                           "When the tenant's newest finished restore drill started (Unix time)", labels=["tenant_id"])
    passed = GaugeMetricFamily("control_plane_tenant_last_drill_success",
                               "1 if the tenant's newest finished restore drill passed, 0 if it failed",
                               labels=["tenant_id"])
    rto = GaugeMetricFamily("control_plane_tenant_last_drill_rto_seconds",
                            "Recovery time the tenant's newest passing drill achieved (download to checked database)",
                            labels=["tenant_id"])
    rpo = GaugeMetricFamily("control_plane_tenant_last_drill_rpo_seconds",
                            "Age of the backup the tenant's newest drill restored", labels=["tenant_id"])
    age = GaugeMetricFamily("control_plane_tenant_successful_drill_age_seconds",
                            "Seconds since the tenant's newest passing drill (since its creation if none passed)",
                            labels=["tenant_id"])
    now = utcnow()
    for tenant_id, (last, passed_at, created_at) in latest_drills(ctx).items():
        age.add_metric([tenant_id], max(0.0, (now - (passed_at or created_at)).total_seconds()))
        if last is None:
            continue
        at.add_metric([tenant_id], last.started_at.timestamp())
        passed.add_metric([tenant_id], 1 if last.result.value == "passed" else 0)
        if last.rto_seconds is not None and last.result.value == "passed":
            rto.add_metric([tenant_id], last.rto_seconds)
        if last.rpo_seconds is not None:
            rpo.add_metric([tenant_id], last.rpo_seconds)
    yield from (at, passed, rto, rpo, age)


@fleet_source("queue")
def _queue(ctx: ServiceContext) -> Iterable[Metric]:
    monitor = ctx.queue_monitor
    jobs = GaugeMetricFamily("control_plane_queue_jobs", "RQ jobs by queue and state", labels=["queue", "state"])
    oldest = GaugeMetricFamily("control_plane_queue_oldest_job_age_seconds",
                               "Age of the oldest job waiting in the queue (0 when empty)", labels=["queue"])
    for queue in monitor.queues():
        for state, count in queue["jobs"].items():
            jobs.add_metric([queue["name"], state], count)
        oldest.add_metric([queue["name"]], queue["oldest_queued_age_seconds"])
    yield jobs
    yield oldest
    yield GaugeMetricFamily("control_plane_workers", "RQ workers alive (heartbeat not expired) on our queues",
                            value=len(monitor.workers()))
    yield GaugeMetricFamily("control_plane_schedulers",
                            "Cron schedulers alive (`tenantctl scheduler`: backups, pruning, sweeps)",
                            value=len(monitor.schedulers()))


_usage_lock = threading.Lock()
_usage_cache: dict[str, tuple[float, dict | None]] = {}  # server name → (when read, usage or None if unreachable)


def _server_usage(ctx: ServiceContext, server) -> dict | None:
    with _usage_lock:  # protects the cache dict only; the server is asked outside the lock
        cached = _usage_cache.get(server.name)
    if cached and time.monotonic() - cached[0] < SERVER_USAGE_TTL:
        return cached[1]
    try:
        usage = ctx.admin_for(server).usage()
    except Exception as exc:  # unreachable is a value of this metric, not an error of the scrape
        log.warning("database server %s unreachable for metrics: %s", server.name, type(exc).__name__)
        usage = None
    with _usage_lock:
        _usage_cache[server.name] = (time.monotonic(), usage)
    return usage


@fleet_source("servers")
def _servers(ctx: ServiceContext) -> Iterable[Metric]:
    up = GaugeMetricFamily("control_plane_server_up", "1 when the database server answered", labels=["server"])
    tenants = GaugeMetricFamily("control_plane_server_tenants", "Tenants placed on the server", labels=["server"])
    connections = GaugeMetricFamily("control_plane_server_connections", "Client connections in use",
                                    labels=["server"])
    limit = GaugeMetricFamily("control_plane_server_max_connections", "The server's max_connections",
                              labels=["server"])
    sizes = GaugeMetricFamily("control_plane_tenant_database_size_bytes", "Size of the tenant's database",
                              labels=["tenant_id"])
    quotas = GaugeMetricFamily("control_plane_tenant_storage_quota_bytes",
                               "The storage quota of the tenant's plan (tenants whose plan has one)", labels=["tenant_id"])
    for tenant_id, quota in storage_quotas(ctx):
        quotas.add_metric([tenant_id], quota)
    for server, count, databases in fleet.servers_with_tenant_counts(ctx):
        tenants.add_metric([server.name], count)
        usage = _server_usage(ctx, server)
        up.add_metric([server.name], 0 if usage is None else 1)
        if usage is None:
            continue
        connections.add_metric([server.name], usage["connections"])
        limit.add_metric([server.name], usage["max_connections"])
        for database, size in usage["database_sizes"].items():
            if database in databases:
                sizes.add_metric([databases[database]], size)
    yield from (up, tenants, connections, limit, sizes, quotas)
