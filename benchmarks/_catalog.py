"""A throwaway catalog for one benchmark run: its own catalog database, queue and KEYRING on the
servers the environment names; everything it provisioned is dropped at the end."""
from __future__ import annotations

import base64
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import sql
from rq import Queue
from sqlalchemy import make_url, text

from control_plane.bootstrap import build_context, dispose, redis_client
from control_plane.catalog.db import create_catalog_engine, upgrade_catalog
from control_plane.services.context import ServiceContext
from control_plane.services.servers import ensure_default_server
from control_plane.settings import Settings


def admin_connection(dbname: str | None = None) -> psycopg.Connection:
    kwargs = {"dbname": dbname} if dbname else {}
    return psycopg.connect(os.environ["TENANT_DB_ADMIN_URL"], autocommit=True, **kwargs)


@contextmanager
def throwaway_catalog(name: str, *, pool_size: int = 5, **env: str) -> Iterator[ServiceContext]:
    """Sets the settings in os.environ (workers started inside inherit them) and yields a context."""
    admin_url = os.environ["TENANT_DB_ADMIN_URL"]
    tag = uuid.uuid4().hex[:8]
    catalog_db = f"bench_{name}_catalog_{tag}"
    with admin_connection() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(catalog_db)))
    os.environ.update({
        "CATALOG_DATABASE_URL": make_url(admin_url).set(database=catalog_db).render_as_string(hide_password=False),
        "BACKUP_STORE_URL": os.environ.get("BACKUP_STORE_URL") or f"file:///tmp/bench-backups-{tag}",
        "KEYRING": f"bench:{base64.b64encode(os.urandom(32)).decode()}",
        "QUEUE_NAME": f"bench-{name}-{tag}",
        **env,
    })
    engine = create_catalog_engine(os.environ["CATALOG_DATABASE_URL"])
    upgrade_catalog(engine)
    engine.dispose()
    ctx = build_context(Settings.from_env(), pool_size=pool_size)
    try:
        ensure_default_server(ctx)
        yield ctx
    finally:
        with ctx.sessions() as session:
            tenants = session.execute(text("SELECT database_name, role_name FROM tenants")).all()
            retired = session.execute(text("SELECT database_name FROM retired_databases")).scalars().all()
        Queue(ctx.settings.queue_name, connection=redis_client(ctx.settings)).empty()
        dispose(ctx)
        with admin_connection() as conn:
            for database in [*retired, *(database for database, _ in tenants), catalog_db]:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            for _, role in tenants:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
