"""The tenant schema as SQLAlchemy 2 ORM models: declared once, used on every tenant's connection.

The revisions in versions/ own the schema (hand-written, no autogenerate); these models mirror their
head for applications (tests compare the two). Constraints, indexes and server defaults live in the
database; the models declare what the ORM needs: columns, keys, relationships, server-filled columns.
Imports no Alembic: tenant applications use these models with the light install.
"""
from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy import BigInteger, DateTime, ForeignKey, ForeignKeyConstraint, Identity, Numeric, Text, func, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NOW = func.now()


class TenantBase(DeclarativeBase):
    """Base of the tenant schema's models (not the catalog's)."""

    type_annotation_map = {str: Text(), datetime: DateTime(timezone=True)}


def _id() -> Mapped[int]:
    return mapped_column(BigInteger, Identity(), primary_key=True)


def _timestamp() -> Mapped[datetime]:
    return mapped_column(server_default=NOW)


class User(TenantBase):
    __tablename__ = "users"

    id: Mapped[int] = _id()
    email: Mapped[str]
    password_hash: Mapped[str | None]  # None while an invited user has none
    name: Mapped[str]
    role: Mapped[str] = mapped_column(server_default="user")
    status: Mapped[str] = mapped_column(server_default="active")
    created_at: Mapped[datetime] = _timestamp()
    updated_at: Mapped[datetime] = _timestamp()


class Pipeline(TenantBase):
    __tablename__ = "pipelines"

    id: Mapped[int] = _id()
    name: Mapped[str]
    position: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[datetime] = _timestamp()

    stages: Mapped[list[PipelineStage]] = relationship(
        back_populates="pipeline", order_by="PipelineStage.position", cascade="all, delete-orphan",
        passive_deletes=True)


class PipelineStage(TenantBase):
    __tablename__ = "pipeline_stages"

    id: Mapped[int] = _id()
    pipeline_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("pipelines.id", ondelete="CASCADE"))
    name: Mapped[str]
    position: Mapped[int]
    created_at: Mapped[datetime] = _timestamp()

    pipeline: Mapped[Pipeline] = relationship(back_populates="stages")


class Lead(TenantBase):
    __tablename__ = "leads"
    # A lead's stage belongs to the lead's pipeline (composite key onto pipeline_stages).
    __table_args__ = (ForeignKeyConstraint(["pipeline_id", "stage_id"],
                                           ["pipeline_stages.pipeline_id", "pipeline_stages.id"]),)

    id: Mapped[int] = _id()
    full_name: Mapped[str]
    email: Mapped[str | None]
    phone: Mapped[str | None]
    source: Mapped[str | None]
    pipeline_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("pipelines.id"))
    stage_id: Mapped[int | None] = mapped_column(BigInteger)
    owner_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="SET NULL"))
    notes: Mapped[str | None]
    score: Mapped[int] = mapped_column(server_default=text("0"))
    created_at: Mapped[datetime] = _timestamp()
    updated_at: Mapped[datetime] = _timestamp()

    messages: Mapped[list[Message]] = relationship(back_populates="lead", order_by="Message.id",
                                                   passive_deletes=True)
    appointments: Mapped[list[Appointment]] = relationship(back_populates="lead", order_by="Appointment.starts_at",
                                                           passive_deletes=True)


class Message(TenantBase):
    __tablename__ = "messages"

    id: Mapped[int] = _id()
    lead_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("leads.id", ondelete="CASCADE"))
    direction: Mapped[str]
    channel: Mapped[str]
    body: Mapped[str | None]
    media_url: Mapped[str | None]
    status: Mapped[str] = mapped_column(server_default="queued")
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = _timestamp()

    lead: Mapped[Lead] = relationship(back_populates="messages")


class Procedure(TenantBase):
    __tablename__ = "procedures"

    id: Mapped[int] = _id()
    name: Mapped[str]
    duration_minutes: Mapped[int]
    price: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    active: Mapped[bool] = mapped_column(server_default=text("true"))
    created_at: Mapped[datetime] = _timestamp()


class Appointment(TenantBase):
    __tablename__ = "appointments"

    id: Mapped[int] = _id()
    lead_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("leads.id", ondelete="CASCADE"))
    procedure_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("procedures.id", ondelete="RESTRICT"))
    doctor_id: Mapped[int | None] = mapped_column(BigInteger, ForeignKey("users.id", ondelete="SET NULL"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(server_default="scheduled")
    notes: Mapped[str | None]
    created_at: Mapped[datetime] = _timestamp()

    lead: Mapped[Lead] = relationship(back_populates="appointments")
    procedure: Mapped[Procedure | None] = relationship()
