"""catalog: a backup policy's rpo_hours may be unset (NULL): the tenant's plan's backup_rpo_hours applies

Revision ID: 0011_plan_rpo
Revises: 0010_operation_engine
Create Date: 2026-11-30 05:50:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0011_plan_rpo'
down_revision = '0010_operation_engine'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column('backup_policies', 'rpo_hours', existing_type=sa.Integer(), nullable=True, server_default=None)
    # 24 was the column's default, written into every policy row whoever set it; until now a plan's RPO was
    # never used, so a stored 24 means "the default": let the plan's RPO (else 24) apply to it.
    op.execute("UPDATE backup_policies SET rpo_hours = NULL WHERE rpo_hours = 24")


def downgrade() -> None:
    op.execute("UPDATE backup_policies SET rpo_hours = 24 WHERE rpo_hours IS NULL")
    op.alter_column('backup_policies', 'rpo_hours', existing_type=sa.Integer(), nullable=False, server_default='24')
