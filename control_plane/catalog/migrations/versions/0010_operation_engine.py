"""catalog: the tenant's work slot, an operation's return status, cancel request and automatic retry; kinds unconstrained

Revision ID: 0010_operation_engine
Revises: 0009_plans
Create Date: 2026-11-30 02:50:00
"""
from alembic import op
import sqlalchemy as sa

revision = '0010_operation_engine'
down_revision = '0009_plans'
branch_labels = None
depends_on = None

_STATUSES = ('provisioning', 'active', 'suspended', 'migrating', 'restoring', 'moving', 'deleting', 'deleted', 'failed')
_KINDS = ('provision', 'migrate', 'delete', 'backup', 'restore', 'move')


def upgrade() -> None:
    op.add_column('tenants', sa.Column('operation_id', sa.String(length=36), nullable=True))
    op.add_column('operations', sa.Column('return_status', sa.Enum(*_STATUSES, name='operation_return_status',
                                                                   native_enum=False, create_constraint=True,
                                                                   length=32), nullable=True))
    op.add_column('operations', sa.Column('cancel_requested_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('operations', sa.Column('retry_at', sa.DateTime(timezone=True), nullable=True))
    op.create_table('request_keys',
    sa.Column('requested_by', sa.String(length=100), nullable=False),
    sa.Column('idempotency_key', sa.String(length=200), nullable=False),
    sa.Column('request_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('requested_by', 'idempotency_key')
    )
    # The kinds' registry validates an operation's kind: a new kind needs no migration.
    op.drop_constraint('operation_kind', 'operations', type_='check')
    op.execute("UPDATE operations SET return_status = params->>'previous_status' "
               "WHERE params ? 'previous_status'")
    # Unfinished work holds its tenant's slot (the newest one, should there be several).
    op.execute("UPDATE tenants t SET operation_id = o.id FROM (SELECT DISTINCT ON (tenant_id) tenant_id, id "
               "FROM operations WHERE status IN ('queued', 'running') ORDER BY tenant_id, created_at DESC) o "
               "WHERE o.tenant_id = t.id")


def downgrade() -> None:
    op.create_check_constraint('operation_kind', 'operations', sa.column('kind').in_(_KINDS))
    op.drop_table('request_keys')
    op.drop_column('operations', 'retry_at')
    op.drop_column('operations', 'cancel_requested_at')
    op.drop_column('operations', 'return_status')
    op.drop_column('tenants', 'operation_id')
