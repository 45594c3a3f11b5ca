"""The registry of operation kinds: one line per kind."""
from __future__ import annotations

from control_plane.catalog.models import OperationKind
from control_plane.services.kinds import backup, delete, drill, migrate, move, provision, restore, undelete
from control_plane.services.kinds.base import Kind

KINDS: dict[OperationKind, Kind] = {k.kind: k for k in (
    provision.PROVISION,
    migrate.MIGRATE,
    delete.DELETE,
    backup.BACKUP,
    restore.RESTORE,
    move.MOVE,
    drill.DRILL,
    undelete.UNDELETE,
)}


def kind_of(kind: OperationKind) -> Kind:
    return KINDS[kind]
