"""The web console at /console: static HTML/JS/CSS shipped in the package, every action through /v1.

The page holds no data and no secret; the browser signs in with a bearer token kept in
sessionStorage and sends it in the Authorization header (no cookies, so no CSRF to forge).
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from control_plane.services.rpo import DEFAULT_RPO_HOURS

STATIC = Path(__file__).with_name("static")

# Scripts, styles and requests from this origin only; no framing (clickjacking), no inline script.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

blp = Blueprint("console", __name__)


def _secure(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response


@blp.get("/console")
@blp.get("/console/")
def index() -> Response:
    html = (STATIC / "console.html").read_text(encoding="utf-8")
    html = html.replace("{{RPO_HOURS}}", str(DEFAULT_RPO_HOURS))
    return _secure(Response(html, mimetype="text/html"))


@blp.get("/console/static/<path:name>")
def static(name: str) -> Response:
    return _secure(send_from_directory(STATIC, name))
