"""Catalog tables of server drains: one row per run, one per tenant moved off the server.

Every change to a run's items happens with the run row locked (SELECT ... FOR UPDATE): the concurrency
bound and the end of the run are decided by one writer at a time whatever the number of workers.
"""
from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.catalog.models import Base, _enum, new_id, utcnow


class DrainStatus(str, enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class DrainItemStatus(str, enum.Enum):
    PENDING = "pending"
    MOVING = "moving"  # its move operation was requested; counts against the concurrency bound
    MOVED = "moved"
    FAILED = "failed"
    SKIPPED = "skipped"  # the tenant left the server another way (deleted, moved by hand)


class DrainRun(Base):
    __tablename__ = "drain_runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    server_name: Mapped[str] = mapped_column(String(63), index=True)
    mode: Mapped[str | None] = mapped_column(String(16))  # online, offline, or None: each move chooses
    concurrency: Mapped[int] = mapped_column(Integer)
    status: Mapped[DrainStatus] = mapped_column(_enum(DrainStatus, "drain_status"), index=True,
                                                default=DrainStatus.RUNNING)
    error: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    items: Mapped[list["DrainItem"]] = relationship(back_populates="run", order_by="DrainItem.tenant_id",
                                                    lazy="selectin", cascade="all, delete-orphan")

    def counts(self) -> dict[str, int]:
        counts = {status.value: 0 for status in DrainItemStatus}
        for item in self.items:
            counts[item.status.value] += 1
        return {**counts, "total": len(self.items)}


class DrainItem(Base):
    __tablename__ = "drain_items"
    __table_args__ = (UniqueConstraint("run_id", "tenant_id", name="uq_drain_items_tenant"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    run_id: Mapped[str] = mapped_column(ForeignKey("drain_runs.id", ondelete="CASCADE"), index=True)
    tenant_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[DrainItemStatus] = mapped_column(_enum(DrainItemStatus, "drain_item_status"),
                                                    default=DrainItemStatus.PENDING)
    operation_id: Mapped[str | None] = mapped_column(String(36))
    target_server: Mapped[str | None] = mapped_column(String(63))
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    run: Mapped[DrainRun] = relationship(back_populates="items")
