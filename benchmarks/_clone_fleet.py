"""A fleet of N tenants at one revision, made cheaply for benchmarks: template clones and bulk catalog rows.

Not the provisioning path (that is benchmarks/provision.py): one template database at the revision,
then per tenant a role, a clone (CREATE DATABASE ... TEMPLATE) handed to the role as provisioning
does, and the catalog rows inserted in one statement. The rows are written before the databases, so
throwaway_catalog's clean-up finds whatever was made even if the set-up stops half-way.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from psycopg import sql
from sqlalchemy import insert, select

import tenant_migrations
from control_plane.adapters.crypto import random_password
from control_plane.catalog.models import DatabaseServer, Tenant, TenantStatus
from control_plane.naming import database_name, role_name
from control_plane.services.context import ServiceContext, role_secret_context
from control_plane.services.servers import DEFAULT_SERVER

ALEMBIC_INI = Path(tenant_migrations.PACKAGE_DIR) / "alembic.ini"
SETUP_THREADS = 4


@dataclass(frozen=True)
class FleetTenant:
    id: str
    database: str
    role: str
    password: str


@dataclass(frozen=True)
class Fleet:
    host: str
    port: int
    tenants: list[FleetTenant]
    template: str


def clone_fleet(ctx: ServiceContext, ids: list[str], revision: str) -> Fleet:
    """N active tenants of the default server at `revision`, recorded in the catalog."""
    with ctx.sessions() as session:
        server = session.get(DatabaseServer, DEFAULT_SERVER)
    tenants = [FleetTenant(id=t, database=database_name(t), role=role_name(t), password=random_password())
               for t in ids]
    with ctx.sessions() as session, session.begin():
        session.execute(insert(Tenant), [
            {"id": t.id, "name": t.id, "status": TenantStatus.ACTIVE, "server_name": server.name,
             "database_name": t.database, "role_name": t.role, "schema_revision": revision,
             "role_password_encrypted": ctx.keyring.encrypt(t.password, role_secret_context(t.id))}
            for t in tenants])
    template = ctx.template_for(server)
    template_db = template.ensure(revision)

    def make(chunk: list[FleetTenant]) -> None:
        with ctx.admin_for(server) as admin:
            for t in chunk:
                admin.ensure_role(t.role, t.password)
                admin.ensure_database(t.database, t.role, template_db)
                admin.restrict_connect(t.database, t.role)
                template.hand_over(t.database, t.role)

    chunks = [tenants[n::SETUP_THREADS] for n in range(SETUP_THREADS)]
    with ThreadPoolExecutor(SETUP_THREADS) as pool:
        list(pool.map(make, chunks))
    return Fleet(host=server.host, port=server.port, tenants=tenants, template=template_db)


def drop_template(ctx: ServiceContext, fleet: Fleet) -> None:
    with ctx.sessions() as session:
        server = session.get(DatabaseServer, DEFAULT_SERVER)
    with ctx.admin_for(server).connect() as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} WITH IS_TEMPLATE false").format(sql.Identifier(fleet.template)))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(fleet.template)))


def offline_sql(revision_range: str, downgrade: bool = False) -> str:
    """What a DBA would take to psql: `alembic upgrade|downgrade <from>:<to> --sql`, run as a command."""
    alembic = str(Path(os.sys.executable).parent / "alembic")
    done = subprocess.run([alembic, "-c", str(ALEMBIC_INI), "downgrade" if downgrade else "upgrade",
                           revision_range, "--sql"], check=True, capture_output=True, text=True)
    return done.stdout


@contextmanager
def psql_session_files(fleet: Fleet) -> Iterator[Path]:
    """A private folder with the tenants' passwords as a libpq password file (never on a command line)."""
    with tempfile.TemporaryDirectory(prefix="bench-psql-") as folder:
        passfile = Path(folder) / "pgpass"
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            for t in fleet.tenants:
                out.write(f"{fleet.host}:{fleet.port}:{t.database}:{t.role}:{t.password}\n")
        (Path(folder) / "targets").write_text("".join(
            f"host={fleet.host} port={fleet.port} dbname={t.database} user={t.role}\n" for t in fleet.tenants))
        yield Path(folder)


def xargs_psql(fleet: Fleet, script: str, concurrency: int) -> None:
    """`xargs -P<concurrency> psql -f script` over every tenant, each as its own role; raises on any failure."""
    with psql_session_files(fleet) as folder:
        (folder / "script.sql").write_text(script)
        env = {**os.environ, "PGPASSFILE": str(folder / "pgpass"), "PGAPPNAME": "bench-psql"}
        with open(folder / "targets") as targets:
            subprocess.run(["xargs", "-d", "\n", f"-P{concurrency}", "-n1", "psql", "-X", "-q",
                            "-v", "ON_ERROR_STOP=1", "-f", str(folder / "script.sql"), "-d"],
                           stdin=targets, env=env, check=True, stdout=subprocess.DEVNULL)


def revisions_in(fleet: Fleet, concurrency: int = SETUP_THREADS) -> dict[str, int]:
    """How many tenant databases are at each revision (read as each tenant's role)."""
    with psql_session_files(fleet) as folder:
        env = {**os.environ, "PGPASSFILE": str(folder / "pgpass")}
        with open(folder / "targets") as targets:
            done = subprocess.run(["xargs", "-d", "\n", f"-P{concurrency}", "-n1", "psql", "-X", "-qtA",
                                   "-c", "SELECT version_num FROM alembic_version", "-d"],
                                  stdin=targets, env=env, check=True, capture_output=True, text=True)
    counts: dict[str, int] = {}
    for line in done.stdout.split():
        counts[line] = counts.get(line, 0) + 1
    return counts


def catalog_revisions(ctx: ServiceContext, fleet: Fleet) -> dict[str | None, int]:
    ids = [t.id for t in fleet.tenants]
    counts: dict[str | None, int] = {}
    with ctx.sessions() as session:
        for revision in session.scalars(select(Tenant.schema_revision).where(Tenant.id.in_(ids))):
            counts[revision] = counts.get(revision, 0) + 1
    return counts
