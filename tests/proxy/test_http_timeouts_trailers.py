"""Request-body and response timeouts, and chunked trailer fields, end to end on loopback.

``body_timeout``: a client that stops sending a request body mid-way gets 408 and the connection
closed; the upstream connection is cut (it must not wait for the rest either). The timeout is
between reads, so a slow but steady upload passes. ``response_timeout``: a whole request whose
response head does not come in time gets 504 (the route's request-timeout middleware wins when
set). ``tunnel_idle_timeout`` closes an Upgrade tunnel that carried nothing for that long.
Trailer fields of chunked messages reach the other side, both ways, without hop-by-hop or
framing fields; an HTTP/1.0 client gets the body without them. Limits: at most 100 trailer fields
either way, and a response head of at most 64 KiB (502 beyond)."""

from __future__ import annotations

import asyncio

from lightmesh.proxy.http import HTTPOptions

from .backends import (Backend, ProxyUnderTest, RawClient, ScriptedUpstream, client_through_a_freeze, on_uvloop,
                       request, simple_config)


@on_uvloop
async def test_stalled_request_body_gets_408_and_the_upstream_connection_is_cut():
    opts = HTTPOptions(body_timeout=0.3)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        loop = asyncio.get_running_loop()
        client = await RawClient.connect(p.port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nabc")
        start = loop.time()
        resp = await client.response(timeout=5)
        assert resp.status == 408
        assert 0.25 <= loop.time() - start < 2.5
        assert resp.header("Connection") == "close"
        assert await client.closed()
        for _ in range(50):  # the upstream connection carrying the truncated request is closed
            if not b._protocols:
                break
            await asyncio.sleep(0.02)
        assert not b._protocols
        assert not [r for r in b.requests if r.method == "POST"]
        assert p.metrics.requests[("svc", "408", "POST")] == 1
        # the listener is fine afterwards
        assert (await request(p.port)).status == 200


_STEADY_CLIENT = r"""
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 12\r\n\r\n")
for _ in range(12):  # a byte every 0.2 s, well within the 1 s body timeout
    time.sleep(0.2)
    s.sendall(b"x")
s.settimeout(10)
print(s.recv(12).decode())
"""


@on_uvloop
async def test_a_proxy_frozen_past_a_body_deadline_reads_before_it_judges():
    # Before: frozen (SIGSTOP, a cgroup freezer, CPU throttling) past the deadline while a steady
    # client's bytes arrived, the proxy's timer ran before its first read after the freeze (libuv's
    # poll returns early after SIGCONT) and gave that client 408. The client here is another process
    # and the freeze stops this one, the proxy's.
    opts = HTTPOptions(body_timeout=1.0)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        out = await client_through_a_freeze(_STEADY_CLIENT, p.port, start=0.5)
        assert out.startswith(b"HTTP/1.1 200"), out
        assert b.requests[-1].body == b"x" * 12


@on_uvloop
async def test_slow_but_steady_request_body_is_not_cut():
    # A gap many times shorter than the timeout: a stalled host (0.1-0.4 s) only widens some gaps.
    opts = HTTPOptions(body_timeout=1.0)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: 16\r\n\r\n")
        pieces = [b"ab", b"cd", b"ef", b"gh", b"ij", b"kl", b"mn", b"op"]
        for piece in pieces:  # 1.2 s in all, never 1 s without a byte
            await asyncio.sleep(0.15)
            await client.send(piece)
        resp = await client.response(timeout=5)
        assert resp.status == 200
        assert b.requests[-1].body == b"".join(pieces)
        # the connection stays usable, and idle keep-alive is not mistaken for a stalled body
        await asyncio.sleep(1.2)
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert (await client.response()).status == 200
        await client.close()


@on_uvloop
async def test_stalled_body_after_the_response_began_closes_the_connection():
    # The upstream answers as soon as it has the head, with a body it never finishes.
    script = [[b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial"]]
    opts = HTTPOptions(body_timeout=0.3)
    async with ScriptedUpstream(script) as up, ProxyUnderTest(simple_config([up.url]), options=opts) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 1000\r\n\r\nxyz")
        raw = await client.read_all(timeout=5)  # to EOF: the proxy cut the connection
        assert raw.startswith(b"HTTP/1.1 200 OK\r\n") and raw.endswith(b"partial")


@on_uvloop
async def test_response_timeout_504_when_the_upstream_never_answers():
    opts = HTTPOptions(response_timeout=0.3)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await request(p.port, path="/hang")).status == 504
        assert 0.25 <= loop.time() - start < 2.5
        # it counts from the end of the request: a slow upload is not a slow response
        body = b"z" * 1000
        client = await RawClient.connect(p.port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 250):
            await asyncio.sleep(0.15)
            await client.send(body[i:i + 250])
        resp = await client.response()
        assert resp.status == 200 and b.requests[-1].body == body
        await client.close()
        assert (await request(p.port, path="/slow?ms=50")).status == 200
        assert p.metrics.upstream_errors[("svc", "timeout")] == 1
        assert p.metrics.requests[("svc", "504", "GET")] == 1


@on_uvloop
async def test_route_request_timeout_takes_precedence_over_response_timeout():
    mws = [{"type": "request_timeout", "name": "to", "seconds": 0.8}]
    opts = HTTPOptions(response_timeout=0.1)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url], routers=[
            {"name": "r", "service": "svc", "middlewares": ["to"]}], middlewares=mws), options=opts) as p:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await request(p.port, path="/slow?ms=300")).status == 200  # beyond 0.1 s, within 0.8 s
        assert (await request(p.port, path="/hang")).status == 504
        assert loop.time() - start >= 0.8 + 0.3 - 0.05


@on_uvloop
async def test_request_trailer_fields_forwarded_without_hop_by_hop_ones():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                          b"5\r\nhello\r\n0\r\nX-Sum: 5d41402a\r\nKeep-Alive: timeout=1\r\nX-Other: o\r\n\r\n")
        resp = await client.response()
        assert resp.status == 200
        seen = b.requests[-1]
        assert seen.body == b"hello"
        assert seen.header("Trailer") == "X-Sum"
        assert seen.header("X-Sum") == "5d41402a" and seen.header("X-Other") == "o"
        assert seen.header("Keep-Alive") is None
        # a Content-Length request does not carry the announcement of trailers it cannot have
        await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nTrailer: X-Sum\r\nContent-Length: 2\r\n\r\nok")
        assert (await client.response()).status == 200
        assert b.requests[-1].header("Trailer") is None
        await client.close()


@on_uvloop
async def test_too_many_request_trailer_fields_get_431():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        fields = b"".join(b"X-T%d: v\r\n" % i for i in range(101))
        await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"2\r\nhi\r\n0\r\n" + fields + b"\r\n")
        resp = await client.response()
        assert resp.status == 431
        assert await client.closed()
        assert not [r for r in b.requests if r.method == "POST"]


@on_uvloop
async def test_the_trailer_section_is_bounded_like_a_head_blank_line_included():
    limit = 2048
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=HTTPOptions(max_header_bytes=limit)) as p:
        for size, status, pieces in ((limit, 200, 1), (limit + 1, 431, 1), (limit, 200, 4)):
            value = b"v" * (size - len(b"X-Pad: \r\n\r\n"))  # one field and the blank line: `size` bytes
            client = await RawClient.connect(p.port)
            try:
                await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                                  b"2\r\nhi")
                rest = b"\r\n0\r\nX-Pad: " + value + b"\r\n\r\n"
                step = -(-len(rest) // pieces)
                for i in range(0, len(rest), step):  # in pieces: the bound read by read is no stricter
                    await asyncio.sleep(0.02)
                    await client.send(rest[i:i + step])
                assert (await client.response()).status == status, (size, pieces)
            finally:
                await client.close()


CHUNKED_WITH_TRAILERS = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
                         b"5\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\nProxy-Secret: no\r\nConnection: x\r\n\r\n")


@on_uvloop
async def test_response_trailer_fields_reach_an_http11_client():
    async with ScriptedUpstream([[CHUNKED_WITH_TRAILERS]] * 2) as up, \
            ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        for _ in range(2):  # twice: the framing stays in sync after the trailer section
            await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            resp = await client.response()
            assert resp.status == 200 and resp.body == b"hello world"
            assert resp.header("Trailer") == "X-Checksum"
            assert resp.header("X-Checksum") == "abc"  # the test client's parser sees trailers as fields
            names = {k.lower() for k, _ in resp.headers}
            assert "proxy-secret" not in names and "connection" not in names
        await client.close()


@on_uvloop
async def test_response_trailer_fields_dropped_for_an_http10_client():
    async with ScriptedUpstream([[CHUNKED_WITH_TRAILERS]]) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET / HTTP/1.0\r\nHost: svc\r\n\r\n")
        raw = await client.read_all(timeout=5)
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200") and body == b"hello world"
        assert b"trailer" not in head.lower() and b"x-checksum" not in raw.lower()


@on_uvloop
async def test_response_heads_beyond_the_limit_are_502_and_large_ones_within_it_pass():
    filler = b"X-Filler: " + b"a" * 16000 + b"\r\n"  # 4 reads of 16 KB: 64 KB of head, then more
    endless = [b"HTTP/1.1 200 OK\r\n"] + [filler] * 5
    big_ok = [b"HTTP/1.1 200 OK\r\n", filler, filler, filler, b"Content-Length: 2\r\n\r\nok"]
    async with ScriptedUpstream([endless, big_ok]) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert (await client.response()).status == 502
        assert p.metrics.upstream_errors[("svc", "protocol")] == 1
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp = await client.response()
        assert resp.status == 200 and resp.body == b"ok" and len(resp.header("X-Filler")) == 16000
        await client.close()


@on_uvloop
async def test_response_with_too_many_trailer_fields_is_cut():
    trailers = b"".join(b"X-T%d: v\r\n" % i for i in range(101))
    script = [[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n", b"0\r\n" + trailers + b"\r\n"]]
    async with ScriptedUpstream(script) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        raw = await client.read_all(timeout=5)  # cut: the chunked body never ends
        assert raw.startswith(b"HTTP/1.1 200 OK") and not raw.endswith(b"\r\n\r\n")
        assert b"X-T0" not in raw


@on_uvloop
async def test_many_head_fields_are_not_mistaken_for_trailer_fields():
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(120))
    resp_bytes = b"HTTP/1.1 200 OK\r\n" + fields + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
    async with ScriptedUpstream([[resp_bytes]] * 3) as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        for _ in range(2):
            await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            resp = await client.response()
            assert resp.status == 200 and resp.body == b"hi" and resp.header("X-H119") == "v"
        await client.close()
        client = await RawClient.connect(p.port)
        await client.send(b"GET / HTTP/1.0\r\nHost: svc\r\n\r\n")
        raw = await client.read_all(timeout=5)
        assert raw.startswith(b"HTTP/1.1 200 OK") and raw.endswith(b"\r\n\r\nhi")


@on_uvloop
async def test_idle_tunnel_closed_after_tunnel_idle_timeout_and_a_busy_one_kept():
    # A gap many times shorter than the timeout: a stalled host (0.1-0.4 s) only widens some gaps.
    opts = HTTPOptions(tunnel_idle_timeout=1.0)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        loop = asyncio.get_running_loop()
        client = await RawClient.connect(p.port)
        await client.send(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        assert (await client.response()).status == 101
        for i in range(8):  # 1.2 s of traffic, never 1 s without a byte
            await asyncio.sleep(0.15)
            start = loop.time()  # (before the last bytes through the tunnel)
            await client.send(b"ping%d" % i)
            assert await client.read_raw(5) == b"ping%d" % i
        assert await client.closed(5.0)  # then idle: closed
        assert 0.95 <= loop.time() - start < 3.5
        for _ in range(50):
            if not b._protocols:
                break
            await asyncio.sleep(0.02)
        assert not b._protocols  # the upstream side of the tunnel too
