"""A running control plane for tests that talk HTTP to it (CLI in API mode, the console in a browser):
the session's app on a real port in a thread, and a `tenantctl worker` process on the session's queue."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from werkzeug.serving import make_server

from helpers import wait_until


@pytest.fixture(scope="session")
def live_url(app) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-api", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def live_worker(settings) -> Iterator[subprocess.Popen[bytes]]:
    """A real worker process (settings come from the environment the `settings` fixture exported); per
    module, so it never takes the jobs of tests that run them in-process with `run_jobs`."""
    tenantctl = Path(sys.executable).with_name("tenantctl")
    process = subprocess.Popen([sys.executable, str(tenantctl), "worker"], env=dict(os.environ),
                               start_new_session=True, stdout=subprocess.DEVNULL)
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@pytest.fixture
def live_api(live_url: str, live_worker, settings) -> Iterator[str]:
    """The URL of a running API whose jobs a running worker executes; afterwards, waits for the work
    the test started to finish (the per-test clean-up must not race the worker)."""
    assert live_worker.poll() is None, "the worker exited"
    yield live_url

    def idle() -> bool:
        with psycopg.connect(settings.catalog_database_url, autocommit=True) as conn:
            return not conn.execute("SELECT 1 FROM operations WHERE status IN ('queued', 'running') LIMIT 1").fetchone()

    wait_until(idle, "the worker to finish the test's operations")
