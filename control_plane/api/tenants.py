"""/v1/tenants: the tenant collection, one tenant, and the actions that start work on it."""
from __future__ import annotations

from flask.views import MethodView

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import accepted, idempotency_key, page_of, services
from control_plane.api.schemas import (DeleteQuerySchema, MigrateSchema, MoveSchema, OperationSchema,
                                       TenantCreateSchema, TenantQuerySchema, TenantSchema, TenantUpdateSchema)
from control_plane.services import tenants
from control_plane.services.kinds import delete, migrate, move, provision, undelete

blp = ApiBlueprint("tenants", __name__, url_prefix="/v1/tenants", description="Tenants and their lifecycle")

_202 = {"Location": {"description": "/v1/operations/<id>", "schema": {"type": "string"}}}


@blp.route("")
class Tenants(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.arguments(TenantQuerySchema, location="query")
    @blp.response(200, TenantSchema(many=True))
    @blp.paginate()
    def get(self, query, pagination_parameters):
        """List tenants (filter by status, server, or a search `q` over id, name and domains)."""
        return page_of(pagination_parameters, tenants.list_tenants, **query)

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(TenantCreateSchema)
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(409, description="The id or a domain is taken")
    @blp.alt_response(422, description="Invalid input; `errors` names the fields")
    def post(self, body):
        """Create a tenant: records it and starts its provisioning.

        When its server has a warm spare the provisioning is finished within the request: the operation in
        the answer is already `succeeded` (with the generated admin password, shown this once). Otherwise
        it is `queued` for a worker; follow it at `Location`."""
        op = provision.request_tenant(services(), principal(), tenant_id=body.pop("id"),
                                    idempotency_key=idempotency_key(), **body)
        return accepted(op)


@blp.route("/<tenant_id>")
class TenantItem(MethodView):
    @blp.access(Access.TENANT)
    @blp.response(200, TenantSchema)
    @blp.alt_response(404, description="No such tenant")
    def get(self, tenant_id):
        """One tenant."""
        return tenants.get_tenant(services(), principal(), tenant_id)

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(TenantUpdateSchema)
    @blp.response(200, TenantSchema)
    @blp.alt_response(409, description="A domain is taken")
    def patch(self, body, tenant_id):
        """Change a tenant's name, domains or plan."""
        return tenants.update_tenant(services(), principal(), tenant_id, **body)

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(DeleteQuerySchema, location="query")
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(409, description="The tenant is already deleted (without `purge`) or its status forbids it")
    def delete(self, query, tenant_id):
        """Delete a tenant: final backup (unless `final_backup=false`), then its database is retired (renamed,
        connections refused, its role unable to log in) for `DELETED_TENANT_GRACE_DAYS`, during which
        `POST /v1/tenants/<id>/undelete` brings it back; the prune job then drops the database and the role.
        The tenant's API tokens are revoked for good.

        `purge=true` drops every database of the tenant's role and the role at once, destroys the tenant's
        backup key and deletes its backups (crypto-shredding); it also erases a tenant deleted earlier.
        """
        return accepted(delete.request_deletion(services(), principal(), tenant_id,
                                                 final_backup=query["final_backup"], purge=query["purge"],
                                                 idempotency_key=idempotency_key()))


@blp.route("/<tenant_id>/undelete")
class UndeleteTenant(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(404, description="No such tenant")
    @blp.alt_response(409, description="The tenant is not deleted, its grace period is over, it was purged, or one "
                                       "of its domains is taken (`detail` says which)")
    def post(self, tenant_id):
        """Undelete: within `DELETED_TENANT_GRACE_DAYS` of its deletion, the tenant back as it was (same id and
        data, the status it had before, e.g. `suspended`, its domains, its role able to log in again).

        The API tokens its deletion revoked stay revoked: create new ones for it.
        """
        return accepted(undelete.request_undelete(services(), principal(), tenant_id,
                                                  idempotency_key=idempotency_key()))


@blp.route("/<tenant_id>/suspend")
class SuspendTenant(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, TenantSchema)
    @blp.alt_response(409, description="The tenant cannot be suspended in its current status")
    def post(self, tenant_id):
        """Suspend: tenant runtimes refuse its requests."""
        return tenants.suspend_tenant(services(), principal(), tenant_id)


@blp.route("/<tenant_id>/resume")
class ResumeTenant(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, TenantSchema)
    @blp.alt_response(409, description="The tenant is not suspended")
    def post(self, tenant_id):
        """Resume a suspended tenant."""
        return tenants.resume_tenant(services(), principal(), tenant_id)


@blp.route("/<tenant_id>/migrate")
class MigrateTenant(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(MigrateSchema)
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(409, description="The tenant is busy")
    def post(self, body, tenant_id):
        """Bring the tenant's schema to `head` or to a given revision (upgrade or downgrade)."""
        return accepted(migrate.request_migration(services(), principal(), tenant_id, body["target"],
                                                  idempotency_key=idempotency_key()))


@blp.route("/<tenant_id>/move")
class MoveTenant(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(MoveSchema)
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(404, description="No such tenant or server")
    @blp.alt_response(409, description="The tenant's status forbids a move, or the server takes no tenants")
    @blp.alt_response(422, description="Invalid input, the tenant is already there, or an online move is impossible "
                                       "(`detail` says why)")
    def post(self, body, tenant_id):
        """Move the tenant's database to another server: `online` (logical replication, a write freeze under a
        second), `offline` (pg_dump | pg_restore while the tenant is held) or, without `mode`, online when the
        servers allow it. The chosen mode is in the operation's `result.mode`."""
        return accepted(move.request_move(services(), principal(), tenant_id, server=body["server"],
                                           mode=body["mode"], idempotency_key=idempotency_key()))
