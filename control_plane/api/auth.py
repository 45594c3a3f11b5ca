"""Bearer-token authentication and the view's declared access for /v1, both before the view parses its input."""
from __future__ import annotations

from flask import current_app, g, request

from control_plane import logs
from control_plane.api.blueprint import Access, required_access
from control_plane.services.auth import Principal, authenticate


def authenticate_request() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    g.principal = authenticate(current_app.extensions["control_plane"], bearer, client=request.remote_addr)
    logs.bind(actor=g.principal.actor)


def authorize_request() -> None:
    """401 without a valid token, 403 when the view's declared access refuses the principal."""
    authenticate_request()
    who = required_access(current_app, request.endpoint, request.method)
    if who is Access.SUPER_ADMIN:
        g.principal.require_super_admin()
    elif who is Access.TENANT:
        g.principal.require_tenant((request.view_args or {}).get("tenant_id"))


def principal() -> Principal:
    return g.principal
