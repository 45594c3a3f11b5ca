"""The super admin's view of the job queues, the workers and the schedulers (read-only)."""
from __future__ import annotations

from typing import Any

from control_plane.services.auth import Principal
from control_plane.services.context import ServiceContext


def list_queues(ctx: ServiceContext, principal: Principal) -> dict[str, Any]:
    principal.require_super_admin()
    return {"queues": ctx.queue_monitor.queues(), "schedulers": ctx.queue_monitor.schedulers()}


def list_workers(ctx: ServiceContext, principal: Principal) -> list[dict[str, Any]]:
    principal.require_super_admin()
    return ctx.queue_monitor.workers()
