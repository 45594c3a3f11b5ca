"""tenant_runtime: routes each unit of work of a tenant application to its tenant's own database.

`TenantRouter` resolves the tenant (domain, subdomain, header, JWT, path), reads the catalog (cached,
invalidated by the control plane's change events) and lends pooled connections under one hard
per-process connection budget. `tenant_runtime.flask.TenantRuntime` wires it into a Flask app.
"""
from tenant_runtime.catalog import TenantInfo
from tenant_runtime.errors import (
    CatalogUnavailableError,
    ConnectionBudgetExceededError,
    InvalidTenantTokenError,
    RouterClosedError,
    RuntimeConfigurationError,
    TenantConflictError,
    TenantDatabaseUnavailableError,
    TenantNotFoundError,
    TenantResolutionError,
    TenantRuntimeError,
    TenantSuspendedError,
    TenantUnavailableError,
)
from tenant_runtime.metrics import RouterCollector
from tenant_runtime.router import Lease, TenantRouter
from tenant_runtime.settings import RuntimeSettings

__all__ = [
    "CatalogUnavailableError",
    "ConnectionBudgetExceededError",
    "InvalidTenantTokenError",
    "Lease",
    "RouterClosedError",
    "RouterCollector",
    "RuntimeConfigurationError",
    "RuntimeSettings",
    "TenantConflictError",
    "TenantDatabaseUnavailableError",
    "TenantInfo",
    "TenantNotFoundError",
    "TenantResolutionError",
    "TenantRouter",
    "TenantRuntimeError",
    "TenantSuspendedError",
    "TenantUnavailableError",
]
