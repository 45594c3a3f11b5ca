"""Alembic environment of the tenant schema: runs against the connection it is handed.

Callers (tenant_migrations.migrate) put a SQLAlchemy Connection in
``config.attributes["connection"]``; the ``alembic`` command line instead gives a
URL with ``-x url=...`` or ``TENANT_DATABASE_URL``. Offline mode (``--sql``)
renders PostgreSQL SQL and needs no database.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection, make_url

URL_ENV_VAR = "TENANT_DATABASE_URL"

config = context.config
handed_connection = config.attributes.get("connection")

# Only the command line configures logging: a process that hands us a
# connection (API, worker) owns its logging setup and must not have it replaced.
if config.config_file_name is not None and handed_connection is None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)

# Arguments common to online and offline mode.
# transaction_per_migration: each revision commits on its own, so a failing
# revision rolls back alone (PostgreSQL DDL is transactional) and the tenant
# stays at the previous revision instead of at base.
# There is no target_metadata: revisions are written by hand (no autogenerate),
# the schema belongs to the tenant application, not to this repository's models.
COMMON_OPTIONS = {
    "transaction_per_migration": True,
    "target_metadata": None,
}


def _url_from_command_line() -> str | None:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get(URL_ENV_VAR)
    if not url:
        return None
    parsed = make_url(url)
    # psycopg 3 is the project's driver; a bare postgresql:// would make
    # SQLAlchemy look for psycopg2, which is not installed.
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (or the config's output buffer) instead of running it."""
    url = _url_from_command_line()
    options: dict[str, object] = {"url": url} if url else {"dialect_name": "postgresql"}
    context.configure(literal_binds=True, **options, **COMMON_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def _run_on(connection: Connection) -> None:
    context.configure(connection=connection, **COMMON_OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    if handed_connection is not None:
        if not isinstance(handed_connection, Connection):
            raise TypeError(
                'config.attributes["connection"] must be a sqlalchemy.engine.Connection, '
                f"not {type(handed_connection).__name__}"
            )
        _run_on(handed_connection)
        return

    url = _url_from_command_line()
    if url is None:
        # CommandError: the alembic CLI prints it as "FAILED: ..." and exits 1.
        raise CommandError(
            "tenant_migrations: no tenant database given. Pass "
            "`-x url=postgresql+psycopg://user@host:port/tenant_<id>_db` or set "
            f"{URL_ENV_VAR} (or use --sql to only print the SQL)."
        )
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            _run_on(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
