"""The lease of a running job: the timing its runner and the reaper both keep to.

Starting an attempt gives it a lease named by a fencing token (:mod:`progress.attempt`);
every write the runner makes shows the token, and the store refuses it once the lease is
gone. The reaper (:mod:`progress.reaper`) ends jobs whose lease ran out.

Lease timing (``Timing``), with ``L`` = ``SLUICE_PROGRESS_LEASE`` and ``G`` =
``SLUICE_PROGRESS_LEASE_GRACE``:

* the runner renews every ``L/3`` s; each renewal holds the job for ``L + L/3`` s by
  Redis's clock, so a live runner's job always has at least ``L`` s of lease left;
* the reaper takes a job only once its lease has been expired for ``G`` s, by Redis's
  clock; then the job is ``failed`` (or queued again, for a kind with retries);
* a runner that cannot renew gives the job up ``L + L/3 + G`` s after it sent its last
  successful renewal (by its own clock, which started before Redis's did): it stops the
  job's coroutine and publishes nothing more, at the latest when the reaper may act.

So a pause of Redis, or a runner cut off from it, shorter than ``L + G`` loses no job,
and a runner's death is noticed within ``L + L/3 + G`` s plus one reaper pass.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timing:
    lease: float
    grace: float

    @property
    def interval(self) -> float:
        """Seconds between renewals."""
        return self.lease / 3

    @property
    def hold(self) -> float:
        """Seconds one renewal holds the job, by Redis's clock."""
        return self.lease + self.interval

    @property
    def give_up(self) -> float:
        """Seconds after its last renewal a runner that cannot renew stops the job."""
        return self.hold + self.grace
