"""catalog: API tokens expire; servers keep their TLS options in clear

Revision ID: 0008_security
Revises: 0007_tenant_search
Create Date: 2026-11-30 03:00:00
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0008_security'
down_revision = '0007_tenant_search'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('api_tokens', sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('database_servers', sa.Column(
        'tls', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
        nullable=False, server_default=sa.text("'{}'")))
    # Existing servers get their options from their admin URL on the next `tenantctl servers set-url`
    # or, for `default`, at the first start (ensure_default_server fills an empty one).
    op.alter_column('database_servers', 'tls', server_default=None)


def downgrade() -> None:
    op.drop_column('database_servers', 'tls')
    op.drop_column('api_tokens', 'expires_at')
