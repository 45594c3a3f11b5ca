"""tenant_runtime core: isolation, the connection budget, reacting to the control plane, eviction, forks, Redis loss."""
from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter

import psycopg
import pytest

from control_plane import naming
from helpers import tenant_login
from tenant_runtime import (
    ConnectionBudgetExceededError,
    TenantNotFoundError,
    TenantSuspendedError,
)
from test_runtime_support import (  # noqa: F401 (fixtures)
    ConnectionSampler,
    bulk_tenants,
    provision,
    proxied_redis_url,
    redis_proxy,
    router_factory,
    server_connections,
    tenant_connections,
    wait_until,
)


def test_two_tenants_are_isolated(client, auth, run_jobs, ctx, router_factory):
    provision(client, auth, run_jobs, "rt-iso-a", "rt-iso-b")
    router = router_factory()

    with router.connection("rt-iso-a") as conn:
        conn.execute("INSERT INTO leads (full_name, email) VALUES ('Ana Lima', 'ana@a.example')")
        user, database, app_name = conn.execute(
            "SELECT current_user, current_database(), current_setting('application_name')").fetchone()
    assert (user, database) == ("tenant_rt_iso_a", "tenant_rt_iso_a_db")
    assert app_name == f"{router.settings.application_name}:rt-iso-a:{os.getpid()}@{os.uname().nodename}"[:63]

    with router.connection("rt-iso-b") as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == "tenant_rt_iso_b"
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 0
        conn.execute("INSERT INTO leads (full_name) VALUES ('Bruno')")

    with router.connection("rt-iso-a") as conn:
        assert [r[0] for r in conn.execute("SELECT full_name FROM leads")] == ["Ana Lima"]

    # An error inside the block rolls the transaction back.
    with pytest.raises(RuntimeError):
        with router.connection("rt-iso-a") as conn:
            conn.execute("INSERT INTO leads (full_name) VALUES ('never')")
            raise RuntimeError("boom")
    with router.connection("rt-iso-a") as conn:
        assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 1

    # The roles the router uses cannot reach each other's databases.
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        tenant_login(ctx, "rt-iso-a", dbname="tenant_rt_iso_b_db")
    with pytest.raises(TenantNotFoundError):
        with router.connection("rt-nobody"):
            pass
