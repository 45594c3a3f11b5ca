"""What a tenant id may look like, and the channel tenant changes are announced on.

Shared: control_plane.naming derives every other name (databases, roles, keys) from these.
"""
from __future__ import annotations

import re

TENANT_ID_PATTERN = r"^[a-z][a-z0-9-]{1,38}[a-z0-9]$"
_TENANT_ID = re.compile(TENANT_ID_PATTERN)

# Redis pub/sub channel on which every catalog change to a tenant is announced (JSON payload).
TENANT_EVENTS_CHANNEL = "control-plane:tenant-events"


def tenant_id_problem(tenant_id: str) -> str | None:
    """Why `tenant_id` is not a valid tenant id, or None when it is."""
    if not isinstance(tenant_id, str) or not _TENANT_ID.fullmatch(tenant_id):
        return (
            "must be 3-40 characters of lowercase letters, digits and '-', "
            "start with a letter and end with a letter or digit"
        )
    if "--" in tenant_id:
        return "must not contain '--'"
    return None


def is_valid_tenant_id(tenant_id: str) -> bool:
    return tenant_id_problem(tenant_id) is None
