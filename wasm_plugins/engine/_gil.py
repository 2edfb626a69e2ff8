"""Whether a wasmtime guest call keeps the GIL: short calls, while other threads call guests too.

A ``ctypes.CDLL`` call releases the GIL, and a thread that waits for it is woken at each release.
With many threads making tiny calls on few cores, every guest call then hands the GIL over: the
caller, back from a microsecond of guest, waits for another thread's turn, and the threads fall
into convoys (8 threads made a tiny call at 0.45x the calls per second of 2). Keeping the GIL
through a short guest call avoids the hand-off; releasing it lets long guests run side by side.

So each instance looks, every :data:`LOOK_EVERY` calls, at the call it makes then: it keeps the
GIL for the calls that follow when that call took less than :data:`SHORT_CALL` and another
thread called a guest of the same engine within :data:`RECENT` seconds (:class:`Callers`);
otherwise it releases it. One thread calling alone never keeps it: nothing waits for the GIL.
Nor does a plugin with WASI, whose functions are the engine's own: one may block (a sleep)
with no Python to run meanwhile.

A call that keeps the GIL cannot be trusted to be short because the last ones were: its store's
epoch deadline is never more than :data:`KEPT_TICKS` ticks away (a tick with a timeout; the
instance watches :data:`KEPT`, an event never set), so the deadline callback runs on the
calling thread that often while the guest runs. The callback is Python: a thread that has
waited a switch interval for the GIL gets it there, as it would from a thread running Python,
and signal handlers run. The callback also notes a call that has run :data:`SHORT_CALL` or
longer, and the next call releases the GIL again.
"""

from __future__ import annotations

import threading
from typing import final

__all__ = ["FORGET", "KEPT", "KEPT_TICKS", "LOOK_EVERY", "RECENT", "SHORT_CALL", "Callers"]

LOOK_EVERY = 128
"""Calls between two looks of an instance at whether to keep the GIL."""
SHORT_CALL = 50e-6
"""Seconds under which a guest call is short: less than a hand-off of the GIL to a waiting
thread and back costs."""
RECENT = 0.1
"""Seconds within which another thread's look counts as that thread calling guests."""
FORGET = 1.0
"""Seconds after which a thread that stopped looking is forgotten."""

KEPT_TICKS = 3
"""Epoch ticks between two runs of the deadline callback of an instance that keeps the GIL and
has no timeout: 6 ms, about a switch interval (5 ms), after which a thread that waits for the
GIL asks for it; a callback sooner would find no one asking. With a timeout, every tick."""

KEPT = threading.Event()
"""What an instance that keeps the GIL watches: never set (its deadline callback then runs every
:data:`KEPT_TICKS` ticks; see the module's docstring)."""


@final
class Callers:
    """The threads that looked at calls of one engine lately (a thread looks every
    :data:`LOOK_EVERY` calls of each of its instances)."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[int, float] = {}

    def others(self, now: float) -> bool:
        """Note that this thread calls guests at ``now``; whether another thread did within
        :data:`RECENT` seconds."""
        me = threading.get_ident()
        seen = self._seen
        seen[me] = now
        others = False
        for thread, last in list(seen.items()):
            if thread == me:
                continue
            if now - last <= RECENT:
                others = True
            elif now - last > FORGET:
                seen.pop(thread, None)
        return others
