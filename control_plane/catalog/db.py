"""Catalog engine and sessions, plus the catalog schema's own Alembic upgrade."""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, Select, create_engine, event, func, select
from sqlalchemy.engine import ExceptionContext
from sqlalchemy.orm import Session, sessionmaker

from control_plane.errors import CatalogUnavailableError
from tenant_runtime.catalog import sqlalchemy_url  # noqa: F401 (re-exported: shared with the runtime)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
T = TypeVar("T")


# TCP keepalives on every catalog connection: a job holds its tenant's advisory lock on one, and without
# them a worker cut off by a network partition keeps that lock (and the tenant) for hours.
KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def create_catalog_engine(url: str, **kwargs) -> Engine:
    kwargs.setdefault("pool_pre_ping", True)
    # Bound parameters (a token's hash, an encrypted secret) stay out of error messages and tracebacks.
    kwargs.setdefault("hide_parameters", True)
    kwargs["connect_args"] = {**KEEPALIVES, **kwargs.get("connect_args", {})}
    engine = create_engine(sqlalchemy_url(url), **kwargs)
    event.listen(engine, "handle_error", _unavailable)
    return engine


def _unavailable(context: ExceptionContext) -> CatalogUnavailableError | None:
    """A catalog that refuses connections (or drops one) is a CatalogUnavailableError, which the API answers with
    503 and Retry-After; any other database error stays as it is."""
    if context.is_pre_ping:  # the pool reconnects on its own; only a failed reconnect is an outage
        return None
    if context.is_disconnect or context.connection is None:  # no connection: the connect itself failed
        error = context.original_exception
        reason = getattr(getattr(error, "diag", None), "message_primary", None) or type(error).__name__
        return CatalogUnavailableError(reason)
    return None


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with sessions() as session, session.begin():
        yield session


def get_or_raise(session: Session, model: type[T], key: Any, not_found: Callable[[Any], Exception], *,
                 for_update: bool = False, options: Sequence[Any] = ()) -> T:
    """The `model` row with primary key `key` (locked FOR UPDATE if asked, loaded with `options`), or
    `not_found(key)` raised: the project's not-found error of that entity (`TenantNotFoundError`, ...),
    which the API answers with 404."""
    row = session.get(model, key, with_for_update=for_update, options=options)
    if row is None:
        raise not_found(key)
    return row


def page(session: Session, query: Select, *order_by: Any, offset: int, limit: int) -> tuple[list[Any], int]:
    """One page of `query`'s rows in a stable order, and how many rows there are in all."""
    total = session.scalar(select(func.count()).select_from(query.order_by(None).subquery())) or 0
    return list(session.scalars(query.order_by(*order_by).offset(offset).limit(limit)).all()), total


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade_catalog(engine: Engine, target: str = "head") -> None:
    command.upgrade(alembic_config(engine), target)
