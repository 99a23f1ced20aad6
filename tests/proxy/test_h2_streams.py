"""HTTP/2 streams through the proxy, one rule each: a client that stops reading holds back only its
own streams; local answers to HEAD carry no body; streams given up while their server connection
waits for SETTINGS never reach the server; streams are access-logged like HTTP/1.1 requests; the
HTTP/1.1 translation drops the fields a server names in ``Connection``; a malformed request resets
its own stream, not the connection; ``response_timeout``/``body_timeout`` apply per stream; 1xx
responses are relayed; a drain announces itself with GOAWAY at once. Real h2 peers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import socket
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import pytest

from lightmesh.proxy.http import HTTPOptions

from .backends import (H2_CLIENT_SCRIPT, Backend, ProxyUnderTest, RawClient, ScriptedUpstream, client_through_a_freeze,
                       on_uvloop, request, simple_config)
from .test_h2c import H2Client, H2Server


async def _eventually(check, timeout: float = 5.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


# --------------------------------------------------------------------------- flow control


@on_uvloop
async def test_a_client_that_stops_reading_stalls_only_its_own_streams():
    from lightmesh.proxy.h2 import CONNECTION_WINDOW

    streams = 300  # × 64 KiB stream windows: more than the upstream connection window
    assert streams * 65535 > CONNECTION_WINDOW
    async with H2Server(max_streams=1000) as up, ProxyUnderTest(simple_config([up.url])) as p:
        stuck = await H2Client.connect(p.port)
        for _ in range(streams):
            stuck.start("/big?size=100000", method="GET")  # and never read
        assert await _eventually(lambda: up.data_sent >= CONNECTION_WINDOW - 65535, 20)
        await asyncio.sleep(0.2)
        other = await H2Client.connect(p.port)
        (echo,) = await other.wait([other.start("/echo", body=b"not stuck")], timeout=5)
        (big,) = await other.wait([other.start("/big?size=200000", method="GET")], timeout=5)
        assert echo["body"] == b"not stuck" and len(big["body"]) == 200000
        assert up.connections == 1  # the same server connection as the stuck streams
        # the stuck streams are still held back by their own windows (memory stays bounded)
        assert up.data_sent < streams * 100000
        await other.close()
        await stuck.close()


# --------------------------------------------------------------------------- local answers


@on_uvloop
async def test_local_answers_to_head_have_no_body():
    mws = [{"type": "deny", "name": "deny", "status_code": 403}]
    async with H2Server() as up:
        cfg = simple_config([up.url], middlewares=mws, routers=[
            {"name": "d", "service": "svc", "middlewares": ["deny"], "match": {"hosts": ["deny.example"]}}])
        async with ProxyUnderTest(cfg) as p:
            c = await H2Client.connect(p.port)
            unrouted, denied, get = await c.wait([c.start("/", method="HEAD", authority="nobody.example"),
                                                  c.start("/", method="HEAD", authority="deny.example"),
                                                  c.start("/", method="GET", authority="nobody.example")])
            for r, status in ((unrouted, b"404"), (denied, b"403")):
                assert r["headers"][b":status"] == status and r["ended"] and r["reset"] is None
                assert r["body"] == b"" and r["headers"][b"content-length"] == b"4"
            assert get["body"] == b"404\n" and get["headers"][b"content-length"] == b"4"
            await c.close()
            assert p.metrics.requests[("unrouted", "404", "HEAD")] == 1


# --------------------------------------------------------------------------- given up while waiting


class _LateSettingsServer:
    """An h2c server that sends its SETTINGS (and reads requests) only after ``delay`` seconds, then
    answers every request 200 and records its path."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.paths: list[bytes] = []
        self.server = None
        self.url = ""

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        owner = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.transport = transport
                self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                                 header_encoding=None))
                self.buf = b""
                self.ready = False
                self.timer = loop.call_later(owner.delay, self.go)

            def go(self) -> None:
                self.ready = True
                self.conn.initiate_connection()
                self.transport.write(self.conn.data_to_send())
                if self.buf:
                    self.data_received(self.buf)

            def data_received(self, data: bytes) -> None:
                if not self.ready:
                    self.buf += data
                    return
                for ev in self.conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        owner.paths.append(dict(ev.headers)[b":path"])
                        self.conn.send_headers(ev.stream_id, [(b":status", b"200")], end_stream=True)
                self.transport.write(self.conn.data_to_send())

            def connection_lost(self, exc) -> None:
                self.timer.cancel()

        self.server = await loop.create_server(Proto, "127.0.0.1", 0)
        self.url = f"h2c://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


@on_uvloop
async def test_streams_given_up_while_waiting_for_the_servers_settings_never_reach_it():
    mws = [{"type": "request_timeout", "name": "to", "seconds": 0.2}]
    async with _LateSettingsServer(0.8) as up:
        cfg = simple_config([up.url], middlewares=mws, routers=[
            {"name": "r", "service": "svc", "match": {"hosts": ["svc.ns.lightmesh"]}},
            {"name": "t", "service": "svc", "middlewares": ["to"], "match": {"hosts": ["t.example"]}}])
        async with ProxyUnderTest(cfg) as p:
            c = await H2Client.connect(p.port)
            reset = c.start("/reset-by-client", method="GET")
            await asyncio.sleep(0.05)
            c.reset(reset)
            (timed_out,) = await c.wait([c.start("/timed-out", method="GET", authority="t.example")], timeout=5)
            assert timed_out["headers"][b":status"] == b"504"
            (after,) = await c.wait([c.start("/after", method="GET")], timeout=5)  # same server connection
            assert after["headers"][b":status"] == b"200"
            assert up.paths == [b"/after"]
            conn = p.holder.http.services["svc"].servers[0].h2conn
            assert conn is not None and not conn.waiting and not conn.streams
            await c.close()
            assert not p.loop_errors


# --------------------------------------------------------------------------- access log


@on_uvloop
async def test_http2_streams_are_access_logged_like_http1_requests(caplog):
    async with H2Server() as up:
        cfg = simple_config([up.url], routers=[{"name": "r", "service": "svc",
                                                "match": {"hosts": ["svc.ns.lightmesh"]}}])
        async with ProxyUnderTest(cfg, options=HTTPOptions(access_log=True)) as p:
            with caplog.at_level(logging.INFO, logger="lightmesh.access"):
                c = await H2Client.connect(p.port)
                await c.wait([c.start("/pkg.Svc/Call?x=1", body=b"x")])
                await c.wait([c.start("/", method="GET", authority="nobody.example")])
                await c.close()
                await request(p.port, "GET", "/h1", host="svc.ns.lightmesh")  # 502: the server is h2c only
            entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lightmesh.access"]
    assert len(entries) == 3
    call, unrouted, h1 = entries
    assert set(call) == set(unrouted) == set(h1)
    assert {k: call[k] for k in call if k not in ("time", "duration_ms")} == {
        "client": "127.0.0.1", "entry_point": "web", "method": "POST", "host": "svc.ns.lightmesh",
        "path": "/pkg.Svc/Call?x=1", "router": "r", "service": "svc", "upstream": up.url, "status": 200,
        "retries": 0}
    assert unrouted["status"] == 404 and unrouted["service"] == "unrouted" and unrouted["router"] is None
    assert unrouted["upstream"] is None and unrouted["host"] == "nobody.example"
    assert h1["path"] == "/h1" and h1["status"] == 502


# --------------------------------------------------------------------------- HTTP/1.1 translation


@on_uvloop
async def test_fields_named_in_connection_are_not_relayed_from_http1_servers():
    response = (b"HTTP/1.1 200 OK\r\nConnection: X-Secret, close\r\nX-Secret: leak\r\nKeep-Alive: timeout=5\r\n"
                b"X-Kept: 1\r\nContent-Length: 2\r\n\r\nok")
    async with ScriptedUpstream([[response]]) as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        (r,) = await c.wait([c.start("/", method="GET")])
        await c.close()
    assert r["headers"][b":status"] == b"200" and r["body"] == b"ok"
    assert r["headers"][b"x-kept"] == b"1"
    assert b"x-secret" not in r["headers"] and b"keep-alive" not in r["headers"]


# --------------------------------------------------------------------------- malformed requests

_MALFORMED = {
    "host differs from :authority": dict(headers=[(b"host", b"other.example")]),
    "upper-case field name": dict(headers=[(b"X-Upper", b"1")]),
    "connection-specific field": dict(headers=[(b"connection", b"keep-alive")]),
    "te other than trailers": dict(headers=[(b"te", b"gzip")]),
    "CR LF in a value": dict(headers=[(b"x-a", b"a\r\nx-injected: 1")]),
    "space in a name": dict(headers=[(b"x a", b"1")]),
    "pseudo-header after a regular field": dict(headers=[(b":x", b"1")]),
    "content-length not a number": dict(headers=[(b"content-length", b"3x")], body=b"abc"),
    "more data than content-length": dict(headers=[(b"content-length", b"3")], body=b"0123456789"),
    "less data than content-length": dict(headers=[(b"content-length", b"30")], body=b"0123456789"),
    # RFC 9113 §8.3.1: an absolute-form or slash-less :path would be routed on one path and read by
    # the server as another (a rule for /admin dodged); a method must be a token
    "absolute-form :path": dict(headers=[], path="http://svc/admin"),
    "slash-less :path": dict(headers=[], path="admin"),
    "asterisk :path for POST": dict(headers=[], path="*"),
}


@pytest.mark.parametrize("case", list(_MALFORMED))
@on_uvloop
async def test_a_malformed_request_resets_its_stream_not_the_connection(case):
    spec = _MALFORMED[case]
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        c.conn.config.validate_outbound_headers = False
        c.conn.config.normalize_outbound_headers = False
        slow = c.start("/slow", method="GET")  # in flight on the same connection
        await asyncio.sleep(0.05)
        bad = c.start(spec.get("path", "/echo"), body=spec.get("body", b""), headers=spec["headers"])
        r_slow, r_bad = await c.wait([slow, bad], timeout=5)
        assert r_slow["headers"][b":status"] == b"200" and r_slow["reset"] is None
        assert r_bad["reset"] == h2.errors.ErrorCodes.PROTOCOL_ERROR and r_bad["headers"] is None
        if "data" not in case:
            assert [r[b":path"] for r in up.requests] == [b"/slow"]  # never forwarded
        (after,) = await c.wait([c.start("/echo", body=b"fine")])  # the connection still works
        assert after["body"] == b"fine"
        await c.close()
        assert p.metrics.requests[("svc" if "data" in case else "unrouted", "400", "POST")] == 1
        assert not p.loop_errors


@on_uvloop
async def test_body_beyond_content_length_never_reaches_an_http1_server():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        c = await H2Client.connect(p.port)
        bad = c.start("/echo", body=b"012" + b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
                      headers=[(b"content-length", b"3")])
        (r,) = await c.wait([bad])
        assert r["reset"] == h2.errors.ErrorCodes.PROTOCOL_ERROR
        (ok,) = await c.wait([c.start("/fine", method="GET")])
        assert ok["headers"][b":status"] == b"200"
        await c.close()
        assert "/smuggled" not in [req.path for req in b.requests] and b.parse_errors == 0
        assert all(b"smuggled" not in req.body for req in b.requests)


# --------------------------------------------------------------------------- timeouts


@on_uvloop
async def test_response_timeout_applies_to_http2_streams():
    async with H2Server() as up, Backend() as b:
        cfg = simple_config({"h2": [up.url], "h1": [b.url]}, routers=[
            {"name": "a", "service": "h2", "match": {"hosts": ["h2.example"]}},
            {"name": "b", "service": "h1", "match": {"hosts": ["h1.example"]}}])
        async with ProxyUnderTest(cfg, options=HTTPOptions(response_timeout=0.3)) as p:
            c = await H2Client.connect(p.port)
            r2, r1 = await c.wait([c.start("/hang", method="GET", authority="h2.example"),
                                   c.start("/hang", method="GET", authority="h1.example")], timeout=5)
            assert r2["headers"][b":status"] == b"504" and r1["headers"][b":status"] == b"504"
            assert await _eventually(lambda: up.resets_seen >= 1)  # the server's stream is reset
            # the timer runs from the end of the request: a request body slower than it is fine
            sid = c.start("/echo", body=b"a", authority="h2.example", more=True)
            await asyncio.sleep(0.5)
            c.send(sid, b"b", end=True)
            (r,) = await c.wait([sid])
            assert r["headers"][b":status"] == b"200" and r["body"] == b"ab"
            await c.close()
            assert p.metrics.requests[("h2", "504", "GET")] == 1 and p.metrics.requests[("h1", "504", "GET")] == 1


@on_uvloop
async def test_body_timeout_applies_between_request_data_frames():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=HTTPOptions(body_timeout=0.5)) as p:
        c = await H2Client.connect(p.port)
        stalled = c.start("/echo", body=b"part", more=True)
        steady = c.start("/echo", body=b"0", more=True)
        for i in range(1, 8):  # a piece every 0.1 s: never 0.5 s without one
            await asyncio.sleep(0.1)
            c.send(steady, b"%d" % i, end=i == 7)
        r_steady, r_stalled = await c.wait([steady, stalled], timeout=5)
        assert r_steady["headers"][b":status"] == b"200" and r_steady["body"] == b"01234567"
        assert r_stalled["headers"][b":status"] == b"408"
        assert await _eventually(lambda: up.resets_seen >= 1)  # the server's stream is reset
        (after,) = await c.wait([c.start("/echo", body=b"fine")])
        assert after["body"] == b"fine"
        await c.close()
        assert p.metrics.requests[("svc", "408", "POST")] == 1


_STEADY_H2_CLIENT = H2_CLIENT_SCRIPT + r"""
c.send_headers(1, [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/echo")])
s.sendall(c.data_to_send())
for i in range(12):  # a DATA frame every 0.2 s, well within the 1 s body timeout
    time.sleep(0.2)
    c.send_data(1, b"x", end_stream=i == 11)
    s.sendall(c.data_to_send())
print(status_of(1))
"""


@on_uvloop
async def test_a_proxy_frozen_past_a_body_deadline_reads_the_streams_data_before_it_judges():
    # As on HTTP/1.1 (test_http_timeouts_trailers): the proxy's process is frozen past the stream's
    # body deadline while a steady client sends; its DATA is read before the deadline is judged.
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=HTTPOptions(body_timeout=1.0)) as p:
        assert await client_through_a_freeze(_STEADY_H2_CLIENT, p.port, start=0.5) == b"200"


@on_uvloop
async def test_body_timeout_spares_a_stream_whose_response_has_begun():
    # a gRPC bidi call whose client is quiet while the server streams: the server decides
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=HTTPOptions(body_timeout=0.3)) as p:
        c = await H2Client.connect(p.port)
        sid = c.start("/early", body=b"first", more=True)
        await c.until(lambda: c.results[sid].get("headers"), timeout=5)
        await asyncio.sleep(0.8)  # quiet for more than the body timeout
        c.send(sid, b" last", end=True)
        (r,) = await c.wait([sid], timeout=5)
        assert r["headers"][b":status"] == b"200" and r["body"] == b"first last"
        await c.close()


_HELD: list = []  # the servers' protocols: uvloop keeps no reference to a paused handle


class _H1Sink(asyncio.Protocol):
    """An HTTP/1.1 server for a Content-Length request body: reads nothing until ``ready`` is set
    (``None``: reads at once; with ``abort_after``, it never reads and cuts the connection then),
    and answers 200 with the number of body bytes it got."""

    def __init__(self, ready: asyncio.Event | None, abort_after: float = 0.0) -> None:
        self.ready = ready
        self.abort_after = abort_after
        self.buf = bytearray()
        self.want = -1

    def connection_made(self, transport) -> None:
        self.transport = transport
        _HELD.append(self)
        loop = asyncio.get_running_loop()
        if self.ready is None and not self.abort_after:
            return  # reads at once
        loop.call_soon(transport.pause_reading)  # (uvloop starts reading after connection_made)
        if self.abort_after:
            loop.call_later(self.abort_after, transport.abort)
        elif self.ready is not None:
            loop.create_task(self._resume())

    async def _resume(self) -> None:
        await self.ready.wait()
        self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.want < 0 and b"\r\n\r\n" in self.buf:
            head, _, _ = bytes(self.buf).partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            self.want = len(head) + 4 + length
            self.body_at = len(head) + 4
        if 0 <= self.want <= len(self.buf):
            got = b"%d" % (len(self.buf) - self.body_at)
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(got), got))
            self.buf, self.want = bytearray(), -1


def _h1_upstream(p: ProxyUnderTest):
    from lightmesh.proxy.h2 import H1Upstream

    ups = [o for o in gc.get_objects() if isinstance(o, H1Upstream) and o.transport is not None and not o.done]
    return ups


@contextlib.asynccontextmanager
async def _h1_servers(factory, n: int = 1):
    """``n`` loopback HTTP/1.1 servers whose connections ``factory`` makes (an _H1Sink or an
    _EarlyAnswer); yields their URLs. On the way out, connections they still hold are cut."""
    loop = asyncio.get_running_loop()
    servers = [await loop.create_server(factory, "127.0.0.1", 0) for _ in range(n)]
    try:
        yield [f"http://127.0.0.1:{s.sockets[0].getsockname()[1]}" for s in servers]
    finally:
        for proto in _HELD:
            proto.transport.abort()
        _HELD.clear()
        for s in servers:
            s.close()
            await s.wait_closed()


def _upload(c: H2Client, size: int) -> int:
    """A stream sending ``size`` bytes (with their Content-Length) as the windows allow."""
    return c.start("/up", body=memoryview(bytes(size)), headers=[(b"content-length", b"%d" % size)])


async def _pump_for(c: H2Client, seconds: float) -> None:
    """Read what the proxy sends and send what its windows allow, for ``seconds``."""
    try:
        await asyncio.wait_for(c.until(lambda: False, timeout=seconds + 5), seconds)
    except asyncio.TimeoutError:
        pass


@on_uvloop
async def test_a_server_that_does_not_read_holds_back_an_http2_client_within_its_window():
    # Before: an HTTP/2 request to an HTTP/1.1 server gave the client its credit back as soon as
    # the data was handed to the transport, so a server that read nothing made the proxy buffer
    # the whole body (200 MB of a 200 MB upload): memory without bound, for any client.
    size = 64 << 20
    ready = asyncio.Event()
    async with _h1_servers(lambda: _H1Sink(ready)) as urls, ProxyUnderTest(simple_config(urls)) as p:
        c = await H2Client.connect(p.port)
        sid = _upload(c, size)
        await _pump_for(c, 1.5)
        (up,) = _h1_upstream(p)
        buffered = up.transport.get_write_buffer_size()
        sent = size - len(c.pending_body.get(sid, b""))
        # the transport's high-water mark and one stream window at most, not what the client sent
        assert buffered < 1 << 20, (buffered, sent)
        assert sid in c.pending_body  # the client is held back, not done
        ready.set()  # the server reads: everything arrives
        (r,) = await c.wait([sid], timeout=30)
        assert r["headers"][b":status"] == b"200" and r["body"] == b"%d" % size
        await c.close()


@on_uvloop
async def test_an_http2_client_held_back_by_a_slow_server_is_not_timed_out():
    # The wait for a window the proxy held back is not the client's: body_timeout counts from the
    # credit given back (before, only a window at 0 at the very tick was spared).
    size = 24 << 20
    ready = asyncio.Event()
    async with (_h1_servers(lambda: _H1Sink(ready)) as urls,
                ProxyUnderTest(simple_config(urls), options=HTTPOptions(body_timeout=0.4)) as p):
        c = await H2Client.connect(p.port)
        sid = _upload(c, size)
        asyncio.get_running_loop().call_later(1.2, ready.set)
        (r,) = await c.wait([sid], timeout=30)
        assert r["headers"][b":status"] == b"200" and r["body"] == b"%d" % size
        await c.close()


@on_uvloop
async def test_the_http2_body_timeout_starts_again_when_the_proxy_gives_credit_back():
    # Credit given back just before the deadline a held-back stream was pushed to: the timer runs
    # before the client can answer the WINDOW_UPDATE (before, 408 to a client that had no window).
    timeout = 0.5
    size = 65535 + 5  # one stream window, and 5 bytes the client can only send once credit is back
    loop = asyncio.get_running_loop()
    wake, waker = socket.socketpair()
    try:
        async with (_h1_servers(lambda: _H1Sink(None)) as urls,
                    ProxyUnderTest(simple_config(urls), options=HTTPOptions(body_timeout=timeout)) as p):
            c = await H2Client.connect(p.port)
            sid = c.start("/up", more=True, headers=[(b"content-length", b"%d" % size)])
            assert await _eventually(lambda: any(u.st is not None and u.st.up_id for u in _h1_upstream(p)))
            (up,) = _h1_upstream(p)
            st = up.st
            up.pause_writing()  # as its transport would: the server is behind
            c.pending_body[sid] = bytes(size)
            c._pump()
            c.writer.write(c.conn.data_to_send())
            assert await _eventually(lambda: st.last_in and c.conn.local_flow_control_window(sid) == 0)
            sent_at = loop.time()
            # the deadline is pushed on while the window is shut; wait until the pushed one is close
            assert await _eventually(lambda: loop.time() - sent_at > timeout
                                     and st.last_in + timeout - loop.time() < 0.2)
            resumed = loop.create_future()

            def on_wake() -> None:  # an I/O callback, as the server's transport draining would be
                loop.remove_reader(wake.fileno())
                old_due = st.last_in + timeout
                up.resume_writing()
                time.sleep(max(0.0, old_due - loop.time()) + 0.1)  # outlast the old deadline
                resumed.set_result(None)

            loop.add_reader(wake.fileno(), on_wake)
            waker.send(b"!")
            await resumed
            (r,) = await c.wait([sid], timeout=5)
            assert r["headers"][b":status"] == b"200" and r["body"] == b"%d" % size
            await c.close()
    finally:
        wake.close()
        waker.close()


class _EarlyAnswer(asyncio.Protocol):
    """Answers ``answer`` after 0.5 s, reading nothing of the request, and never closes."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer

    def connection_made(self, transport) -> None:
        self.transport = transport
        _HELD.append(self)
        loop = asyncio.get_running_loop()
        loop.call_soon(transport.pause_reading)
        loop.call_later(0.5, transport.write, self.answer)  # the proxy holds the client back by then


@pytest.mark.parametrize("answer", [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                                    b"HTTP/1.1 204 No Content\r\n\r\n"])
@on_uvloop
async def test_an_upload_answered_early_by_a_server_that_reads_nothing_is_not_held_back(answer, monkeypatch):
    # Before: the credit held for the server (not reading) was never given back once it had
    # answered, and the connection waited for it to read: the client's upload stalled for good.
    # Now the client is told to stop (RST_STREAM NO_ERROR) and the server's connection is cut.
    from lightmesh.proxy.h2 import H1Upstream

    ended: list = []
    connection_lost = H1Upstream.connection_lost

    def record(self, exc) -> None:
        ended.append(self)
        connection_lost(self, exc)
    monkeypatch.setattr(H1Upstream, "connection_lost", record)
    async with _h1_servers(lambda: _EarlyAnswer(answer)) as urls, ProxyUnderTest(simple_config(urls)) as p:
        c = await H2Client.connect(p.port)
        sid = _upload(c, 32 << 20)
        await c.until(lambda: c.results[sid]["reset"] is not None, timeout=10)
        assert c.results[sid]["headers"][b":status"] == answer[9:12]
        # the rest of the upload is not wanted (RFC 9113 §8.1): the client is told to stop
        assert c.results[sid]["reset"] == h2.errors.ErrorCodes.NO_ERROR
        # the server's connection is cut, not left waiting for it to read what nobody needs
        assert await _eventually(lambda: len(ended) == 1)
        await c.close()


@on_uvloop
async def test_a_retry_after_a_server_that_read_nothing_gets_the_whole_body():
    # The credit held for a server that did not read goes back when that attempt fails: the
    # retry can read the rest of the body (without it the client's window stayed shut).
    size = 12 << 20
    attempts: list[int] = []

    def sink() -> _H1Sink:
        attempts.append(1)
        return _H1Sink(None, abort_after=0.6) if len(attempts) == 1 else _H1Sink(None)
    mws = [{"type": "retry", "name": "retry", "attempts": 2}]
    async with _h1_servers(sink, 2) as urls:
        cfg = simple_config(urls, middlewares=mws, routers=[{"name": "r", "service": "svc", "middlewares": ["retry"]}])
        async with ProxyUnderTest(cfg, options=HTTPOptions(max_replay_bytes=size)) as p:
            c = await H2Client.connect(p.port)
            sid = _upload(c, size)
            (r,) = await c.wait([sid], timeout=30)
            assert r["headers"][b":status"] == b"200" and r["body"] == b"%d" % size
            assert len(attempts) == 2
            await c.close()


class _H2Uploads(asyncio.Protocol):
    """An h2c server for uploads. Its first connection misbehaves as ``first`` says, reading
    (acknowledging) nothing: ``early`` answers 200 to each request at its head and never resets
    it; ``refuse`` resets each request with REFUSED_STREAM 50 ms after its head; ``goaway`` lets
    ``/hang`` hang (20 s) and sends GOAWAY (last stream: the ``/hang`` one) 50 ms after the head of
    the next. ``stall`` behaves but opens windows of 2 GiB and stops reading its socket for 1.5 s
    once 1 MiB came. Any other connection reads at once and answers 200 with the number of body
    bytes. ``max_streams``: its SETTINGS_MAX_CONCURRENT_STREAMS."""

    def __init__(self, owner: dict) -> None:
        import h2.settings

        self.owner = owner
        self.first = not owner["conns"]
        owner["conns"].append(self)
        self.open = True
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        settings = {}
        if owner.get("max_streams") is not None:
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = owner["max_streams"]
        self.stall = self.first and owner["first"] == "stall"
        if self.stall:
            settings[h2.settings.SettingCodes.INITIAL_WINDOW_SIZE] = (1 << 31) - 1
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        self.got: dict[int, int] = {}
        self.hang = 0
        self.stalled = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.initiate_connection()
        if self.stall:
            self.conn.increment_flow_control_window((1 << 31) - 1 - 65535)
        self.flush()

    def connection_lost(self, exc) -> None:
        self.open = False

    def flush(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(self.conn.data_to_send())

    def _refuse(self, sid: int) -> None:
        self.conn.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
        self.flush()

    def _goaway(self) -> None:
        self.conn.close_connection(last_stream_id=self.hang)
        self.flush()

    def data_received(self, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        misbehave = self.owner["first"] if self.first and not self.stall else None
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError:
            return  # after its GOAWAY, h2 takes no frames (a real server would take those of /hang)
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                sid = ev.stream_id
                self.got[sid] = 0
                if misbehave == "early":
                    self.conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
                elif misbehave == "refuse":
                    loop.call_later(0.05, self._refuse, sid)
                elif misbehave == "goaway" and dict(ev.headers)[b":path"] == b"/hang":
                    self.hang = sid
                elif misbehave == "goaway":
                    loop.call_later(0.05, self._goaway)
            elif isinstance(ev, h2.events.DataReceived) and misbehave is None:
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                self.got[ev.stream_id] += len(ev.data)
                if self.stall and not self.stalled and self.got[ev.stream_id] > 1 << 20:
                    self.stalled = True
                    self.transport.pause_reading()
                    loop.call_later(1.5, self.transport.resume_reading)
            if isinstance(ev, h2.events.StreamEnded) and misbehave is None:
                self.conn.send_headers(ev.stream_id, [(b":status", b"200")])
                self.conn.send_data(ev.stream_id, b"%d" % self.got[ev.stream_id], end_stream=True)
        self.flush()


@contextlib.asynccontextmanager
async def _h2_uploads(first: str, max_streams: int | None = None):
    """An _H2Uploads server; yields (its URL, its state: ``conns``, the connections made)."""
    owner = {"first": first, "max_streams": max_streams, "conns": []}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _H2Uploads(owner), "127.0.0.1", 0)
    try:
        yield f"h2c://127.0.0.1:{server.sockets[0].getsockname()[1]}", owner
    finally:
        for proto in owner["conns"]:
            proto.transport.abort()
        server.close()
        await server.wait_closed()


@on_uvloop
async def test_an_h2c_server_that_answers_uploads_early_gives_back_its_streams():
    # Before: the proxy never ended its side of a stream the server had answered while the client
    # was still uploading. With a server that neither reads nor resets, the client's upload stalled
    # (its data waited for the server's window) and the stream kept counting against the server's
    # limit: with 2 such streams, every later request to that server hung.
    async with _h2_uploads("early", max_streams=2) as (url, _), ProxyUnderTest(simple_config([url])) as p:
        c = await H2Client.connect(p.port)
        uploads = [_upload(c, 4 << 20) for _ in range(2)]
        await c.until(lambda: all(c.results[s]["reset"] is not None for s in uploads), timeout=10)
        for sid in uploads:
            # the answer, then RST_STREAM(NO_ERROR): the rest of the upload is not wanted (RFC 9113 §8.1)
            assert c.results[sid]["headers"][b":status"] == b"200"
            assert c.results[sid]["reset"] == h2.errors.ErrorCodes.NO_ERROR
        (after,) = await c.wait([c.start("/after", method="GET")], timeout=5)
        assert after["headers"][b":status"] == b"200"
        await c.close()


@pytest.mark.parametrize("first", ["refuse", "goaway"])
@on_uvloop
async def test_an_upload_refused_while_its_data_waits_for_the_servers_window_goes_elsewhere_at_once(first):
    # Before: the data of a stream refused (REFUSED_STREAM, or above a GOAWAY's last stream) stayed
    # queued for a window that would never open, its credit with it: the client's window stayed shut
    # and the retry on another connection never got the rest of the body (REFUSED_STREAM: for good;
    # GOAWAY: until the connection's last stream ended). And each refusal left a connection open.
    size = 512 << 10  # within max_replay_bytes: a refused stream is tried again
    async with _h2_uploads(first) as (url, owner), ProxyUnderTest(simple_config([url])) as p:
        c = await H2Client.connect(p.port)
        if first == "goaway":
            hang = c.start("/hang", method="GET")
            assert await _eventually(lambda: owner["conns"] and owner["conns"][0].hang)
        sid = _upload(c, size)
        (r,) = await c.wait([sid], timeout=5)
        assert r["headers"][b":status"] == b"200" and r["body"] == b"%d" % size
        assert len(owner["conns"]) == 2
        if first == "refuse":  # the refusing connection was retired, and closed (no streams left)
            assert await _eventually(lambda: not owner["conns"][0].open)
        else:
            c.reset(hang)
        await c.close()


@on_uvloop
async def test_streams_opened_while_the_servers_connection_is_paused_each_get_their_own_id():
    # Before: HEADERS waited in the queue while the server's connection was paused, and h2 hands
    # out the same next stream id until HEADERS are sent: two new streams shared one id. One never
    # got an answer, the other broke the connection (a protocol error: 502 for every stream on it).
    from lightmesh.proxy.h2 import H2Upstream

    async with _h2_uploads("stall") as (url, owner), ProxyUnderTest(simple_config([url])) as p:
        uploader = await H2Client.connect(p.port)
        up = _upload(uploader, 16 << 20)
        uploading = asyncio.ensure_future(uploader.wait([up], timeout=20))
        assert await _eventually(lambda: any(o.side.paused for o in gc.get_objects() if isinstance(o, H2Upstream)))
        a, b = await H2Client.connect(p.port), await H2Client.connect(p.port)
        sa = a.start("/a", body=b"eleven bytes"[:11])
        sb = b.start("/b", method="GET")
        (ra,) = await a.wait([sa], timeout=10)
        (rb,) = await b.wait([sb], timeout=10)
        assert (ra["headers"][b":status"], ra["body"]) == (b"200", b"11")
        assert (rb["headers"][b":status"], rb["body"]) == (b"200", b"0")
        (rup,) = await uploading
        assert (rup["headers"][b":status"], rup["body"]) == (b"200", b"%d" % (16 << 20))
        assert len(owner["conns"]) == 1  # all on the one connection, which held
        for c in (a, b, uploader):
            await c.close()


@on_uvloop
async def test_an_h2c_server_that_takes_no_streams_gets_no_storm_of_connections():
    # SETTINGS_MAX_CONCURRENT_STREAMS 0 (a server under load): before, each new connection was
    # "full" at once and the stream moved to another, some 3,000 connections a second for one
    # request that never got an answer. Now: refused (502), on one connection.
    async with _h2_uploads("none", max_streams=0) as (url, owner), ProxyUnderTest(simple_config([url])) as p:
        c = await H2Client.connect(p.port)
        (r,) = await c.wait([c.start("/x", method="GET")], timeout=5)
        assert r["headers"][b":status"] == b"502"
        await asyncio.sleep(0.2)
        assert len(owner["conns"]) == 1
        assert p.metrics.upstream_errors[("svc", "refused")] == 1
        await c.close()


# --------------------------------------------------------------------------- 1xx


@on_uvloop
async def test_informational_responses_are_relayed_from_both_kinds_of_server():
    async with H2Server() as up, Backend("h1") as b:
        cfg = simple_config({"h2": [up.url], "h1": [b.url]}, routers=[
            {"name": "a", "service": "h2", "match": {"hosts": ["h2.example"]}},
            {"name": "b", "service": "h1", "match": {"hosts": ["h1.example"]}}])
        async with ProxyUnderTest(cfg) as p:
            c = await H2Client.connect(p.port)
            for host, path in (("h2.example", "/continue"), ("h1.example", "/echo")):
                sid = c.start(path, authority=host, more=True, headers=[(b"expect", b"100-continue")])
                await c.until(lambda: c.results[sid]["info"], timeout=5)  # before any body, as curl waits
                c.send(sid, b"the body", end=True)
                (r,) = await c.wait([sid])
                assert [i[b":status"] for i in r["info"]] == [b"100"]
                assert r["headers"][b":status"] == b"200" and r["body"].endswith(b"the body")
            await c.close()
            assert p.metrics.requests[("h2", "200", "POST")] == 1 and p.metrics.requests[("h1", "200", "POST")] == 1


# --------------------------------------------------------------------------- drain


@on_uvloop
async def test_drain_sends_goaway_at_once_and_lets_the_streams_in_flight_finish():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        await c.wait([c.start("/echo", body=b"w")])
        slow = c.start("/slow", method="GET")  # answered after 0.3 s
        await asyncio.sleep(0.05)
        drained = asyncio.ensure_future(p.options.connections.drain(5.0))
        await c.until(lambda: ("goaway", slow) in c.log, timeout=5)
        late = c.start("/echo", body=b"opened anyway")
        r_slow, r_late = await c.wait([slow, late], timeout=5)
        assert r_slow["headers"][b":status"] == b"200"
        assert r_late["reset"] == h2.errors.ErrorCodes.REFUSED_STREAM
        with pytest.raises(ConnectionError):  # closed once the last stream is done
            await c.until(lambda: False, timeout=5)
        # GOAWAY (last stream: the slow one) before its response, then the final GOAWAY
        assert c.log[1:] == [("goaway", slow), ("status", slow, b"200"), ("goaway", slow)]
        assert await drained is True
        assert len(p.options.connections) == 0
        await c.close()


@on_uvloop
async def test_recycling_an_entry_points_connections_drains_them_alone():
    # A rate limit arriving on a port with several workers: its open connections must reconnect
    # (see steering). HTTP/2: GOAWAY, the streams in flight finish, new ones are refused, then it
    # closes; HTTP/1.1: an idle connection closes now, a busy one after its response, said so.
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        await c.wait([c.start("/echo", body=b"w")])
        slow = c.start("/slow", method="GET")  # answered after 0.3 s
        await asyncio.sleep(0.05)
        assert p.options.connections.recycle("web") == 1 and p.options.connections.recycle("other") == 0
        await c.until(lambda: ("goaway", slow) in c.log, timeout=5)
        late = c.start("/echo", body=b"opened anyway")
        r_slow, r_late = await c.wait([slow, late], timeout=5)
        assert r_slow["headers"][b":status"] == b"200"
        assert r_late["reset"] == h2.errors.ErrorCodes.REFUSED_STREAM
        with pytest.raises(ConnectionError):  # closed once the last stream is done
            await c.until(lambda: False, timeout=5)
        assert not p.options.connections.draining  # the proxy itself is not draining
        await c.close()
    async with Backend("A") as a, ProxyUnderTest(simple_config([a.url])) as p:
        idle = await RawClient.connect(p.port)
        await idle.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert (await idle.response()).status == 200
        busy = await RawClient.connect(p.port)
        await busy.send(b"GET /slow?ms=300 HTTP/1.1\r\nHost: svc\r\n\r\n")
        fresh_one = await RawClient.connect(p.port)  # accepted, its first request not sent yet
        await asyncio.sleep(0.05)
        assert p.options.connections.recycle("web") == 3
        # a just-accepted connection is not reset under its first request: answered, then closed
        await fresh_one.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        first = await fresh_one.response(5)
        assert first.status == 200 and first.header("Connection") == "close"
        await fresh_one.close()
        resp = await busy.response(5)
        assert resp.status == 200 and resp.header("Connection") == "close"
        assert await busy.read_all(2) == b"" and await idle.read_all(2) == b""  # both closed
        fresh = await RawClient.connect(p.port)
        await fresh.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert (await fresh.response()).status == 200 and len(p.options.connections) == 1
        for conn in (idle, busy, fresh):
            await conn.close()


@on_uvloop
async def test_a_connection_recycled_before_its_first_request_serves_it_then_closes():
    # HTTP/1.1: even an answer of the proxy's own (404 here) says Connection: close; HTTP/2 (the
    # preface and the first HEADERS written apart, as some clients do): the stream is served, then
    # GOAWAY; nothing comes: closed after a moment.
    routers = [{"name": "r", "service": "svc", "match": {"hosts": ["svc"]}}]
    async with Backend("A") as a, ProxyUnderTest(simple_config([a.url], routers=routers)) as p:
        unrouted, quiet = await RawClient.connect(p.port), await RawClient.connect(p.port)
        await asyncio.sleep(0.05)
        assert p.options.connections.recycle("web") == 2
        await unrouted.send(b"GET / HTTP/1.1\r\nHost: elsewhere\r\n\r\n")
        resp = await unrouted.response(5)
        assert resp.status == 404 and resp.header("Connection") == "close"
        assert await unrouted.read_all(2) == b"" and await quiet.read_all(3) == b""  # (quiet: after 1 s)
        await unrouted.close()
        await quiet.close()
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        await asyncio.sleep(0.05)
        assert p.options.connections.recycle("web") == 1
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        writer.write(conn.data_to_send())  # the preface alone
        await asyncio.sleep(0.1)
        conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"),
                              (b":path", b"/slow")], end_stream=True)  # answered after 0.3 s
        writer.write(conn.data_to_send())
        events = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while loop.time() < deadline:
            data = await asyncio.wait_for(reader.read(65536), deadline - loop.time())
            if not data:
                break
            events += conn.receive_data(data)
            writer.write(conn.data_to_send())
        kinds = [type(e).__name__ for e in events]
        assert "ResponseReceived" in kinds and "StreamEnded" in kinds and "ConnectionTerminated" in kinds, kinds
        assert not any(isinstance(e, h2.events.StreamReset) for e in events)
        writer.close()


@on_uvloop
async def test_recycling_a_connection_whose_answer_waits_for_the_clients_window_says_goaway():
    # No stream in progress, but an answer queued for the client's flow-control window: recycle
    # sent nothing and refused every new stream, never telling the client to go elsewhere.
    import h2.settings

    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        reader, writer = await asyncio.open_connection("127.0.0.1", p.port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})  # a window never opened
        conn.send_headers(1, [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"),
                              (b":path", b"/big?size=5000")], end_stream=True)
        writer.write(conn.data_to_send())
        goaway = []

        async def read_for(seconds: float) -> None:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end and not goaway:
                try:
                    data = await asyncio.wait_for(reader.read(65536), end - loop.time())
                except asyncio.TimeoutError:
                    return
                if not data:
                    return
                goaway.extend(e for e in conn.receive_data(data) if isinstance(e, h2.events.ConnectionTerminated))

        await read_for(1.0)
        (down,) = p.options.connections.conns
        assert not down.streams and down.side.queues  # the state the defect needed
        recycled = p.options.connections.recycle("web")
        await read_for(2.0)
        assert goaway and goaway[0].last_stream_id == 1
        assert recycled == 1
        writer.close()


@on_uvloop
async def test_a_server_that_shuts_down_gracefully_finishes_its_streams():
    """An h2c server's GOAWAY (a graceful shutdown, as gRPC servers do it) lets the streams it took
    finish; the next streams go to a new connection, and nothing counts as a failure."""
    async with H2Server(goaway_on_slow=True) as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        (r,) = await c.wait([c.start("/slow", method="GET")], timeout=5)
        assert r["headers"][b":status"] == b"200" and r["reset"] is None
        (r,) = await c.wait([c.start("/echo", body=b"next")], timeout=5)
        assert r["body"] == b"next"
        assert up.connections == 2 and not p.metrics.upstream_errors
        await c.close()


@on_uvloop
async def test_invented_methods_do_not_make_new_metric_series():
    # an HTTP/2 client may send any token as :method; the series stay bounded
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        sids = [c.start("/echo", method=f"INVENTED{i}") for i in range(20)] + [c.start("/echo", method="GET")]
        await c.wait(sids, timeout=10)
        await c.close()
        methods = {method for (_svc, _code, method) in p.metrics.requests}
        assert methods == {"_OTHER", "GET"}
        assert sum(n for (_svc, _code, m), n in p.metrics.requests.items() if m == "_OTHER") == 20


@on_uvloop
async def test_a_failed_attempt_the_retry_answered_leaves_the_circuit_breaker_closed():
    # as on HTTP/1.1: the breaker judges a stream's outcome after its retries
    from .backends import closed_port

    mws = [{"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"},
           {"type": "retry", "name": "retry", "attempts": 2}]
    routers = [{"name": "r", "service": "svc", "middlewares": ["cb", "retry"]}]
    dead = f"h2c://127.0.0.1:{closed_port()}"
    async with H2Server() as up, ProxyUnderTest(simple_config([dead, up.url], routers=routers,
                                                              middlewares=mws)) as p:
        await asyncio.sleep(0.15)  # past the breaker's first check time
        c = await H2Client.connect(p.port)
        statuses = []
        for _ in range(4):
            (r,) = await c.wait([c.start("/echo", body=b"x")], timeout=5)
            statuses.append(r["headers"][b":status"])
            await asyncio.sleep(0.12)
        await c.close()
        assert statuses == [b"200"] * 4
        assert p.metrics.retries["svc"] >= 1 and p.metrics.breaker_state.get("svc", 0) == 0


@on_uvloop
async def test_timeouts_count_against_the_server_in_circuit_breakers():
    # as on HTTP/1.1: a server that never answers trips a breaker on its 504s
    mws = [{"type": "request_timeout", "name": "t", "seconds": 0.05},
           {"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"}]
    routers = [{"name": "r", "service": "svc", "middlewares": ["t", "cb"]}]
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url], routers=routers, middlewares=mws)) as p:
        c = await H2Client.connect(p.port)
        statuses = []
        for _ in range(40):  # the breaker evaluates its window every 100 ms
            (r,) = await c.wait([c.start("/hang")], timeout=5)
            statuses.append(r["headers"][b":status"])
            if statuses[-1] == b"503":
                break
        await c.close()
        assert statuses[0] == b"504" and statuses[-1] == b"503"


@on_uvloop
async def test_streams_the_proxy_refuses_itself_get_a_span():
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from lightmesh.proxy.tracing import make_tracer

    exporter = InMemorySpanExporter()
    options = HTTPOptions(tracer=make_tracer("unused", "proxy-test", exporter=exporter, batch=False))
    routers = [{"name": "r", "service": "svc", "match": {"hosts": ["svc"]}}]
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url], routers=routers), options=options) as p:
        c = await H2Client.connect(p.port)
        (r,) = await c.wait([c.start("/echo", authority="nowhere")], timeout=5)
        assert r["headers"][b":status"] == b"404"
        await c.close()
    (span,) = exporter.get_finished_spans()
    assert span.attributes["http.status_code"] == 404 and span.attributes["service"] == "unrouted"


@on_uvloop
async def test_a_method_that_is_no_token_is_malformed():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        c.conn.config.validate_outbound_headers = False
        (bad,) = await c.wait([c.start("/admin", method="GET /admin")], timeout=5)
        assert bad["reset"] == h2.errors.ErrorCodes.PROTOCOL_ERROR and not up.requests
        (star,) = await c.wait([c.start("*", method="OPTIONS")], timeout=5)  # the one use of "*"
        assert star["headers"][b":status"] == b"200"
        await c.close()


@on_uvloop
async def test_max_header_bytes_is_one_streams_431_not_the_connections_end():
    from lightmesh.proxy.http import HTTPOptions
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=HTTPOptions(max_header_bytes=4096)) as p:
        c = await H2Client.connect(p.port)
        slow = c.start("/slow", method="GET")
        await asyncio.sleep(0.05)
        big = c.start("/echo", headers=[(b"x-big", b"a" * 5000)])  # over the limit, under the decoder's
        r_slow, r_big = await c.wait([slow, big], timeout=5)
        assert r_big["headers"][b":status"] == b"431"
        assert r_slow["headers"][b":status"] == b"200" and r_slow["reset"] is None
        (fine,) = await c.wait([c.start("/echo", body=b"ok", headers=[(b"x-ok", b"a" * 3000)])])
        assert fine["body"] == b"ok"
        await c.close()
        assert [r[b":path"] for r in up.requests] == [b"/slow", b"/echo"]


@on_uvloop
async def test_a_connection_dropped_with_streams_open_is_let_go_at_once():
    # Finishing its abandoned streams re-armed the idle timer of the closed connection: each such
    # connection, its streams and their upstream objects stayed alive for the idle timeout (180 s).
    import gc
    import weakref

    from lightmesh.proxy.h2 import H2Downstream

    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await H2Client.connect(p.port)
        for _ in range(5):
            client.start("/hang", method="GET")
        await asyncio.sleep(0.3)  # the streams are with the server
        [conn] = [weakref.ref(c) for c in gc.get_objects() if isinstance(c, H2Downstream) and not c.side.closed]
        client.writer.transport.abort()
        await asyncio.sleep(0.3)
        gc.collect()
        assert conn() is None, "the closed connection is still held (idle timer: %r)" % conn().idle_timer


@on_uvloop
async def test_an_h2c_connect_out_of_descriptors_is_not_the_servers_fault():
    # the shared h2c connection's connect still counted EMFILE as reason=connect and ejected the server
    import errno

    loop = asyncio.get_running_loop()
    real_create_connection = loop.create_connection
    failed = []

    async def exhausted_once(factory, *args, **kwargs):
        if not failed and type(factory()).__name__ == "H2Upstream":
            failed.append(True)
            raise OSError(errno.EMFILE, "Too many open files")
        return await real_create_connection(factory, *args, **kwargs)

    loop.create_connection = exhausted_once
    try:
        async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
            c = await H2Client.connect(p.port)
            (first,) = await c.wait([c.start("/echo", body=b"x")], timeout=5)
            (second,) = await c.wait([c.start("/echo", body=b"y")], timeout=5)
            await c.close()
            assert failed and first["headers"][b":status"] == b"502"
            assert second["headers"][b":status"] == b"200"
            assert p.metrics.upstream_errors == {("svc", "local_limit"): 1}
    finally:
        loop.create_connection = real_create_connection


@on_uvloop
async def test_an_h2_stream_whose_rate_limit_token_is_due_soon_waits_instead_of_a_429(monkeypatch):
    import time

    from .test_http_middlewares import LimiterClock

    clock = LimiterClock(monkeypatch)  # the wait below is exactly 0.05 s, however the host stalls
    mws = [{"type": "rate_limit", "name": "rl", "average": 5, "burst": 1}]
    routers = [{"name": "r", "service": "svc", "middlewares": ["rl"]}]
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url], routers=routers, middlewares=mws)) as p:
        c = await H2Client.connect(p.port)
        (first,) = await c.wait([c.start("/echo", body=b"a")], timeout=5)
        (refused,) = await c.wait([c.start("/echo", body=b"b")], timeout=5)
        clock.advance(0.15)  # the next token is 0.05 s away: the stream waits for it
        t0 = time.monotonic()
        (waited,) = await c.wait([c.start("/echo", body=b"c")], timeout=5)
        elapsed = time.monotonic() - t0
        await c.close()
        assert [r["headers"][b":status"] for r in (first, refused, waited)] == [b"200", b"429", b"200"]
        assert refused["headers"][b"retry-after"] == b"1" and b"x-retry-in" in refused["headers"]
        assert elapsed >= 0.03


@on_uvloop
async def test_an_h2_delay_never_outlives_its_stream_nor_counts_in_its_timeouts(monkeypatch):
    import time

    from .test_http_middlewares import LimiterClock, delay_routes_config

    clock = LimiterClock(monkeypatch)  # the waits below are exactly 0.4 s, however the host stalls
    async with H2Server() as up, ProxyUnderTest(delay_routes_config(up.url)) as p:
        c = await H2Client.connect(p.port)

        async def get(host):
            t0 = time.monotonic()
            (r,) = await c.wait([c.start("/echo", body=b"x", authority=host)], timeout=5)
            return r["headers"][b":status"], time.monotonic() - t0

        try:
            assert (await get("a"))[0] == b"403"
            clock.advance(0.6)
            assert (await get("a"))[0] == b"403"  # a delayed pass, then denied: nobody waits for it
            status, took = await get("b")
            assert status == b"200" and took < 0.35, took  # nothing to wait for (c's wait is 0.4 s)
            assert (await get("c"))[0] == b"200"
            clock.advance(0.6)
            status, took = await get("c")  # waits 0.4 s, longer than its 0.25 s request timeout
            assert status == b"200" and took >= 0.3, (status, took)
            assert ("svc", "timeout") not in p.metrics.upstream_errors
        finally:
            await c.close()


@on_uvloop
async def test_forwarded_headers_a_request_headers_edit_decides_are_the_edits_alone_on_h2():
    mws = [{"type": "request_headers", "name": "h", "set": {"X-Real-Ip": "9.9.9.9", "X-Forwarded-Server": "edited"},
            "remove": ["X-Forwarded-Port"]}]
    routers = [{"name": "r", "service": "svc", "middlewares": ["h"]}]
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url], routers=routers, middlewares=mws)) as p:
        c = await H2Client.connect(p.port)
        (r,) = await c.wait([c.start("/echo", body=b"x")], timeout=5)
        await c.close()
        seen = up.requests[-1]
        assert r["headers"][b":status"] == b"200"
        assert (seen[b"x-real-ip"], seen[b"x-forwarded-server"]) == (b"9.9.9.9", b"edited")
        assert b"x-forwarded-port" not in seen


@on_uvloop
async def test_h2_forwarded_headers_under_edits_match_http1():
    for edit, sent, xff, port in (({"set": {"X-Forwarded-For": "1.2.3.4"}}, {}, b"1.2.3.4, 127.0.0.1", b"80"),
                                  ({"remove": ["X-Forwarded-For"]}, {"x-forwarded-for": "5.5.5.5"}, b"127.0.0.1", b"80"),
                                  ({"set": {"X-Forwarded-Proto": "http"}}, {"x-forwarded-proto": "https"},
                                   b"127.0.0.1", b"443")):
        mws = [{"type": "request_headers", "name": "h", **edit}]
        routers = [{"name": "r", "service": "svc", "middlewares": ["h"]}]
        async with H2Server() as up, ProxyUnderTest(simple_config([up.url], routers=routers, middlewares=mws)) as p:
            c = await H2Client.connect(p.port)
            (r,) = await c.wait([c.start("/echo", body=b"x", headers=[(k.encode(), v.encode()) for k, v in sent.items()])], timeout=5)
            await c.close()
            seen = up.requests[-1]
            assert r["headers"][b":status"] == b"200"
            assert (seen[b"x-forwarded-for"], seen[b"x-forwarded-port"]) == (xff, port), edit



@on_uvloop
async def test_a_stream_that_waited_for_its_token_across_a_swap_leaves_no_connection_to_the_retired_server(
        monkeypatch):
    # The stream's server left the config while the stream waited for its rate-limit token: the
    # connection opened for it afterwards belongs to no plane, so nothing else would ever close it.
    import time

    from .test_http_middlewares import LimiterClock

    clock = LimiterClock(monkeypatch)  # its token is due when the test says, not after a stall
    mws = [{"type": "rate_limit", "name": "rl", "average": 5, "burst": 1}]
    routers = [{"name": "r", "service": "svc", "middlewares": ["rl"]}]
    async with H2Server() as old, H2Server() as new, \
            ProxyUnderTest(simple_config([old.url], routers=routers, middlewares=mws)) as p:
        c = await H2Client.connect(p.port)
        (first,) = await c.wait([c.start("/echo", body=b"a")], timeout=5)
        assert first["headers"][b":status"] == b"200" and old.open_connections == 1
        clock.advance(0.15)  # the next token is 0.05 s away: the stream waits for it
        t0 = time.monotonic()
        waiting = c.start("/echo", body=b"b")
        await clock.until_reserved(1)  # it waits now (polled well within its 0.05 s)
        p.apply(simple_config([new.url], routers=routers, middlewares=mws))
        (waited,) = await c.wait([waiting], timeout=5)
        assert waited["headers"][b":status"] == b"200" and time.monotonic() - t0 >= 0.02
        # it went to the server of its own config, on a new connection (the swap closed the first)
        assert old.connections == 2
        assert await _eventually(lambda: old.open_connections == 0, 3), old.open_connections
        (after,) = await c.wait([c.start("/echo", body=b"c")], timeout=5)
        await c.close()
        assert after["headers"][b":status"] in (b"200", b"429") and new.connections <= 1
