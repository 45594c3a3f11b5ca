"""Liveness, readiness and Prometheus metrics (outside /v1: no API token; /metrics may need METRICS_TOKEN)."""
from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST

from control_plane.api.common import services
from control_plane.api.errors import problem
from control_plane.errors import DependencyUnavailableError
from control_plane.metrics import render
from control_plane.services import fleet

blp = Blueprint("health", __name__)

RETRY_AFTER = DependencyUnavailableError.retry_after


@blp.get("/healthz")
def healthz():
    return jsonify(status="ok")


@blp.get("/readyz")
def readyz():
    """200 when the catalog, Redis and the backup store answer; else 503 (problem+json) naming those that do not."""
    ctx = services()
    checks: dict[str, str] = {}
    for name, probe in (("catalog", lambda: fleet.ping_catalog(ctx)), ("redis", ctx.queue.ping),
                        ("backup_store", lambda: _store_ping(ctx))):
        try:
            probe()
            checks[name] = "ok"
        except Exception as exc:  # a readiness probe reports every failure instead of raising
            checks[name] = f"unavailable: {type(exc).__name__}"
    failing = [name for name, value in checks.items() if value != "ok"]
    if not failing:
        return jsonify(status="ready", checks=checks)
    return problem(503, "Not ready", "unavailable: " + ", ".join(failing), headers={"Retry-After": str(RETRY_AFTER)},
                   unavailable=failing, checks=checks)


def _store_ping(ctx) -> None:
    store = getattr(ctx, "backup_store", None)
    if store is not None:
        store.ping()


@blp.get("/metrics")
def metrics():
    """Prometheus text exposition; with METRICS_TOKEN set, only for `Authorization: Bearer <METRICS_TOKEN>`."""
    ctx = services()
    expected = ctx.settings.metrics_token
    if expected:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(offered.strip().encode(), expected.encode()):
            return problem(401, "Unauthorized", "/metrics needs the METRICS_TOKEN bearer token",
                           headers={"WWW-Authenticate": "Bearer"})
    return Response(render(ctx), mimetype=CONTENT_TYPE_LATEST)
