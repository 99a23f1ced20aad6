"""Allow-list, per-source token bucket, circuit breaker and its rolling window, on a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightmesh import cbexpr
from lightmesh.proxy.metrics import CB_CLOSED, CB_OPEN, CB_RECOVERING
from lightmesh.proxy.policies import AllowList, CircuitBreaker, RateLimiter, RollingWindow


class FakeClock:
    def __init__(self, now: float = 5000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --------------------------------------------------------------------------- allow-list


def test_allow_list_matches_v4_v6_and_v4_mapped():
    acl = AllowList(["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"])
    assert acl.allows("10.1.2.3")
    assert acl.allows("127.0.0.1")
    assert not acl.allows("127.0.0.2")
    assert acl.allows("fd00::1")
    assert not acl.allows("fe80::1")
    assert acl.allows("::ffff:10.9.9.9")  # dual-stack listener
    assert not acl.allows("::ffff:11.0.0.1")


def test_empty_allow_list_denies_everything():
    acl = AllowList([])
    assert not acl.allows("127.0.0.1")
    assert not acl.allows("::1")


def test_unparsable_peer_is_denied_and_host_bits_are_ignored():
    acl = AllowList(["10.0.0.5/8"])
    assert acl.cidrs == ("10.0.0.0/8",)
    assert not acl.allows("not-an-ip")
    assert not acl.allows("")


@pytest.mark.parametrize("cidrs, message", [
    (["10.0.0.0/33"], "invalid CIDR '10.0.0.0/33'"),
    (["nope"], "invalid CIDR 'nope'"),
    ("10.0.0.0/8", "not the string"),
])
def test_allow_list_bad_cidr_is_named(cidrs, message):
    with pytest.raises(ValueError, match=message):
        AllowList(cidrs)


def test_allow_list_cache_is_bounded():
    acl = AllowList(["10.0.0.0/8"], max_cache=16)
    for i in range(100):
        assert acl.allows(f"10.0.0.{i}")
        assert len(acl._cache) <= 16


@given(ip=st.ip_addresses(v=4), prefix=st.integers(min_value=0, max_value=32))
def test_allow_list_agrees_with_ipaddress(ip, prefix):
    import ipaddress

    net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
    acl = AllowList([str(net)])
    assert acl.allows(str(ip))
    outside = int(net.broadcast_address) + 1
    if outside < 2 ** 32:
        assert not acl.allows(str(ipaddress.IPv4Address(outside)))


# --------------------------------------------------------------------------- rate limit


def test_burst_then_retry_after_then_refill():
    clock = FakeClock()
    rl = RateLimiter(average=2, burst=3, clock=clock)
    assert [rl.check("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = rl.check("a")
    assert wait == pytest.approx(0.5)
    assert rl.check("b") == 0.0  # per source IP
    clock.advance(wait)
    assert rl.check("a") == 0.0
    assert rl.check("a") == pytest.approx(0.5)


def test_period_seconds_scales_the_rate():
    clock = FakeClock()
    rl = RateLimiter(average=6, burst=1, period_seconds=60, clock=clock)  # one every 10 s
    assert rl.check("a") == 0.0
    assert rl.check("a") == pytest.approx(10.0)
    clock.advance(9.99)
    assert rl.check("a") == pytest.approx(0.01)
    clock.advance(0.01)
    assert rl.check("a") == 0.0


def test_fractional_refill_does_not_lose_a_token_to_rounding():
    clock = FakeClock(0.0)
    rl = RateLimiter(average=3, burst=1, clock=clock)
    admitted = 0
    for _ in range(300):
        admitted += rl.check("a") == 0.0
        clock.advance(1 / 3)
    assert admitted == 300


@settings(max_examples=200)
@given(average=st.integers(min_value=1, max_value=50), burst=st.integers(min_value=1, max_value=20),
       period=st.sampled_from([0.5, 1.0, 3.0]),
       gaps=st.lists(st.floats(min_value=0, max_value=0.5), min_size=1, max_size=300))
def test_token_bucket_never_admits_more_than_burst_plus_rate_times_time(average, burst, period, gaps):
    clock = FakeClock(0.0)
    rl = RateLimiter(average, burst, period, clock=clock)
    admitted = 0
    for gap in gaps:
        clock.advance(gap)
        wait = rl.check("src")
        if wait == 0.0:
            admitted += 1
        else:
            assert wait > 0
        assert admitted <= burst + (average / period) * clock.now + 1e-6 * len(gaps)


@given(average=st.integers(min_value=1, max_value=50), burst=st.integers(min_value=1, max_value=20))
def test_waiting_the_retry_after_always_admits(average, burst):
    clock = FakeClock()
    rl = RateLimiter(average, burst, clock=clock)
    for _ in range(burst):
        assert rl.check("x") == 0.0
    wait = rl.check("x")
    assert 0 < wait <= 1 / average + 1e-9
    clock.advance(wait)
    assert rl.check("x") == 0.0


@settings(max_examples=100)
@given(average=st.integers(min_value=1, max_value=20), burst=st.integers(min_value=1, max_value=5),
       events=st.lists(st.tuples(st.floats(min_value=0, max_value=2), st.sampled_from("abcdef")), max_size=200))
def test_forgetting_idle_buckets_never_changes_a_decision(average, burst, events):
    # Reference model: one bucket per source, kept forever, refilled continuously.
    clock = FakeClock(0.0)
    rl = RateLimiter(average, burst, clock=clock)
    model: dict[str, tuple[float, float]] = {}
    rate = float(average)
    for gap, ip in events:
        clock.advance(gap)
        tokens, last = model.get(ip, (float(burst), clock.now))
        tokens = min(burst, tokens + (clock.now - last) * rate)
        expected = tokens >= 1.0 - 1e-9
        model[ip] = (tokens - 1.0 if expected else tokens, clock.now)
        assert (rl.check(ip) == 0.0) == expected


def test_idle_full_buckets_are_forgotten():
    clock = FakeClock()
    rl = RateLimiter(average=10, burst=5, clock=clock)  # full again 0.5 s after empty
    for i in range(1000):
        rl.check(f"10.0.{i // 256}.{i % 256}")
    assert len(rl) == 1000
    clock.advance(1.0)
    rl.check("10.9.9.9")  # a new source triggers the sweep
    assert len(rl) == 1


def test_source_cap_bounds_memory_under_a_flood():
    clock = FakeClock()
    rl = RateLimiter(average=1, burst=1, period_seconds=3600, clock=clock, max_sources=100)
    for i in range(10_000):
        rl.check(f"src{i}")
        assert len(rl) <= 100


@pytest.mark.parametrize("args, message", [
    ((0, 1), "average must be a number > 0"),
    ((1, 0), "burst must be an integer >= 1"),
    ((1, 1, 0), "period_seconds must be a number > 0"),
    ((1, 1, float("inf")), "period_seconds"),
])
def test_rate_limiter_bad_arguments_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        RateLimiter(*args)


# --------------------------------------------------------------------------- rolling window


def test_empty_window_reads_zero():
    w = RollingWindow(clock=FakeClock())
    assert w.network_error_ratio() == 0.0
    assert w.response_code_ratio(500, 600, 0, 600) == 0.0
    assert w.latency_at_quantile_ms(50) == 0.0


def test_window_traefik_semantics_for_network_errors_and_codes():
    w = RollingWindow(clock=FakeClock())
    for status in (200, 200, 500, None, 504, 404):
        w.record(status, 0.001)
    # oxy: a network error is the 502 the client sees; 502 and 504 count as network errors.
    assert w.network_error_ratio() == pytest.approx(2 / 6)
    assert w.response_code_ratio(500, 600, 0, 600) == pytest.approx(3 / 6)
    assert w.response_code_ratio(500, 600, 200, 300) == pytest.approx(3 / 2)
    assert w.response_code_ratio(300, 400, 0, 600) == 0.0
    assert w.response_code_ratio(500, 600, 300, 400) == 0.0  # divisor 0


def test_window_forgets_what_is_older_than_window_seconds():
    clock = FakeClock()
    w = RollingWindow(10.0, clock=clock)
    w.record(None, 0.01)
    clock.advance(5)
    w.record(200, 0.01)
    w.refresh()
    assert w.count() == 2 and w.network_error_ratio() == 0.5
    clock.advance(5.2)
    w.refresh()
    assert w.count() == 1 and w.network_error_ratio() == 0.0
    clock.advance(100)
    w.refresh()
    assert w.count() == 0


@settings(max_examples=100)
@given(latencies=st.lists(st.floats(min_value=0.02, max_value=50_000), min_size=1, max_size=200),
       quantile=st.floats(min_value=1, max_value=100))
def test_latency_quantile_within_ten_percent_of_exact(latencies, quantile):
    w = RollingWindow(clock=FakeClock())
    for ms in latencies:
        w.record(200, ms / 1000)
    exact = sorted(latencies)[max(1, math.ceil(quantile / 100 * len(latencies))) - 1]
    assert w.latency_at_quantile_ms(quantile) == pytest.approx(exact, rel=0.1)


@settings(max_examples=50)
@given(events=st.lists(st.tuples(st.floats(min_value=0, max_value=3),
                                 st.sampled_from([200, 404, 500, 502, 503, 504, None])), max_size=100))
def test_running_totals_equal_a_recount_of_the_window(events):
    clock = FakeClock(0.0)
    w = RollingWindow(10.0, clock=clock)
    log = []
    for gap, status in events:
        clock.advance(gap)
        w.record(status, 0.001)
        log.append((w._index, status))
    w.refresh()
    live = [s for idx, s in log if idx > w._index - 100]
    codes = [502 if s is None else s for s in live]
    assert w.count() == len(live)
    net = sum(c in (502, 504) for c in codes)
    assert w.network_error_ratio() == (net / len(live) if live else 0.0)
    five = sum(500 <= c < 600 for c in codes)
    assert w.response_code_ratio(500, 600, 0, 600) == (five / len(codes) if codes else 0.0)


# --------------------------------------------------------------------------- circuit breaker


def make_breaker(expression="NetworkErrorRatio() > 0.5", **kw):
    clock = FakeClock()
    changes: list[int] = []
    cb = CircuitBreaker(expression, clock=clock, on_change=changes.append, **kw)
    return cb, clock, changes


def test_breaker_trips_on_the_expression_and_stays_open_for_open_seconds():
    cb, clock, changes = make_breaker()
    assert cb.state == CB_CLOSED and cb.allow()
    for _ in range(10):
        cb.record(None, 0.001)
    clock.advance(0.1)
    cb.record(None, 0.001)  # first check after check_interval
    assert cb.state == CB_OPEN and changes == [CB_OPEN]
    assert not cb.allow()
    clock.advance(9.99)
    assert not cb.allow()
    clock.advance(0.01)
    assert cb.state == CB_RECOVERING


def test_breaker_checks_at_most_every_check_interval():
    cb, clock, _ = make_breaker(check_interval=1.0)
    for _ in range(5):
        cb.record(None, 0.001)
        clock.advance(0.19)
    assert cb.state == CB_CLOSED  # 0.95 s: not checked yet
    clock.advance(0.06)
    cb.record(None, 0.001)
    assert cb.state == CB_OPEN


def test_healthy_traffic_and_empty_window_never_trip():
    cb, clock, changes = make_breaker("NetworkErrorRatio() < 0.5 || LatencyAtQuantileMS(50) < 1000000")
    # Both sides are true on an empty window (ratios 0): it must not be evaluated at all.
    for _ in range(50):
        clock.advance(0.1)
        assert cb.allow()
    assert changes == []
    cb2, clock2, _ = make_breaker("ResponseCodeRatio(500, 600, 0, 600) > 0.25")
    for _ in range(200):
        cb2.record(200, 0.002)
        clock2.advance(0.05)
    assert cb2.state == CB_CLOSED


def test_old_errors_leave_the_window_before_they_can_trip():
    cb, clock, _ = make_breaker(check_interval=20.0)
    cb.record(None, 0.001)  # at t0, next check at t0+20
    clock.advance(15)
    for _ in range(3):
        cb.record(200, 0.001)
    clock.advance(5)
    cb.record(200, 0.001)  # check now: the error is 20 s old, outside the 10 s window
    assert cb.state == CB_CLOSED


def test_latency_expression_trips():
    cb, clock, _ = make_breaker("LatencyAtQuantileMS(50.0) > 100")
    for _ in range(10):
        cb.record(200, 0.5)
    clock.advance(0.1)
    cb.record(200, 0.5)
    assert cb.state == CB_OPEN


def trip(cb, clock):
    for _ in range(3):
        cb.record(None, 0.001)
    clock.advance(cb.check_interval)
    cb.record(None, 0.001)
    assert cb.state == CB_OPEN


def test_recovery_admits_a_linearly_growing_share_then_closes():
    cb, clock, changes = make_breaker(open_seconds=10, recovery_seconds=10)
    trip(cb, clock)
    clock.advance(10)
    shares = []
    for second in range(10):
        admitted = 0
        for _ in range(1000):  # 1000 requests/s, all answered fine
            if cb.allow():
                admitted += 1
                cb.record(200, 0.001)
            clock.advance(0.001)
        shares.append(admitted / 1000)
        if second < 9:  # the last second ends right at the end of recovery
            assert cb.state == CB_RECOVERING
    # Share admitted during second k is about (k + 0.5) / 10.
    for k, share in enumerate(shares):
        assert share == pytest.approx((k + 0.5) / 10, abs=0.06), shares
    clock.advance(0.001)
    assert cb.allow() and cb.state == CB_CLOSED
    assert changes == [CB_OPEN, CB_RECOVERING, CB_CLOSED]


def test_failure_during_recovery_opens_again():
    cb, clock, changes = make_breaker(open_seconds=5, recovery_seconds=10)
    trip(cb, clock)
    clock.advance(5)
    assert cb.state == CB_RECOVERING
    for _ in range(2000):
        if cb.allow():
            cb.record(None, 0.001)
        clock.advance(0.001)
        if cb.state == CB_OPEN:
            break
    assert cb.state == CB_OPEN
    assert changes == [CB_OPEN, CB_RECOVERING, CB_OPEN]


def test_time_transitions_do_not_depend_on_when_the_breaker_is_asked():
    cb, clock, changes = make_breaker(open_seconds=2, recovery_seconds=3)
    trip(cb, clock)
    clock.advance(100)  # nobody asked for a long time
    assert cb.state == CB_CLOSED
    assert changes == [CB_OPEN, CB_RECOVERING, CB_CLOSED]
    assert cb.allow()


def test_status_for_rawdata():
    cb, clock, _ = make_breaker()
    cb.record(200, 0.002)
    cb.record(None, 0.004)
    status = cb.status()
    assert status["expression"] == "NetworkErrorRatio() > 0.5" and status["state"] == CB_CLOSED
    assert status["samples"] == 2 and status["network_error_ratio"] == 0.5
    assert status["latency_p50_ms"] == pytest.approx(2.0, rel=0.1)
    clock.advance(11)
    assert cb.status()["samples"] == 0


def test_window_is_cleared_when_the_breaker_trips():
    cb, clock, _ = make_breaker(open_seconds=1, recovery_seconds=1)
    trip(cb, clock)
    assert cb.window.count() == 0


@pytest.mark.parametrize("kwargs, message", [
    (dict(expression="NetworkErrorRatio() >"), "CircuitBreaker: invalid expression"),
    (dict(expression="Nope() > 1"), "unknown function 'Nope'"),
    (dict(expression="NetworkErrorRatio() > 0.5", open_seconds=0), "open_seconds must be a number > 0"),
    (dict(expression="NetworkErrorRatio() > 0.5", check_interval=-1), "check_interval"),
    (dict(expression="NetworkErrorRatio() > 0.5", window_seconds=float("nan")), "window_seconds"),
])
def test_breaker_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(kwargs.pop("expression"), **kwargs)


@settings(max_examples=50)
@given(statuses=st.lists(st.sampled_from([200, 201, 404, 500, 503, None]), min_size=1, max_size=60),
       expression=st.sampled_from(["NetworkErrorRatio() > 0.3", "ResponseCodeRatio(500, 600, 0, 600) > 0.25",
                                   "ResponseCodeRatio(400, 500, 200, 300) >= 0.5 && NetworkErrorRatio() < 0.9"]))
def test_breaker_decision_matches_the_expression_on_the_same_samples(statuses, expression):
    # Within one check the breaker trips exactly when the expression holds on the samples recorded
    # (network errors counted as Traefik does: the 502 the client sees).
    cb, clock, _ = make_breaker(expression)
    for status in statuses:
        cb.record(status, 0.001)
    clock.advance(0.1)
    samples = [cbexpr.Sample(502 if s is None else s, 1.0) for s in statuses]
    samples.append(cbexpr.Sample(200, 1.0))
    cb.record(200, 0.001)

    class Traefik(cbexpr.SampleWindow):
        def network_error_ratio(self):
            return sum(s.status in (502, 504) for s in self.samples) / len(self.samples)

    expected = cbexpr.parse(expression).evaluate(Traefik(samples))
    assert cb.state == (CB_OPEN if expected else CB_CLOSED)
