"""Runtime metrics: counters kept by the router, a plain-dict snapshot, and a Prometheus collector.

Register the collector with any prometheus_client registry:
`REGISTRY.register(RouterCollector(router))`, or render it on a private registry per scrape.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from tenant_runtime.router import TenantRouter

ACQUIRE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class AcquireStats:
    """Acquisitions, their latency histogram, and failures by kind. Not locked itself: the pool
    registry updates and reads it under its own lock."""

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * len(ACQUIRE_BUCKETS)
        self.failures: dict[str, int] = {}

    def observe_locked(self, seconds: float) -> None:
        self.count += 1
        self.sum += seconds
        index = bisect_left(ACQUIRE_BUCKETS, seconds)
        if index < len(self.buckets):
            self.buckets[index] += 1

    def snapshot(self) -> dict[str, Any]:
        cumulative, running = [], 0
        for bound, count in zip(ACQUIRE_BUCKETS, self.buckets):
            running += count
            cumulative.append((bound, running))
        return {"acquires_total": self.count, "acquire_seconds_total": self.sum,
                "acquire_seconds_buckets": cumulative, "acquire_failures_total": dict(self.failures)}


class RouterCollector(Collector):
    """Exposes one router's snapshot as `tenant_runtime_*` metrics, read at scrape time."""

    def __init__(self, router: "TenantRouter", *, labels: dict[str, str] | None = None) -> None:
        self._router = router
        self._labels = dict(labels or {})

    def collect(self) -> Iterator[Any]:
        m = self._router.metrics()
        names, values = list(self._labels), list(self._labels.values())

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"tenant_runtime_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"tenant_runtime_{name}", doc, labels=names)
            family.add_metric(values, value)
            return family

        yield gauge("pools_open", "Tenant pools currently open in this process", m["pools_open"])
        yield gauge("connections_open", "Server connections open to tenant databases (in use + idle)",
                    m["connections_open"])
        yield gauge("connections_in_use", "Connections lent to requests", m["connections_in_use"])
        yield gauge("connections_idle", "Open connections waiting in a pool", m["connections_idle"])
        yield gauge("connections_open_peak", "Highest number of open connections seen", m["connections_open_peak"])
        yield gauge("connection_budget", "Hard cap on open connections for this process", m["budget_limit"])
        yield gauge("budget_waiting", "Connection openings queued for a budget slot", m["budget_waiting"])
        yield gauge("events_connected", "1 while tenant change events arrive from Redis", m["events_connected"])
        yield gauge("cache_entries", "Tenants and domains cached", m["cache_entries"])
        yield counter("connections_opened", "Connections opened", m["connections_opened_total"])
        yield counter("connections_closed", "Connections closed", m["connections_closed_total"])
        yield counter("connections_reclaimed", "Idle connections closed to give their slot to another tenant",
                      m["connections_reclaimed_total"])
        yield counter("connect_errors", "Failed connection attempts to tenant databases", m["connect_errors_total"])
        yield counter("budget_waits", "Connection openings that had to queue for a slot", m["budget_waits_total"])
        yield counter("budget_wait_seconds", "Time spent queued for a slot", m["budget_wait_seconds_total"])
        yield counter("budget_rejections", "Requests refused because no connection came within the acquire timeout",
                      m["budget_rejections_total"])
        yield counter("events_received", "Tenant change events received", m["events_received_total"])
        yield counter("events_connect_failures", "Lost or failed subscriptions to tenant change events",
                      m["events_connect_failures_total"])
        yield counter("catalog_cache_hits", "Tenant/domain lookups answered from the cache", m["cache_hits_total"])
        yield counter("catalog_cache_misses", "Tenant/domain lookups that read the catalog", m["cache_misses_total"])

        evictions = CounterMetricFamily("tenant_runtime_pool_evictions", "Pools closed, by reason",
                                        labels=[*names, "reason"])
        for reason, count in sorted(m["pool_evictions_total"].items()):
            evictions.add_metric([*values, reason], count)
        yield evictions

        failures = CounterMetricFamily("tenant_runtime_acquire_failures", "Failed acquisitions, by error",
                                       labels=[*names, "error"])
        for kind, count in sorted(m["acquire_failures_total"].items()):
            failures.add_metric([*values, kind], count)
        yield failures

        histogram = HistogramMetricFamily("tenant_runtime_acquire_seconds",
                                          "Time to get a connection (wait and connect included)", labels=names)
        buckets = [(str(bound), count) for bound, count in m["acquire_seconds_buckets"]]
        buckets.append(("+Inf", m["acquires_total"]))
        histogram.add_metric(values, buckets, m["acquire_seconds_total"])
        yield histogram
