"""Catalog tables, their state enums, and the state transitions that guard them."""
from __future__ import annotations

import enum
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (JSON, BigInteger, Boolean, Computed, DateTime, Enum, ForeignKey, Index, Integer, String,
                        Text, UniqueConstraint)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.sql.expression import true
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, query_expression, relationship

from control_plane.errors import IllegalTransitionError, TenantLockedError


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return str(uuid.uuid4())


def _enum(cls: type[enum.Enum], name: str, constraint: bool = True) -> Enum:
    # Stored by value in a VARCHAR with a CHECK constraint: adding a state needs no ALTER TYPE.
    return Enum(cls, name=name, native_enum=False, create_constraint=constraint, length=32,
                values_callable=lambda members: [m.value for m in members], validate_strings=True)


_json = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    pass


class TenantStatus(str, enum.Enum):
    PROVISIONING = "provisioning"
    ACTIVE = "active"
    SUSPENDED = "suspended"
    MIGRATING = "migrating"
    RESTORING = "restoring"
    MOVING = "moving"
    DELETING = "deleting"
    DELETED = "deleted"
    FAILED = "failed"


class OperationKind(str, enum.Enum):
    """Kinds of work. Each has one object in control_plane/services/kinds/ (see that package's docstring)."""

    PROVISION = "provision"
    MIGRATE = "migrate"
    DELETE = "delete"
    BACKUP = "backup"
    RESTORE = "restore"
    MOVE = "move"
    DRILL = "drill"
    UNDELETE = "undelete"


class OperationStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELLED)


class ServerStatus(str, enum.Enum):
    ACTIVE = "active"
    DRAINING = "draining"


class TokenRole(str, enum.Enum):
    SUPER_ADMIN = "super_admin"
    TENANT_ADMIN = "tenant_admin"


class DatabaseServer(Base):
    __tablename__ = "database_servers"

    name: Mapped[str] = mapped_column(String(63), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    # The admin DSN (with its password) encrypted with the KEYRING; never stored or shown in clear.
    admin_url_encrypted: Mapped[str] = mapped_column(Text)
    # The admin URL's libpq TLS options (sslmode, sslrootcert, ...), in clear: every connection to this
    # server carries them, the tenant runtime's included (it cannot decrypt the admin URL).
    tls: Mapped[dict[str, str]] = mapped_column(_json, default=dict)
    status: Mapped[ServerStatus] = mapped_column(_enum(ServerStatus, "server_status"), default=ServerStatus.ACTIVE)
    max_tenants: Mapped[int | None] = mapped_column(Integer)
    # Capacity on size (None: unbounded); connections are bounded by the server's own max_connections.
    max_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Health and load as the sweeper last saw them (services.servers.check_servers).
    reachable: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    checked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    check_error: Mapped[str | None] = mapped_column(Text)
    max_connections: Mapped[int | None] = mapped_column(Integer)
    connections: Mapped[int | None] = mapped_column(Integer)
    database_bytes: Mapped[int | None] = mapped_column(BigInteger)

    @property
    def health(self) -> str:
        """`unreachable` when the last check failed, else the status an operator set (active, draining)."""
        return "unreachable" if not self.reachable else self.status.value

    def drain(self) -> None:
        self.status = ServerStatus.DRAINING

    def undrain(self) -> None:
        self.status = ServerStatus.ACTIVE


# What each action may start from. The tenant's status doubles as its work mutex: an action that
# starts a job moves the tenant into a busy status, so a second job cannot start beside it.
_TENANT_TRANSITIONS: dict[str, tuple[frozenset[TenantStatus], TenantStatus]] = {
    "activate": (frozenset({TenantStatus.PROVISIONING, TenantStatus.MIGRATING, TenantStatus.RESTORING,
                            TenantStatus.MOVING, TenantStatus.ACTIVE}), TenantStatus.ACTIVE),
    "suspend": (frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED}), TenantStatus.SUSPENDED),
    "resume": (frozenset({TenantStatus.SUSPENDED, TenantStatus.ACTIVE}), TenantStatus.ACTIVE),
    "migrate": (frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED}), TenantStatus.MIGRATING),
    "restore": (frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED}), TenantStatus.RESTORING),
    "move": (frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MOVING}), TenantStatus.MOVING),
    "delete": (frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.FAILED,
                          TenantStatus.DELETING}), TenantStatus.DELETING),
    "mark_deleted": (frozenset({TenantStatus.DELETING, TenantStatus.DELETED}), TenantStatus.DELETED),
    "fail": (frozenset({TenantStatus.PROVISIONING, TenantStatus.DELETING, TenantStatus.RESTORING,
                        TenantStatus.MOVING, TenantStatus.MIGRATING, TenantStatus.FAILED}), TenantStatus.FAILED),
    # Reconcile found the tenant's database missing on its server, whatever the tenant was doing.
    "lose_database": (frozenset({TenantStatus.ACTIVE, TenantStatus.SUSPENDED, TenantStatus.MIGRATING,
                                 TenantStatus.RESTORING, TenantStatus.MOVING, TenantStatus.FAILED}), TenantStatus.FAILED),
    "retry_provisioning": (frozenset({TenantStatus.FAILED, TenantStatus.PROVISIONING}), TenantStatus.PROVISIONING),
    # A failed tenant whose lost database was restored from a verified backup (fleet recover) serves again.
    "recover_database": (frozenset({TenantStatus.FAILED}), TenantStatus.ACTIVE),
}

# Statuses that only an operation holds: when it ends, the tenant leaves them for its settled status.
BUSY_STATUSES = frozenset({TenantStatus.PROVISIONING, TenantStatus.MIGRATING, TenantStatus.RESTORING,
                           TenantStatus.MOVING, TenantStatus.DELETING})


class Tenant(Base):
    __tablename__ = "tenants"
    # Listing in creation order; the search (`q`, ILIKE '%...%') through a trigram index on search_text
    # (not on id itself: the planner would then pick it for equality lookups too, far slower than the key).
    __table_args__ = (
        Index("ix_tenants_created_at_id", "created_at", "id"),
        Index("ix_tenants_search_text_trgm", "search_text", postgresql_using="gin",
              postgresql_ops={"search_text": "gin_trgm_ops"}),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    plan: Mapped[str] = mapped_column(String(50), ForeignKey("plans.name"), default="standard")
    status: Mapped[TenantStatus] = mapped_column(_enum(TenantStatus, "tenant_status"), index=True)
    server_name: Mapped[str | None] = mapped_column(ForeignKey("database_servers.name"), index=True)
    database_name: Mapped[str] = mapped_column(String(63))
    role_name: Mapped[str] = mapped_column(String(63))
    # Random per-tenant login password, encrypted with the KEYRING (format carries the key id).
    role_password_encrypted: Mapped[str] = mapped_column(Text)
    schema_revision: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, onupdate=utcnow)
    last_backup_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    search_text: Mapped[str] = mapped_column(Text, Computed("(id::text || ' ') || name::text", persisted=True))
    # 0, 80 or 100: the share of its plan's storage quota the sweeper last saw (services.quotas).
    storage_quota_level: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The tenant's work slot: the unfinished operation that changes it. One at a time; reads never wait.
    operation_id: Mapped[str | None] = mapped_column(String(36))
    # The tenant's RPO in hours, where a read asks for it (services.rpo.with_rpo_hours); None otherwise.
    rpo_hours: Mapped[int | None] = query_expression()

    domain_rows: Mapped[list["TenantDomain"]] = relationship(
        back_populates="tenant", cascade="all, delete-orphan", order_by="TenantDomain.domain", lazy="selectin")
    server: Mapped[DatabaseServer | None] = relationship(lazy="selectin")

    @property
    def domains(self) -> list[str]:
        return [row.domain for row in self.domain_rows]

    def set_domains(self, domains: list[str]) -> None:
        wanted = list(dict.fromkeys(domains))
        kept = [row for row in self.domain_rows if row.domain in wanted]
        have = {row.domain for row in kept}
        self.domain_rows = kept + [TenantDomain(domain=d) for d in wanted if d not in have]

    def _transition(self, action: str) -> None:
        allowed, target = _TENANT_TRANSITIONS[action]
        if self.status not in allowed:
            raise IllegalTransitionError("tenant", self.id, self.status.value, action.replace("_", " "))
        self.status = target

    def begin_work(self, action: str, allowed: frozenset[TenantStatus], busy: TenantStatus | None) -> None:
        """Start a kind of work: refuse (409) from a status it may not start from; enter its busy status."""
        if self.status not in allowed:
            raise IllegalTransitionError("tenant", self.id, self.status.value, action)
        if busy is not None:
            self.status = busy

    def return_to(self, status: TenantStatus) -> None:
        """Work ended: leave the busy status for the one the work settles on (or came from)."""
        if self.status is not status and self.status not in BUSY_STATUSES:
            raise IllegalTransitionError("tenant", self.id, self.status.value, f"return to {status.value}")
        self.status = status

    def take_slot(self, operation_id: str, holder_unfinished: bool) -> None:
        """Hold the work slot for `operation_id`; `holder_unfinished` says whether its current holder still runs."""
        if self.operation_id not in (None, operation_id) and holder_unfinished:
            raise TenantLockedError(self.id, self.operation_id)
        self.operation_id = operation_id

    def release_slot(self, operation_id: str) -> None:
        if self.operation_id == operation_id:
            self.operation_id = None

    def activate(self) -> None:
        self._transition("activate")

    def suspend(self) -> None:
        self._transition("suspend")

    def resume(self) -> None:
        self._transition("resume")

    def begin_migration(self) -> None:
        self._transition("migrate")

    def begin_restore(self) -> None:
        self._transition("restore")

    def begin_move(self) -> None:
        self._transition("move")

    def begin_deletion(self) -> None:
        self._transition("delete")

    def mark_deleted(self) -> None:
        self._transition("mark_deleted")
        self.deleted_at = utcnow()
        self.domain_rows = []

    def come_back(self, status: TenantStatus, domains: list[str]) -> None:
        """Undeleted: the status and domains the tenant had before its deletion (from the busy status)."""
        self.return_to(status)
        self.deleted_at = None
        self.set_domains(domains)

    def fail(self) -> None:
        self._transition("fail")

    def lose_database(self) -> None:
        self._transition("lose_database")

    def retry_provisioning(self) -> None:
        self._transition("retry_provisioning")

    def recover_database(self) -> None:
        self._transition("recover_database")


class TenantDomain(Base):
    """One row per domain: the primary key makes a domain unique across all tenants."""

    __tablename__ = "tenant_domains"
    __table_args__ = (Index("ix_tenant_domains_domain_trgm", "domain", postgresql_using="gin",
                            postgresql_ops={"domain": "gin_trgm_ops"}),)

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    tenant: Mapped[Tenant] = relationship(back_populates="domain_rows")


class Operation(Base):
    __tablename__ = "operations"
    __table_args__ = (UniqueConstraint("requested_by", "idempotency_key", name="uq_operations_idempotency"),
                      # A tenant's operations, newest first (the console's tenant page), without a walk
                      # through everyone's (migration 0007).
                      Index("ix_operations_tenant_id_created_at", "tenant_id", "created_at"))

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # No CHECK constraint: the kinds' registry validates it, so adding a kind needs no catalog migration.
    kind: Mapped[OperationKind] = mapped_column(_enum(OperationKind, "operation_kind", constraint=False))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"), index=True)
    status: Mapped[OperationStatus] = mapped_column(_enum(OperationStatus, "operation_status"), index=True,
                                                    default=OperationStatus.QUEUED)
    step: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(_json, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(_json)
    # A secret shown to the caller exactly once (a generated admin password), encrypted until then.
    one_time_secret_encrypted: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    requested_by: Mapped[str | None] = mapped_column(String(100))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The tenant status to go back to when the work ends without settling elsewhere (failure, cancel).
    return_status: Mapped[TenantStatus | None] = mapped_column(_enum(TenantStatus, "operation_return_status"))
    # Set by a cancel request on a running operation: it stops at its next step boundary.
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # When the sweeper runs it again by itself (its worker died and its kind is safe to repeat).
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def _guard(self, action: str, *allowed: OperationStatus) -> None:
        if self.status not in allowed:
            raise IllegalTransitionError("operation", self.id, self.status.value, action)

    def start(self) -> None:
        self._guard("start", OperationStatus.QUEUED, OperationStatus.RUNNING)
        self.status = OperationStatus.RUNNING
        self.attempts += 1
        self.started_at = self.started_at or utcnow()
        self.heartbeat_at = utcnow()
        self.error = None

    def report(self, step: str, progress: int) -> None:
        self.step = step
        self.progress = progress
        self.heartbeat_at = utcnow()

    def succeed(self, result: dict[str, Any] | None = None) -> None:
        self._guard("succeed", OperationStatus.RUNNING)
        self.status = OperationStatus.SUCCEEDED
        self.progress = 100
        self.result = result or {}
        self.finished_at = utcnow()

    def fail(self, error: str) -> None:
        self._guard("fail", OperationStatus.QUEUED, OperationStatus.RUNNING)
        self.status = OperationStatus.FAILED
        self.error = error
        self.finished_at = utcnow()

    def cancel(self, reason: str = "cancelled") -> None:
        self._guard("cancel", OperationStatus.QUEUED, OperationStatus.RUNNING)
        self.status = OperationStatus.CANCELLED
        self.error = reason
        self.finished_at = utcnow()

    def request_cancel(self) -> None:
        self._guard("cancel", OperationStatus.RUNNING)
        self.cancel_requested_at = self.cancel_requested_at or utcnow()

    def requeue(self) -> None:
        self._guard("retry", OperationStatus.FAILED)
        self.status = OperationStatus.QUEUED
        self.error = None
        self.finished_at = None
        self.cancel_requested_at = None
        self.retry_at = None


class RequestKey(Base):
    """An Idempotency-Key used on a POST that restarts or stops work (retry, cancel, resume): the same key
    with the same request answers the current state again; with another request, 422. Kept 24 hours."""

    __tablename__ = "request_keys"

    requested_by: Mapped[str] = mapped_column(String(100), primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), primary_key=True)
    request_fingerprint: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[TokenRole] = mapped_column(_enum(TokenRole, "token_role"))
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id"))
    # SHA-256 of the token: tokens are 256-bit random, so a fast hash cannot be brute-forced.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # None: never expires (tokens created before expiry existed, or created with --expires-in never).
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def revoke(self, now: datetime) -> bool:
        """Revoke the token; False when it already was (revocation is idempotent)."""
        if self.revoked_at is not None:
            return False
        self.revoked_at = now
        return True


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str | None] = mapped_column(String(40), index=True)
    operation_id: Mapped[str | None] = mapped_column(String(36))
    details: Mapped[dict[str, Any]] = mapped_column(_json, default=dict)

