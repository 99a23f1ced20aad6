"""Reading the mesh's own Prometheus metrics without a Prometheus: parse, diff, summarise (pure).

Local mode's live table (``lightmesh local --telemetry``) and the dashboard rendering in the README
use this: two scrapes of the proxy's ``/metrics`` a few seconds apart give per-service request
rates by code class, error ratio and latency quantiles — the same arithmetic the Grafana dashboard's
PromQL does (``rate`` over counters, ``histogram_quantile`` over buckets) — and, for TCP and UDP
routes (which have no requests), connections or sessions per second, bytes per second each way,
upstream errors and ACL refusals (:func:`l4_stats`).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: the proxy's and the controller's registries are lists of these."""

    name: str
    type: str  # counter | gauge | histogram
    help: str
    labels: tuple[str, ...] = ()


@dataclass
class Scrape:
    """One exposition: metric name → {sorted label pairs → value}, and when it was taken."""

    at: float
    series: dict[str, dict[Labels, float]] = field(default_factory=dict)

    def get(self, name: str) -> dict[Labels, float]:
        return self.series.get(name, {})


def parse(text: str, at: float = 0.0) -> Scrape:
    """Prometheus text format 0.0.4 → :class:`Scrape`. Comments and malformed lines are skipped."""
    scrape = Scrape(at)
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        name, raw_labels, raw_value = m.groups()
        try:
            value = float(raw_value)
        except ValueError:
            continue
        labels = tuple(sorted((k, v.replace('\\"', '"').replace("\\\\", "\\"))
                              for k, v in _LABEL.findall(raw_labels or "")))
        scrape.series.setdefault(name, {})[labels] = value
    return scrape


def _delta(before: Scrape, after: Scrape, name: str) -> dict[Labels, float]:
    """Counter increase per series; a counter that went down (process restart) counts from zero."""
    out = {}
    old = before.get(name)
    for labels, value in after.get(name).items():
        prev = old.get(labels, 0.0)
        out[labels] = value - prev if value >= prev else value
    return out


def _by(series: dict[Labels, float], *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in series.items():
        d = dict(labels)
        out[tuple(d.get(k, "") for k in keys)] += value
    return dict(out)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear interpolation inside the bucket holding rank q."""
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return prev_bound  # quantile falls in the +Inf bucket: the highest finite bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return bounds[-1]


@dataclass(frozen=True)
class ServiceStats:
    service: str
    rps: float
    rps_by_class: dict[str, float]
    error_ratio: float  # 5xx share of answered requests
    p50: float | None
    p95: float | None
    p99: float | None
    retries_per_s: float
    rate_limited_per_s: float
    acl_denied_per_s: float
    breaker_state: int


PROXY = "lightmesh_proxy_"


def service_stats(before: Scrape, after: Scrape) -> list[ServiceStats]:
    """Per-service figures over the interval between two proxy scrapes."""
    seconds = max(after.at - before.at, 1e-9)
    requests = _delta(before, after, PROXY + "requests_total")
    by_class: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for labels, value in requests.items():
        d = dict(labels)
        by_class[d.get("service", "")][d.get("code", "0")[:1] + "xx"] += value
    buckets: dict[str, dict[float, float]] = defaultdict(dict)
    for labels, value in _delta(before, after, PROXY + "request_duration_seconds_bucket").items():
        d = dict(labels)
        bound = float("inf") if d.get("le") in ("+Inf", "Inf") else float(d.get("le", "inf"))
        buckets[d.get("service", "")][bound] = buckets[d.get("service", "")].get(bound, 0.0) + value
    retries = _by(_delta(before, after, PROXY + "retries_total"), "service")
    limited = _by(_delta(before, after, PROXY + "rate_limited_total"), "service")
    denied = _by({labels: value for labels, value in _delta(before, after, PROXY + "acl_denied_total").items()
                  if dict(labels).get("protocol", "http") not in L4_PROTOCOLS}, "service")  # L4: l4_stats
    breaker = _by(after.get(PROXY + "circuit_breaker_state"), "service")
    services = sorted(set(by_class) | {k[0] for k in denied} | {k[0] for k in limited})
    out = []
    for service in services:
        classes = dict(by_class.get(service, {}))
        total = sum(classes.values())
        hist = buckets.get(service, {})
        out.append(ServiceStats(
            service=service,
            rps=total / seconds,
            rps_by_class={k: v / seconds for k, v in sorted(classes.items())},
            error_ratio=(classes.get("5xx", 0.0) / total) if total else 0.0,
            p50=histogram_quantile(0.50, hist), p95=histogram_quantile(0.95, hist),
            p99=histogram_quantile(0.99, hist),
            retries_per_s=retries.get((service,), 0.0) / seconds,
            rate_limited_per_s=limited.get((service,), 0.0) / seconds,
            acl_denied_per_s=denied.get((service,), 0.0) / seconds,
            breaker_state=int(breaker.get((service,), 0)),
        ))
    return out


L4_PROTOCOLS = ("tcp", "udp")


@dataclass(frozen=True)
class L4Stats:
    """One TCP or UDP route (``<ns>/<svc>:<port>``) over an interval."""

    route: str
    protocol: str  # tcp | udp
    connections_per_s: float  # TCP connections accepted, or UDP sessions opened
    bytes_in_per_s: float  # client → backend ("upstream" direction)
    bytes_out_per_s: float  # backend → client ("downstream")
    errors_per_s: float  # upstream errors: connect failures, resets, limits
    denied_per_s: float  # refused by ACL mode


def l4_stats(before: Scrape, after: Scrape) -> list[L4Stats]:
    """Per-route L4 figures over the interval between two proxy scrapes."""
    seconds = max(after.at - before.at, 1e-9)
    connections = _by(_delta(before, after, PROXY + "l4_connections_total"), "route", "protocol")
    relayed = _by(_delta(before, after, PROXY + "l4_bytes_total"), "route", "protocol", "direction")
    denied = {k: v for k, v in _by(_delta(before, after, PROXY + "acl_denied_total"), "service", "protocol").items()
              if k[1] in L4_PROTOCOLS}
    routes = set(connections) | {k[:2] for k in relayed} | set(denied)
    # every series that ever existed counts (not just this interval's), so an idle route keeps its row
    routes |= {(dict(labels).get("route", ""), dict(labels).get("protocol", ""))
               for labels in after.get(PROXY + "l4_connections_total")}
    names = {route for route, _ in routes}
    errors = {k[0]: v for k, v in _by(_delta(before, after, PROXY + "upstream_errors_total"), "service").items()
              if k[0] in names}
    return [L4Stats(route, protocol, connections.get((route, protocol), 0.0) / seconds,
                    relayed.get((route, protocol, "upstream"), 0.0) / seconds,
                    relayed.get((route, protocol, "downstream"), 0.0) / seconds,
                    errors.get(route, 0.0) / seconds, denied.get((route, protocol), 0.0) / seconds)
            for route, protocol in sorted(routes) if route]


BREAKER_STATES = {0: "closed", 1: "open", 2: "recovering"}


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def summary_table(stats: list[ServiceStats], title: str = "") -> str:
    """The live terminal table: one row per service."""
    header = f"{'service':<32} {'req/s':>8} {'2xx':>7} {'4xx':>7} {'5xx':>7} {'err%':>6} " \
             f"{'p50 ms':>8} {'p99 ms':>8} {'retry/s':>7} {'429/s':>6} {'403/s':>6}  breaker"
    lines = ([title] if title else []) + [header, "-" * len(header)]
    for s in stats:
        lines.append(
            f"{s.service[:32]:<32} {s.rps:>8.1f} {s.rps_by_class.get('2xx', 0):>7.1f} "
            f"{s.rps_by_class.get('4xx', 0):>7.1f} {s.rps_by_class.get('5xx', 0):>7.1f} "
            f"{100 * s.error_ratio:>5.1f}% {_ms(s.p50):>8} {_ms(s.p99):>8} {s.retries_per_s:>7.1f} "
            f"{s.rate_limited_per_s:>6.1f} {s.acl_denied_per_s:>6.1f}  {BREAKER_STATES.get(s.breaker_state, '?')}")
    if not stats:
        lines.append("(no requests yet)")
    return "\n".join(lines)


def _bytes(per_second: float) -> str:
    for unit, size in (("MB", 1e6), ("kB", 1e3)):
        if per_second >= size:
            return f"{per_second / size:.1f} {unit}"
    return f"{per_second:.0f} B"


def l4_table(stats: list[L4Stats]) -> str:
    """The TCP/UDP part of the live table: one row per route."""
    header = f"{'tcp/udp route':<32} {'proto':>5} {'conn/s':>8} {'in/s':>10} {'out/s':>10} {'err/s':>6} {'denied/s':>8}"
    lines = [header, "-" * len(header)]
    for s in stats:
        lines.append(f"{s.route[:32]:<32} {s.protocol:>5} {s.connections_per_s:>8.1f} {_bytes(s.bytes_in_per_s):>10} "
                     f"{_bytes(s.bytes_out_per_s):>10} {s.errors_per_s:>6.1f} {s.denied_per_s:>8.1f}")
    return "\n".join(lines)


def full_table(before: Scrape, after: Scrape, title: str = "") -> str:
    """``lightmesh local --telemetry``: HTTP services, then TCP/UDP routes when there are any."""
    table = summary_table(service_stats(before, after), title)
    routes = l4_stats(before, after)
    return table + ("\n\n" + l4_table(routes) if routes else "")
