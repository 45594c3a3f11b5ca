"""catalog: trigram indexes for the tenant search (`q` over id, name and domains); tenants by creation,
a tenant's operations by creation

Revision ID: 0007_tenant_search
Revises: 0006_drain_runs
Create Date: 2026-11-30 03:10:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0007_tenant_search'
down_revision = '0006_drain_runs'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # GIN trigram indexes serve ILIKE '%q%'; pg_trgm is a trusted extension (PostgreSQL 13+): the catalog
    # database's owner may create it. One generated column for id and name together (a trigram index on
    # id itself would tempt the planner to use it for equality lookups too, far slower than the key).
    op.execute('CREATE EXTENSION IF NOT EXISTS pg_trgm')
    op.add_column('tenants', sa.Column('search_text', sa.Text(),
                                       sa.Computed("(id::text || ' ') || name::text", persisted=True)))
    op.create_index('ix_tenants_search_text_trgm', 'tenants', ['search_text'], postgresql_using='gin',
                    postgresql_ops={'search_text': 'gin_trgm_ops'})
    op.create_index('ix_tenant_domains_domain_trgm', 'tenant_domains', ['domain'], postgresql_using='gin',
                    postgresql_ops={'domain': 'gin_trgm_ops'})
    op.create_index('ix_tenants_created_at_id', 'tenants', ['created_at', 'id'])
    op.create_index('ix_operations_tenant_id_created_at', 'operations', ['tenant_id', 'created_at'])


def downgrade() -> None:
    op.drop_index('ix_operations_tenant_id_created_at', table_name='operations')
    op.drop_index('ix_tenants_created_at_id', table_name='tenants')
    op.drop_index('ix_tenant_domains_domain_trgm', table_name='tenant_domains')
    op.drop_index('ix_tenants_search_text_trgm', table_name='tenants')
    op.drop_column('tenants', 'search_text')
    # The extension stays: other objects may use it, and it holds no data.
