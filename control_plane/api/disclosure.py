"""What a tenant admin is shown of the platform's internals: error texts summarised, storage locations left out.

Failure messages come from PostgreSQL, the backup store or our own code and may name servers, databases,
buckets or paths: a super admin needs them, a tenant admin needs to know that it failed and whom to ask.
"""
from __future__ import annotations

from typing import Any

from flask import g, has_app_context
from marshmallow import post_dump

# Keys whose values locate the platform's storage (bucket, prefix, path).
INTERNAL_KEYS = ("location", "store_url", "object_prefix")
SUMMARY = "the work failed; an operator can read the details of this record"


def _strip(data: dict[str, Any]) -> None:
    for key in INTERNAL_KEYS:
        data.pop(key, None)
    for nested in ("result", "manifest"):
        if isinstance(data.get(nested), dict):
            _strip(data[nested])


def sees_internals() -> bool:
    if not has_app_context():  # tenantctl's local mode: the operator, with the server's secrets
        return True
    principal = g.get("principal")
    return principal is None or principal.is_super_admin


class TenantAdminView:
    """Schema mixin: a tenant admin's copy of a record has its error summarised and its storage left out."""

    @post_dump
    def _for_tenant_admin(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if sees_internals():
            return data
        if data.get("error"):
            data["error"] = SUMMARY
        _strip(data)
        return data
