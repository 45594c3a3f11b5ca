"""First run from any folder: `./scripts/run` from a checkout in a 0700 folder whose path has a space
(as root, the `postgres` OS user cannot enter it), then the README's walkthrough, block by block,
against it. The checkout is a copy of scripts/, pyproject.toml and README.md sharing this .venv."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import devstack
from helpers import wait_until

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = (*devstack.SETTING_NAMES, "QUEUE_NAME", "DEVSTACK_DIR", "TENANTCTL_API_URL", "TENANTCTL_TOKEN")


def walkthrough_blocks(readme: str) -> list[str]:
    """The ```sh blocks of the README's "Walkthrough" section, in order."""
    section = readme.split("\n## Walkthrough\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.*?)```", section, flags=re.S)


@pytest.fixture
def checkout() -> Iterator[Path]:
    parent = Path(tempfile.mkdtemp(prefix="first-run-"))  # 0700, like a fresh `mktemp -d` or /root
    repo = parent / "my checkout"
    try:
        repo.mkdir()
        shutil.copytree(ROOT / "scripts", repo / "scripts", ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, repo / name)
        # The same interpreter and install (so no minute of pip here); the dev stack comes from the copy.
        (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        yield repo
    finally:
        data = (repo / ".devstack").resolve()
        subprocess.run([sys.executable, "-m", "devstack", "stop"], cwd=repo, env=_env(repo), check=False,
                       capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)
        if data.is_relative_to(devstack.environment.FALLBACK_PARENT):
            shutil.rmtree(data, ignore_errors=True)


def _env(repo: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.endswith("_FILE")}
    return {**env, "PYTHONPATH": str(repo / "scripts"), "PYTHONUNBUFFERED": "1"}


def test_run_from_a_private_folder_and_the_walkthrough(checkout: Path) -> None:
    assert (os.stat(checkout.parent).st_mode & 0o777) == 0o700
    log = (checkout.parent / "run.log").open("wb")
    started = time.monotonic()
    run = subprocess.Popen([str(checkout / "scripts" / "run"), "--port", str(devstack.free_port())],
                           cwd=checkout, env=_env(checkout), stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)
    env_file = checkout / ".devstack" / "dev" / "env"
    try:
        def healthy() -> bool:
            assert run.poll() is None, (checkout.parent / "run.log").read_text()
            if not env_file.exists():
                return False
            url = re.search(r"^TENANTCTL_API_URL=(\S+)$", env_file.read_text(), re.M)
            try:
                return bool(url) and urllib.request.urlopen(f"{url.group(1)}/readyz", timeout=2).status == 200
            except OSError:
                return False

        wait_until(healthy, "scripts/run to serve a ready API", timeout=180)
        print(f"\nfirst run (dev stack, catalog, API and worker ready): {time.monotonic() - started:.1f} s")
        output = (checkout.parent / "run.log").read_text()
        data_dir = (checkout / ".devstack").resolve()
        if os.geteuid() == 0:  # the postgres OS user cannot enter the checkout: the data lives elsewhere
            assert data_dir.is_relative_to(devstack.environment.FALLBACK_PARENT)
            assert f"private servers' data: {data_dir}" in output
        assert oct(env_file.stat().st_mode & 0o777) == "0o600"
        assert "Control socket" not in output  # gunicorn's per-user socket: another `serve` on the host owns it

        script = "set -euo pipefail\n" + "\n".join(walkthrough_blocks((checkout / "README.md").read_text()))
        walked = subprocess.run(["bash", "-c", script], cwd=checkout, env=_env(checkout), capture_output=True,
                                text=True, timeout=600)
        assert walked.returncode == 0, walked.stdout + walked.stderr
        assert "owner@acme.example" in walked.stdout and "admin" in walked.stdout  # the psql line's answer
        # The two tenants' generated admin passwords, each shown once: acme-clinic's by the create's answer (a
        # warm spare was free) or by the follow (a worker provisioned it), beta-clinic's by tenantctl.
        assert walked.stdout.count("admin_password") == 2, walked.stdout
        password = re.search(r"^TENANT_DB_ADMIN_URL=\S*:([^@:/]+)@", env_file.read_text(), re.M).group(1)
        assert password not in walked.stdout + walked.stderr
    finally:
        run.send_signal(signal.SIGINT)
        assert run.wait(timeout=120) == 0, (checkout.parent / "run.log").read_text()
        log.close()
    stopped = (checkout.parent / "run.log").read_text()
    assert "PostgreSQL stopped" in stopped and "Redis stopped" in stopped
