"""HTTP/2 cleartext through the proxy (what gRPC needs), on loopback with real h2 peers.

A client opening with the HTTP/2 preface is served over HTTP/2; its streams reach ``h2c://``
servers over one multiplexed connection: headers (with the forwarded ones), bodies both ways under
flow control, trailers, resets, retries on an unreachable server, the allow-list, timeouts,
metrics; ``http://`` servers get the streams translated to HTTP/1.1. HTTP/1.1 clients on the same listener are unaffected, and hostile HTTP/2 (hypothesis-made
frame sequences, valid or not) never breaks the listener."""

from __future__ import annotations

import asyncio
import functools
import socket
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .backends import (Backend, ProxyUnderTest, ScriptedUpstream, closed_port, on_uvloop, pattern, request,
                       simple_config)


class H2Server:
    """An h2c server: ``/echo`` answers the request body with gRPC-style trailers, ``/big?size=N``
    N bytes, ``/reset`` resets the stream, ``/slow`` answers after 0.3 s, ``/hang`` never answers,
    ``/continue`` sends an informational 100 as soon as the request head arrives, then echoes."""

    def __init__(self, max_streams: int | None = None, refuse: int = 0, goaway_on_slow: bool = False) -> None:
        self.max_streams = max_streams  # the server's SETTINGS_MAX_CONCURRENT_STREAMS
        self.refuse = refuse  # the first N streams are refused (RST_STREAM REFUSED_STREAM)
        # a ``/slow`` request starts a graceful shutdown: GOAWAY (last stream: that one), which it finishes
        self.goaway_on_slow = goaway_on_slow
        self.server: asyncio.AbstractServer | None = None
        self.connections = 0
        self.open_connections = 0
        self.protocols: list = []  # every connection's protocol (its h2 connection: ``.conn``)
        self.requests: list[dict] = []
        self.resets_seen = 0
        self.data_sent = 0  # response body bytes handed to h2 (all streams)
        self.url = ""

    async def __aenter__(self) -> H2Server:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _H2ServerProtocol(self), "127.0.0.1", 0)
        self.url = f"h2c://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


@functools.lru_cache(maxsize=8)
def _big(size: int) -> bytes:
    return bytes(i % 251 for i in range(size))


class _H2ServerProtocol(asyncio.Protocol):
    def __init__(self, owner: H2Server) -> None:
        self.owner = owner
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.bodies: dict[int, list[bytes]] = {}
        self.heads: dict[int, dict] = {}
        self.pending: dict[int, tuple[bytes, list]] = {}  # stream → (data left, trailers)
        self.answered: set[int] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.connections += 1
        self.owner.open_connections += 1
        self.owner.protocols.append(self)
        if self.owner.max_streams is not None:
            self.conn.local_settings = h2.settings.Settings(
                client=False, initial_values={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.owner.max_streams})
        self.conn.initiate_connection()
        self.transport.write(self.conn.data_to_send())

    def connection_lost(self, exc) -> None:
        self.owner.open_connections -= 1

    def data_received(self, data: bytes) -> None:
        for ev in self.conn.receive_data(data):
            try:
                self._event(ev)
            except (h2.exceptions.StreamClosedError, h2.exceptions.StreamIDTooLowError):
                self.pending.pop(getattr(ev, "stream_id", 0), None)  # the peer reset it in this same read
        self.transport.write(self.conn.data_to_send())

    def _event(self, ev) -> None:
        if True:
            if isinstance(ev, h2.events.RequestReceived) and self.owner.refuse > 0:
                self.owner.refuse -= 1
                self.conn.reset_stream(ev.stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            elif isinstance(ev, h2.events.RequestReceived):
                head = dict(ev.headers)
                head["_all"] = ev.headers
                self.heads[ev.stream_id] = head
                self.bodies[ev.stream_id] = []
                self.owner.requests.append(head)
                if head[b":path"] == b"/continue":
                    self.conn.send_headers(ev.stream_id, [(b":status", b"100")])
                if head[b":path"] == b"/early":  # the response head at once, the rest after the request
                    self.conn.send_headers(ev.stream_id, [(b":status", b"200")])
                if ev.stream_ended is not None:
                    self._answer(ev.stream_id)
            elif isinstance(ev, h2.events.DataReceived):
                if ev.stream_id not in self.bodies:  # a refused stream
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    return
                self.bodies[ev.stream_id].append(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if ev.stream_ended is not None:
                    self._answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                if ev.stream_id in self.heads:
                    self._answer(ev.stream_id)
            elif isinstance(ev, h2.events.StreamReset):
                self.owner.resets_seen += 1
                self.pending.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.WindowUpdated):
                for sid in list(self.pending):
                    self._pump(sid)

    def _answer(self, sid: int) -> None:
        if sid in self.answered:
            return
        self.answered.add(sid)
        head = self.heads[sid]
        path = head[b":path"]
        body = b"".join(self.bodies.get(sid, []))
        if path == b"/hang":
            self.pending[sid] = (b"", None)
            return
        if path == b"/slow":
            if self.owner.goaway_on_slow:  # written here: h2 would send nothing more after its own
                self.transport.write(self.conn.data_to_send())
                self.transport.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", sid, 0))

            def later() -> None:
                if self.transport.is_closing():
                    return
                try:
                    self.conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
                except h2.exceptions.ProtocolError:
                    return  # reset by the peer meanwhile
                self.transport.write(self.conn.data_to_send())
            asyncio.get_running_loop().call_later(0.3, later)
            return
        if path == b"/reset":
            self.conn.reset_stream(sid, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        if path == b"/early":
            self.pending[sid] = (body, [(b"grpc-status", b"0")])
            self._pump(sid)
            return
        if path.startswith(b"/big"):
            size = int(path.split(b"=")[1])
            data = _big(size)
            self.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % size)])
            self.pending[sid] = (data, None)
        else:
            self.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                                         (b"x-echo", b"1")])
            self.pending[sid] = (body, [(b"grpc-status", b"0"), (b"grpc-message", b"ok"),
                                        (b"x-seen-xff", head.get(b"x-forwarded-for", b"-"))])
        self._pump(sid)

    def _pump(self, sid: int) -> None:
        try:
            self._pump_stream(sid)
        except h2.exceptions.StreamClosedError:
            self.pending.pop(sid, None)  # reset by the peer meanwhile

    def _pump_stream(self, sid: int) -> None:
        data, trailers = self.pending[sid]
        if trailers is None and not data and self.heads[sid][b":path"] == b"/hang":
            return
        while data:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.pending[sid] = (data, trailers)
                return
            self.conn.send_data(sid, data[:window])
            self.owner.data_sent += min(window, len(data))
            data = data[window:]
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
        else:
            self.conn.end_stream(sid)
        del self.pending[sid]


class H2Client:
    """A prior-knowledge HTTP/2 client on a raw connection."""

    def __init__(self, reader, writer) -> None:
        self.reader, self.writer = reader, writer
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.results: dict[int, dict] = {}
        self.pending_body: dict[int, bytes] = {}
        self.buf = bytearray()
        # in order: ("goaway", last stream id) and ("status", stream id, :status of the response)
        self.log: list[tuple] = []

    @classmethod
    async def connect(cls, port: int) -> H2Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        client.conn.initiate_connection()
        writer.write(client.conn.data_to_send())
        return client

    def start(self, path: str, method: str = "POST", body: bytes = b"", authority: str = "svc.ns.lightmesh",
              headers: list | None = None, more: bool = False) -> int:
        """Open a stream; ``more``: the request stays open after ``body`` (see ``send``)."""
        sid = self.conn.get_next_available_stream_id()
        head = [(b":method", method.encode()), (b":scheme", b"http"), (b":authority", authority.encode()),
                (b":path", path.encode()), (b"te", b"trailers"), (b"content-type", b"application/grpc")]
        if more:
            self.conn.send_headers(sid, head + (headers or []))
            self.results[sid] = {"headers": None, "data": [], "trailers": None, "ended": False, "reset": None,
                                 "info": []}
            if body:
                self.conn.send_data(sid, body)
            self.writer.write(self.conn.data_to_send())
            return sid
        self.conn.send_headers(sid, head + (headers or []), end_stream=not body)
        self.results[sid] = {"headers": None, "data": [], "trailers": None, "ended": False, "reset": None,
                             "info": []}
        if body:
            self.pending_body[sid] = body
            self._pump()
        self.writer.write(self.conn.data_to_send())
        return sid

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        """More of an open request's body (small: within the stream's window)."""
        self.conn.send_data(sid, data, end_stream=end)
        self.writer.write(self.conn.data_to_send())

    def reset(self, sid: int) -> None:
        self.pending_body.pop(sid, None)
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
        self.writer.write(self.conn.data_to_send())

    def _pump(self) -> None:
        for sid, body in list(self.pending_body.items()):
            try:
                self._pump_stream(sid, body)
            except h2.exceptions.StreamClosedError:
                self.pending_body.pop(sid, None)  # reset meanwhile: nothing more to send on it

    def _pump_stream(self, sid: int, body: bytes) -> None:
        while body:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                break
            self.conn.send_data(sid, body[:window])
            body = body[window:]
        if body:
            self.pending_body[sid] = body
        else:
            del self.pending_body[sid]
            self.conn.end_stream(sid)

    async def wait(self, sids: list[int], timeout: float = 10.0) -> list[dict]:
        await self.until(lambda: all(self.results[s]["ended"] or self.results[s]["reset"] is not None
                                     for s in sids), timeout)
        return [self.results[s] | {"body": b"".join(self.results[s]["data"])} for s in sids]

    async def until(self, done, timeout: float = 10.0) -> None:
        """Read and handle what the proxy sends until ``done()`` (TimeoutError after ``timeout``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done():
            data = await asyncio.wait_for(self.reader.read(65536), max(0.01, deadline - loop.time()))
            if not data:
                raise ConnectionError("the proxy closed the connection")
            self.received(data)

    def received(self, data: bytes) -> None:
        """Handle bytes from the proxy (responses, data, trailers, resets, window updates). GOAWAY
        frames are only noted in ``log``: h2 would take nothing more after one, while a draining
        proxy still finishes the streams in flight (as real clients let it)."""
        self.buf += data
        chunk = bytearray()
        while len(self.buf) >= 9:
            end = 9 + int.from_bytes(self.buf[:3], "big")
            if len(self.buf) < end:
                break
            frame = bytes(self.buf[:end])
            del self.buf[:end]
            if frame[3] == 7:  # GOAWAY
                self._events(bytes(chunk))
                chunk.clear()
                self.log.append(("goaway", int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF))
            else:
                chunk += frame
        self._events(bytes(chunk))

    def _events(self, data: bytes) -> None:
        if not data:
            return
        for ev in self.conn.receive_data(data):
            r = self.results.get(getattr(ev, "stream_id", 0))
            if isinstance(ev, h2.events.ResponseReceived):
                r["headers"] = dict(ev.headers)
                self.log.append(("status", ev.stream_id, r["headers"][b":status"]))
            elif isinstance(ev, h2.events.InformationalResponseReceived):
                r["info"].append(dict(ev.headers))
            elif isinstance(ev, h2.events.DataReceived):
                r["data"].append(ev.data)
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                r["trailers"] = dict(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset) and r is not None:
                r["reset"] = ev.error_code
            elif isinstance(ev, h2.events.WindowUpdated):
                self._pump()
        self.writer.write(self.conn.data_to_send())

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except ConnectionError:
            pass


@on_uvloop
async def test_grpc_style_calls_relayed_with_trailers_over_one_upstream_connection():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await H2Client.connect(p.port)
        sids = [client.start("/pkg.Svc/Call", body=b"\x00\x00\x00\x00\x05hello%d" % i) for i in range(20)]
        results = await client.wait(sids)
        for i, r in enumerate(results):
            assert r["headers"][b":status"] == b"200" and r["headers"][b"x-echo"] == b"1"
            assert r["body"] == b"\x00\x00\x00\x00\x05hello%d" % i
            assert r["trailers"] == {b"grpc-status": b"0", b"grpc-message": b"ok", b"x-seen-xff": b"127.0.0.1"}
        seen = up.requests[0]
        assert seen[b":authority"] == b"svc.ns.lightmesh" and seen[b"te"] == b"trailers"
        assert seen[b"x-forwarded-proto"] == b"http" and seen[b"x-forwarded-host"] == b"svc.ns.lightmesh"
        assert (seen[b"x-real-ip"], seen[b"x-forwarded-port"]) == (b"127.0.0.1", b"80")
        assert seen[b"x-forwarded-server"] == socket.gethostname().encode()
        assert up.connections == 1  # multiplexed
        await client.close()
        assert p.metrics.requests[("svc", "200", "POST")] == 20


@on_uvloop
async def test_large_bodies_both_ways_under_flow_control():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await H2Client.connect(p.port)
        upload = bytes(i % 253 for i in range(1 << 20))
        a = client.start("/echo", body=upload)
        b = client.start("/big?size=3000000", method="GET")
        ra, rb = await client.wait([a, b], timeout=30)
        assert ra["body"] == upload and ra["trailers"][b"grpc-status"] == b"0"
        assert rb["body"] == bytes(i % 251 for i in range(3000000))
        # the connection keeps working: no flow-control credit was lost on the way
        c = client.start("/echo", body=b"again")
        (rc,) = await client.wait([c])
        assert rc["body"] == b"again"
        await client.close()


@on_uvloop
async def test_unreachable_server_retried_else_502_and_a_plain_http_service_translated():
    mws = [{"type": "retry", "name": "retry", "attempts": 2}]
    async with H2Server() as up, Backend() as http1:
        dead = f"h2c://127.0.0.1:{closed_port()}"
        cfg = simple_config({"svc": [dead, up.url], "solo": [dead], "old": [http1.url]},
                            routers=[{"name": "r", "service": "svc", "middlewares": ["retry"],
                                      "match": {"hosts": ["svc.ns.lightmesh"]}},
                                     {"name": "s", "service": "solo", "match": {"hosts": ["solo.ns.lightmesh"]}},
                                     {"name": "o", "service": "old", "match": {"hosts": ["old.ns.lightmesh"]}}],
                            middlewares=mws)
        async with ProxyUnderTest(cfg) as p:
            client = await H2Client.connect(p.port)
            sids = [client.start("/echo", body=b"x%d" % i) for i in range(4)]
            for r in await client.wait(sids):
                assert r["headers"][b":status"] == b"200" and r["body"][:1] == b"x"
            (solo,) = await client.wait([client.start("/echo", body=b"y", authority="solo.ns.lightmesh")])
            assert solo["headers"][b":status"] == b"502"
            (old,) = await client.wait([client.start("/", method="GET", authority="old.ns.lightmesh")])
            assert old["headers"][b":status"] == b"200"  # an http:// service: spoken to in HTTP/1.1
            (none,) = await client.wait([client.start("/", method="GET", authority="nobody.example")])
            assert none["headers"][b":status"] == b"404"
            await client.close()
            assert p.metrics.upstream_errors[("svc", "connect")] >= 1
            assert p.metrics.requests[("solo", "502", "POST")] == 1
            # HTTP/1.1 on the same listener is untouched
            assert (await request(p.port, host="old.ns.lightmesh")).status == 200


@on_uvloop
async def test_allow_list_timeout_and_resets_both_ways():
    mws = [{"type": "allow_list", "name": "acl", "source_ranges": ["10.0.0.0/8"]},
           {"type": "request_timeout", "name": "to", "seconds": 0.3}]
    async with H2Server() as up:
        cfg = simple_config({"svc": [up.url], "denied": [up.url]},
                            routers=[{"name": "r", "service": "svc", "middlewares": ["to"],
                                      "match": {"hosts": ["svc.ns.lightmesh"]}},
                                     {"name": "d", "service": "denied", "middlewares": ["acl"],
                                      "match": {"hosts": ["denied.ns.lightmesh"]}}],
                            middlewares=mws)
        async with ProxyUnderTest(cfg) as p:
            client = await H2Client.connect(p.port)
            (denied,) = await client.wait([client.start("/echo", body=b"z", authority="denied.ns.lightmesh")])
            assert denied["headers"][b":status"] == b"403"
            (hung,) = await client.wait([client.start("/hang", method="GET")])
            assert hung["headers"][b":status"] == b"504"
            (reset,) = await client.wait([client.start("/reset", method="GET")])
            assert reset["reset"] is not None  # the server's reset reaches the client
            sid = client.start("/hang", method="GET")
            await asyncio.sleep(0.1)
            client.reset(sid)  # the client gives up: the server's stream is reset too
            for _ in range(100):
                if up.resets_seen >= 2:
                    break
                await asyncio.sleep(0.02)
            assert up.resets_seen >= 2  # the timed-out stream and the one the client reset
            (ok,) = await client.wait([client.start("/echo", body=b"still fine")])
            assert ok["body"] == b"still fine"
            await client.close()
            assert p.metrics.requests[("denied", "403", "POST")] == 1
            assert p.metrics.requests[("svc", "504", "GET")] == 1


@on_uvloop
async def test_preface_split_across_reads_and_garbage_after_it():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        client = H2Client(reader, writer)
        client.conn.initiate_connection()
        hello = client.conn.data_to_send()
        writer.write(hello[:5])  # "PRI *" alone in the first read
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(hello[5:])
        (r,) = await client.wait([client.start("/echo", body=b"split")])
        assert r["body"] == b"split"
        await client.close()
        # not HTTP/2 after the preface: the connection is closed, nothing reaches the server
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x04\x09\x00\x00\x00\x00\x00garbage-frames")
        assert await asyncio.wait_for(reader.read(), 5) is not None  # EOF (after a GOAWAY)
        writer.close()
        before = len(up.requests)
        # and a method that only starts like the preface is plain HTTP/1.1
        assert (await request(p.port, "PUT", "/", host="svc")).status == 502  # an h2c server does not speak 1.1
        assert len(up.requests) == before
        assert len(p.options.connections) <= 1


@on_uvloop
async def test_drain_refuses_new_streams_and_finishes_the_ones_in_flight():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        idle = await H2Client.connect(p.port)
        (r,) = await idle.wait([idle.start("/echo", body=b"hi")])
        assert r["body"] == b"hi"
        busy = await H2Client.connect(p.port)
        slow = busy.start("/slow", method="GET")
        await asyncio.sleep(0.05)
        drained = asyncio.ensure_future(p.options.connections.drain(5.0))
        await asyncio.sleep(0.05)
        late = busy.start("/echo", body=b"too late")
        r_slow, r_late = await busy.wait([slow, late])
        assert r_slow["headers"][b":status"] == b"200"
        assert r_late["reset"] == h2.errors.ErrorCodes.REFUSED_STREAM
        assert await drained is True
        assert await asyncio.wait_for(idle.reader.read(), 2) is not None  # closed (GOAWAY, then EOF)
        assert await asyncio.wait_for(busy.reader.read(), 2) is not None
        assert len(p.options.connections) == 0
        await idle.close()
        await busy.close()


@on_uvloop
async def test_each_stream_gets_a_span_and_the_server_sees_it_as_parent():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lightmesh.proxy.http import HTTPOptions
    from lightmesh.proxy.tracing import make_tracer

    exporter = InMemorySpanExporter()
    options = HTTPOptions(tracer=make_tracer("unused", "proxy-test", exporter=exporter, batch=False))
    incoming = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=options) as p:
        client = await H2Client.connect(p.port)
        (r,) = await client.wait([client.start("/pkg.Svc/Call?x=1", body=b"t", headers=[(b"traceparent", incoming)])])
        assert r["headers"][b":status"] == b"200"
        await client.close()
    (span,) = exporter.get_finished_spans()
    ctx = span.get_span_context()
    assert ctx.trace_id == 0x0af7651916cd43dd8448eb211c80319c and span.parent.span_id == 0xb7ad6b7169203331
    assert span.attributes["http.target"] == "/pkg.Svc/Call" and span.attributes["http.status_code"] == 200
    assert span.attributes["upstream"] == up.url
    sent = [v for n, v in up.requests[-1]["_all"] if n == b"traceparent"]
    assert sent == [f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01".encode()]


@on_uvloop
async def test_a_new_trace_does_not_carry_the_requests_tracestate():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lightmesh.proxy.http import HTTPOptions
    from lightmesh.proxy.tracing import make_tracer

    options = HTTPOptions(tracer=make_tracer("unused", "proxy-test", exporter=InMemorySpanExporter(), batch=False))
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=options) as p:
        client = await H2Client.connect(p.port)
        for headers in ([(b"tracestate", b"k=v")], [(b"traceparent", b"garbage"), (b"tracestate", b"k=v")]):
            (r,) = await client.wait([client.start("/", body=b"t", headers=headers)])
            assert r["headers"][b":status"] == b"200"
            sent = dict(up.requests[-1]["_all"])
            assert b"traceparent" in sent and b"tracestate" not in sent, sent
        await client.close()


# --------------------------------------------------------------------------- hostile HTTP/2 (hypothesis)

_names = st.sampled_from([b":method", b":path", b":authority", b":scheme", b":status", b"te", b"connection",
                          b"content-length", b"host", b"x-a", b"Upper", b"", b"grpc-status"])
_values = st.sampled_from([b"GET", b"POST", b"/", b"/echo", b"svc.ns.lightmesh", b"http", b"trailers", b"gzip",
                           b"5", b"-1", b"", b"a\r\nb", b"\x00", b"x" * 300])
_header_blocks = st.lists(st.tuples(_names, _values), max_size=8).map(lambda h: hpack.Encoder().encode(h))
_stream_ids = st.sampled_from([0, 1, 2, 3, 5, 7, 2**31 - 1])


def _frame(kind: int, sid: int, block: bytes, flags: int, n: int) -> bytes:
    """One raw frame, valid or not (hyperframe refuses to build invalid ones)."""
    if kind in (1, 9):  # HEADERS, CONTINUATION: a header block
        payload = block
    elif kind == 0:  # DATA
        payload = b"d" * (n % 300)
    elif kind in (3, 8):  # RST_STREAM code, WINDOW_UPDATE increment
        payload = struct.pack(">I", n)
    elif kind == 4:  # SETTINGS: one entry, or a broken length
        payload = struct.pack(">HI", 1 + n % 8, n) if n % 5 else b"\x01"
    elif kind == 7:  # GOAWAY
        payload = struct.pack(">II", sid, n % 14)
    else:  # PRIORITY, PING and unknown types
        payload = struct.pack(">Q", n)[: 5 + n % 4]
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", sid & 0x7FFFFFFF) + payload


_frames = st.lists(st.builds(_frame, st.sampled_from([0, 1, 2, 3, 4, 6, 7, 8, 9, 0x42]), _stream_ids,
                             _header_blocks, st.sampled_from([0, 1, 4, 5, 8, 0x20, 0x25, 0xFF]),
                             st.integers(0, 2**32 - 1)),
                   max_size=12).map(b"".join)
_h2_garbage = st.one_of(_frames, st.binary(max_size=512))


@pytest.fixture(scope="module")
def live_h2():
    loop = uvloop.new_event_loop()
    server = H2Server()
    holder = {}

    async def start():
        await server.__aenter__()
        holder["proxy"] = ProxyUnderTest(simple_config([server.url]))
        await holder["proxy"].__aenter__()
    loop.run_until_complete(start())
    yield loop, holder["proxy"]

    async def stop():
        await holder["proxy"].__aexit__(None, None, None)
        await server.__aexit__(None, None, None)
    loop.run_until_complete(stop())
    loop.close()


async def _throw_h2(port: int, data: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(PREFACE_AND_SETTINGS + data)
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(65536), 0.1)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()


PREFACE_AND_SETTINGS = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_h2_garbage)
def test_hostile_http2_never_breaks_the_listener(live_h2, data):
    loop, proxy = live_h2
    loop.run_until_complete(asyncio.wait_for(_throw_h2(proxy.port, data), 5))
    assert not proxy.loop_errors, proxy.loop_errors[:1]


def test_http2_still_served_after_the_garbage(live_h2):
    loop, proxy = live_h2

    async def call():
        client = await H2Client.connect(proxy.port)
        (r,) = await client.wait([client.start("/echo", body=b"after")])
        await client.close()
        return r
    r = loop.run_until_complete(asyncio.wait_for(call(), 10))
    assert r["body"] == b"after"
    assert not proxy.loop_errors


@on_uvloop
async def test_http2_clients_reach_http1_services_translated():
    async with Backend("h1") as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await H2Client.connect(p.port)
        cookie = [(b"cookie", b"a=1"), (b"cookie", b"b=2")]
        get = client.start("/hello?x=1", method="GET", headers=cookie)
        post = client.start("/echo", body=b"posted body")
        big = client.start("/big?size=1048576", method="GET")
        chunked = client.start("/chunked?n=4&size=3", method="GET")
        head = client.start("/big?size=10", method="HEAD")
        missing = client.start("/status/404", method="GET")
        nolength = client.start("/nolength", method="GET")
        r_get, r_post, r_big, r_chunked, r_head, r_missing, r_nolength = await client.wait(
            [get, post, big, chunked, head, missing, nolength], timeout=20)
        assert r_get["headers"][b":status"] == b"200" and r_get["headers"][b"x-backend"] == b"h1"
        assert r_get["body"].startswith(b"GET /hello?x=1 HTTP/1.1\r\n")
        seen = {r.path: r for r in b.requests}
        assert seen["/hello?x=1"].header("Host") == "svc.ns.lightmesh"
        assert seen["/hello?x=1"].header("Cookie") == "a=1; b=2"
        assert seen["/hello?x=1"].header("X-Forwarded-For") == "127.0.0.1"
        assert seen["/hello?x=1"].header("TE") is None  # hop-by-hop in HTTP/1.1
        assert r_post["body"].endswith(b"\r\n\r\nposted body") and seen["/echo"].body == b"posted body"
        assert seen["/echo"].header("Transfer-Encoding") == "chunked"  # length unknown up front
        assert r_big["body"] == pattern(1 << 20)
        assert r_chunked["body"] == b"AAABBBCCCDDD" and b"transfer-encoding" not in r_chunked["headers"]
        assert r_head["headers"][b":status"] == b"200" and r_head["body"] == b""
        assert r_missing["headers"][b":status"] == b"404"
        assert r_nolength["body"] == b"close-delimited body from h1"
        await client.close()
        assert p.metrics.requests[("svc", "200", "GET")] == 4 and p.metrics.requests[("svc", "200", "HEAD")] == 1


@on_uvloop
async def test_http1_server_failures_seen_by_an_http2_client():
    mws = [{"type": "retry", "name": "retry", "attempts": 1}]
    async with Backend() as b:
        cfg = simple_config({"svc": [b.url], "down": [f"http://127.0.0.1:{closed_port()}"]},
                            routers=[{"name": "r", "service": "svc", "match": {"hosts": ["svc.ns.lightmesh"]}},
                                     {"name": "d", "service": "down", "middlewares": ["retry"],
                                      "match": {"hosts": ["down.ns.lightmesh"]}}],
                            middlewares=mws)
        async with ProxyUnderTest(cfg) as p:
            client = await H2Client.connect(p.port)
            reset = client.start("/reset", method="GET")
            partial = client.start("/partial", method="GET")
            down = client.start("/", method="GET", authority="down.ns.lightmesh")
            r_reset, r_partial, r_down = await client.wait([reset, partial, down])
            assert r_reset["headers"][b":status"] == b"502"  # reset before any response byte
            assert r_partial["reset"] is not None  # cut after the head: the stream is reset
            assert r_down["headers"][b":status"] == b"502"
            (ok,) = await client.wait([client.start("/fine", method="GET")])
            assert ok["headers"][b":status"] == b"200"
            await client.close()
            assert p.metrics.retries["down"] == 1


@pytest.mark.parametrize("codings", [b"gzip", b"gzip, chunked"])
@on_uvloop
async def test_http1_transfer_codings_other_than_chunked_are_502_for_an_http2_client(codings):
    # HTTP/2 has no transfer codings: gzip-coded bytes would reach the client as if plain (or, for
    # "gzip" alone, the stream would hang to the close). nginx and Go answer 502.
    body = b"5\r\n\x1f\x8bzip\r\n0\r\n\r\n" if codings.endswith(b"chunked") else b"\x1f\x8bzip"
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + codings + b"\r\n\r\n" + body
    async with ScriptedUpstream([[raw, None]]) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await H2Client.connect(p.port)
        (r,) = await client.wait([client.start("/", method="GET")])
        assert r["headers"][b":status"] == b"502" and b"zip" not in r["body"]
        await client.close()


@on_uvloop
async def test_a_head_answered_with_gzip_chunked_has_no_body_and_is_no_error_for_an_http2_client():
    # the head a GET would get, without the body: the codings say nothing (a HEAD has no body)
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Encoding: x\r\n\r\n"
    async with ScriptedUpstream([[raw]]) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await H2Client.connect(p.port)
        (r,) = await client.wait([client.start("/", method="HEAD")])
        assert r["headers"][b":status"] == b"200" and r["body"] == b""
        await client.close()


@on_uvloop
async def test_a_server_stream_limit_opens_more_connections_instead_of_failing():
    async with H2Server(max_streams=2) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await H2Client.connect(p.port)
        first = client.start("/echo", body=b"warm")  # the proxy learns the server's limit on this one
        await client.wait([first])
        sids = [client.start("/slow", method="GET") for _ in range(6)]  # 6 at once, 2 per connection
        results = await client.wait(sids)
        assert [r["headers"][b":status"] for r in results] == [b"200"] * 6
        assert up.connections >= 3
        assert not p.metrics.upstream_errors  # a full connection is not a failing server
        await client.close()


@on_uvloop
async def test_refused_streams_go_to_another_connection_and_a_silent_server_is_502():
    from lightmesh.proxy.http import HTTPOptions

    async with H2Server(refuse=1) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await H2Client.connect(p.port)
        (r,) = await client.wait([client.start("/echo", body=b"refused once")])
        assert r["headers"][b":status"] == b"200" and r["body"] == b"refused once"
        assert up.connections == 2 and not p.metrics.upstream_errors  # refused is not failed
        await client.close()
    silent = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never speaks h2
    url = f"h2c://127.0.0.1:{silent.sockets[0].getsockname()[1]}"
    try:
        async with ProxyUnderTest(simple_config([url]), options=HTTPOptions(connect_timeout=0.3)) as p:
            client = await H2Client.connect(p.port)
            (r,) = await client.wait([client.start("/", method="GET")], timeout=5)
            assert r["headers"][b":status"] == b"502"
            assert p.metrics.upstream_errors[("svc", "protocol")] == 1
            await client.close()
    finally:
        silent.close()


@on_uvloop
async def test_grpc_route_from_the_controller_steers_grpc_calls_by_method():
    """Cluster objects → controller build → proxy config → gRPC-style calls: a GRPCRoute sends
    helloworld.Greeter/SayHello to v2 and other Greeter methods to v1, over h2c."""
    from lightmesh.controller.build import build
    from lightmesh.controller.model import ClusterState, Settings

    async with H2Server() as v1, H2Server() as v2:
        def endpoints(name: str, server: H2Server) -> dict:
            port = int(server.url.rsplit(":", 1)[1])
            return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": name, "namespace": "g", "labels": {"kubernetes.io/service-name": name}},
                    "ports": [{"name": "grpc", "port": port}], "endpoints": [{"addresses": ["127.0.0.1"]}]}
        objects = [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "greeter", "namespace": "g"},
             "spec": {"ports": [{"name": "grpc", "port": 50051}]}},
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "greeter-v2", "namespace": "g"},
             "spec": {"ports": [{"name": "grpc", "port": 50051}]}},
            endpoints("greeter", v1), endpoints("greeter-v2", v2),
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
             "metadata": {"name": "greeter", "namespace": "g"},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "greeter"}],
                      "rules": [{"matches": [{"method": {"service": "helloworld.Greeter", "method": "SayHello"}}],
                                 "backendRefs": [{"name": "greeter-v2", "port": 50051}]},
                                {"matches": [{"method": {"service": "helloworld.Greeter"}}],
                                 "backendRefs": [{"name": "greeter", "port": 50051}]}]}},
        ]
        result = build(ClusterState.from_objects(objects), Settings(), 1)
        assert not result.errors
        entry = result.config.http.routers[0].entry_points[0]
        async with ProxyUnderTest(result.config, entry_point=entry) as p:
            client = await H2Client.connect(p.port)
            host = "greeter.g.lightmesh:50051"
            hello, other, unknown = await client.wait([
                client.start("/helloworld.Greeter/SayHello", body=b"\x00\x00\x00\x00\x01a", authority=host),
                client.start("/helloworld.Greeter/SayBye", body=b"\x00\x00\x00\x00\x01b", authority=host),
                client.start("/other.Service/Call", body=b"\x00", authority=host)])
            await client.close()
        assert hello["trailers"][b"grpc-status"] == b"0" and other["trailers"][b"grpc-status"] == b"0"
        assert [r[b":path"] for r in v2.requests] == [b"/helloworld.Greeter/SayHello"]
        assert [r[b":path"] for r in v1.requests] == [b"/helloworld.Greeter/SayBye"]
        assert unknown["headers"][b":status"] == b"404"  # no rule matches: not routed


@on_uvloop
async def test_many_streams_with_random_client_resets_leave_nothing_behind():
    """300 streams on 3 connections, a third of them reset by the client at a random moment (before
    or during the response): the others all complete, and afterwards no stream, queue or connection
    state is left in the proxy."""
    import random

    rng = random.Random(7)
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        clients = [await H2Client.connect(p.port) for _ in range(3)]
        kept: dict[H2Client, list[int]] = {c: [] for c in clients}
        for i in range(300):
            client = clients[i % 3]
            path = rng.choice(["/echo", "/big?size=200000", "/slow"])
            sid = client.start(path, method="GET" if path != "/echo" else "POST",
                               body=b"x" * rng.randint(0, 70000) if path == "/echo" else b"")
            if rng.random() < 0.33:
                await asyncio.sleep(rng.random() * 0.01)
                client.reset(sid)
            else:
                kept[client].append(sid)
        for client, sids in kept.items():
            for r in await client.wait(sids, timeout=60):
                assert r["headers"][b":status"] == b"200" and r["reset"] is None
        for client in clients:
            await client.close()
        for _ in range(100):
            if not p.options.connections.conns:
                break
            await asyncio.sleep(0.02)
        assert not p.options.connections.conns
        server = p.holder.http.services["svc"].servers[0]
        conn = server.h2conn
        assert conn is None or (not conn.streams and not conn.waiting and not conn.side.queues)
        assert p.metrics.requests[("svc", "200", "POST")] + p.metrics.requests[("svc", "200", "GET")] >= 200


@on_uvloop
async def test_request_header_edits_apply_to_http2_streams():
    mws = [{"type": "request_headers", "name": "h", "set": {"X-Env": "canary"}, "remove": ["X-Secret"]}]
    async with H2Server() as up:
        cfg = simple_config([up.url], routers=[{"name": "r", "service": "svc", "middlewares": ["h"]}], middlewares=mws)
        async with ProxyUnderTest(cfg) as p:
            client = await H2Client.connect(p.port)
            (r,) = await client.wait([client.start("/echo", body=b"e", headers=[(b"x-env", b"prod"), (b"x-secret", b"s")])])
            await client.close()
    assert r["body"] == b"e"
    seen = up.requests[-1]["_all"]
    assert [v for n, v in seen if n == b"x-env"] == [b"canary"] and not [n for n, _ in seen if n == b"x-secret"]


@on_uvloop
async def test_response_header_edits_apply_to_http2_streams():
    mws = [{"type": "response_headers", "name": "r", "remove": ["x-echo"], "add": {"X-Mesh": "1"}}]
    async with H2Server() as up:
        cfg = simple_config([up.url], routers=[{"name": "r", "service": "svc", "middlewares": ["r"]}], middlewares=mws)
        async with ProxyUnderTest(cfg) as p:
            client = await H2Client.connect(p.port)
            (r,) = await client.wait([client.start("/echo", body=b"e")])
            await client.close()
    assert b"x-echo" not in r["headers"] and r["headers"][b"x-mesh"] == b"1" and r["body"] == b"e"


@on_uvloop
@pytest.mark.parametrize("answer", [
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", id="relayed-1xx"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="partial-head"),
])
async def test_an_h2_stream_is_not_retried_once_the_server_answered_anything(answer):
    # As for HTTP/1.1 clients: a POST the server began to answer (a 1xx relayed, part of a head)
    # and then reset must not run a second time on the next server.
    from .test_http_middlewares import ScriptedServer, _cfg

    mws = [{"type": "retry", "name": "retry", "attempts": 2}]
    async with ScriptedServer(answer) as scripted, Backend("good") as good:
        async with ProxyUnderTest(_cfg([scripted.url, good.url], mws)) as p:
            seen = []
            for _ in range(2):  # round robin: one of the two goes to the scripted server first
                client = await H2Client.connect(p.port)
                (r,) = await client.wait([client.start("/", method="POST", body=b"body", authority="svc")])
                seen.append(r["headers"][b":status"])
                await client.close()
            assert scripted.requests == 1 and len(good.requests) == 1, seen
            assert sorted(seen) == [b"200", b"502"] and "svc" not in p.metrics.retries
