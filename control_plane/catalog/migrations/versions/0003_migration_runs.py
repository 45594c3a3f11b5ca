"""catalog: bulk migration runs and their per-tenant items

Revision ID: 0003_migration_runs
Revises: 0002_backups
Create Date: 2026-11-29 09:53:52.037821
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0003_migration_runs'
down_revision = '0002_backups'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('migration_runs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('target', sa.String(length=64), nullable=False),
    sa.Column('target_revision', sa.String(length=64), nullable=False),
    sa.Column('selection', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('canary', sa.Integer(), nullable=False),
    sa.Column('max_failures', sa.Integer(), nullable=False),
    sa.Column('backup_first', sa.Boolean(), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('lock_timeout_ms', sa.Integer(), nullable=False),
    sa.Column('statement_timeout_ms', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('queued', 'running', 'succeeded', 'failed', 'cancelled', name='migration_run_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('total', sa.Integer(), nullable=False),
    sa.Column('pending', sa.Integer(), nullable=False),
    sa.Column('queued', sa.Integer(), nullable=False),
    sa.Column('running', sa.Integer(), nullable=False),
    sa.Column('succeeded', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('skipped', sa.Integer(), nullable=False),
    sa.Column('requested_by', sa.String(length=100), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancelled_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('requested_by', 'idempotency_key', name='uq_migration_runs_idempotency')
    )
    op.create_index(op.f('ix_migration_runs_created_at'), 'migration_runs', ['created_at'], unique=False)
    op.create_index(op.f('ix_migration_runs_status'), 'migration_runs', ['status'], unique=False)
    op.create_table('migration_run_items',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('canary', sa.Boolean(), nullable=False),
    sa.Column('status', sa.Enum('pending', 'queued', 'running', 'succeeded', 'failed', 'skipped', name='migration_run_item_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('from_revision', sa.String(length=64), nullable=True),
    sa.Column('to_revision', sa.String(length=64), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('skip_reason', sa.Text(), nullable=True),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('dispatch_token', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('backup', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('duration_seconds', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['migration_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'tenant_id', name='uq_migration_run_items_tenant')
    )
    op.create_index('ix_migration_run_items_run_status', 'migration_run_items', ['run_id', 'status'], unique=False)
    op.create_index(op.f('ix_migration_run_items_tenant_id'), 'migration_run_items', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_migration_run_items_tenant_id'), table_name='migration_run_items')
    op.drop_index('ix_migration_run_items_run_status', table_name='migration_run_items')
    op.drop_table('migration_run_items')
    op.drop_index(op.f('ix_migration_runs_status'), table_name='migration_runs')
    op.drop_index(op.f('ix_migration_runs_created_at'), table_name='migration_runs')
    op.drop_table('migration_runs')
