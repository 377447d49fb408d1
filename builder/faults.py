"""Named crash points for the kill tests.

`crash_point("name")` does nothing unless TSR_CRASH_AT names it, in which case the process SIGKILLs itself
right there: a real, uncatchable kill at a known place, so tests prove that every step of a write can die
without losing or half-exposing data. `TSR_CRASH_AT=name#N` kills at the N-th time the point is reached, to
reach deep into a long run, and `name@R` (or `name#N@R`) kills only the training rank R (the RANK a launcher
sets), so a test can kill one rank of several. With TSR_CRASH_ONCE=FILE the kill happens once across processes:
the first process to reach it creates FILE and dies, later ones (a restarted Ray actor) see FILE and go on.
One environment lookup per call; never set in normal use.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    target = os.environ.get("TSR_CRASH_AT")
    if not target:
        return
    target, _, rank = target.partition("@")
    point, _, nth = target.partition("#")
    if point != name or (rank and rank != os.environ.get("RANK", "0")):
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] < int(nth or 1):
        return
    once = os.environ.get("TSR_CRASH_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
