"""Shared fixtures: a throwaway catalog on a real PostgreSQL server, real Redis, a real RQ worker.

Needs TENANT_DB_ADMIN_URL (a role with CREATEDB and CREATEROLE) and REDIS_URL in the environment;
`./scripts/test` starts private servers and sets both.
"""
from __future__ import annotations

import base64
import os
import uuid
from typing import Iterator

import psycopg
import pytest
import redis
from psycopg import sql
from rq import Queue
from sqlalchemy import make_url

from control_plane.app import create_app
from control_plane.bootstrap import build_context, dispose
from control_plane.catalog.db import create_catalog_engine, upgrade_catalog
from control_plane.catalog import backup_models, migration_run_models  # noqa: F401 (their tables join the metadata)
from control_plane.catalog.models import Base, TokenRole
from control_plane.jobs.worker import build_worker
from control_plane.naming import TEMPLATE_OWNER_ROLE, TEMPLATE_PREFIX, queue_names
from control_plane.services.auth import create_token
from control_plane.settings import Settings

pytest_plugins = ["live_support"]


# Every catalog table but the servers (the default one stays registered) and the plans: what each test's clean-up empties.
# Plans too: `standard` stays (the clean-up deletes the others).
RESET_TABLES = [table.name for table in Base.metadata.sorted_tables if table.name not in ("database_servers", "plans")]


def _require(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.exit(f"{name} is not set: run the suite with ./scripts/test", returncode=2)
    return value


def admin_connect(url: str, dbname: str | None = None) -> psycopg.Connection:
    kwargs = {"autocommit": True}
    if dbname:
        kwargs["dbname"] = dbname
    return psycopg.connect(url, **kwargs)


@pytest.fixture(scope="session")
def admin_url() -> str:
    return _require("TENANT_DB_ADMIN_URL")


@pytest.fixture(scope="session")
def settings(admin_url: str, tmp_path_factory) -> Iterator[Settings]:
    """A fresh catalog database for this session, at head through its Alembic migrations."""
    redis_url = _require("REDIS_URL")
    catalog_db = f"cp_test_catalog_{uuid.uuid4().hex[:8]}"
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(catalog_db)))
    catalog_url = make_url(admin_url).set(database=catalog_db).render_as_string(hide_password=False)
    env = {
        "CATALOG_DATABASE_URL": catalog_url,
        "REDIS_URL": redis_url,
        "TENANT_DB_ADMIN_URL": admin_url,
        "BACKUP_STORE_URL": f"file://{tmp_path_factory.mktemp('backups')}",
        "KEYRING": f"test1:{base64.b64encode(os.urandom(32)).decode()}",
        "QUEUE_NAME": f"test-{uuid.uuid4().hex[:8]}",
        # Off for the suite (every provisioning would refill pools); tests/test_warm_pool.py turns it on.
        "WARM_POOL_SIZE": "0",
    }
    saved = {name: os.environ.get(name) for name in env}
    # Jobs build their settings from the environment inside the forked work horse, like in production.
    os.environ.update(env)
    engine = create_catalog_engine(catalog_url)
    upgrade_catalog(engine)
    engine.dispose()
    yield Settings.from_env()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    with admin_connect(admin_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(catalog_db)))
    drop_templates(admin_url)


def drop_templates(admin_url: str) -> None:
    """Provisioning builds template databases on first use; remove them with the session."""
    with admin_connect(admin_url) as conn:
        for (name,) in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE %s",
                                    (TEMPLATE_PREFIX.replace("_", r"\_") + "%",)).fetchall():
            conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(TEMPLATE_OWNER_ROLE)))


@pytest.fixture(scope="session")
def ctx(settings: Settings):
    context = build_context(settings)
    yield context
    dispose(context)


@pytest.fixture(scope="session")
def app(ctx):
    return create_app(ctx=ctx)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def super_token(ctx) -> str:
    return create_token(ctx, TokenRole.SUPER_ADMIN, "tests")[1]


@pytest.fixture
def auth(super_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {super_token}"}


@pytest.fixture(scope="session")
def redis_conn(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis_url)


@pytest.fixture
def run_jobs(settings: Settings, redis_conn: redis.Redis):
    """Run every queued job with the project's forking RQ worker in burst mode (returns when the queue is empty)."""
    def run() -> None:
        build_worker(settings).work(burst=True, logging_level="WARNING")
    return run


@pytest.fixture(autouse=True)
def clean_world(request):
    """After each test: drop every tenant database and role the catalog knows, then empty the catalog."""
    uses_catalog = "settings" in request.fixturenames
    if uses_catalog:
        settings, redis_conn = request.getfixturevalue("settings"), request.getfixturevalue("redis_conn")
        admin_url = settings.tenant_db_admin_url
    yield
    if not uses_catalog:
        return
    with admin_connect(settings.catalog_database_url) as catalog:
        names = catalog.execute("SELECT database_name, role_name FROM tenants").fetchall()
        catalog.execute(sql.SQL("TRUNCATE {} CASCADE").format(sql.SQL(", ").join(map(sql.Identifier, RESET_TABLES))))
        catalog.execute("DELETE FROM plans WHERE name <> 'standard'")
        catalog.execute("DELETE FROM database_servers WHERE name <> 'default'")
    with admin_connect(admin_url) as conn:
        for database, role in names:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            drop_role_and_its_databases(conn, role)
    for name in queue_names(settings.queue_name):
        Queue(name, connection=redis_conn).empty()


def drop_role_and_its_databases(conn, role: str) -> None:
    """Drop every database `role` owns (a deleted tenant's retired one, restore scratch ones), then the role."""
    for (owned,) in conn.execute("SELECT d.datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba "
                                 "WHERE r.rolname = %s", (role,)).fetchall():
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(owned)))
    conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
