"""RqMigrationJobs: puts migration run items on the project's RQ queue, one job per claim of an item."""
from __future__ import annotations

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from control_plane.errors import DependencyUnavailableError
from control_plane.naming import migration_item_job_id

ITEM_JOB = "control_plane.jobs.migration_runs.run_migration_item"

_PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


class RqMigrationJobs:
    def __init__(self, connection: redis.Redis, queue_name: str, job_timeout: int) -> None:
        self._connection = connection
        self._queue = Queue(queue_name, connection=connection)
        self._job_timeout = job_timeout

    def enqueue_items(self, claims: list[tuple[str, int]]) -> None:
        """Enqueue (item id, dispatch token) pairs, in order."""
        try:
            for item_id, token in claims:
                self._queue.enqueue_call(
                    ITEM_JOB, args=(item_id, token), job_id=migration_item_job_id(item_id, token),
                    timeout=self._job_timeout, result_ttl=600, failure_ttl=7 * 86400,
                    description=f"migration run item {item_id}")
        except redis.RedisError as exc:
            raise DependencyUnavailableError("could not enqueue migration items: Redis unavailable") from exc

    def is_pending(self, item_id: str, token: int) -> bool:
        """True while RQ holds a job for this claim that will run or is running."""
        try:
            return Job.fetch(migration_item_job_id(item_id, token), connection=self._connection).get_status() in _PENDING
        except NoSuchJobError:
            return False
