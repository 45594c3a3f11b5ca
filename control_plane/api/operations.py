"""/v1/operations: what asynchronous work is doing, and retrying what failed."""
from __future__ import annotations

from flask.views import MethodView

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import accepted, idempotency_key, page_of, services
from control_plane.api.schemas import OperationQuerySchema, OperationSchema
from control_plane.services import operations

blp = ApiBlueprint("operations", __name__, url_prefix="/v1/operations", description="Asynchronous operations")


@blp.route("")
class Operations(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.arguments(OperationQuerySchema, location="query")
    @blp.response(200, OperationSchema(many=True))
    @blp.paginate()
    def get(self, query, pagination_parameters):
        """List operations, newest first."""
        return page_of(pagination_parameters, operations.list_operations, tenant_id=query.get("tenant_id"),
                       status=query.get("status"), kind=query.get("kind"))


@blp.route("/<operation_id>")
class OperationItem(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.response(200, OperationSchema)
    @blp.alt_response(404, description="No such operation")
    def get(self, operation_id):
        """One operation. A generated admin password appears in `result` on the first read after success only."""
        return operations.get_operation(services(), principal(), operation_id)


@blp.route("/<operation_id>/retry")
class RetryOperation(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(202, OperationSchema)
    @blp.alt_response(409, description="The operation has not failed")
    @blp.alt_response(423, description="Another operation holds the tenant")
    def post(self, operation_id):
        """Run a failed operation again; its steps resume where they stopped."""
        return accepted(operations.retry_operation(services(), principal(), operation_id,
                                                   idempotency_key=idempotency_key()))


@blp.route("/<operation_id>/cancel")
class CancelOperation(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(202, OperationSchema)
    @blp.alt_response(409, description="The operation has already finished")
    def post(self, operation_id):
        """Cancel: a queued operation at once (`cancelled`); a running one stops at its next safe step and
        undoes what it started (`cancel_requested_at` is set until then); the tenant returns to its status."""
        return accepted(operations.cancel_operation(services(), principal(), operation_id,
                                                    idempotency_key=idempotency_key()))
