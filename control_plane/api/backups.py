"""Backups of a tenant, one backup's manifest, restores, and the tenant's retention policy."""
from __future__ import annotations

from flask.views import MethodView

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.backup_schemas import (BackupManifestSchema, BackupPolicySchema, BackupQuerySchema,
                                              BackupRequestSchema, BackupSchema, RestoreSchema)
from control_plane.api.common import accepted, idempotency_key, page_of, services
from control_plane.api.schemas import OperationSchema
from control_plane.services import backups
from control_plane.services.kinds import backup as backup_kind
from control_plane.services.kinds import restore as restores

blp = ApiBlueprint("backups", __name__, url_prefix="/v1", description="Backups, restores and retention")

_202 = {"Location": {"description": "/v1/operations/<id>", "schema": {"type": "string"}}}


@blp.route("/tenants/<tenant_id>/backups")
class TenantBackups(MethodView):
    @blp.access(Access.TENANT)
    @blp.arguments(BackupQuerySchema, location="query")
    @blp.response(200, BackupSchema(many=True))
    @blp.paginate()
    def get(self, query, pagination_parameters, tenant_id):
        """The tenant's backups, newest first (filter by status or trigger)."""
        return page_of(pagination_parameters, backups.list_backups, tenant_id, **query)

    @blp.access(Access.TENANT)
    @blp.arguments(BackupRequestSchema)
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(404, description="No such tenant")
    @blp.alt_response(409, description="The tenant cannot be backed up in its current status")
    @blp.alt_response(429, description="A tenant admin's daily allowance of manual backups is used up")
    def post(self, body, tenant_id):
        """Start a backup; the operation's result names the backup once it is complete and verified."""
        return accepted(backup_kind.request_backup(services(), principal(), tenant_id,
                                               expires_in_days=body.get("expires_in_days"),
                                               idempotency_key=idempotency_key()))


@blp.route("/backups/<backup_id>")
class BackupItem(MethodView):
    @blp.access(Access.AUTHENTICATED)
    @blp.response(200, BackupManifestSchema)
    @blp.alt_response(404, description="No such backup (or not this token's tenant)")
    def get(self, backup_id):
        """One backup: its catalog record and its manifest."""
        return backups.get_backup(services(), principal(), backup_id)


@blp.route("/tenants/<tenant_id>/restore")
class RestoreTenant(MethodView):
    @blp.access(Access.TENANT)
    @blp.arguments(RestoreSchema)
    @blp.response(202, OperationSchema, headers=_202)
    @blp.alt_response(404, description="No such tenant, or no such backup of this tenant")
    @blp.alt_response(409, description="The tenant is busy, the backup is not restorable, or the new id is taken")
    @blp.alt_response(422, description="Invalid input; `errors` names the fields")
    def post(self, body, tenant_id):
        """Restore a backup in place (the database is swapped once the restored copy is verified) or as a
        new tenant (`new_tenant_id`, super admins only)."""
        return accepted(restores.request_restore(services(), principal(), tenant_id, idempotency_key=idempotency_key(),
                                                 **body))


@blp.route("/tenants/<tenant_id>/backup-policy")
class TenantBackupPolicy(MethodView):
    @blp.access(Access.TENANT)
    @blp.response(200, BackupPolicySchema)
    def get(self, tenant_id):
        """The tenant's retention policy and whether it is backed up daily."""
        return backups.get_policy(services(), principal(), tenant_id)

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(BackupPolicySchema)
    @blp.response(200, BackupPolicySchema)
    def put(self, body, tenant_id):
        """Change the retention policy (keep the last N, and the newest of each day for D days)."""
        return backups.set_policy(services(), principal(), tenant_id, **body)
