"""RQ entry points: importable functions that take ids, build their dependencies, call one service."""
from __future__ import annotations

import logging

from rq import Retry

from control_plane.bootstrap import build_context, dispose
from control_plane.logs import log_context
from control_plane.services.runner import LockWaitTimeout, execute_operation
from control_plane.settings import Settings

log = logging.getLogger(__name__)

# A job whose tenant stays locked goes back to the queue this many times (each after a lock wait), then
# fails in RQ; its operation is still queued in the catalog, so the sweeper dispatches it again.
LOCK_RETRIES = 20


def run_operation(operation_id: str) -> Retry | None:
    """Run one operation. Safe to run twice: the service skips finished work and steps converge."""
    with log_context(operation_id=operation_id):
        # Built inside the job, i.e. after RQ forked the work horse: nothing here crosses a fork.
        ctx = build_context(Settings.from_env(), pool_size=2)
        try:
            execute_operation(ctx, operation_id)
        except LockWaitTimeout:
            return Retry(max=LOCK_RETRIES)  # RQ re-queues the job: waiting for a lock is not a failure
        finally:
            dispose(ctx)
    return None
