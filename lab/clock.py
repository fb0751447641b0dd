"""The lab clock: the waits the procedures describe ("wait 10 minutes", a machine that takes a
few minutes to provision, `shutdown -h 1`) run on lab time, which tests speed up.

Lab time moves `speed` times faster than wall time; timestamps the cluster shows stay wall-clock
so that kubectl's AGE column and certificate dates remain truthful.
"""

from __future__ import annotations

import asyncio
import time


class LabClock:
    def __init__(self, *, speed: float = 1.0) -> None:
        if speed <= 0:
            raise ValueError("clock speed must be positive")
        self.speed = speed
        self._start_wall = time.monotonic()

    def lab_seconds_elapsed(self) -> float:
        return (time.monotonic() - self._start_wall) * self.speed

    def real_seconds(self, lab_seconds: float) -> float:
        """How long, in wall seconds, a lab duration lasts."""
        return lab_seconds / self.speed

    async def sleep(self, lab_seconds: float) -> None:
        await asyncio.sleep(self.real_seconds(lab_seconds))

    def deadline(self, lab_seconds: float) -> float:
        """A time.monotonic() value lab_seconds of lab time from now."""
        return time.monotonic() + self.real_seconds(lab_seconds)
