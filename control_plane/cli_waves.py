"""The waves of `tenantctl migrations run` (`--waves 1,10,100 --pause 60`), and how a run's waves are shown
while it is followed, the same in local and in API mode (both render the API's JSON of a run)."""
from __future__ import annotations

from typing import Any

import click


def waves_body(percents: str | None, pause: int | None, manual: bool, max_failures: int | None) -> list[dict] | None:
    """`1,10,100` with a pause after each wave but the last; None without --waves. Usage errors exit 2;
    whether the waves make sense (increasing, ending at 100) is the API's (or the service's) to say."""
    if not percents:
        if pause is not None or manual:
            raise click.UsageError("--pause and --manual-pause need --waves")
        return None
    try:
        values = [int(part) for part in percents.split(",")]
    except ValueError:
        raise click.BadParameter("a comma-separated list of percents, e.g. 1,10,100", param_hint="--waves") from None
    waves: list[dict[str, Any]] = []
    for number, percent in enumerate(values, 1):
        wave: dict[str, Any] = {"percent": percent}
        if max_failures is not None:
            wave["max_failures"] = max_failures
        if number < len(values):
            if manual:
                wave["manual"] = True
            elif pause:
                wave["wait_seconds"] = pause
        waves.append(wave)
    return waves


def ended(run: dict[str, Any]) -> bool:
    return run["status"] in ("succeeded", "failed") or (run["status"] == "cancelled" and bool(run.get("finished_at")))


def _describe(spec: dict[str, Any]) -> str:
    if spec.get("percent") is not None:
        return f"{spec['percent']}%"
    if spec.get("count") is not None:
        return f"canary {spec['count']}"
    return f"{len(spec.get('tenants') or [])} named"


def _failure(failure: dict[str, Any]) -> str:
    return f"{failure['tenant_id']}: {failure['error'] if 'error' in failure else 'returned ' + repr(failure.get('value'))}"


def wave_line(run: dict[str, Any], wave: dict[str, Any]) -> str:
    """`wave 2/3 (10%) running: 7/18 done, ok 6, failed 1, running 2` and the like, for one wave."""
    counts, total = wave["counts"], wave["total"]
    done = counts["succeeded"] + counts["failed"] + counts["skipped"]
    head = f"wave {wave['number']}/{len(run['wave_progress'])} ({_describe(wave['spec'])}) {wave['status']}"
    if wave["status"] == "not started":
        return f"{head}: {total} tenant(s)"
    line = (f"{head}: {done}/{total} done, ok {counts['succeeded']}, failed {counts['failed']}, "
            f"skipped {counts['skipped']}, running {counts['running'] + counts['queued']}")
    gate = wave.get("gate") or {}
    if gate:
        line += f"; gate {'passed' if gate.get('passed') else 'FAILED'} on {gate.get('checked', 0)} tenant(s)"
        failures = gate.get("failed") or []
        if failures:
            line += " (" + ", ".join(_failure(f) for f in failures[:3]) + ")"
    if wave["status"] == "waiting":
        until = f"until {wave['ready_at']}" if wave.get("ready_at") else "for you"
        line += f"; paused {until}: tenantctl migrations continue {run['id']}"
    return line


class WaveAnnouncer:
    """Prints a wave's line each time its status changes (a new line, never rewritten)."""

    def __init__(self) -> None:
        self._seen: set[tuple[int, str]] = set()
        self._rollback_shown = False

    def lines(self, run: dict[str, Any]) -> list[str]:
        shown = []
        for wave in run.get("wave_progress") or []:
            if len(run["wave_progress"]) == 1 and not wave.get("gate"):
                continue  # a run without waves: the progress line says it all
            key = (wave["number"], wave["status"])
            if key not in self._seen and wave["status"] != "not started":
                self._seen.add(key)
                shown.append(wave_line(run, wave))
        if run.get("rollback_run_id") and not self._rollback_shown:
            self._rollback_shown = True
            shown.append(f"rollback run {run['rollback_run_id']} started: "
                         f"tenantctl migrations status {run['rollback_run_id']} --follow")
        return shown


def run_line(run: dict[str, Any]) -> str:
    """`12/30 done  ok 10  failed 1  skipped 1  running 4  wave 2/3 running` for one run."""
    counts = run["counts"]
    done = counts["succeeded"] + counts["failed"] + counts["skipped"]
    line = (f"{run.get('kind', 'migrate')} run {run['status']}: {done}/{counts['total']} done  ok {counts['succeeded']}  "
            f"failed {counts['failed']}  skipped {counts['skipped']}  running {counts['running'] + counts['queued']}")
    if run.get("waves"):
        line += f"  wave {run['current_wave']}/{len(run['waves'])} {run.get('wave_status') or ''}".rstrip()
    if run.get("error"):
        line += f"  ({run['error']})"
    return line
