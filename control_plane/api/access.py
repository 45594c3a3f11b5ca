"""/v1/tokens and /v1/audit-events: who may call the API, and what was done through it."""
from __future__ import annotations

from flask.views import MethodView

from control_plane.api.access_schemas import AuditEventSchema, AuditQuerySchema, TokenQuerySchema, TokenSchema
from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import page_of, services
from control_plane.services import audit, auth

blp = ApiBlueprint("access", __name__, url_prefix="/v1", description="API tokens and the audit trail")


@blp.route("/tokens")
class Tokens(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.arguments(TokenQuerySchema, location="query")
    @blp.response(200, TokenSchema(many=True))
    @blp.paginate()
    def get(self, query, pagination_parameters):
        """Live tokens, newest first (never their secret): all for a super admin, its tenant's for a tenant admin."""
        return page_of(pagination_parameters, auth.list_tokens, **query)


@blp.route("/tokens/<token_id>")
class TokenItem(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.response(204)
    @blp.alt_response(404, description="No such token (or another tenant's)")
    def delete(self, token_id):
        """Revoke a token: its next request gets 401. Revoking a revoked token is a no-op."""
        auth.revoke_token(services(), principal(), token_id)
        return "", 204


@blp.route("/audit-events")
class AuditEvents(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.arguments(AuditQuerySchema, location="query")
    @blp.response(200, AuditEventSchema(many=True))
    @blp.paginate()
    def get(self, query, pagination_parameters):
        """Who did what to which tenant, newest first; a tenant admin sees its own tenant's events."""
        return page_of(pagination_parameters, audit.list_events, **query)
