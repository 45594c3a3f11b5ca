"""Operating-system processes of the dev stack: ports, pids, and the children `run`/`test` start and stop."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class DevstackError(RuntimeError):
    """A private server or the dev environment could not be prepared, started or stopped; says why."""


def running_as_root() -> bool:
    return os.geteuid() == 0


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server could bind `host:port` now (SO_REUSEADDR, as servers do, so TIME_WAIT is no obstacle)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def process_is(pid: int, marker: bytes) -> bool:
    """Whether `pid` is a live (not zombie) process whose command line contains `marker`.

    Pid files outlive killed servers and pids get reused: a bare kill(pid, 0) is not proof.
    """
    if not pid_alive(pid):
        return False
    try:
        stat_line = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: assume it is what the pid file says
    if stat_line.rsplit(")", 1)[-1].split()[:1] in (["Z"], ["X"]):
        return False
    return marker in cmdline(pid)


def wait_gone(pid: int, timeout: float) -> bool:
    """Wait until `pid` has exited; a zombie counts as exited (PID 1 may take seconds to reap it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process_is(pid, b""):
            return True
        time.sleep(0.02)
    return not process_is(pid, b"")


def terminate(pid: int, *, signalled: bool = False) -> None:
    """SIGTERM `pid` (unless already `signalled`), SIGKILL it if it is still there after 10 s."""
    if not signalled:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, 10):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 5)


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


class Stop(BaseException):
    """SIGINT or SIGTERM arrived: unwind, stopping what was started."""


def raise_stop(signum: int, frame: FrameType | None) -> None:
    # Ignore further signals so a second Ctrl-C cannot interrupt the clean-up.
    ignore_stop_signals()
    raise Stop(signum)


def ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextlib.contextmanager
def stop_on_signals():
    """Within the block, SIGINT/SIGTERM raise `Stop` (so clean-ups run); the old handlers come back after."""
    previous = {sig: signal.signal(sig, raise_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def kill_leftover_children(pids_file: Path) -> None:
    """End `serve`/`worker` processes a killed `run` left behind (each leads its own process group)."""
    for line in pids_file.read_text(encoding="utf-8").split() if pids_file.exists() else []:
        with contextlib.suppress(ValueError):
            pid = int(line)
            command = cmdline(pid)
            if pid_alive(pid) and (b"control_plane" in command or b"tenantctl" in command):
                logger.warning("stopping process %s left by an earlier run", pid)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGTERM)
                if not wait_gone(pid, 15):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(FileNotFoundError):
        pids_file.unlink()


def stop_children(children: list[subprocess.Popen[bytes]]) -> None:
    for child in children:
        if child.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            logger.warning("process %s ignored SIGTERM; killing it", child.pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
    # The worker's work horses share its process group; make sure none outlives it.
    for child in children:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.pid, signal.SIGKILL)


def run_foreground(cmd: Sequence[str], env: dict[str, str], cwd: Path) -> int:
    """Run `cmd` in our process group (a terminal's Ctrl-C reaches it directly, and --pdb keeps the
    terminal); a SIGTERM sent to us becomes a SIGINT to it so its fixtures still tear down."""
    child = subprocess.Popen(list(cmd), env=env, cwd=cwd)

    def forward(signum: int, frame: FrameType | None) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGINT)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, forward)
    try:
        code = child.wait()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        ignore_stop_signals()
    return code if code >= 0 else 128 - code


def process_tree(pid: int) -> list[int]:
    """`pid` and every process descending from it, from /proc. Process groups do not say: RQ's work
    horse calls setpgrp(), so killing a worker's group leaves its horse running the job."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # gone meanwhile
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # after "(comm)": the state, then the ppid
        children.setdefault(parent, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def freeze_tree(pid: int) -> list[int]:
    """SIGSTOP `pid` and all its descendants, so none acts (or forks) until `thaw_tree` or a kill; returns
    the pids stopped."""
    tree = process_tree(pid)
    _signal_all(tree, signal.SIGSTOP)
    tree = process_tree(pid)  # a child forked before the stop took effect
    _signal_all(tree, signal.SIGSTOP)
    return tree


def thaw_tree(pids: list[int]) -> None:
    _signal_all(pids, signal.SIGCONT)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL `pid` and all its descendants at once, as when their machine is lost: nothing gets to clean
    up, and no parent sees a child die first. All are stopped (SIGSTOP) before any is killed, so nothing
    forks or reacts in between. Returns the pids killed; the caller reaps its own child."""
    tree = freeze_tree(pid)
    _signal_all(tree, signal.SIGKILL)
    return tree


def stop_warmly(processes: Sequence[subprocess.Popen], grace: float = 30.0) -> None:
    """SIGTERM to each process's group (an RQ worker lets its horse finish its job), then kill -9 of the
    whole tree of any still running after `grace` seconds."""
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kill_tree(process.pid)
            process.wait()
