"""Restore drills: start one for a tenant, list a tenant's, list all (e.g. the failed ones)."""
from __future__ import annotations

from flask.views import MethodView

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import accepted, idempotency_key, page_of, services
from control_plane.api.drill_schemas import DrillQuerySchema, DrillSchema
from control_plane.api.schemas import OperationSchema
from control_plane.services import drills
from control_plane.services.kinds.drill import request_drill

blp = ApiBlueprint("drills", __name__, url_prefix="/v1", description="Restore drills: measured RPO and RTO")

_202 = {"Location": {"description": "/v1/operations/<id>", "schema": {"type": "string"}}}


@blp.route("/tenants/<tenant_id>/drills")
class TenantDrills(MethodView):
    @blp.access(Access.TENANT)
    @blp.arguments(DrillQuerySchema, location="query")
    @blp.response(200, DrillSchema(many=True))
    @blp.alt_response(404, description="No such tenant")
    @blp.paginate()
    def get(self, query, pagination_parameters, tenant_id):
        """The tenant's drills, newest first (filter by result)."""
        return page_of(pagination_parameters, drills.list_drills, tenant_id=tenant_id, **query)

    @blp.access(Access.SUPER_ADMIN)
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(404, description="No such tenant")
    @blp.alt_response(409, description="The tenant cannot be drilled in its current status")
    @blp.alt_response(423, description="Another operation holds the tenant")
    def post(self, tenant_id):
        """Drill the tenant's newest backup: restore it into a scratch database, check it, drop it."""
        return accepted(request_drill(services(), principal(), tenant_id, idempotency_key=idempotency_key()))


@blp.route("/drills")
class Drills(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(DrillQuerySchema, location="query")
    @blp.response(200, DrillSchema(many=True))
    @blp.paginate()
    def get(self, query, pagination_parameters):
        """Every drill, newest first (`?result=failed` for the ones to look at). Super admins."""
        return page_of(pagination_parameters, drills.list_drills, **query)
