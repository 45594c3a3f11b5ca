"""Staged waves of a migration run: what a run may declare, which tenant goes in which wave, and the
rules that end a wave (its failure budget, its error rate) and open the next one (its pause).

A run without waves is one wave of every tenant. `canary: N` is sugar for two waves: the first N tenants
with a budget of 0, then the rest with the run's `max_failures`; its items keep `canary: true` and its
stop message says "canary failed". The health check (SQL) runs outside the dispatcher, see
services.migration_gates. Pure catalog logic: no I/O here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Callable

from control_plane.catalog.migration_run_models import MigrationRun, RunItemStatus
from control_plane.catalog.models import utcnow
from control_plane.errors import ValidationError

MAX_WAVES = 20
MAX_WAIT_SECONDS = 7 * 86400
MAX_CHECK_LENGTH = 2000
MAX_RUN_TENANTS = 100_000  # also the bound of every count a run takes (canary, max_failures)

# MigrationRun.wave_status
RUNNING = "running"    # the current wave's items start, up to the run's concurrency
GATING = "gating"      # the current wave is over; its health check is being run on its tenants
WAITING = "waiting"    # the gate passed; paused (wait_seconds, or until POST .../continue) before the next
DONE = "done"          # the last wave with work passed its gate: the run ends once nothing is in flight
FAILED = "failed"      # the gate failed: the run stopped


@dataclass(frozen=True)
class Wave:
    percent: int | None = None             # cumulative share of the run's tenants (not named in a wave)
    tenants: tuple[str, ...] | None = None  # or these tenants, by name
    count: int | None = None               # or the first N tenants (the canary sugar)
    max_failures: int | None = None        # None: the run's max_failures
    max_error_rate: float | None = None    # failed / migrated in the wave, checked when it ends
    wait_seconds: int = 0                  # pause after this wave's gate passed
    manual: bool = False                   # pause until POST /v1/migration-runs/<id>/continue

    def as_dict(self) -> dict[str, Any]:
        body = asdict(self)
        body["tenants"] = list(self.tenants) if self.tenants is not None else None
        # Left out: what was not given (None) and a manual pause not asked for; 0 is kept (a budget of 0).
        return {key: value for key, value in body.items() if value is not None and value is not False}

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> "Wave":
        known = {key: body[key] for key in cls.__dataclass_fields__ if key in body}
        if known.get("tenants") is not None:
            known["tenants"] = tuple(known["tenants"])
        return cls(**known)

    @property
    def pauses(self) -> bool:
        return self.manual or self.wait_seconds > 0


def _has_control_chars(text: str) -> bool:
    # Tabs and line breaks are SQL whitespace; anything else below 0x20 (and DEL) is refused.
    return any((ord(ch) < 0x20 and ch not in "\t\n\r") or ord(ch) == 0x7f for ch in text)


def validate(waves: list[Wave] | None, check: str | None, canary: int) -> None:
    """422 naming the field for waves and a health check a run cannot have."""
    if check is not None:
        if not check.strip():
            raise ValidationError("check", "must not be empty")
        if len(check) > MAX_CHECK_LENGTH:
            raise ValidationError("check", f"must be at most {MAX_CHECK_LENGTH} characters")
        if _has_control_chars(check):
            raise ValidationError("check", "must not contain control characters")
    if waves is None:
        return
    if canary:
        raise ValidationError("canary", "give either canary or waves (a canary is a first wave)")
    if not 1 <= len(waves) <= MAX_WAVES:
        raise ValidationError("waves", f"give between 1 and {MAX_WAVES} waves")
    previous = 0
    named: set[str] = set()
    for number, wave in enumerate(waves, 1):
        where = f"wave {number}"
        if sum(x is not None for x in (wave.percent, wave.tenants, wave.count)) != 1:
            raise ValidationError("waves", f"{where}: give either percent or tenants")
        if wave.percent is not None:
            if not 1 <= wave.percent <= 100:
                raise ValidationError("waves", f"{where}: percent must be between 1 and 100")
            if wave.percent <= previous:
                raise ValidationError("waves", f"{where}: percents must increase from wave to wave")
            previous = wave.percent
        if wave.tenants is not None:
            if not wave.tenants:
                raise ValidationError("waves", f"{where}: tenants must not be empty")
            repeated = named.intersection(wave.tenants)
            if repeated or len(set(wave.tenants)) != len(wave.tenants):
                raise ValidationError("waves", f"{where}: a tenant may be in one wave only "
                                               f"({', '.join(sorted(repeated)[:5]) or 'repeated in the wave'})")
            named.update(wave.tenants)
        if wave.max_failures is not None and not 0 <= wave.max_failures <= MAX_RUN_TENANTS:
            raise ValidationError("waves", f"{where}: max_failures must be between 0 and {MAX_RUN_TENANTS}")
        if wave.max_error_rate is not None and not 0 <= wave.max_error_rate <= 1:
            raise ValidationError("waves", f"{where}: max_error_rate must be between 0 and 1")
        if not 0 <= wave.wait_seconds <= MAX_WAIT_SECONDS:
            raise ValidationError("waves", f"{where}: wait_seconds must be between 0 and {MAX_WAIT_SECONDS}")
        if wave.manual and wave.wait_seconds:
            raise ValidationError("waves", f"{where}: pause either wait_seconds or manual, not both")
    last = waves[-1]
    if last.pauses:
        raise ValidationError("waves", f"wave {len(waves)}: the last wave has no next wave to pause before")
    if any(w.percent is not None for w in waves) and last.percent != 100:
        raise ValidationError("waves", "the last wave must be percent 100 (every tenant not named in a wave)")


def canary_waves(canary: int, max_failures: int) -> list[Wave]:
    """`canary: N`, as waves: the first N tenants, none may fail; then the rest."""
    return [Wave(count=canary, max_failures=0), Wave(percent=100, max_failures=max_failures)]


def assign(waves: list[Wave] | None, tenant_ids: list[str], migratable: set[str]) -> list[int]:
    """The wave (0-based) of each tenant, in run order. Percents and counts share out the `migratable`
    tenants not named in a wave (the others are skipped anyway: they go to the last wave). 422 when a
    named tenant is not in the run, or when explicit lists leave tenants of the run in no wave."""
    if not waves:
        return [0] * len(tenant_ids)
    position = {tenant_id: index for index, tenant_id in enumerate(tenant_ids)}
    result: list[int | None] = [None] * len(tenant_ids)
    for number, wave in enumerate(waves):
        for tenant_id in wave.tenants or ():
            if tenant_id not in position:
                raise ValidationError("waves", f"wave {number + 1}: tenant {tenant_id!r} is not in the run")
            result[position[tenant_id]] = number
    rest = [index for index, wave in enumerate(result) if wave is None and tenant_ids[index] in migratable]
    handed = 0
    for number, wave in enumerate(waves):
        if wave.count is not None:
            upto = min(len(rest), handed + wave.count)
        elif wave.percent is not None:
            upto = min(len(rest), math.ceil(wave.percent * len(rest) / 100))
        else:
            continue
        for index in rest[handed:upto]:
            result[index] = number
        handed = max(handed, upto)
    if handed < len(rest):
        left = [tenant_ids[index] for index in rest[handed:]]
        raise ValidationError("waves", f"{len(left)} tenant(s) of the run are in no wave ({', '.join(left[:5])}): "
                                       "name them or end with {\"percent\": 100}")
    return [wave if wave is not None else len(waves) - 1 for wave in result]


def specs(run: MigrationRun) -> list[Wave]:
    return [Wave.from_dict(body) for body in run.waves] if run.waves else [Wave(percent=100)]


def budget(run: MigrationRun, wave: Wave) -> int:
    return wave.max_failures if wave.max_failures is not None else run.max_failures


Tally = dict[RunItemStatus, int]


def stop_reason(run: MigrationRun, counts: Tally, failed_ids: Callable[[], list[str]]) -> tuple[str, str] | None:
    """(why, by) when the current wave spent its failure budget; the message of a canary run is kept."""
    waves = specs(run)
    wave = waves[run.current_wave]
    failed = counts.get(RunItemStatus.FAILED, 0)
    allowed = budget(run, wave)
    if failed <= allowed:
        return None
    if run.canary and run.current_wave == 0:
        return f"canary failed ({', '.join(failed_ids())}): no other tenant was started", "canary"
    if len(waves) == 1:
        return (f"failure budget exhausted: {failed} tenant(s) failed, max_failures is {allowed}; "
                "no other tenant was started", "budget")
    return (f"wave {run.current_wave + 1} of {len(waves)}: failure budget exhausted: {failed} tenant(s) failed, "
            f"max_failures is {allowed}; no later wave was started", "budget")


def error_rate_reason(run: MigrationRun, counts: Tally) -> str | None:
    """The gate's error-rate half, decided from the catalog when the wave is over."""
    waves = specs(run)
    wave = waves[run.current_wave]
    failed, succeeded = counts.get(RunItemStatus.FAILED, 0), counts.get(RunItemStatus.SUCCEEDED, 0)
    if wave.max_error_rate is None or not failed + succeeded:
        return None
    rate = failed / (failed + succeeded)
    if rate <= wave.max_error_rate:
        return None
    return (f"wave {run.current_wave + 1} of {len(waves)}: health gate failed: error rate {rate:.0%} is above "
            f"max_error_rate {wave.max_error_rate:.0%}; no later wave was started")


def record_gate(run: MigrationRun, outcome: dict[str, Any]) -> None:
    """Keep the gate's outcome on the wave's entry (a new list: the JSON column sees the change)."""
    entries = [dict(body) for body in run.waves] if run.waves else [Wave(percent=100).as_dict()]
    entries[run.current_wave]["gate"] = {**outcome, "at": utcnow().isoformat()}
    run.waves = entries


def passed(run: MigrationRun) -> bool:
    """The current wave passed its gate: the run is done, pauses, or opens the next wave (True: opened)."""
    waves = specs(run)
    wave = waves[run.current_wave]
    if run.pending == 0 or run.current_wave + 1 >= len(waves):
        run.wave_status = DONE
        return False
    if wave.pauses:
        run.wave_status = WAITING
        run.wave_ready_at = None if wave.manual else utcnow() + timedelta(seconds=wave.wait_seconds)
        return False
    open_next(run)
    return True


def open_next(run: MigrationRun) -> None:
    run.current_wave += 1
    run.wave_status = RUNNING
    run.wave_ready_at = None
