"""RQ entry points of bulk migration runs: run a lane of claimed items; settle them when its work horse died."""
from __future__ import annotations

import logging
import socket
from datetime import timedelta

from sqlalchemy import select

from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.migration_run_models import MigrationRunItem
from control_plane.phases import Phases
from control_plane.services.migration_dispatch import recover_abandoned, requeue_lost
from control_plane.services.migration_items import execute_item
from control_plane.settings import Settings

log = logging.getLogger(__name__)

# The dead horse's catalog session may take a moment to end and release the tenant lock.
KILLED_LOCK_WAIT_SECONDS = 10.0


def run_migration_item(item_id: str, dispatch_token: int) -> None:
    """Migrate the claimed tenant, then the next ones this lane claims (see execute_item). Safe to run twice."""
    phases = Phases()
    # Built inside the job, i.e. after RQ forked the work horse: nothing here crosses a fork.
    with phases.phase("job: build context"):
        ctx = build_context(Settings.from_env(), pool_size=2)
    try:
        execute_item(ctx, item_id, dispatch_token, phases=phases)
    finally:
        dispose(ctx)


def migration_item_horse_killed(settings: Settings, item_id: str, horse_pid: int, exit_status: int) -> None:
    """The work horse running a lane of items died (OOM killer, segfault): fail its item now and go on.

    Runs in the worker's parent process. The item it was migrating is recognised by the horse's name
    (a lane may have moved on from the item its job was created for). Resume retries the item.
    """
    ctx = build_context(settings, pool_size=1)
    try:
        recovered = recover_abandoned(ctx, worker=f"{socket.gethostname()}:{horse_pid}",
                                      wait_seconds=KILLED_LOCK_WAIT_SECONDS,
                                      reason=f"the worker process died (exit status {exit_status})")
        for recovered_id in recovered:
            log.error("migration run item %s: work horse %d died (exit status %d)", recovered_id, horse_pid,
                      exit_status)
        # The lane may have claimed its next item for itself and died before starting it: give it a job.
        with ctx.sessions() as session:
            run_id = session.scalar(select(MigrationRunItem.run_id).where(MigrationRunItem.id == item_id))
        if run_id:
            requeue_lost(ctx, run_id, older_than=timedelta(0))
    finally:
        dispose(ctx)
