"""Renders every error as application/problem+json (RFC 9457)."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from werkzeug.exceptions import HTTPException

from control_plane.errors import ControlPlaneError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem(status: int, title: str, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "status": status, "title": title, "detail": detail, **extra}
    return Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)


def _validation_detail(errors: Any) -> str:
    """'name: Missing data for required field.; id: ...' from webargs' nested messages."""
    parts: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{path}.{key}" if path else str(key))
        elif isinstance(node, list) and node and all(isinstance(item, str) for item in node):
            parts.append(f"{path}: {' '.join(node)}")
        elif isinstance(node, list):
            for item in node:
                walk(item, path)
        else:
            parts.append(f"{path}: {node}")

    walk(errors, "")
    return "; ".join(parts) or "the request is invalid"


def handle_http_exception(error: HTTPException) -> Response:
    data = getattr(error, "data", None) or {}
    messages = data.get("messages")
    status = error.code or 500
    if messages:
        # webargs puts errors under the location ("json", "query", "headers"); keep that shape.
        return problem(status, "Unprocessable entity", _validation_detail(messages), errors=messages)
    response = problem(status, error.name, error.description or error.name)
    for name, value in (data.get("headers") or {}).items():
        response.headers[name] = value
    return response


def handle_control_plane_error(error: ControlPlaneError) -> Response:
    if error.status >= 500:
        log.error("%s %s failed: %s", request.method, request.path, error.detail, exc_info=error)
    return problem(error.status, error.title, error.detail, **error.extra)


def handle_unexpected(error: Exception) -> Response:
    # The request boundary: log once with the traceback, answer without internals.
    log.exception("%s %s failed", request.method, request.path)
    return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


def register(app: Flask) -> None:
    app.register_error_handler(ControlPlaneError, handle_control_plane_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
