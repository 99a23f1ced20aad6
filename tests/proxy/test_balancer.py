"""Balancer: round robin, smooth weighted round robin, ejection with back-off, exclude for retries.

Time is a fake clock; every property is checked over whole cycles, where SWRR is exact.
"""

from __future__ import annotations

from collections import Counter
from math import gcd

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightmesh.proxy import balancer as balancer_module
from lightmesh.proxy.balancer import Balancer, swrr_cycle


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def servers(n: int) -> list[tuple[str, int]]:
    return [(f"127.0.0.{i + 1}", 8000 + i) for i in range(n)]


weights_strategy = st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=8)


def cycle_length(weights: list[int]) -> int:
    positive = [w for w in weights if w > 0]
    if not positive:
        return 0
    return sum(positive) // gcd(*positive)


# --------------------------------------------------------------------------- round robin


@given(n=st.integers(min_value=1, max_value=10), rounds=st.integers(min_value=1, max_value=5))
def test_round_robin_cycles_through_every_server_in_order(n, rounds):
    b = Balancer(servers(n), [1] * n, weighted=False, start=0)
    picks = [b.pick() for _ in range(n * rounds)]
    assert picks == servers(n) * rounds


def test_round_robin_two_servers_alternate():
    b = Balancer(["a", "b"], [1, 1], weighted=False, start=0)
    assert [b.pick() for _ in range(6)] == ["a", "b", "a", "b", "a", "b"]


@given(weights=weights_strategy)
def test_round_robin_ignores_weights_except_zero(weights):
    s = servers(len(weights))
    b = Balancer(s, weights, weighted=False, start=0)
    live = [srv for srv, w in zip(s, weights) if w > 0]
    picks = [b.pick() for _ in range(len(live) * 2)]
    assert picks == live * 2 if live else picks == []


# --------------------------------------------------------------------------- smooth weighted RR


def test_swrr_matches_nginx_reference_sequence():
    # nginx's documented example: weights 5, 1, 1 give a a b a c a a.
    b = Balancer(["a", "b", "c"], [5, 1, 1], weighted=True, start=0)
    assert "".join(b.pick() for _ in range(7)) == "aabacaa"


def test_swrr_reduces_by_gcd_and_skips_zero():
    assert Counter(swrr_cycle([90, 10, 0])) == {0: 9, 1: 1}
    assert swrr_cycle([0, 0]) == []


@given(weights=weights_strategy, cycles=st.integers(min_value=1, max_value=3))
def test_swrr_distributes_exactly_by_weight_over_full_cycles(weights, cycles):
    s = servers(len(weights))
    b = Balancer(s, weights, weighted=True)
    length = cycle_length(weights)
    picks = Counter(b.pick() for _ in range(length * cycles))
    if not length:
        assert b.pick() is None
        return
    g = gcd(*[w for w in weights if w > 0])
    for srv, w in zip(s, weights):
        assert picks.get(srv, 0) == cycles * w // g


@given(weights=weights_strategy)
def test_swrr_is_smooth(weights):
    # After any prefix of k picks, each server is within one pick of its exact share k·w/W.
    s = servers(len(weights))
    b = Balancer(s, weights, weighted=True)
    total = sum(weights)
    counts = Counter()
    for k in range(1, cycle_length(weights) + 1):
        counts[b.pick()] += 1
        for srv, w in zip(s, weights):
            assert abs(counts[srv] - k * w / total) < len(weights)


@settings(max_examples=50)
@given(weights=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=6),
       limit=st.integers(min_value=1, max_value=20))
def test_the_live_scheduler_keeps_every_servers_share_at_every_point(weights, limit):
    # earliest deadline first: as smooth as the schedule (nginx's algorithm), from any start
    s = servers(len(weights))
    old = balancer_module.SCHEDULE_LIMIT
    balancer_module.SCHEDULE_LIMIT = 0  # force the live path
    try:
        for start in (0, None):
            live = Balancer(s, weights, weighted=True, start=start)
            total = sum(weights)
            if not total:
                assert live.pick() is None
                continue
            assert live._live
            counts = Counter()
            for k in range(1, cycle_length(weights) * 2 + limit + 1):
                counts[live.pick()] += 1
                for srv, w in zip(s, weights):
                    assert abs(counts[srv] - k * w / total) < 2, (start, k, counts)
            assert all(counts[srv] == 0 for srv, w in zip(s, weights) if w == 0)
    finally:
        balancer_module.SCHEDULE_LIMIT = old


def test_large_weights_use_live_algorithm_and_stay_exact():
    s = ["big", "small"]
    b = Balancer(s, [999_999, 1], weighted=True, start=0)
    assert b._live
    picks = Counter(b.pick() for _ in range(1_000_000))
    assert abs(picks["big"] - 999_999) <= 1 and 1 <= picks["small"] <= 2 and sum(picks.values()) == 1_000_000


def test_zero_weight_is_never_picked_even_with_exclude_or_ejection():
    clock = FakeClock()
    b = Balancer(["a", "z", "b"], [1, 0, 1], weighted=True, clock=clock)
    assert "z" not in {b.pick() for _ in range(10)}
    assert b.pick(exclude={"a"}) == "b"
    assert b.pick(exclude={"a", "b"}) is None
    b.failed("a")
    b.failed("b")
    assert b.pick() in {"a", "b"}


def test_no_candidates_return_none():
    assert Balancer([], [], weighted=True).pick() is None
    assert Balancer([], [], weighted=False).pick(exclude={"x"}) is None
    assert Balancer(["a"], [0], weighted=False).pick() is None


# --------------------------------------------------------------------------- exclude (retry)


@given(n=st.integers(min_value=1, max_value=8), weighted=st.booleans())
def test_exclude_gives_a_new_server_each_time_until_none_left(n, weighted):
    b = Balancer(servers(n), list(range(1, n + 1)), weighted=weighted)
    tried: list = []
    for _ in range(n):
        server = b.pick(exclude=tried)
        assert server is not None and server not in tried
        tried.append(server)
    assert b.pick(exclude=tried) is None
    assert b.pick() is not None  # one-server retry: the caller asks again without exclude


# --------------------------------------------------------------------------- passive health


def test_failed_server_is_skipped_for_eject_seconds_then_returns():
    clock = FakeClock()
    b = Balancer(["a", "b", "c"], [1, 1, 1], weighted=False, eject_seconds=10, clock=clock)
    b.failed("b")
    assert "b" not in [b.pick() for _ in range(9)]
    assert b.ejected() == {"b": 10.0}
    clock.advance(9.9)
    assert "b" not in [b.pick() for _ in range(9)]
    clock.advance(0.1)
    assert Counter(b.pick() for _ in range(9)) == {"a": 3, "b": 3, "c": 3}
    assert b.ejected() == {}


def test_repeated_failure_doubles_the_ejection_up_to_the_cap_and_success_resets():
    clock = FakeClock()
    b = Balancer(["a", "b"], [1, 1], weighted=True, eject_seconds=1, max_eject_seconds=5, clock=clock)
    durations = []
    for _ in range(5):
        b.failed("a")
        durations.append(b.ejected()["a"])
        clock.advance(durations[-1])
    assert durations == [1, 2, 4, 5, 5]
    b.succeeded("a")
    assert b.ejected() == {} and b.status()[0]["failures"] == 0
    b.failed("a")
    assert b.ejected()["a"] == 1


def test_a_failure_long_after_the_server_came_back_starts_the_backoff_again():
    # A one-way UDP server (statsd) never answers, so no succeeded() clears its failures: an
    # isolated refusal hours later must not be ejected for the cap as if it were a repeat.
    clock = FakeClock()
    b = Balancer(["a", "b"], [1, 1], weighted=False, eject_seconds=1, max_eject_seconds=8, clock=clock)
    b.failed("a")
    clock.advance(1)  # back in rotation
    b.failed("a")  # at once: a repeat
    assert b.ejected()["a"] == 2
    clock.advance(2 + 7.9)  # served 7.9 s (< max_eject_seconds) since it came back
    b.failed("a")
    assert b.ejected()["a"] == 4 and b.status()[0]["failures"] == 3
    clock.advance(4 + 8)  # served max_eject_seconds without failing
    assert b.status()[0]["failures"] == 0
    b.failed("a")
    assert b.ejected()["a"] == 1 and b.status()[0]["failures"] == 1


def test_the_backoff_window_survives_a_config_swap():
    clock = FakeClock()
    old = Balancer(["a", "b"], [1, 1], weighted=False, eject_seconds=1, max_eject_seconds=8, clock=clock)
    old.failed("a")
    old.failed("b")
    clock.advance(1 + 8)  # both served max_eject_seconds since they came back
    old.failed("b")
    new = Balancer(["a", "b"], [1, 1], weighted=False, eject_seconds=1, max_eject_seconds=8, clock=clock)
    new.carry_over(old)
    clock.advance(1 + 2)
    new.failed("a")  # a new incident
    new.failed("b")  # 2 s after it came back: a repeat
    assert new.ejected() == {"a": 1, "b": 2}


def test_failures_while_ejected_do_not_compound():
    clock = FakeClock()
    b = Balancer(["a", "b"], [1, 1], weighted=False, eject_seconds=2, clock=clock)
    for _ in range(50):  # 50 in-flight requests failing together
        b.failed("a")
    assert b.ejected()["a"] == 2
    assert b.status()[0]["failures"] == 1


def test_success_clears_an_active_ejection():
    clock = FakeClock()
    b = Balancer(["a", "b"], [1, 1], weighted=False, clock=clock)
    b.failed("a")
    b.succeeded("a")  # e.g. a request that was already in flight answered
    assert {b.pick(), b.pick()} == {"a", "b"}


def test_all_ejected_still_picks_the_one_back_first():
    clock = FakeClock()
    b = Balancer(["a", "b", "c"], [1, 1, 1], weighted=True, eject_seconds=10, clock=clock)
    b.failed("b")
    clock.advance(1)
    b.failed("a")
    clock.advance(1)
    b.failed("c")
    assert b.pick() == "b"
    assert b.pick(exclude={"b"}) == "a"
    assert b.pick(exclude={"a", "b", "c"}) is None


def test_zero_eject_seconds_disables_ejection():
    b = Balancer(["a", "b"], [1, 1], weighted=False, eject_seconds=0)
    b.failed("a")
    assert b.ejected() == {}
    assert {b.pick(), b.pick()} == {"a", "b"}


@given(weights=st.lists(st.integers(min_value=1, max_value=12), min_size=2, max_size=6),
       data=st.data())
def test_remaining_servers_keep_exact_weight_proportions_while_one_is_ejected(weights, data):
    clock = FakeClock()
    s = servers(len(weights))
    b = Balancer(s, weights, weighted=True, eject_seconds=1e6, clock=clock)
    out = data.draw(st.integers(min_value=0, max_value=len(weights) - 1))
    warmup = data.draw(st.integers(min_value=0, max_value=10))
    for _ in range(warmup):
        b.pick()
    b.failed(s[out])
    remaining = [(srv, w) for i, (srv, w) in enumerate(zip(s, weights)) if i != out]
    g = gcd(*weights)
    # Each acceptable entry of the (reduced) cycle is taken once per pass over the cycle.
    picks = Counter(b.pick() for _ in range(sum(w // g for _, w in remaining) * 3))
    assert picks == {srv: 3 * w // g for srv, w in remaining}


def test_status_and_carry_over():
    clock = FakeClock()
    old = Balancer(["a", "b"], [1, 1], weighted=False, eject_seconds=5, clock=clock)
    old.failed("a")
    old.failed("b")
    new = Balancer(["a", "c"], [2, 1], weighted=True, eject_seconds=5, clock=clock)
    new.carry_over(old)
    assert new.ejected() == {"a": 5.0}
    assert new.status() == [
        {"server": "a", "weight": 2, "ejected_seconds": 5.0, "failures": 1},
        {"server": "c", "weight": 1, "ejected_seconds": 0.0, "failures": 0},
    ]
    assert new.servers == ("a", "c")
    assert new.pick() == "c"


@pytest.mark.parametrize("kwargs, message", [
    (dict(servers=["a"], weights=[1, 2]), "1 servers but 2 weights"),
    (dict(servers=["a"], weights=[-1]), "weight of server 'a'"),
    (dict(servers=["a"], weights=[1.5]), "weight of server 'a'"),
    (dict(servers=[["x"]], weights=[1]), "not hashable"),
    (dict(servers=["a"], weights=[1], eject_seconds=-1), "eject_seconds"),
    (dict(servers=["a"], weights=[1], eject_seconds=5, max_eject_seconds=1), "max_eject_seconds"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Balancer(kwargs.pop("servers"), kwargs.pop("weights"), weighted=True, **kwargs)


def test_carry_over_matches_servers_by_url_and_a_url_listed_twice_in_order():
    # Each HTTP plane has its own Server objects: compared as objects, nothing carried over (a dead
    # server came back on every endpoint change).
    class Server:
        def __init__(self, url):
            self.url = url

    old = [Server("http://a"), Server("http://a"), Server("http://b")]
    before = Balancer(old, [1, 1, 1], weighted=False, eject_seconds=10)
    before.failed(old[0])  # the first of the two "a"s
    new = [Server("http://a"), Server("http://a"), Server("http://b"), Server("http://c")]
    after = Balancer(new, [1, 1, 1, 1], weighted=False, eject_seconds=10)
    after.carry_over(before)
    ejected = [row["ejected_seconds"] > 0 for row in after.status()]
    assert ejected == [True, False, False, False]
    assert [row["failures"] for row in after.status()] == [1, 0, 0, 0]


@pytest.mark.parametrize("weights", [[3, 1], [1287] * 16 + [17] * 13, [999_999, 1, 5]])
def test_a_new_balancer_starts_anywhere_in_its_cycle_in_proportion_to_the_weights(weights):
    # Endpoint churn makes a new balancer per config: its first pick must follow the weights, or
    # under frequent configs one server takes everything (both the scheduled cycle and the live
    # algorithm that large split weights use: 16 × 1287 + 13 × 17 reduces to 22,100 > 4,096).
    servers = list(range(len(weights)))
    total, draws = sum(weights), 20_000
    firsts = Counter(Balancer(servers, weights, weighted=True).pick() for _ in range(draws))
    for server, weight in enumerate(weights):
        expected = draws * weight / total
        assert abs(firsts[server] - expected) < 6 * (expected ** 0.5) + 3, (server, firsts[server], expected)
    # and then the whole sequence keeps the weights' proportions
    b = Balancer(servers, weights, weighted=True)
    picks = Counter(b.pick() for _ in range(total))
    assert all(abs(picks[s] - w) <= 2 for s, w in zip(servers, weights)), picks
