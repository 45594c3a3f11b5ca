"""The project's error hierarchy: each error carries its HTTP status, a title and its data.

Its root and the errors the tenant runtime raises too live in tenant_runtime.errors (the runtime installs
without the control plane); they are re-exported here, so the control plane imports every error from here.
"""
from __future__ import annotations

from tenant_runtime.errors import ConfigurationError, DecryptionError  # noqa: F401 (re-exported)
from tenant_runtime.errors import ProjectError as ControlPlaneError


class ValidationError(ControlPlaneError):
    status = 422
    title = "Unprocessable entity"

    def __init__(self, field: str, message: str, location: str = "json") -> None:
        super().__init__(f"{field}: {message}", errors={location: {field: [message]}})
        self.field = field


class NotFoundError(ControlPlaneError):
    status = 404
    title = "Not found"


class TenantNotFoundError(NotFoundError):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} does not exist")
        self.tenant_id = tenant_id


class OperationNotFoundError(NotFoundError):
    def __init__(self, operation_id: str) -> None:
        super().__init__(f"operation {operation_id!r} does not exist")
        self.operation_id = operation_id


class ServerNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"database server {name!r} does not exist")
        self.name = name


class ConflictError(ControlPlaneError):
    status = 409
    title = "Conflict"


class TenantExistsError(ConflictError):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} already exists")
        self.tenant_id = tenant_id


class DomainTakenError(ConflictError):
    def __init__(self, domain: str) -> None:
        super().__init__(f"domain {domain!r} is already used by another tenant")
        self.domain = domain


class NotUndeletableError(ConflictError):
    """A deleted tenant whose database is gone (purged, or dropped once its grace period ended)."""

    def __init__(self, tenant_id: str, reason: str) -> None:
        super().__init__(f"tenant {tenant_id!r} cannot be undeleted: {reason}")
        self.tenant_id = tenant_id
        self.reason = reason


class IllegalTransitionError(ConflictError):
    def __init__(self, entity: str, entity_id: str, current: str, action: str) -> None:
        super().__init__(f"{entity} {entity_id!r} is {current}: cannot {action}")
        self.current = current
        self.action = action


class LockLostError(ControlPlaneError):
    """The connection holding a tenant's lock is gone (a partition, a restarted catalog): the lock may be
    someone else's by now, so the work must stop rather than go on unprotected."""

    title = "Tenant lock lost"

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"the lock on tenant {tenant_id!r} was lost (its catalog connection is gone)")
        self.tenant_id = tenant_id


class TenantBusyError(ConflictError):
    """A job could not take the tenant's advisory lock in time (internal: the job is re-queued)."""

    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} is locked by another job")
        self.tenant_id = tenant_id


class LockedError(ControlPlaneError):
    status = 423
    title = "Locked"
    retry_after = 5


class TenantLockedError(LockedError):
    """Another operation holds the tenant's work slot: one operation at a time per tenant."""

    def __init__(self, tenant_id: str, operation_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} is busy with operation {operation_id}", operation_id=operation_id)
        self.tenant_id = tenant_id
        self.operation_id = operation_id


class IdempotencyKeyReusedError(ControlPlaneError):
    status = 422
    title = "Unprocessable entity"

    def __init__(self, key: str) -> None:
        super().__init__(f"Idempotency-Key {key!r} was already used for a different request",
                         errors={"headers": {"Idempotency-Key": ["was already used for a different request"]}})


class OperationCancelledError(ControlPlaneError):
    """Raised at a step boundary of a running operation whose cancel was requested (the runner undoes it)."""

    title = "Operation cancelled"


class NoServerAvailableError(ControlPlaneError):
    """No active, reachable server has room: 503, since adding or undraining a server resolves it."""
    status = 503
    title = "No database server available"
    retry_after = 60  # seconds: until a server is added, undrained or given more capacity


class AuthenticationError(ControlPlaneError):
    status = 401
    title = "Unauthorized"


class TooManyRequestsError(ControlPlaneError):
    """A client went over a limit; `retry_after` (seconds) becomes the Retry-After header."""

    status = 429
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, int(retry_after))


class PlanNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"plan {name!r} does not exist")
        self.name = name


class TokenNotFoundError(NotFoundError):
    def __init__(self, token_id: str) -> None:
        super().__init__(f"token {token_id!r} does not exist")
        self.token_id = token_id


class PermissionDeniedError(ControlPlaneError):
    status = 403
    title = "Forbidden"


class DependencyUnavailableError(ControlPlaneError):
    status = 503
    title = "Service unavailable"
    retry_after = 5  # seconds; the API renders it as the Retry-After header


class CatalogUnavailableError(DependencyUnavailableError):
    """The catalog database refused or lost the connection."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"the catalog is unavailable ({reason}); try again shortly", dependency="catalog")


class DatabaseServerError(ControlPlaneError):
    """A tenant database server refused or failed an administrative command."""

    status = 502
    title = "Database server error"


class InsecureServerError(ConflictError):
    def __init__(self, name: str) -> None:
        super().__init__(f"database server {name!r} is registered without sslmode=verify-full and REQUIRE_TLS is on "
                         "(tenantctl servers set-url)")
        self.name = name


class MigrationRunNotFoundError(NotFoundError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"migration run {run_id!r} does not exist")
        self.run_id = run_id


class TenantMigrationError(ControlPlaneError):
    """A tenant's schema migration failed; `reached_revision` is where its database was left."""

    title = "Tenant migration failed"

    def __init__(self, detail: str, from_revision: str | None, reached_revision: str | None,
                 lock_timeout: bool = False) -> None:
        super().__init__(detail)
        self.from_revision = from_revision
        self.reached_revision = reached_revision
        # It gave up waiting for a lock the tenant's application held (lock_timeout): worth retrying later.
        self.lock_timeout = lock_timeout

