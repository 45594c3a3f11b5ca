"""TenantEventListener: a thread subscribed to the control plane's tenant-change channel on Redis.

It reports each event, and whether the subscription is live (and, when it comes back, that events
may have been missed meanwhile): while it is not live, the directory falls back to a short cache TTL. An outage is logged once when it starts and once when it ends.
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tenant_runtime.naming import TENANT_EVENTS_CHANNEL

log = logging.getLogger(__name__)

MIN_BACKOFF, MAX_BACKOFF = 0.1, 5.0


class TenantEventListener:
    def __init__(self, redis_url: str, on_event: Callable[[dict[str, Any]], None],
                 on_live: Callable[[bool, bool], None], *, name: str = "tenant-runtime-events") -> None:
        self._url = redis_url
        self._on_event = on_event
        self._on_live = on_live
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = False
        self._outage_logged = False
        self._was_live = False
        self.received = 0
        self.connect_failures = 0

    @property
    def live(self) -> bool:
        return self._live

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        while not self._stop.is_set():
            # No client-side retries: a lost connection must surface here at once, because messages
            # published while it was down are gone and the cache has to learn that.
            client = redis.Redis.from_url(self._url, socket_connect_timeout=2, socket_timeout=10,
                                          socket_keepalive=True, health_check_interval=5,
                                          retry=Retry(NoBackoff(), 0))
            pubsub = client.pubsub()
            try:
                pubsub.subscribe(TENANT_EVENTS_CHANNEL)
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=0.5)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        backoff = MIN_BACKOFF
                        if self._live:  # a transparent resubscription: events may have been missed
                            self._on_live(True, True)
                        self._set_live(True)
                    elif message["type"] == "message":
                        self._dispatch(message["data"])
            except (redis.RedisError, OSError) as exc:
                self.connect_failures += 1
                self._set_live(False, exc)
            except Exception:  # a bug in a callback must not silently end the subscription
                log.exception("tenant event listener failed; resubscribing")
                self._set_live(False)
            finally:
                try:
                    pubsub.close()
                    client.close()
                except (redis.RedisError, OSError):
                    pass
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, MAX_BACKOFF)
        self._set_live(False, None, stopping=True)

    def _set_live(self, live: bool, exc: BaseException | None = None, stopping: bool = False) -> None:
        if live == self._live:
            if not live and not stopping and not self._outage_logged:
                self._log_outage(exc)  # never connected since start: an outage all the same
            return
        self._live = live
        recovered = live and self._was_live
        if live:
            if self._outage_logged:
                log.info("tenant change events restored: catalog cache back to its normal TTL")
            self._outage_logged = False
            self._was_live = True
        elif not stopping:
            self._log_outage(exc)
        self._on_live(live, recovered)

    def _log_outage(self, exc: BaseException | None) -> None:
        self._outage_logged = True
        reason = type(exc).__name__ if exc is not None else "error"
        log.warning("tenant change events unavailable (Redis: %s): the tenant cache falls back to a short TTL "
                    "until Redis answers again", reason)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            log.warning("ignoring a malformed tenant event (%d bytes)", len(data or b""))
            return
        if not isinstance(event, dict) or not isinstance(event.get("tenant_id"), str):
            log.warning("ignoring a tenant event without tenant_id")
            return
        self.received += 1
        self._on_event(event)
