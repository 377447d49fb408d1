"""Named crash points for the kill tests.

`crash_point("name")` does nothing unless TSR_CRASH_AT names it, in which case the process SIGKILLs itself
right there: a real, uncatchable kill at a known place, so tests prove that every step of a write can die
without losing or half-exposing data. One environment lookup per call; never set in normal use.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("TSR_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
