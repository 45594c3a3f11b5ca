"""The catalog: what tenants, servers and operations exist, in PostgreSQL (SQLAlchemy 2 + Alembic)."""
