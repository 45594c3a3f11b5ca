"""Catalog tables of the backup feature: backups and their copies, tenant backup keys, retention policies,
retired databases, restore drills.

No foreign key points at `tenants` or `operations`: backups outlive the rows they came from (a deleted
tenant's final backup, an operation history that is trimmed), and are found by tenant id.
"""
from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from control_plane.catalog.models import Base, _enum, _json, new_id, utcnow
from control_plane.errors import IllegalTransitionError


class BackupStatus(str, enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    EXPIRED = "expired"   # pruned by the retention policy: objects deleted
    DELETED = "deleted"   # purged with its tenant (crypto-shredded): objects deleted


class BackupTrigger(str, enum.Enum):
    MANUAL = "manual"
    SCHEDULED = "scheduled"
    PRE_DELETE = "pre-delete"
    PRE_RESTORE = "pre-restore"
    PRE_MIGRATE = "pre-migrate"


class Backup(Base):
    __tablename__ = "backups"
    __table_args__ = (Index("ix_backups_tenant_status_completed", "tenant_id", "status", "completed_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(40))  # indexed first in ix_backups_tenant_status_completed
    operation_id: Mapped[str | None] = mapped_column(String(36), index=True)
    status: Mapped[BackupStatus] = mapped_column(_enum(BackupStatus, "backup_status"), default=BackupStatus.RUNNING)
    trigger: Mapped[BackupTrigger] = mapped_column(_enum(BackupTrigger, "backup_trigger"))
    # Where the objects are: the store's URL when the backup was taken (BACKUP_STORE_URL may change later)
    # and the backup's folder under it, `<tenant_id>/<backup_id>/`.
    store_url: Mapped[str] = mapped_column(Text)
    object_prefix: Mapped[str] = mapped_column(Text)
    schema_revision: Mapped[str | None] = mapped_column(String(64))
    server_version: Mapped[str | None] = mapped_column(String(32))
    pg_dump_version: Mapped[str | None] = mapped_column(String(32))
    format_version: Mapped[int | None] = mapped_column(Integer)
    archive_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the pg_dump archive, before compression
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)   # the data object as stored
    sha256: Mapped[str | None] = mapped_column(String(64))         # of the data object as stored
    tenant_key_id: Mapped[str | None] = mapped_column(String(40))
    keyring_key_id: Mapped[str | None] = mapped_column(String(64))  # KEYRING key wrapping the tenant key then
    manifest: Mapped[dict[str, Any] | None] = mapped_column(_json)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # An explicit expiry (a manual backup kept N days) overrides the tenant's retention policy.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the objects were deleted (expired, purged, or a failed attempt's leftovers).
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # Second copies (BACKUP_COPY_STORE_URL), each with its own status and retention.
    copies: Mapped[list["BackupCopy"]] = relationship(back_populates="backup", lazy="selectin",
                                                      order_by="BackupCopy.created_at")

    @property
    def location(self) -> str:
        return f"{self.store_url.rstrip('/')}/{self.object_prefix}"

    @property
    def usable_copies(self) -> list["BackupCopy"]:
        return [copy for copy in self.copies if copy.status is CopyStatus.COMPLETED]

    def _require(self, allowed: set[BackupStatus], action: str) -> None:
        if self.status not in allowed:
            raise IllegalTransitionError("backup", self.id, self.status.value, action)

    def complete(self, manifest: dict[str, Any], completed_at: datetime) -> None:
        self._require({BackupStatus.RUNNING}, "complete")
        self.status = BackupStatus.COMPLETED
        self.manifest = manifest
        self.completed_at = completed_at
        self.error = None

    def fail(self, error: str) -> None:
        self._require({BackupStatus.RUNNING, BackupStatus.FAILED}, "fail")
        self.status = BackupStatus.FAILED
        self.error = error

    def expire(self) -> None:
        self._require({BackupStatus.COMPLETED, BackupStatus.EXPIRED}, "expire")
        self.status = BackupStatus.EXPIRED

    def mark_deleted(self) -> None:
        self._require(set(BackupStatus) - {BackupStatus.RUNNING}, "delete")
        self.status = BackupStatus.DELETED

    @property
    def restorable(self) -> bool:
        """Completed, or expired from the primary store while its copy is still kept (a longer retention)."""
        return self.status is BackupStatus.COMPLETED or (self.status is BackupStatus.EXPIRED and bool(self.usable_copies))


class CopyStatus(str, enum.Enum):
    RUNNING = "running"
    COMPLETED = "completed"   # copied and its SHA-256 read back from the copy store matches the backup's
    FAILED = "failed"
    EXPIRED = "expired"       # the copy store's retention no longer keeps it: objects deleted
    DELETED = "deleted"       # purged with its tenant


class BackupCopy(Base):
    """A backup's objects in another store (BACKUP_COPY_STORE_URL when it was copied), same folder."""

    __tablename__ = "backup_copies"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    backup_id: Mapped[str] = mapped_column(ForeignKey("backups.id", ondelete="CASCADE"), index=True)
    store_url: Mapped[str] = mapped_column(Text)
    status: Mapped[CopyStatus] = mapped_column(_enum(CopyStatus, "backup_copy_status"), default=CopyStatus.RUNNING)
    method: Mapped[str | None] = mapped_column(String(16))  # server-side or streamed
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    backup: Mapped[Backup] = relationship(back_populates="copies", lazy="joined")

    @property
    def location(self) -> str:
        return f"{self.store_url.rstrip('/')}/{self.backup.object_prefix}"


class TenantBackupKey(Base):
    """The per-tenant key that wraps each backup's data key; itself wrapped by a KEYRING key.

    Destroying it (`wrapped_key` NULL) makes every backup of the tenant unreadable: crypto-shredding.
    """

    __tablename__ = "tenant_backup_keys"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), default=lambda: "tk-" + new_id().replace("-", "")[:16])
    wrapped_key: Mapped[str | None] = mapped_column(Text)
    keyring_key_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @property
    def destroyed(self) -> bool:
        return self.wrapped_key is None

    def rewrap(self, wrapped_key: str, keyring_key_id: str) -> None:
        if self.destroyed:
            raise IllegalTransitionError("tenant backup key", self.tenant_id, "destroyed", "rotate")
        self.wrapped_key = wrapped_key
        self.keyring_key_id = keyring_key_id
        self.rotated_at = utcnow()

    def destroy(self) -> None:
        self.wrapped_key = None
        self.keyring_key_id = None
        self.destroyed_at = self.destroyed_at or utcnow()


class BackupPolicy(Base):
    """A tenant's retention (keep the last N, plus the newest of each day for D days) and schedule switch.

    Tenants without a row use the defaults of their backup store (see services.retention).
    """

    __tablename__ = "backup_policies"

    tenant_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    keep_last: Mapped[int] = mapped_column(Integer)
    keep_daily_days: Mapped[int] = mapped_column(Integer)
    scheduled: Mapped[bool] = mapped_column(Boolean, default=True)
    # Recovery point objective: the newest completed backup must never be older than this. None: the
    # tenant's plan's backup_rpo_hours applies, else 24 (services.rpo).
    rpo_hours: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)


class RetiredDatabase(Base):
    """A database an in-place restore swapped out, kept under a dated name until `drop_after`."""

    __tablename__ = "retired_databases"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(40), index=True)
    server_name: Mapped[str] = mapped_column(String(63))
    database_name: Mapped[str] = mapped_column(String(63))
    operation_id: Mapped[str | None] = mapped_column(String(36))
    retired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    drop_after: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    dropped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DrillResult(str, enum.Enum):
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"


class RestoreDrill(Base):
    """One restore drill: a tenant's newest backup restored into a scratch database and checked.

    `rpo_seconds` is the backup's age when drilled (the recovery point achieved), `rto_seconds` the time
    from the start of the download to a checked database (the recovery time achieved).
    """

    __tablename__ = "restore_drills"
    __table_args__ = (Index("ix_restore_drills_tenant_started", "tenant_id", "started_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(String(40))
    operation_id: Mapped[str | None] = mapped_column(String(36), index=True)
    backup_id: Mapped[str | None] = mapped_column(String(36))
    result: Mapped[DrillResult] = mapped_column(_enum(DrillResult, "drill_result"), default=DrillResult.RUNNING)
    reason: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(String(16))  # primary or copy
    server_name: Mapped[str | None] = mapped_column(String(63))
    backup_completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    rpo_seconds: Mapped[float | None] = mapped_column(Float)
    rto_seconds: Mapped[float | None] = mapped_column(Float)
    details: Mapped[dict[str, Any] | None] = mapped_column(_json)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
