"""What services need from the outside world, as small protocols, bundled in one context object."""
from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from sqlalchemy.orm import Session, sessionmaker

from control_plane.adapters.crypto import ControlPlaneKeyring
from control_plane.catalog.models import DatabaseServer, Tenant
from control_plane.errors import InsecureServerError
from control_plane.naming import Lane
from control_plane.settings import Settings
from tenant_runtime.crypto import role_secret_context  # noqa: F401 (re-exported: the runtime decrypts them)
from control_plane.tls import postgres_verifies


class JobQueue(Protocol):
    def enqueue_operation(self, operation_id: str, lane: Lane = Lane.OPERATIONS) -> None: ...
    def is_pending(self, operation_id: str) -> bool: ...


class TenantEvents(Protocol):
    def publish(self, tenant_id: str, change: str, **data: Any) -> None: ...


class TenantLocks(Protocol):
    def hold(self, tenant_id: str, wait_seconds: float = 30) -> AbstractContextManager[Any]: ...  # a lease: .check(), .share()


class ServerAdmin(Protocol):
    def __enter__(self) -> "ServerAdmin": ...  # holds one connection for the calls inside the block
    def __exit__(self, *exc_info: object) -> None: ...
    def ping(self) -> None: ...
    def cluster_identity(self) -> str: ...
    def database_exists(self, database: str) -> bool: ...
    def ensure_role(self, role: str, password: str) -> None: ...
    def apply_limits(self, role: str, limits: Any) -> None: ...
    def ensure_database(self, database: str, owner: str, template: str | None = None) -> bool: ...
    def restrict_connect(self, database: str, role: str) -> None: ...
    def close_other_databases(self) -> None: ...
    def drop_database(self, database: str) -> None: ...
    def drop_databases_owned_by(self, role: str, keep: str | None = None) -> list[str]: ...
    def set_login(self, role: str, allowed: bool) -> None: ...
    def retire_database(self, database: str, retired: str) -> None: ...
    def unretire_database(self, retired: str, database: str) -> None: ...
    def drop_role(self, role: str) -> None: ...
    def drop_role_if_unused(self, role: str) -> bool: ...


class TemplatePort(Protocol):
    def ensure(self, revision: str) -> str: ...
    def hand_over(self, database: str, role: str) -> None: ...


class TenantDatabasePort(Protocol):
    def migrate(self, target: str) -> str | None: ...
    def migrate_bounded(self, target: str, *, lock_timeout_ms: int,
                        statement_timeout_ms: int) -> tuple[str | None, str | None]: ...
    def current_revision(self) -> str | None: ...
    def seed(self, admin_email: str, admin_name: str, admin_password_hash: str) -> None: ...
    def seed_admin(self, admin_email: str, admin_name: str, admin_password_hash: str) -> str | None: ...
    def run_check(self, query: str, timeout_ms: int) -> Any: ...


class AuthThrottle(Protocol):
    def retry_after(self, key: str) -> int | None: ...
    def record_failure(self, key: str) -> None: ...


class MigrationJobs(Protocol):
    def enqueue_items(self, claims: list[tuple[str, int]]) -> None: ...
    def is_pending(self, item_id: str, token: int) -> bool: ...


@dataclass
class ServiceContext:
    settings: Settings
    sessions: sessionmaker[Session]
    keyring: ControlPlaneKeyring
    queue: JobQueue
    events: TenantEvents
    locks: TenantLocks
    server_admin: Callable[..., ServerAdmin]  # admin URL (, reuse_connection=) → admin adapter
    # host, port, db, role, password, and tls= the server's TLS options
    tenant_database: Callable[..., TenantDatabasePort]
    tenant_template: Callable[[ServerAdmin], TemplatePort]  # a server's admin → its template
    # Hook point for the backups feature: called before a tenant's database is dropped.
    final_backup: Callable[[Tenant, Any], None] = lambda tenant, operation: None
    # Backups (services.backups): the store new backups go to, a store by URL (backups taken under an
    # earlier BACKUP_STORE_URL), pg_dump/pg_restore tools of a server (admin URL → adapter), and the hook
    # run after the final backup, before a tenant's database and role are dropped.
    backup_store: Any = None
    # The second store (BACKUP_COPY_STORE_URL) every completed backup is copied to; None: no copies.
    copy_store: Any = None
    open_backup_store: Callable[[str], Any] | None = None
    backup_tools: Callable[[str], Any] | None = None
    before_drop: Callable[[Tenant, Any], None] = lambda tenant, operation: None
    # Bulk migration runs: where their items are enqueued (None: runs cannot execute in this process).
    migration_jobs: MigrationJobs | None = None
    # Hook point for the backups feature: a verified backup of the tenant taken before a run migrates it
    # (`backup_first`), called with the tenant lock held; returns what to record (e.g. {"backup_id": ...}).
    # None means there is no backups feature: runs then refuse `backup_first` rather than skip it silently.
    pre_migration_backup: Callable[[Tenant, Any], dict | None] | None = None
    # Counts failed authentications per client address (None: not throttled).
    auth_throttle: AuthThrottle | None = None
    # Grants a tenant application's runtime its least-privilege catalog role and Redis user.
    runtime_access: Any = None

    # Read-only state of the job queues, workers and schedulers (adapters.queue_monitor), for /metrics and
    # the super admin's queue view.
    queue_monitor: Any = None

    # Online moves: (source admin URL, target admin URL, source host, source port) → replication adapter.
    logical_replication: Callable[[str, str, str, int], Any] | None = None
    # Warm provisioning: a server's admin → its pool of spare databases (None: no pool), and how to ask
    # for a refill in the background (enqueues a job; a no-op where there is no queue).
    warm_pool: Callable[["ServerAdmin"], Any] | None = None
    request_warm_refill: Callable[[], None] = lambda: None
    # Hook point for server drains: called with (operation id, error or None) when a move has ended.
    after_move: Callable[[str, str | None], None] = lambda operation_id, error: None

    def admin_for(self, server: DatabaseServer, *, reuse_connection: bool = False) -> ServerAdmin:
        """The server's admin adapter; `reuse_connection` (a request's fast path): its `with` block takes an idle
        connection of this process and leaves it open for the next one, and a new one is given 2 s, not 10."""
        self.check_tls(server)
        url = self.keyring.decrypt(server.admin_url_encrypted, server_secret_context(server.name))
        return self.server_admin(url, connect_timeout=2, reuse_connection=True) if reuse_connection \
            else self.server_admin(url)

    def admin_url_of(self, server: DatabaseServer) -> str:
        """The server's admin DSN (a secret: never log it)."""
        return self.keyring.decrypt(server.admin_url_encrypted, server_secret_context(server.name))
    def check_tls(self, server: DatabaseServer) -> None:
        """With REQUIRE_TLS, refuse to use a server registered without certificate verification."""
        if self.settings.require_tls and not postgres_verifies(server.tls or {}):
            raise InsecureServerError(server.name)

    def template_for(self, server: DatabaseServer) -> TemplatePort:
        return self.tenant_template(self.admin_for(server))

    def database_of(self, tenant: Tenant) -> TenantDatabasePort:
        assert tenant.server is not None, "tenant has not been placed on a server"
        self.check_tls(tenant.server)
        password = self.keyring.decrypt(tenant.role_password_encrypted, role_secret_context(tenant.id))
        return self.tenant_database(tenant.server.host, tenant.server.port, tenant.database_name,
                                    tenant.role_name, password, tls=tenant.server.tls or {})


def server_secret_context(server_name: str) -> str:
    return f"server-admin-url:{server_name}"


def operation_secret_context(operation_id: str) -> str:
    return f"operation-secret:{operation_id}"
