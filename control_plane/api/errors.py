"""Renders every error as application/problem+json (RFC 9457), and documents it so in the OpenAPI document."""
from __future__ import annotations

import http
import logging
from typing import Any

from flask import Flask, Response, json, request
from flask_smorest import Api
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

from control_plane.errors import AuthenticationError, ControlPlaneError

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


class ProblemSchema(Schema):
    """An error (RFC 9457); for invalid input, `errors` maps each location (json, query, path, headers) to the
    fields it refuses and why."""

    type = fields.String(metadata={"description": "always about:blank"})
    status = fields.Integer(metadata={"description": "the HTTP status"})
    title = fields.String()
    detail = fields.String()
    errors = fields.Dict(metadata={"description": "location → field → messages"})
    operation_id = fields.String(metadata={"description": "423: the operation holding the tenant's work slot"})


# Headers some error statuses carry, as documented in the OpenAPI document.
_RETRY_AFTER = {"description": "seconds to wait before trying again", "schema": {"type": "integer"}}
ERROR_HEADERS = {
    401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
    423: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


def problem(status: int, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> Response:
    body = {"type": "about:blank", "status": status, "title": title, "detail": detail, **extra}
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    response.headers.update(headers or {})
    return response


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
    return problem(status, error.name, error.description or error.name, headers=data.get("headers"))


def handle_control_plane_error(error: ControlPlaneError) -> Response:
    if error.status >= 500:
        log.error("%s %s failed: %s", request.method, request.path, error.detail, exc_info=error)
    return problem(error.status, error.title, error.detail, headers=_headers(error), **error.extra)


def _headers(error: ControlPlaneError) -> dict[str, str]:
    """What the error's status carries: Retry-After for those that say when to retry (423, 503), and the
    scheme to authenticate with on a 401."""
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, AuthenticationError) else {}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return headers


def handle_unexpected(error: Exception) -> Response:
    # The request boundary: log once with the traceback, answer without internals.
    log.exception("%s %s failed", request.method, request.path)
    return problem(500, "Internal error", "an unexpected error occurred; it has been logged")


def register(app: Flask) -> None:
    app.register_error_handler(ControlPlaneError, handle_control_plane_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)


class ProblemApi(Api):
    """flask-smorest's Api whose documented error responses are problem+json (instead of its own error schema),
    with the headers their status carries."""

    ERROR_SCHEMA = ProblemSchema

    def init_app(self, app: Flask, *, spec_kwargs: dict | None = None) -> None:
        super().init_app(app, spec_kwargs=spec_kwargs)
        for status in http.HTTPStatus:
            if status >= 400:
                self.spec.components.response(status.name, _problem_response(status.phrase, ERROR_HEADERS.get(status)),
                                              lazy=True)
        self.spec.components.response(self.DEFAULT_ERROR_RESPONSE_NAME, _problem_response("An error"), lazy=True)


def _problem_response(description: str, headers: dict | None = None) -> dict:
    return {"description": description, "content": {PROBLEM_JSON: {"schema": ProblemSchema}},
            **({"headers": headers} if headers else {})}
