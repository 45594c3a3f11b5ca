"""/v1/me: who the bearer token is (role, tenant scope), so a client such as the console can shape itself."""
from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint

blp = ApiBlueprint("me", __name__, url_prefix="/v1/me", description="The token making the request")


class PrincipalSchema(Schema):
    name = fields.String()
    role = fields.Function(lambda p: p.role.value)
    tenant_id = fields.String(allow_none=True)


@blp.route("")
class Me(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.response(200, PrincipalSchema)
    def get(self):
        """The token's name, role and, for a tenant_admin, its tenant."""
        return principal()
