"""RQ entry points of the backup schedule: the scheduler's tick and the prune job (safe to run twice)."""
from __future__ import annotations

from typing import Any

from control_plane.bootstrap import build_context, dispose
from control_plane.services.backup_schedule import schedule_due_backups
from control_plane.services.retention import prune_backups as prune
from control_plane.settings import Settings


def schedule_backups() -> list[str]:
    """Start the daily backups that are due (each tenant at its slot in the window)."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return schedule_due_backups(ctx)
    finally:
        dispose(ctx)


def prune_backups() -> dict[str, Any]:
    """Expire backups the retention policies no longer keep; drop retired databases past their grace."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return vars(prune(ctx))
    finally:
        dispose(ctx)
