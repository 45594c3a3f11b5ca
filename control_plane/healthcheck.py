"""Container liveness of the worker and the scheduler: `python -m control_plane.healthcheck worker|scheduler`.

Healthy when a process of that kind on this host (the container's hostname) is registered in Redis,
which RQ keeps only while the process heart-beats. Unhealthy (exit 1) only when it is missing: a Redis
outage answers healthy, since restarting workers would not bring Redis back (/readyz and the alerts
report it instead).
"""
from __future__ import annotations

import socket
import sys

import redis
from rq import Worker
from rq.cron import CronScheduler

from control_plane.settings import read_setting


def registered_here(kind: str, connection: redis.Redis, hostname: str) -> bool:
    found = Worker.all(connection=connection) if kind == "worker" else CronScheduler.all(connection)
    return any(process.hostname == hostname for process in found)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("worker", "scheduler"):
        print("usage: python -m control_plane.healthcheck worker|scheduler", file=sys.stderr)
        return 2
    url = read_setting("REDIS_URL")
    if not url:
        print("REDIS_URL is not set", file=sys.stderr)
        return 1
    connection = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5)
    try:
        alive = registered_here(argv[0], connection, socket.gethostname())
    except redis.RedisError as exc:
        print(f"Redis unavailable ({type(exc).__name__}): not this process's fault", file=sys.stderr)
        return 0
    if not alive:
        print(f"no {argv[0]} of host {socket.gethostname()} is registered in Redis", file=sys.stderr)
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
