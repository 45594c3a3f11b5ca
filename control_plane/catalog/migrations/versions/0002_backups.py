"""catalog: backups, tenant backup keys, backup policies, retired databases

Revision ID: 0002_backups
Revises: 0001
Create Date: 2026-11-29 10:05:00.000000
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0002_backups'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('backup_policies',
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('keep_last', sa.Integer(), nullable=False),
    sa.Column('keep_daily_days', sa.Integer(), nullable=False),
    sa.Column('scheduled', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id')
    )
    op.create_table('backups',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('operation_id', sa.String(length=36), nullable=True),
    sa.Column('status', sa.Enum('running', 'completed', 'failed', 'expired', 'deleted', name='backup_status', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('trigger', sa.Enum('manual', 'scheduled', 'pre-delete', 'pre-restore', 'pre-migrate', name='backup_trigger', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('store_url', sa.Text(), nullable=False),
    sa.Column('object_prefix', sa.Text(), nullable=False),
    sa.Column('schema_revision', sa.String(length=64), nullable=True),
    sa.Column('server_version', sa.String(length=32), nullable=True),
    sa.Column('pg_dump_version', sa.String(length=32), nullable=True),
    sa.Column('format_version', sa.Integer(), nullable=True),
    sa.Column('archive_bytes', sa.BigInteger(), nullable=True),
    sa.Column('stored_bytes', sa.BigInteger(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=True),
    sa.Column('tenant_key_id', sa.String(length=40), nullable=True),
    sa.Column('keyring_key_id', sa.String(length=64), nullable=True),
    sa.Column('manifest', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('completed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_backups_operation_id'), 'backups', ['operation_id'], unique=False)
    op.create_index('ix_backups_tenant_status_completed', 'backups', ['tenant_id', 'status', 'completed_at'], unique=False)
    op.create_table('retired_databases',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('server_name', sa.String(length=63), nullable=False),
    sa.Column('database_name', sa.String(length=63), nullable=False),
    sa.Column('operation_id', sa.String(length=36), nullable=True),
    sa.Column('retired_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('drop_after', sa.DateTime(timezone=True), nullable=False),
    sa.Column('dropped_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_retired_databases_tenant_id'), 'retired_databases', ['tenant_id'], unique=False)
    op.create_table('tenant_backup_keys',
    sa.Column('tenant_id', sa.String(length=40), nullable=False),
    sa.Column('key_id', sa.String(length=40), nullable=False),
    sa.Column('wrapped_key', sa.Text(), nullable=True),
    sa.Column('keyring_key_id', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('rotated_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('destroyed_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('tenant_id')
    )


def downgrade() -> None:
    op.drop_table('tenant_backup_keys')
    op.drop_index(op.f('ix_retired_databases_tenant_id'), table_name='retired_databases')
    op.drop_table('retired_databases')
    op.drop_index('ix_backups_tenant_status_completed', table_name='backups')
    op.drop_index(op.f('ix_backups_operation_id'), table_name='backups')
    op.drop_table('backups')
    op.drop_table('backup_policies')
