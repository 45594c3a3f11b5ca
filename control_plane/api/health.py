"""Liveness, readiness and Prometheus metrics (no authentication: they reveal no tenant data)."""
from __future__ import annotations

from flask import Blueprint, Response, jsonify
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from control_plane.api.common import services
from control_plane.services import fleet

blp = Blueprint("health", __name__)


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz():
    ctx = services()
    checks: dict[str, str] = {}
    for name, probe in (("catalog", lambda: fleet.ping_catalog(ctx)), ("redis", ctx.queue.ping),
                        ("backup_store", lambda: _store_ping(ctx))):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # a readiness probe reports every failure instead of raising
            checks[name] = f"unavailable: {type(exc).__name__}"
    ready = all(value == "ok" for value in checks.values())
    return jsonify(status="ready" if ready else "not ready", checks=checks), 200 if ready else 503


def _store_ping(ctx) -> None:
    store = getattr(ctx, "backup_store", None)
    if store is not None:
        store.ping()


class _CatalogCollector:
    """Tenants and operations by status, read from the catalog at scrape time."""

    def __init__(self, ctx) -> None:
        self._ctx = ctx

    def collect(self):
        tenants = GaugeMetricFamily("control_plane_tenants", "Tenants by status", labels=["status"])
        ops = GaugeMetricFamily("control_plane_operations", "Operations by kind and status", labels=["kind", "status"])
        for status, count in fleet.tenants_by_status(self._ctx).items():
            tenants.add_metric([status], count)
        for (kind, status), count in fleet.operations_by_kind_and_status(self._ctx).items():
            ops.add_metric([kind, status], count)
        yield tenants
        yield ops


@blp.get("/metrics")
def metrics():
    registry = CollectorRegistry()
    registry.register(_CatalogCollector(services()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
