"""The proxy configuration contract: what the controller produces and every proxy consumes.

This module owns the wire format between the control plane and the data plane. It is pure
(pydantic v2 models, no I/O) and versioned:

* ``version`` grows monotonically with every published change; ``hash`` is the SHA-256 of the
  canonical JSON of everything except ``version`` and ``hash``. The controller serves the hash as
  the HTTP ``ETag`` of ``GET /api/configuration/current`` (see :mod:`lightmesh.wire`).
* Everything a proxy must enforce is structured data. Routing is a structured match (hosts, an
  optional path regex anchored at the start of the path, methods, header regexes), never a rule
  string the proxy would have to parse.
* Every element is named and listed (not keyed in a JSON object), so duplicate names survive JSON
  decoding and are rejected by :meth:`ProxyConfig.model_validate` with a message naming them.

Semantics the proxy implements (documented here because this is the contract):

HTTP
    Each ``EntryPoint`` is a listening socket. A request is matched against the routers attached to
    the entry point it arrived on, highest ``priority`` first (ties: longer match first, then name);
    no router matches → 404. A router's ``middlewares`` run in list order, then its ``service``
    forwards the request. A service either load-balances over ``servers`` or is unreachable (no
    servers → 503).
Match
    ``hosts``: the request's Host header without port, compared case-insensitively; empty = any.
    ``path_regex``: matched against the path (no query string): anchored at the start, not at
    the end (add ``$`` for that), as SMI's ``pathRegex``; a list: the path must match each.
    ``methods``: empty = any; ``*`` = any. ``headers``: header name → regex searched in the header
    value (without the whitespace around it), or a list of regexes the value must each match; all
    headers must match (one name twice, in two letter cases, is refused). Regexes are RE2 (Go's
    syntax; linear time: :mod:`lightmesh.userregex`).
    One router holds one match; alternatives (OR) are separate routers sharing a service.
Fall-through
    A router with ``fall_through`` whose ``allow_list`` middlewares refuse the request's source does
    not answer: the next router (in the order above) that matches the request decides instead, and
    so on. One that admits the source but whose service has no servers is passed over too, for a
    later one that admits it and has servers. If none does, the first that admitted it answers
    (503), else the last one tried (a router without ``fall_through``, or the chain's last). ACL
    mode sets it so that TrafficTargets are additive (a source one refuses may be allowed by another
    whose match also covers the request) and ends each chain with a router that answers 403.
Middlewares
    ``allow_list``: source CIDRs of the TCP peer (never a header). Empty list = deny everything
    (403). ``deny``: always answers ``status_code``. ``rate_limit``: token bucket per source IP
    (one set of buckets per middleware, shared by every router that lists it),
    ``average`` requests per ``period_seconds`` with ``burst``; a request whose token is due within
    1/(2·rate) s (at most 0.5 s) waits for it, else 429 + ``Retry-After`` and ``X-Retry-In``.
    ``circuit_breaker``: :mod:`lightmesh.cbexpr` expression; open → 503. ``retry``: up to
    ``attempts`` extra tries on connect failure/reset before any response byte, next server each
    time. ``request_timeout``: 504 when the upstream has not answered in time. ``request_headers``
    / ``response_headers``: ``remove`` then ``set`` (replacing any field of that name) then ``add``
    header fields of the request before it is forwarded / of the response before it is sent;
    framing, routing and hop-by-hop fields cannot be touched.
TCP / UDP
    One route per listening port. ``allowed_sources``: ``None`` = anyone; a list = only those CIDRs
    (empty list = nobody): a denied TCP connection is closed at once, a denied datagram dropped.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from enum import Enum
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer, model_validator

from lightmesh.userregex import check_user_regex

# 2: routers' ``fall_through`` and lists of header regexes. A proxy reads every schema listed in
# READABLE_SCHEMAS (a config of schema 1 is one of schema 2 without either).
SCHEMA_VERSION = 2
READABLE_SCHEMAS = (1, 2)

# Names end up in metric labels, log lines and URLs: keep them to a safe alphabet.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@:/-]{0,252}$"
# used with fullmatch: "$" also matches before a final newline, so "GET\n" passed a match()
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
# strict (here and on every number below): a port of "5000" or true is a producer's bug to
# report, not to coerce
Port = Annotated[int, Field(ge=1, le=65535, strict=True)]
Weight = Annotated[int, Field(ge=0, le=1_000_000, strict=True)]
# Go's int (Traefik's priority): a bigger int is no JSON number a Python proxy reads back (over 4,300
# digits) nor one a Go client takes
INT64_MAX = 2**63 - 1


class ConfigError(ValueError):
    """A proxy configuration that must not be applied; the message names the element."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_regex(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    problem = check_user_regex(value)  # RE2, as the proxy runs it (lightmesh.userregex)
    if problem is not None:
        raise ValueError(f"invalid {what} {value!r}: {problem}")
    return value


# A canonical dotted quad (no leading zeros, each octet 0-255) is exactly what ``ipaddress`` accepts
# and prints back unchanged: checked by this pattern alone (a config holds thousands of them and
# ``ipaddress`` costs ~7 µs each); anything else (IPv6, other spellings) goes through ``ipaddress``.
_IPV4 = re.compile(r"(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])")  # [0-9], not \d: no Unicode digits


_IPV4_URL = re.compile(r"(?:https?|h2c)://" + _IPV4.pattern + r":([0-9]{1,5})")
_BAD_HOST = re.compile(r"[ /\t\r\n]")


def _check_cidr(value: str) -> str:
    if type(value) is str and value.endswith("/32") and _IPV4.fullmatch(value, 0, len(value) - 3):
        return value  # a host route: ip_network would print it back as it is
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise ValueError(f"invalid CIDR {value!r}") from None


def _check_host(value: str) -> str:
    if type(value) is str and _IPV4.fullmatch(value):
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"invalid IP address {value!r}") from None


# --------------------------------------------------------------------------- HTTP


class Match(_Model):
    """Structured request match; every non-empty part must match (AND)."""

    hosts: list[str] = Field(default_factory=list)
    # one regex, or several the path must all match (ACL mode: a route's path AND a TrafficTarget's)
    path_regex: str | list[str] | None = None
    methods: list[str] = Field(default_factory=list)
    headers: dict[str, str | list[str]] = Field(default_factory=dict)

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        out = []
        for host in hosts:
            host = host.strip().lower()
            if not host or _BAD_HOST.search(host):
                raise ValueError(f"invalid host {host!r}")
            out.append(host)
        return out

    @field_validator("path_regex")
    @classmethod
    def _path_regex(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list):
            if not value:
                raise ValueError("a list of path regexes must not be empty")
            for regex in value:
                _check_regex(regex, "path regex")
            return value[0] if len(value) == 1 else value
        return _check_regex(value, "path regex")

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str]) -> list[str]:
        for method in methods:
            if method != "*" and not _HTTP_TOKEN.fullmatch(method):
                raise ValueError(f"invalid HTTP method {method!r}")
        return [m.upper() for m in methods]

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        out: dict[str, str | list[str]] = {}
        spelt: dict[str, str] = {}  # lower case → the name as given
        for name, regex in headers.items():
            if not _HTTP_TOKEN.fullmatch(name):
                raise ValueError(f"invalid header name {name!r}")
            if name.lower() in spelt:
                # one would silently replace the other's constraint
                raise ValueError(f"header names {spelt[name.lower()]!r} and {name!r} differ only in letter case "
                                 "(header names are case-insensitive): give the header once, with a list of "
                                 "regexes to match each")
            spelt[name.lower()] = name
            if isinstance(regex, list):
                if not regex:
                    raise ValueError(f"the list of regexes for header {name!r} must not be empty")
                for one in regex:
                    _check_regex(one, f"regex for header {name!r}")
                regex = regex[0] if len(regex) == 1 else regex
            else:
                _check_regex(regex, f"regex for header {name!r}")
            out[name.lower()] = regex
        return out


class Router(_Model):
    name: Name
    entry_points: list[Name] = Field(min_length=1)
    match: Match = Field(default_factory=Match)
    priority: int = Field(default=0, ge=-INT64_MAX - 1, le=INT64_MAX, strict=True)
    service: Name
    middlewares: list[Name] = Field(default_factory=list)
    fall_through: bool = Field(default=False, strict=True)  # see the module docstring

    @model_serializer(mode="wrap")
    def _schema_1_when_plain(self, handler):
        # Written only when true: a router without it dumps (and hashes) as in schema 1, so a
        # schema-1 config from an older controller keeps the hash it was served with.
        data = handler(self)
        if not self.fall_through:
            data.pop("fall_through", None)
        return data


class LoadBalancer(str, Enum):
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"


class Scheme(str, Enum):
    HTTP = "http"
    HTTPS = "https"
    H2C = "h2c"


class HTTPServer(_Model):
    """One upstream: ``scheme://ip:port`` (IPv6 in brackets)."""

    url: str
    weight: Weight = 1

    @field_validator("url")
    @classmethod
    def _url(cls, url: str) -> str:
        fast = _IPV4_URL.fullmatch(url)  # the common case, accepted as parse_server_url would
        if fast is None or not 1 <= int(fast[1]) <= 65535:
            parse_server_url(url)
        return url


def parse_server_url(url: str) -> tuple[Scheme, str, int]:
    """``http://10.0.0.1:80`` → (Scheme.HTTP, "10.0.0.1", 80); raises ValueError when malformed."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"server URL {url!r} has no scheme")
    try:
        parsed_scheme = Scheme(scheme)
    except ValueError:
        raise ValueError(f"server URL {url!r}: scheme must be http, https or h2c") from None
    if rest.startswith("["):
        host, _, port_part = rest[1:].partition("]")
        port_text = port_part[1:] if port_part.startswith(":") else ""
    else:
        host, _, port_text = rest.rpartition(":")
        if ":" in host:
            raise ValueError(f"server URL {url!r}: an IPv6 address goes in brackets (http://[fd00::1]:80)")
    if not host or not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) \
            or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"server URL {url!r} must be scheme://ip:port with a port in 1-65535")
    return parsed_scheme, _check_host(host), int(port_text)


class HTTPService(_Model):
    name: Name
    servers: list[HTTPServer] = Field(default_factory=list)
    load_balancer: LoadBalancer = LoadBalancer.ROUND_ROBIN
    pass_host_header: bool = True


class RetryMiddleware(_Model):
    type: Literal["retry"] = "retry"
    name: Name
    attempts: int = Field(ge=1, le=100, strict=True)


class CircuitBreakerMiddleware(_Model):
    type: Literal["circuit_breaker"] = "circuit_breaker"
    name: Name
    expression: str

    @field_validator("expression")
    @classmethod
    def _expression(cls, expression: str) -> str:
        from lightmesh import cbexpr  # local import: cbexpr is pure but keeps this module's import light

        cbexpr.parse(expression)
        return expression


MAX_RATE = 10**9


class RateLimitMiddleware(_Model):
    type: Literal["rate_limit"] = "rate_limit"
    name: Name
    # Bounded so that every value the proxy's token bucket takes is a finite float: 10**400 did not
    # convert (every proxy refused the config), a period under Go's 1 ns made the rate infinite.
    average: int = Field(ge=1, le=MAX_RATE, strict=True)
    burst: int = Field(ge=1, le=MAX_RATE, strict=True)
    period_seconds: float = Field(default=1.0, ge=1e-9, le=86400, strict=True, allow_inf_nan=False)


class AllowListMiddleware(_Model):
    type: Literal["allow_list"] = "allow_list"
    name: Name
    source_ranges: list[str] = Field(default_factory=list)

    @field_validator("source_ranges")
    @classmethod
    def _ranges(cls, ranges: list[str]) -> list[str]:
        return [_check_cidr(r) for r in ranges]


class DenyMiddleware(_Model):
    type: Literal["deny"] = "deny"
    name: Name
    status_code: int = Field(default=403, ge=400, le=599, strict=True)


class RequestTimeoutMiddleware(_Model):
    type: Literal["request_timeout"] = "request_timeout"
    name: Name
    seconds: float = Field(gt=0, le=86400, strict=True, allow_inf_nan=False)


# RFC 9110 §5.5 field-value: visible characters (obs-text, 0x80-0xff, included: Latin-1 is what the
# proxy writes), spaces and tabs. No controls, nothing outside Latin-1: a value the proxy cannot
# put on the wire made every worker refuse the whole config.
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


def header_value_ok(value: str) -> bool:
    return len(value) <= 8192 and _FIELD_VALUE.fullmatch(value) is not None


_FIELD_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Fields a header edit must not touch: message framing, routing, connection management, and what
# the proxy itself sets.
_PROTECTED_FIELDS = frozenset(("host", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
                               "trailer", "upgrade", "proxy-connection", "expect"))


def _check_field_name(name: str) -> str:
    if not _FIELD_NAME.fullmatch(name) or len(name) > 256:
        raise ValueError(f"{name!r} is not a header field name")
    if name.lower() in _PROTECTED_FIELDS:
        raise ValueError(f"header {name!r} cannot be changed by a middleware (framing, routing or hop-by-hop)")
    return name


class RequestHeadersMiddleware(_Model):
    type: Literal["request_headers"] = "request_headers"
    name: Name
    set: dict[str, str] = Field(default_factory=dict)
    add: dict[str, str] = Field(default_factory=dict)
    remove: list[str] = Field(default_factory=list)

    @field_validator("set", "add")
    @classmethod
    def _fields(cls, fields: dict[str, str]) -> dict[str, str]:
        for name, value in fields.items():
            _check_field_name(name)
            if not header_value_ok(value):
                raise ValueError(f"header {name!r}: the value must be at most 8192 visible characters, spaces "
                                 "and tabs (Latin-1: what goes on the wire)")
        return fields

    @field_validator("remove")
    @classmethod
    def _remove(cls, names: list[str]) -> list[str]:
        return [_check_field_name(n) for n in names]


class ResponseHeadersMiddleware(RequestHeadersMiddleware):
    type: Literal["response_headers"] = "response_headers"  # type: ignore[assignment]


Middleware = Annotated[
    Union[
        RetryMiddleware,
        CircuitBreakerMiddleware,
        RateLimitMiddleware,
        AllowListMiddleware,
        DenyMiddleware,
        RequestTimeoutMiddleware,
        RequestHeadersMiddleware,
        ResponseHeadersMiddleware,
    ],
    Field(discriminator="type"),
]


class EntryPoint(_Model):
    """A listening socket. In a cluster: ``0.0.0.0:5000+i``; in local mode: a shadow ClusterIP."""

    name: Name
    address: str = "0.0.0.0"
    port: Port

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        return _check_host(address)


class HTTPConfig(_Model):
    entry_points: list[EntryPoint] = Field(default_factory=list)
    routers: list[Router] = Field(default_factory=list)
    services: list[HTTPService] = Field(default_factory=list)
    middlewares: list[Middleware] = Field(default_factory=list)


# --------------------------------------------------------------------------- TCP / UDP


class L4Server(_Model):
    """One upstream ``ip:port`` for TCP or UDP."""

    address: str
    port: Port
    weight: Weight = 1

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        return _check_host(address)


class L4Route(_Model):
    name: Name
    address: str = "0.0.0.0"
    port: Port
    allowed_sources: list[str] | None = None
    servers: list[L4Server] = Field(default_factory=list)

    @field_validator("address")
    @classmethod
    def _address(cls, address: str) -> str:
        return _check_host(address)

    @field_validator("allowed_sources")
    @classmethod
    def _sources(cls, ranges: list[str] | None) -> list[str] | None:
        return None if ranges is None else [_check_cidr(r) for r in ranges]


class TCPRoute(L4Route):
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=300, strict=True, allow_inf_nan=False)


class UDPRoute(L4Route):
    session_idle_timeout_seconds: float = Field(default=30.0, gt=0, le=3600, strict=True, allow_inf_nan=False)


# --------------------------------------------------------------------------- the whole config


def _duplicates(names: list[str]) -> list[str]:
    seen: set[str] = set()
    dup: list[str] = []
    for name in names:
        if name in seen and name not in dup:
            dup.append(name)
        seen.add(name)
    return dup


class ProxyConfig(_Model):
    """The whole configuration one proxy enforces. Build it with :func:`make_config`."""

    schema_version: Literal[1, 2] = SCHEMA_VERSION
    version: int = Field(ge=0, le=INT64_MAX, strict=True)
    hash: str = ""
    http: HTTPConfig = Field(default_factory=HTTPConfig)
    tcp: list[TCPRoute] = Field(default_factory=list)
    udp: list[UDPRoute] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> ProxyConfig:
        problems = _config_problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        if self.hash and self.hash != content_hash(self):
            raise ValueError("hash does not match the content (corrupted or hand-edited config)")
        return self

    def etag(self) -> str:
        return f'"{self.hash}"'

    def to_json(self) -> str:
        return self.model_dump_json()


def _config_problems(config: ProxyConfig) -> list[str]:
    """Whole-config checks: duplicate names, unknown references, two listeners on one socket."""
    http = config.http
    problems: list[str] = []
    for kind, names in (
        ("entry point", [e.name for e in http.entry_points]),
        ("router", [r.name for r in http.routers]),
        ("service", [s.name for s in http.services]),
        ("middleware", [m.name for m in http.middlewares]),
        ("tcp route", [r.name for r in config.tcp]),
        ("udp route", [r.name for r in config.udp]),
    ):
        problems += [f"duplicate {kind} name {n!r}" for n in _duplicates(names)]
    entry_points = {e.name for e in http.entry_points}
    services = {s.name for s in http.services}
    middlewares = {m.name for m in http.middlewares}
    for router in http.routers:
        for ep in router.entry_points:
            if ep not in entry_points:
                problems.append(f"router {router.name!r} references unknown entry point {ep!r}")
        if router.service not in services:
            problems.append(f"router {router.name!r} references unknown service {router.service!r}")
        for mw in router.middlewares:
            if mw not in middlewares:
                problems.append(f"router {router.name!r} references unknown middleware {mw!r}")
        if config.schema_version < 2:
            # A schema-1 reader would ignore these and route differently: a config that uses them
            # and claims schema 1 is inconsistent, not something to half-apply.
            if router.fall_through:
                problems.append(f"router {router.name!r}: fall_through needs schema_version 2")
            for name, regex in router.match.headers.items():
                if isinstance(regex, list):
                    problems.append(f"router {router.name!r}: a list of regexes for header {name!r} "
                                    "needs schema_version 2")
    # Two listeners on one socket cannot both be opened: a clash is a config error.
    sockets: dict[tuple[str, str, int], str] = {}
    listeners = [("tcp", e.address, e.port, f"entry point {e.name!r}") for e in http.entry_points]
    listeners += [("tcp", r.address, r.port, f"tcp route {r.name!r}") for r in config.tcp]
    listeners += [("udp", r.address, r.port, f"udp route {r.name!r}") for r in config.udp]
    for proto, address, port, what in listeners:
        clash = _socket_clash(sockets, proto, address, port)
        if clash:
            problems.append(f"{what} listens on {proto} {address}:{port} like {clash}")
        sockets[(proto, address, port)] = what
    return problems


def _socket_clash(sockets: dict[tuple[str, str, int], str], proto: str, address: str, port: int) -> str | None:
    mine = _bound_address(address)
    for (p, a, po), what in sockets.items():
        if p == proto and po == port:
            theirs = _bound_address(a)
            if theirs == mine or theirs is None or mine is None:
                return what
    return None


def _bound_address(address: str):
    """The address a socket bound to ``address`` really takes, None for a wildcard: an IPv4-mapped
    IPv6 address (``::ffff:127.0.0.1``) is its IPv4 address, ``::0`` is ``::``."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if ip.is_unspecified:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped or ip


def _canonical(config: ProxyConfig) -> bytes:
    body = config.model_dump(mode="json", exclude={"version", "hash"})
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def content_hash(config: ProxyConfig) -> str:
    """SHA-256 of the canonical content; independent of ``version`` so equal configs hash equal."""
    return hashlib.sha256(_canonical(config)).hexdigest()


def make_config(version: int, http: HTTPConfig | None = None, tcp: list[TCPRoute] | None = None,
                udp: list[UDPRoute] | None = None) -> ProxyConfig:
    """Validate the parts and return a config stamped with ``version`` and its content hash."""
    unhashed = load_config_dict({
        "version": version,
        "http": (http or HTTPConfig()).model_dump(mode="json"),
        "tcp": [r.model_dump(mode="json") for r in tcp or []],
        "udp": [r.model_dump(mode="json") for r in udp or []],
    })
    return unhashed.model_copy(update={"hash": content_hash(unhashed)})


def _dumps(body: object) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _same_input(old: object, new: object) -> bool:
    """``old == new`` with the same type at every level (``==`` has ``5000.0 == 5000 == True``,
    which the strict models refuse): only then may what was validated for ``old`` stand for ``new``.
    A dict with its keys in another order, or anything JSON cannot write, is not the same (it is
    validated again: slower, never wrong). The controller passes the unchanged elements' very dicts
    again; for the ones it rebuilds, two C-level steps: ``==``, then their JSON, which tells
    ``5000`` from ``5000.0`` and ``1`` from ``true`` (``==`` also tells a list from a tuple)."""
    if old is new:
        return True
    if type(old) is not type(new) or old != new:
        return False
    try:
        return json.dumps(old) == json.dumps(new)
    except (TypeError, ValueError):
        return False


class ConfigAssembler:
    """``make_config`` for a config rebuilt over and over with few changes (the controller).

    :meth:`make` takes what :func:`load_config_dict` takes (plain dicts, ``version`` included) and
    returns the same ``ProxyConfig``, hashed as :func:`make_config` hashes it. Each element (entry
    point, router, service, middleware, TCP/UDP route) is validated on its own by its pydantic model
    — unless the previous call had an element of that kind and name with the same dict (equal, and of
    the same types all the way down: a port of 5000.0 or a weight of true is not the 5000 or 1 that
    was validated, see :func:`_same_input`): then that element's validated model and canonical JSON
    are reused. The whole-config checks (duplicates, references, listener clashes) run every time,
    and the content hash is assembled from the elements' canonical JSON (the same bytes as
    :func:`content_hash`). A config with any error, or with anything unusual around the elements,
    goes through :func:`load_config_dict` for its error message. At 1,000 Services with one changed,
    this costs ~1/4 of validating and hashing the whole config. The dicts passed in must not be changed afterwards (they are kept to compare).
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, object], tuple[dict, BaseModel, str]] = {}
        self._middleware = None

    def _element(self, kind: str, validate, item: object, fresh: dict) -> tuple[BaseModel, str]:
        key = (kind, item.get("name") if isinstance(item, dict) else None)
        hit = self._cache.get(key)
        if hit is None or not _same_input(hit[0], item):
            model = validate(item)
            hit = (item, model, _dumps(model.model_dump(mode="json")))
        fresh[key] = hit
        return hit[1], hit[2]

    def make(self, data: dict) -> ProxyConfig:
        from pydantic import TypeAdapter, ValidationError

        if self._middleware is None:
            self._middleware = TypeAdapter(Middleware).validate_python
        http = data.get("http") if isinstance(data, dict) else None
        version = data.get("version") if isinstance(data, dict) else None
        if (not isinstance(http, dict) or type(version) is not int or not 0 <= version <= INT64_MAX
                or not set(data) <= {"version", "http", "tcp", "udp", "schema_version"}
                or data.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION
                or not set(http) <= {"entry_points", "routers", "services", "middlewares"}
                or not all(isinstance(x, list) for x in (*http.values(), data.get("tcp", []), data.get("udp", [])))):
            return make_config_from_dict(data)
        fresh: dict[tuple[str, object], tuple[dict, BaseModel, str]] = {}
        parts: dict[str, tuple[list, list[str]]] = {}
        try:
            for kind, validate in (("entry_points", EntryPoint.model_validate), ("routers", Router.model_validate),
                                   ("services", HTTPService.model_validate), ("middlewares", self._middleware),
                                   ("tcp", TCPRoute.model_validate), ("udp", UDPRoute.model_validate)):
                items = (data if kind in ("tcp", "udp") else http).get(kind) or []
                models, texts = [], []
                for item in items:
                    model, text = self._element(kind, validate, item, fresh)
                    models.append(model)
                    texts.append(text)
                parts[kind] = (models, texts)
        except ValidationError:
            self._cache = {}
            return make_config_from_dict(data)  # raises ConfigError naming the element
        config = ProxyConfig.model_construct(
            version=version,
            http=HTTPConfig.model_construct(**{k: parts[k][0] for k in ("entry_points", "routers", "services",
                                                                      "middlewares")}),
            tcp=parts["tcp"][0], udp=parts["udp"][0])
        if _config_problems(config):
            self._cache = {}
            return make_config_from_dict(data)  # raises ConfigError with every problem
        self._cache = fresh

        def joined(kind: str) -> str:
            return "[" + ",".join(parts[kind][1]) + "]"

        canonical = (f'{{"http":{{"entry_points":{joined("entry_points")},"middlewares":{joined("middlewares")},'
                     f'"routers":{joined("routers")},"services":{joined("services")}}},'
                     f'"schema_version":{SCHEMA_VERSION},"tcp":{joined("tcp")},"udp":{joined("udp")}}}')
        return config.model_copy(update={"hash": hashlib.sha256(canonical.encode()).hexdigest()})


def make_config_from_dict(data: object) -> ProxyConfig:
    """:func:`load_config_dict` stamped with its content hash (what :func:`make_config` returns)."""
    config = load_config_dict(data)
    return config.model_copy(update={"hash": content_hash(config)})


def load_config_dict(data: object) -> ProxyConfig:
    """Validate decoded JSON; raises :class:`ConfigError` whose message names each bad element."""
    from pydantic import ValidationError

    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, data)) from None


def load_config_json(text: str | bytes) -> ProxyConfig:
    try:
        data = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"configuration is not valid JSON: {exc}") from None
    return load_config_dict(data)


def _describe(exc, data: object) -> str:
    """Turn pydantic's locations (``http.routers.3.match.path_regex``) into element names."""
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = _named_path(data, loc)
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {msg}" if where else msg)
    return "invalid proxy configuration: " + "; ".join(lines)


def _named_path(data: object, loc: list) -> str:
    parts: list[str] = []
    node = data
    for key in loc:
        if isinstance(key, int) and isinstance(node, list) and 0 <= key < len(node):
            node = node[key]
            name = node.get("name") if isinstance(node, dict) else None
            parts[-1:] = [f"{parts[-1] if parts else ''}[{name!r}]" if name else f"{parts[-1] if parts else ''}[{key}]"]
            continue
        if isinstance(node, dict) and key in node:
            node = node[key]
        else:
            node = None
        parts.append(str(key))
    return ".".join(p for p in parts if p)


def json_schema() -> dict:
    """JSON schema of the wire format (``lightmesh config-schema``)."""
    schema = ProxyConfig.model_json_schema()
    _discriminators_required(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "Lightmesh proxy configuration"
    return schema


def _discriminators_required(schema: dict) -> None:
    """A middleware's ``type`` has a default in Python (``RetryMiddleware(name=..., attempts=2)``) but
    on the wire it is the discriminator the loader needs: required in the schema, as the loader
    refuses a middleware without it."""
    defs = schema.get("$defs", {})
    discriminators = [node["discriminator"] for node in _schema_nodes(schema)
                      if isinstance(node, dict) and isinstance(node.get("discriminator"), dict)]
    for discriminator in discriminators:  # (collected first: the loop below edits the schema)
        field = discriminator["propertyName"]
        for ref in discriminator.get("mapping", {}).values():
            target = defs[ref.rsplit("/", 1)[-1]]
            target["properties"][field].pop("default", None)
            required = target.setdefault("required", [])
            if field not in required:
                required.insert(0, field)


def _schema_nodes(node: object):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _schema_nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _schema_nodes(value)


EMPTY = make_config(0)
"""Version 0: nothing routed (tests). Like any valid config, a proxy that applied it is ready."""
