"""/v1/servers: the database servers tenants are placed on."""
from __future__ import annotations

from flask import jsonify
from flask.views import MethodView

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import page_of, services
from control_plane.api.schemas import (DrainRunSchema, DrainSchema, ServerCreateSchema, ServerSchema,
                                       ServerUpdateSchema)
from control_plane.services import drains, servers

blp = ApiBlueprint("servers", __name__, url_prefix="/v1/servers", description="Tenant database servers")


_FIELDS = ("name", "host", "port", "max_tenants", "max_size_bytes", "max_connections", "database_bytes",
           "connections", "checked_at", "check_error", "created_at")


def _view(server, tenants: int) -> dict:
    return {**{key: getattr(server, key) for key in _FIELDS}, "status": server.health, "tenants": tenants,
            "headroom": round(servers.headroom(server, tenants), 4)}


@blp.route("")
class Servers(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, ServerSchema(many=True))
    def get(self):
        """Servers with their tenant counts (admin credentials are never shown)."""
        return [_view(server, count) for server, count in servers.list_servers(services())]

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(ServerCreateSchema)
    @blp.response(201, ServerSchema)
    @blp.alt_response(409, description="A server with this name exists")
    @blp.alt_response(422, description="Invalid input, or no server could be administered with the given admin URL")
    def post(self, body):
        """Register a server; its admin URL is checked, then stored encrypted."""
        server = servers.register_server(services(), principal().actor, body["name"], body["admin_url"],
                                         body.get("max_tenants"), body.get("max_size_bytes"))
        return _view(server, 0)


@blp.route("/<name>")
class ServerItem(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, ServerSchema)
    @blp.alt_response(404, description="No such server")
    def get(self, name):
        """One server: status (active, draining, unreachable), capacity, and load as last checked."""
        return _view(*servers.get_server(services(), name))

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(ServerUpdateSchema)
    @blp.response(200, ServerSchema)
    @blp.alt_response(404, description="No such server")
    def patch(self, body, name):
        """Change the server's capacity: `max_tenants`, `max_size_bytes` (null: unbounded)."""
        servers.update_server(services(), principal().actor, name, **body)
        return _view(*servers.get_server(services(), name))

    @blp.access(Access.SUPER_ADMIN)
    @blp.response(204)
    @blp.alt_response(404, description="No such server")
    @blp.alt_response(409, description="Tenants remain on it (drain it first), or it is the default server")
    def delete(self, name):
        """Forget a drained server (its databases are not touched)."""
        servers.remove_server(services(), principal().actor, name)
        return None


@blp.route("/<name>/drain")
class DrainServer(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(DrainSchema)
    @blp.response(202, DrainRunSchema, headers={"Location": {"description": "/v1/drain-runs/<id>",
                                                            "schema": {"type": "string"}}})
    @blp.alt_response(200, schema=ServerSchema, description="`move_tenants: false` or `draining: false`: the server")
    @blp.alt_response(404, description="No such server")
    @blp.alt_response(409, description="A drain of this server is already running")
    def post(self, body, name):
        """Drain a server: no new tenants go to it, and every tenant on it is moved to the server with the most
        headroom, `concurrency` at a time, as a run (`GET /v1/drain-runs/<id>`: per-tenant items and counts;
        `/resume`, `/cancel`). `{"move_tenants": false}` only stops placements; `{"draining": false}` undoes
        that."""
        if not body["draining"] or not body["move_tenants"]:
            servers.set_draining(services(), principal().actor, name, body["draining"])
            return jsonify(ServerSchema().dump(_view(*servers.get_server(services(), name))))
        run = drains.start_drain(services(), principal(), name, concurrency=body["concurrency"], mode=body["mode"])
        return run, 202, {"Location": f"/v1/drain-runs/{run.id}"}


runs_blp = ApiBlueprint("drain_runs", __name__, url_prefix="/v1/drain-runs", description="Server drains")


@runs_blp.route("")
class DrainRuns(MethodView):
    @runs_blp.access(Access.SUPER_ADMIN)
    @runs_blp.response(200, DrainRunSchema(many=True))
    @runs_blp.paginate()
    def get(self, pagination_parameters):
        """Drain runs, newest first, with their per-tenant items and counts."""
        return page_of(pagination_parameters, drains.list_drains)


@runs_blp.route("/<run_id>")
class DrainRunItem(MethodView):
    @runs_blp.access(Access.SUPER_ADMIN)
    @runs_blp.response(200, DrainRunSchema)
    @runs_blp.alt_response(404, description="No such drain run")
    def get(self, run_id):
        """A drain: its status, per-tenant items (move operation, target server, error) and counts."""
        return drains.get_drain(services(), principal(), run_id)


@runs_blp.route("/<run_id>/resume")
class ResumeDrainRun(MethodView):
    @runs_blp.access(Access.SUPER_ADMIN)
    @runs_blp.response(200, DrainRunSchema)
    @runs_blp.alt_response(404, description="No such drain run")
    def post(self, run_id):
        """Go on with a cancelled or failed drain: failed tenants are tried again, newcomers join."""
        return drains.resume_drain(services(), principal(), run_id)


@runs_blp.route("/<run_id>/cancel")
class CancelDrainRun(MethodView):
    @runs_blp.access(Access.SUPER_ADMIN)
    @runs_blp.response(200, DrainRunSchema)
    @runs_blp.alt_response(404, description="No such drain run")
    def post(self, run_id):
        """Start no more moves (those under way finish); the server stays draining."""
        return drains.cancel_drain(services(), principal(), run_id)
