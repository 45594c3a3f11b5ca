"""Small helpers shared by the blueprints: the service context, 202 answers, request headers, list pages."""
from __future__ import annotations

from typing import Any, Callable

from flask import current_app, request
from flask_smorest.pagination import PaginationParameters

from control_plane import logs
from control_plane.api.auth import principal
from control_plane.api.input import MESSAGE as CONTROL_CHARACTERS, has_control_characters
from control_plane.catalog.models import Operation
from control_plane.errors import ValidationError
from control_plane.services.context import ServiceContext


def services() -> ServiceContext:
    return current_app.extensions["control_plane"]


def idempotency_key() -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key and has_control_characters(key):
        raise ValidationError("Idempotency-Key", CONTROL_CHARACTERS, location="headers")
    return key.strip()[:200] if key and key.strip() else None


def accepted(operation: Operation) -> tuple[Operation, int, dict[str, str]]:
    """The answer to a request that started work: 202, the operation, and where to watch it."""
    logs.bind(operation_id=operation.id, tenant_id=operation.tenant_id)
    return operation, 202, {"Location": f"/v1/operations/{operation.id}"}



def page_of(pagination: PaginationParameters, list_items: Callable[..., tuple[list[Any], int]], *args: Any,
            **filters: Any) -> list[Any]:
    """One page of a paginated list view: `list_items(services(), principal(), *args, offset=, limit=,
    **filters)` returns the page and the total, which goes to flask-smorest's X-Pagination header."""
    items, total = list_items(services(), principal(), *args, offset=pagination.first_item,
                              limit=pagination.page_size, **filters)
    pagination.item_count = total
    return items
