"""What every request's input must satisfy beyond its own schema: no control characters in any string (NUL cannot
be stored by PostgreSQL, and none belongs in an id, a name or a filter), refused with the field named."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from marshmallow import Schema, ValidationError, pre_load

from control_plane import errors

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MESSAGE = "must not contain control characters"


def has_control_characters(value: Any) -> bool:
    if isinstance(value, str):
        return _CONTROL.search(value) is not None
    if isinstance(value, Mapping):
        return any(has_control_characters(key) or has_control_characters(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return any(has_control_characters(item) for item in value)
    return False


class InputSchema(Schema):
    """The base of every request schema (body and query)."""

    @pre_load
    def _refuse_control_characters(self, data: Any, **kwargs: Any) -> Any:
        if isinstance(data, Mapping):
            refused = {key: [MESSAGE] for key in data if has_control_characters(key) or has_control_characters(data[key])}
            if refused:
                raise ValidationError(refused)
        return data


def check_path(view_args: Mapping[str, Any] | None) -> None:
    """The same rule for path parameters (`/v1/tenants/<tenant_id>`), which no schema parses."""
    for name, value in (view_args or {}).items():
        if has_control_characters(value):
            raise errors.ValidationError(name, MESSAGE, location="path")
