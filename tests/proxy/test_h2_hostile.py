"""Hostile HTTP/2 clients and servers: what each can make the proxy hold or do is bounded.

A client that opens huge windows and stops reading, a PING flood from a client that does not
read the answers, rapid reset (CVE-2023-44487), a stalled preface or header block, a client's
GOAWAY with streams in flight, a client's 4 GiB HPACK table, and an upstream connection left
without streams once its last ones were cancelled. Real h2 peers on loopback."""

from __future__ import annotations

import asyncio
import socket
import struct

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import hpack

from lightmesh.proxy.h2 import PREFACE, PREMATURE_RESETS_MAX, H2Downstream
from lightmesh.proxy.http import HTTPOptions

from .backends import ProxyUnderTest, on_uvloop, send_until_blocked, simple_config
from .test_h2_streams import _eventually
from .test_h2c import H2Client, H2Server

AUTHORITY = b"svc.ns.lightmesh"


def _head(path: bytes, method: bytes = b"GET") -> list:
    return [(b":method", method), (b":scheme", b"http"), (b":authority", AUTHORITY), (b":path", path)]


def _client(settings: dict | None = None) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    if settings:
        conn.update_settings(settings)
    return conn


async def _raw(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window scale
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


def _downstream(p: ProxyUnderTest) -> H2Downstream:
    (down,) = [c for c in p.options.connections.conns if isinstance(c, H2Downstream)]
    return down


async def _read_frames(sock: socket.socket, timeout: float) -> tuple[list[tuple[int, int, bytes]], bool]:
    """Frames (type, stream, payload) the proxy sends until it closes (True) or ``timeout``."""
    loop = asyncio.get_running_loop()
    buf = b""
    deadline = loop.time() + timeout
    closed = False
    while loop.time() < deadline:
        try:
            data = await asyncio.wait_for(loop.sock_recv(sock, 65536), max(0.01, deadline - loop.time()))
        except asyncio.TimeoutError:
            break
        except ConnectionError:
            closed = True
            break
        if not data:
            closed = True
            break
        buf += data
    frames = []
    while len(buf) >= 9:
        length = int.from_bytes(buf[:3], "big")
        frames.append((buf[3], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9:9 + length]))
        buf = buf[9 + length:]
    return frames, closed


@on_uvloop
async def test_a_client_with_huge_windows_that_stops_reading_holds_back_the_server_within_its_windows():
    # Before: the proxy handed the server its stream credit back as soon as the data was written to
    # the client's transport, whatever the transport held, so a client announcing 2 GiB windows
    # and reading nothing had the proxy buffer every response whole (hundreds of MB per connection).
    streams, size = 16, 2_000_000
    async with H2Server(max_streams=1000) as up, ProxyUnderTest(simple_config([up.url])) as p:
        conn = _client({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31 - 1})
        conn.increment_flow_control_window(2**31 - 1 - 65535)
        for _ in range(streams):
            conn.send_headers(conn.get_next_available_stream_id(), _head(b"/big?size=%d" % size), end_stream=True)
        sock = await _raw(p.port, rcvbuf=16384)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, conn.data_to_send())
            assert await _eventually(lambda: up.data_sent > 0, 5)
            await asyncio.sleep(1.0)  # never read from here on
            held = _downstream(p).side.transport.get_write_buffer_size()
            # what the server could send: its stream windows (64 KiB each) and what the kernel holds
            assert up.data_sent < 12_000_000, up.data_sent
            assert held < 2_000_000, held
            # and it all comes through once the client reads
            conn2 = conn
            received = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while received < streams * size and loop.time() < deadline:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), 5)
                assert data, "the proxy closed the connection"
                for ev in conn2.receive_data(data):
                    if isinstance(ev, h2.events.DataReceived):
                        received += len(ev.data)
                        conn2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                pending = conn2.data_to_send()
                if pending:
                    await loop.sock_sendall(sock, pending)
            assert received == streams * size
        finally:
            sock.close()


@on_uvloop
async def test_a_ping_flood_from_a_client_that_does_not_read_stops_being_read():
    # Before: every PING was answered into the transport's buffer, which grew without bound.
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        conn = _client()
        sock = await _raw(p.port, rcvbuf=16384)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, conn.data_to_send())
            ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00" + b"12345678"
            sent = await send_until_blocked(sock, ping * 4096, 2_000_000 * len(ping))  # 68 KiB at a time
            transport = _downstream(p).side.transport
            # the answers wait in the kernel (its buffers are the client's to fill) and in at most
            # one read's worth over the transport's high-water mark, not in an ever-growing buffer
            assert transport.get_write_buffer_size() < 1_000_000, (transport.get_write_buffer_size(), sent)
            assert not transport.is_reading()
        finally:
            sock.close()


@on_uvloop
async def test_rapid_reset_reaches_no_server_and_ends_the_connection_with_enhance_your_calm():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        conn = _client()
        sock = await _raw(p.port)
        loop = asyncio.get_running_loop()
        try:
            await loop.sock_sendall(sock, conn.data_to_send())
            pairs = 0
            for _ in range(2 * PREMATURE_RESETS_MAX):
                sid = conn.get_next_available_stream_id()
                conn.send_headers(sid, _head(b"/hang"), end_stream=True)
                conn.reset_stream(sid, h2.errors.ErrorCodes.CANCEL)
                pairs += 1
                if pairs % 50 == 0:  # in a few writes, each pair whole within one
                    await loop.sock_sendall(sock, conn.data_to_send())
            await loop.sock_sendall(sock, conn.data_to_send())
            frames, closed = await _read_frames(sock, 3)
        finally:
            sock.close()
        goaways = [payload for kind, _sid, payload in frames if kind == 7]
        assert closed and goaways, frames[-3:]
        assert struct.unpack(">I", goaways[-1][4:8])[0] == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        # a HEADERS and its RST_STREAM in one read: the stream was never forwarded
        assert len(up.requests) <= pairs // 20, len(up.requests)
        assert p.metrics.refused_connections == {("http", "reset_flood"): 1}


@on_uvloop
async def test_clients_that_cancel_some_of_their_calls_are_not_taken_for_rapid_reset():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        try:
            done = await c.wait([c.start("/echo", body=b"x") for _ in range(2 * PREMATURE_RESETS_MAX)], timeout=20)
            assert all(r["headers"][b":status"] == b"200" for r in done)
            for _ in range(PREMATURE_RESETS_MAX + 10):  # cancelled at once, as deadlines and hedging do
                c.reset(c.start("/hang", more=True))
            (after,) = await c.wait([c.start("/echo", body=b"still here")], timeout=5)
            assert after["body"] == b"still here"
            assert not [e for e in c.log if e[0] == "goaway"]
        finally:
            await c.close()
        assert not p.metrics.refused_connections


@on_uvloop
async def test_a_preface_or_a_header_block_left_incomplete_is_closed_at_the_header_timeout():
    options = HTTPOptions(header_timeout=0.4, idle_timeout=30)
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=options) as p:
        loop = asyncio.get_running_loop()
        preface_only = await _raw(p.port)
        stalled_block = await _raw(p.port)
        settled = await _raw(p.port)
        try:
            await loop.sock_sendall(preface_only, PREFACE)
            block = hpack.Encoder().encode(_head(b"/echo"))
            # HEADERS with END_STREAM but not END_HEADERS, and no CONTINUATION after it
            headers = len(block).to_bytes(3, "big") + b"\x01\x01" + struct.pack(">I", 1) + block
            await loop.sock_sendall(stalled_block, _client().data_to_send() + headers)
            await loop.sock_sendall(settled, _client().data_to_send())
            (_, preface_closed), (_, block_closed), (_, settled_closed) = await asyncio.gather(
                _read_frames(preface_only, 2), _read_frames(stalled_block, 2), _read_frames(settled, 2))
        finally:
            for s in (preface_only, stalled_block, settled):
                s.close()
        assert preface_closed and block_closed
        assert not settled_closed  # nothing half-sent: the idle timeout's business
        assert not up.requests


@on_uvloop
async def test_a_clients_goaway_lets_its_streams_in_flight_finish_whole():
    # Before: a client's GOAWAY closed the connection at once; then, once the last stream ended, the
    # connection closed while the response's tail still waited for the client's window (cut short).
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        try:
            sid = c.start("/big?size=300000", method="GET")
            c.writer.write(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00" + struct.pack(">II", 0, 0))  # GOAWAY NO_ERROR
            (r,) = await c.wait([sid], timeout=10)
            assert r["ended"] and len(r["body"]) == 300000
            assert await asyncio.wait_for(c.reader.read(), 5) == b"" or True
            assert await _eventually(lambda: not p.options.connections.conns, 5)  # then closed
        finally:
            await c.close()


DENY_ALL = simple_config(["h2c://127.0.0.1:1"], middlewares=[{"type": "deny", "name": "deny", "status_code": 403}],
                         routers=[{"name": "r", "service": "svc", "middlewares": ["deny"]}])


async def _zero_window_client(port: int) -> H2Client:
    """A client whose streams' receive windows start at 0: a response body waits for it to open them."""
    c = await H2Client.connect(port)
    c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    c.writer.write(c.conn.data_to_send())
    await asyncio.sleep(0.1)  # the proxy has the setting before the first stream
    return c


@on_uvloop
async def test_a_local_answer_waiting_for_the_clients_window_is_not_dropped_by_its_reset():
    async with ProxyUnderTest(DENY_ALL) as p:
        c = await _zero_window_client(p.port)
        try:
            sid = c.start("/", body=b"part of a body", more=True)
            await c.until(lambda: c.results[sid]["headers"] is not None, 5)
            assert c.results[sid]["headers"][b":status"] == b"403"
            c.conn.increment_flow_control_window(1000, stream_id=sid)
            c.writer.write(c.conn.data_to_send())
            await c.until(lambda: c.results[sid]["ended"] or c.results[sid]["reset"] is not None, 5)
            assert b"".join(c.results[sid]["data"]) == b"403\n" and c.results[sid]["ended"]
        finally:
            await c.close()


@on_uvloop
async def test_calls_cancelled_by_a_deadline_are_not_taken_for_rapid_reset():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        try:
            for _ in range(2):
                sids = [c.start("/hang", method="GET") for _ in range(PREMATURE_RESETS_MAX)]
                await asyncio.sleep(0.4)  # a deadline: the calls ran a while, then were cancelled
                for sid in sids:
                    c.reset(sid)
            (after,) = await c.wait([c.start("/echo", body=b"still here")], timeout=5)
            assert after["body"] == b"still here"
        finally:
            await c.close()
        assert not p.metrics.refused_connections


@on_uvloop
async def test_a_clients_huge_hpack_table_is_used_only_up_to_4_kib():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        try:
            c.conn.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 2**32 - 1})
            c.writer.write(c.conn.data_to_send())
            (r,) = await c.wait([c.start("/echo", body=b"x")], timeout=5)
            assert r["headers"][b":status"] == b"200"  # the client decodes what we encode
            assert _downstream(p).side.conn.encoder.header_table_size == 4096
        finally:
            await c.close()


@on_uvloop
async def test_the_server_is_told_our_header_list_limit():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        try:
            (r,) = await c.wait([c.start("/echo", body=b"x")], timeout=5)
        finally:
            await c.close()
        assert r["headers"][b":status"] == b"200"
        (proto,) = up.protocols
        assert proto.conn.remote_settings.max_header_list_size == 65536


@on_uvloop
async def test_a_full_server_connection_closes_once_its_last_streams_are_cancelled():
    # A connection at the server's stream limit takes no new streams: when its own streams were
    # cancelled (gRPC deadlines), nothing closed it, and each round left one open for good.
    async with H2Server(max_streams=2) as up, ProxyUnderTest(simple_config([up.url])) as p:
        for _ in range(3):
            c = await H2Client.connect(p.port)
            sids = [c.start("/hang", method="GET") for _ in range(3)]
            assert await _eventually(lambda: len(up.requests) % 3 == 0 and up.open_connections >= 2, 5)
            for sid in sids:
                c.reset(sid)
            await c.close()
        # the server's current connection may stay for reuse; every full one is gone
        assert await _eventually(lambda: up.open_connections <= 1, 3), up.open_connections


@on_uvloop
async def test_a_busy_connection_remembers_a_bounded_number_of_closed_streams():
    # h2 kept 65,536 closed streams per connection: ~10 MB for a long-lived gRPC connection, on the
    # client side and on the shared server connection alike.
    from lightmesh.proxy.h2 import _CLOSED_STREAMS_KEPT

    n = _CLOSED_STREAMS_KEPT + 300
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        try:
            for batch in range(0, n, 100):
                done = await c.wait([c.start("/echo", body=b"x") for _ in range(min(100, n - batch))])
                assert all(r["headers"][b":status"] == b"200" for r in done)
            assert len(_downstream(p).side.conn._closed_streams) <= _CLOSED_STREAMS_KEPT
            (proto,) = up.protocols
            upstream = [u for s in p.holder.http.services.values() for u in [s.servers[0].h2conn] if u is not None]
            assert upstream and len(upstream[0].side.conn._closed_streams) <= _CLOSED_STREAMS_KEPT
            # a late frame on a forgotten stream: answered by a reset, the connection goes on
            c.conn._closed_streams.clear()
            c.writer.write(b"\x00\x00\x04\x08\x00\x00\x00\x00\x01" + (1000).to_bytes(4, "big"))  # WINDOW_UPDATE, stream 1
            (after,) = await c.wait([c.start("/echo", body=b"still")])
            assert after["body"] == b"still"
        finally:
            await c.close()


def test_a_late_frame_on_a_stream_h2_forgot_is_a_stream_error_not_the_end_of_a_shared_connection():
    # With 256 closed streams remembered, a response's HEADERS arriving after the proxy reset its
    # stream (a cancelled call) and 256 others closed made h2 end the whole server connection:
    # every other client's call on it failed.
    from hyperframe.frame import HeadersFrame

    from lightmesh.proxy.h2 import _CLOSED_STREAMS_KEPT, _config, _ServerFacing

    proxy = _ServerFacing(config=_config(True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
    proxy.initiate_connection()
    server.initiate_connection()
    server.receive_data(proxy.data_to_send())
    proxy.receive_data(server.data_to_send())
    server.receive_data(proxy.data_to_send())
    for _ in range(_CLOSED_STREAMS_KEPT + 50):
        sid = proxy.get_next_available_stream_id()
        proxy.send_headers(sid, _head(b"/x"), end_stream=True)
        server.receive_data(proxy.data_to_send())
        server.send_headers(sid, [(b":status", b"200")], end_stream=True)
        proxy.receive_data(server.data_to_send())
    assert 1 not in proxy.streams and 1 not in proxy._closed_streams  # forgotten
    late = HeadersFrame(1)
    late.data = server.encoder.encode([(b":status", b"200")])
    late.flags.add("END_HEADERS")
    late.flags.add("END_STREAM")
    proxy.receive_data(late.serialize())  # before: StreamIDTooLowError, a connection error
    assert b"\x03\x00\x00\x00\x00\x01" in proxy.data_to_send()  # RST_STREAM on stream 1
    sid = proxy.get_next_available_stream_id()  # and the connection goes on
    proxy.send_headers(sid, _head(b"/y"), end_stream=True)
    assert any(isinstance(e, h2.events.RequestReceived) for e in server.receive_data(proxy.data_to_send()))


@on_uvloop
async def test_a_reset_stream_leaves_nothing_queued_that_keeps_the_connection_busy():
    async with ProxyUnderTest(DENY_ALL) as p:
        c = await _zero_window_client(p.port)
        try:
            sid = c.start("/", method="GET")
            await c.until(lambda: c.results[sid]["headers"] is not None, 5)  # the 403's body waits for window
            c.reset(sid)
            # a drain closes idle connections at once: this one has nothing left to do
            assert await _eventually(lambda: _downstream(p).is_idle(), 3), _downstream(p).side.queues
        finally:
            await c.close()
