"""HTTP/2 cleartext (h2c) through the mesh: what gRPC needs.

A client connection whose first bytes are the HTTP/2 connection preface (prior knowledge, as gRPC
clients and ``curl --http2-prior-knowledge`` open it) is handed over by the HTTP/1.1
:class:`~lightmesh.proxy.http.ClientProtocol` to :class:`H2Downstream`. Each of its streams is
routed like an HTTP/1.1 request (entry point table, host from ``:authority``, path, method,
headers), goes through the same pre-forwarding middlewares (allow-list, rate limit, circuit
breaker, deny) and is relayed to a server of the service over one multiplexed HTTP/2 connection
per server and worker (:class:`H2Upstream`). Services whose scheme is ``h2c`` are reached this
way; for a service of another scheme (``http``, ``https``) each stream is translated to an HTTP/1.1
request on a connection of its own (:class:`H1Upstream`), so an HTTP/2 client reaches every
service. HTTP/1.1 clients of an ``h2c`` service are relayed over HTTP/1.1 (not translated).

Relayed as they come: request and response headers (hop-by-hop fields removed,
the forwarded headers as on HTTP/1.1), informational (1xx) responses, DATA
frames, trailers (gRPC's ``grpc-status`` travels in them), stream resets both ways. Flow control is
end to end per stream: received DATA is acknowledged on its stream only once it was handed to the
other side, so a slow reader holds back its writer within the stream's window and memory stays
bounded (see :class:`_Side` for why the connection window is not part of that). A peer that opens
huge windows and reads nothing is held back the same way: once its transport's buffer is full,
frames wait with their credit held and its connection is not read (a PING or SETTINGS flood from
it then waits in the kernel, not here).

Hostile clients: a client that resets most of its streams within a second of opening them (rapid
reset, CVE-2023-44487) gets GOAWAY ENHANCE_YOUR_CALM after :data:`PREMATURE_RESETS_MAX` of them;
new streams are forwarded at the end of the read that opened them, so one reset in that same read
never reaches a server. ``header_timeout`` bounds the wait for the client's SETTINGS after the
preface and for a header block left without END_HEADERS. Our HPACK table for what we send stays at
4 KiB whatever the peer allows; servers are told our header list limit. A client's GOAWAY
(NO_ERROR) lets its streams in flight finish, then the connection closes.

Malformed requests (RFC 9113 §8.1.1: bad field names or values, connection-specific fields, missing
or misplaced pseudo-headers, ``Host`` differing from ``:authority``, a body that does not match its
``Content-Length``) are stream errors: the stream is reset with PROTOCOL_ERROR (counted as a 400) and
nothing more of it is forwarded; the connection's other streams go on. h2 checks the rest of the
protocol; its own header checks are off on the client side because they end the whole connection.

Retry: a stream whose server could not be reached, or whose connection failed or refused the
stream before any response header, is tried on the next server when the route has a retry
middleware and the whole request body is at hand (up to ``max_replay_bytes``). Request timeout:
no response head in time → 504; without a request-timeout middleware, ``response_timeout`` (if
set) from the end of the request to the response head → 504, as on HTTP/1.1. ``body_timeout``: a
stream whose client sends no request DATA for that long while it could (its window is open, and
counting from when the proxy last gave window back) gets 408 (a stream whose response has begun
is spared: the server decides then); the server's stream is reset. One lazily re-armed timer
per connection watches all its streams' bodies. Drain (SIGTERM): a connection with streams in flight
is sent GOAWAY at once (its last stream id: clients open new streams elsewhere, gRPC without an
error), streams opened anyway are refused with REFUSED_STREAM (never processed: the client retries
them), the ones in flight finish, then a final GOAWAY and close. Each stream's receive window stays
at HTTP/2's default 64 KiB, which bounds what one stream can make the proxy hold. Every stream is
counted in the request metrics like an HTTP/1.1 request, and access-logged like one with
``--access-log``; circuit breakers record its outcome. Not here: HTTP/2 over TLS, server push
(disabled), h2c upgrade from HTTP/1.1 (``Upgrade: h2c`` is dropped as a hop-by-hop header). With a
tracer, each stream that passed the middlewares gets a span, as an HTTP/1.1 request does.
"""

from __future__ import annotations

import asyncio
import logging
import re
import struct
from time import perf_counter
from typing import Any

import httptools
import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from lightmesh.netutil import LOCAL_LIMIT, connect_failure_reason
from lightmesh.proxy.logthrottle import LogThrottle
from lightmesh.proxy.metrics import method_label
from lightmesh.proxy.routing import FragmentInTarget, Server, forwarded_port, split_host, valid_host
from lightmesh.proxy.timers import put_off_if_late, within

_H1_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te",
                     b"trailer"))
# Our receive window per connection (both sides). It is given back as data arrives (see _Side), so
# it never holds back a stream; its size only sets how often we send a connection WINDOW_UPDATE.
CONNECTION_WINDOW = 16 * 1024 * 1024
_REFILL = CONNECTION_WINDOW // 4  # connection credit owed before it is given back in one WINDOW_UPDATE
_H1_READ_AHEAD = 256 * 1024  # response bytes an HTTP/1.1 server may have us hold for a slow HTTP/2 client
# The HPACK table we keep for what we send: a peer may announce up to 4 GiB and every distinct
# field we send would stay in it for the connection's life (RFC 7541 §4.2 lets the encoder use less).
_ENCODER_TABLE_MAX = 4096
# Rapid reset (CVE-2023-44487): a client that resets most of its streams at once, before any
# response, makes us (and the servers) do the work of each for nothing. Once it has done so this
# many times and for at least half of its streams, the connection ends with ENHANCE_YOUR_CALM.
# "At once" is within 100 ms: an attack resets in the same packet or the next; a gRPC deadline
# that cancels calls to a slow server is rarely that short, and such a client is not closed.
PREMATURE_RESETS_MAX = 200
_CLOSED_STREAMS_KEPT = 256
_PREMATURE_SECONDS = 0.1

__all__ = ["PREFACE", "H2Downstream", "H2Upstream", "looks_like_h2"]

_log = logging.getLogger(__name__)
_flood_log = LogThrottle(_log)  # one line per client address and 10 s

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# Connection-specific fields (RFC 9113 §8.2.2) and Host (``:authority`` carries it).
_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"host"))
_FORWARDED = frozenset((b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip",
                        b"x-forwarded-port", b"x-forwarded-server"))
UNROUTED = "unrouted"

# Request checks h2 would make a connection error (RFC 9113 §8.2.1, §8.2.2, §8.3.1): made per stream.
_BAD_NAME = re.compile(rb"[\x00-\x20A-Z\x7f-\xff]")  # and a colon only starts a pseudo-header
_BAD_VALUE = re.compile(rb"[\x00\r\n]")  # and no space or tab at either end
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path"))
_CONNECTION_SPECIFIC = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                  b"upgrade"))
_METHOD_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §9.1: a method is a token
# HPACK's measure of a header list (RFC 7541 §4.1: name + value + 32 per field) above which the
# decoder gives up and the connection ends (ENHANCE_YOUR_CALM): a multiple of the request limit, so
# a head between the two is one stream's 431 and the other streams go on.
_DECODER_LIMIT_FACTOR = 4


def _check_fields(headers: list, trailers: bool) -> tuple[str | None, int, dict[bytes, bytes]]:
    """A request's header block (or trailer block) as RFC 9113 wants it (§8.2.1 field names and
    values, §8.2.2 no connection-specific fields, §8.3 pseudo-headers, §8.3.1 Host = ``:authority``):
    (why it is malformed or None, its Content-Length or -1, its pseudo-headers)."""
    pseudo: dict[bytes, bytes] = {}
    regular = trailers  # pseudo-headers come before the regular fields, and never in trailers
    host = None
    length = -1
    for name, value in headers:
        if not name or _BAD_NAME.search(name) is not None or name.find(b":", 1) >= 0:
            return "field name", -1, pseudo
        if value and (_BAD_VALUE.search(value) is not None or value[0] in (32, 9) or value[-1] in (32, 9)):
            return "field value", -1, pseudo
        if name[0] == 58:  # ':'
            if regular or name not in _REQUEST_PSEUDO or name in pseudo:
                return "pseudo-header", -1, pseudo
            pseudo[name] = value
            continue
        regular = True
        if name in _CONNECTION_SPECIFIC:
            return "connection-specific field", -1, pseudo
        if name == b"te" and value.lower() != b"trailers":
            return "te", -1, pseudo
        if trailers:
            continue
        if name == b"host":
            if host is not None:
                return "two host fields", -1, pseudo
            host = value
        elif name == b"content-length":
            if not value.isdigit() or (length >= 0 and int(value) != length):
                return "content-length", -1, pseudo
            length = int(value)
    if trailers:
        return None, -1, pseudo
    method = pseudo.get(b":method")
    if not method:
        return "no :method", -1, pseudo
    if _METHOD_TOKEN.fullmatch(method) is None:
        return ":method is not a token", -1, pseudo
    if method == b"CONNECT":
        if b":scheme" in pseudo or b":path" in pseudo:
            return "CONNECT with :scheme or :path", -1, pseudo
    elif not pseudo.get(b":path") or b":scheme" not in pseudo:
        return "no :path or :scheme", -1, pseudo
    else:
        path = pseudo[b":path"]
        # RFC 9113 §8.3.1: origin-form, or "*" for OPTIONS. An absolute-form or slash-less path
        # would be routed on one path and read by the server as another (a rule for /admin dodged).
        if path[:1] != b"/" and not (path == b"*" and method == b"OPTIONS"):
            return ":path is not origin-form", -1, pseudo
    authority = pseudo.get(b":authority")
    if authority is None and host is None:
        return "no :authority or host", -1, pseudo
    if authority is not None and host is not None and authority != host:
        return "host differs from :authority", -1, pseudo
    if not valid_host(authority if authority is not None else host):
        return "bad :authority or host", -1, pseudo  # userinfo, a non-numeric port: see routing.valid_host
    return None, length, pseudo


def looks_like_h2(data: bytes) -> bool:
    """The first read of a connection starts the HTTP/2 preface (it may be cut short)."""
    n = min(len(data), len(PREFACE))
    return n >= 3 and data[:n] == PREFACE[:n]


def _config(client_side: bool) -> h2.config.H2Configuration:
    # Inbound headers are validated: by h2 on the server side (servers that break the protocol), by
    # H2Downstream per stream on the client side (h2's checks would end the whole connection, RFC
    # 9113 §8.1.1 wants a stream error). What goes out is built from those and from lower-case names
    # of ours, so checking it again is wasted work (it was ~15% of the CPU per relayed stream).
    return h2.config.H2Configuration(client_side=client_side, header_encoding=None,
                                     validate_inbound_headers=client_side, normalize_inbound_headers=True,
                                     validate_outbound_headers=False, normalize_outbound_headers=False)


def _unchecked(*_args: Any) -> None:
    return None


def _forgotten_is_reset(conn: h2.connection.H2Connection, stream_id: int) -> bool:
    """h2 makes a frame on a closed stream it no longer remembers a connection error, unless the
    stream was reset. A late frame is likely on a stream we reset (a cancelled call whose response
    was on its way), and a connection error would end every other stream on the connection (a
    server connection is shared by all clients): a stream we forgot counts as one we reset."""
    if stream_id not in conn.streams and stream_id not in conn._closed_streams:
        return True
    return h2.connection.H2Connection._stream_is_closed_by_reset(conn, stream_id)


class _ClientFacing(h2.connection.H2Connection):
    """h2's server side without its Content-Length bookkeeping, which raises a connection error for a
    request body that does not match (RFC 9113 §8.1.1 wants a stream error): H2Downstream checks it
    per stream, before forwarding any byte beyond it. (h2 is pinned; these are its 4.4 internals.)"""

    # h2 remembers 65,536 closed streams per connection (~10 MB for a busy gRPC connection); frames
    # for one forgotten get RST_STREAM(STREAM_CLOSED) (see _forgotten_is_reset), and DATA still
    # counts for flow control
    MAX_CLOSED_STREAMS = _CLOSED_STREAMS_KEPT

    def _stream_is_closed_by_reset(self, stream_id: int) -> bool:
        return _forgotten_is_reset(self, stream_id)

    def _begin_new_stream(self, stream_id: int, allowed_ids: Any) -> Any:
        stream = super()._begin_new_stream(stream_id, allowed_ids)
        stream._initialize_content_length = _unchecked
        stream._track_content_length = _unchecked
        return stream

    def _receive_goaway_frame(self, frame: Any) -> tuple[list, list]:
        # A client's GOAWAY says it opens no more streams; the ones it opened still get their
        # responses (RFC 9113 §6.8; gRPC's graceful channel shutdown counts on it). h2 4.4 would
        # stop sending on them at once. H2Downstream closes after the last one.
        return _ServerFacing._receive_goaway_frame(self, frame)


class _ServerFacing(h2.connection.H2Connection):
    """h2's client side, except that a GOAWAY from the server leaves the connection open for the
    streams the server still finishes (up to the GOAWAY's last stream id: a graceful shutdown, RFC
    9113 §6.8). h2 4.4 would refuse every later frame, failing those streams. H2Upstream opens no
    new stream on it and closes it after its last one."""

    MAX_CLOSED_STREAMS = _CLOSED_STREAMS_KEPT  # (see _ClientFacing)

    def _stream_is_closed_by_reset(self, stream_id: int) -> bool:
        return _forgotten_is_reset(self, stream_id)

    def _receive_goaway_frame(self, frame: Any) -> tuple[list, list]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]


class _Side:
    """What both ends of a relay share: an h2 connection on a transport (``flush`` writes what h2
    produced, once per event-loop callback), and the per-stream queues of frames waiting for
    flow-control window.

    Flow control: a stream's credit goes back to its sender (``acknowledge``) only once its data was
    handed to the other side, so one slow reader holds back its own writer, by at most the stream's
    64 KiB window. Connection credit is not tied to that: it goes back as data arrives (``refill``,
    after each read, in one WINDOW_UPDATE once a quarter of the window is owed). Were it given back
    with the stream credit, the streams of one client that stops reading (some 256 of them) would
    use up the 16 MiB connection window of the server connection it shares with other clients, and
    stall them all. What a slow reader can make us hold stays bounded by its streams' windows (its
    concurrent-stream limit × 64 KiB), plus the transport's buffer up to its high-water mark (then
    ``paused``: whatever windows the peer opened). h2 also gives connection credit back as streams
    acknowledge data, up to the same full window: the two never credit more than was received."""

    def __init__(self, client_side: bool) -> None:
        self.conn = (_ServerFacing if client_side else _ClientFacing)(config=_config(client_side))
        self.transport: asyncio.Transport | None = None
        # stream id → [(kind "headers"/"data", payload, end_stream, credit, acked)]: ``acked(credit)``
        # gives the sender its flow-control credit back once the frame went out (or was dropped)
        self.queues: dict[int, list] = {}
        self.closed = False
        # the peer does not read what we send (the transport's buffer is over its high-water mark):
        # frames wait in ``queues`` with their senders' credit held, which stops each sender within
        # its stream window instead of growing the transport's buffer by the peer's (any) window
        self.paused = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def refill(self) -> None:
        """Give the peer back the connection credit of what it sent (see the class docstring)."""
        conn = self.conn
        owed = CONNECTION_WINDOW - conn.inbound_flow_control_window
        if owed >= _REFILL:
            try:
                conn.increment_flow_control_window(owed)
            except h2.exceptions.ProtocolError:
                pass  # the connection is closing

    def queue(self, stream_id: int, kind: str, payload: Any, end: bool, ack: int, acked) -> None:
        """Send a frame now, or when the window allows; ``acked(ack)`` once it was sent."""
        q = self.queues.get(stream_id)
        if q is None:
            q = self.queues[stream_id] = []
        q.append((kind, payload, end, ack, acked))
        self.pump(stream_id)

    def pump(self, stream_id: int) -> None:
        q = self.queues.get(stream_id)
        conn = self.conn
        while q and not self.paused:
            kind, payload, end, ack, acked = q[0]
            try:
                if kind == "headers":
                    conn.send_headers(stream_id, payload, end_stream=end)
                elif kind == "reset":
                    conn.reset_stream(stream_id, error_code=payload)
                else:
                    window = min(conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size)
                    if payload and window <= 0:
                        return
                    if len(payload) > window:
                        conn.send_data(stream_id, payload[:window])
                        q[0] = (kind, payload[window:], end, ack, acked)
                        continue
                    conn.send_data(stream_id, payload, end_stream=end)
            except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
                self.drop(stream_id)  # the stream is gone (reset or closed): nothing more to send on it
                return
            q.pop(0)
            if ack and acked is not None:
                acked(ack)
        if not q:
            self.queues.pop(stream_id, None)

    def drop(self, stream_id: int) -> None:
        """Forget what waits for ``stream_id``; its senders get their flow-control credit back
        (discarded data is consumed data, or their connection window would shrink for good)."""
        for _kind, _payload, _end, ack, acked in self.queues.pop(stream_id, ()):
            if ack and acked is not None:
                acked(ack)

    def window_updated(self, stream_id: int) -> None:
        """The peer opened a stream's window (or, stream 0, the connection's): send what waited."""
        if stream_id:
            self.pump(stream_id)
        else:
            for waiting in list(self.queues):
                self.pump(waiting)

    def pause(self) -> None:
        """The transport's buffer is full: hold frames (see ``paused``) and stop reading the peer,
        whose frames could each want an answer (PING, SETTINGS) that would pile up unsent."""
        self.paused = True
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def resume(self) -> None:
        self.paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()
            self.window_updated(0)
            self.flush()

    def cap_encoder_table(self) -> None:
        encoder = self.conn.encoder
        if encoder.header_table_size > _ENCODER_TABLE_MAX:
            encoder.header_table_size = _ENCODER_TABLE_MAX  # announced to the peer in our next header block

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.drop(stream_id)
        try:
            self.conn.reset_stream(stream_id, error_code=code)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass

    def acknowledge(self, stream_id: int, n: int) -> None:
        try:
            self.conn.acknowledge_received_data(n, stream_id)
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            pass


def _traceparent(headers: list) -> bytes | None:
    """The request's traceparent; b"" (invalid: a new trace) when there are several (W3C)."""
    found = [v for n, v in headers if n == b"traceparent"]
    return found[0] if len(found) == 1 else (b"" if found else None)


def _series_method(method: str | None) -> str:
    return method_label(method) if method else "-"


class _Stream:
    """One client stream and its relay to a server."""

    __slots__ = ("down_id", "method", "mstr", "headers", "authority", "path", "start", "route",
                 "service", "server", "up", "up_id", "tried", "retries_left", "retries", "body", "body_bytes",
                 "req_done", "replayable", "status", "responded", "timer", "done", "span", "reopened", "cl",
                 "last_in")

    def __init__(self, down_id: int) -> None:
        self.down_id = down_id
        self.start = perf_counter()
        self.route = None
        self.service = UNROUTED
        self.server: Server | None = None
        self.up: H2Upstream | None = None
        self.up_id = 0
        self.tried: tuple = ()
        self.retries_left = 0
        self.retries = 0
        # [kind, payload, end, flow]: the request as received, kept for a retry and while no stream is
        # open at the server; ``flow`` is the client's flow-control credit not yet given back (0 once
        # the item was handed to a server stream, which gives it back when it sends or drops it)
        self.body: list[list] = []
        self.body_bytes = 0
        self.req_done = False
        self.replayable = True
        self.status = 0
        self.responded = False  # response headers went to the client
        self.timer: asyncio.TimerHandle | None = None
        self.done = False
        self.span = None  # tracing: a RequestSpan once the stream passed the middlewares
        self.reopened = 0  # times a server refused the stream unprocessed (REFUSED_STREAM, GOAWAY)
        self.cl = -1  # request body bytes its Content-Length still announces (-1: no Content-Length)
        self.last_in = 0.0  # loop time of the last request DATA (body_timeout)


class H2Downstream(asyncio.Protocol):
    """A client's HTTP/2 connection (server side of h2)."""

    def __init__(self, client: Any) -> None:
        self.side = _Side(client_side=False)
        self.holder = client.holder
        self.ep = client.ep
        self.options = client.options
        self.metrics = client.metrics
        self.loop = client.loop
        self.peer = client.peer
        self.peer_b = client.peer_b
        self.acl: dict = {}
        self.rate_delay = 0.0  # set by run_checks: the stream waits this long for its rate-limit token
        self.acl_plane = None
        self.streams: dict[int, _Stream] = {}
        self.idle_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None  # body_timeout, for all streams (see _bodies_due)
        self.goaway_sent = False  # the final GOAWAY (h2's: nothing more goes out after it)
        self.drain_last = -1  # stream id in the GOAWAY that announced a drain (ours), or -1
        self.recycling = False  # this connection alone drains (see recycle)
        self.peer_goaway = False  # the client sent GOAWAY: closed once its streams are done
        self.opened = 0  # streams the client opened
        self.premature = 0  # of them, reset by the client within _PREMATURE_SECONDS (rapid reset)
        self.batch: list[_Stream] | None = None  # streams of the read being handled, forwarded at its end
        # --header-timeout: until the client's SETTINGS, and while a header block is incomplete
        self.head_timer: asyncio.TimerHandle | None = None
        self.settled = False  # the client's SETTINGS arrived

    # ------------------------------------------------------------------ connection

    def start(self, transport: asyncio.Transport, data: bytes) -> None:
        """Take over ``transport`` (the HTTP/1.1 protocol saw the preface in ``data``)."""
        self.side.transport = transport
        transport.set_protocol(self)
        self.options.connections.conns.add(self)
        self.side.conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0, h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000})
        # Not announced as MAX_HEADER_LIST_SIZE: h2 would then end the connection at the limit itself
        self.side.conn.decoder.max_header_list_size = max(
            h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE, _DECODER_LIMIT_FACTOR * self.options.max_header_bytes)
        self.side.conn.initiate_connection()
        self.side.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.side.flush()
        self._arm_idle()
        self.data_received(data)  # (which arms the header timer until the client's SETTINGS: _watch_head)

    def connection_made(self, transport: asyncio.Transport) -> None:  # pragma: no cover - set by start()
        self.side.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.side.closed = True
        self.options.connections.conns.discard(self)
        self.metrics.connection_closed("http")
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None
        for st in list(self.streams.values()):
            self._abandon(st)
        self.streams.clear()

    def pause_writing(self) -> None:
        # HTTP/2 flow control alone does not bound this: the client sets its own windows (up to
        # 2 GiB per stream), and control frames need no window at all
        self.side.pause()

    def resume_writing(self) -> None:
        self.side.resume()

    def _head_timed_out(self, due: float) -> None:
        """No SETTINGS since the preface, or a header block left incomplete, for ``header_timeout``
        (the slowloris of HTTP/2): GOAWAY and close, as HTTP/1.1 closes such a connection.
        ``due``: see lightmesh.proxy.timers."""
        self.head_timer = None
        if not self.side.closed and (later := put_off_if_late(self.loop, due, self._head_timed_out)) is not None:
            self.head_timer = later
            return
        if not self.side.closed:
            _log.debug("HTTP/2 connection from %s: no complete head in %.1fs", self.peer, self.options.header_timeout)
            self.close()

    def _watch_head(self) -> None:
        """Arm the header timer while a header block is incomplete (h2 4.4 keeps its frames in the
        frame buffer until END_HEADERS); stop it otherwise, once the client's SETTINGS came."""
        waiting = not self.settled or bool(self.side.conn.incoming_buffer._headers_buffer)
        if waiting:
            if self.head_timer is None and self.options.header_timeout > 0 and not self.side.closed:
                due = self.loop.time() + self.options.header_timeout
                self.head_timer = self.loop.call_at(due, self._head_timed_out, due)
        elif self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def eof_received(self) -> bool | None:
        return None

    def is_idle(self) -> bool:
        return not self.streams and not self.side.queues

    def start_drain(self) -> None:
        """ConnectionSet.drain calls this once, as the drain starts."""
        if (self.streams or self.side.queues) and self.drain_last < 0:
            self._announce_drain()  # (queues: answers still waiting for the client's window)

    def recycle(self) -> bool:
        """This connection alone drains as on shutdown (GOAWAY, streams in flight and answers still
        queued for the client's window finish, then it closes): its listener's connections must be
        placed again (see ConnectionSet.recycle)."""
        self.recycling = True
        if self.streams or self.side.queues:
            if self.drain_last < 0:
                self._announce_drain()
        else:
            self.close()
        return True

    def _announce_drain(self) -> None:
        """GOAWAY now, with the last stream id we took: the client opens no more streams here (gRPC
        moves new calls to a new connection without an error) and the ones in flight go on. h2
        sends nothing more once it sent a GOAWAY, so this one is written here, after what h2 has
        queued; h2's own GOAWAY (same last stream id) ends the connection in ``close``."""
        transport = self.side.transport
        if transport is None or transport.is_closing() or self.goaway_sent:
            return
        self.drain_last = last = self.side.conn.highest_inbound_stream_id
        self.side.flush()
        transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", last, 0))  # GOAWAY NO_ERROR

    def close(self) -> None:
        if self.side.transport is not None and not self.side.transport.is_closing():
            if not self.goaway_sent:
                self.goaway_sent = True
                self.side.conn.close_connection(last_stream_id=self.drain_last if self.drain_last >= 0 else None)
            self.side.flush()
            self.side.transport.close()

    def abort(self) -> None:
        if self.side.transport is not None:
            self.side.transport.abort()

    def _arm_idle(self) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        if self.side.closed:
            # finishing the streams abandoned by connection_lost ends here: a timer would keep the
            # closed connection, its streams and their upstream objects alive for the idle timeout
            return
        due = self.loop.time() + self.options.idle_timeout
        self.idle_timer = self.loop.call_at(due, self._idle_check, due)

    def _idle_check(self, due: float) -> None:
        """``due``: see lightmesh.proxy.timers."""
        self.idle_timer = None
        if (not self.streams and not self.side.closed
                and (later := put_off_if_late(self.loop, due, self._idle_check)) is not None):
            self.idle_timer = later
            return
        if self.streams:
            self._arm_idle()
        else:
            self.close()

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        try:
            events = self.side.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            _log.debug("HTTP/2 protocol error from %s: %s", self.peer, exc)
            self.side.flush()  # h2 queued a GOAWAY
            if self.side.transport is not None:
                self.side.transport.close()
            return
        # New streams are forwarded once the whole read is handled: a stream the same read resets
        # (rapid reset sends HEADERS and RST_STREAM together) never reaches a server.
        self.batch = batch = []
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self._request(ev.stream_id, ev.headers, ev.stream_ended is not None)
            elif isinstance(ev, h2.events.DataReceived):
                self._data(ev.stream_id, "data", ev.data, ev.stream_ended is not None, ev.flow_controlled_length)
            elif isinstance(ev, h2.events.TrailersReceived):
                self._trailers(ev.stream_id, ev.headers)
            elif isinstance(ev, h2.events.StreamReset):
                self.side.drop(ev.stream_id)  # an answer still waiting for window: nobody wants it now
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    if not st.done and not st.responded and perf_counter() - st.start < _PREMATURE_SECONDS:
                        self.premature += 1
                    self._abandon(st)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.side.window_updated(ev.stream_id)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.settled = True
                self.side.cap_encoder_table()
            elif isinstance(ev, h2.events.ConnectionTerminated):
                if ev.error_code == h2.errors.ErrorCodes.NO_ERROR and self.streams:
                    self.peer_goaway = True  # no new streams from it; the ones in flight finish
                elif self.side.transport is not None:
                    self.side.transport.close()
        self.batch = None
        if self.premature >= PREMATURE_RESETS_MAX and 2 * self.premature >= self.opened:
            self._reset_flood()
        elif self.side.transport is not None and not self.side.transport.is_closing():
            for st in batch:
                if not st.done and self.streams.get(st.down_id) is st:
                    self._forward(st)
        self.side.refill()
        self.side.flush()
        self._watch_head()
        if ((self.peer_goaway or self.options.connections.draining or self.recycling)
                and not self.streams and not self.side.queues):
            self.close()  # the last response went out whole (the client's window let it)

    def _reset_flood(self) -> None:
        """Rapid reset: GOAWAY ENHANCE_YOUR_CALM and close; its streams are abandoned."""
        _flood_log.warning(self.peer, "HTTP/2 client %s reset %d of its %d streams within %.0fs of opening "
                           "them: connection closed (ENHANCE_YOUR_CALM)", self.peer, self.premature,
                           self.opened, _PREMATURE_SECONDS)
        self.metrics.refused_connection("http", "reset_flood")
        if not self.goaway_sent:
            self.goaway_sent = True
            self.side.conn.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)
        self.side.flush()
        if self.side.transport is not None:
            self.side.transport.close()

    @staticmethod
    def _fields(headers: list) -> list[tuple[bytes, bytes]]:
        return [(n, v) for n, v in headers if n not in _HOP and (n != b"te" or v == b"trailers")]

    def _request(self, stream_id: int, headers: list, ended: bool) -> None:
        if self.options.connections.draining or self.recycling:
            # shutting down: no new streams here (REFUSED_STREAM: never processed, the client may
            # retry it elsewhere; it was told so by the GOAWAY of _announce_drain); the ones in flight
            # finish, then the final GOAWAY and close
            self.side.reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.opened += 1
        st = _Stream(stream_id)
        self.streams[stream_id] = st
        reason, st.cl, pseudo = _check_fields(headers, False)
        method = pseudo.get(b":method", b"")
        st.method = method
        st.mstr = method.decode("latin-1")
        st.path = pseudo.get(b":path", b"/")
        host_header = next((v for n, v in headers if n == b"host"), None)
        st.authority = pseudo.get(b":authority") or host_header or b""
        st.req_done = ended
        if reason is None and ended and st.cl > 0:
            reason = "content-length"
        if reason is not None:
            self._malformed(st, reason)
            return
        st.headers = [(n, v) for n, v in headers if n[:1] != b":"]
        # --max-header-bytes as for HTTP/1.1 (the head as "name: value\r\n" lines): 431 on this stream
        if sum(len(n) + len(v) + 4 for n, v in headers) > self.options.max_header_bytes:
            self._local(st, 431)
            return
        if method == b"CONNECT":
            self._local(st, 405)
            return
        plane = self.holder.http
        table = plane.entry_points.get(self.ep) if plane is not None else None
        try:
            host = split_host(st.authority)
            route = table.lookup(host, st.mstr, st.path, st.headers) if table is not None else None
            if route is not None and route.fall_through:
                from lightmesh.proxy.http import admitted_route  # (http imports this module)
                route = admitted_route(self, table, route, plane, host, st.mstr, st.path, st.headers)
        except FragmentInTarget:
            self._malformed(st, ":path has a fragment")  # see routing.FragmentInTarget
            return
        if route is None:
            self._local(st, 404)
            self._trace_refused(st, "", 404)
            return
        st.route = route
        service = route.service
        st.service = svc = service.name
        delay = 0.0
        if route.checks:
            refused = self.check(route.checks, plane, svc)
            delay, self.rate_delay = self.rate_delay, 0.0  # (a refusal after a delayed pass: nobody waits)
            if refused is not None:
                self._local(st, refused[0], refused[1])
                self._trace_refused(st, route.name, refused[0])
                return
        if not service.servers:
            self._local(st, 503)
            self._trace_refused(st, route.name, 503)
            return
        st.retries_left = route.retries
        if not delay:  # (one waiting for its rate-limit token gets its timers when forwarded)
            self._arm_timers(st)
        if not ended and self.options.body_timeout > 0:
            st.last_in = self.loop.time()
            if self.body_timer is None:
                due = st.last_in + self.options.body_timeout
                self.body_timer = self.loop.call_at(due, self._bodies_due, due)
        tracer = self.options.tracer
        if tracer is not None:
            tp = _traceparent(st.headers)
            q = st.path.find(b"?")
            try:
                st.span = tracer.start(tp, route.name, svc, st.mstr or "", split_host(st.authority),
                                       st.path if q < 0 else st.path[:q])
            except Exception:  # tracing is an add-on: never the reason a stream fails
                _log.exception("starting a trace span failed")
        if delay:  # waiting for a rate-limit token, as on HTTP/1.1
            self.loop.call_later(delay, self._forward_due, st)
        elif self.batch is not None:
            self.batch.append(st)  # forwarded at the end of the read (see data_received)
        else:
            self._forward(st)

    def _forward_due(self, st: _Stream) -> None:
        if st.done or st.responded or st.server is not None or self.side.closed:
            return
        self._arm_timers(st)
        self._forward(st)
        self.side.flush()

    def _arm_timers(self, st: _Stream) -> None:
        """The route's request timeout, else the response timeout once the request is complete."""
        if st.route.timeout is not None:
            self._arm_timeout(st, st.route.timeout)
        elif st.req_done and self.options.response_timeout:
            self._arm_timeout(st, self.options.response_timeout)

    def _arm_timeout(self, st: _Stream, seconds: float) -> None:
        due = self.loop.time() + seconds
        st.timer = self.loop.call_at(due, self._timed_out, st, due)

    def _trace_refused(self, st: _Stream, route: str, status: int) -> None:
        tracer = self.options.tracer
        if tracer is not None:
            tp = _traceparent(st.headers)
            tracer.refused(tp, route, st.service, st.mstr or "", split_host(st.authority), st.path, status)

    def check(self, checks: tuple, plane: Any, svc: str) -> tuple[int, bytes] | None:
        from lightmesh.proxy.http import run_checks
        return run_checks(self, checks, plane, svc)

    def _trailers(self, stream_id: int, headers: list) -> None:
        st = self.streams.get(stream_id)
        if st is None or st.done or st.route is None:
            return
        reason = _check_fields(headers, True)[0]
        if reason is None and st.cl > 0:
            reason = "content-length"
        if reason is not None:
            self._malformed(st, reason)
            return
        self._data(stream_id, "headers", self._fields(headers), True, 0)

    def _data(self, stream_id: int, kind: str, payload: Any, end: bool, flow: int) -> None:
        st = self.streams.get(stream_id)
        if st is None or st.done or st.route is None:
            if flow:
                self.side.acknowledge(stream_id, flow)  # nobody wants it: consumed
            return
        if st.cl >= 0 and kind == "data":
            st.cl -= len(payload)
            if st.cl < 0 or (end and st.cl):
                self.side.acknowledge(stream_id, flow)
                self._malformed(st, "content-length")  # nothing beyond the announced length goes on
                return
        if end:
            st.req_done = True
            if (st.timer is None and self.options.response_timeout and not st.responded and st.route.timeout is None
                    and st.server is not None):  # (not while it waits for a rate-limit token)
                self._arm_timeout(st, self.options.response_timeout)
        elif self.body_timer is not None:
            st.last_in = self.loop.time()
        item = [kind, payload, end, flow]
        if st.replayable:
            st.body.append(item)
            st.body_bytes += len(payload) if kind == "data" else 0
            if st.body_bytes > self.options.max_replay_bytes:
                st.replayable = False
                if st.up_id:
                    st.body = []  # already on its way: not kept any longer
        elif not st.up_id:
            st.body.append(item)  # waiting for the server's stream (bounded by the stream window)
        if st.up is not None and st.up_id and not st.up.send(st, item) and item[3]:
            self.side.acknowledge(stream_id, item[3])  # the server side is gone: consumed
            item[3] = 0

    def credit(self, st: _Stream, n: int) -> None:
        """Give the client back ``n`` bytes of ``st``'s stream window, once its data went on to the
        server. Its body_timeout counts from here too: a server that read slowly held it back, and
        the client may only now send more (see _bodies_due)."""
        st.last_in = self.loop.time()
        self.side.acknowledge(st.down_id, n)
        self.side.flush()

    def release_body(self, st: _Stream) -> None:
        """Give the client back the credit of request data never handed to a server."""
        for item in st.body:
            if item[3]:
                self.side.acknowledge(st.down_id, item[3])
                item[3] = 0
        st.body = []

    # ------------------------------------------------------------------ forwarding

    def _forward(self, st: _Stream) -> None:
        service = st.route.service
        balancer = service.balancer
        server = balancer.pick(st.tried) if st.tried else balancer.pick()
        if server is None and st.tried:
            server = balancer.pick()
        if server is None:
            self._local(st, 503)
            return
        st.server = server
        if not server.h2c:
            H1Upstream(self.loop, server, self.options.connect_timeout).open(st, self)
            return
        up = server.h2conn
        if up is None or up.side.closed or up.goaway:
            up = server.h2conn = H2Upstream(self.loop, server, self.options.connect_timeout)
        up.open(st, self)
        if server.retired:
            # its config was swapped out while the stream waited (rate limit, retry): no plane
            # owns this connection to retire it later, so it closes after its last stream
            up.retire()

    def request_head(self, st: _Stream) -> list[tuple[bytes, bytes]]:
        """The headers a server gets for ``st``."""
        authority = st.authority if st.route.service.pass_host_header else st.server.host_header
        head = [(b":method", st.method), (b":scheme", b"http"), (b":authority", authority), (b":path", st.path)]
        xff = xfp = None
        xfh = xri = xfport = False
        fields = self._fields(st.headers)
        edits = st.route.edits[0] if st.route.edits is not None else None
        decided = frozenset()
        if edits is not None:  # request_headers middlewares (HTTP/2 field names are lower case)
            decided = edits.decided  # forwarded headers the edits set or removed: none of ours (as HTTP/1.1)
            if b"x-forwarded-proto" in decided:  # X-Forwarded-Port reads the client's, as HTTP/1.1 does
                xfp = next((v for n, v in fields if n == b"x-forwarded-proto"), None) or None
            fields = [f for f in fields if f[0] not in edits.drop] + [(n.lower(), v) for n, v in edits.fields]
        for name, value in fields:
            if name in _FORWARDED and name not in decided:
                if name == b"x-forwarded-for":
                    xff = value if xff is None else xff + b", " + value
                    continue
                if name == b"x-forwarded-proto":
                    xfp = value or True
                elif name == b"x-forwarded-host":
                    xfh = True
                elif name == b"x-real-ip":
                    xri = True
                elif name == b"x-forwarded-port":
                    xfport = True
                else:
                    continue  # x-forwarded-server: ours replaces it
            head.append((name, value))
        if st.span is not None:  # the proxy's span is the parent the server sees
            # (a new trace: the request's tracestate was of no trace that goes on)
            dropped = (b"traceparent",) if st.span.continued else (b"traceparent", b"tracestate")
            head = [(n, v) for n, v in head if n not in dropped]
            head.append((b"traceparent", st.span.traceparent))
        head.append((b"x-forwarded-for", self.peer_b if xff is None else xff + b", " + self.peer_b))
        if not xfp and b"x-forwarded-proto" not in decided:
            head.append((b"x-forwarded-proto", b"http"))
        if not xfh and st.authority and b"x-forwarded-host" not in decided:
            head.append((b"x-forwarded-host", st.authority))
        if not xri and b"x-real-ip" not in decided:  # as on HTTP/1.1 (Traefik's forwarded headers)
            head.append((b"x-real-ip", self.peer_b))
        if not xfport and b"x-forwarded-port" not in decided:
            head.append((b"x-forwarded-port", forwarded_port(st.authority, xfp if xfp is not True else None)))
        if b"x-forwarded-server" not in decided:
            head.append((b"x-forwarded-server", self.options.server_name))
        return head

    def attempt_failed(self, st: _Stream, reason: str) -> None:
        """The server could not take the stream, before any response header."""
        if st.done or st.responded:
            return
        st.up = None
        st.up_id = 0
        self.metrics.upstream_error(st.service, reason)
        if reason != LOCAL_LIMIT:  # this process out of descriptors says nothing of the server
            st.route.service.balancer.failed(st.server)
        if st.retries_left > 0 and st.replayable:
            st.retries_left -= 1
            st.retries += 1
            self.metrics.retry(st.service)
            st.tried = (*st.tried, st.server)
            self._forward(st)
        else:
            if reason != LOCAL_LIMIT:
                for breaker in st.route.breakers:  # the request's outcome after its retries (see http.py)
                    breaker.record(None, perf_counter() - st.start)
            self._local(st, 502)
        self.side.flush()

    def _timed_out(self, st: _Stream, due: float) -> None:
        """request_timeout or response_timeout: no response head in time. ``due``: see
        lightmesh.proxy.timers."""
        st.timer = None
        if st.done or st.responded:
            return
        later = put_off_if_late(self.loop, due, self._timed_out, st)  # a response that came meanwhile is read first
        if later is not None:
            st.timer = later
            return
        self.metrics.upstream_error(st.service, "timeout")
        if st.up is not None:
            st.up.cancel(st)  # also a stream still waiting for its server connection
        if st.route is not None:  # a server that does not answer counts against it, as on HTTP/1.1
            seconds = perf_counter() - st.start
            for breaker in st.route.breakers:
                breaker.record(504, seconds)
        self._local(st, 504)
        self.side.flush()

    def _bodies_due(self, due: float) -> None:
        """body_timeout: streams whose client sent no request DATA for that long although its window
        was open get 408; the server's stream is reset. A stream whose response has begun is
        exempt: a gRPC bidi or client-streaming call whose client is quiet for a while is normal,
        and once the server answers, the server decides when the exchange ends. The timer is
        re-armed for the next stream due, while any stream's request is incomplete."""
        self.body_timer = None
        later = put_off_if_late(self.loop, due, self._bodies_due)  # DATA that came meanwhile is read first
        if later is not None:
            self.body_timer = later
            return
        now = self.loop.time()
        limit = self.options.body_timeout
        conn = self.side.conn
        nxt = 0.0
        for st in list(self.streams.values()):
            if st.req_done or st.done or st.route is None or st.responded:
                continue
            due = st.last_in + limit
            if due <= now:
                try:
                    blocked = conn.remote_flow_control_window(st.down_id) <= 0
                except (h2.exceptions.StreamClosedError, h2.exceptions.NoSuchStreamError, KeyError):
                    blocked = False
                if blocked:  # held back by us (its server reads slowly): not the client's delay
                    st.last_in = now
                    due = now + limit
                else:
                    self._body_timed_out(st)
                    continue
            if not nxt or due < nxt:
                nxt = due
        if nxt:
            self.body_timer = self.loop.call_at(nxt, self._bodies_due, nxt)
        self.side.flush()

    def _body_timed_out(self, st: _Stream) -> None:
        """Only streams without a response yet (see _bodies_due): 408, and the server's stream reset."""
        if st.up is not None:
            st.up.cancel(st)
        self._local(st, 408)

    def _malformed(self, st: _Stream, reason: str) -> None:
        """RFC 9113 §8.1.1: a malformed request is a stream error (PROTOCOL_ERROR); nothing more of
        it is forwarded and the connection's other streams go on. Counted as a 400."""
        _log.debug("malformed HTTP/2 request from %s (%s): stream %d reset", self.peer, reason, st.down_id)
        if st.up is not None:
            st.up.cancel(st)
        self.side.reset(st.down_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
        self._finish(st, st.status if st.responded else 400, local=True)

    # ------------------------------------------------------------------ answering

    def _local(self, st: _Stream, status: int, extra: bytes = b"") -> None:
        st.status = status
        st.responded = True
        body = b"%d\n" % status
        headers = [(b":status", b"%d" % status), (b"content-type", b"text/plain"),
                   (b"content-length", b"%d" % len(body))]
        for line in extra.split(b"\r\n"):
            name, sep, value = line.partition(b":")
            if sep:
                headers.append((name.strip().lower(), value.strip()))
        if st.method == b"HEAD":  # the head of what a GET would get, no body (RFC 9110 §9.3.2)
            self.side.queue(st.down_id, "headers", headers, True, 0, None)
        else:
            self.side.queue(st.down_id, "headers", headers, False, 0, None)
            self.side.queue(st.down_id, "data", body, True, 0, None)
        if not st.req_done:
            # the rest of the body is not wanted: RST_STREAM(NO_ERROR) after the answer (queued
            # behind it: sent now, the answer still waiting for window would be dropped with it)
            self.side.queue(st.down_id, "reset", h2.errors.ErrorCodes.NO_ERROR, True, 0, None)
        self._finish(st, status, local=True)

    def response(self, st: _Stream, kind: str, payload: Any, end: bool, ack: int, acked) -> None:
        """From the server: headers, data or trailers for the client's stream."""
        if st.done:
            if acked is not None and ack:
                acked(ack)
            return
        if kind == "head":
            st.status = int(dict(payload).get(b":status", b"0") or 0)
            st.responded = True
            if st.req_done:
                self.release_body(st)  # no retry from here on: the copy kept for one is not needed
            if st.timer is not None:
                st.timer.cancel()
                st.timer = None
            payload = [(n, v) for n, v in payload if n not in _HOP]
            edits = st.route.edits[1] if st.route is not None and st.route.edits is not None else None
            if edits is not None:  # response_headers middlewares
                payload = [f for f in payload if f[0] not in edits.drop] + [(n.lower(), v) for n, v in edits.fields]
            kind = "headers"
        self.side.queue(st.down_id, kind, payload, end, ack, acked)
        if end:
            if not st.req_done:
                # a complete response before the whole request: the rest is not wanted (RFC 9113
                # §8.1), as after a local answer (see _local)
                self.side.queue(st.down_id, "reset", h2.errors.ErrorCodes.NO_ERROR, True, 0, None)
            st.route.service.balancer.succeeded(st.server)
            self._finish(st, st.status)
        self.side.flush()

    def informational(self, st: _Stream, headers: list) -> None:
        """A 1xx response from the server (100 Continue, 103 Early Hints): relayed as it is. The
        server acted on the request and the client saw it: the stream is never tried again."""
        if not st.done and not st.responded:
            st.replayable = False
            self.side.queue(st.down_id, "headers", [(n, v) for n, v in headers if n not in _HOP], False, 0, None)

    def upstream_reset(self, st: _Stream, code: int) -> None:
        """The server reset the stream after its response began: so does the client's."""
        if st.done:
            return
        self.side.reset(st.down_id, code)
        self.metrics.upstream_error(st.service, "reset")
        self._finish(st, st.status or 502)
        self.side.flush()

    def _finish(self, st: _Stream, status: int, local: bool = False) -> None:
        if st.done:
            return
        st.done = True
        if st.timer is not None:
            st.timer.cancel()
            st.timer = None
        self.streams.pop(st.down_id, None)
        self.release_body(st)
        seconds = perf_counter() - st.start
        self.metrics.request(st.service, status, _series_method(st.mstr), seconds)
        if st.route is not None and not local:
            for breaker in st.route.breakers:
                breaker.record(status, seconds)
        if st.span is not None:
            span, st.span = st.span, None
            try:
                span.end(status, st.retries, st.server.url if st.server is not None else "")
            except Exception:
                _log.exception("ending a trace span failed")
        if self.options.access_log:
            from lightmesh.proxy.http import access_log
            access_log(self, st.mstr, st.authority, st.path, st.route, st.service, st.server, status, st.retries,
                       seconds)
        if not self.streams:
            if self.side.queues:
                # what is left waits for the client's window: closing now would cut it short
                # (data_received closes once it went out)
                self._arm_idle()
            elif self.options.connections.draining or self.recycling or (self.peer_goaway and self.batch is None):
                self.close()
            else:
                self._arm_idle()

    def _abandon(self, st: _Stream) -> None:
        """The client reset the stream or went away."""
        if st.up is not None:
            st.up.cancel(st)  # also a stream still waiting for its server connection
        if not st.done:
            self._finish(st, st.status or 499)


class H2Upstream(asyncio.Protocol):
    """One HTTP/2 connection to an h2c server, shared by the streams of every client of the worker."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: Server, connect_timeout: float) -> None:
        self.side = _Side(client_side=True)
        self.loop = loop
        self.server = server
        self.streams: dict[int, tuple[_Stream, H2Downstream]] = {}
        self.waiting: list[tuple[_Stream, H2Downstream]] = []
        self.ready = False
        self.goaway = False  # no new streams here (GOAWAY received, full, or retired)
        self.connect_timeout = connect_timeout
        self.settings_timer: asyncio.Handle | None = None
        self.task = loop.create_task(self._connect(connect_timeout))

    async def _connect(self, timeout: float) -> None:
        try:
            await within(self.loop.create_connection(lambda: self, self.server.host, self.server.port), timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            self._fail_all(connect_failure_reason(exc))

    def connection_made(self, transport: asyncio.Transport) -> None:
        # Streams start once the server's SETTINGS arrived (its concurrent-stream limit is known
        # then); a server that sends none within the connect timeout is not speaking HTTP/2.
        self.side.transport = transport
        # MAX_HEADER_LIST_SIZE announced (h2's decoder limit): beyond it, h2 ends the whole shared
        # connection; a server that knows the limit fails only that response instead
        self.side.conn.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: h2.connection.H2Connection.DEFAULT_MAX_HEADER_LIST_SIZE})
        self.side.conn.initiate_connection()
        self.side.conn.increment_flow_control_window(CONNECTION_WINDOW - 65535)
        self.side.flush()
        due = self.loop.time() + self.connect_timeout
        self.settings_timer = self.loop.call_at(due, self._no_settings, due)

    def _no_settings(self, due: float) -> None:
        if not self.ready and not self.side.closed:
            later = put_off_if_late(self.loop, due, self._no_settings)
            if later is not None:
                self.settings_timer = later
                return
            _log.warning("h2c server %s sent no HTTP/2 SETTINGS in %.1fs", self.server.url, self.connect_timeout)
            self._fail_all("protocol")
            if self.side.transport is not None:
                self.side.transport.abort()

    def _settings_arrived(self) -> None:
        self.ready = True
        if self.settings_timer is not None:
            self.settings_timer.cancel()
            self.settings_timer = None
        waiting, self.waiting = self.waiting, []
        for st, down in waiting:
            self._start(st, down)

    def _elsewhere(self, st: _Stream, down: H2Downstream) -> None:
        """``st`` cannot run on this connection: the server's current connection takes it, or a new one."""
        nxt = self.server.h2conn
        if nxt is None or nxt is self or nxt.goaway or nxt.side.closed:
            if nxt is self:
                self.goaway = True  # replaced: no new streams here, closed after its last one
            nxt = self.server.h2conn = H2Upstream(self.loop, self.server, self.connect_timeout)
        nxt.open(st, down)
        if self.server.retired:
            nxt.retire()  # as in H2Downstream._forward

    def _answered(self, sid: int, st: _Stream) -> None:
        """The server's response on ``sid`` is complete. A request still on its way is of no use
        any more: the server's stream is reset (CANCEL). What waits for its window goes back to
        the client, and the stream stops counting against the server's concurrency limit (a
        server that neither reads nor resets would keep it open for good)."""
        self.streams.pop(sid, None)
        if not st.req_done or sid in self.side.queues:
            self.side.reset(sid)

    def _refused(self, st: _Stream, down: H2Downstream) -> None:
        """The server did not process ``st`` (REFUSED_STREAM, or above the GOAWAY's last stream): try
        it again on another connection (twice at most) without counting a failure of the server."""
        if st.reopened < 2 and st.replayable:
            st.reopened += 1
            self._elsewhere(st, down)
        else:
            down.attempt_failed(st, "reset")

    def connection_lost(self, exc: Exception | None) -> None:
        self.side.closed = True
        self.ready = False
        if self.server.h2conn is self:
            self.server.h2conn = None
        self._fail_all("reset")

    def pause_writing(self) -> None:
        self.side.pause()  # a server that does not read: as a client that does not (H2Downstream)

    def resume_writing(self) -> None:
        self.side.resume()

    def eof_received(self) -> bool | None:
        return None

    def _fail_all(self, reason: str) -> None:
        self.side.closed = True
        if self.server.h2conn is self:
            self.server.h2conn = None
        pending = self.waiting + list(self.streams.values())
        self.waiting = []
        self.streams.clear()
        for stream_id in list(self.side.queues):
            self.side.drop(stream_id)
        for st, down in pending:
            if st.responded:
                down.upstream_reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
            else:
                down.attempt_failed(st, reason)

    def close(self) -> None:
        self.task.cancel()
        if self.settings_timer is not None:
            self.settings_timer.cancel()
            self.settings_timer = None
        if self.server.h2conn is self:
            self.server.h2conn = None
        if self.side.transport is not None and not self.side.transport.is_closing():
            self.side.conn.close_connection()
            self.side.flush()
            self.side.transport.close()

    def retire(self) -> None:
        """No new streams here; closed once the ones in flight are done."""
        self.goaway = True
        if self.server.h2conn is self:
            self.server.h2conn = None
        if not self.streams and not self.waiting:
            self.close()

    # ------------------------------------------------------------------ streams

    def open(self, st: _Stream, down: H2Downstream) -> None:
        st.up = self
        st.up_id = 0
        if self.ready:
            self._start(st, down)
            self.side.flush()
        else:
            self.waiting.append((st, down))

    def _start(self, st: _Stream, down: H2Downstream) -> None:
        conn = self.side.conn
        if not self.streams and conn.remote_settings.max_concurrent_streams == 0:
            # The server takes no streams at all (allowed, RFC 9113 §6.5.2: a server under load).
            # A new connection would say the same: a refusal, not a reason to open one after another.
            down.attempt_failed(st, "refused")
            return
        body = st.body
        try:
            if len(self.streams) >= conn.remote_settings.max_concurrent_streams:  # (h2's count is O(streams))
                raise h2.exceptions.TooManyStreamsError("the server's stream limit")
            stream_id = conn.get_next_available_stream_id()
            # HEADERS go into h2 now, not through the queue: h2 hands out the next stream id again
            # until they are sent, and the queue holds everything while the transport is paused
            conn.send_headers(stream_id, down.request_head(st), end_stream=st.req_done and not body)
        except h2.exceptions.ProtocolError:
            # Full (the server's concurrent-stream limit, or stream ids used up): not a failure of the
            # server. This connection takes no new streams and closes after its last one; the
            # stream and the ones after it go to a new connection. (Also h2 refusing any stream: the
            # connection broke and its transport is on its way out.)
            self.goaway = True
            self._elsewhere(st, down)
            return
        st.up_id = stream_id
        self.streams[stream_id] = (st, down)
        if not st.replayable:
            st.body = []
        for item in body:
            self.send(st, item, flush=False)

    def send(self, st: _Stream, item: list, flush: bool = True) -> bool:
        """A piece of a client's request; its flow-control credit goes back to the client once it
        went out here (or was dropped). False (nothing taken) when the stream is no longer here."""
        entry = self.streams.get(st.up_id)
        if entry is None:
            return False
        kind, payload, end, flow = item
        item[3] = 0
        down = entry[1]

        def acked(n: int) -> None:
            down.credit(st, n)
        self.side.queue(st.up_id, kind, payload, end, flow, acked if flow else None)
        if flush:
            self.side.flush()
        return True

    def cancel(self, st: _Stream) -> None:
        if self.streams.pop(st.up_id, None) is not None:
            self.side.reset(st.up_id)
            self.side.flush()
        else:
            self.waiting = [(s, d) for s, d in self.waiting if s is not st]
        st.up_id = 0
        if self.goaway and not self.streams and not self.waiting:
            self.close()  # full or retired, and that was its last stream

    # ------------------------------------------------------------------ input

    def data_received(self, data: bytes) -> None:
        try:
            events = self.side.conn.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            _log.warning("HTTP/2 protocol error from server %s: %s", self.server.url, exc)
            self.goaway = True  # nothing new here until connection_lost fails what it carries
            if self.server.h2conn is self:
                self.server.h2conn = None
            self.side.flush()
            if self.side.transport is not None:
                self.side.transport.abort()
            return
        touched: set[H2Downstream] = set()
        for ev in events:
            sid = getattr(ev, "stream_id", None)
            entry = self.streams.get(sid) if sid else None
            if isinstance(ev, h2.events.ResponseReceived) and entry is not None:
                st, down = entry
                down.response(st, "head", ev.headers, ev.stream_ended is not None, 0, None)
                touched.add(down)
                if ev.stream_ended is not None:
                    self._answered(sid, st)
            elif isinstance(ev, h2.events.DataReceived):
                if entry is None:
                    self.side.acknowledge(sid, ev.flow_controlled_length)
                    continue
                st, down = entry
                ended = ev.stream_ended is not None

                def acked(n: int, sid=sid) -> None:
                    self.side.acknowledge(sid, n)
                    self.side.flush()
                down.response(st, "data", ev.data, ended, ev.flow_controlled_length, acked)
                touched.add(down)
                if ended:
                    self._answered(sid, st)
            elif isinstance(ev, h2.events.TrailersReceived) and entry is not None:
                st, down = entry
                down.response(st, "headers", [(n, v) for n, v in ev.headers if n not in _HOP], True, 0, None)
                touched.add(down)
                self._answered(sid, st)
            elif isinstance(ev, h2.events.StreamEnded) and entry is not None:
                st, down = entry
                if not st.done:  # ended by an empty DATA frame that carried nothing to relay
                    down.response(st, "data", b"", True, 0, None)
                    touched.add(down)
                self._answered(sid, st)
            elif isinstance(ev, h2.events.StreamReset):
                # what waits for the stream's window never goes: its credit goes back to the client
                # (a retry sends the request again from its own copy)
                self.side.drop(sid)
                if entry is None:
                    continue
                st, down = entry
                self.streams.pop(sid, None)
                st.up_id = 0
                if st.responded:
                    down.upstream_reset(st, ev.error_code)
                elif ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:
                    self._refused(st, down)  # never processed: safe to try again
                else:
                    down.upstream_reset(st, ev.error_code)
                touched.add(down)
            elif isinstance(ev, h2.events.WindowUpdated):
                self.side.window_updated(ev.stream_id)
            elif isinstance(ev, h2.events.RemoteSettingsChanged):
                self.side.cap_encoder_table()
                if not self.ready:
                    self._settings_arrived()
            elif isinstance(ev, h2.events.InformationalResponseReceived) and entry is not None:
                st, down = entry
                down.informational(st, ev.headers)
                touched.add(down)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                # GOAWAY: streams above the last one it processed never ran there
                self.goaway = True
                if self.server.h2conn is self:
                    self.server.h2conn = None
                last = ev.last_stream_id or 0
                for stream_id in [s for s in self.streams if s > last]:
                    st, down = self.streams.pop(stream_id)
                    self.side.reset(stream_id)  # never processed: what waits for it goes back (credit)
                    st.up_id = 0
                    if st.responded:
                        down.upstream_reset(st, h2.errors.ErrorCodes.REFUSED_STREAM)
                    else:
                        self._refused(st, down)
                    touched.add(down)
        self.side.refill()
        self.side.flush()
        for down in touched:
            down.side.flush()
        if self.goaway and not self.streams and not self.waiting:
            self.close()  # replaced for new streams; its last stream is done


class H1Upstream(asyncio.Protocol):
    """One HTTP/2 stream relayed to a server that speaks HTTP/1.1 (scheme ``http``/``https``), over
    a connection of its own, closed after the response: the request is written as HTTP/1.1
    (``Host`` from ``:authority``, cookies joined, chunked when its length is unknown, trailers kept),
    the response read with llhttp and sent on as HTTP/2 headers, data and trailers. Flow control:
    the client's data is acknowledged once written here, except while the transport's buffer is
    over its high-water mark (a server that reads slowly or not at all): that credit is held until
    the buffer drains, so the client stops within its stream window. Reading from the server pauses
    while more than ``_H1_READ_AHEAD`` bytes wait for the client's window."""

    def __init__(self, loop: asyncio.AbstractEventLoop, server: Server, connect_timeout: float) -> None:
        self.loop = loop
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.st: _Stream | None = None
        self.down: H2Downstream | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.hop = _H1_HOP  # fields not relayed: hop-by-hop ones and those the response's Connection names
        self.head_sent = False
        self.chunked = False
        self.held = 0  # response bytes handed to the client side and not yet sent there
        self.paused = False
        self.done = False
        self.close_delimited = False  # the response body ends when the server closes
        self.connect_timeout = connect_timeout
        self.wpaused = False  # the transport's buffer is over its high-water mark
        self.owed = 0  # the client's credit held meanwhile (see the class docstring)

    # ------------------------------------------------------------------ request

    def open(self, st: _Stream, down: H2Downstream) -> None:
        self.st, self.down = st, down
        st.up = self  # type: ignore[assignment]
        st.up_id = 0
        self.task = self.loop.create_task(self._connect())

    async def _connect(self) -> None:
        from lightmesh.proxy.http import _upstream_tls
        tls = _upstream_tls() if self.server.tls else None
        try:
            await within(self.loop.create_connection(lambda: self, self.server.host, self.server.port, ssl=tls),
                         self.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            st, down = self.st, self.down
            if st is not None and st.up is self:
                down.attempt_failed(st, connect_failure_reason(exc))

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        st, down = self.st, self.down
        if st is None or st.done or st.up is not self:
            transport.close()
            return
        head = down.request_head(st)
        fields = [(n, v) for n, v in head if n[:1] != b":" and n not in _H1_HOP]
        cookies = [v for n, v in fields if n == b"cookie"]
        fields = [(n, v) for n, v in fields if n != b"cookie"]
        if cookies:
            fields.append((b"cookie", b"; ".join(cookies)))  # RFC 9113 §8.2.3
        pseudo = dict(head[:4])
        known_length = any(n == b"content-length" for n, _ in fields)
        has_body = bool(st.body) or not st.req_done
        self.chunked = has_body and not known_length
        lines = [b"%s %s HTTP/1.1\r\nhost: %s\r\n" % (pseudo[b":method"], pseudo[b":path"], pseudo[b":authority"])]
        lines += [b"%s: %s\r\n" % f for f in fields]
        if self.chunked:
            lines.append(b"transfer-encoding: chunked\r\n")
        lines.append(b"connection: close\r\n\r\n")
        transport.write(b"".join(lines))
        st.up_id = 1  # the request is on its way: more of its body goes straight here
        body = st.body
        if not st.replayable:
            st.body = []
        for item in body:
            self.send(st, item)
        if st.req_done and not body and self.chunked:
            transport.write(b"0\r\n\r\n")

    def send(self, st: _Stream, item: list) -> bool:
        """A piece of the client's request (data or trailers); its flow-control credit goes back now:
        the transport buffers it (uvloop writes at once, or buffers and pauses us). False (nothing
        taken) once the connection is closing."""
        t = self.transport
        if t is None or t.is_closing():
            return False
        kind, payload, end, flow = item
        item[3] = 0
        if kind == "data":
            if payload:
                t.write(b"%x\r\n%s\r\n" % (len(payload), payload) if self.chunked else payload)
            if end and self.chunked:
                t.write(b"0\r\n\r\n")
        elif self.chunked:  # trailers
            t.write(b"0\r\n" + b"".join(b"%s: %s\r\n" % f for f in payload if f[0] not in _H1_HOP) + b"\r\n")
        if flow:
            if self.wpaused:
                self.owed += flow  # given back when the server has read (resume_writing)
            else:
                self.down.credit(st, flow)
        return True

    def _give_back(self) -> None:
        """The credit held for a server that was not reading goes back to the client: the server
        has read (or the attempt is over, and a retry must be able to read the rest)."""
        owed, self.owed = self.owed, 0
        st = self.st
        if owed and st is not None and self.down is not None:
            self.down.credit(st, owed)

    def cancel(self, st: _Stream) -> None:
        self.done = True
        self.task.cancel()
        st.up_id = 0
        if self.transport is not None:
            self.transport.abort()
        self._give_back()

    # ------------------------------------------------------------------ response

    def data_received(self, data: bytes) -> None:
        if self.st is not None:
            self.st.replayable = False  # a response byte came: the server acted, no retry after this
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail("protocol")
        except httptools.HttpParserError:
            self._fail("protocol")
        if self.down is not None:
            self.down.side.flush()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        st = self.st
        hop = _H1_HOP
        for name, value in self.headers:
            if name == b"connection":  # RFC 9110 §7.6.1: the fields it names are hop-by-hop too
                hop = hop | {t.strip().lower() for t in value.split(b",")}
        if status < 200:  # interim: relayed as an informational response (101 is not HTTP/2's)
            if status != 101 and st is not None and not st.done:
                self.down.informational(st, [(b":status", b"%d" % status)] + [
                    (n, v) for n, v in self.headers if n not in hop and n != b"host"])
            self.headers = []
            return
        if st is None or st.done:
            return
        self.hop = hop
        names = {n for n, _ in self.headers}
        te = b", ".join(v for n, v in self.headers if n == b"transfer-encoding")
        head = [(b":status", b"%d" % status)] + [(n, v) for n, v in self.headers if n not in hop and n != b"host"]
        self.headers = []
        if st.method == b"HEAD" or status in (204, 304):
            # no body, whatever the head says (llhttp would wait for the Content-Length it announces)
            self.head_sent = True
            self.done = True
            self.down.response(st, "head", head, True, 0, None)
            self._answered()
            return
        if te and te.strip().lower() != b"chunked":
            # a body under codings other than chunked (gzip) cannot go to an HTTP/2 client, which has
            # no transfer codings: 502, as nginx and Go answer it (a HEAD/204/304 has no body: above)
            raise httptools.HttpParserError("unsupported Transfer-Encoding")
        self.head_sent = True
        self.close_delimited = b"content-length" not in names and b"transfer-encoding" not in names
        self.down.response(st, "head", head, False, 0, None)

    def on_body(self, body: bytes) -> None:
        st = self.st
        if st is None or st.done:
            return
        self.held += len(body)
        self.down.response(st, "data", body, False, len(body), self._sent)
        if self.held > _H1_READ_AHEAD and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def _sent(self, n: int) -> None:
        self.held -= n
        if self.paused and self.held <= _H1_READ_AHEAD // 2 and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def on_message_complete(self) -> None:
        if not self.head_sent:
            return  # the end of an interim response
        self.done = True
        st = self.st
        if st is not None and not st.done:
            trailers = [(n, v) for n, v in self.headers if n not in self.hop]  # llhttp: fields after the body
            if trailers:
                self.down.response(st, "headers", trailers, True, 0, None)
            else:
                self.down.response(st, "data", b"", True, 0, None)
        self._answered()

    def _answered(self) -> None:
        """The response is complete: the connection ends. Request data the server has not read by
        now is of no use to anyone: the connection is cut rather than left to wait for a server
        that may never read it, and the client's held credit goes back (it may finish sending,
        into the void, instead of waiting for a window that would never open)."""
        t = self.transport
        if t is not None:
            if t.get_write_buffer_size():
                t.abort()
            else:
                t.close()
        self._give_back()

    def connection_lost(self, exc: Exception | None) -> None:
        self._give_back()
        if self.done:
            return
        st = self.st
        if self.close_delimited and exc is None and st is not None and not st.done:
            self.done = True  # the close is the end of the body
            self.down.response(st, "data", b"", True, 0, None)
            self.down.side.flush()
            return
        self._fail("reset")

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.wpaused = True

    def resume_writing(self) -> None:
        self.wpaused = False
        self._give_back()

    def _fail(self, reason: str) -> None:
        self.done = True
        st, down = self.st, self.down
        if self.transport is not None:
            self.transport.abort()
        self._give_back()
        if st is None or st.done or st.up is not self:
            return
        st.up_id = 0
        if self.head_sent:
            down.upstream_reset(st, h2.errors.ErrorCodes.INTERNAL_ERROR)
        else:
            down.attempt_failed(st, reason)
