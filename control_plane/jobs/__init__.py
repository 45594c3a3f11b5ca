"""RQ entry points: importable functions that take ids, build their dependencies, call one service."""
from __future__ import annotations

import logging

from control_plane.bootstrap import build_context, dispose
from control_plane.logs import log_context
from control_plane.services.runner import execute_operation
from control_plane.settings import Settings

log = logging.getLogger(__name__)


def run_operation(operation_id: str) -> None:
    """Run one operation. Safe to run twice: the service skips finished work and steps converge."""
    with log_context(operation_id=operation_id):
        # Built inside the job, i.e. after RQ forked the work horse: nothing here crosses a fork.
        ctx = build_context(Settings.from_env(), pool_size=2)
        try:
            execute_operation(ctx, operation_id)
        finally:
            dispose(ctx)
