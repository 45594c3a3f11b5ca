"""catalog: database servers' capacity on size, and their health and load as last checked

Revision ID: 0005_server_load
Revises: 0004_disaster_recovery
Create Date: 2026-11-30 03:00:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0005_server_load'
down_revision = '0004_disaster_recovery'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('database_servers', sa.Column('max_size_bytes', sa.BigInteger(), nullable=True))
    op.add_column('database_servers', sa.Column('reachable', sa.Boolean(), server_default=sa.true(), nullable=False))
    op.add_column('database_servers', sa.Column('checked_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('database_servers', sa.Column('check_error', sa.Text(), nullable=True))
    op.add_column('database_servers', sa.Column('max_connections', sa.Integer(), nullable=True))
    op.add_column('database_servers', sa.Column('connections', sa.Integer(), nullable=True))
    op.add_column('database_servers', sa.Column('database_bytes', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for column in ('database_bytes', 'connections', 'max_connections', 'check_error', 'checked_at', 'reachable',
                   'max_size_bytes'):
        op.drop_column('database_servers', column)
