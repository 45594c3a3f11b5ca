"""catalog: server drains (a run with one item per tenant moved off the server)

Revision ID: 0006_drain_runs
Revises: 0005_server_load
Create Date: 2026-11-30 03:10:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0006_drain_runs'
down_revision = '0005_server_load'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('drain_runs',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('server_name', sa.String(length=63), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=True),
    sa.Column('concurrency', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('running', 'succeeded', 'failed', 'cancelled', name='drain_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('actor', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_drain_runs_server_name'), 'drain_runs', ['server_name'], unique=False)
    op.create_index(op.f('ix_drain_runs_status'), 'drain_runs', ['status'], unique=False)
    op.create_table('drain_items',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('run_id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.Enum('pending', 'moving', 'moved', 'failed', 'skipped', name='drain_item_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('operation_id', sa.String(length=36), nullable=True),
    sa.Column('target_server', sa.String(length=63), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['drain_runs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('run_id', 'tenant_id', name='uq_drain_items_tenant')
    )
    op.create_index(op.f('ix_drain_items_run_id'), 'drain_items', ['run_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_drain_items_run_id'), table_name='drain_items')
    op.drop_table('drain_items')
    op.drop_index(op.f('ix_drain_runs_status'), table_name='drain_runs')
    op.drop_index(op.f('ix_drain_runs_server_name'), table_name='drain_runs')
    op.drop_table('drain_runs')
