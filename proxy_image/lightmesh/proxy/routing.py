"""The HTTP part of a :class:`~lightmesh.config.ProxyConfig`, compiled for the request path.

Owns :func:`compile_http` and the compiled objects the HTTP proxy (:mod:`lightmesh.proxy.http`)
reads per request:

``HTTPPlane``     ``entry_points``: entry point name → :class:`RouteTable`; ``services``: name →
                  :class:`Service`; ``close()``.
``RouteTable``    ``by_host``: lower-case host (no port) → routes to try, in order; ``any_host``:
                  the routes for every other host. Each list already merges the host-specific
                  and the host-less routers by precedence, so a lookup is one dict ``get`` and a
                  scan that usually stops at the first element.
``Route``         one router: its match predicates (precompiled regexes), its :class:`Service`
                  and its middlewares split into what the proxy does before forwarding
                  (``checks``: allow-list, deny, rate limit, circuit breaker, in router order) and
                  the forwarding parameters (``retries``, ``timeout``, ``breakers``).
``Service``       servers (:class:`Server`, each with its idle upstream keep-alive pool) behind a
                  :class:`~lightmesh.proxy.balancer.Balancer`.

Precedence (config contract): higher ``priority`` first; ties: longer match first, where the
length of a match is the number of characters of its hosts, path regex, methods and header
names + regexes together (Traefik's "longer rule first"); then router name.

Path matching: a path regex sees the path in a normal form (:func:`normal_path`): percent-escapes
of unreserved characters decoded, dot segments resolved, repeated slashes merged — what most
backends do before they route. So ``/%61dmin`` or ``/api/../admin`` cannot pass a rule written for
``/admin`` (a deny rule) or reach ``/admin`` through one written for ``/api`` (an ACL rule). The
request is forwarded as received.

Carry-over: an element whose definition did not change between ``previous`` and the new config
keeps its runtime object, and so its state: a :class:`Service` (by name and definition) keeps its
balancer and its servers; a rate limiter (by middleware definition: one per middleware, shared
by every router that lists it) or breaker (by middleware definition and service name) keeps its
buckets or window. A service whose definition changed (endpoints come and go) is new,
but it keeps the :class:`Server` of every URL it still lists, with its idle keep-alive connections
(and HTTP/2 connection), and its balancer keeps their ejections. ``previous.close()`` afterwards
closes only what the new plane did not take over (idle pooled connections of retired servers);
requests in flight on the old plane finish normally, their connections pooled again only when
their server was kept.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Container

from lightmesh.config import (AllowListMiddleware, CircuitBreakerMiddleware, DenyMiddleware, HTTPService,
                              Match, ProxyConfig, RateLimitMiddleware, RequestHeadersMiddleware,
                              RequestTimeoutMiddleware, ResponseHeadersMiddleware, RetryMiddleware, Scheme,
                              parse_server_url)
from lightmesh.proxy.balancer import Balancer
from lightmesh.userregex import compile_user_regex
from lightmesh.proxy.metrics import ProxyMetrics, worst_breaker_state
from lightmesh.proxy.policies import AllowList, CircuitBreaker, RateLimiter

__all__ = ["compile_http", "HTTPPlane", "RouteTable", "Route", "Service", "Server", "Check",
           "CHECK_ALLOW", "CHECK_DENY", "CHECK_RATE", "CHECK_BREAKER", "split_host"]

# Kinds of pre-forwarding checks (ints: one comparison each on the request path).
CHECK_ALLOW, CHECK_DENY, CHECK_RATE, CHECK_BREAKER = 1, 2, 3, 4

UPSTREAM_POOL_MAX_IDLE = 256  # idle keep-alive connections kept per server


class Server:
    """One upstream ``ip:port`` and its idle keep-alive connections (a LIFO list: the most recently
    used connection is the least likely to have been closed by the server)."""

    __slots__ = ("url", "host", "port", "tls", "h2c", "h2conn", "host_header", "idle", "max_idle", "retired")

    def __init__(self, url: str, host: str, port: int, max_idle: int = UPSTREAM_POOL_MAX_IDLE,
                 tls: bool = False, h2c: bool = False) -> None:
        self.url = url
        self.tls = tls  # scheme https: TLS to the pod (see http._upstream_tls)
        self.h2c = h2c  # scheme h2c: HTTP/2 clients' streams go over one HTTP/2 connection (proxy.h2)
        self.h2conn: Any = None  # that connection (an h2.H2Upstream), once opened
        self.host = host
        self.port = port
        self.host_header = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.idle: list[Any] = []
        self.max_idle = max_idle
        self.retired = False

    def close_stale(self, idle_since_before: float) -> int:
        """Close the pooled connections idle since before that (monotonic) time; returns how many.
        A request pops a stale one too, but a server no request goes to would keep them open."""
        idle = self.idle
        keep = [conn for conn in idle if conn.idle_since >= idle_since_before]
        if len(keep) == len(idle):
            return 0
        self.idle = keep
        for conn in idle:
            if conn.idle_since < idle_since_before:
                conn.close()
        return len(idle) - len(keep)

    def close_idle(self) -> None:
        idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()
        if self.h2conn is not None:
            self.h2conn.retire()  # closes now when no stream uses it, else after its last one

    def __repr__(self) -> str:
        return f"Server({self.url})"


class Service:
    __slots__ = ("name", "definition", "servers", "balancer", "pass_host_header")

    def __init__(self, definition: HTTPService, eject_seconds: float, previous: Service | None = None) -> None:
        self.name = definition.name
        self.definition = definition
        # The servers of ``previous`` (the same service in the config before) still listed are kept:
        # a URL listed n times takes its n first old servers (the URL holds the scheme, so TLS/h2c too).
        reusable: dict[str, list[Server]] = {}
        for server in reversed(previous.servers) if previous is not None else ():
            reusable.setdefault(server.url, []).append(server)  # reversed: pop() takes the first
        servers = []
        for s in definition.servers:
            kept = reusable.get(s.url)
            if kept:
                servers.append(kept.pop())
                continue
            scheme, host, port = parse_server_url(s.url)
            servers.append(Server(s.url, host, port, tls=scheme is Scheme.HTTPS, h2c=scheme is Scheme.H2C))
        self.servers: list[Server] = servers
        self.balancer = Balancer(servers, [s.weight for s in definition.servers],
                                 weighted=definition.load_balancer.value == "weighted",
                                 eject_seconds=eject_seconds)
        self.pass_host_header = definition.pass_host_header

    def close(self, kept: Container[int] = ()) -> None:
        """Retire the servers, but those (by id) another plane's service took over."""
        for server in self.servers:
            if id(server) not in kept:
                server.retired = True
                server.close_idle()


@dataclass(eq=False)
class Check:
    """One pre-forwarding middleware: ``kind`` says which of the other fields is used."""

    kind: int
    name: str
    allow: AllowList | None = None
    status: int = 403
    limiter: RateLimiter | None = None
    breaker: CircuitBreaker | None = None


class Route:
    __slots__ = ("name", "service", "priority", "length", "hosts", "path", "methods", "headers", "simple",
                 "checks", "retries", "timeout", "breakers", "edits", "fall_through", "allows")

    def __init__(self, name: str, service: Service, priority: int, match: Match, fall_through: bool = False) -> None:
        self.name = name
        self.service = service
        self.priority = priority
        self.length = match_length(match)
        self.hosts = tuple(match.hosts)
        # users' regexes run on RE2 (linear time: see lightmesh.userregex); several must all match
        self.path: Callable | None = _path_predicate(match.path_regex)
        methods = [m for m in match.methods]
        self.methods: frozenset[str] | None = None if not methods or "*" in methods else frozenset(methods)
        self.headers: tuple[tuple[bytes, Callable], ...] = tuple(
            (name.encode("latin-1"), _header_predicate(regex)) for name, regex in match.headers.items())
        # No predicate beyond the host: the first route of the list answers without any call.
        self.simple = self.path is None and self.methods is None and not self.headers
        self.checks: tuple[Check, ...] = ()
        self.retries = 0
        self.timeout: float | None = None
        self.breakers: tuple[CircuitBreaker, ...] = ()
        # (request edits, response edits), each HeaderEdits or None; None when the route has neither
        self.edits: tuple[HeaderEdits | None, HeaderEdits | None] | None = None
        # the router's fall_through: when its allow-lists (``allows``) refuse the source, the next
        # route that matches the request decides instead (see RouteTable.next_match)
        self.fall_through = fall_through
        self.allows: tuple[Check, ...] = ()

    def matches(self, method: str, target: bytes, headers: list) -> bool:
        """``target``: the request target (path and query); ``headers``: the request's list of
        (name, value) bytes pairs as received."""
        if self.methods is not None and method not in self.methods:
            return False
        if self.path is not None:
            if b"#" in target:
                # RFC 9112 §3.2: no fragment in a request target. "/admin#/../x" would be matched here
                # as /x and read as /admin by servers that cut fragments (or the other way round)
                raise FragmentInTarget()
            q = target.find(b"?")
            path = (target if q < 0 else target[:q]).decode("latin-1")
            if "%" in path or "/." in path or "//" in path:
                path = normal_path(path)
            if self.path(path) is None:
                return False
        for lname, search in self.headers:
            for name, value in headers:
                # the whitespace around a field value is not part of it (RFC 9110 §5.5); llhttp
                # keeps the trailing one, which would let "X-Canary: 1 " past an exact match.
                # Matched as UTF-8, as Go's regexp (Traefik) reads a value: "^café$" matches the
                # UTF-8 bytes a client sends; each byte that is not UTF-8 is one U+FFFD, as there.
                if len(name) == len(lname) and name.lower() == lname and search(
                        value.rstrip(b" \t").decode("utf-8", _PER_BYTE)):
                    break
            else:
                return False
        return True

    def __repr__(self) -> str:
        return f"Route({self.name!r} → {self.service.name!r})"


def _replace_per_byte(error: UnicodeDecodeError) -> tuple[str, int]:
    """One U+FFFD per undecodable byte, as Go decodes invalid UTF-8 (Python's "replace" makes one of
    a truncated sequence)."""
    return "\ufffd" * (error.end - error.start), error.end


_PER_BYTE = "lightmesh-per-byte"
codecs.register_error(_PER_BYTE, _replace_per_byte)


# %XX of an unreserved character (RFC 3986 §2.3: ALPHA DIGIT - . _ ~), equivalent to the character
_UNRESERVED_ESCAPE = re.compile(r"%(4[1-9A-Fa-f]|5[0-9Aa]|6[1-9A-Fa-f]|7[0-9Aa]|3[0-9]|2[DdEe]|5[Ff]|7[Ee])")


def normal_path(path: str) -> str:
    """The path a path regex is matched against: unreserved escapes decoded (RFC 3986 §6.2.2.2),
    dot segments removed (§5.2.4; never above the root), repeated slashes merged. Reserved escapes
    such as ``%2F`` stay as they are: decoding them would change the path's structure."""
    if "%" in path:
        path = _UNRESERVED_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), path)
    if "/." not in path and "//" not in path:
        return path
    out: list[str] = []
    segments = path.split("/")
    for segment in segments[1:]:
        if segment == "..":
            if out:
                out.pop()
        elif segment and segment != ".":
            out.append(segment)
    trailing = segments[-1] in ("", ".", "..") and len(segments) > 2
    return "/" + "/".join(out) + ("/" if trailing and out else "")


def _each(regex: str | list[str], how: str) -> Callable:
    """The compiled regex's ``how`` (``match`` or ``search``); for several (ACL mode: a route's
    regex AND a TrafficTarget's), one that finds a match only when each does."""
    if isinstance(regex, str):
        return getattr(compile_user_regex(regex), how)
    tests = tuple(getattr(compile_user_regex(r), how) for r in regex)

    def all_of(text: str):
        found = None
        for test in tests:
            found = test(text)
            if found is None:
                return None
        return found
    return all_of


def _path_predicate(path_regex: str | list[str] | None) -> Callable | None:
    """Anchored at the start (``match``); None: no path rule."""
    return None if path_regex is None else _each(path_regex, "match")


def _header_predicate(regex: str | list[str]) -> Callable:
    """Searched in the value (``search``)."""
    return _each(regex, "search")


def _chars(regex: str | list[str] | None) -> int:
    return len(regex) if isinstance(regex, str) else sum(len(r) for r in regex) if regex else 0


def match_length(match: Match) -> int:
    return (sum(len(h) for h in match.hosts) + _chars(match.path_regex) + sum(len(m) for m in match.methods)
            + sum(len(k) + _chars(v) for k, v in match.headers.items()))


class HeaderEdits:
    """The header edits of a route in one direction (its ``request_headers`` or ``response_headers``
    middlewares in order, merged): fields named in ``drop`` (lower case) are removed, then
    ``fields`` are added."""

    __slots__ = ("drop", "fields", "decided")

    def __init__(self) -> None:
        self.drop: frozenset[bytes] = frozenset()
        self.fields: list[tuple[bytes, bytes]] = []  # (name, value) added, in order
        # forwarded headers these edits set or remove: the edit decides them, the proxy adds none of
        # its own (Traefik's headers middleware runs after the entry point's forwarded headers).
        # X-Forwarded-For is not among them: the proxy appends the peer to whatever the edits left,
        # as Traefik's reverse proxy does last. A forwarded header only added goes next to ours.
        self.decided: frozenset[bytes] = frozenset()

    def apply(self, m: RequestHeadersMiddleware) -> None:
        names = {n.lower().encode("latin-1") for n in [*m.remove, *m.set]}
        self.drop = self.drop | names
        # a later middleware's remove/set also removes what an earlier one added
        self.fields = [(n, v) for n, v in self.fields if n.lower() not in names]
        self.fields += [(n.encode("latin-1"), v.encode("latin-1")) for n, v in [*m.set.items(), *m.add.items()]]
        self.decided = (self.drop & FORWARDED_HEADERS) - {b"x-forwarded-for"}


class FragmentInTarget(ValueError):
    """A request target with a fragment met a path rule: refuse the request (400), matching it
    either way could let it past the rule."""


class RouteTable:
    __slots__ = ("by_host", "any_host", "_positions")

    def __init__(self, routes: list[Route]) -> None:
        routes = sorted(routes, key=lambda r: (-r.priority, -r.length, r.name))
        hosts = {h for r in routes for h in r.hosts}
        self.by_host: dict[str, tuple[Route, ...]] = {
            h: tuple(r for r in routes if not r.hosts or h in r.hosts) for h in hosts}
        self.any_host: tuple[Route, ...] = tuple(r for r in routes if not r.hosts)
        # host → {id(route): its index in that host's tuple}, made on a host's first next_match
        self._positions: dict[str | None, dict[int, int]] = {}

    def lookup(self, host: str, method: str, target: bytes, headers: list) -> Route | None:
        """``host``: lower case without port. ``target``: the origin-form request target; the
        path regex sees it without the query string. Raises FragmentInTarget (see there)."""
        for route in self.by_host.get(host, self.any_host):
            if route.simple or route.matches(method, target, headers):
                return route
        return None

    def next_match(self, after: Route, host: str, method: str, target: bytes, headers: list) -> Route | None:
        """The route :meth:`lookup` would pick if ``after`` and every route before it were absent
        (a fall-through route's allow-list refused the source). Not on the common path."""
        routes = self.by_host.get(host)
        key: str | None = host
        if routes is None:
            routes, key = self.any_host, None
        positions = self._positions.get(key)
        if positions is None:  # a chain of refusals resumes where it stopped: linear, not quadratic
            positions = self._positions[key] = {id(r): i for i, r in enumerate(routes)}
        position = positions.get(id(after))
        if position is None:
            return None
        for route in routes[position + 1:]:
            if route.simple or route.matches(method, target, headers):
                return route
        return None


class HTTPPlane:
    """One compiled configuration; the proxy reads ``holder.http`` (an instance of this) per request."""

    def __init__(self, version: int, entry_points: dict[str, RouteTable], services: dict[str, Service],
                 limiters: dict, breakers: dict) -> None:
        self.version = version
        self.entry_points = entry_points
        self.services = services
        self._limiters = limiters  # middleware definition → RateLimiter (shared by its routers)
        self._breakers = breakers  # (middleware definition, service name) → CircuitBreaker
        self._carried: set[int] = set()  # ids of services the next plane took over
        self._kept_servers: set[int] = set()  # ids of servers of changed services it took over
        self.closed = False

    def close(self) -> None:
        """Release what the plane that replaced this one did not take over. Idempotent."""
        if self.closed:
            return
        self.closed = True
        for service in self.services.values():
            if id(service) not in self._carried:
                service.close(self._kept_servers)

    def breaker_states(self) -> dict[str, int]:
        """Service → the worst state of its circuit breakers now (the gauge's value)."""
        out: dict[str, int] = {}
        for (_definition, service), breaker in self._breakers.items():
            out[service] = worst_breaker_state(out.get(service, 0), breaker.state)
        return out

    def status(self) -> dict:
        """For ``/api/rawdata``: services with their balancer status and idle connection counts."""
        return {name: {"servers": [{**st, "server": st["server"].url, "idle": len(st["server"].idle)}
                                   for st in s.balancer.status()]}
                for name, s in self.services.items()}


@dataclass
class _Build:
    metrics: ProxyMetrics
    eject_seconds: float
    previous: HTTPPlane | None
    limiters: dict = field(default_factory=dict)
    breakers: dict = field(default_factory=dict)


def compile_http(config: ProxyConfig, previous: HTTPPlane | None = None, metrics: ProxyMetrics | None = None,
                 options: Any = None) -> HTTPPlane:
    """Compile ``config.http``; reuse ``previous``'s runtime objects whose definition is unchanged.

    ``options`` (an :class:`~lightmesh.proxy.http.HTTPOptions` or None) supplies
    ``eject_seconds`` (passive-health ejection). Raises nothing for a config that passed
    :func:`lightmesh.config.load_config_dict` (regexes and URLs were validated there).
    """
    http = config.http
    metrics = metrics if metrics is not None else ProxyMetrics()
    eject = float(getattr(options, "eject_seconds", 10.0))
    build = _Build(metrics, eject, previous)
    services: dict[str, Service] = {}
    for definition in http.services:
        old = previous.services.get(definition.name) if previous is not None else None
        if old is not None and old.definition == definition and not previous.closed:
            services[definition.name] = old
            previous._carried.add(id(old))
        else:
            reuse = old if old is not None and not previous.closed else None
            services[definition.name] = new = Service(definition, eject, reuse)
            if old is not None:
                new.balancer.carry_over(old.balancer)
                olds = {id(s) for s in old.servers}
                previous._kept_servers.update(id(s) for s in new.servers if id(s) in olds)
    middlewares = {m.name: m for m in http.middlewares}
    per_ep: dict[str, list[Route]] = {ep.name: [] for ep in http.entry_points}
    for router in http.routers:
        service = services[router.service]
        for ep in router.entry_points:
            route = Route(router.name, service, router.priority, router.match, router.fall_through)
            _attach_middlewares(route, [middlewares[n] for n in router.middlewares], build)
            per_ep.setdefault(ep, []).append(route)
    tables = {name: RouteTable(routes) for name, routes in per_ep.items()}
    return HTTPPlane(config.version, tables, services, build.limiters, build.breakers)


def _attach_middlewares(route: Route, defs: list, build: _Build) -> None:
    checks: list[Check] = []
    breakers: list[CircuitBreaker] = []
    service = route.service.name
    for m in defs:
        if isinstance(m, AllowListMiddleware):
            checks.append(Check(CHECK_ALLOW, m.name, allow=AllowList(m.source_ranges)))
        elif isinstance(m, DenyMiddleware):
            checks.append(Check(CHECK_DENY, m.name, status=m.status_code))
        elif isinstance(m, RateLimitMiddleware):
            # One bucket set per rate_limit middleware, whichever routers and services list it: the
            # controller gives each Service one, shared by its routes, rules, split matches and
            # ports, so a client cannot multiply its limit by spreading its requests over them.
            limiter = _carry(build, "limiters", "_limiters", (m.model_dump_json(),),
                             lambda: RateLimiter(m.average, m.burst, m.period_seconds))
            checks.append(Check(CHECK_RATE, m.name, limiter=limiter))
        elif isinstance(m, CircuitBreakerMiddleware):
            metrics = build.metrics

            def on_change(state: int, _svc: str = service) -> None:
                metrics.breaker(_svc, state)

            breaker = _carry(build, "breakers", "_breakers", (m.model_dump_json(), service),
                             lambda: CircuitBreaker(m.expression, on_change=on_change))
            breaker.on_change = on_change  # a carried breaker reports to the new plane's recorder
            metrics.breaker(service, breaker.state)
            checks.append(Check(CHECK_BREAKER, m.name, breaker=breaker))
            breakers.append(breaker)
        elif isinstance(m, RetryMiddleware):
            route.retries = max(route.retries, m.attempts)
        elif isinstance(m, RequestTimeoutMiddleware):
            route.timeout = m.seconds if route.timeout is None else min(route.timeout, m.seconds)
        elif isinstance(m, RequestHeadersMiddleware):  # or ResponseHeadersMiddleware, a subclass
            request, response = route.edits or (None, None)
            if isinstance(m, ResponseHeadersMiddleware):
                response = response or HeaderEdits()
                response.apply(m)
            else:
                request = request or HeaderEdits()
                request.apply(m)
            route.edits = (request, response)
    route.checks = tuple(checks)
    route.allows = tuple(c for c in checks if c.kind == CHECK_ALLOW)
    route.breakers = tuple(breakers)


def _carry(build: _Build, mine: str, theirs: str, key: tuple, make: Callable[[], Any]) -> Any:
    table = getattr(build, mine)
    obj = table.get(key)
    if obj is None:
        prev = getattr(build.previous, theirs, {}) if build.previous is not None else {}
        obj = prev.get(key)
        if obj is None:
            obj = make()
        table[key] = obj
    return obj


#: The forwarded headers the proxy adds (lower case).
FORWARDED_HEADERS = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                               b"x-forwarded-port", b"x-forwarded-server"))


def forwarded_port(host: bytes | None, proto: bytes | None = None) -> bytes:
    """X-Forwarded-Port as Traefik sets it: the port of the request's Host (``name:port`` or
    ``[v6]:port``; a bare IPv6 address has none), else 443 when the client's X-Forwarded-Proto says
    https or wss, else 80 (the mesh entry points are plain HTTP)."""
    if host:
        if host[:1] == b"[":
            end = host.find(b"]")
            port = host[end + 2:] if end > 0 and host[end + 1:end + 2] == b":" else b""
        else:
            port = host.partition(b":")[2] if host.count(b":") == 1 else b""
        if port.isdigit():
            return port
    if proto and proto.strip().lower() in (b"https", b"wss"):
        return b"443"
    return b"80"


# RFC 9110 §7.2 / RFC 3986: uri-host [":" port], uri-host an IP literal or a reg-name. No userinfo:
# "aio:1@internal.example" was routed as "aio" while the server saw internal.example.
# An IPv6 literal may carry a zone (RFC 6874: "%25" and its id). Trailing spaces or tabs are
# not part of a field value (RFC 9112 §5; llhttp keeps them).
_VALID_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+(?:%25[A-Za-z0-9\-._~]+)?\]|[A-Za-z0-9\-._~%!$&'()*+,;=]*)"
                         rb"(?::[0-9]*)?[ \t]*")


def valid_host(value: bytes) -> bool:
    """A Host header value (or an ``:authority``) that names one host, as a server would read it."""
    return _VALID_HOST.fullmatch(value) is not None


def split_host(value: bytes) -> str:
    """Host header value → lower-case host without port (``[::1]:80`` → ``::1``)."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    colon = host.rfind(":")
    if colon >= 0 and host.count(":") == 1:
        return host[:colon]
    return host.rstrip(".") if host.endswith(".") and len(host) > 1 else host
