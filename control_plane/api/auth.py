"""Bearer-token authentication for /v1: resolves the request's principal once, before the view."""
from __future__ import annotations

from flask import current_app, g, request

from control_plane import logs
from control_plane.services.auth import Principal, authenticate


def authenticate_request() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    bearer = token.strip() if scheme.lower() == "bearer" else None
    g.principal = authenticate(current_app.extensions["control_plane"], bearer)
    logs.bind(actor=g.principal.actor)


def principal() -> Principal:
    return g.principal
