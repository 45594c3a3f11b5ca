"""/v1/queues and /v1/workers: the RQ queues, cron schedulers and workers, for super admins."""
from __future__ import annotations

from flask.views import MethodView
from marshmallow import Schema, fields

from control_plane.api.auth import principal
from control_plane.api.blueprint import Access, ApiBlueprint
from control_plane.api.common import services
from control_plane.services import queues

blp = ApiBlueprint("queues", __name__, url_prefix="/v1", description="Job queues, workers and schedulers")


class QueueSchema(Schema):
    name = fields.String()
    jobs = fields.Dict(keys=fields.String(), values=fields.Integer(),
                       metadata={"description": "jobs by state: queued, started, deferred, scheduled, failed"})
    oldest_queued_age_seconds = fields.Float()


class SchedulerSchema(Schema):
    name = fields.String()
    hostname = fields.String()
    pid = fields.Integer()
    last_heartbeat = fields.String(allow_none=True)


class QueuesSchema(Schema):
    queues = fields.List(fields.Nested(QueueSchema))
    schedulers = fields.List(fields.Nested(SchedulerSchema))


class WorkerSchema(Schema):
    name = fields.String()
    hostname = fields.String()
    pid = fields.Integer()
    state = fields.String()
    queues = fields.List(fields.String())
    current_job = fields.String(allow_none=True)
    birth = fields.String(allow_none=True)
    last_heartbeat = fields.String(allow_none=True)
    successful_jobs = fields.Integer()
    failed_jobs = fields.Integer()


@blp.route("/queues")
class Queues(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, QueuesSchema)
    @blp.alt_response(503, description="Redis is unavailable")
    def get(self):
        """Jobs by state and the oldest job's age per queue, and the cron schedulers alive (super admin)."""
        return queues.list_queues(services(), principal())


@blp.route("/workers")
class Workers(MethodView):
    @blp.access(Access.SUPER_ADMIN)
    @blp.response(200, WorkerSchema(many=True))
    @blp.alt_response(503, description="Redis is unavailable")
    def get(self):
        """Workers alive, what each is running, and its job counts (super admin)."""
        return queues.list_workers(services(), principal())
