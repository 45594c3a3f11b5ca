"""The catalog: what tenants, servers and operations exist, in PostgreSQL (SQLAlchemy 2 + Alembic)."""

# Plans live in their own module; tenants.plan refers to them, so they belong to the same metadata as soon
# as any catalog module is imported (here rather than at the bottom of models.py: no import cycle).
from control_plane.catalog import plan_models  # noqa: E402,F401
