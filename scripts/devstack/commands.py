"""The entry points `scripts/run`, `scripts/test`, `scripts/bench` call: `python -m devstack run|test|bench|stop`."""
from __future__ import annotations

import argparse
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from devstack.environment import REPO_ROOT, dev_environment, devstack_dir, exclusive, stop_servers_under
from devstack.processes import (
    LOOPBACK, DevstackError, Stop, free_port, ignore_stop_signals, kill_leftover_children, port_is_free,
    run_foreground, stop_children, stop_on_signals,
)
from devstack.server import write_private

logger = logging.getLogger(__name__)

DEFAULT_HTTP_PORT = 8000


def _tenantctl() -> list[str]:
    script = Path(sys.executable).with_name("tenantctl")
    if script.is_file():
        # Through the interpreter: a venv under a path with spaces gets a shebang the kernel cannot run.
        return [sys.executable, str(script)] if _has_python_shebang(script) else [str(script)]
    return [sys.executable, "-m", "control_plane.cli"]


def _has_python_shebang(script: Path) -> bool:
    with script.open("rb") as fh:
        first = fh.readline()
    return first.startswith(b"#!") and b"python" in first and b"/bin/sh" not in first


def _wait_http(url: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DevstackError(f"`tenantctl serve` exited with code {process.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers; readiness of its dependencies is /readyz's business
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise DevstackError(f"the API did not answer {url} within {timeout:.0f}s")


def _http_port(host: str, port: int | None) -> int:
    if port is not None:
        if not port_is_free(port, host):
            raise DevstackError(f"port {port} on {host} is in use (another `scripts/run`?): pass --port N")
        return port
    if port_is_free(DEFAULT_HTTP_PORT, host):
        return DEFAULT_HTTP_PORT
    chosen = free_port(host)
    logger.warning("port %s on %s is in use; the API will listen on %s instead", DEFAULT_HTTP_PORT, host, chosen)
    return chosen


def _print_banner(base_url: str, token: str, base: Path) -> None:
    auth = f'-H "Authorization: Bearer {token}"'
    body = '{"id":"acme-clinic","name":"Acme Clinic","admin_email":"owner@acme.example"}'
    env_file = shlex.quote(str(base / "env"))
    print(
        "\n".join([
            "",
            "Control plane is running.",
            f"  API:      {base_url}",
            f"  Console:  {base_url}/console",
            f"  Docs:     {base_url}/docs",
            f"  Token:    {token}",
            "            (super_admin, created for this run; keep it to yourself)",
            f"  Settings: {base / 'env'}",
            "",
            "Create a tenant:",
            f"  curl -X POST {base_url}/v1/tenants {auth} -H \"Content-Type: application/json\" -d '{body}'",
            "Follow the operation it answers with (its id is in the body and the Location header):",
            f"  curl {base_url}/v1/operations/<operation-id> {auth}",
            "",
            "Use tenantctl from another shell:",
            f"  set -a; . {env_file}; set +a; .venv/bin/tenantctl tenants list",
            "",
            f"Press Ctrl-C to stop. Data stays under {base} for the next run.",
            "",
        ]),
        flush=True,
    )


def _announce(root: Path) -> None:
    if root != (REPO_ROOT / ".devstack").absolute():
        logger.info("private servers' data: %s (the postgres OS user can reach it)", root)


def cmd_run(host: str = LOOPBACK, port: int | None = None) -> int:
    """Catalog upgrade, API and one worker on private servers under `<devstack dir>/dev`, until Ctrl-C."""
    root = devstack_dir(create=True)
    _announce(root)
    base = root / "dev"
    children: list[subprocess.Popen[bytes]] = []
    try:
        with stop_on_signals(), dev_environment(base) as settings:
            pids_file = base / "processes.pid"
            try:
                kill_leftover_children(pids_file)
                http_port = _http_port(host, port)
                env = {**_os_environ(), **settings, "PYTHONUNBUFFERED": "1"}
                tenantctl = _tenantctl()
                upgrade = subprocess.run([*tenantctl, "catalog", "upgrade"], env=env, cwd=REPO_ROOT, check=False)
                if upgrade.returncode:
                    raise DevstackError(f"`tenantctl catalog upgrade` failed (exit {upgrade.returncode}, see above)")
                created = subprocess.run(
                    [*tenantctl, "tokens", "create", "--role", "super_admin", "--name", "dev"],
                    env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, check=False,
                )
                lines = [line.strip() for line in created.stdout.splitlines() if line.strip()]
                if created.returncode or not lines:
                    raise DevstackError(f"`tenantctl tokens create` failed (exit {created.returncode})")
                token = lines[-1]
                shown_host = LOOPBACK if host in ("0.0.0.0", "::", "") else host
                base_url = f"http://{'[' + shown_host + ']' if ':' in shown_host else shown_host}:{http_port}"
                # For tenantctl in another shell: `set -a; . .devstack/dev/env; set +a` (0600, git-ignored).
                # TENANTCTL_* make it go through this API; the others serve the local-mode commands.
                exported = {**settings, "TENANTCTL_API_URL": base_url, "TENANTCTL_TOKEN": token}
                write_private(base / "env", "".join(f"{name}={shlex.quote(value)}\n"
                                                     for name, value in sorted(exported.items())))
                for args in (["serve", "--host", host, "--port", str(http_port)], ["worker"]):
                    # Own process group: Ctrl-C reaches only us, and we stop each child with its descendants.
                    children.append(
                        subprocess.Popen([*tenantctl, *args], env=env, cwd=REPO_ROOT, start_new_session=True)
                    )
                pids_file.write_text("".join(f"{child.pid}\n" for child in children), encoding="utf-8")
                _wait_http(f"{base_url}/healthz", children[0])
                _print_banner(base_url, token, base)
                while True:
                    for child, name in zip(children, ("serve", "worker"), strict=True):
                        if child.poll() is not None:
                            raise DevstackError(f"`tenantctl {name}` exited with code {child.returncode}")
                    time.sleep(0.5)
            finally:
                # Children first, while their database and Redis are still up; no signal may cut this short.
                ignore_stop_signals()
                stop_children(children)
                pids_file.unlink(missing_ok=True)
    except Stop:
        logger.info("stopped")
        return 0


def _os_environ() -> dict[str, str]:
    # The CLI run by `run` itself works locally: never through an API a previous shell pointed at.
    return {k: v for k, v in os.environ.items() if k not in ("TENANTCTL_API_URL", "TENANTCTL_TOKEN")}


def cmd_stop() -> int:
    """Stop private servers a killed `run` or `test` left behind; a live session's servers are left alone."""
    root = devstack_dir()
    stopped, busy = 0, 0
    for base in (root / "dev", root / "test", root / "bench"):
        if not base.is_dir():
            continue
        try:
            with exclusive(base / ".lock"):
                stopped += stop_servers_under(base)
        except DevstackError as exc:
            logger.warning("%s", exc)
            busy += 1
    stopped += stop_servers_under(root / "tmp")
    logger.info("stopped %d private server(s)", stopped)
    return 1 if busy else 0


def cmd_test(pytest_args: Sequence[str]) -> int:
    """pytest with the settings of a fresh, fsync-less private stack under `<devstack dir>/test`."""
    return _run_in_stack("test", [sys.executable, "-m", "pytest", *pytest_args], fast=True)


def cmd_bench(name: str, bench_args: Sequence[str]) -> int:
    """`python -m benchmarks.<name>` on a fresh, durable private stack under `<devstack dir>/bench`
    (durable: the baselines each benchmark measures run on the same server, with fsync on as in production)."""
    return _run_in_stack("bench", [sys.executable, "-m", f"benchmarks.{name}", *bench_args], fast=False)


def _run_in_stack(kind: str, cmd: Sequence[str], *, fast: bool) -> int:
    root = devstack_dir(create=True)
    _announce(root)
    scratch = root / "tmp"
    # Until the child runs, a signal unwinds through the clean-ups below.
    try:
        with stop_on_signals(), dev_environment(root / kind, fast=fast, fresh=True) as settings:
            try:
                _clear_scratch(scratch)
                env = {**_os_environ(), **settings, "DEVSTACK_DIR": str(root)}
                return run_foreground(cmd, env, REPO_ROOT)
            finally:
                _clear_scratch(scratch)
    except Stop as stop:
        return 128 + int(stop.args[0])


def _clear_scratch(scratch: Path) -> None:
    if scratch.is_dir():
        left = stop_servers_under(scratch)
        if left:
            logger.warning("stopped %d server(s) that tests left running under %s", left, scratch)
        shutil.rmtree(scratch, ignore_errors=True)


USAGE = (
    "usage: python -m devstack run [--host H] [--port P]\n"
    "       python -m devstack test [pytest args...]\n"
    "       python -m devstack bench NAME [args...]\n"
    "       python -m devstack stop   (stop private servers left under the devstack dir)"
)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    try:
        if command == "run":
            parser = argparse.ArgumentParser(prog="scripts/run", description="Run the control plane locally.")
            parser.add_argument("--host", default=LOOPBACK, help="address the API listens on (default %(default)s)")
            parser.add_argument("--port", type=int, default=None, help=f"API port (default {DEFAULT_HTTP_PORT})")
            options = parser.parse_args(rest)
            return cmd_run(options.host, options.port)
        if command == "test":
            return cmd_test(rest)
        if command == "bench" and rest:
            return cmd_bench(rest[0], rest[1:])
        if command == "stop":
            return cmd_stop()
    except DevstackError as exc:
        logger.error("%s", exc)
        return 1
    print(USAGE, file=sys.stderr)
    return 2
