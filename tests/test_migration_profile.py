"""The migration run profile: phases measured by a worker add up on the run's result (pure unit test)."""
from __future__ import annotations

from control_plane.phases import Phases
from control_plane.services.migration_profile import add_to_profile


def test_phases_add_up_and_drain() -> None:
    phases = Phases()
    phases.add("connect", 0.25)
    with phases.phase("connect"):
        pass
    phases.add("migrate", 1.0)
    drained = phases.drain()
    assert drained["connect"] >= 0.25 and drained["migrate"] == 1.0
    assert phases.seconds == {}


def test_profile_sums_items_and_keeps_the_rest_of_the_result() -> None:
    result = {"destructive_revisions": ["0003"]}
    once = add_to_profile(result, {"connect": 0.5})
    twice = add_to_profile(once, {"connect": 0.25, "migrate": 2.0})
    assert twice == {"destructive_revisions": ["0003"],
                     "profile": {"items": 2, "seconds": {"connect": 0.75, "migrate": 2.0}}}
    assert once["profile"] == {"items": 1, "seconds": {"connect": 0.5}}  # a new dict each time
    assert result == {"destructive_revisions": ["0003"]}
