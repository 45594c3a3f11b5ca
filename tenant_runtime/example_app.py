"""Clinic CRM example: a small tenant application on tenant_runtime (leads, pipelines, users).

Run it against a running control plane (same catalog, Redis and KEYRING):

    CATALOG_DATABASE_URL=... REDIS_URL=... KEYRING=... python -m tenant_runtime.example_app --port 8001
    curl -H 'X-Tenant-ID: acme-clinic' http://127.0.0.1:8001/leads

It authenticates no user: it shows tenant routing, not an access model. Don't expose it as is.
"""
from __future__ import annotations

import argparse
import logging
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Callable

import psycopg
from flask import Flask, Response, current_app, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from psycopg.rows import dict_row
from werkzeug.exceptions import NotFound

from tenant_runtime.flask import TenantRuntime, get_connection, problem, tenant_exempt
from tenant_runtime.router import TenantRouter

LEAD_COLUMNS = ("id, full_name, email, phone, source, pipeline_id, stage_id, owner_id, notes, score, "
                "created_at, updated_at")
LEAD_FIELDS = {"full_name": str, "email": str, "phone": str, "source": str, "notes": str, "owner_id": int}
MAX_LIMIT = 200


class _Invalid(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def create_app(router: TenantRouter | None = None, *,
               connection: Callable[[], psycopg.Connection] | None = None) -> Flask:
    """The app on a TenantRouter (from the environment when None).

    `connection` replaces the runtime with another source of per-request connections (the
    benchmark's single-pool baseline); that source then owns commits.
    """
    app = Flask("clinic_crm")
    if connection is None:
        app.extensions["clinic.runtime"] = TenantRuntime(app, router)
        connection = get_connection
    app.extensions["clinic.connection"] = connection

    @app.errorhandler(_Invalid)
    def invalid(error: _Invalid) -> Response:
        return problem(422, "Unprocessable entity", str(error), errors={"json": {error.field: [error.message]}})

    @app.errorhandler(404)
    def not_found(error: Exception) -> Response:
        return problem(404, "Not found", "no such resource")

    @app.errorhandler(psycopg.errors.IntegrityError)
    def conflict(error: psycopg.errors.IntegrityError) -> Response:
        return problem(409, "Conflict", error.diag.message_primary or "the change conflicts with existing data")

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
        rows = _query("SELECT id, email, name, role, status, created_at FROM users ORDER BY id")
        return jsonify(items=rows)

    @app.get("/pipelines")
    def list_pipelines() -> Response:
        rows = _query("SELECT p.id, p.name, p.position, s.id AS stage_id, s.name AS stage_name, "
                      "s.position AS stage_position FROM pipelines p LEFT JOIN pipeline_stages s "
                      "ON s.pipeline_id = p.id ORDER BY p.position, p.id, s.position")
        pipelines: dict[int, dict[str, Any]] = {}
        for row in rows:
            pipeline = pipelines.setdefault(row["id"], {"id": row["id"], "name": row["name"],
                                                        "position": row["position"], "stages": []})
            if row["stage_id"] is not None:
                pipeline["stages"].append({"id": row["stage_id"], "name": row["stage_name"],
                                           "position": row["stage_position"]})
        return jsonify(items=list(pipelines.values()))

    @app.post("/pipelines")
    def create_pipeline() -> tuple[Response, int]:
        body = _json_body()
        name = _text(body, "name", required=True)
        stages = body.get("stages", [])
        if not isinstance(stages, list) or not stages or not all(isinstance(s, str) and s.strip() for s in stages):
            raise _Invalid("stages", "must be a non-empty list of stage names")
        conn = _db()
        pipeline = conn.execute(
            "INSERT INTO pipelines (name, position) VALUES (%s, COALESCE((SELECT max(position) + 1 FROM pipelines), 0)) "
            "RETURNING id", (name,)).fetchone()[0]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO pipeline_stages (pipeline_id, name, position) VALUES (%s, %s, %s)",
                            [(pipeline, stage.strip(), position) for position, stage in enumerate(stages)])
        return jsonify(id=pipeline, name=name, stages=[s.strip() for s in stages]), 201

    @app.get("/leads")
    def list_leads() -> Response:
        limit = _int_arg("limit", 50, 1, MAX_LIMIT)
        offset = _int_arg("offset", 0, 0, None)
        where, params = [], []
        for column in ("pipeline_id", "stage_id"):
            if request.args.get(column):
                where.append(f"{column} = %s")
                params.append(_int_arg(column, None, 1, None))
        if request.args.get("q"):
            where.append("(full_name ILIKE %s OR email ILIKE %s)")
            pattern = "%" + request.args["q"].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            params += [pattern, pattern]
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = _query(f"SELECT {LEAD_COLUMNS} FROM leads {clause} ORDER BY id DESC LIMIT %s OFFSET %s",
                      (*params, limit, offset))
        return jsonify(items=rows, limit=limit, offset=offset)

    @app.post("/leads")
    def create_lead() -> tuple[Response, int, dict[str, str]]:
        body = _json_body()
        values = _lead_fields(body, creating=True)
        stage_id = body.get("stage_id")
        if stage_id is None:
            # New leads enter the first stage of the first pipeline.
            first = _query("SELECT s.pipeline_id, s.id FROM pipelines p JOIN pipeline_stages s ON s.pipeline_id = p.id "
                           "ORDER BY p.position, p.id, s.position LIMIT 1")
            pipeline_id, stage_id = (first[0]["pipeline_id"], first[0]["id"]) if first else (None, None)
        else:
            pipeline_id = _pipeline_of(stage_id)
        columns = [*values, "pipeline_id", "stage_id"]
        row = _query(f"INSERT INTO leads ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))}) "
                     f"RETURNING {LEAD_COLUMNS}", (*values.values(), pipeline_id, stage_id))[0]
        return jsonify(row), 201, {"Location": f"/leads/{row['id']}"}

    @app.get("/leads/<int:lead_id>")
    def get_lead(lead_id: int) -> Response:
        return jsonify(_lead(lead_id))

    @app.patch("/leads/<int:lead_id>")
    def update_lead(lead_id: int) -> Response:
        values = _lead_fields(_json_body(), creating=False)
        if not values:
            return jsonify(_lead(lead_id))
        assignments = ", ".join(f"{column} = %s" for column in values)
        rows = _query(f"UPDATE leads SET {assignments}, updated_at = now() WHERE id = %s RETURNING {LEAD_COLUMNS}",
                      (*values.values(), lead_id))
        if not rows:
            return problem(404, "Not found", f"lead {lead_id} does not exist")
        return jsonify(rows[0])

    @app.post("/leads/<int:lead_id>/move")
    def move_lead(lead_id: int) -> Response:
        stage_id = _json_body().get("stage_id")
        pipeline_id = _pipeline_of(stage_id)
        rows = _query(f"UPDATE leads SET pipeline_id = %s, stage_id = %s, updated_at = now() WHERE id = %s "
                      f"RETURNING {LEAD_COLUMNS}", (pipeline_id, stage_id, lead_id))
        if not rows:
            return problem(404, "Not found", f"lead {lead_id} does not exist")
        return jsonify(rows[0])

    return app


# -- helpers (request context) ----------------------------------------------------------------------

def _db() -> psycopg.Connection:
    return current_app.extensions["clinic.connection"]()


def _plain(value: Any) -> Any:
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _query(query: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with _db().cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return [{key: _plain(value) for key, value in row.items()} for row in cur.fetchall()]


def _lead(lead_id: int) -> dict[str, Any]:
    rows = _query(f"SELECT {LEAD_COLUMNS} FROM leads WHERE id = %s", (lead_id,))
    if not rows:
        raise NotFound()
    return rows[0]


def _pipeline_of(stage_id: Any) -> int:
    if not isinstance(stage_id, int) or isinstance(stage_id, bool):
        raise _Invalid("stage_id", "must be an integer")
    rows = _query("SELECT pipeline_id FROM pipeline_stages WHERE id = %s", (stage_id,))
    if not rows:
        raise _Invalid("stage_id", f"stage {stage_id} does not exist")
    return rows[0]["pipeline_id"]


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


def _lead_fields(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for field, kind in LEAD_FIELDS.items():
        if field not in body:
            continue
        if kind is int:
            value = body[field]
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise _Invalid(field, "must be an integer")
            values[field] = value
        else:
            values[field] = _text(body, field)
    if creating and not values.get("full_name"):
        raise _Invalid("full_name", "is required")
    return values


def _int_arg(name: str, default: int | None, low: int, high: int | None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default  # type: ignore[return-value]
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    router = TenantRouter.from_env()
    app = create_app(router)
    try:
        # Werkzeug's threaded server is fine for trying it out; in production run
        # gunicorn 'tenant_runtime.example_app:create_app()' (each worker rebuilds the router after fork).
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        router.close()


if __name__ == "__main__":
    main()
