"""The light install: tenant_runtime runs in a venv holding only the distribution's base dependencies.

The venv is built from pyproject.toml's `dependencies` (not the `control-plane` extra) out of a wheelhouse
kept under .devstack/ (downloaded once per dependency list), so the test checks the declared list itself;
pip picks the newest releases allowed. The same venv checks psycopg_pool's floor (pool_compat).
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from psycopg_pool import ConnectionPool

from tenant_runtime.pool_compat import SUPPORTED, UnsupportedPsycopgPoolError, check
from test_runtime_support import bulk_tenants, background_drops  # noqa: F401 (fixtures)

REPO = Path(__file__).resolve().parent.parent
# Import names of the control plane's own dependencies (the `control-plane` extra).
HEAVY = ("alembic", "boto3", "botocore", "rq", "gunicorn", "flask_smorest", "marshmallow", "zstandard", "argon2",
         "email_validator")
# The floor of psycopg-pool (pool_compat.SUPPORTED) and the release just below it.
POOL_FLOOR, POOL_BELOW_FLOOR = "3.2.8", "3.2.7"

LIGHT_SCRIPT = r"""
import importlib, json, pkgutil, sys
sys.path.insert(0, sys.argv[1])
import tenant_runtime
modules = sorted(m.name for m in pkgutil.iter_modules(tenant_runtime.__path__, "tenant_runtime."))
for name in modules:
    importlib.import_module(name)
from tenant_runtime import TenantRouter
missing = []
for name in sys.argv[2].split(","):
    try:
        importlib.import_module(name)
    except ImportError:
        missing.append(name)
served = None
if len(sys.argv) > 3:
    from sqlalchemy import text
    import tenant_migrations.models
    with TenantRouter.from_env(application_name="rt-light") as router:
        with router.session(sys.argv[3]) as session:  # the ORM path, on a routed connection
            served = list(session.execute(text("SELECT current_user, current_database()")).one())
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "control_plane")
try:
    import control_plane
    refusal = None
except ImportError as exc:
    refusal = str(exc)
print(json.dumps({"modules": modules, "missing": missing, "served": served, "refusal": refusal,
                  "control_plane": loaded}))
"""


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pools = [f"psycopg-pool=={POOL_FLOOR}", f"psycopg-pool=={POOL_BELOW_FLOOR}"]
    digest = hashlib.sha256("\n".join(requirements + pools).encode()).hexdigest()[:16]
    wheelhouse = REPO / ".devstack" / "light-wheels" / digest
    if not (wheelhouse / ".complete").exists():
        _run(sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse), *requirements)
        for pool in pools:
            _run(sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(wheelhouse), pool)
        (wheelhouse / ".complete").touch()
    return wheelhouse


@pytest.fixture(scope="module")
def light_python(tmp_path_factory, wheelhouse) -> Path:
    requirements = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    venv = tmp_path_factory.mktemp("light") / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    # --no-index: only what the wheelhouse holds, resolved from the base dependencies alone.
    _run(sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-index", "--no-compile",
         "--find-links", str(wheelhouse), *requirements)
    return python


def test_the_runtime_installs_and_serves_without_the_control_plane(light_python, bulk_tenants, settings):
    installed = json.loads(_run(str(light_python), "-c",
                                "import json, importlib.metadata as m; "
                                "print(json.dumps(sorted(d.metadata['Name'].lower() for d in m.distributions())))"
                                ).stdout)
    assert "psycopg-pool" in installed and "sqlalchemy" in installed
    assert not {"alembic", "boto3", "rq", "gunicorn", "flask-smorest"} & set(installed)

    bulk_tenants(["rt-light-clinic"])
    env = {"PATH": "/usr/bin:/bin", "CATALOG_DATABASE_URL": settings.catalog_database_url,
           "KEYRING": settings.keyring}
    result = json.loads(_run(str(light_python), "-c", LIGHT_SCRIPT, str(REPO), ",".join(HEAVY), "rt-light-clinic",
                             env=env, cwd=light_python.parent).stdout)
    assert "tenant_runtime.router" in result["modules"] and "tenant_runtime.flask" in result["modules"]
    assert result["missing"] == list(HEAVY)  # none of the control plane's dependencies is there
    assert result["control_plane"] == []
    assert result["served"] == ["tenant_rt_light_clinic", "tenant_rt_light_clinic_db"]
    assert "pip install 'tenant-control-plane[control-plane]'" in result["refusal"]  # the CLI says what to do


def test_the_runtime_read_model_matches_the_catalog_models():
    from control_plane.catalog.models import Base
    from tenant_runtime.catalog import READ_MODEL

    for clause in READ_MODEL:
        table = Base.metadata.tables[clause.name]
        for column in clause.c:
            assert column.name in table.c, f"{clause.name}.{column.name}"
            assert isinstance(table.c[column.name].type, type(column.type)), f"{clause.name}.{column.name}"


@pytest.mark.parametrize("version, supported", [(POOL_FLOOR, True), (POOL_BELOW_FLOOR, False)])
def test_psycopg_pool_floor_is_the_first_release_with_the_internals_used(light_python, wheelhouse, tmp_path,
                                                                          version, supported):
    target = tmp_path / "pool"  # ahead of the venv's newest release on sys.path
    _run(sys.executable, "-m", "pip", "--python", str(light_python), "install", "--quiet", "--no-index", "--no-deps",
         "--no-compile", "--find-links", str(wheelhouse), "--target", str(target), f"psycopg-pool=={version}")
    result = subprocess.run([str(light_python), "-c", "import sys; sys.path[:0] = sys.argv[1:]; "
                             "import psycopg_pool, tenant_runtime.pools; print(psycopg_pool.__version__)",
                             str(target), str(REPO)], capture_output=True, text=True)
    if supported:
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == version
    else:
        assert result.returncode != 0
        assert f"tenant_runtime supports psycopg-pool {SUPPORTED}" in result.stderr
        assert "ConnectionPool._close_connection is missing" in result.stderr


def test_pool_compat_check_names_what_is_missing():
    check("3.3.3", ConnectionPool)
    with pytest.raises(UnsupportedPsycopgPoolError, match=r"version 3\.4\.0 is outside the supported range"):
        check("3.4.0", ConnectionPool)

    class Unrelated:
        def __init__(self, *args, **kwargs) -> None:
            self._pool = None

        def _add_connection(self, attempt) -> None: ...

    with pytest.raises(UnsupportedPsycopgPoolError) as error:
        check("3.3.0", Unrelated)
    message = str(error.value)
    assert message.startswith(f"tenant_runtime supports psycopg-pool {SUPPORTED}")
    assert "ConnectionPool._close_connection is missing" in message
    assert "ConnectionPool._add_connection takes no `growing` argument" in message
    assert "ConnectionPool()._nconns is missing" in message and "ConnectionPool()._lock is missing" in message
    assert "_pool is missing" not in message
