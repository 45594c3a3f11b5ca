"""Catalog-change events on Redis pub/sub, which every tenant_runtime process subscribes to."""
from __future__ import annotations

import json
import logging
from typing import Any

import redis

from control_plane.naming import TENANT_EVENTS_CHANNEL

log = logging.getLogger(__name__)


class RedisTenantEvents:
    def __init__(self, client: redis.Redis) -> None:
        self._client = client

    def publish(self, tenant_id: str, change: str, **data: Any) -> None:
        payload = json.dumps({"tenant_id": tenant_id, "change": change, **data}, default=str)
        try:
            self._client.publish(TENANT_EVENTS_CHANNEL, payload)
        except redis.RedisError:
            # Runtimes fall back to a short cache TTL when events are lost; the catalog stays the truth.
            log.warning("could not publish %s event for tenant %s", change, tenant_id, exc_info=True)
