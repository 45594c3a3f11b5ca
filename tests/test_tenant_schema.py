"""The tenant schema's migrations, seed and alembic CLI, against a real PostgreSQL.

Each test gets a throwaway database on the server of TENANT_DB_ADMIN_URL,
dropped WITH (FORCE) afterwards.
"""

from __future__ import annotations

import configparser
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from psycopg import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.pool import NullPool

import tenant_migrations
from tenant_migrations import (
    current_revision,
    head_revision,
    known_revisions,
    migrate,
    offline_sql,
    resolve_target,
)
from tenant_migrations.seed import DEFAULT_STAGES, seed

REPO_ROOT = Path(__file__).resolve().parent.parent
REV1 = "0001_clinic_crm"
REV2 = "0002_appointments_lead_score"
REV1_TABLES = {"alembic_version", "users", "pipelines", "pipeline_stages", "leads", "messages", "procedures"}
HEAD_TABLES = REV1_TABLES | {"appointments"}


@pytest.fixture
def admin_url(admin_url: str) -> URL:
    """conftest's admin URL of the test server (TENANT_DB_ADMIN_URL), as a SQLAlchemy URL."""
    return make_url(admin_url)


def _libpq_dsn(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlalchemy_url(url: URL) -> str:
    return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


@pytest.fixture
def tenant_db_url(admin_url: URL) -> Iterator[str]:
    """A fresh, empty database; yields its SQLAlchemy URL (postgresql+psycopg://)."""
    name = f"test_tenant_schema_{secrets.token_hex(6)}"
    with psycopg.connect(_libpq_dsn(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield _sqlalchemy_url(admin_url.set(database=name))
    finally:
        with psycopg.connect(_libpq_dsn(admin_url), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture
def owned_tenant_db_url(admin_url: URL) -> Iterator[str]:
    """A fresh database owned by a fresh non-superuser login role, as provisioning makes them.

    Yields the SQLAlchemy URL connecting as that role.
    """
    name = f"test_tenant_schema_{secrets.token_hex(6)}"
    password = secrets.token_urlsafe(18)
    with psycopg.connect(_libpq_dsn(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        try:
            conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(name)))
            yield _sqlalchemy_url(admin_url.set(username=name, password=password, database=name))
        finally:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def engine(tenant_db_url: str) -> Iterator[Engine]:
    engine = create_engine(tenant_db_url, poolclass=NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def conn(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as connection:
        yield connection


def public_relations(conn: Connection) -> dict[str, str]:
    """Every relation (table, index, sequence, view...) in schema public: name -> relkind."""
    with conn.begin():
        rows = conn.execute(
            text("SELECT relname, relkind FROM pg_class WHERE relnamespace = 'public'::regnamespace")
        ).all()
    return dict(rows)


def tables(conn: Connection) -> set[str]:
    return {name for name, kind in public_relations(conn).items() if kind in ("r", "p")}


def columns(conn: Connection, table: str) -> set[str]:
    with conn.begin():
        rows = conn.execute(
            text("SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' AND table_name = :t"),
            {"t": table},
        ).scalars()
        return set(rows)


def revision_of(conn: Connection) -> str | None:
    with conn.begin():
        return current_revision(conn)


# --- revision history, no database -------------------------------------------


def test_history_is_linear_and_targets_resolve() -> None:
    assert known_revisions() == [REV1, REV2]
    assert head_revision() == REV2
    assert resolve_target("head") == REV2
    assert resolve_target("base") is None
    assert resolve_target(REV1) == REV1
    with pytest.raises(ValueError, match=r"'0003_nope'.*0001_clinic_crm"):
        resolve_target("0003_nope")
    with pytest.raises(ValueError):
        resolve_target("0001")  # no prefix matching: a target is explicit


def test_offline_sql_renders_the_dry_run() -> None:
    upgrade = offline_sql(REV1, "head")
    assert "CREATE TABLE appointments" in upgrade
    assert "ALTER TABLE leads ADD COLUMN score" in upgrade
    assert "CREATE TABLE users" not in upgrade
    assert upgrade.count("BEGIN;") == 1 and upgrade.count("COMMIT;") == 1

    from_empty = offline_sql(None, "head")
    assert "CREATE TABLE alembic_version" in from_empty
    assert "CREATE TABLE users" in from_empty and "CREATE TABLE appointments" in from_empty
    assert from_empty.count("COMMIT;") == 2  # one transaction per revision

    downgrade = offline_sql("head", REV1)
    assert "DROP TABLE appointments" in downgrade
    assert "CREATE TABLE" not in downgrade

    assert offline_sql(REV2, "head") == ""


# --- migrations on a real database --------------------------------------------


def test_upgrade_to_head_creates_tables_and_records_head(conn: Connection) -> None:
    assert revision_of(conn) is None
    assert migrate(conn, "head") == REV2
    assert not conn.in_transaction()
    assert tables(conn) == HEAD_TABLES
    assert revision_of(conn) == REV2
    assert "score" in columns(conn, "leads")
    # Upgrading again is a no-op, not an error.
    assert migrate(conn, "head") == REV2


def test_downgrade_to_rev1_removes_appointments_and_score(conn: Connection) -> None:
    migrate(conn, "head")
    assert migrate(conn, REV1) == REV1
    assert tables(conn) == REV1_TABLES
    assert "score" not in columns(conn, "leads")
    with conn.begin():
        constraints = set(conn.execute(text("SELECT conname FROM pg_constraint")).scalars())
    assert "ck_leads_score" not in constraints
    assert revision_of(conn) == REV1


def test_downgrade_to_base_leaves_nothing_then_upgrade_again(conn: Connection) -> None:
    migrate(conn, "head")
    assert migrate(conn, "base") is None
    # Only Alembic's own bookkeeping survives, and it records no revision.
    assert public_relations(conn) == {"alembic_version": "r", "alembic_version_pkc": "i"}
    with conn.begin():
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 0
        functions = conn.execute(
            text("SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace")
        ).scalar_one()
    assert functions == 0

    assert migrate(conn, "head") == REV2
    assert tables(conn) == HEAD_TABLES


def test_failed_revision_leaves_the_previous_revision(conn: Connection) -> None:
    # A stray table makes revision 2's CREATE TABLE fail after revision 1 ran.
    with conn.begin():
        conn.execute(text("CREATE TABLE appointments (id int)"))
    with pytest.raises(Exception, match="appointments"):
        migrate(conn, "head")
    assert not conn.in_transaction()
    assert revision_of(conn) == REV1
    assert "users" in tables(conn)
    assert "score" not in columns(conn, "leads")

    with conn.begin():
        conn.execute(text("DROP TABLE appointments"))
    assert migrate(conn, "head") == REV2


def test_migrate_reports_where_it_started_and_refuses_an_unknown_revision(conn: Connection) -> None:
    seen: list[str | None] = []
    assert migrate(conn, REV1, on_start=seen.append) == REV1
    assert migrate(conn, "head", on_start=seen.append) == REV2
    assert migrate(conn, "head", on_start=seen.append) == REV2  # a no-op reports where it is too
    assert seen == [None, REV1, REV2]

    with conn.begin():  # as if a newer release had migrated this database
        conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(ValueError, match="newer release"):
        migrate(conn, REV1)
    assert not conn.in_transaction()
    assert revision_of(conn) == "9999_from_the_future" and "appointments" in tables(conn)


def test_migrate_refuses_a_connection_inside_a_transaction(conn: Connection) -> None:
    conn.execute(text("SELECT 1"))  # autobegins
    with pytest.raises(RuntimeError, match="outside any transaction"):
        migrate(conn, "head")
    conn.rollback()
    assert tables(conn) == set()


def test_score_backfill_uses_rows_written_at_rev1(conn: Connection) -> None:
    migrate(conn, REV1)
    leads = {
        "complete": ("a@example.com", "+5511999990000", ["inbound", "outbound"]),
        "email_only": ("b@example.com", None, []),
        "phone_outbound_only": (None, "+5511999990001", ["outbound"]),
        "email_inbound": ("c@example.com", None, ["inbound"]),
        "blank_contacts": ("  ", "", []),
        "nothing": (None, None, []),
    }
    with conn.begin():
        for name, (email, phone, directions) in leads.items():
            lead_id = conn.execute(
                text("INSERT INTO leads (full_name, email, phone) VALUES (:n, :e, :p) RETURNING id"),
                {"n": name, "e": email, "p": phone},
            ).scalar_one()
            for direction in directions:
                conn.execute(
                    text("INSERT INTO messages (lead_id, direction, channel, body) VALUES (:l, :d, 'whatsapp', 'hi')"),
                    {"l": lead_id, "d": direction},
                )

    migrate(conn, "head")

    with conn.begin():
        scores = dict(conn.execute(text("SELECT full_name, score FROM leads")).all())
        new_score = conn.execute(text("INSERT INTO leads (full_name) VALUES ('new') RETURNING score")).scalar_one()
    assert scores == {
        "complete": 100,
        "email_only": 40,
        "phone_outbound_only": 30,
        "email_inbound": 70,
        "blank_contacts": 0,
        "nothing": 0,
    }
    assert new_score == 0


def _violated_constraint(conn: Connection, statement: str) -> str | None:
    """Run statement in a savepoint; return the name of the constraint it violated."""
    try:
        with conn.begin_nested():
            conn.execute(text(statement))
    except IntegrityError as exc:
        return exc.orig.diag.constraint_name  # type: ignore[union-attr]
    return None


def test_constraints_reject_bad_values(conn: Connection) -> None:
    migrate(conn, "head")
    with conn.begin():
        user_id = conn.execute(
            text("INSERT INTO users (email, name, role) VALUES ('Doc@Clinic.test', 'Doc', 'doctor') RETURNING id")
        ).scalar_one()
        lead_id = conn.execute(text("INSERT INTO leads (full_name) VALUES ('L') RETURNING id")).scalar_one()
        p1, p2 = conn.execute(text("INSERT INTO pipelines (name) VALUES ('A'), ('B') RETURNING id")).scalars()
        stage_of_p2 = conn.execute(
            text("INSERT INTO pipeline_stages (pipeline_id, name, position) VALUES (:p, 'New', 0) RETURNING id"),
            {"p": p2},
        ).scalar_one()

        bad = {
            "INSERT INTO users (email, name, role) VALUES ('x@clinic.test', 'X', 'superuser')": "ck_users_role",
            "INSERT INTO users (email, name, status) VALUES ('y@clinic.test', 'Y', 'gone')": "ck_users_status",
            "INSERT INTO users (email, name) VALUES ('doc@clinic.TEST', 'Dup')": "ux_users_email_lower",
            f"INSERT INTO messages (lead_id, direction, channel, body) VALUES ({lead_id}, 'inbound', 'fax', 'x')":
                "ck_messages_channel",
            f"INSERT INTO messages (lead_id, direction, channel, body) VALUES ({lead_id}, 'sideways', 'sms', 'x')":
                "ck_messages_direction",
            f"INSERT INTO leads (full_name, pipeline_id, stage_id) VALUES ('M', {p1}, {stage_of_p2})":
                "fk_leads_stage",
            f"UPDATE leads SET score = 101 WHERE id = {lead_id}": "ck_leads_score",
            "INSERT INTO procedures (name, duration_minutes, price) VALUES ('Botox', 0, 10)":
                "ck_procedures_duration",
            "INSERT INTO procedures (name, duration_minutes, price) VALUES ('Peel', 30, -1)": "ck_procedures_price",
            "INSERT INTO appointments (lead_id, doctor_id, starts_at, ends_at) "
            f"VALUES ({lead_id}, {user_id}, now(), now() - interval '1 hour')": "ck_appointments_period",
        }
        violated = {statement: _violated_constraint(conn, statement) for statement in bad}
        assert violated == bad

        # The good counterparts pass, so the rejections above are about the values.
        assert _violated_constraint(
            conn, "INSERT INTO users (email, name, role) VALUES ('r@clinic.test', 'R', 'receptionist')"
        ) is None
        assert _violated_constraint(
            conn, f"INSERT INTO leads (full_name, pipeline_id, stage_id) VALUES ('M', {p2}, {stage_of_p2})"
        ) is None


def test_seed_is_idempotent_at_rev1_and_head(conn: Connection) -> None:
    migrate(conn, REV1)
    with conn.begin():
        seed(conn, "Owner@Clinic.test", "Owner", "argon2-hash")
        seed(conn, "owner@clinic.test ", "Someone else", "other-hash")
    migrate(conn, "head")
    with conn.begin():
        seed(conn, "Owner@Clinic.test", "Owner", "argon2-hash")

    with conn.begin():
        users = conn.execute(text("SELECT email, name, role, status, password_hash FROM users")).all()
        pipelines = conn.execute(text("SELECT id, name FROM pipelines")).all()
        stages = conn.execute(
            text("SELECT name, position FROM pipeline_stages WHERE pipeline_id = :p ORDER BY position"),
            {"p": pipelines[0].id},
        ).all()
    assert [tuple(u) for u in users] == [("Owner@Clinic.test", "Owner", "admin", "active", "argon2-hash")]
    assert [p.name for p in pipelines] == ["Sales"]
    assert [s.name for s in stages] == list(DEFAULT_STAGES)
    assert [s.position for s in stages] == [0, 1, 2, 3, 4]


def test_tenant_role_owning_its_database_can_migrate_and_seed(owned_tenant_db_url: str) -> None:
    """No step needs a superuser or an extension: the tenant's own role runs them all."""
    engine = create_engine(owned_tenant_db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            with conn.begin():
                assert conn.execute(text("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")).scalar_one() is False
            assert migrate(conn, "head") == REV2
            with conn.begin():
                seed(conn, "admin@clinic.test", "Admin", "hash")
                foreign_owned = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                        "AND relowner <> (SELECT oid FROM pg_roles WHERE rolname = current_user)"
                    )
                ).scalar_one()
            assert foreign_owned == 0
            assert migrate(conn, "base") is None
            assert tables(conn) == {"alembic_version"}
    finally:
        engine.dispose()


# --- the alembic command line -------------------------------------------------


def _alembic(*args: str, env_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TENANT_DATABASE_URL"}
    if env_url is not None:
        env["TENANT_DATABASE_URL"] = env_url
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "tenant_migrations/alembic.ini", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_upgrades_the_database_it_is_given(tenant_db_url: str, conn: Connection) -> None:
    result = _alembic("-x", f"url={tenant_db_url}", "upgrade", REV1)
    assert result.returncode == 0, result.stderr
    assert revision_of(conn) == REV1

    # TENANT_DATABASE_URL, with a driverless postgresql:// URL as operators write them.
    plain_url = make_url(tenant_db_url).set(drivername="postgresql").render_as_string(hide_password=False)
    result = _alembic("upgrade", "head", env_url=plain_url)
    assert result.returncode == 0, result.stderr
    assert revision_of(conn) == REV2
    assert tables(conn) == HEAD_TABLES


def test_cli_without_a_url_fails_clearly() -> None:
    result = _alembic("upgrade", "head")
    assert result.returncode != 0
    assert "TENANT_DATABASE_URL" in result.stderr and "-x url=" in result.stderr


def test_package_ships_its_alembic_files() -> None:
    package = Path(tenant_migrations.__file__).parent
    for name in ("alembic.ini", "env.py", "script.py.mako", f"versions/{REV1}.py", f"versions/{REV2}.py"):
        assert (package / name).is_file(), name
    ini = configparser.ConfigParser(interpolation=None)
    ini.read(package / "alembic.ini")
    assert ini.get("alembic", "script_location") == "%(here)s"
    assert not ini.has_option("alembic", "sqlalchemy.url")
