"""Per-object retry backoff (retry.py): doubling to a cap, one probe at a time, quick recovery."""

from __future__ import annotations

from lightmesh.controller.retry import RetryBackoff


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_double_to_the_cap_and_a_success_forgets():
    clock = Clock()
    b = RetryBackoff(first_seconds=5, max_seconds=20, probe_seconds=1000, clock=clock)
    assert b.select(["x"]) == {"x"}  # never failed: tried
    delays = []
    for _ in range(5):
        assert b.failed("x", "403") is (not delays)  # logged on the first failure only
        delays.append(b.next_in())
        assert b.select(["x"]) == set()  # waiting
        clock.now += b.next_in()
        assert b.select(["x"]) == {"x"}
    assert delays == [5, 10, 20, 20, 20]
    assert b.failed("x", "500")  # another reason: worth a line again
    assert b.succeeded("x") and "x" not in b and b.next_in() is None


def test_one_probe_per_period_in_turns_and_a_recovery_makes_the_others_due():
    clock = Clock()
    b = RetryBackoff(first_seconds=60, max_seconds=600, probe_seconds=5, clock=clock)
    keys = ["a", "b", "c"]
    for k in keys:
        b.failed(k, "403")
    assert b.select(keys) == set()  # they just failed: the first probe comes a period later
    clock.now += 5
    first = b.select(keys)
    assert len(first) == 1  # one probe, not all three
    b.failed(first.pop(), "403")
    assert b.select(keys) == set()
    clock.now += 5
    second = b.select(keys)
    assert len(second) == 1 and second != {"a"}  # the failing objects take turns
    assert b.succeeded(second.pop())  # the API takes writes again
    assert b.next_in() == 0 and b.select(keys) == set(keys)  # the others at once


def test_a_plain_success_or_a_changed_content_are_handled_apart():
    clock = Clock()
    b = RetryBackoff(first_seconds=60, probe_seconds=1000, clock=clock)
    b.failed("held", "409 NameTaken", content={"v": 1})
    assert not b.succeeded("other")  # never failed: not a sign of recovery
    assert b.select(["held"], lambda k: {"v": 1}) == set()
    assert b.select(["held"], lambda k: {"v": 2}) == {"held"}  # new content: tried at once
    b.forget([])
    assert "held" not in b


def test_an_event_refresh_that_fails_waits_for_its_backoff_not_a_busy_loop():
    import asyncio

    from lightmesh.controller import events
    from lightmesh.controller.model import ObjectError
    from lightmesh.controller.sources import ApiError

    class API:
        calls = 0

        async def request(self, method, path, **kwargs):
            API.calls += 1
            if API.calls > 1:
                raise ApiError(503, "ServiceUnavailable")
            return {}

    clock = Clock()
    recorder = events.EventRecorder(API(), "me", clock=clock)
    error = ObjectError("Service", "shop", "web", "metadata.annotations[x]", "bad")
    assert asyncio.run(recorder.record([error])) == 1
    assert recorder.next_retry_in() == events.REFRESH_SECONDS
    clock.now += events.REFRESH_SECONDS
    asyncio.run(recorder.record([error]))  # the refresh fails
    assert recorder.next_retry_in() == recorder.backoff.first_seconds  # not 0 (due ever since)
