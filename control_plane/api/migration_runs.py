"""/v1/migration-runs (bulk schema migrations across tenants) and /v1/migrations/drift. Super admins only."""
from __future__ import annotations

from flask.views import MethodView

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import idempotency_key, page_of, services
from control_plane.api.migration_run_schemas import (DriftSchema, RunCreateSchema, RunDetailSchema, RunDetailView,
                                                     RunItemQuerySchema, RunQuerySchema, RunSchema)
from control_plane.services import migration_runs, schema_drift
from control_plane.services.migration_runs import RunRequest
from control_plane.services.migration_waves import Wave

blp = ApiBlueprint("migrations", __name__, url_prefix="/v1", description="Bulk schema migrations across tenants")

_202 = {"Location": {"description": "/v1/migration-runs/<id>", "schema": {"type": "string"}}}


def _accepted(run):
    return run, 202, {"Location": f"/v1/migration-runs/{run.id}"}


@blp.route("/migration-runs")
class MigrationRuns(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(RunQuerySchema, location="query")
    @blp.response(200, RunSchema(many=True))
    @blp.paginate()
    def get(self, query, pagination_parameters):
        """List migration runs, newest first."""
        return page_of(pagination_parameters, migration_runs.list_runs, status=query.get("status"))

    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(RunCreateSchema)
    @blp.response(202, RunSchema, headers=_202)
    @blp.alt_response(403, description="Not a super_admin token")
    @blp.alt_response(409, description="The Idempotency-Key was used for a different request")
    @blp.alt_response(422, description="Invalid input (unknown target or tenants...); `errors` names the fields")
    def post(self, body):
        """Start a run: every selected tenant to `target`, `concurrency` at a time, the first `canary` first.

        Tenants that are not active are recorded as skipped. Once more than `max_failures` tenants failed
        (or any canary failed) no other tenant starts and the run ends failed. `dry_run` only renders the
        SQL per starting revision (the catalog's) and touches no tenant.
        """
        request = RunRequest(**{**body, "tenants": tuple(body["tenants"]) if "tenants" in body else None,
                                "statuses": tuple(body["statuses"]) if "statuses" in body else None,
                                "waves": tuple(Wave.from_dict(w) for w in body["waves"]) if "waves" in body else None})
        return _accepted(migration_runs.request_run(services(), principal(), request, idempotency_key()))


@blp.route("/migration-runs/<run_id>")
class MigrationRunItem(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.arguments(RunItemQuerySchema, location="query")
    @blp.response(200, RunDetailSchema)
    @blp.alt_response(404, description="No such run")
    def get(self, query, run_id):
        """One run: its counts and its items (`?status=failed` shows only those)."""
        return RunDetailView(migration_runs.get_run(services(), principal(), run_id, query.get("status")))


@blp.route("/migration-runs/<run_id>/resume")
class ResumeMigrationRun(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(202, RunSchema, headers=_202)
    @blp.alt_response(404, description="No such run")
    @blp.alt_response(409, description="The run succeeded or was a dry run")
    def post(self, run_id):
        """Re-queue failed and pending items, and items whose worker died; safe to repeat."""
        return _accepted(migration_runs.resume_run(services(), principal(), run_id, idempotency_key=idempotency_key()))


@blp.route("/migration-runs/<run_id>/cancel")
class CancelMigrationRun(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, RunSchema)
    @blp.alt_response(404, description="No such run")
    @blp.alt_response(409, description="The run already ended")
    def post(self, run_id):
        """No new tenant starts; those being migrated finish and are recorded. `resume` continues the run."""
        return migration_runs.cancel_run(services(), principal(), run_id, idempotency_key=idempotency_key())


@blp.route("/migration-runs/<run_id>/continue")
class ContinueMigrationRun(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(202, RunSchema, headers=_202)
    @blp.alt_response(404, description="No such run")
    @blp.alt_response(409, description="The run is not paused between waves")
    def post(self, run_id):
        """End the pause after the current wave (manual, or a timed one early): the next wave starts."""
        return _accepted(migration_runs.continue_run(services(), principal(), run_id, idempotency_key()))


@blp.route("/migration-runs/<run_id>/rollback")
class RollbackMigrationRun(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(202, RunSchema, headers=_202)
    @blp.alt_response(404, description="No such run")
    @blp.alt_response(409, description="The run has not ended failed or cancelled, or was already rolled back")
    def post(self, run_id):
        """Bring every tenant the run moved back to its starting revision, as a rollback run (answered).

        Per tenant: an Alembic downgrade, or, across a revision that declares `downgradable = False`, the
        restore of its pre-migration backup. Each tenant's outcome is an item of the rollback run.
        """
        return _accepted(migration_runs.rollback_run(services(), principal(), run_id, idempotency_key()))


@blp.route("/migrations/drift")
class Drift(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, DriftSchema)
    def get(self):
        """Tenants whose database revision differs from the catalog or from head, or is unknown or unreadable."""
        return schema_drift.drift_report(services(), principal())
