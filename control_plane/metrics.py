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
from typing import Any, Callable, Iterable

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


def gauge(name: str, documentation: str, labels: list[str], samples: Iterable[tuple[Any, float]]) -> GaugeMetricFamily:
    """A gauge family with one sample per (label value, or tuple of label values; value)."""
    family = GaugeMetricFamily(name, documentation, labels=labels)
    for key, value in samples:
        family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
    return family


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
    yield gauge("control_plane_reconcile_findings",
                "Findings of the newest daily reconcile report (orphans, missing, leftovers, drift...)", ["kind"],
                (reconcile.last_counts(ctx) or {}).items())


@fleet_source("catalog")
def _catalog(ctx: ServiceContext) -> Iterable[Metric]:
    yield gauge("control_plane_tenants", "Tenants by status", ["status"], fleet.tenants_by_status(ctx).items())
    yield gauge("control_plane_operations", "Operations in the catalog by kind and status", ["kind", "status"],
                fleet.operations_by_kind_and_status(ctx).items())

    recent = fleet.recent_operations(ctx)
    yield gauge("control_plane_operations_started_last_hour", "Operations started in the last hour, by kind",
                ["kind"], recent.started.items())
    yield gauge("control_plane_operations_finished_last_hour",
                "Operations finished in the last hour, by kind and final status (succeeded, failed, cancelled)",
                ["kind", "status"], recent.finished.items())
    durations = GaugeHistogramMetricFamily("control_plane_operation_duration_seconds",
                                           "Run time of the operations that finished in the last hour, by kind",
                                           labels=["kind"])
    for kind, values in recent.durations.items():
        buckets = [(str(float(bound)), sum(1 for v in values if v <= bound)) for bound in OPERATION_BUCKETS]
        durations.add_metric([kind], buckets + [("+Inf", len(values))], gsum_value=sum(values))
    yield durations

    yield gauge("control_plane_operation_oldest_age_seconds",
                "Age of the oldest unfinished operation: since creation when queued, since its start when running",
                ["kind", "status"], fleet.oldest_unfinished_operations(ctx).items())
    yield gauge("control_plane_migration_run_items",
                "Items of unfinished bulk migration runs by status (the runs' progress)", ["run_id", "status"],
                (((run.id, status), getattr(run, status)) for run in fleet.unfinished_migration_runs(ctx)
                 for status in ("pending", "queued", "running", "succeeded", "failed", "skipped")))


@fleet_source("backups")
def _backups(ctx: ServiceContext) -> Iterable[Metric]:
    yield gauge("control_plane_backups", "Backups in the catalog by status", ["status"],
                fleet.backups_by_status(ctx).items())
    states = fleet.tenant_backup_states(ctx)
    yield gauge("control_plane_tenant_last_backup_age_seconds",
                "Seconds since the tenant's newest completed backup (since its creation if it has none)",
                ["tenant_id"], ((state.tenant_id, state.age_seconds) for state in states))
    yield gauge("control_plane_tenant_backup_rpo_seconds",
                "The tenant's recovery point objective: how old its newest backup may be", ["tenant_id"],
                ((state.tenant_id, state.rpo_seconds) for state in states))
    yield gauge("control_plane_tenant_last_backup_size_bytes", "Stored size of the tenant's newest completed backup",
                ["tenant_id"], ((state.tenant_id, state.last_size_bytes) for state in states
                                if state.last_size_bytes is not None))


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
    queues = monitor.queues()
    yield gauge("control_plane_queue_jobs", "RQ jobs by queue and state", ["queue", "state"],
                (((queue["name"], state), count) for queue in queues for state, count in queue["jobs"].items()))
    yield gauge("control_plane_queue_oldest_job_age_seconds", "Age of the oldest job waiting in the queue (0 when empty)",
                ["queue"], ((queue["name"], queue["oldest_queued_age_seconds"]) for queue in queues))
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
    quotas = gauge("control_plane_tenant_storage_quota_bytes",
                   "The storage quota of the tenant's plan (tenants whose plan has one)", ["tenant_id"],
                   storage_quotas(ctx))
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
