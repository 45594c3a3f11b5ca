"""Appointments, and a 0..100 score on leads backfilled from existing data.

Revision ID: 0002_appointments_lead_score
Revises: 0001_clinic_crm
Create Date: 2025-11-29

Score backfill: +40 if the lead has an email, +30 if it has a phone, +30 if it
has sent at least one inbound message. The UPDATE rewrites only leads whose
score is not 0, and locks the leads table for the (short) revision
transaction; tenant databases are small enough for that.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_appointments_lead_score"
down_revision: str | Sequence[str] | None = "0001_clinic_crm"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

APPOINTMENT_STATUSES = ("scheduled", "confirmed", "completed", "cancelled", "no_show")

SCORE_BACKFILL = """
UPDATE leads
SET score = computed.score
FROM (
    SELECT l.id,
           LEAST(100,
                 CASE WHEN NULLIF(btrim(l.email), '') IS NOT NULL THEN 40 ELSE 0 END
               + CASE WHEN NULLIF(btrim(l.phone), '') IS NOT NULL THEN 30 ELSE 0 END
               + CASE WHEN EXISTS (
                     SELECT 1 FROM messages m
                     WHERE m.lead_id = l.id AND m.direction = 'inbound'
                 ) THEN 30 ELSE 0 END
           ) AS score
    FROM leads l
) AS computed
WHERE leads.id = computed.id AND computed.score <> leads.score
"""


def upgrade() -> None:
    op.create_table(
        "appointments",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "lead_id",
            sa.BigInteger(),
            # An erased lead takes its appointments with it, like its messages.
            sa.ForeignKey("leads.id", ondelete="CASCADE", name="fk_appointments_lead"),
            nullable=False,
        ),
        sa.Column(
            "procedure_id",
            sa.BigInteger(),
            # Procedures are retired with active = false, not deleted.
            sa.ForeignKey("procedures.id", ondelete="RESTRICT", name="fk_appointments_procedure"),
            nullable=True,
        ),
        sa.Column(
            "doctor_id",
            sa.BigInteger(),
            sa.ForeignKey("users.id", ondelete="SET NULL", name="fk_appointments_doctor"),
            nullable=True,
        ),
        sa.Column("starts_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status", sa.Text(), nullable=False, server_default="scheduled"),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint("ends_at > starts_at", name="ck_appointments_period"),
        sa.CheckConstraint(
            f"status IN ({', '.join(repr(s) for s in APPOINTMENT_STATUSES)})",
            name="ck_appointments_status",
        ),
    )
    op.create_index("ix_appointments_doctor_id_starts_at", "appointments", ["doctor_id", "starts_at"])
    op.create_index("ix_appointments_lead_id", "appointments", ["lead_id"])

    # A constant default makes ADD COLUMN metadata-only (no table rewrite).
    op.add_column("leads", sa.Column("score", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.create_check_constraint("ck_leads_score", "leads", "score BETWEEN 0 AND 100")
    op.execute(SCORE_BACKFILL)


def downgrade() -> None:
    op.drop_constraint("ck_leads_score", "leads", type_="check")
    op.drop_column("leads", "score")
    op.drop_table("appointments")
