"""The lease's timing: what a renewal holds, and when a runner that cannot renew gives up."""

from __future__ import annotations

import pytest

from sluice_services.progress.lease import Timing


@pytest.mark.parametrize(("lease", "grace"), [(0.6, 0.6), (30.0, 10.0), (9.0, 0.0)])
def test_a_live_runner_always_holds_its_lease_and_gives_up_when_the_reaper_may_act(
    lease: float, grace: float
) -> None:
    timing = Timing(lease, grace)
    assert timing.interval == pytest.approx(lease / 3)
    assert timing.hold == pytest.approx(lease + lease / 3)
    # Renewed every interval, each renewal holding `hold`: never less than L left.
    assert timing.hold - timing.interval == pytest.approx(lease)
    # The reaper takes the job G after the last renewal's hold ran out: the runner stops then.
    assert timing.give_up == pytest.approx(timing.hold + grace)
