"""/v1/plans: named per-tenant limits (connections, timeouts, storage quota, backup RPO)."""
from __future__ import annotations

from flask.views import MethodView
from marshmallow import fields, validate

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.input import InputSchema
from control_plane.api.common import services
from control_plane.services import plans

blp = ApiBlueprint("plans", __name__, url_prefix="/v1/plans", description="Plans and their per-tenant limits")


class PlanLimitsSchema(InputSchema):
    description = fields.String(allow_none=True, validate=validate.Length(max=200))
    connection_limit = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=10_000), metadata={
        "description": "sessions the tenant's role may hold on its server, all replicas together (null: no limit)"})
    statement_timeout_ms = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=86_400_000))
    idle_in_transaction_timeout_ms = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=86_400_000))
    storage_quota_bytes = fields.Integer(allow_none=True, validate=validate.Range(min=1), metadata={
        "description": "watched: events at 80% and 100%, a metric and an alert"})
    backup_rpo_hours = fields.Integer(allow_none=True, validate=validate.Range(min=1, max=8760))


class PlanCreateSchema(PlanLimitsSchema):
    name = fields.String(required=True, validate=validate.Regexp(r"^[a-z][a-z0-9_-]{0,49}$"))


class PlanSchema(PlanCreateSchema):
    created_at = fields.DateTime()
    updated_at = fields.DateTime()


@blp.route("")
class Plans(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, PlanSchema(many=True))
    def get(self):
        """Every plan with its limits."""
        return plans.list_plans(services(), principal())

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(PlanCreateSchema)
    @blp.response(201, PlanSchema)
    @blp.alt_response(409, description="A plan with this name exists")
    def post(self, body):
        """Create a plan."""
        return plans.create_plan(services(), principal(), body.pop("name"), **body)


@blp.route("/<name>")
class PlanItem(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, PlanSchema)
    @blp.alt_response(404, description="No such plan")
    def get(self, name):
        """One plan."""
        return plans.get_plan(services(), principal(), name)

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(PlanLimitsSchema)
    @blp.response(200, PlanSchema)
    @blp.alt_response(404, description="No such plan")
    def patch(self, body, name):
        """Change a plan's limits (null removes one); the roles of its tenants are updated at once."""
        return plans.update_plan(services(), principal(), name, **body)
