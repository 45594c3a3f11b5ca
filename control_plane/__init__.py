"""Control plane for database-per-tenant PostgreSQL: catalog, API, jobs and CLI."""
from importlib.util import find_spec

# The distribution's base install is the tenant runtime's: say how to get the control plane's own
# dependencies rather than fail later on the first of them.
_MISSING = [name for name in ("flask_smorest", "alembic", "rq", "boto3") if find_spec(name) is None]
if _MISSING:
    raise ImportError(f"the control plane needs its dependencies ({', '.join(_MISSING)} missing): "
                      "pip install 'tenant-control-plane[control-plane]'")
