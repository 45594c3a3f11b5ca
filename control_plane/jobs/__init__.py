"""RQ entry points: importable functions that take ids, build their dependencies, call one service."""
from __future__ import annotations

import logging
import os

from rq import Retry
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.db import create_catalog_engine
from control_plane.errors import CatalogUnavailableError
from control_plane.logs import log_context
from control_plane.services.runner import LockWaitTimeout, execute_operation
from control_plane.settings import Settings

log = logging.getLogger(__name__)

# A job whose tenant stays locked goes back to the queue this many times (each after a lock wait), then
# fails in RQ; its operation is still queued in the catalog, so the sweeper dispatches it again.
LOCK_RETRIES = 20


# The catalog engine a worker parent made at start-up (`prepare_catalog_engine`): connected once, so its
# dialect knows the server, then left without a connection. A work horse takes it over with a pool of its
# own (SQLAlchemy's dispose(close=False) after a fork), which spares every job the first-connect queries.
_parent_engine: Engine | None = None
_parent: tuple[int, str] | None = None  # (pid, catalog URL) of the process that made it


def prepare_catalog_engine(settings: Settings, pool_size: int = 2) -> None:
    """In a worker parent, before it forks: the engine its work horses start from (best effort)."""
    global _parent_engine, _parent
    engine = create_catalog_engine(settings.catalog_database_url, pool_size=pool_size, max_overflow=pool_size)
    try:
        with engine.connect():
            pass
    except (DBAPIError, CatalogUnavailableError):  # the catalog is down: horses build their own engine
        log.warning("catalog unreachable at worker start: work horses will build their own engine")
        engine = None
    finally:
        if engine is not None:
            engine.dispose()  # the parent keeps no connection: none may cross a fork
    _parent_engine, _parent = engine, (os.getpid(), settings.catalog_database_url)


def _horse_engine(settings: Settings) -> Engine | None:
    """The parent's engine, in a work horse forked from it for the same catalog; else None."""
    if _parent_engine is None or _parent is None or _parent[0] == os.getpid() \
            or _parent[1] != settings.catalog_database_url:
        return None
    _parent_engine.dispose(close=False)  # a fresh pool in this process; nothing of the parent's is touched
    return _parent_engine


def run_operation(operation_id: str) -> Retry | None:
    """Run one operation. Safe to run twice: the service skips finished work and steps converge."""
    with log_context(operation_id=operation_id):
        # Built inside the job, i.e. after RQ forked the work horse: no connection crosses a fork.
        settings = Settings.from_env()
        ctx = build_context(settings, pool_size=2, engine=_horse_engine(settings))
        try:
            execute_operation(ctx, operation_id)
        except LockWaitTimeout:
            return Retry(max=LOCK_RETRIES)  # RQ re-queues the job: waiting for a lock is not a failure
        finally:
            dispose(ctx)
    return None
