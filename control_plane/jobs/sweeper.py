"""RQ entry point of the sweeper (services.sweeper), enqueued every minute by `tenantctl scheduler`."""
from __future__ import annotations

from typing import Any

from control_plane.bootstrap import build_context, dispose
from control_plane.services.sweeper import sweep
from control_plane.settings import Settings


def sweep_operations() -> dict[str, Any]:
    """Re-dispatch lost queued operations, fail (and retry) abandoned running ones, settle migration items."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return sweep(ctx).as_dict()
    finally:
        dispose(ctx)
