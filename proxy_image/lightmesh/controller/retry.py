"""Per-object retry backoff for the leader's writes (shadow Services, Events); pure, clock injected.

A write that fails is retried after ``first_seconds``, then twice as long each time up to
``max_seconds``; a success forgets the object. Two things keep recovery quick although one object
may wait up to ``max_seconds``:

* a probe: while every failed object is waiting, one of them (the one due soonest, so the failing
  objects take turns) may be tried every ``probe_seconds``. A cluster-wide cause (RBAC, an API
  outage) costs one request per ``probe_seconds`` instead of one per object;
* a recovery: when an object that had failed is written, the API evidently takes writes again,
  so every other waiting object is due at once (its delay level kept: a failure of its own, a
  name held by a user's Service say, still backs off). A plain success of an object that never
  failed is no such signal, or a churning cluster would retry the persistent failures every round.

An object whose desired content changed is due at once too (the failure may have been the content:
a 422). :meth:`changed` tells the caller when to log: on the first failure and when the reason
changes, never on every retry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Iterable

FIRST_SECONDS = 5.0
MAX_SECONDS = 300.0
PROBE_SECONDS = 5.0


@dataclass
class _Entry:
    due: float
    delay: float
    reason: str
    content: Any


class RetryBackoff:
    def __init__(self, first_seconds: float = FIRST_SECONDS, max_seconds: float = MAX_SECONDS,
                 probe_seconds: float = PROBE_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.first_seconds = first_seconds
        self.max_seconds = max_seconds
        self.probe_seconds = probe_seconds
        self.clock = clock
        self.entries: dict[Hashable, _Entry] = {}
        self._last_try = float("-inf")  # the last attempt at any failed object (probe pacing)

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

    def reason(self, key: Hashable) -> str | None:
        entry = self.entries.get(key)
        return entry.reason if entry else None

    def select(self, keys: Iterable[Hashable], contents: Callable[[Hashable], Any] = lambda key: None) -> set:
        """Of ``keys`` (the objects to write now), those to try now: every one that never failed,
        the failed ones that are due (or whose content changed), else at most one probe."""
        now = self.clock()
        chosen, waiting = set(), []
        for key in keys:
            entry = self.entries.get(key)
            if entry is None or now >= entry.due or entry.content != contents(key):
                chosen.add(key)
            else:
                waiting.append(key)
        retried = any(k in self.entries for k in chosen)
        if waiting and not retried and now - self._last_try >= self.probe_seconds:
            chosen.add(min(waiting, key=lambda k: (self.entries[k].due, str(k))))
            retried = True
        if retried:
            self._last_try = now
        return chosen

    def failed(self, key: Hashable, reason: str, content: Any = None) -> bool:
        """Record a failure; True when it is new or its reason changed (worth a log line)."""
        now = self.clock()
        entry = self.entries.get(key)
        delay = self.first_seconds if entry is None else min(entry.delay * 2, self.max_seconds)
        self.entries[key] = _Entry(now + delay, delay, reason, content)
        self._last_try = now  # an attempt just failed: the next probe a full period later
        return entry is None or entry.reason != reason

    def succeeded(self, key: Hashable) -> bool:
        """Forget ``key``; True when it had failed (then the others are due at once: see above)."""
        if self.entries.pop(key, None) is None:
            return False
        now = self.clock()
        for entry in self.entries.values():
            entry.due = min(entry.due, now)
        return True

    def forget(self, keep: Iterable[Hashable]) -> None:
        """Drop the objects not in ``keep`` (no longer wanted: nothing left to retry)."""
        keep = set(keep)
        for key in [k for k in self.entries if k not in keep]:
            del self.entries[key]

    def next_in(self) -> float | None:
        """Seconds until a failed object is due or may be probed; None when nothing failed."""
        if not self.entries:
            return None
        now = self.clock()
        soonest = min(e.due for e in self.entries.values())
        return max(0.0, min(soonest, self._last_try + self.probe_seconds) - now)
