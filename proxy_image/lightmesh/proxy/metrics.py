"""The proxy's Prometheus metrics: names, a per-worker recorder cheap enough for the hot path, and
the text exposition.

Why not ``prometheus_client`` on the request path: a labelled ``Counter.inc`` takes a lock and
walks several Python frames (~2 µs); the proxy's whole Python budget is ~15 µs per request. So each
worker process keeps plain dicts keyed by label tuples (one dict update per event), hands a
:meth:`ProxyMetrics.snapshot` to the supervisor on request, and the supervisor merges the workers'
snapshots (:func:`merge`) and renders them (:func:`render`) on ``/metrics``.

:data:`METRICS` is the registry the Grafana dashboard is checked against
(``tests/observability/test_dashboard.py``): every name a query uses must be here.
"""

from __future__ import annotations

from bisect import bisect_left
from lightmesh.telemetry import MetricSpec

PREFIX = "lightmesh_proxy_"

# Request duration buckets (seconds): mesh hops are sub-millisecond to seconds.
DURATION_BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                       2.5, 5.0, 10.0, 30.0)

# The request methods with their own metric series and span attribute value: the HTTP and WebDAV
# ones HTTP/1.1's parser (llhttp) knows. Clients may send any token (HTTP/2 always could; HTTP/1.1
# ones are forwarded too), so any other method counts as "_OTHER" (OpenTelemetry's convention):
# series stay bounded.
KNOWN_METHODS = frozenset((
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "PURGE", "QUERY",
    "COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND",
    "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
    "MKCALENDAR", "LINK", "UNLINK", "SOURCE"))


def method_label(method: str) -> str:
    """``method`` when it is one of :data:`KNOWN_METHODS`, else ``"_OTHER"``."""
    return method if method in KNOWN_METHODS else "_OTHER"


CB_CLOSED, CB_OPEN, CB_RECOVERING = 0, 1, 2
# how bad each state is, for "the worst state" over breakers and workers: open is worse than
# recovering although its number is smaller
CB_SEVERITY = {CB_CLOSED: 0, CB_RECOVERING: 1, CB_OPEN: 2}


def worst_breaker_state(a: int, b: int) -> int:
    return a if CB_SEVERITY.get(a, 0) >= CB_SEVERITY.get(b, 0) else b




def _spec(short: str, type_: str, help_: str, *labels: str) -> MetricSpec:
    return MetricSpec(PREFIX + short, type_, help_, labels)


METRICS: dict[str, MetricSpec] = {s.name: s for s in (
    _spec("requests_total", "counter", "HTTP requests answered, by mesh service, status code and method",
          "service", "code", "method"),
    _spec("request_duration_seconds", "histogram", "HTTP request head to last response byte", "service"),
    _spec("retries_total", "counter", "Upstream attempts repeated after a connect failure or reset", "service"),
    _spec("upstream_errors_total", "counter", "Upstream attempts that failed, by reason", "service", "reason"),
    _spec("circuit_breaker_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 recovering", "service"),
    _spec("rate_limited_total", "counter", "Requests answered 429 by a rate limit", "service"),
    _spec("acl_denied_total", "counter", "Requests or connections refused by an allow-list or deny rule",
          "service", "protocol"),
    _spec("open_connections", "gauge", "Client connections open now", "protocol"),
    _spec("refused_connections_total", "counter", "Client connections (UDP: new sessions) the proxy refused at "
          "a limit of its own: max_connections, max_sessions, draining, reset_flood (HTTP/2 rapid reset)",
          "protocol", "reason"),
    _spec("l4_connections_total", "counter", "TCP connections or UDP sessions accepted per route",
          "route", "protocol"),
    _spec("l4_bytes_total", "counter", "Bytes relayed per L4 route and direction", "route", "protocol",
          "direction"),
    _spec("config_version", "gauge", "Version of the configuration in force"),
    _spec("config_reloads_total", "counter", "Configurations received, by result (applied or failed)", "result"),
    _spec("access_log_dropped_total", "counter", "Access-log lines not written (--access-log): stdout "
          "was not read fast enough, or a write failed"),
)}


class ProxyMetrics:
    """One worker's counters. Every method is a dict update or two: safe on the per-request path."""

    __slots__ = ("_requests", "durations", "retries", "upstream_errors", "breaker_state", "rate_limited",
                 "acl_denied", "open_connections", "l4_connections", "l4_bytes", "config_version", "reloads",
                 "refused_connections", "access_log_dropped")

    def __init__(self) -> None:
        # (service, status code, method) → [count, the service's ``durations`` entry]: one lookup per
        # request; :attr:`requests` has the counts with the code as a string, as exported.
        self._requests: dict[tuple[str, int, str], list] = {}
        # service → [bucket counts (len(DURATION_BUCKETS)+1, last is +Inf), sum]
        self.durations: dict[str, list] = {}
        self.retries: dict[str, int] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.breaker_state: dict[str, int] = {}
        self.rate_limited: dict[str, int] = {}
        self.acl_denied: dict[tuple[str, str], int] = {}
        self.open_connections: dict[str, int] = {"http": 0, "tcp": 0, "udp": 0}
        self.refused_connections: dict[tuple[str, str], int] = {}
        self.l4_connections: dict[tuple[str, str], int] = {}
        self.l4_bytes: dict[tuple[str, str, str], int] = {}
        self.config_version = 0
        self.reloads: dict[str, int] = {"applied": 0, "failed": 0}
        # set from the access-log handler's count before each snapshot (not on the request path)
        self.access_log_dropped = 0

    # ------------------------------------------------------------------ recording (hot path)

    def request(self, service: str, code: int, method: str, seconds: float) -> None:
        try:
            entry = self._requests[(service, code, method)]
        except KeyError:
            entry = self._requests[(service, code, method)] = [0, self._histogram(service)]
        entry[0] += 1
        hist = entry[1]
        hist[0][bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist[1] += seconds

    def _histogram(self, service: str) -> list:
        hist = self.durations.get(service)
        if hist is None:
            hist = self.durations[service] = [[0] * (len(DURATION_BUCKETS) + 1), 0.0]
        return hist

    @property
    def requests(self) -> dict[tuple[str, str, str], int]:
        """Requests answered: (service, status code as a string, method) → count."""
        out: dict[tuple[str, str, str], int] = {}
        for (service, code, method), entry in self._requests.items():
            key = (service, str(code), method)
            out[key] = out.get(key, 0) + entry[0]
        return out

    def retry(self, service: str) -> None:
        self.retries[service] = self.retries.get(service, 0) + 1

    def upstream_error(self, service: str, reason: str) -> None:
        key = (service, reason)
        self.upstream_errors[key] = self.upstream_errors.get(key, 0) + 1

    def breaker(self, service: str, state: int) -> None:
        self.breaker_state[service] = state

    def rate_limit(self, service: str) -> None:
        self.rate_limited[service] = self.rate_limited.get(service, 0) + 1

    def denied(self, service: str, protocol: str = "http") -> None:
        key = (service, protocol)
        self.acl_denied[key] = self.acl_denied.get(key, 0) + 1

    def connection_opened(self, protocol: str) -> None:
        self.open_connections[protocol] = self.open_connections.get(protocol, 0) + 1

    def refused_connection(self, protocol: str, reason: str) -> None:
        key = (protocol, reason)
        self.refused_connections[key] = self.refused_connections.get(key, 0) + 1

    def connection_closed(self, protocol: str) -> None:
        self.open_connections[protocol] = self.open_connections.get(protocol, 0) - 1

    def l4_connection(self, route: str, protocol: str) -> None:
        key = (route, protocol)
        self.l4_connections[key] = self.l4_connections.get(key, 0) + 1

    def l4_relayed(self, route: str, protocol: str, direction: str, nbytes: int) -> None:
        key = (route, protocol, direction)
        self.l4_bytes[key] = self.l4_bytes.get(key, 0) + nbytes

    def config_applied(self, version: int) -> None:
        self.config_version = version
        self.reloads["applied"] += 1

    def config_failed(self) -> None:
        self.reloads["failed"] += 1

    def retain(self, names: set[str]) -> None:
        """Forget the series of services and L4 routes not in ``names`` (the config in force), as
        Traefik does on a reload: one series per name ever configured would grow without bound on a
        cluster whose Services come and go. A name that comes back starts from zero (a counter reset
        to Prometheus). ``unrouted`` (404s) stays."""
        keep = names | KEPT_LABELS
        for table in (self._requests, self.upstream_errors, self.acl_denied, self.l4_connections, self.l4_bytes):
            for key in [k for k in table if k[0] not in keep]:
                del table[key]
        for table in (self.durations, self.retries, self.breaker_state, self.rate_limited):
            for key in [k for k in table if k not in keep]:
                del table[key]

    # ------------------------------------------------------------------ export

    def snapshot(self) -> dict:
        """Everything as plain JSON-able data: ``{metric name: [[label values..., value], ...]}``."""
        p = PREFIX
        hist = [[s, counts, total] for s, (counts, total) in self.durations.items()]
        return {
            p + "requests_total": [[*k, v] for k, v in self.requests.items()],
            p + "request_duration_seconds": [[s, list(c), t] for s, c, t in hist],
            p + "retries_total": [[k, v] for k, v in self.retries.items()],
            p + "upstream_errors_total": [[*k, v] for k, v in self.upstream_errors.items()],
            p + "circuit_breaker_state": [[k, v] for k, v in self.breaker_state.items()],
            p + "rate_limited_total": [[k, v] for k, v in self.rate_limited.items()],
            p + "acl_denied_total": [[*k, v] for k, v in self.acl_denied.items()],
            p + "open_connections": [[k, v] for k, v in self.open_connections.items()],
            p + "refused_connections_total": [[*k, v] for k, v in self.refused_connections.items()],
            p + "l4_connections_total": [[*k, v] for k, v in self.l4_connections.items()],
            p + "l4_bytes_total": [[*k, v] for k, v in self.l4_bytes.items()],
            p + "config_version": [[self.config_version]],
            p + "config_reloads_total": [[k, v] for k, v in self.reloads.items()],
            p + "access_log_dropped_total": [[self.access_log_dropped]],
        }


#: Label values that name no service or route of a config (requests no router took).
KEPT_LABELS = frozenset(("unrouted",))


def retain_snapshot(snapshot: dict, names: set[str]) -> dict:
    """``snapshot`` without the rows of services and L4 routes not in ``names`` (see
    :meth:`ProxyMetrics.retain`): what the supervisor keeps of workers that exited."""
    keep = names | KEPT_LABELS
    return {name: [row for row in rows
                   if not (METRICS.get(name) and METRICS[name].labels[:1] in (("service",), ("route",)))
                   or row[0] in keep]
            for name, rows in snapshot.items()}


def snapshot_names(snapshot: dict) -> set[str]:
    """The service and L4 route names ``snapshot``'s series carry (see :func:`retain_snapshot`)."""
    return {row[0] for name, rows in snapshot.items()
            if METRICS.get(name) and METRICS[name].labels[:1] in (("service",), ("route",)) for row in rows}


def config_names(config) -> set[str]:
    """The service and L4 route names of a ``ProxyConfig``: the label values its series may carry."""
    return ({s.name for s in config.http.services} | {r.name for r in config.tcp} | {r.name for r in config.udp})


def counters_only(snapshot: dict) -> dict:
    """``snapshot`` without its gauges (what stays of a worker that exited)."""
    return {name: rows for name, rows in snapshot.items()
            if name in METRICS and METRICS[name].type != "gauge"}


def merge(snapshots: list[dict]) -> dict:
    """Add the workers' snapshots up. Gauges: open connections add up; breaker state takes the worst
    (open over recovering over closed); other gauges the maximum."""
    out: dict[str, dict[tuple, object]] = {}
    for snap in snapshots:
        for name, rows in snap.items():
            spec = METRICS.get(name)
            if spec is None:
                continue
            acc = out.setdefault(name, {})
            for row in rows:
                if spec.type == "histogram":
                    key, counts, total = (row[0],), row[1], row[2]
                    prev = acc.get(key)
                    acc[key] = [counts, total] if prev is None else [
                        [a + b for a, b in zip(prev[0], counts)], prev[1] + total]
                    continue
                key, value = tuple(row[:-1]), row[-1]
                prev = acc.get(key)
                if prev is None:
                    acc[key] = value
                elif name == PREFIX + "circuit_breaker_state":
                    acc[key] = worst_breaker_state(prev, value)
                elif spec.type == "gauge" and name != PREFIX + "open_connections":
                    acc[key] = max(prev, value)
                else:
                    acc[key] = prev + value
    return {name: [[*k, *(v if isinstance(v, list) and METRICS[name].type == "histogram" else [v])]
                   for k, v in rows.items()] for name, rows in out.items()}


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: tuple[str, ...], values, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)
    return repr(value) if isinstance(value, float) else str(value)


def render(snapshot: dict, const_labels: dict[str, str] | None = None) -> str:
    """Prometheus text format 0.0.4 of a (merged) snapshot. Every metric is announced (HELP/TYPE)
    even with no samples yet, so scrapers and the dashboard check see the full set."""
    const = ",".join(f'{k}="{_escape(v)}"' for k, v in (const_labels or {}).items())
    lines: list[str] = []
    for name, spec in METRICS.items():
        lines.append(f"# HELP {name} {spec.help}")
        lines.append(f"# TYPE {name} {spec.type}")
        for row in snapshot.get(name, []):
            if spec.type == "histogram":
                service, counts, total = row[0], row[1], row[2]
                cumulative = 0
                for bound, count in zip((*DURATION_BUCKETS, float("inf")), counts):
                    cumulative += count
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    extra = f'le="{le}"' + ("," + const if const else "")
                    lines.append(f"{name}_bucket{_labels(spec.labels, [service], extra)} {cumulative}")
                lines.append(f"{name}_sum{_labels(spec.labels, [service], const)} {_number(float(total))}")
                lines.append(f"{name}_count{_labels(spec.labels, [service], const)} {cumulative}")
                continue
            values, value = row[:-1], row[-1]
            lines.append(f"{name}{_labels(spec.labels, values, const)} {_number(value)}")
    return "\n".join(lines) + "\n"
