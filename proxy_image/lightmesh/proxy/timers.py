"""Timeout timers that do not blame a peer for the proxy's own stall.

After the process was frozen (SIGSTOP, a cgroup freezer, ``docker pause``) or starved of CPU
(throttling), the loop runs its due timers before it reads what arrived meanwhile: after
SIGCONT, libuv's poll returns early without reading. A timeout judged then would blame a client
or server that was on time. So a timeout callback takes the loop time it was meant to run at
(``due``) and starts with :func:`put_off_if_late`: more than ``LATE_TICK`` late, it is called
again once, 1 ms on (after a poll), with ``due`` 0, which judges whatever happens. Once only, so
that a loop busy for longer than ``LATE_TICK`` per iteration still times its connections out.
:func:`within` is ``asyncio.wait_for`` under the same rule, for upstream connects: a server that
accepted during the freeze is not failed (and ejected) for it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, TypeVar

T = TypeVar("T")

LATE_TICK = 0.05  # seconds: a timeout timer this late is put off once


def put_off_if_late(loop: asyncio.AbstractEventLoop, due: float, callback: Callable[..., Any],
                    *args: Any, grace: float = 0.001) -> asyncio.Handle | None:
    """``callback(*args, 0.0)`` ``grace`` seconds from now when a timer meant for ``due`` runs late
    (keep the handle where the timer's was, so that whatever cancels the timer cancels this); None:
    judge now."""
    if due:
        now = loop.time()
        if now - due > LATE_TICK:
            return loop.call_at(now + grace, callback, *args, 0.0)
    return None


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """``await awaitable``, ``TimeoutError`` after ``timeout`` seconds (``asyncio.wait_for``), except
    that a timer that runs late is put off once, as the module says."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as window:
        timer: list[asyncio.Handle | None] = [None]

        def expire(due: float) -> None:
            # a connect that completed meanwhile needs a few loop turns, not just one read, to
            # finish (the transport and protocol are made after the socket reports writable)
            timer[0] = later = put_off_if_late(loop, due, expire, grace=LATE_TICK)
            if later is None:
                window.reschedule(loop.time())  # asyncio cancels the wait and raises TimeoutError

        due = loop.time() + timeout
        timer[0] = loop.call_at(due, expire, due)
        try:
            return await awaitable
        finally:
            if timer[0] is not None:
                timer[0].cancel()
