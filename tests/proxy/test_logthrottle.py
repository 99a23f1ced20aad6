"""LogThrottle: the first line of a key goes out, repeats within the interval are counted and
reported with the next line let through."""

from __future__ import annotations

import logging

from lightmesh.proxy.logthrottle import LogThrottle


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_repeats_are_counted_and_reported_with_the_next_line(caplog):
    clock = Clock()
    throttle = LogThrottle(logging.getLogger("test.throttle"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="test.throttle"):
        for i in range(6):
            throttle.error("accept r1", "accept failed: %s", i)
        throttle.warning("accept r2", "other route")  # its own key
        clock.now += 9.9
        throttle.error("accept r1", "accept failed: %s", "late")  # still within the interval
        clock.now += 0.1
        throttle.error("accept r1", "accept failed: %s", "again")
        throttle.error("accept r1", "accept failed: %s", "then")
        clock.now += 10.0
        throttle.error("accept r1", "accept failed: %s", "alone")
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.ERROR, "accept failed: 0"),
        (logging.WARNING, "other route"),
        (logging.ERROR, "accept failed: again (and 6 more like it since the last one logged)"),
        (logging.ERROR, "accept failed: alone (and 1 more like it since the last one logged)"),
    ]
