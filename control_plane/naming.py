"""Every name derived from a tenant id: databases, roles, lock keys, Redis keys and channels.

The tenant id's rules and the events channel come from tenant_runtime.naming (shared with tenant apps).
"""
from __future__ import annotations

import hashlib
import re
from enum import Enum

from tenant_runtime.naming import (  # noqa: F401 (re-exported: the runtime shares them)
    TENANT_EVENTS_CHANNEL,
    TENANT_ID_PATTERN,
    is_valid_tenant_id,
    tenant_id_problem,
)

APPLICATION_NAME = "tenant-control-plane"


def _slug(tenant_id: str) -> str:
    if not is_valid_tenant_id(tenant_id):
        raise ValueError(f"invalid tenant id {tenant_id!r}")
    return tenant_id.replace("-", "_")


def database_name(tenant_id: str) -> str:
    return f"tenant_{_slug(tenant_id)}_db"


def role_name(tenant_id: str) -> str:
    return f"tenant_{_slug(tenant_id)}"


def _lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key from a name: SHA-256, not a 32-bit CRC, so two names never share one
    in practice (a shared key would make two tenants' jobs wait for each other, or a lock look held)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def tenant_lock_key(tenant_id: str) -> int:
    """The PostgreSQL advisory lock key that serialises all work on one tenant."""
    return _lock_key(f"tenant:{tenant_id}")


def job_id(operation_id: str) -> str:
    """RQ job id of an operation: one job per operation, so re-dispatching replaces instead of duplicating."""
    return f"operation-{operation_id}"


# Provisioning clones a template database kept at the tenant schema's head, one per revision.
TEMPLATE_PREFIX = "cp_template_"
TEMPLATE_OWNER_ROLE = "cp_template_owner"


def template_database_name(revision: str) -> str:
    slug = re.sub(r"[^a-z0-9_]", "_", revision.lower())
    return (TEMPLATE_PREFIX + slug)[:63]


def template_lock_key() -> int:
    return _lock_key("tenant-template")


# Backups: object keys under the store's prefix, and the databases a restore creates and retires.
BACKUP_DATA_OBJECT = "dump.pgc.zst.aes"
BACKUP_MANIFEST_OBJECT = "manifest.json"


def backup_prefix(tenant_id: str, backup_id: str) -> str:
    """Folder of one backup under the store's prefix: `<tenant_id>/<backup_id>/`."""
    _slug(tenant_id)  # validates
    return f"{tenant_id}/{backup_id}/"


def tenant_backups_prefix(tenant_id: str) -> str:
    _slug(tenant_id)
    return f"{tenant_id}/"


# Catalog backups live beside the tenants' folders; a tenant id never starts with "_".
CATALOG_BACKUPS_PREFIX = "_catalog/"
CATALOG_BACKUP_SUBJECT = "_catalog"  # the "tenant" a catalog backup's object header names


def catalog_backup_prefix(backup_id: str) -> str:
    return f"{CATALOG_BACKUPS_PREFIX}{backup_id}/"


def restore_database_name(tenant_id: str, operation_id: str) -> str:
    """The scratch database a restore fills before it is swapped in (one per operation: retries reuse it)."""
    return f"tenant_{_slug(tenant_id)}_rs_{operation_id.replace('-', '')[:8]}"


def drill_database_name(tenant_id: str, operation_id: str) -> str:
    """The scratch database a restore drill fills, checks and drops (one per operation: retries reuse it)."""
    return f"tenant_{_slug(tenant_id)}_dr_{operation_id.replace('-', '')[:8]}"


def retired_database_name(tenant_id: str, when) -> str:
    """Where an in-place restore keeps the database it replaced: `tenant_<id>_<YYYYMMDD>_<HHMMSS>` (≤ 63)."""
    return f"tenant_{_slug(tenant_id)}_{when:%Y%m%d_%H%M%S}"


def move_object_name(operation_id: str) -> str:
    """Publication, subscription, replication slot and source login role of one online move."""
    return f"cp_move_{operation_id.replace('-', '')[:16]}"


def moved_database_name(tenant_id: str, operation_id: str) -> str:
    """What a move renames the source database to, kept (connections refused) for the grace period."""
    return f"tenant_{_slug(tenant_id)}_mv_{operation_id.replace('-', '')[:8]}"


def deleted_database_name(tenant_id: str, operation_id: str) -> str:
    """What a delete renames the tenant's database to, kept (connections refused) until undeleted or dropped
    after DELETED_TENANT_GRACE_DAYS."""
    return f"tenant_{_slug(tenant_id)}_del_{operation_id.replace('-', '')[:8]}"


def migration_item_job_id(item_id: str, dispatch_token: int) -> str:
    """RQ job id of one claim of a migration run item: a re-claim gets a new job, a stale one is recognisable."""
    return f"migration-item-{item_id}-{dispatch_token}"


def server_acl_lock_key() -> int:
    """Advisory lock (on each tenant database server) serialising changes to its databases' ACLs."""
    return _lock_key("database-acl")


def warm_pool_lock_key() -> int:
    """Advisory lock (on each tenant database server) held by the one refiller of its warm pool."""
    return _lock_key("warm-pool")


def recovery_sweep_key(queue_name: str) -> str:
    """Redis lock (NX, with a TTL) of the one worker that sweeps once Redis is back after an outage."""
    return f"control-plane:recovery-sweep:{queue_name}"


def auth_failures_key(client: str) -> str:
    """Redis counter of one client address's failed authentications in the current window."""
    return f"control-plane:auth-failures:{client}"


class Lane(str, Enum):
    """The job queues of operations, in the order every worker takes work from them.

    Who asked decides the lane (services.operation_requests.lane_of): super admins and the system
    (CLI, drains, migration runs, the cron ticks) first; then tenant admins, at most one operation per
    tenant at a time, so together they cannot hold back a super admin's work by more than the job a
    worker is running; last, background work started in bulk (the scheduler's backups and drills and
    their retries, warm pool refills), which must never delay work a person waits for.
    """

    OPERATIONS = "operations"
    TENANT_ADMINS = "tenant-admins"
    BACKGROUND = "background"


def queue_name(base: str, lane: Lane) -> str:
    """The RQ queue of a lane: `QUEUE_NAME` itself for the first, `<QUEUE_NAME>-<lane>` for the others."""
    return base if lane is Lane.OPERATIONS else f"{base}-{lane.value}"


def queue_names(base: str) -> list[str]:
    """Every lane's queue, in the order workers listen to them."""
    return [queue_name(base, lane) for lane in Lane]
