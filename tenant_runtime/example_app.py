"""Clinic CRM example: a small Flask + SQLAlchemy tenant application on tenant_runtime.

Leads, pipelines and their stages, users, messages and appointments, through the ORM models of the
tenant schema (tenant_migrations.models) on `db_session()`: one Session per request on the request's
tenant connection. `create_app(orm=False)` serves the same API with psycopg on `get_connection()`,
the documented alternative for apps without the ORM. Run it against a running control plane (same
catalog, Redis and KEYRING):

    CATALOG_DATABASE_URL=... REDIS_URL=... KEYRING=... python -m tenant_runtime.example_app --port 8001
    curl -H 'X-Tenant-ID: acme-clinic' http://127.0.0.1:8001/leads

It authenticates no user: it shows tenant routing, not an access model. Don't expose it as is.
"""
from __future__ import annotations

import argparse
import logging
from datetime import datetime
from typing import Any, Protocol

import psycopg
from flask import Flask, Response, current_app, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.exceptions import NotFound

from tenant_runtime import flask as runtime_flask
from tenant_runtime.example_store import OrmStore, SqlStore
from tenant_runtime.flask import TenantRuntime, problem, tenant_exempt
from tenant_runtime.router import TenantRouter

LEAD_FIELDS = {"full_name": str, "email": str, "phone": str, "source": str, "notes": str, "owner_id": int}
MESSAGE_DIRECTIONS = ("inbound", "outbound")
MESSAGE_CHANNELS = ("whatsapp", "email", "sms", "instagram", "phone")
MAX_LIMIT = 200


class DataSource(Protocol):
    """Where a request's data comes from: the runtime (tenant_runtime.flask), or a benchmark's baseline."""

    def connection(self) -> psycopg.Connection: ...
    def session(self) -> Session: ...


class RuntimeSource:
    connection = staticmethod(runtime_flask.get_connection)
    session = staticmethod(runtime_flask.db_session)


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def create_app(router: TenantRouter | None = None, *, orm: bool = True, source: DataSource | None = None) -> Flask:
    """The app on a TenantRouter (from the environment when None), with the ORM or with psycopg (`orm=False`).

    `source` replaces the runtime with another source of per-request connections and sessions (the
    benchmark's baselines); that source then owns commits.
    """
    app = Flask("clinic_crm")
    if source is None:
        app.extensions["clinic.runtime"] = TenantRuntime(app, router)
        source = RuntimeSource()
    app.extensions["clinic.store"] = (lambda: OrmStore(source.session())) if orm else (
        lambda: SqlStore(source.connection()))

    @app.errorhandler(_Invalid)
    def invalid(error: _Invalid) -> Response:
        return problem(422, "Unprocessable entity", str(error), errors={"json": {error.field: [error.message]}})

    @app.errorhandler(404)
    def not_found(error: Exception) -> Response:
        return problem(404, "Not found", "no such resource")

    @app.errorhandler(psycopg.errors.IntegrityError)
    @app.errorhandler(IntegrityError)
    def conflict(error: Exception) -> Response:
        diag = getattr(getattr(error, "orig", error), "diag", None)
        return problem(409, "Conflict", getattr(diag, "message_primary", None)
                       or "the change conflicts with existing data")

    @app.get("/healthz")
    @tenant_exempt
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/metrics")
    @tenant_exempt
    def metrics() -> Response:
        registry = CollectorRegistry()
        runtime = app.extensions.get("clinic.runtime")
        if runtime is not None:
            registry.register(runtime.router.collector())
        return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)

    @app.get("/users")
    def list_users() -> Response:
        return jsonify(items=_store().users())

    @app.get("/pipelines")
    def list_pipelines() -> Response:
        return jsonify(items=_store().pipelines())

    @app.post("/pipelines")
    def create_pipeline() -> tuple[Response, int]:
        body = _json_body()
        name = _text(body, "name", required=True)
        stages = body.get("stages", [])
        if not isinstance(stages, list) or not stages or not all(isinstance(s, str) and s.strip() for s in stages):
            raise _Invalid("stages", "must be a non-empty list of stage names")
        stages = [stage.strip() for stage in stages]
        return jsonify(id=_store().create_pipeline(name, stages), name=name, stages=stages), 201

    @app.get("/leads")
    def list_leads() -> Response:
        limit = _int_arg("limit", 50, 1, MAX_LIMIT)
        offset = _int_arg("offset", 0, 0, None)
        rows = _store().leads(limit=limit, offset=offset, pipeline_id=_int_arg("pipeline_id", None, 1, None),
                              stage_id=_int_arg("stage_id", None, 1, None), q=request.args.get("q") or None)
        return jsonify(items=rows, limit=limit, offset=offset)

    @app.post("/leads")
    def create_lead() -> tuple[Response, int, dict[str, str]]:
        body = _json_body()
        values = _lead_fields(body, creating=True)
        store = _store()
        if body.get("stage_id") is None:
            # New leads enter the first stage of the first pipeline.
            values["pipeline_id"], values["stage_id"] = store.first_stage() or (None, None)
        else:
            values["pipeline_id"], values["stage_id"] = _pipeline_of(body.get("stage_id")), body["stage_id"]
        lead = store.create_lead(values)
        return jsonify(lead), 201, {"Location": f"/leads/{lead['id']}"}

    @app.get("/leads/<int:lead_id>")
    def get_lead(lead_id: int) -> Response:
        return jsonify(_lead(lead_id))

    @app.patch("/leads/<int:lead_id>")
    def update_lead(lead_id: int) -> Response:
        values = _lead_fields(_json_body(), creating=False)
        lead = _store().update_lead(lead_id, values) if values else _lead(lead_id)
        if lead is None:
            raise NotFound()
        return jsonify(lead)

    @app.post("/leads/<int:lead_id>/move")
    def move_lead(lead_id: int) -> Response:
        stage_id = _json_body().get("stage_id")
        lead = _store().update_lead(lead_id, {"pipeline_id": _pipeline_of(stage_id), "stage_id": stage_id})
        if lead is None:
            raise NotFound()
        return jsonify(lead)

    @app.get("/leads/<int:lead_id>/messages")
    def list_messages(lead_id: int) -> Response:
        _lead(lead_id)
        return jsonify(items=_store().messages(lead_id))

    @app.post("/leads/<int:lead_id>/messages")
    def add_message(lead_id: int) -> tuple[Response, int]:
        body = _json_body()
        values = {"direction": _choice(body, "direction", MESSAGE_DIRECTIONS),
                  "channel": _choice(body, "channel", MESSAGE_CHANNELS),
                  "body": _text(body, "body"), "media_url": _text(body, "media_url")}
        if values["body"] is None and values["media_url"] is None:
            raise _Invalid("body", "a message needs a body or a media_url")
        _lead(lead_id)
        return jsonify(_store().add_message(lead_id, values)), 201

    @app.get("/leads/<int:lead_id>/appointments")
    def list_appointments(lead_id: int) -> Response:
        _lead(lead_id)
        return jsonify(items=_store().appointments(lead_id))

    @app.post("/leads/<int:lead_id>/appointments")
    def add_appointment(lead_id: int) -> tuple[Response, int]:
        body = _json_body()
        values = {"starts_at": _moment(body, "starts_at"), "ends_at": _moment(body, "ends_at"),
                  "procedure_id": _optional_int(body, "procedure_id"), "doctor_id": _optional_int(body, "doctor_id"),
                  "notes": _text(body, "notes")}
        if values["ends_at"] <= values["starts_at"]:
            raise _Invalid("ends_at", "must be after starts_at")
        _lead(lead_id)
        return jsonify(_store().add_appointment(lead_id, values)), 201

    return app


# -- helpers (request context) ----------------------------------------------------------------------

def _store() -> OrmStore | SqlStore:
    store = g.get("_clinic_store")
    if store is None:
        store = g._clinic_store = current_app.extensions["clinic.store"]()
    return store


def _lead(lead_id: int) -> dict[str, Any]:
    lead = _store().lead(lead_id)
    if lead is None:
        raise NotFound()
    return lead


def _pipeline_of(stage_id: Any) -> int:
    if not isinstance(stage_id, int) or isinstance(stage_id, bool):
        raise _Invalid("stage_id", "must be an integer")
    pipeline_id = _store().pipeline_of_stage(stage_id)
    if pipeline_id is None:
        raise _Invalid("stage_id", f"stage {stage_id} does not exist")
    return pipeline_id


def _json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _Invalid("body", "must be a JSON object")
    return body


def _text(body: dict[str, Any], field: str, *, required: bool = False) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise _Invalid(field, "is required")
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > 500:
        raise _Invalid(field, "must be a non-empty string of at most 500 characters")
    return value.strip()


def _choice(body: dict[str, Any], field: str, choices: tuple[str, ...]) -> str:
    if body.get(field) not in choices:
        raise _Invalid(field, f"must be one of {', '.join(choices)}")
    return body[field]


def _optional_int(body: dict[str, Any], field: str) -> int | None:
    value = body.get(field)
    if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
        raise _Invalid(field, "must be an integer")
    return value


def _moment(body: dict[str, Any], field: str) -> datetime:
    try:
        moment = datetime.fromisoformat(body[field])
    except (KeyError, TypeError, ValueError):
        raise _Invalid(field, "must be an ISO 8601 date and time with its UTC offset") from None
    if moment.tzinfo is None:
        raise _Invalid(field, "must be an ISO 8601 date and time with its UTC offset")
    return moment


def _lead_fields(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, kind in LEAD_FIELDS.items():
        if field in body:
            values[field] = _optional_int(body, field) if kind is int else _text(body, field)
    if creating and not values.get("full_name"):
        raise _Invalid("full_name", "is required")
    return values


def _int_arg(name: str, default: int | None, low: int, high: int | None) -> int | None:
    raw = request.args.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _Invalid(name, "must be an integer") from None
    if value < low or (high is not None and value > high):
        raise _Invalid(name, f"must be between {low} and {high}" if high else f"must be at least {low}")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tenant_runtime.example_app", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--psycopg", action="store_true", help="serve through psycopg instead of the ORM")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = TenantRouter.from_env()
    app = create_app(router, orm=not args.psycopg)
    try:
        # Werkzeug's threaded server is fine for trying it out; in production run
        # gunicorn 'tenant_runtime.example_app:create_app()' (each worker rebuilds the router after fork).
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        router.close()


if __name__ == "__main__":
    main()
