"""Flask integration: resolve every request's tenant, refuse unavailable ones, lend one connection per request.

    runtime = TenantRuntime(app)              # or TenantRuntime(app, router=TenantRouter(...))
    @app.get("/leads")
    def leads():
        return [lead.full_name for lead in db_session().scalars(select(Lead))]    # the ORM, or
        rows = get_connection().execute("SELECT ...").fetchall()                   # psycopg; g.tenant.id

The request's connection is taken on first use and given back after the response: committed when
the response status is below 400, rolled back otherwise. db_session() is a SQLAlchemy Session on that
same connection and transaction: flushed before the commit (its own commit() only flushes: the request
commits once, after the response), closed at teardown whatever happens.
Errors are application/problem+json.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, TypeVar

import psycopg
from flask import Flask, Response, current_app, g, json, request
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from tenant_runtime.catalog import TenantInfo
from tenant_runtime.errors import TenantRuntimeError
from tenant_runtime.router import Lease, TenantRouter

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
EXTENSION = "tenant_runtime"
_LEASE = "_tenant_runtime_lease"
_SESSION = "_tenant_runtime_session"
_EXEMPT = "_tenant_runtime_exempt"

F = TypeVar("F", bound=Callable[..., Any])


def tenant_exempt(view: F) -> F:
    """Mark a view as tenant-independent (health checks, metrics): no resolution, no connection."""
    setattr(view, _EXEMPT, True)
    return view


def problem(status: int, title: str, detail: str, *, headers: dict[str, str] | None = None,
            **extra: Any) -> Response:
    body = {"type": "about:blank", "status": status, "title": title, "detail": detail, **extra}
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def problem_for(error: TenantRuntimeError) -> Response:
    headers: dict[str, str] = {}
    if error.retry_after:
        headers["Retry-After"] = str(error.retry_after)
    if error.status == 401:
        headers["WWW-Authenticate"] = 'Bearer error="invalid_token"'
    extra = {"tenant_id": error.tenant_id} if error.tenant_id else {}
    if error.status >= 500:
        log.warning("%s %s: %s", request.method, request.path, error.detail)
    return problem(error.status, error.title, error.detail, headers=headers, **extra)


class TenantRuntime:
    def __init__(self, app: Flask | None = None, router: TenantRouter | None = None, *,
                 exempt_paths: Iterable[str] = ("/healthz", "/readyz", "/metrics")) -> None:
        self.router = router
        self._owns_router = router is None
        self.exempt_paths = tuple(exempt_paths)
        self._exempt_prefixes = tuple(p.rstrip("/") + "/" for p in self.exempt_paths)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        if self.router is None:
            self.router = TenantRouter.from_env()
        app.extensions[EXTENSION] = self
        app.before_request(self._before_request)
        app.after_request(self._after_request)
        app.teardown_request(self._teardown_request)
        app.register_error_handler(TenantRuntimeError, problem_for)

    def close(self) -> None:
        """Close the router if this extension created it."""
        if self._owns_router and self.router is not None:
            self.router.close()

    def _is_exempt(self) -> bool:
        view = current_app.view_functions.get(request.endpoint or "")
        if view is not None and getattr(view, _EXEMPT, False):
            return True
        path = request.path
        return path in self.exempt_paths or path.startswith(self._exempt_prefixes)

    def _before_request(self) -> None:
        if request.endpoint is None or self._is_exempt():
            return  # unknown routes answer 404 without touching the catalog
        g.tenant = self.router.resolve_tenant(host=request.host, headers=request.headers, path=request.path,
                                              peer=request.remote_addr)

    def _after_request(self, response: Response) -> Response:
        session: Session | None = g.pop(_SESSION, None)
        lease: Lease | None = g.pop(_LEASE, None)
        if lease is None:
            return response
        commit = response.status_code < 400
        try:
            if session is not None:
                try:
                    self.router.sessions.close(session, flush=commit)
                except BaseException:
                    lease.release(commit=False)
                    raise
            lease.release(commit=commit)
        except (psycopg.Error, SQLAlchemyError) as exc:
            log.warning("tenant %s: commit failed for %s %s: %s", lease.tenant_id, request.method, request.path,
                        type(exc).__name__)
            return problem(500, "Commit failed", "the request's changes could not be saved; nothing was changed")
        return response

    def _teardown_request(self, exc: BaseException | None) -> None:
        # Still here: the response was never finished (an unhandled error). Undo, and give everything back.
        session: Session | None = g.pop(_SESSION, None)
        lease: Lease | None = g.pop(_LEASE, None)
        try:
            if session is not None:
                self.router.sessions.close(session)
        finally:
            if lease is not None:
                lease.release(commit=False)


def current_tenant() -> TenantInfo:
    tenant = g.get("tenant")
    if tenant is None:
        raise RuntimeError("this request has no tenant (an exempt view, or outside a request)")
    return tenant


def get_connection() -> psycopg.Connection:
    """The request's connection to its tenant's database (taken on first call, in a transaction)."""
    lease: Lease | None = g.get(_LEASE)
    if lease is None:
        runtime: TenantRuntime = current_app.extensions[EXTENSION]
        lease = runtime.router.acquire(current_tenant().id)
        setattr(g, _LEASE, lease)
    return lease.connection


def db_session() -> Session:
    """The request's SQLAlchemy Session, on the request's connection (taken on first call).

    Flushed and committed with the request's transaction when the response status is below 400, rolled
    back otherwise; closed at teardown in every case. session.commit() flushes (the request commits once,
    after the response); flush in the view to turn a constraint violation into a response of your own.
    """
    session: Session | None = g.get(_SESSION)
    if session is None:
        runtime: TenantRuntime = current_app.extensions[EXTENSION]
        session = runtime.router.sessions.open(get_connection())
        setattr(g, _SESSION, session)
    return session
