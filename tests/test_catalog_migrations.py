"""The catalog schema: one linear history that upgrades from empty, downgrades to empty, and matches the models."""
from __future__ import annotations

import uuid

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from psycopg import sql
from sqlalchemy import inspect, make_url

from control_plane.catalog.db import alembic_config, create_catalog_engine, upgrade_catalog
from control_plane.catalog.models import Base
from conftest import admin_connect


def test_catalog_history_is_linear_and_round_trips(admin_url):
    name = f"cp_test_history_{uuid.uuid4().hex[:8]}"
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    engine = create_catalog_engine(make_url(admin_url).set(database=name).render_as_string(hide_password=False))
    try:
        config = alembic_config(engine)
        assert len(ScriptDirectory.from_config(config).get_heads()) == 1
        upgrade_catalog(engine)
        with engine.connect() as conn:
            # The models and the migrations describe the same schema.
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        command.downgrade(config, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade_catalog(engine)
        assert "tenants" in inspect(engine).get_table_names()
    finally:
        engine.dispose()
        with admin_connect(admin_url) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
