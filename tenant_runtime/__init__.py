"""tenant_runtime: routes each unit of work of a tenant application to its tenant's own database.

`TenantRouter` resolves the tenant (domain, subdomain, header, JWT, path), reads the catalog (cached,
invalidated by the control plane's change events) and lends pooled connections under one hard
per-process connection budget. `tenant_runtime.flask.TenantRuntime` wires it into a Flask app, and
`tenant_runtime.sqlalchemy` hands out SQLAlchemy sessions on those connections.

The public names below are imported on first use: the control plane imports the shared modules
(naming, errors, crypto, settings) without pulling in the router, its pools and their threads.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "TenantInfo": "catalog",
    "CatalogUnavailableError": "errors",
    "ConnectionBudgetExceededError": "errors",
    "InvalidTenantTokenError": "errors",
    "RouterClosedError": "errors",
    "RuntimeConfigurationError": "errors",
    "TenantConflictError": "errors",
    "TenantDatabaseUnavailableError": "errors",
    "TenantNotFoundError": "errors",
    "TenantResolutionError": "errors",
    "TenantRuntimeError": "errors",
    "TenantSuspendedError": "errors",
    "TenantUnavailableError": "errors",
    "RouterCollector": "metrics",
    "Lease": "router",
    "TenantRouter": "router",
    "RuntimeSettings": "settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tenant_runtime' has no attribute {name!r}")
    value = getattr(import_module(f"tenant_runtime.{module}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
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
