"""The HTTP/1.1 reverse proxy of one worker: client and upstream ``asyncio.Protocol`` classes driven by
httptools (llhttp), on uvloop.

Owns :class:`HTTPOptions` (limits and switches), :class:`ConnectionSet` (the worker's client
connections: ``max_connections``, graceful drain), :func:`protocol_factory` (what
``loop.create_server`` takes) and the per-request behaviour: routing through the current
:class:`~lightmesh.proxy.routing.HTTPPlane` (``holder.http``, read once per request head),
middlewares, upstream keep-alive pools, streaming, Upgrade tunnels, hostile-input rejection,
metrics, access log and tracing hooks.

Design (see ``/work/shared/reference/python-proxy-performance.md``):

* Protocol callbacks only; no task or coroutine per request. A task exists only to open a new
  upstream connection (pooled connections are reused, so that is rare under load).
* Corked writes: everything produced during one event-loop callback is queued per transport and
  written with one ``writelines`` (one ``writev``) at the end of that callback.
* Bodies are streamed, never buffered whole. Backpressure both ways: a transport whose write buffer
  is full pauses reading on the peer. A Content-Length response body larger than one read is
  forwarded as the bytes objects received (no copy: the response parser is bypassed for it).
* Per connection, the peer IP and allow-list decisions are cached.
* Response heads are passed through as received when nothing in them needs changing (HTTP/1.1,
  Content-Length, no hop-by-hop header but ``Connection: keep-alive``, which is cut out): each
  distinct head is validated by llhttp once and cached by its bytes, and such a response costs no
  parser callback (``UpstreamProtocol._pass_head``); any other response head is rebuilt.
* Nothing is sent upstream before a request head has been fully parsed and validated; writes made
  while parsing a read are only flushed after the whole read parsed cleanly, so a hostile request
  arriving in one read never reaches an upstream. (A body error arriving in a later read aborts the
  upstream connection, which then sees a truncated request.)

Framing choices: requests go upstream as HTTP/1.1 keep-alive; Content-Length bodies keep their
length, chunked bodies are re-chunked with their trailer fields. Responses keep Content-Length;
chunked or close-delimited responses are re-chunked for HTTP/1.1 clients (trailer fields kept) and
sent close-delimited to HTTP/1.0 clients (trailer fields dropped: 1.0 has no way to carry them).
A response whose transfer codings (all its ``Transfer-Encoding`` lines) do not end in ``chunked``
(``gzip`` alone) is a 502, as nginx and Go (Traefik) answer it: its body would run to the close
under codings a client never asked for; ``gzip, chunked`` is re-chunked with ``gzip`` kept.
Trailer fields that are hop-by-hop or framing (``Connection``, ``Content-Length``, ``TE``...) are
never forwarded; the ``Trailer`` header is kept only on a message that goes out chunked. At most
``MAX_TRAILER_FIELDS`` trailer fields either way; a response head (interim heads included) larger
than ``MAX_RESPONSE_HEAD_BYTES`` is malformed (502). ``Expect: 100-continue`` is passed end to end
(the upstream's ``100 Continue`` is relayed). Incoming ``X-Forwarded-Proto``, ``-Host``, ``-Port``
and ``X-Real-Ip`` are kept when present (the mesh hop is node-local and trusted, as Traefik Mesh's
``forwardedHeaders.insecure``), else set; the peer IP is always appended to ``X-Forwarded-For``;
``X-Forwarded-Server`` is always this proxy's host name. A forwarded header a ``request_headers``
edit sets or removes is the edit's alone (Traefik's headers middleware runs after the entry point),
one it only adds goes next to ours; the peer is appended to whatever ``X-Forwarded-For`` the edits
left (Traefik's reverse proxy does that last).

Retries (``retry`` middleware): an attempt that failed to connect, or whose connection was reset
or closed before any response byte, is repeated on the next server (``Balancer.pick(exclude=tried)``;
the same server again when every server was tried). The request is replayed from what the proxy
kept: bodies up to ``max_replay_bytes`` (1 MiB), or anything when nothing was sent yet; a larger
body (1 MiB of body bytes: chunk framing does not count) that was already sent is not retried;
nothing is retried once any response byte arrived (a 1xx, part of a head: the server acted on
the request). Independently of the middleware, a pooled connection that turns out closed by the server
is retried once on a fresh connection (the keep-alive race). Passive health: ``Balancer.failed``
on connect failure or reset, ``succeeded`` on a response. Circuit breakers judge requests, not
attempts: each records a request's final outcome, after its retries (a response's status; None, a
network error, when the last attempt failed; 504 on a timeout), as Traefik's breaker does in front
of its retry middleware (the order the controller writes): a failed attempt that a retry answered
leaves the breaker alone, so passive health, not the breaker, deals with one dead server.

Connections and timeouts: :class:`ConnectionSet` lives in ``HTTPOptions.connections`` (one per
worker, shared by its entry points; ``max_connections`` counts there). Each client connection has
one lazily re-armed timer: ``header_timeout`` runs from accept or from a request's first byte to its
complete head (then 408 and close; a connection that sent nothing is just closed), ``idle_timeout``
between requests on a keep-alive connection, ``body_timeout`` between two reads of a request body
(then 408 and close, or the connection cut when response bytes already went out). Until the
response head, the route's ``request_timeout`` middleware applies from the start of forwarding;
without one, ``response_timeout`` (off by default, as Traefik's ``responseHeaderTimeout``) from the
moment the whole request was received; either answers 504. An Upgrade tunnel is closed after
``tunnel_idle_timeout`` without a byte either way (off by default: WebSockets often idle for long).

HTTP/2: a connection whose first bytes are the HTTP/2 preface is handed to
:class:`lightmesh.proxy.h2.H2Downstream` (see there); the check costs one attribute test per
request head. The pre-forwarding middlewares are :func:`run_checks`, shared by both protocols.

Status codes the proxy itself answers: 400 malformed/hostile request (connection closed), 403
allow-list, 404 no route, 405 CONNECT, 408 header or body timeout, 429 rate limit, 431 header
too large, 502 upstream unreachable/reset/malformed, 503 no servers or breaker open, 504 request or
response timeout, 505 HTTP version. Requests answered without a route are counted under service ``unrouted``;
a request whose client went away before its response head was sent is counted as 499; after the
head, with the status sent, as nginx does (an upstream that dies mid-body likewise). A tracing span
(:mod:`lightmesh.proxy.tracing`) covers requests that passed the middlewares and went upstream.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import socket
import ssl
import time
from time import perf_counter
from dataclasses import dataclass, field
from typing import Any

import httptools
from httptools import HttpParserCallbackError, HttpParserError, HttpParserInvalidMethodError, HttpParserUpgrade

from lightmesh.netutil import LOCAL_LIMIT, connect_failure_reason
from lightmesh.proxy.h2 import H2Downstream, looks_like_h2
from lightmesh.proxy.metrics import ProxyMetrics
from lightmesh.proxy.routing import (CHECK_ALLOW, CHECK_BREAKER, CHECK_DENY, CHECK_RATE, Route, Server,
                                     FragmentInTarget, forwarded_port, split_host, valid_host)
from lightmesh.proxy.timers import put_off_if_late, within

__all__ = ["HTTPOptions", "ConnectionSet", "protocol_factory", "ClientProtocol", "UpstreamProtocol",
           "UNROUTED"]

UNROUTED = "unrouted"
ACCESS_LOGGER = "lightmesh.access"
_log = logging.getLogger(__name__)


class ConnectionSet:
    """The client connections of one worker (all HTTP entry points share one set through
    :attr:`HTTPOptions.connections`): enforces ``max_connections`` and drains on shutdown."""

    def __init__(self) -> None:
        self.conns: set[ClientProtocol] = set()
        self.draining = False
        # entry-point renames and removals (see entry_points_changed), numbered: a connection
        # accepted before one and registered after it (connection_made comes a loop turn after
        # the protocol is made) catches up when it registers
        self.ep_generation = 0
        self.ep_changes: list[tuple[int, dict[str, str], set[str]]] = []

    def __len__(self) -> int:
        return len(self.conns)

    def recycle(self, entry_point: str) -> int:
        """End keep-alive on the connections of ``entry_point``, so their clients connect again:
        idle ones close now, busy ones after the requests they have read (HTTP/2: GOAWAY, then after
        the streams in flight). Used when the port's connections must be placed again (steering
        by client IP turned on: see steering). Returns how many will end (an Upgrade tunnel is
        left open: nothing on it is rate limited)."""
        ending = 0
        for conn in list(self.conns):
            if getattr(conn, "ep", None) == entry_point and conn.recycle():
                ending += 1
        return ending

    def entry_points_changed(self, renamed: dict[str, str], removed: set[str]) -> int:
        """A new config kept some entry points' sockets under new names (``renamed``: old name →
        new) and removed others (their old names): connections of a renamed one route by the new
        name from their next request; those of a removed one end as in :meth:`recycle` (requests
        in flight finish). One pass over the old names, so names that trade places stay right.
        Returns how many connections end."""
        self.ep_generation += 1
        self.ep_changes.append((self.ep_generation, renamed, removed))
        del self.ep_changes[:-8]  # a connection waits one loop turn to register: one or two are plenty
        ending = 0
        for conn in list(self.conns):
            ending += self._follow(conn, renamed, removed)
        return ending

    @staticmethod
    def _follow(conn: Any, renamed: dict[str, str], removed: set[str]) -> bool:
        ep = getattr(conn, "ep", None)
        if ep in removed:
            return conn.recycle()
        if ep in renamed:
            conn.ep = renamed[ep]
        return False

    def catch_up(self, conn: Any, seen: int) -> None:
        """Apply to ``conn`` the entry-point changes made after generation ``seen``."""
        for generation, renamed, removed in self.ep_changes:
            if generation > seen and self._follow(conn, renamed, removed):
                return

    def close_idle(self) -> int:
        """Close the connections with no request in progress; returns how many."""
        idle = [c for c in self.conns if c.is_idle()]
        for conn in idle:
            conn.close()
        return len(idle)

    async def drain(self, timeout: float) -> bool:
        """Stop keep-alive (every response from now on says ``Connection: close``), close idle
        connections, wait up to ``timeout`` seconds for the others to finish, then abort what is
        left. Returns True when everything finished in time."""
        self.draining = True
        for conn in list(self.conns):  # HTTP/2 connections announce it (GOAWAY) while streams run
            start_drain = getattr(conn, "start_drain", None)
            if start_drain is not None:
                start_drain()
        self.close_idle()
        deadline = time.monotonic() + timeout
        while self.conns and time.monotonic() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            self.close_idle()
        clean = not self.conns
        for conn in list(self.conns):
            conn.abort()
        return clean


@dataclass
class HTTPOptions:
    """Limits and switches of the HTTP proxy; one instance per worker, shared by its entry points."""

    max_header_bytes: int = 65536  # request line + headers; beyond → 431 and close
    header_timeout: float = 10.0  # from the first byte of a request (or accept) to its full head → 408, close
    idle_timeout: float = 180.0  # keep-alive connection with no request in progress → closed
    body_timeout: float = 60.0  # between two reads of a request body → 408 (or cut), close
    response_timeout: float = 0.0  # whole request received → response head; 0 = none → 504
    tunnel_idle_timeout: float = 0.0  # Upgrade tunnel with no byte either way → closed; 0 = never
    max_connections: int = 10000  # per worker; beyond, a new connection is closed at once
    connect_timeout: float = 5.0  # upstream TCP connect (then: connect failure → retry or 502)
    upstream_idle_timeout: float = 60.0  # pooled upstream connections idle longer are not reused
    eject_seconds: float = 10.0  # passive health: a server that refused a connection sits out
    max_replay_bytes: int = 1 << 20  # request bodies up to this size are kept for a retry
    access_log: bool = False
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger(ACCESS_LOGGER))
    tracer: Any = None  # a lightmesh.proxy.tracing.RequestTracer, or None (tracing off, zero cost)
    connections: ConnectionSet = field(default_factory=ConnectionSet)
    # X-Forwarded-Server, as Traefik sets it: this proxy's host name (the pod's name in a cluster)
    server_name: bytes = field(default_factory=lambda: socket.gethostname().encode("latin-1", "replace"))


def protocol_factory(holder: Any, entry_point: str, options: HTTPOptions, metrics: ProxyMetrics):
    """For ``loop.create_server``: each connection reads ``holder.http`` (an ``HTTPPlane``) per
    request head and routes with the table of ``entry_point``."""
    def factory() -> ClientProtocol:
        return ClientProtocol(holder, entry_point, options, metrics)
    return factory


# --------------------------------------------------------------------------- header tables

_REASONS = {100: b"Continue", 101: b"Switching Protocols", 200: b"OK", 204: b"No Content",
            400: b"Bad Request", 403: b"Forbidden", 404: b"Not Found", 405: b"Method Not Allowed",
            408: b"Request Timeout", 429: b"Too Many Requests", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 502: b"Bad Gateway", 503: b"Service Unavailable",
            504: b"Gateway Timeout", 505: b"HTTP Version Not Supported"}

# Classification of header names (lower-cased) on both sides.
(H_OTHER, H_HOST, H_CONNECTION, H_TE, H_XFF, H_XFP, H_XFH, H_UPGRADE, H_CL, H_HOP, H_TRACEPARENT, H_EXPECT,
 H_XRI, H_XFPORT, H_XFSERVER) = range(15)
_SPECIAL = {b"host": H_HOST, b"connection": H_CONNECTION, b"transfer-encoding": H_TE,
            b"x-forwarded-for": H_XFF, b"x-forwarded-proto": H_XFP, b"x-forwarded-host": H_XFH,
            b"x-real-ip": H_XRI, b"x-forwarded-port": H_XFPORT, b"x-forwarded-server": H_XFSERVER,
            b"upgrade": H_UPGRADE, b"content-length": H_CL, b"keep-alive": H_HOP, b"te": H_HOP,
            b"trailer": H_HOP, b"traceparent": H_TRACEPARENT, b"expect": H_EXPECT}
# Classes that are plain end-to-end fields where the proxy adds none of its own (1xx heads, trailers).
_PLAIN = frozenset((H_OTHER, H_XRI, H_XFPORT, H_XFSERVER))
_NAME_CACHE: dict[bytes, int] = {}  # raw name as received → class; bounded (hostile names)
_NAME_CACHE_MAX = 4096


def _classify(name: bytes) -> int:
    lname = name.lower()
    code = _SPECIAL.get(lname)
    if code is None:
        code = H_HOP if lname.startswith(b"proxy-") else H_OTHER
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = code
    return code


_METHODS: dict[bytes, str] = {}
# A request method llhttp does not know is forwarded when it is an RFC 9110 token of at most this size.
MAX_METHOD_BYTES = 64
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}
_CRLF = b"\r\n"

_LAST_CHUNK = b"0\r\n\r\n"
_NO_BODY_STATUS = frozenset((204, 304))

# Response framing towards the client.
F_NONE, F_LENGTH, F_CHUNK, F_RAW_CLOSE = range(4)

# Trailer fields accepted after a chunked body (beyond: a request gets 431 and is closed; a response
# is cut, as a malformed one).
MAX_TRAILER_FIELDS = 100
# Response heads (interim ones included) larger than this are malformed: 502 (nginx's limit is 4-8 KiB).
MAX_RESPONSE_HEAD_BYTES = 65536

# A request body with more than this left after a read bypasses the parser (see _bypassed).
BYPASS_MIN = 65536
FRESH_RECYCLE_SECONDS = 1.0  # ConnectionSet.recycle: a just-accepted connection is looked at again then

# Write buffer limits per transport: above HIGH the peer stops reading until LOW. Larger than
# asyncio's 64 KiB default so a streamed body does not pause and resume every 64 KiB.
WRITE_HIGH, WRITE_LOW = 512 * 1024, 128 * 1024

# Reasons the client connection stops reading (bit mask). P_WRITE: the client does not read our
# answers; the next request waits (pipelined ones the proxy answers itself would pile up unsent).
# P_UPGRADE: an Upgrade request waits for the server's answer (see _upgraded).
P_UPSTREAM, P_PIPELINE, P_CONNECT, P_WRITE, P_UPGRADE = 1, 2, 4, 8, 16


def _status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason or _REASONS.get(status, b"Unknown"))
        if len(_STATUS_LINES) < 1024:
            _STATUS_LINES[key] = line
    return line


def _drop_fields(parts: list[bytes], start: int, drop) -> list[bytes]:
    """``parts[start:]`` = (name, ": ", value, CRLF) groups (a request head has 5 pieces before
    them, a response head 1): without those named in ``drop`` (lower-case names)."""
    out = parts[:start]
    for i in range(start, len(parts), 4):
        if parts[i].lower() not in drop:
            out += parts[i:i + 4]
    return out


def _last_chunk(fields: list[tuple[bytes, bytes]], start: int) -> bytes:
    """The end of a chunked body: the last chunk and the trailer fields ``fields[start:]`` (parsed
    after the body), without hop-by-hop, framing and routing fields (RFC 9110 §6.5.1)."""
    if len(fields) <= start:
        return _LAST_CHUNK
    out = [b"0\r\n"]
    for name, value in fields[start:]:
        code = _NAME_CACHE.get(name)
        if code is None:
            code = _classify(name)
        if code in _PLAIN or code == H_TRACEPARENT:
            out += (name, b": ", value, _CRLF)
    out.append(_CRLF)
    return b"".join(out)


def _go_duration(seconds: float) -> bytes:
    """``X-Retry-In`` as Traefik writes it (Go's time.Duration, to the millisecond): ``250ms``,
    ``1.5s``, ``1m30s``, ``1h0m0s``."""
    if seconds < 1.0:
        return (b"%.3f" % (seconds * 1000.0)).rstrip(b"0").rstrip(b".") + b"ms"
    millis = round(seconds * 1000.0)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs = (b"%.3f" % (millis / 1000.0)).rstrip(b"0").rstrip(b".") + b"s"
    if hours:
        return b"%dh%dm" % (hours, minutes) + secs
    return (b"%dm" % minutes if minutes else b"") + secs


def admitted_route(conn: Any, table: Any, route: Route, plane: Any, host: str, method: str, target: bytes,
                   headers: list) -> Route:
    """``route`` if it is not ``fall_through`` or its allow-lists admit ``conn``'s source; else the
    next matching route that does, or is not ``fall_through`` (ACL mode ends each such chain with a
    route that answers 403): SMI's TrafficTargets are additive, so a source one of them refuses
    for a request may be allowed by another whose match also covers it. A route that admits the
    source but has no servers (its destination pods serve nothing now) is passed over for a later
    one that has, and taken (503) only if none admits it. Raises FragmentInTarget (see
    RouteTable.lookup)."""
    if conn.acl_plane is not plane:
        conn.acl = {}
        conn.acl_plane = plane
    cache = conn.acl
    unavailable = None
    while route.fall_through:
        for chk in route.allows:
            ok = cache.get(chk)
            if ok is None:
                ok = cache[chk] = chk.allow.allows(conn.peer)
            if not ok:
                break
        else:
            if route.service.servers:
                return route
            if unavailable is None:
                unavailable = route
        following = table.next_match(route, host, method, target, headers)
        if following is None:
            return unavailable or route  # its allow-list answers 403
        route = following
    return unavailable or route


def run_checks(conn: Any, checks: tuple, plane: Any, svc: str) -> tuple[int, bytes] | None:
    """A router's pre-forwarding middlewares (``checks``) in order, for a request from ``conn`` (an
    HTTP/1.1 or HTTP/2 client connection: its ``peer``, ``metrics`` and allow-list cache ``acl``
    for ``acl_plane``): None to forward, else the status and extra header lines to answer."""
    for chk in checks:
        kind = chk.kind
        if kind == CHECK_ALLOW:
            if conn.acl_plane is not plane:
                conn.acl = {}
                conn.acl_plane = plane
            ok = conn.acl.get(chk)
            if ok is None:
                ok = conn.acl[chk] = chk.allow.allows(conn.peer)
            if not ok:
                conn.metrics.denied(svc)
                return 403, b""
        elif kind == CHECK_RATE:
            wait = chk.limiter.check(conn.peer)
            if wait:
                if wait <= chk.limiter.max_delay:
                    # Traefik's limiter: a token due soon is waited for, not refused (the caller
                    # forwards after ``conn.rate_delay``)
                    chk.limiter.reserve(conn.peer)
                    if wait > conn.rate_delay:
                        conn.rate_delay = wait
                    continue
                conn.metrics.rate_limit(svc)
                return 429, b"Retry-After: %d\r\nX-Retry-In: %s\r\n" % (max(1, math.ceil(wait)),
                                                                          _go_duration(wait))
        elif kind == CHECK_BREAKER:
            if not chk.breaker.allow():
                return 503, b""
        elif kind == CHECK_DENY:
            conn.metrics.denied(svc)  # an allow-list or deny rule refused it (the metric's meaning)
            return chk.status, b""
    return None


def access_log(conn: Any, method: str, host: bytes, path: bytes, route: Route | None, service: str,
               server: Server | None, status: int, retries: int, seconds: float) -> None:
    """``--access-log``: one JSON line for a request (an HTTP/1.1 exchange or an HTTP/2 stream) that
    ``conn`` (its ``peer``, ``ep``, ``options``) answered."""
    conn.options.logger.info(json.dumps({
        "time": time.time(), "client": conn.peer, "entry_point": conn.ep, "method": method,
        "host": host.decode("latin-1"), "path": path.decode("latin-1"),
        "router": route.name if route is not None else None, "service": service,
        "upstream": server.url if server is not None else None, "status": status,
        "retries": retries, "duration_ms": round(seconds * 1000.0, 3)}))


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


_CONN_CACHE: dict[bytes, tuple[tuple[bytes, ...], bool]] = {}


# Connection tokens that never make a header hop-by-hop. Framing and Host: dropping Content-Length
# while forwarding the body would smuggle the body upstream as a request of its own. The
# X-Forwarded-* fields: the proxy maintains them, and a client must not be able to remove them
# (the class of Traefik's CVE-2024-45410).
_NOT_CONNECTION_OPTIONS = frozenset((b"close", b"keep-alive", b"upgrade", b"content-length", b"transfer-encoding",
                                     b"host", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"))


def _connection(value: bytes) -> tuple[tuple[bytes, ...], bool]:
    """Connection header value → (other header names it makes hop-by-hop, names "upgrade");
    cached, since nearly every peer sends the same one or two values."""
    hit = _CONN_CACHE.get(value)
    if hit is None:
        tokens = _tokens(value)
        hit = (tuple(t for t in tokens if t not in _NOT_CONNECTION_OPTIONS), b"upgrade" in tokens)
        if len(_CONN_CACHE) < 256:
            _CONN_CACHE[value] = hit
    return hit


# Response heads forwarded as received (see UpstreamProtocol._pass_head). Any of these at the start
# of a header line (in the lower-cased head) sends the response down the rebuilding path instead; a
# leading space or tab is an obs-fold continuation line, which a proxy must not forward.
_HOP_LINE = re.compile(rb"\r\n(?:[ \t]|connection|keep-alive|transfer-encoding|te[ \t]*:|trailer|upgrade|proxy-)")
_CONN_LINE = b"\r\nconnection:"
_CL_LINE = b"\r\ncontent-length:"
# Response head bytes (status line to the blank line) → (status, Content-Length, start and end of the
# ``Connection: keep-alive`` line to cut, -1 for none), or None: not for passing through. A backend
# repeats the same head byte for byte until its Date header ticks, so this is nearly always a hit and
# a hit costs a slice and a dict lookup. Bounded: heads up to _HEAD_KEEP_MAX bytes (longer ones are
# rebuilt), emptied when full.
_HEADS: dict[bytes, tuple[int, int, int, int] | None] = {}
_HEADS_MAX = 1024
_HEAD_KEEP_MAX = 8192


class _HeadCheck:
    """Response parser callbacks for validating a head once (see _scan_head)."""

    __slots__ = ("complete",)

    def __init__(self) -> None:
        self.complete = False

    def on_headers_complete(self) -> None:
        self.complete = True


def _scan_head(head: bytes) -> tuple[int, int, int, int] | None:
    """See _HEADS. ``head`` ends with the blank line. The head must be valid for llhttp (the same
    parser the rebuilding path uses): a head it rejects is left to that path, which answers 502."""
    if not head.startswith(b"HTTP/1.1 ") or not 50 <= head[9] <= 53 or head[12] != 32 or head[13] == 13:
        return None  # 1xx; no reason phrase (the rebuilding path writes the standard one)
    try:
        status = int(head[9:12])
    except ValueError:
        return None
    if status == 204 or status == 304:
        return None
    lower = head[:-2].lower()
    cut = cut_end = -1
    m = _HOP_LINE.search(lower)
    if m is not None:
        cut = m.start()
        cut_end = lower.find(b"\r\n", cut + 2)
        if (not lower.startswith(_CONN_LINE, cut) or lower[cut + 13:cut_end].strip() != b"keep-alive"
                or _HOP_LINE.search(lower, cut_end) is not None):
            return None
    pos = lower.find(_CL_LINE)
    if pos < 0:
        return None
    eol = lower.find(b"\r\n", pos + 17)
    value = lower[pos + 17:eol].strip()
    if not value.isdigit() or lower.find(_CL_LINE, eol) >= 0:
        return None
    check = _HeadCheck()
    try:
        httptools.HttpResponseParser(check).feed_data(head)
    except (HttpParserError, HttpParserUpgrade):
        return None
    if not check.complete:
        return None
    return status, int(value), cut, cut_end


class _Reject(Exception):
    """Raised from a parser callback: answer ``status`` and close the connection."""

    def __init__(self, status: int, why: str = "") -> None:
        super().__init__(status, why)
        self.status = status
        self.why = why


# --------------------------------------------------------------------------- one request


class Exchange:
    """One request/response on a client connection.

    No ``__slots__``: the defaults live on the class, so creating one per request sets only the
    few attributes that differ (cheaper than initialising ~40 slots)."""

    url = b""
    cl_left = -1  # Content-Length body bytes not yet received
    method = b""
    mstr = ""
    mlabel = ""  # metrics and span label when the method is not one of llhttp's ("_OTHER")
    v10 = False
    keep_alive = True
    upgrade: bytes | None = None
    chunked = False
    is_head = False
    expect = False
    req_done = False
    route: Route | None = None
    service = UNROUTED
    local = 0  # status the proxy answers itself (0: forward)
    local_headers = b""
    close_after = False
    wire_bytes = 0
    replayable = True
    line = b""  # request line, when the Host header depends on the server chosen per attempt
    rest = b""  # the head after the Host line, in that case
    conn: UpstreamProtocol | None = None
    server: Server | None = None
    tried: tuple = ()
    retries_left = 0
    retries = 0
    stale_retry = False
    resp_started = False
    status = 0
    timer: asyncio.TimerHandle | None = None
    connecting: asyncio.Task | None = None
    span = None
    host = b""
    responded = False
    discard = False
    headers: list[tuple[bytes, bytes]] | tuple = ()  # as parsed: on_message_begin gives it a list
    nhead = 0  # chunked request: the number of ``headers`` in the head (those after are trailers)
    resp_edits = None  # the route's response_headers edits (a routing.HeaderEdits): the head is rebuilt
    due = 0.0  # loop time its rate-limit token is due, if it waits for one (see run_checks); 0: none
    declined = False  # an Upgrade request with a body forwarded as a plain one (see _decline_upgrade)

    def __init__(self, start: float) -> None:
        self.start = start
        self.wire: list[bytes] | None = []  # request bytes kept until attached, and for replay


# --------------------------------------------------------------------------- client side


# Requests a reset pooled connection may be sent again without the retry middleware, as Go's
# transport decides: a safe method (RFC 9110 §9.2.1), or any request carrying an idempotency key.
_REPLAY_METHODS = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE"))
_IDEMPOTENCY_KEYS = frozenset((b"idempotency-key", b"x-idempotency-key"))


_HOST_LINE = re.compile(rb"\r\n[Hh][Oo][Ss][Tt][ \t]*:[ \t]*([^\r\n]*)")


def _refusal(partial: Exchange | None, method: bytes = b"", head: bytes = b"") -> Exchange:
    """The exchange of a request refused as bad input (400, 408, 431), from what was read of it:
    its start, method, target and Host (once llhttp handed it over: when the next header began) go
    to the access log and its duration to the histogram (a 408 took the header timeout, not 0 ms).
    ``method``: the parser's, for a head cut short (the exchange has it only once complete).
    ``head``: the bytes of a head refused before the parser saw any of it (431 on an oversized first
    read), whose request line and Host are read from it. Until a head is complete its method is not
    counted in metrics (``-``): it was never a request."""
    if partial is None:
        ex = Exchange(perf_counter())
        ex.keep_alive = False
        end = head.find(b"\r\n", 0, MAX_METHOD_BYTES + 8192)
        line = head[:end].split(b" ") if end > 0 else ()
        if len(line) == 3 and _TOKEN.fullmatch(line[0]) is not None:
            ex.mstr, ex.mlabel, ex.url = line[0].decode("latin-1"), "-", line[1]
            host = _HOST_LINE.search(head)
            if host is not None:
                ex.host = host.group(1).strip(b" \t")
        return ex
    ex = Exchange(partial.start)
    ex.v10, ex.keep_alive = partial.v10, False
    ex.url, ex.host, ex.mstr, ex.mlabel = partial.url, partial.host, partial.mstr, partial.mlabel
    if not ex.mstr and method:
        ex.mstr, ex.mlabel = method.decode("latin-1"), "-"
    if not ex.host:
        ex.host = next((v for n, v in partial.headers if n.lower() == b"host"), b"")
    return ex


def _replayable_request(ex: Exchange) -> bool:
    return ex.method in _REPLAY_METHODS or any(n.lower() in _IDEMPOTENCY_KEYS for n, _ in ex.headers[:ex.nhead or None])


class ClientProtocol(asyncio.Protocol):
    """One client connection: parses requests, answers them in order (pipelining), keeps alive."""

    __slots__ = ("holder", "ep", "options", "metrics", "loop", "transport", "peer", "peer_b", "parser", "cur",
                 "active", "pending", "out", "dirty", "rpause", "wpaused", "closing", "broken", "tunnel",
                 "deadline", "timer", "period", "in_head", "head_seen", "acl", "acl_plane", "hosts", "raw_up",
                 "registered", "bypass", "response_timeout", "fresh_conn", "alt_method", "fwd_tails", "rate_delay",
                 "in_done", "done_next", "held", "recycle_first", "stopped", "ep_seen")

    def __init__(self, holder: Any, entry_point: str, options: HTTPOptions, metrics: ProxyMetrics) -> None:
        self.holder = holder
        self.ep = entry_point
        self.ep_seen = options.connections.ep_generation  # the entry-point changes ``ep`` reflects
        self.options = options
        self.metrics = metrics
        self.loop = asyncio.get_event_loop()
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self.peer_b = b""
        self.fwd_tails: dict[bytes | None, bytes] = {}  # Host → X-Real-Ip, -Forwarded-Port, -Server lines
        self.rate_delay = 0.0  # set by run_checks: the request waits this long for its rate-limit token
        self.parser = httptools.HttpRequestParser(self)
        self.cur: Exchange | None = None  # being parsed
        self.active: Exchange | None = None  # being answered
        self.pending: list[Exchange] = []  # parsed, waiting for their turn (pipelining)
        self.out: list[bytes] = []  # corked client output
        self.dirty: UpstreamProtocol | None = None  # upstream with corked output
        self.rpause = 0
        self.wpaused = False
        self.closing = False
        self.broken = False  # input rejected: ignore anything further
        self.tunnel: UpstreamProtocol | None = None
        self.raw_up = False  # after an Upgrade request: client bytes go upstream unparsed
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.period = max(0.05, min(options.header_timeout, options.idle_timeout, options.body_timeout,
                                    options.tunnel_idle_timeout or options.idle_timeout))
        self.in_head = True
        self.head_seen = 0
        self.acl: dict = {}
        self.acl_plane = None
        self.hosts: dict[bytes, str] = {}
        self.registered = False
        self.bypass = 0  # bytes of the current request body passed on without the parser
        self.response_timeout = options.response_timeout  # read per request: kept at hand
        self.fresh_conn = True  # nothing read yet: the HTTP/2 preface is possible
        self.recycle_first = False  # recycled before its first read: each request says close and ends it
        self.alt_method: bytes | None = None  # the real method of a head fed to llhttp respelt (see _respell)
        self.in_done = False  # _done is on the stack (see there)
        self.held: list[bytes] = []  # bytes after an Upgrade request, until the server switches (101)
        self.done_next: Exchange | None = None
        self.stopped: Exchange | None = None  # the Upgrade request llhttp stops after (see _upgraded)

    # ------------------------------------------------------------------ connection events

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        conns = self.options.connections
        if len(conns.conns) >= self.options.max_connections or conns.draining:
            transport.abort()
            self.closing = True
            self.metrics.refused_connection("http", "draining" if conns.draining else "max_connections")
            return
        conns.conns.add(self)
        self.registered = True
        if self.ep_seen != conns.ep_generation:
            conns.catch_up(self, self.ep_seen)  # a config renamed or removed our entry point since the accept
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)
        self.metrics.connection_opened("http")
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        if self.peer.startswith("::ffff:") and "." in self.peer:
            self.peer = self.peer[7:]  # dual-stack listener: report the IPv4 address
        self.peer_b = self.peer.encode()
        now = self.loop.time()
        self.deadline = now + self.options.header_timeout
        self.timer = self.loop.call_at(now + self.period, self._tick, now + self.period)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.registered:
            self.registered = False
            self.options.connections.conns.discard(self)
            self.metrics.connection_closed("http")
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.client = None
            tunnel.close()
        for ex in [self.active, *self.pending]:
            if ex is not None and not ex.responded:
                self._abandon(ex)
        self.active = None
        self.pending = []

    def _abandon(self, ex: Exchange) -> None:
        """The client went away before the response was complete."""
        ex.responded = True
        if ex.timer is not None:
            ex.timer.cancel()
        if ex.connecting is not None:
            ex.connecting.cancel()
        conn = ex.conn
        if conn is not None:
            ex.conn = None
            conn.client = None
            conn.ex = None
            conn.abort()
        if ex.route is not None or ex.local:
            self._account(ex, ex.status or 499)

    def pause_writing(self) -> None:
        self.wpaused = True
        conn = self.tunnel or (self.active.conn if self.active is not None else None)
        if conn is not None and conn.transport is not None and not conn.rpaused:
            conn.rpaused = True
            conn.transport.pause_reading()

    def resume_writing(self) -> None:
        self.wpaused = False
        conn = self.tunnel or (self.active.conn if self.active is not None else None)
        if conn is not None and conn.rpaused and conn.transport is not None:
            conn.rpaused = False
            conn.transport.resume_reading()
        self.resume_for(P_WRITE)

    def pause_for(self, bit: int) -> None:
        if not self.rpause and self.transport is not None and not self.closing:
            self.transport.pause_reading()
        self.rpause |= bit

    def resume_for(self, bit: int) -> None:
        if self.rpause & bit:
            self.rpause &= ~bit
            if not self.rpause and self.transport is not None and not self.closing and not self.broken:
                self.transport.resume_reading()
                if self.cur is not None and not self.in_head and self.deadline is not None and not self.raw_up:
                    # The wait was ours: the client's body_timeout starts again now. (A tick only
                    # pushes the deadline on when it finds it passed; resumed just before that,
                    # the timer, due before the next poll, would give 408 to bytes already here.)
                    self.deadline = self.loop.time() + self.options.body_timeout

    def is_idle(self) -> bool:
        return self.active is None and self.cur is None and not self.pending and self.tunnel is None

    def recycle(self) -> bool:
        """See ConnectionSet.recycle: close now if idle, else after the last request already read
        (pipelined ones before it are answered first); False for a tunnel, left alone. A
        connection accepted but not read from yet is no idle keep-alive connection: its client is
        sending its first request, which a close now would reset (clients retry that on a reused connection, not on a fresh one). That request is
        answered with ``Connection: close`` instead (``recycle_first``, read by
        ``on_message_begin``); a connection that sends nothing for ``FRESH_RECYCLE_SECONDS`` is
        closed."""
        if self.tunnel is not None or self.closing:
            return False
        if self.is_idle():
            if self.fresh_conn and self.loop is not None:
                # its first request (any request from now on) says Connection: close and ends it
                self.recycle_first = True
                self.loop.call_later(FRESH_RECYCLE_SECONDS, self._recycle_fresh)  # if nothing comes
            else:
                self.close()
            return True
        # Connection: close on the last request received (its head, if not gone yet), and the
        # connection ends after its response: the ones before it, pipelined, are answered first
        last = self.cur or (self.pending[-1] if self.pending else self.active)
        if last is not None:
            last.close_after = True
        return True

    def _recycle_fresh(self) -> None:
        if self.fresh_conn and not self.closing:
            self.close()  # nothing came: closed as an idle one

    def close(self) -> None:
        if self.transport is not None and not self.closing:
            self.closing = True
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.closing = True
            self.transport.abort()

    def flush(self) -> None:
        """End of a callback: write the corked output of the client and of the upstream touched."""
        up = self.dirty
        if up is not None:
            self.dirty = None
            up.flush()
        out = self.out
        t = self.transport
        if out:
            if t is not None and not t.is_closing():
                if len(out) == 1:
                    t.write(out[0])
                else:
                    t.writelines(out)
            out.clear()
        if self.closing and t is not None and not t.is_closing():
            t.close()  # after the last write: close() flushes the transport's buffer first

    # ------------------------------------------------------------------ timers

    def _tick(self, due: float) -> None:
        """``due``: see lightmesh.proxy.timers."""
        self.timer = None
        if self.closing:
            return
        now = self.loop.time()
        deadline = self.deadline
        if deadline is not None and now >= deadline:
            later = put_off_if_late(self.loop, due, self._tick)  # bytes that came meanwhile are read first
            if later is not None:
                self.timer = later
                return
            if self.tunnel is not None:
                self.close()  # tunnel_idle_timeout: nothing moved either way (connection_lost closes the upstream)
                return
            if self.active is None:
                if self.cur is not None or self.head_seen:
                    self._reply_and_close(408)
                    self.flush()
                else:
                    self.close()  # idle keep-alive connection
                return
            cur = self.cur
            if cur is not None and not self.in_head:
                if self.rpause:
                    # We stopped reading (the server or the client's own reading is behind): the
                    # wait is not the client's. (A client waiting for 100 Continue is not exempt:
                    # with a server that waits for the body, neither would ever give up.)
                    self.deadline = deadline = now + self.options.body_timeout
                else:
                    self._body_timed_out()
                    return
            else:
                self.deadline = deadline = None
        nxt = now + self.period
        if deadline is not None and deadline < nxt:
            nxt = deadline
        self.timer = self.loop.call_at(nxt, self._tick, nxt)

    # ------------------------------------------------------------------ input

    def _body_timed_out(self) -> None:
        """No byte of the request body being received for ``body_timeout``: 408 and close (the
        upstream sees a truncated request), or cut the connection if the response already began."""
        self.deadline = None
        self._input_error(408)
        self.flush()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.transport.write(data)
            if self.deadline is not None:
                self.tunnel_activity()
            return
        if self.broken or self.closing:
            return
        if self.raw_up:
            self.held.append(data)  # a read already under way when reading paused (see _upgraded)
            return
        if self.bypass:
            data = self._bypassed(data)
            if not data or self.broken:  # (broken: the body ended a request that closes the connection)
                self._end_of_read()
                return
        if self.in_head:
            if self.fresh_conn:
                self.fresh_conn = False
                if data[:1] == b"P" and looks_like_h2(data):
                    self._to_h2(data)
                    return
            seen = self.head_seen + len(data)
            limit = self.options.max_header_bytes
            if seen > limit:
                end = data.find(b"\r\n\r\n")
                if end < 0 or self.head_seen + end + 4 > limit:
                    self._input_error(431, data[:limit] if self.head_seen == 0 else b"")
                    self.flush()
                    return
            self.head_seen = seen
        elif self.cur is not None and self.cur.chunked:
            # Bytes of a chunked body that yield no body data (trailer fields, chunk extensions):
            # counted like a head and bounded by the same limit (on_body resets the count).
            self.head_seen += len(data)
        respelt = None
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            respelt = self._upgraded(data, exc.args[0])  # bytes to parse again, for a declined upgrade
        except HttpParserCallbackError as exc:
            ctx = exc.__context__
            if isinstance(ctx, _Reject):
                self._input_error(ctx.status)
            else:
                _log.error("HTTP proxy bug while parsing a request", exc_info=ctx or exc)
                self._input_error(500)
        except HttpParserInvalidMethodError:
            respelt = self._respell(data)
            if respelt is None:
                self._input_error(400)
        except HttpParserError:
            if not self.broken:  # (broken: a request said close; llhttp refuses the bytes behind it,
                self._input_error(400)  # which are only not read, RFC 9112 §9.6: no 400 for them)
        else:
            ex = self.cur
            if ex is not None and ex.cl_left > BYPASS_MIN:
                # A large Content-Length body continues past this read: its bytes go upstream as
                # received (no parser, no copy); a new parser takes the next request.
                self.bypass = ex.cl_left
                self.parser = httptools.HttpRequestParser(self)
        if respelt is not None:
            # parsed again outside the except block: an error in it must not chain to this one
            self.data_received(respelt)
            return
        self._end_of_read()

    def _respell(self, data: bytes) -> bytes | None:
        """llhttp knows a fixed list of methods; HTTP allows any token (Traefik and Go forward them).
        A request whose token method llhttp refused is parsed again with ``GET`` in its place, and
        the real method goes upstream and into routing. The framing rules do not depend on the
        method of a request, so llhttp still decides where the message ends. Only a head that
        began in this read qualifies (its bytes are all here); anything else stays a 400."""
        ex = self.cur
        if (ex is None or self.head_seen != len(data) or ex.url or ex.headers or not self.in_head
                or self.alt_method is not None):
            return None
        end = data.find(b" ", 0, MAX_METHOD_BYTES + 1)
        if end <= 0 or _TOKEN.fullmatch(data, 0, end) is None:
            return None  # not a token: malformed
        self.alt_method = data[:end]
        self.parser = httptools.HttpRequestParser(self)
        self.cur = None
        self.head_seen = 0
        return b"GET" + data[end:]

    def _to_h2(self, data: bytes) -> None:
        """The client opened with the HTTP/2 preface: an HTTP/2 protocol takes the connection over."""
        transport = self.transport
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.registered:
            self.registered = False  # the HTTP/2 side counts the connection from here on
            self.options.connections.conns.discard(self)
        self.closing = True
        self.transport = None
        down = H2Downstream(self)
        down.start(transport, data)
        if self.recycle_first:
            # recycled before its first read (see recycle): the HTTP/2 side drains once its first
            # streams are under way (a client may send the preface and its first HEADERS apart)
            self.loop.call_later(FRESH_RECYCLE_SECONDS, down.recycle)

    def _bypassed(self, data: bytes) -> bytes:
        """Body bytes of the current Content-Length request; returns what follows the body."""
        n = len(data)
        left = self.bypass
        ex = self.cur
        if n <= left:
            self._body_piece(ex, data)
            rest = b""
        else:
            self._body_piece(ex, data[:left])
            rest = data[left:]
        left = left - n if n < left else 0
        self.bypass = ex.cl_left = left
        if not left:
            self.on_message_complete()
        return rest

    def _end_of_read(self) -> None:
        cur = self.cur
        if cur is not None and not self.in_head and not self.raw_up:
            # a request body is on its way: the next piece is due within body_timeout
            self.deadline = self.loop.time() + self.options.body_timeout
            # (head_seen also holds the CRLF after the last chunk's data and the "0" CRLF line:
            # on_message_complete measures the trailer section exactly)
            if cur.chunked and not self.broken and (len(cur.headers) - cur.nhead > MAX_TRAILER_FIELDS
                                                    or self.head_seen > self.options.max_header_bytes + 5):
                self._input_error(431)
        ex = self.active
        if ex is not None and ex.discard and not ex.req_done:
            # Answered locally while the request body is still coming: do not wait for it.
            ex.discard = False
            ex.close_after = True
            self._write_local(ex)
            self._finish_early(ex)
        self.flush()

    def eof_received(self) -> bool | None:
        # EOF from the client ends the connection, requests in flight included (their upstream
        # connections are cut; counted as 499), as nginx does: a half-close is far more often a
        # client that went away than one still waiting for an answer.
        return None

    # httptools callbacks (request) -------------------------------------------

    def on_message_begin(self) -> None:
        # Durations use perf_counter: uvloop's loop.time() has millisecond resolution and is
        # cached per loop iteration. Deadlines stay on the loop clock (they drive call_at).
        self.cur = ex = Exchange(perf_counter())
        ex.headers = []
        if self.recycle_first:  # recycled before its first request (see recycle): answered, then closed
            ex.close_after = True
        if self.active is None:
            self.deadline = self.loop.time() + self.options.header_timeout

    def on_url(self, url: bytes) -> None:
        self.cur.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.cur.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.cur
        self.in_head = False
        self.deadline = None
        if self.head_seen > self.options.max_header_bytes >> 1:
            # Only a read this large can hold a head over the limit: measure it exactly.
            size = len(ex.url) + sum(len(n) + len(v) + 4 for n, v in ex.headers)
            if size > self.options.max_header_bytes:
                raise _Reject(431)
        parser = self.parser
        version = parser.get_http_version()
        if version == "1.0":
            ex.v10 = True
        elif version != "1.1":
            raise _Reject(400 if version < "1.0" else 505)  # HTTP/0.9 request lines are malformed here
        method = parser.get_method()
        if self.alt_method is None:
            mstr = _METHODS.get(method)
            if mstr is None:
                mstr = method.decode("latin-1")
                if len(_METHODS) < 64:
                    _METHODS[method] = mstr
        else:  # a method llhttp does not know (see _respell): routed by name, counted as _OTHER
            method, self.alt_method = self.alt_method, None
            mstr = method.decode("latin-1")
            ex.mlabel = "_OTHER"
        if method == b"CONNECT":
            raise _Reject(405)
        ex.method = method
        ex.mstr = mstr
        ex.is_head = method == b"HEAD"
        ex.keep_alive = parser.should_keep_alive()
        host = conn_hdr = te = xff = upgrade = tp = xfp = None
        xfh = xri = xfport = xfs = False
        # The forwarded head is built while classifying: [request line (4 pieces), Host line,
        # then name, ": ", value, CRLF per kept header, then what the proxy adds].
        parts = [method, b" ", ex.url, b" HTTP/1.1\r\n", b""]
        for name, value in ex.headers:
            code = _NAME_CACHE.get(name)
            if code is None:
                code = _classify(name)
            if code == H_OTHER:
                parts += (name, b": ", value, _CRLF)
            elif code == H_HOST:
                if host is not None:
                    raise _Reject(400, "several Host headers")
                host = value
            elif code == H_CL:
                parts += (name, b": ", value, _CRLF)
                ex.cl_left = int(value)
                if ex.cl_left > self.options.max_replay_bytes:
                    ex.replayable = False  # too big to keep for a retry: decided up front
            elif code == H_CONNECTION:
                conn_hdr = value if conn_hdr is None else conn_hdr + b"," + value
            elif code == H_TE:
                te = value if te is None else te + b"," + value
            elif code == H_XFF:
                xff = value if xff is None else xff + b", " + value
            elif code == H_XFP:
                xfp = value or True  # its value (for X-Forwarded-Port), or True when empty
                parts += (name, b": ", value, _CRLF)
            elif code == H_XFH:
                xfh = True
                parts += (name, b": ", value, _CRLF)
            elif code == H_XRI:
                xri = True
                parts += (name, b": ", value, _CRLF)
            elif code == H_XFPORT:
                xfport = True
                parts += (name, b": ", value, _CRLF)
            # H_XFSERVER: dropped, the proxy sets its own
            elif code == H_UPGRADE:
                upgrade = value if upgrade is None else upgrade + b", " + value
            elif code == H_TRACEPARENT:
                tp = value if tp is None else b""  # two are invalid (W3C): a new trace starts
                parts += (name, b": ", value, _CRLF)
            elif code == H_EXPECT:
                ex.expect = True
                parts += (name, b": ", value, _CRLF)
            # H_HOP: dropped
        if te is not None:
            # llhttp accepts codings before a final chunked and TE in HTTP/1.0; we re-frame, so
            # only a lone "chunked" can be forwarded faithfully (RFC 9112 §6.1: 1.0 + TE is faulty).
            if ex.v10 or te.strip().lower() != b"chunked":
                raise _Reject(400, "unsupported Transfer-Encoding")
            ex.chunked = True
            ex.nhead = len(ex.headers)  # on_header calls after this are trailer fields
            for name, value in ex.headers:
                if name.lower() == b"trailer":  # announces trailer fields, which are forwarded
                    parts += (name, b": ", value, _CRLF)
        if conn_hdr is not None:
            extra, names_upgrade = _connection(conn_hdr)
            if extra:  # headers named by Connection are hop-by-hop too
                parts = _drop_fields(parts, 5, extra)
            if upgrade is not None and names_upgrade and not ex.chunked and ex.cl_left <= 0:
                ex.upgrade = _without_h2c(upgrade)  # (None: declined, see _decline_upgrade)
        if upgrade is not None:
            if not parser.should_upgrade():
                ex.upgrade = None  # llhttp reads on: no tunnel, the server is not asked to switch
            elif ex.upgrade is None:
                # llhttp stops after this head, but it is forwarded as a plain request: one with a
                # body, h2c, or Proxy-Connection: Upgrade (which llhttp reads as Connection)
                self._decline_upgrade(ex)
            else:
                self.stopped = ex  # a tunnel, if the server switches (see _upgraded)
        url = ex.url
        if url[:1] != b"/" and url != b"*":
            # absolute-form (RFC 9112 §3.2.2): the authority replaces Host; forward origin-form.
            lower = url[:8].lower()
            if lower.startswith(b"http://"):
                rest = url[7:]
            elif lower.startswith(b"https://"):
                rest = url[8:]
            else:
                raise _Reject(400, "bad request target")
            slash = rest.find(b"/")
            host = rest if slash < 0 else rest[:slash]
            ex.url = parts[2] = url = b"/" if slash < 0 else rest[slash:]
            if not host:
                raise _Reject(400, "empty authority")
        if host is None:
            if not ex.v10:
                raise _Reject(400, "missing Host")
            hstr = ""
        else:
            hstr = self.hosts.get(host)
            if hstr is None:
                if not valid_host(host):
                    raise _Reject(400, "bad Host")  # routed on one name, read by the server as another
                if host[-1:] in (b" ", b"\t"):
                    # (rare) trailing whitespace is not part of the value: X-Forwarded-Host and -Port
                    # read it too; not cached, so this branch strips it every time
                    host = host.rstrip(b" \t")
                    hstr = split_host(host)
                else:
                    hstr = split_host(host)
                    if len(self.hosts) < 16:
                        self.hosts[host] = hstr
            ex.host = host
        # ---- routing and middlewares
        plane = self.holder.http
        table = plane.entry_points.get(self.ep) if plane is not None else None
        try:
            route = table.lookup(hstr, mstr, url, ex.headers) if table is not None else None
            if route is not None and route.fall_through:
                route = admitted_route(self, table, route, plane, hstr, mstr, url, ex.headers)
        except FragmentInTarget:
            raise _Reject(400, "fragment in the request target") from None
        if route is None:
            self._local(ex, 404)
            if self.options.tracer is not None:
                self.options.tracer.refused(tp, "", UNROUTED, mstr, hstr, url, 404)
            return
        ex.route = route
        service = route.service
        ex.service = svc = service.name
        if route.checks:
            if not self._checks(ex, route.checks, plane, svc):
                if self.options.tracer is not None:
                    self.options.tracer.refused(tp, route.name, svc, mstr, hstr, url, ex.status)
                return
            if self.rate_delay:  # its rate-limit token is due then (see _forward_later)
                ex.due, self.rate_delay = self.loop.time() + self.rate_delay, 0.0
        if not service.servers:
            self._local(ex, 503)
            if self.options.tracer is not None:
                self.options.tracer.refused(tp, route.name, svc, mstr, hstr, url, 503)
            return
        if route.edits is not None:  # request_headers / response_headers middlewares
            edits, ex.resp_edits = route.edits
            if edits is not None:
                if edits.drop:
                    parts = _drop_fields(parts, 5, edits.drop)
                    if b"x-forwarded-for" in edits.drop:
                        xff = None  # set or removed: the client's list goes (the peer is still appended)
                for name, value in edits.fields:
                    if name.lower() == b"x-forwarded-for":
                        xff = value if xff is None else xff + b", " + value
                    else:
                        parts += (name, b": ", value, _CRLF)
                decided = edits.decided
                if decided:  # forwarded headers the edits set or removed: none of ours
                    xfp = xfp or (b"x-forwarded-proto" in decided)
                    xfh = xfh or b"x-forwarded-host" in decided
                    xri = xri or b"x-real-ip" in decided
                    xfport = xfport or b"x-forwarded-port" in decided
                    xfs = b"x-forwarded-server" in decided
        # ---- the upstream request head
        tracer = self.options.tracer
        if tracer is not None:
            qpos = url.find(b"?")
            try:
                ex.span = span = tracer.start(tp, route.name, svc, mstr, hstr, url if qpos < 0 else url[:qpos])
            except Exception:  # tracing is an add-on: never the reason a request fails
                _log.exception("starting a trace span failed")
            else:
                if tp is not None:
                    parts = _drop_fields(parts, 5, (b"traceparent",))
                if not span.continued:  # a new trace: the request's tracestate was of no trace we continue
                    parts = _drop_fields(parts, 5, (b"tracestate",))
                parts += (b"traceparent: ", span.traceparent, _CRLF)
        if xff is None or not xff.strip(b" \t,"):  # an empty one is no list to append to
            parts += (b"X-Forwarded-For: ", self.peer_b, _CRLF)
        else:
            parts += (b"X-Forwarded-For: ", xff, b", ", self.peer_b, _CRLF)
        if not xfp:
            parts.append(b"X-Forwarded-Proto: http\r\n")
        if not xfh and host is not None:
            parts += (b"X-Forwarded-Host: ", host, _CRLF)
        # X-Real-Ip and X-Forwarded-Port unless the client pod sent them, X-Forwarded-Server unless
        # an edit decided it (Traefik's forwarded headers, which Traefik Mesh's entry points added):
        # in the common case one piece, made once per Host on a connection
        if xri or xfport or xfs or xfp:
            if not xri:
                parts += (b"X-Real-Ip: ", self.peer_b, _CRLF)
            if not xfport:
                parts += (b"X-Forwarded-Port: ", forwarded_port(host, xfp if xfp is not True else None), _CRLF)
            if not xfs:
                parts += (b"X-Forwarded-Server: ", self.options.server_name, _CRLF)
        else:
            tail = self.fwd_tails.get(host)
            if tail is None:
                tail = b"".join((b"X-Real-Ip: ", self.peer_b, b"\r\nX-Forwarded-Port: ", forwarded_port(host),
                                 b"\r\nX-Forwarded-Server: ", self.options.server_name, _CRLF))
                if len(self.fwd_tails) < 16:
                    self.fwd_tails[host] = tail
            parts.append(tail)
        if ex.chunked:
            parts.append(b"Transfer-Encoding: chunked\r\n")
        if ex.upgrade is not None:
            parts += (b"Connection: Upgrade\r\nUpgrade: ", ex.upgrade, _CRLF)
        parts.append(_CRLF)
        if host is not None and service.pass_host_header:
            parts[4] = b"Host: " + host + _CRLF
            wire = b"".join(parts)
        else:
            ex.line = b"".join(parts[:4])
            ex.rest = b"".join(parts[5:])
            wire = b""  # replaced per attempt with the chosen server's head
        ex.wire.append(wire)
        ex.retries_left = route.retries
        if self.active is None:
            self.active = ex
            if ex.due:
                self._forward_later(ex)
            else:
                self._forward(ex)
        else:
            self.pending.append(ex)
            self.pause_for(P_PIPELINE)

    def _checks(self, ex: Exchange, checks: tuple, plane: Any, svc: str) -> bool:
        """The router's pre-forwarding middlewares (``checks``) in order; False when one answered."""
        refused = run_checks(self, checks, plane, svc)
        if refused is None:
            return True
        self.rate_delay = 0.0  # a rate limit passed before the check that refused: nobody waits
        self._local(ex, refused[0], refused[1])
        return False

    def on_body(self, body: bytes) -> None:
        ex = self.cur
        if ex.chunked:
            self.head_seen = 0  # data arrived: the bytes without any (see data_received) start again
            size = b"%x\r\n" % len(body)
            ex.wire_bytes -= len(size) + 2  # the replay bound (1 MiB) counts body bytes, not chunk framing
            self._body_pieces(ex, (size, body, _CRLF))
        else:
            ex.cl_left -= len(body)
            self._body_piece(ex, body)

    def on_message_complete(self) -> None:
        ex = self.cur
        if ex.chunked and len(ex.headers) > ex.nhead:
            if len(ex.headers) - ex.nhead > MAX_TRAILER_FIELDS:
                raise _Reject(431, "too many trailer fields")
            # "name: value" CRLF per field, and the blank line that ends the section
            if sum(len(n) + len(v) + 4 for n, v in ex.headers[ex.nhead:]) + 2 > self.options.max_header_bytes:
                raise _Reject(431, "trailer fields too large")  # (data_received bounds the slow ones)
        self.cur = None
        self.in_head = True
        self.head_seen = 0
        if ex.chunked and ex.local == 0 and not ex.declined:
            last = _last_chunk(ex.headers, ex.nhead)
            ex.wire_bytes -= len(last)  # framing and trailer fields (bounded above), not body bytes
            self._body_piece(ex, last)
        ex.req_done = True
        if ex.discard:
            ex.discard = False
            self._write_local(ex)
            self._done(ex)
        elif ex.responded:
            self._done(ex)
        else:
            if not ex.keep_alive and ex.upgrade is None:
                # No further requests on this connection: stop reading (pipelined bytes are ignored).
                # (After an Upgrade request the bytes wait for the server's answer: see _upgraded.)
                self.broken = True
            if self.response_timeout and ex.timer is None and ex is self.active and not ex.local and not ex.due:
                self._arm_response_timer(ex)  # (one waiting for its rate-limit token gets it when forwarded)

    # ------------------------------------------------------------------ request body

    def _body_piece(self, ex: Exchange | None, piece: bytes) -> None:
        if ex is None or ex.local:
            return
        conn = ex.conn
        n = len(piece)
        if conn is not None:
            conn.out.append(piece)
            if self.dirty is not conn:
                if self.dirty is not None:
                    self.dirty.flush()
                self.dirty = conn
            if ex.wire is None:
                return
        wire = ex.wire
        if wire is None:
            return
        wire.append(piece)
        ex.wire_bytes += n
        if ex.wire_bytes > self.options.max_replay_bytes or not ex.replayable:
            if conn is not None:
                ex.wire = None  # everything is upstream already; too big to keep for a retry
                ex.replayable = False
            else:
                self.pause_for(P_CONNECT)  # waiting for a connection: bound what we hold

    def _body_pieces(self, ex: Exchange, pieces: tuple) -> None:
        if ex is None or ex.local:
            return
        for piece in pieces:
            self._body_piece(ex, piece)

    # ------------------------------------------------------------------ answering

    def _local(self, ex: Exchange, status: int, headers: bytes = b"") -> None:
        ex.local = status
        ex.local_headers = headers
        ex.status = status
        ex.wire = None
        if self.active is None:
            self.active = ex
            self._respond_local(ex)
        elif ex is not self.active:
            self.pending.append(ex)
            self.pause_for(P_PIPELINE)
        else:
            self._respond_local(ex)

    def _respond_local(self, ex: Exchange) -> None:
        """Answer ``ex`` with its ``status``. When the request body is still being parsed, the answer
        waits for its end within the current read (keep-alive preserved); if the body is not
        complete at the end of the read, the answer goes out with ``Connection: close``."""
        ex.responded = True
        ex.resp_started = True
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        if not ex.req_done and not ex.close_after:
            if ex.expect:
                ex.close_after = True  # the client may never send the body it announced
            else:
                ex.discard = True  # see on_message_complete and the end of data_received
                return
        self._write_local(ex)
        if ex.req_done:
            self._done(ex)
        else:
            self._finish_early(ex)

    def _write_local(self, ex: Exchange) -> None:
        status = ex.status
        body = b"%d %s\n" % (status, _REASONS.get(status, b"Error"))
        # After an Upgrade request the parser stops: the bytes behind it are the new protocol, never
        # another request, so a local answer to it ends the connection.
        close = (ex.close_after or not ex.keep_alive or self.options.connections.draining
                 or ex.upgrade is not None)
        if close:
            ex.close_after = True
        conn_line = b"Connection: close\r\n" if close else (b"Connection: keep-alive\r\n" if ex.v10 else b"")
        self.out.append(b"".join((_status_line(status, b""), b"Content-Type: text/plain\r\nContent-Length: %d\r\n"
                                  % len(body), ex.local_headers, conn_line, _CRLF,
                                  b"" if ex.is_head else body)))

    def _finish_early(self, ex: Exchange) -> None:
        """The response is complete but the request is not: account, then close the connection."""
        if self.active is ex:
            self.active = None
        self._account(ex, ex.status)
        self.closing = True
        self.broken = True

    def _read_method(self) -> bytes:
        """The method of the head being parsed, once llhttp has read it (its target began)."""
        cur = self.cur
        if cur is None or not cur.url or not self.in_head:
            return b""  # llhttp reports its method 0 (DELETE) until it has read one; a complete
            # head has its own (and a body passed on unparsed has a new parser)
        if self.alt_method is not None:
            return self.alt_method
        try:
            return self.parser.get_method()
        except Exception:
            return b""

    def _reply_and_close(self, status: int) -> None:
        ex = _refusal(self.cur, self._read_method())
        ex.close_after = True
        ex.req_done = True
        ex.status = status
        ex.local = status
        self.broken = True
        self.closing = True
        self.active = ex  # only called with nothing in flight
        self._respond_local(ex)

    def _input_error(self, status: int, head: bytes = b"") -> None:
        """Malformed or hostile input: answer ``status`` (after what is in flight) and close.
        ``head``: the read that began an oversized head, for the access log (see ``_refusal``)."""
        self.broken = True
        if self.transport is not None:
            self.transport.pause_reading()
        method = self._read_method()
        ex = self.cur
        self.cur = None
        if ex is not None and ex is self.active and ex.local == 0:
            # The head was accepted, the body is bad. Forwarding began: take it back if nothing
            # left this process yet, else cut the upstream connection (it sees a truncated request).
            conn = ex.conn
            if conn is not None and not ex.resp_started:
                if self.dirty is conn and conn.sent_nothing:
                    self.dirty = None
                    conn.out.clear()
                    ex.conn = None
                    conn.detach_unused()
                else:
                    ex.conn = None
                    conn.client = None
                    conn.ex = None
                    conn.abort()
            elif ex.resp_started:
                self.abort()
                return
            if ex.connecting is not None:
                ex.connecting.cancel()
                ex.connecting = None
            if ex.timer is not None:
                ex.timer.cancel()
                ex.timer = None
            ex.close_after = True
            ex.req_done = True
            self._local(ex, status)
            return
        if ex is not None and ex in self.pending:
            self.pending.remove(ex)
        if ex is not None and ex.span is not None:
            ex.span.end(status, 0, "")
            ex.span = None
        err = _refusal(ex, method, head if ex is None else b"")
        err.close_after = True
        err.req_done = True
        self._local(err, status)

    def _done(self, ex: Exchange) -> None:
        """The response to ``ex`` is complete in ``self.out``: account, then next request."""
        if self.active is not ex:
            return
        if not ex.req_done:
            return  # the rest of the request body still has to be read (or discarded)
        if self.in_done:
            self.done_next = ex  # answered at once from the loop below: it goes on with it
            return
        while True:
            self.active = None
            self._account(ex, ex.status)
            if self.wpaused:
                self.pause_for(P_WRITE)  # the client is behind reading: the next request waits for it
            if ex.close_after or self.options.connections.draining:
                self.closing = True  # flush() closes after the last write
                self.broken = True
                return
            pending = self.pending
            if not pending:
                if self.cur is None:
                    self.deadline = self.loop.time() + self.options.idle_timeout
                    if self.broken:
                        self.closing = True  # client asked for close, or sent EOF
                else:
                    # a head already started: its header timeout counts from its first byte
                    self.deadline = (self.loop.time() - (perf_counter() - self.cur.start)
                                     + self.options.header_timeout)
                return
            nxt = pending.pop(0)
            if not pending:
                self.resume_for(P_PIPELINE)
            self.active = nxt
            # The next request may be answered at once (a local answer, a 503), and its _done
            # then comes back here: this loop goes on with it. Recursing, some 500 pipelined local
            # answers overflowed the stack and were all lost.
            self.in_done = True
            try:
                if nxt.local:
                    self._respond_local(nxt)
                elif nxt.due:
                    self._forward_later(nxt)
                else:
                    self._forward(nxt)
            finally:
                self.in_done = False
            ex = self.done_next
            if ex is None:
                return
            self.done_next = None
            if self.active is not ex:
                return

    def _account(self, ex: Exchange, status: int) -> None:
        seconds = perf_counter() - ex.start
        self.metrics.request(ex.service, status, ex.mlabel or ex.mstr or "-", seconds)
        if ex.route is not None and not ex.local:
            for breaker in ex.route.breakers:
                breaker.record(status, seconds)  # the window counts 502/504 as network errors (Traefik)
        if ex.span is not None:
            span, ex.span = ex.span, None
            try:
                span.end(status, ex.retries, ex.server.url if ex.server is not None else "")
            except Exception:
                _log.exception("ending a trace span failed")
        if self.options.access_log:
            self._access_log(ex, status, seconds)

    def _access_log(self, ex: Exchange, status: int, seconds: float) -> None:
        access_log(self, ex.mstr, ex.host, ex.url, ex.route, ex.service, ex.server, status, ex.retries, seconds)

    # ------------------------------------------------------------------ forwarding

    def _forward(self, ex: Exchange, fresh: bool = False) -> None:
        """Start (or restart) the upstream attempt of the active exchange."""
        route = ex.route
        service = route.service
        balancer = service.balancer
        if fresh:
            server = ex.server
        else:
            server = balancer.pick(ex.tried) if ex.tried else balancer.pick()
            if server is None and ex.tried:
                server = balancer.pick()  # everything tried: the same server again
            if server is None:
                self._local(ex, 503)
                return
        ex.server = server
        if route.timeout is not None:
            if ex.timer is None:
                due = self.loop.time() + route.timeout
                ex.timer = self.loop.call_at(due, self._timed_out, ex, due)
        elif self.response_timeout and ex.req_done and ex.timer is None:
            self._arm_response_timer(ex)
        if not fresh and ex.replayable:  # a body too big to replay goes on a fresh connection: see below
            idle = server.idle
            while idle:
                conn = idle.pop()
                if conn.transport is None or conn.transport.is_closing():
                    continue
                if time.monotonic() - conn.idle_since > self.options.upstream_idle_timeout:
                    conn.close()
                    continue
                self._attach(ex, conn)
                return
        ex.connecting = task = self.loop.create_task(_connect(self.loop, server, self.options.connect_timeout))
        task.add_done_callback(lambda t, ex=ex, server=server: self._connected(t, ex, server))

    def _forward_later(self, ex: Exchange) -> None:
        """Forward ``ex`` once its rate-limit token is due (``ex.due``, at most 0.5 s after its head):
        the request waits, as behind Traefik's limiter, where a 429 would have been premature. Its
        timeouts (request, response) start when it is forwarded."""
        def due() -> None:
            if self.closing or self.active is not ex or ex.local or ex.responded or ex.conn is not None:
                return  # answered or gone meanwhile (a bad body, the client left)
            ex.due = 0.0
            self._forward(ex)
            self.flush()
        wait = ex.due - self.loop.time()
        if wait <= 0:  # a pipelined request whose token came while the one before was answered
            ex.due = 0.0
            self._forward(ex)
        else:
            self.loop.call_later(wait, due)

    def _arm_response_timer(self, ex: Exchange) -> None:
        """``response_timeout``: the whole request was received, the route has no request-timeout
        middleware, and the response has not begun."""
        if ex.route is not None and ex.route.timeout is None and not ex.resp_started:
            due = self.loop.time() + self.response_timeout
            ex.timer = self.loop.call_at(due, self._timed_out, ex, due)

    def _connected(self, task: asyncio.Task, ex: Exchange, server: Server) -> None:
        if ex.connecting is task:
            ex.connecting = None
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            if ex.connecting is None and self.active is ex and ex.conn is None and not ex.responded:
                reason = connect_failure_reason(exc)
                self._attempt_failed(ex, server, reason)
                self.flush()
            return
        conn = task.result()
        if self.active is not ex or ex.responded or ex.conn is not None or self.closing:
            conn.release()
            return
        if conn.closed:
            # Connected and already reset (before this callback ran): like a reset before any byte.
            self._attempt_failed(ex, server, "reset")
        else:
            self._attach(ex, conn)
        self.flush()

    def _attach(self, ex: Exchange, conn: UpstreamProtocol) -> None:
        ex.conn = conn
        conn.client = self
        conn.ex = ex
        # a new response on this connection
        conn.used += 1
        conn.fresh = True
        if conn.headers:
            conn.headers = []
        conn.reason = b""
        conn.interim = False
        conn.framing = F_NONE
        conn.remaining = -1
        conn.keep = True
        conn.head_done = False
        wire = ex.wire
        if ex.line:
            wire[0] = b"Host: ".join((ex.line, ex.server.host_header)) + _CRLF + ex.rest
        conn.out.extend(wire)
        conn.sent_nothing = True
        if self.dirty is not None and self.dirty is not conn:
            self.dirty.flush()
        self.dirty = conn
        if not ex.replayable or ex.wire_bytes > self.options.max_replay_bytes:
            ex.wire = None
            ex.replayable = False
        if self.rpause & P_CONNECT:
            self.resume_for(P_CONNECT)
        if self.wpaused:
            conn.rpaused = True
            conn.transport.pause_reading()

    def _attempt_failed(self, ex: Exchange, server: Server, reason: str, reused: bool = False) -> None:
        """An attempt failed before any response byte: retry, or answer 502."""
        service = ex.route.service
        self.metrics.upstream_error(ex.service, reason)
        if reused and reason == "reset" and not ex.stale_retry and ex.wire is not None and _replayable_request(ex):
            # A pooled connection the server had closed (the keep-alive race): one more try on a
            # fresh connection, as Go's transport does, for requests safe to send twice only. The
            # server may have read and acted on a POST before it reset the connection.
            ex.stale_retry = True
            self._forward(ex, fresh=True)
            return
        if not (reused and reason == "reset") and reason != LOCAL_LIMIT:
            # (the keep-alive race, or this process out of descriptors, says nothing of the server's health)
            service.balancer.failed(server)
        if ex.retries_left > 0 and ex.wire is not None:
            ex.retries_left -= 1
            ex.retries += 1
            self.metrics.retry(ex.service)
            ex.tried = (*ex.tried, server)
            self._forward(ex)
            return
        if reason != LOCAL_LIMIT:
            for breaker in ex.route.breakers:  # the request's outcome, after its retries: a network error
                breaker.record(None, perf_counter() - ex.start)
        ex.close_after = ex.close_after or not ex.req_done
        self._local(ex, 502)

    def _timed_out(self, ex: Exchange, due: float) -> None:
        ex.timer = None
        if ex.resp_started or ex.responded or self.closing:
            return
        later = put_off_if_late(self.loop, due, self._timed_out, ex)  # a response that came meanwhile is read first
        if later is not None:
            ex.timer = later
            return
        self.metrics.upstream_error(ex.service, "timeout")
        for breaker in ex.route.breakers:
            breaker.record(504, perf_counter() - ex.start)
        if ex.connecting is not None:
            ex.connecting.cancel()
            ex.connecting = None
        conn = ex.conn
        if conn is not None:
            ex.conn = None
            conn.client = None
            conn.ex = None
            conn.abort()
        ex.wire = None
        if not ex.req_done:
            ex.close_after = True
        if self.active is ex:
            self._respond_local_after_timeout(ex)
        self.flush()

    def _respond_local_after_timeout(self, ex: Exchange) -> None:
        ex.local = 504
        ex.status = 504
        self._respond_local(ex)

    # ------------------------------------------------------------------ upstream events

    def upstream_lost(self, conn: UpstreamProtocol, exc: Exception | None) -> None:
        ex = conn.ex
        conn.client = None
        conn.ex = None
        if conn.tunnel:
            self.tunnel = None
            self.close()
            return
        if ex is None or ex.conn is not conn:
            return
        ex.conn = None
        if not ex.resp_started:
            if not conn.fresh:
                # part of a response head (or a 1xx) arrived first: the server acted on the
                # request, so it is not sent again (a 502)
                ex.wire = None
            self._attempt_failed(ex, ex.server, "reset", reused=conn.used > 1)
        elif conn.framing == F_RAW_CLOSE and exc is None:
            conn.finish_close_delimited(self, ex)
        else:
            # Truncated response: the only way to tell the client is to cut its connection.
            self.metrics.upstream_error(ex.service, "reset")
            ex.status = ex.status or 502
            ex.responded = True
            self.active = None
            self._account(ex, ex.status)
            self.flush()
            self.abort()
            return
        self.flush()

    def _decline_upgrade(self, ex: Exchange) -> None:
        """An Upgrade request this proxy forwards as a plain request, without its Upgrade (a
        hop-by-hop field a proxy may drop; RFC 9110 §7.8 lets the server ignore it anyway):

        * one with a body: llhttp stops after the head of any Upgrade request and would leave the
          body to the new protocol; a server that ignores the Upgrade (most do) then waits for a
          body that never comes, or reads a chunked one as empty. The body goes as the request's.
        * ``h2c``: its ``HTTP2-Settings`` is hop-by-hop and dropped here, so no server could take the
          upgrade on; the client goes on in HTTP/1.1, as RFC 9113 allows (prior-knowledge HTTP/2
          is served by the listener itself).

        The parser still stops after the head: :meth:`_upgraded` parses what follows."""
        if ex.chunked or ex.cl_left > 0:
            ex.declined = True
            # the body is read by another parser (see _upgraded); the connection ends with this
            # response, as for any Upgrade request, so what may follow the body is never parsed
            ex.keep_alive = True
            ex.close_after = True
        self.stopped = ex

    def _resume_declined(self, ex: Exchange, tail: bytes) -> bytes:
        """The body of a request whose Upgrade was declined, parsed from ``tail`` on; returns the
        bytes to feed to the new parser (see data_received)."""
        self.cur = ex
        self.in_head = False
        ex.req_done = False
        ex.keep_alive = False  # stop reading once the body is in (see on_message_complete)
        if ex.timer is not None and ex.route is not None and ex.route.timeout is None:
            # the response timer, armed as if the request were complete: it starts with the body's end
            # (a request-timeout middleware's timer runs from the forwarding on, as for any request)
            ex.timer.cancel()
            ex.timer = None
        if ex.chunked:
            # a parser in the middle of a chunked message: a synthetic head, then the client's bytes
            ex.declined = False
            self.parser = parser = httptools.HttpRequestParser(_ChunkedBody(self))
            parser.feed_data(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        else:
            self.bypass = ex.cl_left  # see _bypassed
            self.parser = httptools.HttpRequestParser(self)
        return tail

    def _upgraded(self, data: bytes, offset: int) -> bytes | None:
        """The request parser stopped after an Upgrade request (``self.stopped``, which may be
        pipelined behind others): the rest is the new protocol, held until the server switches, or,
        for an Upgrade declined (see _decline_upgrade), the request's body and what follows; those
        bytes are returned, to be parsed again."""
        ex, self.stopped = self.stopped, None
        if ex is None:  # (a stop on a head not taken for an Upgrade: nothing to tunnel)
            self.broken = True
            return None
        if ex.upgrade is None:  # declined
            if self.broken:  # its answer ends the connection (Connection: close, HTTP/1.0)
                return None
            if not ex.declined:  # no body: the next request follows, its answer local or not
                self.parser = httptools.HttpRequestParser(self)
                return data[offset:] or None
            if not ex.local:
                return self._resume_declined(ex, data[offset:]) or None
            self.broken = True  # answered here: the body is not read, the answer closes the connection
            return None
        if ex.local:  # answered here: nothing to tunnel, and its answer closes the connection
            self.broken = True
            return None
        self.raw_up = True
        # Unless the server switches protocols (101 starts the tunnel), this connection ends with
        # the response. The bytes the client sends after the head wait here until then: sent on at
        # once, a server that ignores the Upgrade (any non-WebSocket endpoint) read them as its next
        # request, which no route, allow-list or deny rule here had seen.
        ex.close_after = True
        tail = data[offset:]
        if tail:
            self.held.append(tail)
        self.pause_for(P_UPGRADE)
        return None

    def start_tunnel(self, conn: UpstreamProtocol) -> None:
        self.tunnel = conn
        self.raw_up = False
        held, self.held = self.held, []
        if held and conn.transport is not None:
            conn.transport.write(b"".join(held))
        self.resume_for(P_UPGRADE)
        idle = self.options.tunnel_idle_timeout
        self.deadline = self.loop.time() + idle if idle else None

    def tunnel_activity(self) -> None:
        """Bytes moved through the tunnel: its idle timeout starts again."""
        self.deadline = self.loop.time() + self.options.tunnel_idle_timeout


def _without_h2c(upgrade: bytes) -> bytes | None:
    """An Upgrade value without ``h2c`` (see ``ClientProtocol._decline_upgrade``); None when
    nothing else is offered."""
    rest = [t.strip() for t in upgrade.split(b",") if t.strip() and t.strip().lower() != b"h2c"]
    return b", ".join(rest) or None  # (an empty value offers nothing either)


class _ChunkedBody:
    """Parser callbacks for the chunked body of a request whose Upgrade was declined (see
    ``ClientProtocol._decline_upgrade``): llhttp stopped after its head, so a new parser is started
    on a synthetic head and fed the rest; body, trailer fields and the end go to the protocol as from
    its own parser. Anything after the message is ignored (the connection ends with the response)."""

    __slots__ = ("proto", "in_body", "ended")

    def __init__(self, proto: ClientProtocol) -> None:
        self.proto = proto
        self.in_body = False
        self.ended = False

    def on_headers_complete(self) -> None:
        self.in_body = not self.ended

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.in_body:  # trailer fields (the synthetic head's are not the request's)
            self.proto.on_header(name, value)

    def on_body(self, body: bytes) -> None:
        if self.in_body:
            self.proto.on_body(body)

    def on_message_complete(self) -> None:
        if self.in_body:
            self.in_body = False
            self.ended = True
            self.proto.on_message_complete()


_UPSTREAM_TLS: ssl.SSLContext | None = None


def _upstream_tls() -> ssl.SSLContext:
    """TLS for ``https`` servers. Pods are dialled by IP and commonly serve self-signed or
    cluster-internal certificates, so the certificate is not verified: the hop is encrypted, and the
    peer's identity is the pod IP the controller took from the cluster (as for plain http)."""
    global _UPSTREAM_TLS
    if _UPSTREAM_TLS is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        _UPSTREAM_TLS = ctx
    return _UPSTREAM_TLS


async def _connect(loop: asyncio.AbstractEventLoop, server: Server, timeout: float) -> UpstreamProtocol:
    tls = _upstream_tls() if server.tls else None
    _transport, conn = await within(
        loop.create_connection(lambda: UpstreamProtocol(server), server.host, server.port, ssl=tls), timeout)
    return conn


# --------------------------------------------------------------------------- upstream side


class UpstreamProtocol(asyncio.Protocol):
    """One keep-alive connection to a server; parses responses and relays them to its client."""

    __slots__ = ("server", "transport", "parser", "client", "ex", "out", "used", "idle_since", "headers",
                 "reason", "interim", "framing", "remaining", "bypass", "keep", "tunnel", "rpaused",
                 "sent_nothing", "closed", "head_done", "wpaused", "fresh", "last_head", "last_known", "nhead",
                 "head_bytes", "read_len")

    def __init__(self, server: Server) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.client: ClientProtocol | None = None
        self.ex: Exchange | None = None
        self.out: list[bytes] = []
        self.used = 0
        self.idle_since = 0.0
        self.headers: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.interim = False
        self.framing = F_NONE
        self.remaining = -1
        self.bypass = 0
        self.keep = True
        self.tunnel = False
        self.rpaused = False
        self.sent_nothing = True
        self.closed = False
        self.head_done = False
        self.wpaused = False  # our write buffer is full: the client's reading is paused for it
        self.fresh = False  # a response is expected and none of its bytes arrived yet
        self.last_head = b"\n"  # the last head _pass_head looked up for this connection, and its entry
        self.last_known: tuple | None = None
        self.nhead = 0  # chunked response: the number of ``headers`` in the head (then trailers)
        self.head_bytes = 0  # bytes of the response head(s) read so far, when it spans reads
        self.read_len = 0  # size of the read being parsed (bounds the part of the head it holds)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(WRITE_HIGH, WRITE_LOW)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        client = self.client
        if self.wpaused:
            self.wpaused = False
            if client is not None:
                client.resume_for(P_UPSTREAM)  # a retry on another connection must be able to read
        if client is None:
            try:
                self.server.idle.remove(self)
            except ValueError:
                pass
            return
        client.upstream_lost(self, exc)

    def eof_received(self) -> bool | None:
        return None  # close; connection_lost decides what it means

    def pause_writing(self) -> None:
        if self.client is not None:
            self.wpaused = True
            self.client.pause_for(P_UPSTREAM)

    def resume_writing(self) -> None:
        if self.wpaused:
            self.wpaused = False
            if self.client is not None:
                self.client.resume_for(P_UPSTREAM)

    def flush(self) -> None:
        out = self.out
        if out:
            t = self.transport
            if t is not None and not t.is_closing():
                if len(out) == 1:
                    t.write(out[0])
                else:
                    t.writelines(out)
            out.clear()
            self.sent_nothing = False

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def release(self) -> None:
        """Back to the server's idle pool (or closed when it cannot be reused)."""
        if self.wpaused:
            self.wpaused = False
            self.keep = False  # request bytes still queued: not reusable
            if self.client is not None:
                self.client.resume_for(P_UPSTREAM)
        self.client = None
        self.ex = None
        if self.rpaused:
            self.rpaused = False
            if self.transport is not None:
                self.transport.resume_reading()
        server = self.server
        if (self.closed or not self.keep or server.retired or self.transport is None or self.transport.is_closing()
                or len(server.idle) >= server.max_idle):
            self.close()
            return
        self.idle_since = time.monotonic()
        server.idle.append(self)

    def detach_unused(self) -> None:
        """Attached for a request that was rejected before anything was written: reusable."""
        self.used -= 1
        self.release()

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        client = self.client
        if self.tunnel:
            if client is not None and client.transport is not None:
                client.transport.write(data)
                if client.deadline is not None:
                    client.tunnel_activity()
            return
        if client is None:
            self.abort()  # bytes nobody asked for on an idle connection
            return
        remaining = self.bypass
        if remaining:
            # Content-Length body larger than one read: forwarded as received, no parser, no copy.
            n = len(data)
            if n <= remaining:
                client.out.append(data)
                remaining -= n
            else:
                client.out.append(data[:remaining])
                self.keep = False  # bytes beyond the response: not reusable
                remaining = 0
            self.bypass = remaining
            if not remaining:
                self._complete()
            client.flush()
            return
        if self.fresh:
            self.fresh = False
            if self._pass_head(data, client):
                client.flush()
                return
            self.head_bytes = 0
        self.read_len = len(data)
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as exc:
            tail = data[exc.args[0]:]
            self._tunnel(tail)
        except HttpParserCallbackError as exc:
            if not isinstance(exc.__context__, _Reject):
                _log.error("HTTP proxy bug while parsing a response", exc_info=exc.__context__ or exc)
            self._malformed()
        except HttpParserError:
            self._malformed()
        if self.ex is not None and not self.tunnel:
            if not self.head_done:
                # the whole read belonged to a head still incomplete: llhttp keeps no limit, we do
                self.head_bytes += len(data)
                if self.head_bytes > MAX_RESPONSE_HEAD_BYTES:
                    self._malformed()
            elif self.framing == F_CHUNK and len(self.headers) - self.nhead > MAX_TRAILER_FIELDS:
                self._malformed()
        if self.framing == F_LENGTH and self.remaining > 0 and self.ex is not None:
            self.bypass = self.remaining
            self.parser = httptools.HttpResponseParser(self)  # the old one is mid-body
        client.flush()

    def _pass_head(self, data: bytes, client: ClientProtocol) -> bool:
        """The common response, forwarded as received: HTTP/1.1, a final status with a reason phrase,
        Content-Length, no hop-by-hop header except ``Connection: keep-alive`` (cut out with one
        slice), no obs-fold, the whole head in this read and nothing after the body; the request
        neither HEAD nor HTTP/1.0. Head and body bytes of the read go to the client as one piece;
        the rest of the body, if any, is forwarded unparsed (``bypass``). Returns False, having
        changed nothing, for anything else: the parser path (``on_headers_complete``) rebuilds
        the head."""
        ex = self.ex
        if ex is None or ex.is_head or ex.v10 or ex.resp_edits is not None:
            return False
        last = self.last_head
        if data.startswith(last):
            # The same head as this connection's last response (it ends with the only blank line).
            end = len(last)
            known = self.last_known
        else:
            end = data.find(b"\r\n\r\n") + 4
            if end < 4 or end > _HEAD_KEEP_MAX:
                return False
            head = data[:end]
            try:
                known = _HEADS[head]
            except KeyError:
                known = _scan_head(head)
                if len(_HEADS) >= _HEADS_MAX:
                    _HEADS.clear()
                _HEADS[head] = known
            self.last_head = head
            self.last_known = known
        if known is None:
            return False
        status, length, cut, cut_end = known
        body = len(data) - end
        if body > length:
            return False  # bytes beyond the response: the parser path decides
        ex.status = status
        ex.resp_started = True
        ex.wire = None
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        self.keep = True
        self.framing = F_LENGTH
        if (not ex.keep_alive or ex.close_after or client.options.connections.draining
                or (not ex.req_done and (ex.expect or body == length))):
            # (expect: see on_headers_complete. A whole response before the whole request: the
            # connection closes after it (_complete), so the client is told.)
            ex.close_after = True
            end -= 2
            if cut < 0:
                out = b"".join((data[:end], b"Connection: close\r\n", data[end:]))
            else:
                out = b"".join((data[:cut], data[cut_end:end], b"Connection: close\r\n", data[end:]))
        elif cut < 0:
            out = data
        else:
            out = data[:cut] + data[cut_end:]
        client.out.append(out)
        if body == length:
            self._complete()
        else:
            self.head_done = True
            self.remaining = self.bypass = length - body
        return True

    def _malformed(self) -> None:
        ex = self.ex
        client = self.client
        self.keep = False
        if ex is None or client is None:
            self.abort()
            return
        ex.conn = None
        self.client = None
        self.ex = None
        self.abort()
        if not ex.resp_started:
            client.metrics.upstream_error(ex.service, "protocol")
            for breaker in ex.route.breakers:  # a 502 of the server's making: a network error (Traefik)
                breaker.record(None, perf_counter() - ex.start)
            ex.close_after = ex.close_after or not ex.req_done
            client._local(ex, 502)
        else:
            client.metrics.upstream_error(ex.service, "protocol")
            ex.responded = True
            client.active = None
            client._account(ex, ex.status)
            client.abort()

    # httptools callbacks (response) -------------------------------------------

    def on_message_begin(self) -> None:
        if self.ex is None:
            # A message after the response, in the same read (it went back to the pool within
            # this feed): kept in the parser, its head was glued to the next client's response.
            self.keep = False
            raise _Reject(502, "bytes after the response")

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.ex
        if ex is None:  # a second response after the one asked for: not forwarded, connection dropped
            raise _Reject(502, "response without a request")
        client = self.client
        parser = self.parser
        status = parser.get_status_code()
        if status < 200 and status != 101:
            self.interim = True
            if not ex.v10:
                client.out.append(_status_line(status, self.reason) + b"".join(
                    b"%s: %s\r\n" % p for p in self.headers if _NAME_CACHE.get(p[0], _classify(p[0])) in _PLAIN)
                    + _CRLF)
                ex.wire = None  # response bytes go out: never tried again (a failure now is a 502)
                if status == 100:
                    ex.expect = False  # the client now sends the body it announced
            self.headers = []
            self.reason = b""
            return
        if status == 101 and ex.upgrade is None:
            raise _Reject(502, "101 without upgrade request")
        if self.head_bytes + self.read_len > MAX_RESPONSE_HEAD_BYTES:
            # the head may be over the limit whichever reads it came in: measure it (rare: big reads)
            if len(self.reason) + 15 + sum(len(n) + len(v) + 4 for n, v in self.headers) > MAX_RESPONSE_HEAD_BYTES:
                raise _Reject(502, "response head too large")
        ex.status = status
        ex.resp_started = True
        ex.wire = None
        self.head_done = True
        if ex.timer is not None:
            ex.timer.cancel()
            ex.timer = None
        cl = te = conn_hdr = upgrade = None
        kept: list[bytes] = [_status_line(status, self.reason)]
        for name, value in self.headers:
            code = _NAME_CACHE.get(name)
            if code is None:
                code = _classify(name)
            if code == H_OTHER:
                kept += (name, b": ", value, _CRLF)
            elif code == H_CL:
                cl = value
            elif code == H_CONNECTION:
                conn_hdr = value if conn_hdr is None else conn_hdr + b"," + value
            elif code == H_TE:
                te = value if te is None else te + b", " + value
            elif code == H_UPGRADE:
                upgrade = value
            elif code != H_HOP:  # end-to-end headers the request side treats specially
                kept += (name, b": ", value, _CRLF)
        edits = ex.resp_edits
        if edits is not None:  # response_headers middlewares
            if edits.drop:
                kept = _drop_fields(kept, 1, edits.drop)
            for name, value in edits.fields:
                kept += (name, b": ", value, _CRLF)
        if conn_hdr is not None:
            extra = _connection(conn_hdr)[0]
            if extra:
                kept = [kept[0]] + [b"".join(kept[i:i + 4]) for i in range(1, len(kept), 4)
                                    if kept[i].lower() not in extra]
        self.keep = parser.should_keep_alive()
        # Answered before an announced body was sent (Expect: 100-continue, no 100 relayed; a 417,
        # a 401): the client may never send it, so the connection closes after this response and
        # says so (RFC 9112 §9.6). Other early answers wait: the body may still complete before the
        # response does (a full-duplex server), and then the connection is kept (see _complete);
        # if it does not, the connection closes after the response without a Connection: close
        # (unknowable when this head goes out), which HTTP/1.1 clients must expect of any reply.
        close = (not ex.keep_alive or client.options.connections.draining or ex.close_after
                 or (ex.expect and not ex.req_done))
        if status == 101:
            self.framing = F_NONE
            kept += (b"Connection: Upgrade\r\nUpgrade: ", upgrade or ex.upgrade, _CRLF)
            close = False
        elif ex.is_head or status in _NO_BODY_STATUS:
            self.framing = F_NONE
            if status == 204 and (cl not in (None, b"0") or te is not None):
                # A 204 has no body (RFC 9110 §15.3.5) and its framing fields are void; a server
                # that sends them may also have sent a body: this connection is not reused, so
                # those bytes never reach the next request's response.
                self.keep = False
            elif cl is not None:
                kept += (b"Content-Length: ", cl, _CRLF)
        elif te is not None:
            if te != b"chunked" and te.rpartition(b",")[2].strip().lower() != b"chunked":
                ex.resp_started = False  # nothing of this head has gone out: the client gets the 502
                raise _Reject(502, "unsupported Transfer-Encoding")
            self.framing = F_CHUNK
            self.nhead = len(self.headers)  # on_header calls after this are trailer fields
            if ex.v10:
                close = True
            else:
                if te == b"chunked":
                    kept.append(b"Transfer-Encoding: chunked\r\n")
                else:  # e.g. "gzip, chunked": re-chunked, the other codings stay as they are
                    kept += (b"Transfer-Encoding: ", te, _CRLF)
                for name, value in self.headers:
                    if name.lower() == b"trailer":  # announces trailer fields, which are forwarded
                        kept += (name, b": ", value, _CRLF)
        elif cl is not None:
            self.framing = F_LENGTH
            self.remaining = int(cl)
            kept += (b"Content-Length: ", cl, _CRLF)
        else:
            # Close-delimited upstream body: re-chunk for 1.1 clients, pass through for 1.0.
            self.framing = F_RAW_CLOSE
            self.keep = False
            if ex.v10:
                close = True
            else:
                kept.append(b"Transfer-Encoding: chunked\r\n")
        if close:
            ex.close_after = True
            kept.append(b"Connection: close\r\n")
        elif ex.v10 and status != 101:  # (a 101 says Connection: Upgrade)
            kept.append(b"Connection: keep-alive\r\n")
        kept.append(_CRLF)
        client.out.append(b"".join(kept))
        if self.framing == F_NONE and status != 101:
            # HEAD/204/304: complete at the head. llhttp cannot be told a HEAD response has no
            # body, so the parser is replaced after this read.
            self._complete()

    def on_body(self, body: bytes) -> None:
        client = self.client
        if client is None:
            return
        framing = self.framing
        if framing == F_LENGTH:
            client.out.append(body)
            self.remaining -= len(body)
        elif framing == F_CHUNK or framing == F_RAW_CLOSE:
            if self.ex.v10:
                client.out.append(body)
            else:
                client.out += (b"%x\r\n" % len(body), body, _CRLF)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if not self.head_done or self.client is None or self.ex is None:
            return  # already completed at the head (HEAD, 204, 304)
        if self.ex.status == 101:
            return  # llhttp raises HttpParserUpgrade next: the tunnel starts there
        if self.framing == F_CHUNK:
            if len(self.headers) - self.nhead > MAX_TRAILER_FIELDS:
                raise _Reject(502, "too many trailer fields")
            if not self.ex.v10:
                self.client.out.append(_last_chunk(self.headers, self.nhead))
        self._complete()

    # ------------------------------------------------------------------ completion

    def _complete(self) -> None:
        ex = self.ex
        client = self.client
        self.head_done = False
        self.remaining = -1
        if self.framing == F_NONE:
            self.parser = httptools.HttpResponseParser(self)
        ex.conn = None
        ex.responded = True
        if ex.server is not None:
            ex.route.service.balancer.succeeded(ex.server)
        if ex.close_after and ex.upgrade is not None:
            self.keep = False  # a declined upgrade: the server may have read the client's next bytes
        if not ex.req_done:
            # Answered before the request body was complete (e.g. 413): neither connection can
            # carry another message.
            self.keep = False
            self.release()
            client._finish_early(ex)
            return
        self.release()
        client._done(ex)

    def finish_close_delimited(self, client: ClientProtocol, ex: Exchange) -> None:
        if not ex.v10:
            client.out.append(_LAST_CHUNK)
        ex.responded = True
        if ex.req_done:
            client._done(ex)
        else:
            client._finish_early(ex)

    def _tunnel(self, tail: bytes) -> None:
        """The upstream answered 101: from now on both directions are raw bytes."""
        ex = self.ex
        client = self.client
        if ex is None or client is None or ex.status != 101:
            self._malformed()
            return
        self.tunnel = True
        self.keep = False
        ex.responded = True
        ex.conn = None
        if tail:
            client.out.append(tail)
        client.active = None
        client._account(ex, 101)
        client.start_tunnel(self)
