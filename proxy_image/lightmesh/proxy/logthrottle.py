"""Log lines a failure repeats per connection or per datagram, at most once per interval and key.

At the open-files limit every accept fails, and every datagram of a new UDP client; a dead server
fails every connection to it. One line per event floods the log (and the disk) for as long as the
condition lasts while saying nothing new, so :class:`LogThrottle` lets the first line of a key
through, counts the ones that follow within the interval and reports that count with the next
line it lets through. The counters in ``/metrics`` still count every event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

MAX_KEYS = 1024  # keys are route names and kinds of failure: bounded by the config, but be safe


class LogThrottle:
    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}  # key → when its next line may go out
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        if len(self._next) >= MAX_KEYS:
            self._next.clear()
            self._suppressed.clear()
        self._next[key] = now + self.interval
        count = self._suppressed.pop(key, 0)
        if count:
            msg += " (and %d more like it since the last one logged)"
            args = (*args, count)
        self.logger.log(level, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.ERROR, key, msg, *args)

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)
