"""Per request: the request id (from X-Request-ID or generated, echoed back), the ids every log line of
the request carries, and the HTTP metrics (by route template, never by raw path)."""
from __future__ import annotations

import re
import time
import uuid

from flask import Flask, Response, g, request

from control_plane import logs, metrics

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept when it is short and plain (it ends up in logs and headers); else we make one.
_ACCEPTABLE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id() -> str:
    offered = request.headers.get(REQUEST_ID_HEADER, "")
    return offered if _ACCEPTABLE_ID.match(offered) else uuid.uuid4().hex


def register(app: Flask) -> None:
    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        g.request_id = request_id()
        logs.clear()  # threads are reused across requests: nothing from the previous one
        logs.bind(request_id=g.request_id, tenant_id=(request.view_args or {}).get("tenant_id"))

    @app.after_request
    def _finish(response: Response) -> Response:
        rid = getattr(g, "request_id", None) or request_id()
        response.headers[REQUEST_ID_HEADER] = rid
        route = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        started = getattr(g, "started", None)
        metrics.observe_request(request.method, route, response.status_code,
                                time.perf_counter() - started if started else 0.0)
        return response

    @app.teardown_request
    def _forget(_exc: BaseException | None) -> None:
        logs.clear()
