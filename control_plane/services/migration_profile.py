"""Where a migration run's time goes: wall time per phase of its items, summed on the run (result["profile"]).

Each worker measures its items with `Phases` (control_plane.phases) and adds what it measured to the run row in the transaction
that records an item's end (the run row is locked there anyway), so the profile costs no extra write.
"""
from __future__ import annotations

from typing import Any

from control_plane.phases import Phases

__all__ = ["Phases", "add_to_profile"]


def add_to_profile(result: dict[str, Any] | None, seconds: dict[str, float], items: int = 1) -> dict[str, Any]:
    """The run's result with `seconds` and `items` added to its profile (a new dict: JSON columns need one)."""
    profile = dict((result or {}).get("profile") or {})
    totals = dict(profile.get("seconds") or {})
    for name, value in seconds.items():
        totals[name] = round(totals.get(name, 0.0) + value, 6)
    profile.update(items=profile.get("items", 0) + items, seconds=totals)
    return {**(result or {}), "profile": profile}
