"""/v1/fleet/reconcile: what the database servers hold compared with the catalog, and safe repairs."""
from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import services
from control_plane.api.input import InputSchema
from control_plane.services import reconcile

blp = ApiBlueprint("fleet", __name__, url_prefix="/v1/fleet", description="The fleet of database servers")


class ReconcileRequestSchema(InputSchema):
    dry_run = fields.Boolean(load_default=True)


class ReconcileSchema(Schema):
    dry_run = fields.Boolean()
    checked_at = fields.String()
    servers = fields.Dict(metadata={"description": "per server: orphan_databases, orphan_roles, missing, leftovers "
                                                   "(and `repaired` when applied), or `error` when unreachable"})
    drift = fields.List(fields.Dict())
    drift_error = fields.String()
    counts = fields.Dict(keys=fields.String(), values=fields.Integer())


@blp.route("/reconcile")
class Reconcile(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, ReconcileSchema)
    def get(self):
        """Report, per server: orphan databases and roles (our naming, no catalog row), tenants whose database or
        role is missing, leftovers past their grace period (retired, restore-scratch and quarantined databases;
        slots, subscriptions and roles of moves no longer running), and schema drift."""
        return reconcile.reconcile(services(), principal(), apply=False)

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(ReconcileRequestSchema)
    @blp.response(200, ReconcileSchema)
    def post(self, body):
        """The report, and with `dry_run: false` the safe repairs: orphans quarantined (renamed, connections refused;
        dropped by a later run after the grace period), leftovers dropped, a tenant whose database is missing
        marked `failed` naming the backup to restore."""
        return reconcile.reconcile(services(), principal(), apply=not body["dry_run"])
