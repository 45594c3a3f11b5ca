"""RqJobQueue: puts operations on the RQ queue of their lane (naming.Lane); one RQ job per operation id."""
from __future__ import annotations

import logging

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

from control_plane.errors import DependencyUnavailableError
from control_plane.naming import Lane, job_id, queue_name

log = logging.getLogger(__name__)

OPERATION_JOB = "control_plane.jobs.run_operation"

_PENDING = {JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED}


class RqJobQueue:
    def __init__(self, connection: redis.Redis, base_name: str, job_timeout: int) -> None:
        self._connection = connection
        self._queues = {lane: Queue(queue_name(base_name, lane), connection=connection) for lane in Lane}
        self._job_timeout = job_timeout

    def enqueue_operation(self, operation_id: str, lane: Lane = Lane.OPERATIONS) -> None:
        try:
            self._queues[lane].enqueue_call(
                OPERATION_JOB, args=(operation_id,), job_id=job_id(operation_id),
                timeout=self._job_timeout, result_ttl=3600, failure_ttl=7 * 86400,
                description=f"operation {operation_id}")
        except redis.RedisError as exc:
            raise DependencyUnavailableError(f"could not enqueue operation {operation_id}: Redis unavailable") from exc

    def is_pending(self, operation_id: str) -> bool:
        """True while RQ still holds a job for the operation that will run or is running."""
        try:
            return Job.fetch(job_id(operation_id), connection=self._connection).get_status() in _PENDING
        except NoSuchJobError:
            return False
        except redis.RedisError as exc:
            raise DependencyUnavailableError("could not read the job queue: Redis unavailable") from exc

    def ping(self) -> None:
        self._connection.ping()
