"""Retention: which completed backups a tenant's policy keeps (services.pruning deletes the rest).

A policy keeps the last N completed backups plus the newest backup of each UTC day for D days. A
backup with an explicit `expires_at` is kept until then, whatever the policy. A deleted tenant keeps
nothing by count: its backups (the final one included) go once the daily window has passed them.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Iterable, Protocol
from urllib.parse import urlparse

from sqlalchemy.orm import Session

from control_plane.catalog.backup_models import BackupPolicy
from control_plane.services.context import ServiceContext
from control_plane.services.rpo import rpo_of


@dataclass(frozen=True)
class Policy:
    keep_last: int
    keep_daily_days: int
    scheduled: bool = True
    rpo_hours: int = 24  # recovery point objective: the newest backup must be younger than this
    rpo_source: str = "default"  # where rpo_hours comes from: the tenant's own policy, its plan, or the default


def default_policy(store_url: str) -> Policy:
    """The reference deployment's habit: daily backups kept 7 days on local disk, 90 days in S3."""
    return Policy(keep_last=7, keep_daily_days=90 if urlparse(store_url).scheme == "s3" else 7)


def policy_of(ctx: ServiceContext, session: Session, tenant_id: str) -> Policy:
    """The tenant's policy; its RPO by the precedence in services.rpo (own policy, plan, default)."""
    rpo_hours, rpo_source = rpo_of(session, tenant_id)
    row = session.get(BackupPolicy, tenant_id)
    if row is None:
        return replace(default_policy(ctx.settings.backup_store_url), rpo_hours=rpo_hours, rpo_source=rpo_source)
    return Policy(row.keep_last, row.keep_daily_days, row.scheduled, rpo_hours, rpo_source)


class _Dated(Protocol):
    id: str
    completed_at: datetime | None
    expires_at: datetime | None


def retained_ids(backups: Iterable[_Dated], policy: Policy, now: datetime, tenant_deleted: bool = False) -> set[str]:
    """The ids, among completed backups, that the policy keeps at `now`."""
    keep: set[str] = set()
    managed = []
    for backup in sorted(backups, key=lambda b: (b.completed_at, b.id), reverse=True):
        if backup.expires_at is not None:
            if backup.expires_at > now:
                keep.add(backup.id)
        else:
            managed.append(backup)
    keep.update(b.id for b in managed[:0 if tenant_deleted else policy.keep_last])
    horizon = now - timedelta(days=policy.keep_daily_days)
    days: set = set()
    for backup in managed:  # newest first: the first seen of each day is that day's newest
        if backup.completed_at <= horizon:
            break
        day = backup.completed_at.astimezone(timezone.utc).date()
        if day not in days:
            days.add(day)
            keep.add(backup.id)
    return keep
