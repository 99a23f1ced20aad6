"""Server selection for one service: round robin or smooth weighted round robin, with passive health.

Owns :class:`Balancer`. It is pure of I/O and driven by an injectable clock; the HTTP and L4 paths
call :meth:`Balancer.pick` once per attempt, :meth:`Balancer.failed` when an attempt could not
connect or was reset, and :meth:`Balancer.succeeded` when it got an answer.

Algorithms
    ``weighted=False``: plain round robin over the servers whose weight is not 0.
    ``weighted=True``: nginx's smooth weighted round robin (each pick adds every weight to its
    server's current weight, takes the largest, subtracts the total from it). Its sequence repeats
    every ``sum(weights) / gcd`` picks and, within that cycle, gives every server exactly its weight's
    share, spread out as evenly as possible.

Per-call cost
    The full cycle is precomputed into a schedule (up to :data:`SCHEDULE_LIMIT` entries), so the
    common pick (nothing ejected, nothing excluded) is an index step and a list read, with no
    allocation. Larger cycles (e.g. weights 999999:1, or a split's weights scaled by pod counts) are
    picked live, O(servers) a pick, by earliest deadline first (Envoy's weighted round robin): each
    server's next deadline is one ``1/weight`` after its last, the earliest is picked; as smooth and
    as exact in its shares as nginx's algorithm, and, unlike it, with a phase that can start
    anywhere in O(servers) (see Start).

Passive health
    ``failed(server)`` ejects the server for ``eject_seconds``; if it fails again after coming back
    (without a ``succeeded`` in between) the ejection doubles, up to ``max_eject_seconds``. A server
    back in rotation for ``max_eject_seconds`` without failing starts again from ``eject_seconds``:
    a server that never answers (one-way UDP, e.g. statsd) cannot clear its failures with a
    ``succeeded``, and an isolated refusal hours later (a restart) is a new incident, not a repeat.
    ``failed`` on a server already ejected changes nothing: concurrent attempts that started before
    the ejection all fail together and must not count as repeated failures. When every candidate is
    ejected, ``pick`` still returns the one whose ejection ends first: trying is better than a 503.

Start
    A balancer starts its cycle at a random position (``start``: a given one). Every config that
    changes a service's servers makes a new balancer (per worker, per proxy): started at the first
    server, each would send its first picks there, and under frequent reloads (a busy cluster's endpoint churn) the first server
    would take nearly all the traffic and a split's canary none. Random starts give every server its
    weight's share in expectation, however often the cycle restarts. The live scheduler starts each
    server's first deadline at a random point of its first period (its weight's share again, from
    the first pick on). (:func:`swrr_cycle` starts at 0, as nginx's does.)

Retry
    ``pick(exclude)`` skips the servers already tried. It returns None only when nothing is left
    (no servers, all weights 0, or all excluded); a caller that wants to retry the same server of a
    one-server service calls ``pick()`` again without ``exclude``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Container, Sequence
from typing import Generic, Hashable, TypeVar

T = TypeVar("T", bound=Hashable)

SCHEDULE_LIMIT = 4096  # entries of the precomputed cycle; beyond, the live algorithm (bounded memory)


def swrr_cycle(weights: Sequence[int]) -> list[int]:
    """One full cycle of nginx's smooth weighted round robin as indexes into ``weights``.

    Weights are divided by their gcd first (90:10 cycles like 9:1). Zero weights never appear.
    """
    positive = [w for w in weights if w > 0]
    if not positive:
        return []
    g = math.gcd(*positive)
    reduced = [w // g for w in weights]
    total = sum(reduced)
    current = [0] * len(reduced)
    cycle: list[int] = []
    for _ in range(total):
        best = -1
        for i, w in enumerate(reduced):
            if w <= 0:
                continue
            current[i] += w
            if best < 0 or current[i] > current[best]:
                best = i
        current[best] -= total
        cycle.append(best)
    return cycle


def random_start(n: int) -> int:
    """Where a new balancer's cycle of ``n`` entries starts (tests replace it to pin the order)."""
    return random.randrange(n)


class Balancer(Generic[T]):
    """Chooses a server per attempt. ``servers`` must be hashable (e.g. ``(ip, port)`` tuples)."""

    __slots__ = ("servers", "weights", "weighted", "eject_seconds", "max_eject_seconds", "_clock",
                 "_schedule", "_n", "_pos", "_live", "_deadline", "_period", "_now", "_ejected", "_failures",
                 "_back_at")

    def __init__(self, servers: Sequence[T], weights: Sequence[int], *, weighted: bool,
                 eject_seconds: float = 10.0, max_eject_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic, start: int | None = None) -> None:
        servers = tuple(servers)
        weights = tuple(weights)
        if len(servers) != len(weights):
            raise ValueError(f"Balancer: {len(servers)} servers but {len(weights)} weights")
        for server, weight in zip(servers, weights):
            if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
                raise ValueError(f"Balancer: weight of server {server!r} must be an integer >= 0, got {weight!r}")
            try:
                hash(server)
            except TypeError:
                raise ValueError(f"Balancer: server {server!r} is not hashable") from None
        if not (isinstance(eject_seconds, (int, float)) and eject_seconds >= 0 and math.isfinite(eject_seconds)):
            raise ValueError(f"Balancer: eject_seconds must be a finite number >= 0, got {eject_seconds!r}")
        if max_eject_seconds is None:
            max_eject_seconds = eject_seconds * 16
        if not (isinstance(max_eject_seconds, (int, float)) and max_eject_seconds >= eject_seconds):
            raise ValueError(f"Balancer: max_eject_seconds must be >= eject_seconds, got {max_eject_seconds!r}")
        self.servers: tuple[T, ...] = servers
        self.weights: tuple[int, ...] = weights
        self.weighted = weighted
        self.eject_seconds = float(eject_seconds)
        self.max_eject_seconds = float(max_eject_seconds)
        self._clock = clock
        self._pos = 0
        self._ejected: dict[T, float] = {}  # server → monotonic time its ejection ends
        self._failures: dict[T, int] = {}  # server → consecutive failures (reset by succeeded)
        self._back_at: dict[T, float] = {}  # server → when its last ejection ended (or ends)
        self._live = False
        self._deadline: list[float] = []  # live: each server's next deadline (virtual time)
        self._period: list[float] = []  # live: 1/weight
        self._now = 0.0  # live: the deadline of the last pick
        if not weighted:
            self._schedule = [s for s, w in zip(servers, weights) if w > 0]
        else:
            positive = [w for w in weights if w > 0]
            g = math.gcd(*positive) if positive else 1
            total = sum(w // g for w in positive)
            if total <= SCHEDULE_LIMIT:
                self._schedule = [servers[i] for i in swrr_cycle(weights)]
            else:
                self._schedule = [s for s, w in zip(servers, weights) if w > 0]  # candidate order
                self._live = True
                self._period = [1.0 / w if w > 0 else math.inf for w in weights]
                # first deadlines: anywhere in each server's first period (see Start), or the
                # period's middle (``start`` given: the same sequence every time)
                self._deadline = [p * (random.random() if start is None else 0.5) for p in self._period]
        self._n = len(self._schedule)
        if not self._live and self._n > 1:
            self._pos = random_start(self._n) if start is None else start % self._n  # see "Start" above

    # ------------------------------------------------------------------ hot path

    def pick(self, exclude: Container[T] = ()) -> T | None:
        """The server for the next attempt, or None when there is no candidate left."""
        if exclude or self._ejected:
            return self._pick_filtered(exclude)
        if self._live:
            return self._pick_live(exclude, 0.0, all_ok=True)
        n = self._n
        if not n:
            return None
        i = self._pos
        self._pos = i + 1 if i + 1 < n else 0
        return self._schedule[i]

    def succeeded(self, server: T) -> None:
        """The server answered: forget its failures and any ejection."""
        if self._failures:  # one truthiness test in the common case
            if self._failures.pop(server, None) is not None:
                self._ejected.pop(server, None)
                self._back_at.pop(server, None)

    def failed(self, server: T) -> None:
        """Connection refused or reset: eject for ``eject_seconds``, doubling on repeated failure."""
        if self.eject_seconds <= 0:
            return
        now = self._clock()
        until = self._ejected.get(server)
        if until is not None and until > now:
            return  # already out: failures of attempts started before the ejection do not compound
        count = self._streak(server, now) + 1
        self._failures[server] = count
        seconds = min(self.eject_seconds * 2.0 ** min(count - 1, 62), self.max_eject_seconds)
        self._ejected[server] = self._back_at[server] = now + seconds

    def _streak(self, server: T, now: float) -> int:
        """Consecutive failures that still count: none once the server has served
        ``max_eject_seconds`` since its last ejection ended without failing again."""
        count = self._failures.get(server, 0)
        if count and now - self._back_at.get(server, now) >= self.max_eject_seconds:
            return 0
        return count

    # ------------------------------------------------------------------ slow paths

    def _expire(self, now: float) -> None:
        ejected = self._ejected
        if ejected:
            for server in [s for s, until in ejected.items() if until <= now]:
                del ejected[server]  # back in rotation; its failure count stays until a success

    def _pick_filtered(self, exclude: Container[T]) -> T | None:
        now = self._clock()
        self._expire(now)
        ejected = self._ejected
        if self._live:
            return self._pick_live(exclude, now, all_ok=False)
        schedule, n = self._schedule, self._n
        pos = self._pos
        # Walk the cycle from the current position: every acceptable entry is taken once per cycle,
        # so the remaining servers keep their weights' proportions.
        for step in range(n):
            i = pos + step
            if i >= n:
                i -= n
            server = schedule[i]
            if server in exclude or server in ejected:
                continue
            self._pos = i + 1 if i + 1 < n else 0
            return server
        return self._fallback(exclude)

    def _pick_live(self, exclude: Container[T], now: float, *, all_ok: bool) -> T | None:
        servers, weights, deadline = self.servers, self.weights, self._deadline
        ejected = self._ejected
        clock = self._now
        best = -1
        for i, server in enumerate(servers):
            if weights[i] <= 0 or (not all_ok and (server in exclude or server in ejected)):
                continue
            d = deadline[i]
            if d < clock:  # skipped meanwhile (ejected, excluded): back at the present, no catch-up burst
                d = deadline[i] = clock
            if best < 0 or d < deadline[best]:
                best = i
        if best < 0:
            return self._fallback(exclude)
        self._now = deadline[best]
        deadline[best] += self._period[best]
        return servers[best]

    def _fallback(self, exclude: Container[T]) -> T | None:
        """Every non-excluded candidate is ejected: the one coming back first."""
        best: T | None = None
        best_until = math.inf
        for server in self._schedule:
            if server in exclude:
                continue
            until = self._ejected.get(server, -math.inf)
            if best is None or until < best_until:
                best, best_until = server, until
        return best

    # ------------------------------------------------------------------ inspection, carry-over

    def ejected(self) -> dict[T, float]:
        """Ejected servers → seconds until they are back in rotation."""
        now = self._clock()
        return {s: until - now for s, until in self._ejected.items() if until > now}

    def status(self) -> list[dict]:
        """Per server, for ``/api/rawdata``: server, weight, ejected_seconds (0 = in rotation),
        consecutive failures."""
        now = self._clock()
        out = []
        for server, weight in zip(self.servers, self.weights):
            until = self._ejected.get(server, now)
            out.append({"server": server, "weight": weight, "ejected_seconds": max(0.0, until - now),
                        "failures": self._streak(server, now)})
        return out

    def carry_over(self, previous: Balancer[T]) -> None:
        """Keep the passive-health state of servers also present in ``previous`` (config swap).
        A server is the same when its URL is (HTTP: each plane has its own Server objects) or it is
        equal (TCP/UDP: address tuples)."""
        # a URL listed twice: its n-th old server's state goes to its n-th new one
        mine: dict[object, list] = {}
        for s in self.servers:
            mine.setdefault(_identity(s), []).append(s)
        seen: dict[object, int] = {}
        match: dict[object, object] = {}  # old server → new one
        for s in previous.servers:
            key = _identity(s)
            n = seen[key] = seen.get(key, -1) + 1
            if n < len(mine.get(key, ())):
                match[s] = mine[key][n]
        for own, theirs in ((self._ejected, previous._ejected), (self._failures, previous._failures),
                            (self._back_at, previous._back_at)):
            for server, value in theirs.items():
                new = match.get(server)
                if new is not None:
                    own[new] = value

    def __repr__(self) -> str:
        kind = "weighted" if self.weighted else "round_robin"
        return f"Balancer({kind}, {len(self.servers)} servers, {len(self._ejected)} ejected)"


def _identity(server: object) -> object:
    return getattr(server, "url", server)
