"""The Flask application factory: API, OpenAPI spec at /openapi.json, Swagger UI at /docs."""
from __future__ import annotations

from flask import Flask, request, send_from_directory
from swagger_ui_bundle import swagger_ui_path

from control_plane.api import errors, request_context
from control_plane.api.access import blp as access_blp
from control_plane.api.auth import authorize_request
from control_plane.api.plans import blp as plans_blp
from control_plane.api.backups import blp as backups_blp
from control_plane.api.fleet import blp as fleet_blp
from control_plane.api.drills import blp as drills_blp
from control_plane.api.health import blp as health_blp
from control_plane.api.input import check_path
from control_plane.api.me import blp as me_blp
from control_plane.api.migration_runs import blp as migration_runs_blp
from control_plane.api.operations import blp as operations_blp
from control_plane.api.queues import blp as queues_blp
from control_plane.api.servers import blp as servers_blp, runs_blp as drain_runs_blp
from control_plane.api.tenants import blp as tenants_blp
from control_plane.bootstrap import build_context
from control_plane.console import blp as console_blp
from control_plane.services.context import ServiceContext
from control_plane.services.servers import ensure_default_server
from control_plane.settings import Settings


# Swagger UI's JavaScript and CSS come from the installed swagger-ui-bundle package, served by the API
# itself: the console's page loads no code from a CDN.
SWAGGER_ASSETS_PATH = "/docs/assets/"


def create_app(settings: Settings | None = None, ctx: ServiceContext | None = None) -> Flask:
    settings = settings or (ctx.settings if ctx else Settings.from_env())
    ctx = ctx or build_context(settings)
    ensure_default_server(ctx)

    app = Flask("control_plane")
    app.config.update(
        API_TITLE="Tenant control plane",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="/docs",
        OPENAPI_SWAGGER_UI_URL=SWAGGER_ASSETS_PATH,
        MAX_CONTENT_LENGTH=settings.max_request_bytes,
        API_SPEC_OPTIONS={"components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
                          "security": [{"bearer": []}]},
    )
    app.extensions["control_plane"] = ctx
    api = errors.ProblemApi(app)
    errors.register(app)  # after Api(): ours replace flask-smorest's JSON error handler with problem+json
    for blueprint in (tenants_blp, operations_blp, servers_blp):
        api.register_blueprint(blueprint)
    api.register_blueprint(migration_runs_blp)
    api.register_blueprint(drain_runs_blp)
    api.register_blueprint(fleet_blp)
    api.register_blueprint(backups_blp)
    api.register_blueprint(drills_blp)
    api.register_blueprint(queues_blp)
    api.register_blueprint(me_blp)
    api.register_blueprint(access_blp)
    api.register_blueprint(plans_blp)
    app.register_blueprint(health_blp)
    app.register_blueprint(console_blp)
    app.add_url_rule(f"{SWAGGER_ASSETS_PATH}<path:filename>", "swagger_assets",
                     lambda filename: send_from_directory(swagger_ui_path, filename))

    request_context.register(app)  # before authentication: a refused request has its id too

    @app.before_request
    def _authorize_then_check_path() -> None:
        if request.path.startswith("/v1/"):
            authorize_request()
            check_path(request.view_args)

    return app
