"""Clinic CRM: users, pipelines and their stages, leads, messages, procedures.

Revision ID: 0001_clinic_crm
Revises:
Create Date: 2025-11-29

Every constraint and index is named explicitly so later revisions can refer to
them by name whatever SQLAlchemy's naming rules become.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_clinic_crm"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USER_ROLES = ("admin", "manager", "doctor", "receptionist", "user")
USER_STATUSES = ("active", "invited", "disabled")
MESSAGE_DIRECTIONS = ("inbound", "outbound")
MESSAGE_CHANNELS = ("whatsapp", "email", "sms", "instagram", "phone")
MESSAGE_STATUSES = ("queued", "sent", "delivered", "read", "failed")


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _id() -> sa.Column:
    return sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True)


def _timestamp(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now())


def upgrade() -> None:
    op.create_table(
        "users",
        _id(),
        sa.Column("email", sa.Text(), nullable=False),
        # NULL while an invited user has not chosen a password yet.
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False, server_default="user"),
        sa.Column("status", sa.Text(), nullable=False, server_default="active"),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        sa.CheckConstraint(_in("role", USER_ROLES), name="ck_users_role"),
        sa.CheckConstraint(_in("status", USER_STATUSES), name="ck_users_status"),
        # Deliberately loose: real validation belongs to the application.
        sa.CheckConstraint("strpos(email, '@') > 1", name="ck_users_email"),
    )
    # Case-insensitive uniqueness without the citext extension (creating an
    # extension needs privileges a tenant role does not have). seed() uses this
    # index as its ON CONFLICT arbiter.
    op.create_index("ux_users_email_lower", "users", [sa.text("lower(email)")], unique=True)

    op.create_table(
        "pipelines",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False, server_default=sa.text("0")),
        _timestamp("created_at"),
        sa.UniqueConstraint("name", name="uq_pipelines_name"),
        sa.CheckConstraint("position >= 0", name="ck_pipelines_position"),
    )

    op.create_table(
        "pipeline_stages",
        _id(),
        sa.Column(
            "pipeline_id",
            sa.BigInteger(),
            sa.ForeignKey("pipelines.id", ondelete="CASCADE", name="fk_pipeline_stages_pipeline"),
            nullable=False,
        ),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        _timestamp("created_at"),
        sa.CheckConstraint("position >= 0", name="ck_pipeline_stages_position"),
        # DEFERRABLE (checked at the end of each statement, or of the
        # transaction after SET CONSTRAINTS ... DEFERRED) so stages can be
        # reordered with `SET position = position + 1` or swapped in place.
        sa.UniqueConstraint(
            "pipeline_id",
            "position",
            name="uq_pipeline_stages_position",
            deferrable=True,
            initially="IMMEDIATE",
        ),
        sa.UniqueConstraint("pipeline_id", "name", name="uq_pipeline_stages_name"),
        # Target of the composite foreign key from leads (stage within pipeline).
        sa.UniqueConstraint("pipeline_id", "id", name="uq_pipeline_stages_pipeline_id_id"),
    )

    op.create_table(
        "leads",
        _id(),
        sa.Column("full_name", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("phone", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=True),
        sa.Column(
            "pipeline_id",
            sa.BigInteger(),
            sa.ForeignKey("pipelines.id", name="fk_leads_pipeline"),
            nullable=True,
        ),
        sa.Column("stage_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "owner_id",
            sa.BigInteger(),
            sa.ForeignKey("users.id", ondelete="SET NULL", name="fk_leads_owner"),
            nullable=True,
        ),
        sa.Column("notes", sa.Text(), nullable=True),
        _timestamp("created_at"),
        _timestamp("updated_at"),
        # A lead's stage must belong to the lead's pipeline.
        sa.ForeignKeyConstraint(
            ["pipeline_id", "stage_id"],
            ["pipeline_stages.pipeline_id", "pipeline_stages.id"],
            name="fk_leads_stage",
        ),
        # MATCH SIMPLE skips the composite key when pipeline_id is NULL.
        sa.CheckConstraint("stage_id IS NULL OR pipeline_id IS NOT NULL", name="ck_leads_stage_needs_pipeline"),
    )
    op.create_index("ix_leads_pipeline_id", "leads", ["pipeline_id"])
    op.create_index("ix_leads_stage_id", "leads", ["stage_id"])
    op.create_index("ix_leads_owner_id", "leads", ["owner_id"])
    op.create_index("ix_leads_created_at", "leads", ["created_at"])
    op.create_index("ix_leads_email_lower", "leads", [sa.text("lower(email)")])

    op.create_table(
        "messages",
        _id(),
        sa.Column(
            "lead_id",
            sa.BigInteger(),
            sa.ForeignKey("leads.id", ondelete="CASCADE", name="fk_messages_lead"),
            nullable=False,
        ),
        sa.Column("direction", sa.Text(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=True),
        sa.Column("media_url", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False, server_default="queued"),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        _timestamp("created_at"),
        sa.CheckConstraint(_in("direction", MESSAGE_DIRECTIONS), name="ck_messages_direction"),
        sa.CheckConstraint(_in("channel", MESSAGE_CHANNELS), name="ck_messages_channel"),
        sa.CheckConstraint(_in("status", MESSAGE_STATUSES), name="ck_messages_status"),
        sa.CheckConstraint("body IS NOT NULL OR media_url IS NOT NULL", name="ck_messages_content"),
    )
    op.create_index("ix_messages_lead_id_created_at", "messages", ["lead_id", "created_at"])

    op.create_table(
        "procedures",
        _id(),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False, server_default=sa.true()),
        _timestamp("created_at"),
        sa.UniqueConstraint("name", name="uq_procedures_name"),
        sa.CheckConstraint("duration_minutes > 0", name="ck_procedures_duration"),
        sa.CheckConstraint("price >= 0", name="ck_procedures_price"),
    )


def downgrade() -> None:
    # Reverse dependency order; indexes and constraints go with their tables.
    op.drop_table("procedures")
    op.drop_table("messages")
    op.drop_table("leads")
    op.drop_table("pipeline_stages")
    op.drop_table("pipelines")
    op.drop_table("users")
