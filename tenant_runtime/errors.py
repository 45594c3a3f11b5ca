"""The runtime's public errors: each carries the HTTP status, title and Retry-After a web app should answer with.

Also the root of the errors shared with the control plane (`ProjectError`, which control_plane.errors
calls ControlPlaneError) and the two of them raised by code both use (settings, KEYRING): defined here so
that the runtime installs and imports without the control plane.
"""
from __future__ import annotations

from typing import Any


class ProjectError(Exception):
    """Root of the control plane's hierarchy (control_plane.errors.ControlPlaneError is this class)."""

    status = 500
    title = "Internal error"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class ConfigurationError(ProjectError):
    """A setting is missing, unreadable or invalid."""

    title = "Configuration error"


class DecryptionError(ProjectError):
    """An encrypted value is malformed, tampered with, or sealed under a key the KEYRING lacks."""

    title = "Decryption failed"


class TenantRuntimeError(Exception):
    """Root of every error the runtime raises on purpose."""

    status = 500
    title = "Tenant runtime error"
    retry_after: int | None = None

    def __init__(self, detail: str, *, tenant_id: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.tenant_id = tenant_id
        if retry_after is not None:
            self.retry_after = retry_after


class RuntimeConfigurationError(TenantRuntimeError):
    """A setting is missing or invalid (raised at construction, never per request)."""

    title = "Tenant runtime misconfigured"


class RouterClosedError(TenantRuntimeError):
    status = 503
    title = "Tenant router closed"


class TenantResolutionError(TenantRuntimeError):
    """The request names its tenant in a malformed way (bad header, bad host, bad path)."""

    status = 400
    title = "Bad tenant reference"


class TenantConflictError(TenantResolutionError):
    """Two resolution strategies name different tenants (e.g. the host says A, X-Tenant-ID says B)."""

    title = "Conflicting tenant references"

    def __init__(self, detail: str, *, candidates: dict[str, str]) -> None:
        super().__init__(detail)
        self.candidates = candidates


class InvalidTenantTokenError(TenantRuntimeError):
    """A bearer token was presented for tenant resolution but is forged, expired or malformed."""

    status = 401
    title = "Invalid tenant token"


class TenantNotFoundError(TenantRuntimeError):
    """No such tenant (unknown id, unknown host, or a deleted tenant)."""

    status = 404
    title = "Tenant not found"


class TenantUnavailableError(TenantRuntimeError):
    """The tenant exists but may not be served now (moving, restoring, provisioning, failed)."""

    status = 503
    title = "Tenant unavailable"
    retry_after = 5

    def __init__(self, detail: str, *, tenant_id: str, tenant_status: str, retry_after: int | None = None) -> None:
        super().__init__(detail, tenant_id=tenant_id, retry_after=retry_after)
        self.tenant_status = tenant_status


class TenantSuspendedError(TenantUnavailableError):
    status = 423
    title = "Tenant suspended"
    retry_after = None


class ConnectionBudgetExceededError(TenantRuntimeError):
    """No connection could be lent within the acquire timeout (process budget or per-tenant cap)."""

    status = 503
    title = "Connection budget exhausted"
    retry_after = 1


class TenantDatabaseUnavailableError(TenantRuntimeError):
    """The tenant's database server refused or failed the connection."""

    status = 503
    title = "Tenant database unavailable"
    retry_after = 5


class CatalogUnavailableError(TenantRuntimeError):
    """The catalog could not be read, and nothing usable was cached."""

    status = 503
    title = "Tenant catalog unavailable"
    retry_after = 5
