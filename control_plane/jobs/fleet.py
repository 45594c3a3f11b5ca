"""RQ entry points of the fleet's periodic work: the servers' health and load check, the drains' tick (safe twice)."""
from __future__ import annotations

from control_plane.bootstrap import build_context, dispose
from control_plane.services import drains, reconcile, servers, warm_pools
from control_plane.settings import Settings


def check_servers() -> dict[str, bool]:
    """Record every server's reachability, connections and database sizes (what placement reads)."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return servers.check_servers(ctx)
    finally:
        dispose(ctx)


def advance_drains() -> list[str]:
    """Advance every running server drain once (a lost wake-up only delays it until this tick)."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return drains.advance_running(ctx)
    finally:
        dispose(ctx)


def report_reconcile() -> dict[str, int]:
    """The daily reconcile report (no repairs): counts logged and exported as metrics."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return reconcile.daily_report(ctx)
    finally:
        dispose(ctx)


def refill_warm_pools() -> dict[str, int]:
    """Every server's pool of spare databases back to WARM_POOL_SIZE at head (after claims, on the tick)."""
    ctx = build_context(Settings.from_env(), pool_size=1)
    try:
        return warm_pools.refill_all(ctx)
    finally:
        dispose(ctx)
