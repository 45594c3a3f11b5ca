"""RqQueueMonitor: read-only state of the RQ queues, workers and cron schedulers (for /v1/queues and /metrics)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import redis
from rq import Queue, Worker
from rq.cron import CronScheduler
from rq.job import Job

from control_plane.errors import DependencyUnavailableError


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()


class RqQueueMonitor:
    def __init__(self, connection: redis.Redis, queue_names: list[str]) -> None:
        self._connection = connection
        self._queue_names = queue_names

    def _wrap(self, read):
        try:
            return read()
        except redis.RedisError as exc:
            raise DependencyUnavailableError("the job queue (Redis) is unavailable") from exc

    def queues(self) -> list[dict[str, Any]]:
        """Per queue: jobs by state and the age in seconds of the oldest job waiting (0 when none)."""
        def read() -> list[dict[str, Any]]:
            now = datetime.now(timezone.utc)
            result = []
            for name in self._queue_names:
                queue = Queue(name, connection=self._connection)
                oldest_age = 0.0
                for job_id in queue.get_job_ids(0, 0):
                    job = Job.fetch(job_id, connection=self._connection)
                    if job.enqueued_at:
                        enqueued = job.enqueued_at if job.enqueued_at.tzinfo else job.enqueued_at.replace(tzinfo=timezone.utc)
                        oldest_age = max(0.0, (now - enqueued).total_seconds())
                result.append({
                    "name": name,
                    "jobs": {"queued": queue.count, "started": queue.started_job_registry.count,
                             "deferred": queue.deferred_job_registry.count,
                             "scheduled": queue.scheduled_job_registry.count,
                             "failed": queue.failed_job_registry.count},
                    "oldest_queued_age_seconds": oldest_age,
                })
            return result
        return self._wrap(read)

    def workers(self) -> list[dict[str, Any]]:
        """Workers alive (RQ drops a worker whose heartbeat expired) listening on our queues."""
        def read() -> list[dict[str, Any]]:
            found: dict[str, Worker] = {}
            for name in self._queue_names:
                for worker in Worker.all(queue=Queue(name, connection=self._connection)):
                    found[worker.name] = worker
            result = []
            for worker in sorted(found.values(), key=lambda w: w.name):
                job = worker.get_current_job_id()
                result.append({
                    "name": worker.name, "hostname": worker.hostname, "pid": worker.pid,
                    "state": str(worker.get_state()), "queues": worker.queue_names(),
                    "current_job": job, "birth": _iso(worker.birth_date),
                    "last_heartbeat": _iso(worker.last_heartbeat),
                    "successful_jobs": worker.successful_job_count, "failed_jobs": worker.failed_job_count,
                })
            return result
        return self._wrap(read)

    def schedulers(self) -> list[dict[str, Any]]:
        """Cron schedulers alive (their Redis record expires when their heartbeat stops)."""
        def read() -> list[dict[str, Any]]:
            return [{"name": cron.name, "hostname": cron.hostname, "pid": cron.pid,
                     "last_heartbeat": _iso(getattr(cron, "last_heartbeat", None))}
                    for cron in CronScheduler.all(self._connection)]
        return self._wrap(read)
