"""The one place that reaches into Alembic's internals (checked here at import; written for Alembic 1.13-1.20).

`alembic.command.upgrade`/`downgrade` build a new ScriptDirectory on every call, which re-reads every
revision file; tenant_migrations.migrate keeps one per process and asks it for the steps the way those
commands do, through ScriptDirectory._upgrade_revs/_downgrade_revs.
"""
from __future__ import annotations

from typing import Any

from alembic.script import ScriptDirectory

for _name in ("_upgrade_revs", "_downgrade_revs"):
    if not callable(getattr(ScriptDirectory, _name, None)):  # pragma: no cover - an Alembic this was not written for
        raise ImportError(f"alembic.script.ScriptDirectory.{_name} is gone: tenant_migrations/alembic_compat.py "
                          "supports Alembic 1.13-1.20")


def upgrade_steps(script: ScriptDirectory, destination: str, heads: Any) -> list[Any]:
    """The steps from the database's current heads up to `destination` (what `alembic upgrade` runs)."""
    return script._upgrade_revs(destination, heads)


def downgrade_steps(script: ScriptDirectory, destination: str, heads: Any) -> list[Any]:
    """The steps from the current heads down to `destination` ("base" for none)."""
    return script._downgrade_revs(destination, heads)
