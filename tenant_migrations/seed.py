"""Idempotent initial data of a new tenant: its admin user and the default sales pipeline.

Works at any revision from 0001_clinic_crm on; safe to run again after a retry.
"""

from __future__ import annotations

from sqlalchemy import TextClause, text
from sqlalchemy.engine import Connection

DEFAULT_PIPELINE = "Sales"
DEFAULT_STAGES = ("New", "Contacted", "Consultation booked", "Treatment done", "Lost")

# The arbiter is the unique index on lower(email): a user who already exists
# under any capitalisation is left exactly as it is (never promoted to admin,
# never given a new password).
_INSERT_ADMIN = text(
    """
    INSERT INTO users (email, name, password_hash, role, status)
    VALUES (:email, :name, :password_hash, 'admin', 'active')
    ON CONFLICT ((lower(email))) DO NOTHING
    """
)

_INSERT_PIPELINE = text(
    """
    INSERT INTO pipelines (name, position)
    VALUES (:name, COALESCE((SELECT max(position) + 1 FROM pipelines), 0))
    ON CONFLICT (name) DO NOTHING
    """
)

_PIPELINE_ID = text("SELECT id FROM pipelines WHERE name = :name")

# Stages are only created for a pipeline that has none: once a tenant has
# renamed, removed or reordered them, seeding again must not fight its edits.
_INSERT_STAGES = text(
    """
    INSERT INTO pipeline_stages (pipeline_id, name, position)
    SELECT :pipeline_id, stage.name, stage.position - 1
    FROM unnest(CAST(:names AS text[])) WITH ORDINALITY AS stage(name, position)
    WHERE NOT EXISTS (SELECT 1 FROM pipeline_stages WHERE pipeline_id = :pipeline_id)
    """
)


def seed(connection: Connection, admin_email: str, admin_name: str, admin_password_hash: str) -> None:
    """Create the tenant's admin user and the default "Sales" pipeline, if missing.

    Runs in the connection's current transaction (autobeginning one if there is
    none) and neither commits nor rolls back: the caller decides. Running it
    twice changes nothing the second time.
    """
    seed_admin(connection, admin_email, admin_name, admin_password_hash)
    seed_defaults(connection)


def admin_user(admin_email: str, admin_name: str, admin_password_hash: str) -> tuple[TextClause, dict[str, str]]:
    """The statement that creates the admin user, and its parameters (for a caller with its own driver)."""
    return _INSERT_ADMIN, {"email": admin_email.strip(), "name": admin_name, "password_hash": admin_password_hash}


def seed_admin(connection: Connection, admin_email: str, admin_name: str, admin_password_hash: str) -> None:
    """The tenant's admin user, if no user has its email (any capitalisation)."""
    connection.execute(*admin_user(admin_email, admin_name, admin_password_hash))


def seed_defaults(connection: Connection) -> None:
    """What every tenant starts with whoever it is (the default pipeline and its stages): a warm pool's spare
    is seeded with it in advance, so claiming one only adds the admin user."""
    connection.execute(_INSERT_PIPELINE, {"name": DEFAULT_PIPELINE})
    pipeline_id = connection.execute(_PIPELINE_ID, {"name": DEFAULT_PIPELINE}).scalar_one()
    connection.execute(_INSERT_STAGES, {"pipeline_id": pipeline_id, "names": list(DEFAULT_STAGES)})
