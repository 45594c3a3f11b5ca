"""Plans: named sets of per-tenant limits, applied to each tenant's database role."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, DateTime, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from control_plane.catalog.models import Base, utcnow

DEFAULT_PLAN = "standard"


class Plan(Base):
    __tablename__ = "plans"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    description: Mapped[str | None] = mapped_column(String(200))
    # Sessions the tenant's role may hold on its server (all app replicas together); None: no limit.
    connection_limit: Mapped[int | None] = mapped_column(Integer)
    statement_timeout_ms: Mapped[int | None] = mapped_column(Integer)
    idle_in_transaction_timeout_ms: Mapped[int | None] = mapped_column(Integer)
    # Watched, not enforced by PostgreSQL: events at 80% and 100%, a metric and an alert.
    storage_quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # The newest completed backup should never be older than this.
    backup_rpo_hours: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)

    def role_limits(self) -> "RoleLimits":
        return RoleLimits(connection_limit=self.connection_limit, statement_timeout_ms=self.statement_timeout_ms,
                          idle_in_transaction_timeout_ms=self.idle_in_transaction_timeout_ms)


class RoleLimits:
    """What PostgreSQL enforces on a tenant's role: its connection limit and per-session timeouts (None: none)."""

    def __init__(self, connection_limit: int | None = None, statement_timeout_ms: int | None = None,
                 idle_in_transaction_timeout_ms: int | None = None) -> None:
        self.connection_limit = connection_limit
        self.statement_timeout_ms = statement_timeout_ms
        self.idle_in_transaction_timeout_ms = idle_in_transaction_timeout_ms

    def settings(self) -> dict[str, int | None]:
        """Role-level settings (`ALTER ROLE ... SET`), None meaning RESET."""
        return {"statement_timeout": self.statement_timeout_ms,
                "idle_in_transaction_session_timeout": self.idle_in_transaction_timeout_ms}

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, RoleLimits) and vars(self) == vars(other)

    def __repr__(self) -> str:
        return f"RoleLimits({vars(self)})"
