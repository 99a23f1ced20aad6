"""The middlewares' state machines: source allow-list, per-source rate limit, circuit breaker.

Owns :class:`AllowList`, :class:`RateLimiter`, :class:`CircuitBreaker` and the breaker's rolling
:class:`RollingWindow`. Everything here is pure of I/O and driven by an injectable monotonic clock
(no timers, no tasks): state advances lazily when the proxy calls in, so each call is a handful of
dict and float operations on the request path, and tests drive time with a fake clock.

Semantics follow Traefik (the config contract, :mod:`lightmesh.config`, is the reference):

* allow-list: the TCP peer's address against CIDRs; an empty list denies everything.
* rate limit: a token bucket per source IP, ``average`` tokens per ``period_seconds``, at most
  ``burst`` stored; a request whose token is due within ``max_delay`` waits for it (``reserve``),
  a refused one learns how long until the next token (``Retry-After``).
* circuit breaker: oxy's ``cbreaker`` as used by Traefik: closed → (expression true) → open for
  ``open_seconds`` → recovering: a linearly growing share of requests is let through for
  ``recovery_seconds``; the expression true again → open, else → closed.
"""

from __future__ import annotations

import ipaddress
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence

from lightmesh import cbexpr
from lightmesh.proxy.metrics import CB_CLOSED, CB_OPEN, CB_RECOVERING

Clock = Callable[[], float]

__all__ = ["AllowList", "RateLimiter", "CircuitBreaker", "RollingWindow", "CB_CLOSED", "CB_OPEN",
           "CB_RECOVERING", "LATENCY_BOUNDS_MS"]


# --------------------------------------------------------------------------- allow-list


class AllowList:
    """Source CIDRs. ``allows(ip)`` is cached per IP string (the proxy asks once per connection)."""

    __slots__ = ("cidrs", "_networks", "_cache", "max_cache")

    def __init__(self, cidrs: Sequence[str], *, max_cache: int = 4096) -> None:
        if isinstance(cidrs, str):
            raise ValueError(f"AllowList: cidrs must be a list of CIDRs, not the string {cidrs!r}")
        networks = []
        for cidr in cidrs:
            try:
                networks.append(ipaddress.ip_network(cidr, strict=False))
            except (ValueError, TypeError):
                raise ValueError(f"AllowList: invalid CIDR {cidr!r}") from None
        self.cidrs: tuple[str, ...] = tuple(str(n) for n in networks)
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}
        self.max_cache = max_cache

    def allows(self, ip: str) -> bool:
        """True when ``ip`` (a peer address string, v4, v6 or v4-mapped v6) is in one of the CIDRs.
        Anything unparsable is denied."""
        decision = self._cache.get(ip)
        if decision is None:
            decision = self._decide(ip)
            cache = self._cache
            if len(cache) >= self.max_cache:
                cache.clear()  # bounded: many distinct sources only cost re-deciding
            cache[ip] = decision
        return decision

    def _decide(self, ip: str) -> bool:
        if not self._networks:
            return False
        try:
            address = ipaddress.ip_address(ip)
        except (ValueError, TypeError):
            return False
        mapped = getattr(address, "ipv4_mapped", None)
        if mapped is not None:
            address = mapped  # dual-stack listener: ::ffff:10.0.0.1 is 10.0.0.1
        if getattr(address, "scope_id", None):
            address = ipaddress.ip_address(str(address).partition("%")[0])
        return any(address in network for network in self._networks if network.version == address.version)

    def __repr__(self) -> str:
        return f"AllowList({list(self.cidrs)!r})"


# --------------------------------------------------------------------------- rate limit


class RateLimiter:
    """Token bucket per source IP.

    ``check(ip)`` returns 0.0 when the request may pass (a token was taken), else the seconds until
    the next token (the caller rounds up for ``Retry-After``). As Traefik's limiter does, a request
    whose token is due within ``max_delay`` (1/(2·rate) s, at most 0.5 s) is not refused but delayed:
    ``reserve(ip)`` takes that token ahead (the bucket goes below zero) and the caller forwards it
    after the wait ``check`` returned. A bucket idle long enough to be full
    again is indistinguishable from a new one and is forgotten at the next sweep, so memory follows
    the sources active in the last ``burst / rate`` seconds; ``max_sources`` is a hard cap beyond
    which the oldest buckets are dropped (those sources get a fresh burst).
    """

    __slots__ = ("average", "burst", "period_seconds", "rate", "max_sources", "max_delay", "_clock", "_buckets",
                 "_full_after", "_next_sweep")

    def __init__(self, average: int, burst: int, period_seconds: float = 1.0, *, clock: Clock = time.monotonic,
                 max_sources: int = 65536) -> None:
        if not _positive(average):
            raise ValueError(f"RateLimiter: average must be a number > 0, got {average!r}")
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ValueError(f"RateLimiter: burst must be an integer >= 1, got {burst!r}")
        if not _positive(period_seconds):
            raise ValueError(f"RateLimiter: period_seconds must be a number > 0, got {period_seconds!r}")
        if isinstance(max_sources, bool) or not isinstance(max_sources, int) or max_sources < 1:
            raise ValueError(f"RateLimiter: max_sources must be an integer >= 1, got {max_sources!r}")
        self.average = average
        self.burst = burst
        self.period_seconds = float(period_seconds)
        self.rate = average / self.period_seconds  # tokens per second
        self.max_delay = 0.5 if self.rate < 1 else 1.0 / (2.0 * self.rate)  # Traefik's ratelimiter
        self.max_sources = max_sources
        self._clock = clock
        self._buckets: dict[str, list[float]] = {}  # ip → [tokens, time of last update]
        self._full_after = burst / self.rate  # an empty bucket is full again after this long
        self._next_sweep = clock() + max(self._full_after, 1.0)

    def check(self, ip: str) -> float:
        now = self._clock()
        bucket = self._buckets.get(ip)
        if bucket is None:
            if now >= self._next_sweep or len(self._buckets) >= self.max_sources:
                self._sweep(now)
            self._buckets[ip] = [self.burst - 1.0, now]
            return 0.0
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        # 1e-9: float refill (e.g. 3 × 1/3 s) must not leave a request a rounding error short.
        if tokens >= 1.0 - 1e-9:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def reserve(self, ip: str) -> None:
        """Take the token a ``check`` just found due within ``max_delay`` (right after it: the
        bucket was updated then), for a request that waits for it instead of a 429."""
        bucket = self._buckets.get(ip)
        if bucket is not None:
            bucket[0] -= 1.0

    def _sweep(self, now: float) -> None:
        buckets = self._buckets
        full_after = self._full_after
        rate = self.rate
        burst = self.burst
        idle = [ip for ip, (tokens, last) in buckets.items() if tokens + (now - last) * rate >= burst]
        for ip in idle:
            del buckets[ip]
        if len(buckets) >= self.max_sources:
            # Still over the cap (a flood of distinct sources): drop the oldest half.
            for ip in list(buckets)[: len(buckets) // 2 + 1]:
                del buckets[ip]
        self._next_sweep = now + max(full_after, 1.0)

    def __len__(self) -> int:
        return len(self._buckets)

    def __repr__(self) -> str:
        return f"RateLimiter(average={self.average}, burst={self.burst}, period_seconds={self.period_seconds})"


# --------------------------------------------------------------------------- circuit breaker

# Latency histogram bounds in ms: 2^(k/4) from ~0.01 ms to ~150 s, so a quantile read from the bin
# centre is within ±9% of the true value (Traefik uses an HDR histogram; thresholds are coarse).
LATENCY_BOUNDS_MS: tuple[float, ...] = tuple(2.0 ** (k / 4) for k in range(-27, 70))
_NBINS = len(LATENCY_BOUNDS_MS) + 1
# Representative value of each bin: geometric centre; first/last bins take their one bound.
_BIN_VALUE_MS: tuple[float, ...] = (
    LATENCY_BOUNDS_MS[0],
    *(math.sqrt(a * b) for a, b in zip(LATENCY_BOUNDS_MS, LATENCY_BOUNDS_MS[1:])),
    LATENCY_BOUNDS_MS[-1],
)


class _Slot:
    __slots__ = ("count", "net_errors", "codes", "bins")

    def __init__(self) -> None:
        self.count = 0
        self.net_errors = 0
        self.codes: dict[int, int] = {}
        self.bins = [0] * _NBINS

    def clear(self) -> None:
        self.count = 0
        self.net_errors = 0
        self.codes.clear()
        self.bins = [0] * _NBINS


class RollingWindow:
    """The last ``window_seconds`` of responses in ``slots`` time slots: a :class:`cbexpr.MetricsWindow`.

    Traefik (oxy memmetrics) semantics: a network error (``status`` None) is recorded as the 502
    the client receives, and every 502 or 504 counts as a network error, so
    ``ResponseCodeRatio(500, 600, 0, 600)`` includes network errors. ``ResponseCodeRatio`` is
    ``count(from <= code < to) / count(dividedFrom <= code < dividedTo)``, 0 when the divisor is 0.
    ``LatencyAtQuantileMS(q)`` is the nearest-rank quantile from a log-scale histogram (±9%).
    An empty window reads 0 everywhere.

    Recording touches only the current slot; completed slots are folded into running totals when
    time moves on, and expired ones subtracted, so a read is O(histogram bins + distinct codes).
    """

    __slots__ = ("window_seconds", "width", "_clock", "_ring", "_n", "_index", "_slot_end", "_cur", "_tot")

    def __init__(self, window_seconds: float = 10.0, *, slots: int = 100, clock: Clock = time.monotonic) -> None:
        if not _positive(window_seconds):
            raise ValueError(f"RollingWindow: window_seconds must be a number > 0, got {window_seconds!r}")
        self.window_seconds = float(window_seconds)
        self.width = self.window_seconds / slots
        self._clock = clock
        self._n = slots
        self._ring = [_Slot() for _ in range(slots)]
        self._tot = _Slot()  # sum of the completed slots still in the window
        now = clock()
        self._index = math.floor(now / self.width)
        self._slot_end = (self._index + 1) * self.width
        self._cur = self._ring[self._index % slots]

    def record(self, status: int | None, seconds: float, now: float | None = None) -> None:
        if now is None:
            now = self._clock()
        if now >= self._slot_end:
            self._advance(now)
        slot = self._cur
        slot.count += 1
        if status is None:
            status = 502
        if status == 502 or status == 504:
            slot.net_errors += 1
        codes = slot.codes
        codes[status] = codes.get(status, 0) + 1
        slot.bins[bisect_left(LATENCY_BOUNDS_MS, seconds * 1000.0)] += 1

    def _advance(self, now: float) -> None:
        # Called when now >= the current slot's end; max() guards float rounding at the boundary.
        index = max(math.floor(now / self.width), self._index + 1)
        n, ring, tot = self._n, self._ring, self._tot
        if index - self._index >= n:
            for slot in ring:
                slot.clear()
            tot.clear()
        else:
            _add(tot, self._cur, 1)  # the current slot is complete
            for j in range(self._index + 1, index + 1):
                expiring = ring[j % n]  # held slot j - n, now out of the window
                if expiring.count:
                    _add(tot, expiring, -1)
                    expiring.clear()
        self._index = index
        self._slot_end = (index + 1) * self.width
        self._cur = ring[index % n]

    def reset(self) -> None:
        for slot in self._ring:
            slot.clear()
        self._tot.clear()

    def refresh(self, now: float | None = None) -> None:
        """Drop what fell out of the window; call it before reading outside :meth:`record`."""
        now = self._clock() if now is None else now
        if now >= self._slot_end:
            self._advance(now)

    # ------------------------------------------------------------------ MetricsWindow

    def count(self) -> int:
        return self._tot.count + self._cur.count

    def network_error_ratio(self) -> float:
        total = self._tot.count + self._cur.count
        return (self._tot.net_errors + self._cur.net_errors) / total if total else 0.0

    def response_code_ratio(self, code_from: int, code_to: int, divided_from: int, divided_to: int) -> float:
        a = b = 0
        for codes in (self._tot.codes, self._cur.codes):
            for code, count in codes.items():
                if code_from <= code < code_to:
                    a += count
                if divided_from <= code < divided_to:
                    b += count
        return a / b if b else 0.0

    def latency_at_quantile_ms(self, quantile: float) -> float:
        total = self._tot.count + self._cur.count
        if not total:
            return 0.0
        rank = max(1, math.ceil(quantile / 100.0 * total))
        seen = 0
        for i, (a, b) in enumerate(zip(self._tot.bins, self._cur.bins)):
            seen += a + b
            if seen >= rank:
                return _BIN_VALUE_MS[i]
        return _BIN_VALUE_MS[-1]


def _add(into: _Slot, slot: _Slot, sign: int) -> None:
    into.count += sign * slot.count
    into.net_errors += sign * slot.net_errors
    codes = into.codes
    for code, count in slot.codes.items():
        value = codes.get(code, 0) + sign * count
        if value:
            codes[code] = value
        else:
            del codes[code]
    bins = into.bins
    for i, count in enumerate(slot.bins):
        if count:
            bins[i] += sign * count


class CircuitBreaker:
    """Traefik's circuit breaker for one service.

    ``allow()`` before forwarding (False → answer 503), ``record(status, seconds)`` after each
    forwarded attempt (status None = network error). The expression is evaluated over the rolling
    window at most every ``check_interval`` seconds, lazily inside ``record`` (no timer), and never
    on an empty window. States (``state``): closed; open for ``open_seconds`` after the expression
    held (window cleared); then recovering for ``recovery_seconds``, admitting a share of requests
    that grows linearly from 0 to 1 (oxy's ratio controller); the expression true while recovering → open again; recovery over → closed.
    ``on_change(state)`` (optional) is called on every transition, e.g. to update the gauge.
    """

    __slots__ = ("expression", "text", "window", "check_interval", "open_seconds", "recovery_seconds",
                 "on_change", "_clock", "_state", "_until", "_next_check", "_rec_start", "_allowed",
                 "_denied")

    def __init__(self, expression: str, *, window_seconds: float = 10.0, check_interval: float = 0.1,
                 open_seconds: float = 10.0, recovery_seconds: float = 10.0, clock: Clock = time.monotonic,
                 on_change: Callable[[int], None] | None = None) -> None:
        try:
            self.expression = cbexpr.parse(expression)
        except cbexpr.ExpressionError as exc:
            raise ValueError(f"CircuitBreaker: invalid expression: {exc}") from exc
        for name, value in (("window_seconds", window_seconds), ("check_interval", check_interval),
                            ("open_seconds", open_seconds), ("recovery_seconds", recovery_seconds)):
            if not _positive(value):
                raise ValueError(f"CircuitBreaker: {name} must be a number > 0, got {value!r}")
        self.text = expression
        self.window = RollingWindow(window_seconds, clock=clock)
        self.check_interval = float(check_interval)
        self.open_seconds = float(open_seconds)
        self.recovery_seconds = float(recovery_seconds)
        self.on_change = on_change
        self._clock = clock
        self._state = CB_CLOSED
        self._until = 0.0  # end of the open or recovering period
        self._next_check = clock() + self.check_interval
        self._rec_start = 0.0
        self._allowed = 0
        self._denied = 0

    @property
    def state(self) -> int:
        """CB_CLOSED, CB_OPEN or CB_RECOVERING as of now (time-driven transitions applied)."""
        if self._state != CB_CLOSED:
            self._timed(self._clock())
        return self._state

    def allow(self) -> bool:
        if self._state == CB_CLOSED:
            return True
        now = self._clock()
        self._timed(now)
        state = self._state
        if state == CB_CLOSED:
            return True
        if state == CB_OPEN:
            return False
        # Recovering (oxy's ratio controller): keep admitted/seen since the start under
        # 0.5 × elapsed/recovery; a cumulative share growing like that means the share admitted
        # *now* grows linearly from 0 to 1 over the recovery period.
        target = 0.5 * (now - self._rec_start) / self.recovery_seconds
        allowed = self._allowed + 1
        if allowed / (allowed + self._denied) < target:
            self._allowed = allowed
            return True
        self._denied += 1
        return False

    def record(self, status: int | None, seconds: float) -> None:
        now = self._clock()
        self.window.record(status, seconds, now)
        if now >= self._next_check:
            self._check(now)

    def _check(self, now: float) -> None:
        self._next_check = now + self.check_interval
        if self._state != CB_CLOSED:
            self._timed(now)
            if self._state == CB_OPEN:
                return
        window = self.window
        window.refresh(now)
        if not window.count():
            return  # no samples: nothing can trip
        if self.expression.evaluate(window):
            window.reset()
            self._set(CB_OPEN, now + self.open_seconds)

    def _timed(self, now: float) -> None:
        """Apply the transitions that only depend on time. Periods chain from their scheduled end,
        so the result does not depend on when the breaker is next asked."""
        if self._state == CB_OPEN and now >= self._until:
            start = self._until
            self._rec_start = start
            self._allowed = self._denied = 0
            self._set(CB_RECOVERING, start + self.recovery_seconds)
        if self._state == CB_RECOVERING and now >= self._until:
            self._set(CB_CLOSED, 0.0)

    def _set(self, state: int, until: float) -> None:
        self._state = state
        self._until = until
        if self.on_change is not None:
            self.on_change(state)

    def status(self) -> dict:
        """For ``/api/rawdata``: expression, state and what the window holds now."""
        state = self.state
        window = self.window
        window.refresh()
        return {"expression": self.text, "state": state, "samples": window.count(),
                "network_error_ratio": window.network_error_ratio(),
                "latency_p50_ms": window.latency_at_quantile_ms(50)}

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.text!r}, state={self._state})"


def _positive(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            and value > 0)
