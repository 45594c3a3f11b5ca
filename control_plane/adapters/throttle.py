"""RedisFailureThrottle: counts failures per key (a client address) in a fixed window shared by every replica."""
from __future__ import annotations

import logging

import redis

from control_plane.naming import auth_failures_key

log = logging.getLogger(__name__)


class RedisFailureThrottle:
    """`retry_after(key)` is None while `key` is under the limit, else the seconds until its window ends.

    Fails open: with Redis down, authentication must still work (the catalog decides who gets in), so
    errors are logged and the client is let through unthrottled.
    """

    def __init__(self, client: redis.Redis, limit: int, window_seconds: int) -> None:
        self._redis = client
        self._limit = limit
        self._window = window_seconds

    def retry_after(self, key: str) -> int | None:
        if self._limit <= 0:
            return None
        try:
            pipe = self._redis.pipeline()
            pipe.get(auth_failures_key(key))
            pipe.ttl(auth_failures_key(key))
            count, ttl = pipe.execute()
        except redis.RedisError as exc:
            log.warning("authentication throttle unavailable (%s): not throttling", type(exc).__name__)
            return None
        if count is not None and int(count) >= self._limit:
            return ttl if ttl and ttl > 0 else self._window
        return None

    def record_failure(self, key: str) -> None:
        if self._limit <= 0:
            return
        try:
            pipe = self._redis.pipeline()
            pipe.incr(auth_failures_key(key))
            pipe.expire(auth_failures_key(key), self._window, nx=True)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("authentication throttle unavailable (%s): failure not counted", type(exc).__name__)
