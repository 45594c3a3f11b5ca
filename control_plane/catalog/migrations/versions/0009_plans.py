"""catalog: plans as records (per-tenant limits); tenants.plan refers to one

Revision ID: 0009_plans
Revises: 0008_security
Create Date: 2026-11-30 03:10:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0009_plans'
down_revision = '0008_security'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('plans',
    sa.Column('name', sa.String(length=50), nullable=False),
    sa.Column('description', sa.String(length=200), nullable=True),
    sa.Column('connection_limit', sa.Integer(), nullable=True),
    sa.Column('statement_timeout_ms', sa.Integer(), nullable=True),
    sa.Column('idle_in_transaction_timeout_ms', sa.Integer(), nullable=True),
    sa.Column('storage_quota_bytes', sa.BigInteger(), nullable=True),
    sa.Column('backup_rpo_hours', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    # The default plan, and every label tenants already carry, become plans without limits.
    op.execute("INSERT INTO plans (name, description, created_at, updated_at) "
               "VALUES ('standard', 'the default plan', now(), now())")
    op.execute("INSERT INTO plans (name, created_at, updated_at) "
               "SELECT DISTINCT plan, now(), now() FROM tenants WHERE plan <> 'standard'")
    op.create_foreign_key('tenants_plan_fkey', 'tenants', 'plans', ['plan'], ['name'])
    op.add_column('tenants', sa.Column('storage_quota_level', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('tenants', 'storage_quota_level')
    op.drop_constraint('tenants_plan_fkey', 'tenants', type_='foreignkey')
    op.drop_table('plans')
