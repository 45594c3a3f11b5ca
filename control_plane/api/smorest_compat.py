"""The one place that reaches into flask-smorest's internals (checked here at import; written for 0.44-0.47):
list views' `page` is bounded, so a huge page number is a 422 instead of an offset PostgreSQL cannot hold."""
from __future__ import annotations

import marshmallow as ma
from flask_smorest import pagination

MAX_PAGE = 1_000_000  # with page_size <= 100: offsets stay far below what a bigint holds

_unbounded_factory = getattr(pagination, "_pagination_parameters_schema_factory", None)
if _unbounded_factory is None:  # pragma: no cover - a flask-smorest this module was not written for
    raise ImportError("flask_smorest.pagination._pagination_parameters_schema_factory is gone: "
                      "control_plane/api/smorest_compat.py supports flask-smorest 0.44-0.47")


def _bounded_factory(def_page: int, def_page_size: int, def_max_page_size: int) -> type[ma.Schema]:
    unbounded = _unbounded_factory(def_page, def_page_size, def_max_page_size)

    class PaginationParametersSchema(unbounded):
        page = ma.fields.Integer(load_default=def_page, validate=ma.validate.Range(min=1, max=MAX_PAGE))

    return PaginationParametersSchema


if getattr(pagination._pagination_parameters_schema_factory, "__name__", "") != "_bounded_factory":
    pagination._pagination_parameters_schema_factory = _bounded_factory
