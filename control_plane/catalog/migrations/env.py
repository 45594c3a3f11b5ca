"""Alembic environment of the CATALOG schema; the engine is handed in by `upgrade_catalog`."""
from alembic import context

from control_plane.catalog.models import Base
import control_plane.catalog.migration_run_models  # noqa: F401  (registers its tables on Base.metadata)
import control_plane.catalog.backup_models  # noqa: F401  (registers its tables on Base.metadata)
import control_plane.catalog.drain_models  # noqa: F401  (registers its tables on Base.metadata)
import control_plane.catalog.plan_models  # noqa: F401  (registers its tables on Base.metadata)

config = context.config
engine = config.attributes["engine"]

with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
    with context.begin_transaction():
        # Two processes upgrading at once (several API replicas starting) queue behind this lock.
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7413920501)")
        context.run_migrations()
