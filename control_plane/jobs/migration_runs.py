"""RQ entry points of bulk migration runs: run one claimed item; settle it when its work horse died."""
from __future__ import annotations

import logging

from control_plane.bootstrap import build_context, dispose
from control_plane.services.migration_dispatch import recover_abandoned
from control_plane.services.migration_items import execute_item
from control_plane.settings import Settings

log = logging.getLogger(__name__)

# The dead horse's catalog session may take a moment to end and release the tenant lock.
KILLED_LOCK_WAIT_SECONDS = 10.0


def run_migration_item(item_id: str, dispatch_token: int) -> None:
    """Migrate one tenant of a run. Safe to run twice: a stale claim does nothing."""
    # Built inside the job, i.e. after RQ forked the work horse: nothing here crosses a fork.
    ctx = build_context(Settings.from_env(), pool_size=2)
    try:
        execute_item(ctx, item_id, dispatch_token)
    finally:
        dispose(ctx)


def migration_item_horse_killed(settings: Settings, item_id: str, exit_status: int) -> None:
    """The work horse running an item died (OOM killer, segfault): fail the item now, and go on with the run.

    Runs in the worker's parent process. Resume retries the item.
    """
    ctx = build_context(settings, pool_size=1)
    try:
        recovered = recover_abandoned(ctx, item_id=item_id, wait_seconds=KILLED_LOCK_WAIT_SECONDS,
                                      reason=f"the worker process died (exit status {exit_status})")
        if recovered:
            log.error("migration run item %s: work horse died (exit status %d)", item_id, exit_status)
    finally:
        dispose(ctx)
