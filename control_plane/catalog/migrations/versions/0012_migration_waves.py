"""catalog: staged waves, health gates and rollback of bulk migration runs

Revision ID: 0012_migration_waves
Revises: 0011_plan_rpo
Create Date: 2026-11-30 06:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0012_migration_waves'
down_revision = '0011_plan_rpo'
branch_labels = None
depends_on = None

_json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.add_column('migration_runs', sa.Column('kind', sa.String(length=16), nullable=False, server_default='migrate'))
    op.add_column('migration_runs', sa.Column('rollback_of', sa.String(length=36), nullable=True))
    op.create_foreign_key('fk_migration_runs_rollback_of', 'migration_runs', 'migration_runs', ['rollback_of'], ['id'],
                          ondelete='CASCADE')
    op.create_index('uq_migration_runs_rollback_of', 'migration_runs', ['rollback_of'], unique=True)
    op.add_column('migration_runs', sa.Column('waves', _json, nullable=True))
    op.add_column('migration_runs', sa.Column('health_check', sa.Text(), nullable=True))
    op.add_column('migration_runs', sa.Column('check_timeout_ms', sa.Integer(), nullable=False, server_default='5000'))
    op.add_column('migration_runs', sa.Column('current_wave', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('migration_runs', sa.Column('wave_status', sa.String(length=16), nullable=True))
    op.add_column('migration_runs', sa.Column('wave_ready_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('migration_runs', sa.Column('stopped_by', sa.String(length=16), nullable=True))
    op.add_column('migration_runs', sa.Column('rollback_on_failure', sa.Boolean(), nullable=False,
                                              server_default=sa.false()))
    op.add_column('migration_run_items', sa.Column('wave', sa.Integer(), nullable=False, server_default='0'))
    op.add_column('migration_run_items', sa.Column('target_revision', sa.String(length=64), nullable=True))
    op.add_column('migration_run_items', sa.Column('rollback_method', sa.String(length=16), nullable=True))
    op.add_column('migration_run_items', sa.Column('operation_id', sa.String(length=36), nullable=True))
    op.add_column('migration_run_items', sa.Column('check_result', _json, nullable=True))
    # Existing canary runs: their canaries were the first wave.
    op.execute("UPDATE migration_run_items SET wave = 1 WHERE NOT canary AND run_id IN "
               "(SELECT id FROM migration_runs WHERE canary > 0)")


def downgrade() -> None:
    for column in ('check_result', 'operation_id', 'rollback_method', 'target_revision', 'wave'):
        op.drop_column('migration_run_items', column)
    op.drop_index('uq_migration_runs_rollback_of', table_name='migration_runs')
    op.drop_constraint('fk_migration_runs_rollback_of', 'migration_runs', type_='foreignkey')
    for column in ('rollback_on_failure', 'stopped_by', 'wave_ready_at', 'wave_status', 'current_wave',
                   'check_timeout_ms', 'health_check', 'waves', 'rollback_of', 'kind'):
        op.drop_column('migration_runs', column)
