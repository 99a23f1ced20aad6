"""Timeout timers that do not blame a peer for the proxy's own stall.

After the process was frozen (SIGSTOP, a cgroup freezer, ``docker pause``) or starved of CPU
(throttling), the loop runs its due timers before it reads what arrived meanwhile: after
SIGCONT, libuv's poll returns early without reading. A timeout judged then would blame a client
or server that was on time. So a timeout callback takes the loop time it was meant to run at
(``due``) and starts with :func:`put_off_if_late`: more than ``LATE_TICK`` late, it is called
again once, 1 ms on (after a poll), with ``due`` 0, which judges whatever happens. Once only, so
that a loop busy for longer than ``LATE_TICK`` per iteration still times its connections out.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

LATE_TICK = 0.05  # seconds: a timeout timer this late is put off once


def put_off_if_late(loop: asyncio.AbstractEventLoop, due: float, callback: Callable[..., Any],
                    *args: Any) -> asyncio.Handle | None:
    """``callback(*args, 0.0)`` 1 ms from now when a timer meant for ``due`` runs late (keep the
    handle where the timer's was, so that whatever cancels the timer cancels this); None: judge
    now."""
    if due:
        now = loop.time()
        if now - due > LATE_TICK:
            return loop.call_at(now + 0.001, callback, *args, 0.0)
    return None
