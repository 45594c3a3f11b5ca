"""The weekly restore drill of every active tenant, each at its own time in the week (a scheduler tick)."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from control_plane.catalog.models import Operation, Tenant, TenantStatus, utcnow
from control_plane.errors import ConflictError, TenantNotFoundError
from control_plane.services.backup_schedule import SCHEDULER, latest_periodic_slot
from control_plane.services.context import ServiceContext
from control_plane.services.kinds.drill import request_drill

log = logging.getLogger(__name__)


DRILL_PERIOD = timedelta(days=7)


def schedule_due_drills(ctx: ServiceContext, now: datetime | None = None, limit: int = 20) -> list[str]:
    """Start the weekly drill of every active tenant whose slot has come (each at its own offset in the
    week, so a fleet's drills are spread out); at most `limit` per tick, earliest slot first."""
    now = now or utcnow()
    with ctx.sessions() as session:
        tenants = session.execute(select(Tenant.id, Tenant.created_at)
                                  .where(Tenant.status == TenantStatus.ACTIVE)).all()
        due = sorted((slot, tenant_id, f"scheduled-drill:{tenant_id}:{slot:%Y-%m-%dT%H:%M}")
                     for tenant_id, created_at in tenants
                     for slot in [latest_periodic_slot(f"drill:{tenant_id}", DRILL_PERIOD, now)]
                     if created_at <= slot)
        keys = [key for _, _, key in due]
        done = set(session.scalars(select(Operation.idempotency_key).where(
            Operation.requested_by == SCHEDULER.token_id, Operation.idempotency_key.in_(keys)))) if keys else set()
    started: list[str] = []
    for _, tenant_id, key in due:
        if key in done:
            continue
        if len(started) >= limit:
            break
        try:
            started.append(request_drill(ctx, SCHEDULER, tenant_id, idempotency_key=key).id)
        except (ConflictError, TenantNotFoundError) as exc:  # busy: the next tick tries again
            log.info("tenant %s: scheduled drill not started: %s", tenant_id, exc.detail)
        except IntegrityError:
            continue  # another scheduler replica started it a moment ago
    return started
