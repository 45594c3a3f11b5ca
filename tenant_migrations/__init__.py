"""The tenant schema's Alembic environment, and a small API to drive it.

Migrates one tenant database through the SQLAlchemy Connection it is handed,
reads its revision, and renders the SQL of a dry run. No Flask, RQ or catalog.

Threading: Alembic runs env.py through module-level proxies (``alembic.context``,
``alembic.op``), so a process can run only one migration at a time; ``migrate``
and ``offline_sql`` serialise on a process-wide lock. Run migrations of many
tenants concurrently in several processes (RQ workers), not threads.

Alembic is imported by the functions that use it, not here: tenant applications import
``tenant_migrations.models`` with the runtime's light install, which has no Alembic.
"""

from __future__ import annotations

import functools
import io
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "BASE",
    "HEAD",
    "PACKAGE_DIR",
    "alembic_config",
    "current_revision",
    "head_revision",
    "known_revisions",
    "migrate",
    "offline_sql",
    "resolve_target",
    "script_directory",
    "destructive_revisions",
    "irreversible_revisions",
]

HEAD = "head"
BASE = "base"
PACKAGE_DIR = Path(__file__).resolve().parent

# Protects Alembic's module-level context/op proxies (see module docstring).
_alembic_lock = threading.Lock()


def alembic_config(connection: Connection | None = None, output_buffer: io.StringIO | None = None) -> Config:
    """An Alembic Config for this package, without alembic.ini (no logging set-up, no URL).

    ``connection`` is handed to env.py through ``config.attributes["connection"]``.
    """
    from alembic.config import Config

    config = Config(output_buffer=output_buffer)
    # set_main_option interpolates "%": escape it in case the install path has one.
    config.set_main_option("script_location", str(PACKAGE_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def script_directory() -> ScriptDirectory:
    """The tenant schema's revisions (parsed once per process)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The id of the latest revision (the history is linear: one head)."""
    head = script_directory().get_current_head()
    if head is None:
        raise RuntimeError("tenant_migrations has no revisions")
    return head


def known_revisions() -> list[str]:
    """All revision ids, from the first (just after base) to head."""
    return list(_known_revisions())


@functools.cache
def _known_revisions() -> tuple[str, ...]:
    newest_first = [script.revision for script in script_directory().walk_revisions(BASE, "heads")]
    return tuple(reversed(newest_first))


def resolve_target(target: str) -> str | None:
    """Turn a requested target into a revision id: "head", "base" (None) or a known id.

    Raises ValueError, with the accepted values, for anything else.
    """
    if target == HEAD:
        return head_revision()
    if target == BASE:
        return None
    known = known_revisions()
    if isinstance(target, str) and target in known:
        return target
    raise ValueError(
        f"unknown tenant schema revision {target!r}: expected {HEAD!r}, {BASE!r} "
        f"or one of {', '.join(known)}"
    )


def destructive_revisions(from_revision: str | None, to_revision: str | None) -> list[str]:
    """The revisions that going from one revision to another crosses and that lose data, oldest first.

    A revision file declares that its upgrade drops or rewrites data with a module-level
    ``destructive = True`` (read through Alembic's script directory). A downgrade counts the declared
    revisions it undoes.
    """
    known = known_revisions()
    start, end = sorted((_position(from_revision, known), _position(to_revision, known)))
    scripts = script_directory()
    return [revision for revision in known[start + 1:end + 1]
            if getattr(scripts.get_revision(revision).module, "destructive", False) is True]


def irreversible_revisions(from_revision: str | None, to_revision: str | None) -> list[str]:
    """The revisions a downgrade from `from_revision` to `to_revision` would undo that cannot be undone.

    A revision file whose downgrade cannot bring back what its upgrade changed (data it dropped or
    rewrote, or no downgrade at all) declares a module-level ``downgradable = False``, next to
    ``destructive``. Rolling back a bulk migration run across such a revision restores the tenant's
    pre-migration backup instead of downgrading. Newest first, as a downgrade undoes them.
    """
    known = known_revisions()
    start, end = sorted((_position(from_revision, known), _position(to_revision, known)))
    scripts = script_directory()
    return [revision for revision in reversed(known[start + 1:end + 1])
            if getattr(scripts.get_revision(revision).module, "downgradable", True) is False]


def current_revision(connection: Connection) -> str | None:
    """The revision recorded in the tenant's alembic_version table, or None (base or empty DB).

    Runs in the connection's current transaction, autobeginning one if there is
    none (SQLAlchemy 2 behaviour): the caller commits or rolls it back.
    """
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


def _position(revision: str | None, known: list[str]) -> int:
    if revision is None:
        return -1
    try:
        return known.index(revision)
    except ValueError:
        raise ValueError(
            f"the tenant database is at revision {revision!r}, which this code does not know "
            f"(known: {', '.join(known)}); it was migrated by a newer release"
        ) from None


def migrate(connection: Connection, target: str,
            on_start: Callable[[str | None], None] | None = None) -> str | None:
    """Upgrade or downgrade the tenant database behind ``connection`` to ``target``.

    ``target`` is "head", "base" or a revision id (see resolve_target); the
    direction comes from the positions of the current and target revisions in
    the history. Returns the revision the database is at afterwards.
    ``on_start``, if given, is called with the revision the database was at, as
    soon as it is read (before any revision runs).

    The connection must NOT be inside a transaction (raise otherwise): Alembic
    commits each revision in its own transaction, so if revision N fails, the
    revisions before it stay committed, N is rolled back, the exception
    propagates and the database is left at N-1. The connection is left outside
    any transaction on return. Callers serialise migrations of one tenant
    themselves (e.g. an advisory lock); this function takes a process-wide lock
    only because Alembic's proxies are global.

    What `alembic upgrade` does, minus its per-call costs: the revisions are parsed
    once per process (script_directory), and the current revision is read once,
    by Alembic itself, rather than again before and after.
    """
    if connection.in_transaction():
        raise RuntimeError(
            "migrate() needs a connection outside any transaction (Alembic commits each "
            "revision itself); commit or roll back first"
        )
    wanted = resolve_target(target)
    known = known_revisions()
    if wanted is None:
        # Going to base: an empty database is already there, and Alembic must not create its
        # version table in it (it would for any run on a database without one).
        with connection.begin():
            if current_revision(connection) is None:
                if on_start is not None:
                    on_start(None)
                return None

    from alembic.runtime.environment import EnvironmentContext

    from tenant_migrations import alembic_compat

    script = script_directory()
    config = alembic_config(connection=connection)

    def steps(heads: tuple[str, ...], context: object) -> list:
        current = heads[0] if heads else None
        if on_start is not None:
            on_start(current)
        step = _position(wanted, known) - _position(current, known)
        if step > 0:
            return alembic_compat.upgrade_steps(script, wanted, heads)
        if step < 0:
            return alembic_compat.downgrade_steps(script, wanted or BASE, heads)
        return []

    with _alembic_lock:
        try:
            # env.py configures the context (transaction_per_migration...) exactly as for `alembic upgrade`.
            with EnvironmentContext(config, script, fn=steps, destination_rev=wanted or BASE):
                script.run_env()
        except BaseException:
            # The failed revision's own transaction is already rolled back;
            # this ends one Alembic may have autobegun before it.
            if connection.in_transaction():
                connection.rollback()
            raise
        # Alembic autobegins a transaction to read (and create) alembic_version
        # and leaves it open when it is not folded into a revision's one.
        if connection.in_transaction():
            connection.commit()
    # Every step committed with its version row: the database is at the target.
    return wanted


def offline_sql(from_revision: str | None, target: str) -> str:
    """The SQL (PostgreSQL dialect) that migrating from ``from_revision`` to ``target`` would run.

    ``from_revision`` is None or "base" for an empty database, else a revision
    id or "head"; ``target`` as in resolve_target. Nothing connects to a
    database. Each revision is wrapped in its own BEGIN/COMMIT, as when it runs
    for real. Returns "" when there is nothing to do.
    """
    start = None if from_revision is None else resolve_target(from_revision)
    end = resolve_target(target)
    known = known_revisions()
    step = _position(end, known) - _position(start, known)
    if step == 0:
        return ""

    from alembic import command

    buffer = io.StringIO()
    config = alembic_config(output_buffer=buffer)
    with _alembic_lock:
        if step > 0:
            command.upgrade(config, f"{start}:{end}" if start else end, sql=True)
        else:
            command.downgrade(config, f"{start}:{end or BASE}", sql=True)
    return buffer.getvalue()
