"""The project's flask-smorest Blueprint: every view declares who may call it, which is checked before its
input is parsed (so a principal that may not call an endpoint gets 401/403 whatever it sent)."""
from __future__ import annotations

import enum
from typing import Callable, TypeVar

from flask import Flask
from flask_smorest import Blueprint

from control_plane.api import smorest_compat  # noqa: F401 (bounded page numbers)
from control_plane.api.errors import ERROR_HEADERS, PROBLEM_JSON, ProblemSchema
from control_plane.api.input import InputSchema

F = TypeVar("F", bound=Callable)

_ACCESS_ATTRIBUTE = "_control_plane_access"


class Access(str, enum.Enum):
    SUPER_ADMIN = "super_admin"    # super admins only
    TENANT = "tenant"              # super admins, or the admin of the tenant named by the path's <tenant_id>
    AUTHENTICATED = "authenticated"  # any valid token; the service scopes what it shows or refuses per object


class ApiBlueprint(Blueprint):
    def alt_response(self, status_code: int, response=None, **kwargs):
        """An error response documented by its description alone is problem+json (with the headers its status
        carries), like every error the API answers."""
        if response is None and int(status_code) >= 400 and "schema" not in kwargs:
            kwargs.update(schema=ProblemSchema, content_type=PROBLEM_JSON)
            kwargs.setdefault("headers", ERROR_HEADERS.get(int(status_code)))
        return super().alt_response(status_code, response, **kwargs)

    def arguments(self, schema, *args, **kwargs):
        """As flask-smorest's, for request schemas built on InputSchema only (its rules hold for every input)."""
        schema_class = schema if isinstance(schema, type) else type(schema)
        if not issubclass(schema_class, InputSchema):
            raise TypeError(f"{schema_class.__name__} parses request input: derive it from api.input.InputSchema")
        return super().arguments(schema, *args, **kwargs)

    def access(self, who: Access) -> Callable[[F], F]:
        """Declares who may call the view (and documents 401, 403 and the 503 of an unreachable dependency)."""
        def decorator(func: F) -> F:
            setattr(func, _ACCESS_ATTRIBUTE, who)
            for status, name in ((401, "UNAUTHORIZED"), (403, "FORBIDDEN"), (503, "SERVICE_UNAVAILABLE")):
                func = self.alt_response(status, response=name)(func)
            return func
        return decorator


def required_access(app: Flask, endpoint: str | None, method: str) -> Access | None:
    """What the view serving `method` on `endpoint` declared; SUPER_ADMIN when it declared nothing (fail closed),
    None when there is no such view (the router answers 404 or 405)."""
    view = app.view_functions.get(endpoint) if endpoint else None
    if view is None:
        return None
    view_class = getattr(view, "view_class", None)
    if view_class is not None:
        view = getattr(view_class, method.lower(), None) or (
            getattr(view_class, "get", None) if method == "HEAD" else None)
        if view is None:
            return None
    return getattr(view, _ACCESS_ATTRIBUTE, Access.SUPER_ADMIN)


def undeclared_views(app: Flask, prefix: str = "/v1/") -> list[str]:
    """`METHOD /path` of every view under `prefix` that declares no access (the suite keeps this empty)."""
    missing = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith(prefix):
            continue
        view_class = getattr(app.view_functions[rule.endpoint], "view_class", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            view = getattr(view_class, method.lower(), None) if view_class else app.view_functions[rule.endpoint]
            if view is not None and not hasattr(view, _ACCESS_ATTRIBUTE):
                missing.append(f"{method} {rule.rule}")
    return missing
