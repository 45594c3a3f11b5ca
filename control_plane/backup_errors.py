"""Errors of the backup feature, in the project's one hierarchy (rooted at ControlPlaneError)."""
from __future__ import annotations

from control_plane.errors import ControlPlaneError, DependencyUnavailableError, NotFoundError


class BackupNotFoundError(NotFoundError):
    def __init__(self, backup_id: str) -> None:
        super().__init__(f"backup {backup_id!r} does not exist")
        self.backup_id = backup_id


class BackupIntegrityError(ControlPlaneError):
    """A backup failed verification (checksum, authentication, framing, manifest): nothing was restored."""

    status = 422
    title = "Backup failed verification"


class BackupKeyError(ControlPlaneError):
    """The key that decrypts a backup is unavailable: purged (crypto-shredded) or not in the KEYRING."""

    status = 409
    title = "Backup key unavailable"


class BackupStoreError(DependencyUnavailableError):
    """The backup store refused or failed a request (the message names the operation, never credentials)."""

    title = "Backup store unavailable"


class BackupToolError(ControlPlaneError):
    """pg_dump or pg_restore is missing, older than the server, or exited with an error."""

    title = "Backup tool failed"
