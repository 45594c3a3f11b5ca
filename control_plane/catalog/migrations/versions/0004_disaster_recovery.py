"""catalog: backup copies, RPO per tenant, restore drills

Revision ID: 0004_disaster_recovery
Revises: 0003_migration_runs
Create Date: 2026-11-30 02:45:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0004_disaster_recovery'
down_revision = '0003_migration_runs'
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('backup_copies',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('backup_id', sa.String(length=36), nullable=False),
    sa.Column('store_url', sa.Text(), nullable=False),
    sa.Column('status', sa.Enum('running', 'completed', 'failed', 'expired', 'deleted', name='backup_copy_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('method', sa.String(length=16), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['backup_id'], ['backups.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_backup_copies_backup_id'), 'backup_copies', ['backup_id'], unique=False)
    op.add_column('backup_policies', sa.Column('rpo_hours', sa.Integer(), server_default='24', nullable=False))
    op.create_table('restore_drills',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('operation_id', sa.String(length=36), nullable=True),
    sa.Column('backup_id', sa.String(length=36), nullable=True),
    sa.Column('result', sa.Enum('running', 'passed', 'failed', name='drill_result', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('source', sa.String(length=16), nullable=True),
    sa.Column('server_name', sa.String(length=63), nullable=True),
    sa.Column('backup_completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('rpo_seconds', sa.Float(), nullable=True),
    sa.Column('rto_seconds', sa.Float(), nullable=True),
    sa.Column('details', _json, nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_restore_drills_tenant_started', 'restore_drills', ['tenant_id', 'started_at'], unique=False)
    op.create_index(op.f('ix_restore_drills_operation_id'), 'restore_drills', ['operation_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_restore_drills_operation_id'), table_name='restore_drills')
    op.drop_index('ix_restore_drills_tenant_started', table_name='restore_drills')
    op.drop_table('restore_drills')
    op.drop_column('backup_policies', 'rpo_hours')
    op.drop_index(op.f('ix_backup_copies_backup_id'), table_name='backup_copies')
    op.drop_table('backup_copies')
