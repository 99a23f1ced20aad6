"""The HTTP reverse proxy end to end on loopback: real listener, real backends, raw-socket clients."""

from __future__ import annotations

import asyncio
import hashlib
import socket

import pytest

from lightmesh.proxy.http import HTTPOptions

from .backends import Backend, on_uvloop, ProxyUnderTest, RawClient, closed_port, pattern, request, simple_config


@on_uvloop
async def test_forwarded_headers_the_client_sent_are_kept_but_the_server_name_is_ours():
    async with Backend("b1") as b, ProxyUnderTest(simple_config([b.url])) as p:
        await request(p.port, host="svc", headers={"X-Real-Ip": "10.1.1.1", "X-Forwarded-Server": "spoofed"})
        seen = b.requests[-1]
        assert (seen.header("X-Real-Ip"), seen.header("X-Forwarded-Port")) == ("10.1.1.1", "80")
        assert seen.header_all("X-Forwarded-Server") == [socket.gethostname()]
        await request(p.port, host="svc", headers={"X-Forwarded-Port": "8443"})
        seen = b.requests[-1]
        assert (seen.header("X-Real-Ip"), seen.header("X-Forwarded-Port")) == ("127.0.0.1", "8443")
        await request(p.port, host="svc")  # the common case: one precomputed piece
        seen = b.requests[-1]
        assert (seen.header("X-Real-Ip"), seen.header("X-Forwarded-Port"), seen.header("X-Forwarded-Server")) == (
            "127.0.0.1", "80", socket.gethostname())


@on_uvloop
async def test_forwards_with_forwarded_headers_and_without_hop_by_hop():
    async with Backend("b1") as b, ProxyUnderTest(simple_config([b.url])) as p:
        resp = await request(p.port, path="/hello?x=1", host="Svc.Example:5000", headers={
            "Connection": "keep-alive, X-Private", "X-Private": "secret", "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic x", "TE": "trailers", "X-Forwarded-For": "10.9.9.9",
            "X-Custom": "kept", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
        assert resp.status == 200
        assert resp.header("X-Backend") == "b1"
        seen = b.requests[-1]
        assert seen.path == "/hello?x=1"
        assert seen.header("Host") == "Svc.Example:5000"  # passed through (pass_host_header)
        assert seen.header("X-Forwarded-For") == "10.9.9.9, 127.0.0.1"
        assert seen.header("X-Forwarded-Proto") == "http"
        assert seen.header("X-Forwarded-Host") == "Svc.Example:5000"
        # the rest of Traefik's forwarded headers (Traefik Mesh set them; apps read X-Real-Ip)
        assert (seen.header("X-Real-Ip"), seen.header("X-Forwarded-Port")) == ("127.0.0.1", "5000")
        assert seen.header("X-Forwarded-Server") == socket.gethostname()
        assert seen.header("X-Custom") == "kept"
        # tracing off: traceparent untouched
        assert seen.header("traceparent") == "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        for hop in ("X-Private", "Keep-Alive", "Proxy-Authorization", "TE", "Connection"):
            assert seen.header(hop) is None, hop
        assert resp.header("Connection") is None  # HTTP/1.1 keep-alive is the default
        key = ("svc", "200", "GET")
        assert p.metrics.requests[key] == 1
        assert 0 < p.metrics.durations["svc"][1] < 5  # a real duration, not a millisecond tick
        await request(p.port, path="/slow?ms=50")
        # the backend's 50 ms sleep is a libuv timer (millisecond clock, may fire up to ~1 ms early)
        assert p.metrics.durations["svc"][1] >= 0.045
    assert p.metrics.open_connections["http"] == 0


@on_uvloop
async def test_keep_alive_on_both_sides_and_upstream_pool():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        for i in range(5):
            await client.send(f"GET /{i} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
            resp = await client.response()
            assert resp.status == 200 and resp.body.startswith(f"GET /{i} HTTP/1.1".encode())
        await client.close()
        # a second client reuses the pooled upstream connection
        resp = await request(p.port)
        assert resp.status == 200
        assert b.connections == 1
        assert p.metrics.open_connections["http"] >= 0


@on_uvloop
async def test_host_rewritten_to_server_when_not_passed():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url], pass_host_header=False)) as p:
        resp = await request(p.port, host="svc.ns.lightmesh")
        assert resp.status == 200
        seen = b.requests[-1]
        assert seen.header("Host") == f"127.0.0.1:{b.port}"
        assert seen.header("X-Forwarded-Host") == "svc.ns.lightmesh"


@on_uvloop
async def test_content_length_and_chunked_request_bodies_streamed():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        resp = await request(p.port, "POST", "/", body=b"hello body")
        assert resp.status == 200 and resp.body.endswith(b"\r\n\r\nhello body")
        assert b.requests[-1].header("Content-Length") == "10"
        client = await RawClient.connect(p.port)
        await client.send(b"POST /c HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n")
        resp = await client.response()
        assert resp.status == 200
        assert b.requests[-1].body == b"hello world"
        assert b.requests[-1].header("Transfer-Encoding") == "chunked"
        await client.close()
        # 3 MiB upload, sent in pieces: arrives intact (hash checked by the backend)
        body = pattern(3 << 20)
        client = await RawClient.connect(p.port)
        await client.send(b"POST /discard HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 200_000):
            await client.send(body[i:i + 200_000])
        resp = await client.response(timeout=20)
        assert resp.body == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        await client.close()


@pytest.mark.parametrize("path,size", [("/big?size=1048576", 1 << 20), ("/bigchunked?size=3000000", 3000000),
                                       ("/big?size=17", 17)])
@on_uvloop
async def test_large_and_chunked_responses(path, size):
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        for _ in range(2):  # twice on one connection: framing stays in sync after bypass
            await client.send(f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
            resp = await client.response(timeout=20)
            assert resp.status == 200
            assert resp.body == pattern(size)
        await client.send(b"GET /chunked?n=4&size=3 HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp = await client.response()
        assert resp.header("Transfer-Encoding") == "chunked"
        assert resp.body == b"AAABBBCCCDDD"
        await client.close()
        assert b.connections == 1


@on_uvloop
async def test_close_delimited_response_rechunked_for_http11_raw_for_http10():
    async with Backend("nl") as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /nolength HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp = await client.response()
        assert resp.body == b"close-delimited body from nl"
        assert resp.header("Transfer-Encoding") == "chunked"
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")  # client connection still usable
        assert (await client.response()).status == 200
        await client.close()
        client = await RawClient.connect(p.port)
        await client.send(b"GET /nolength HTTP/1.0\r\nHost: svc\r\n\r\n")
        raw = await client.read_all()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in head and b"Connection: close" in head
        assert body == b"close-delimited body from nl"
        await client.close()


@on_uvloop
async def test_http10_client_keep_alive_and_chunked_upstream():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET / HTTP/1.0\r\nHost: svc\r\nConnection: keep-alive\r\n\r\n")
        resp = await client.response()
        assert resp.status == 200 and resp.header("Connection") == "keep-alive"
        await client.send(b"GET /chunked?n=2&size=4 HTTP/1.0\r\n\r\n")  # no Host in 1.0: fine
        raw = await client.read_all()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding" not in head
        assert body == b"AAAABBBB"
        await client.close()


@on_uvloop
async def test_pipelined_requests_answered_in_order():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /1 HTTP/1.1\r\nHost: svc\r\n\r\n"
                          b"POST /2 HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                          b"GET /slow?ms=50 HTTP/1.1\r\nHost: nowhere-routed\r\n\r\n"
                          b"POST /4 HTTP/1.1\r\nHost: svc\r\nContent-Length: 2\r\n\r\nxy"
                          b"GET /5 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
        bodies = [(await client.response()).body.split(b"\r\n")[0] for _ in range(5)]
        assert bodies == [b"GET /1 HTTP/1.1", b"POST /2 HTTP/1.1", b"GET /slow?ms=50 HTTP/1.1",
                          b"POST /4 HTTP/1.1", b"GET /5 HTTP/1.1"]
        assert await client.closed()


@on_uvloop
async def test_head_204_304_have_no_body_and_keep_connection():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"HEAD /big?size=5000 HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp = await client.response(head=True)
        assert resp.status == 200 and resp.header("Content-Length") == "5000"
        for status in (204, 304):
            await client.send(f"GET /status/{status} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
            resp = await client.response()
            assert resp.status == status and resp.body == b""
        await client.send(b"GET /after HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp = await client.response()
        assert resp.status == 200 and resp.body.startswith(b"GET /after ")
        await client.close()
        assert b.connections == 1


@on_uvloop
async def test_expect_100_continue_relayed():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"POST /e HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        interim = await client.response()
        assert interim.status == 100
        await client.send(b"data")
        resp = await client.response()
        assert resp.status == 200 and resp.body.endswith(b"data")
        await client.close()


@on_uvloop
async def test_upgrade_tunnel_relays_raw_bytes_both_ways():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                          b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        resp = await client.response()
        assert resp.status == 101
        assert resp.header("Upgrade") == "websocket"
        assert b.requests[-1].header("Upgrade") == "websocket"
        assert b.requests[-1].header("Connection") == "Upgrade"
        for payload in (b"\x81\x05hello", b"\x00" * 100_000):
            await client.send(payload)
            assert await client.read_raw(len(payload)) == payload
        await client.close()
        assert p.metrics.requests[("svc", "101", "GET")] == 1


@on_uvloop
async def test_an_upgrade_request_answered_locally_gets_one_answer_and_the_connection_closes():
    # The parser stops after an Upgrade request (what follows is the new protocol), so the local
    # answer must end the connection, and say so, instead of a second, unsolicited 400.
    only_svc = [{"name": "r", "service": "svc", "match": {"hosts": ["svc"]}}]
    async with Backend() as b, ProxyUnderTest(simple_config({"svc": [b.url]}, routers=only_svc)) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /ws HTTP/1.1\r\nHost: unrouted\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                          b"GET /next HTTP/1.1\r\nHost: svc\r\n\r\n")
        resp = await client.response()
        assert resp.status == 404 and resp.header("Connection") == "close"
        assert not client._parsed.done  # no second response in the same read
        assert await client.read_all() == b""  # nor after it: closed
        assert not b.requests


@on_uvloop
async def test_no_route_404_no_servers_503_refused_502():
    cfg = simple_config({"svc": [], "down": [f"http://127.0.0.1:{closed_port()}"]}, routers=[
        {"name": "empty", "service": "svc", "match": {"hosts": ["empty"]}},
        {"name": "down", "service": "down", "match": {"hosts": ["down"]}}])
    async with ProxyUnderTest(cfg) as p:
        assert (await request(p.port, host="other")).status == 404
        assert (await request(p.port, host="empty")).status == 503
        resp = await request(p.port, host="down")
        assert resp.status == 502
        assert p.metrics.upstream_errors[("down", "connect")] == 1
        assert p.metrics.requests[("unrouted", "404", "GET")] == 1


@on_uvloop
async def test_upstream_reset_before_answer_is_502_and_after_headers_cuts_client():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        resp = await request(p.port, path="/reset")
        assert resp.status == 502
        assert p.metrics.upstream_errors[("svc", "reset")] >= 1
        # proxy still serves
        assert (await request(p.port)).status == 200


@on_uvloop
async def test_backpressure_stops_reading_upstream_when_client_does_not_read():
    size = 64 << 20
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(f"GET /big?size={size} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
        await asyncio.sleep(0.5)  # the client reads nothing meanwhile
        backend_buffered = sum(pr.transport.get_write_buffer_size() for pr in b._protocols)
        proxy_buffered = sum(c.transport.get_write_buffer_size() for c in p.options.connections.conns)
        # The proxy holds at most a few MiB; the rest waits in the backend (it was paused).
        assert proxy_buffered < 8 << 20
        assert backend_buffered > 16 << 20
        resp = await client.response(timeout=30)
        assert len(resp.body) == size and resp.body[:1000] == pattern(1000)
        await client.close()


@on_uvloop
async def test_upstream_idle_close_is_not_an_error():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        assert (await request(p.port)).status == 200
        for proto in list(b._protocols):  # the server closes its idle keep-alive connection
            proto.transport.close()
        await asyncio.sleep(0.05)
        assert (await request(p.port)).status == 200
        assert b.connections == 2


@on_uvloop
async def test_config_swap_keeps_in_flight_request_and_pool():
    async with Backend("one") as b1, Backend("two") as b2, ProxyUnderTest(simple_config([b1.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: svc\r\n\r\n")
        await asyncio.sleep(0.05)
        p.apply(simple_config([b2.url], version=2))
        resp = await client.response()
        assert resp.header("X-Backend") == "one"  # finished on the plane it started with
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        assert (await client.response()).header("X-Backend") == "two"
        await client.close()
        # unchanged service definition: the same runtime object (pool, balancer) is kept
        svc = p.holder.http.services["svc"]
        p.apply(simple_config([b2.url], version=3))
        assert p.holder.http.services["svc"] is svc


@on_uvloop
async def test_drain_closes_idle_and_finishes_in_flight():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        idle = await RawClient.connect(p.port)
        await idle.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        await idle.response()
        busy = await RawClient.connect(p.port)
        await busy.send(b"GET /slow?ms=200 HTTP/1.1\r\nHost: svc\r\n\r\n")
        await asyncio.sleep(0.05)
        drained = asyncio.ensure_future(p.options.connections.drain(5.0))
        assert await idle.closed(2.0)
        resp = await busy.response()
        assert resp.status == 200 and resp.header("Connection") == "close"
        assert await drained is True
        await idle.close()
        await busy.close()


@on_uvloop
async def test_idle_keep_alive_timeout_and_max_connections():
    opts = HTTPOptions(idle_timeout=0.2, max_connections=2)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        c1 = await RawClient.connect(p.port)
        await c1.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        await c1.response()
        c2 = await RawClient.connect(p.port)
        await asyncio.sleep(0.02)
        c3 = await RawClient.connect(p.port)  # beyond max_connections: closed at once
        assert await c3.closed(1.0)
        assert p.metrics.refused_connections == {("http", "max_connections"): 1}  # and counted
        assert await c1.closed(2.0)  # idle timeout
        for c in (c1, c2, c3):
            await c.close()


@on_uvloop
async def test_access_log_json(caplog):
    import json
    import logging

    opts = HTTPOptions(access_log=True)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        with caplog.at_level(logging.INFO, logger="lightmesh.access"):
            await request(p.port, path="/logged")
        entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lightmesh.access"]
        assert entries and entries[-1]["path"] == "/logged" and entries[-1]["status"] == 200
        assert entries[-1]["service"] == "svc" and entries[-1]["upstream"] == b.url


@on_uvloop
async def test_requests_refused_as_bad_input_are_logged_with_what_was_read(caplog):
    # a 408 (head never finished) and a 400 (smuggling vector) were logged with empty fields and a
    # duration of ~0 ms: which request, and how long the slow client held the connection, was lost
    import json
    import logging

    opts = HTTPOptions(access_log=True, header_timeout=0.3)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        with caplog.at_level(logging.INFO, logger="lightmesh.access"):
            slow = await RawClient.connect(p.port)
            # (llhttp hands a header over once the next one begins: curl and browsers send Host first)
            await slow.send(b"GET /slow-head HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n")
            assert (await slow.response(timeout=3)).status == 408
            await slow.close()
            bad = await RawClient.connect(p.port)
            await bad.send(b"POST /smuggle HTTP/1.1\r\nHost: svc\r\nContent-Length: 3\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
            assert (await bad.response()).status == 400
            await bad.close()
        entries = {e["status"]: e for e in (json.loads(r.getMessage()) for r in caplog.records
                                            if r.name == "lightmesh.access")}
        assert entries[408]["path"] == "/slow-head" and entries[408]["duration_ms"] >= 250, entries[408]
        assert entries[408]["method"] == "GET" and entries[408]["host"] == "svc", entries[408]
        assert entries[400]["path"] == "/smuggle", entries[400]
        assert not b.requests
        # a 408 before the head was complete counts no method: it was never a request
        assert p.metrics.requests[("unrouted", "408", "-")] == 1


@on_uvloop
async def test_oversized_heads_are_logged_with_their_request_line_and_host(caplog):
    import json
    import logging

    opts = HTTPOptions(access_log=True, max_header_bytes=4096)
    filler = b"X-Filler: " + b"f" * 5000 + b"\r\n"
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        with caplog.at_level(logging.INFO, logger="lightmesh.access"):
            whole = await RawClient.connect(p.port)  # the whole head in one read
            await whole.send(b"PUT /one-read HTTP/1.1\r\nhOsT:  svc \r\n" + filler + b"\r\n")
            assert (await whole.response()).status == 431
            await whole.close()
            split = await RawClient.connect(p.port)  # the request line first, the rest later
            await split.send(b"DELETE /two-reads HTTP/1.1\r\nHost: svc\r\nUser-Agent: t\r\n")
            await asyncio.sleep(0.05)
            await split.send(filler + b"\r\n")
            assert (await split.response()).status == 431
            await split.close()
            garbage = await RawClient.connect(p.port)
            await garbage.send(b"\x16\x03 not a request line " + filler)
            assert (await garbage.response()).status in (400, 431)
            await garbage.close()
        entries = [json.loads(r.getMessage()) for r in caplog.records if r.name == "lightmesh.access"]
        fields = [(e["status"], e["method"], e["host"], e["path"]) for e in entries]
        assert fields[:2] == [(431, "PUT", "svc", "/one-read"), (431, "DELETE", "svc", "/two-reads")], fields
        assert fields[2][1:] == ("", "", ""), fields
        # counted without a method: the heads were never complete requests
        assert p.metrics.requests[("unrouted", "431", "-")] == sum(1 for f in fields if f[0] == 431)
        assert not any(key[2] != "-" for key in p.metrics.requests)
        assert not b.requests


@on_uvloop
async def test_tunnel_closed_when_upstream_closes():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: upgrade\r\nUpgrade: x-test\r\n\r\nearly")
        assert (await client.response()).status == 101
        assert await client.read_raw(5) == b"early"  # bytes sent before the 101 were relayed
        for proto in list(b._protocols):
            proto.transport.close()
        assert await client.closed()
        await client.close()
        await asyncio.sleep(0.05)
        assert p.metrics.open_connections["http"] == 0


@on_uvloop
async def test_pipelined_partial_head_gets_header_timeout():
    opts = HTTPOptions(header_timeout=0.3)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /slow?ms=100 HTTP/1.1\r\nHost: svc\r\n\r\nGET /second HTTP/1.1\r\nHo")
        assert (await client.response()).status == 200
        resp = await client.response(timeout=3)
        assert resp.status == 408
        assert await client.closed()
        await client.close()
        assert p.metrics.requests[("unrouted", "408", "-")] == 1


# --------------------------------------------------------------------------- mixed traffic (hypothesis)

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# (raw request, check(response)) builders; every one must be answered correctly in any mix and order.
_KINDS = {
    "get": (lambda i: b"GET /get-%d HTTP/1.1\r\nHost: svc\r\n\r\n" % i,
            lambda r, i: r.status == 200 and r.body.startswith(b"GET /get-%d " % i)),
    "post_cl": (lambda i: b"POST /p-%d HTTP/1.1\r\nHost: svc\r\nContent-Length: 7\r\n\r\nbody-%02d" % (i, i % 100),
                lambda r, i: r.status == 200 and r.body.endswith(b"body-%02d" % (i % 100))),
    "post_chunked": (lambda i: b"POST /c-%d HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"3\r\nabc\r\n2\r\n%02d\r\n0\r\n\r\n" % (i, i % 100),
                     lambda r, i: r.status == 200 and r.body.endswith(b"abc%02d" % (i % 100))),
    "chunked_resp": (lambda i: b"GET /chunked?n=5&size=100 HTTP/1.1\r\nHost: svc\r\n\r\n",
                     lambda r, i: r.status == 200 and len(r.body) == 500),
    "big": (lambda i: b"GET /big?size=300000 HTTP/1.1\r\nHost: svc\r\n\r\n",
            lambda r, i: r.status == 200 and r.body == pattern(300000)),
    "head": (lambda i: b"HEAD /big?size=10 HTTP/1.1\r\nHost: svc\r\n\r\n",
             lambda r, i: r.status == 200 and r.body == b""),
    "status": (lambda i: b"GET /status/503 HTTP/1.1\r\nHost: svc\r\n\r\n",
               lambda r, i: r.status == 503),
    "no_route": (lambda i: b"GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n",
                 lambda r, i: r.status == 404),
    "slow": (lambda i: b"GET /slow?ms=5 HTTP/1.1\r\nHost: svc\r\n\r\n",
             lambda r, i: r.status == 200),
}

# llhttp (and so the test client) cannot resume after a HEAD response inside one read: in a
# pipelined batch a HEAD request may only come last.
connection_plan = st.tuples(st.booleans(), st.lists(st.sampled_from(sorted(_KINDS)), min_size=1, max_size=6)).map(
    lambda plan: (plan[0], [k for k in plan[1][:-1] if not plan[0] or k != "head"] + plan[1][-1:]))


async def _run_connection(port: int, pipelined: bool, kinds: list[str], base: int) -> None:
    client = await RawClient.connect(port)
    try:
        reqs = [_KINDS[k][0](base + j) for j, k in enumerate(kinds)]
        if pipelined:
            client.expect_heads([k == "head" for k in kinds])
            await client.send(b"".join(reqs))
        for j, k in enumerate(kinds):
            if not pipelined:
                await client.send(reqs[j])
            resp = await client.response(timeout=10, head=k == "head")
            assert _KINDS[k][1](resp, base + j), (k, resp.status, resp.body[:100])
    finally:
        await client.close()


@pytest.fixture(scope="module")
def mixed_proxy():
    import uvloop
    loop = uvloop.new_event_loop()
    backends = [Backend("m1"), Backend("m2")]
    holder = {}

    async def start():
        for b in backends:
            await b.start()
        cfg = simple_config([b.url for b in backends], routers=[{"name": "r", "service": "svc",
                                                                 "match": {"hosts": ["svc"]}}])
        holder["p"] = p = ProxyUnderTest(cfg)
        await p.__aenter__()
    loop.run_until_complete(start())
    yield loop, holder["p"]

    async def stop():
        await holder["p"].__aexit__(None, None, None)
        for b in backends:
            await b.close()
    loop.run_until_complete(stop())
    loop.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=st.lists(connection_plan, min_size=1, max_size=8))
def test_mixed_concurrent_traffic_is_answered_correctly(mixed_proxy, plans):
    loop, p = mixed_proxy

    async def run():
        await asyncio.gather(*(_run_connection(p.port, pipelined, kinds, 100 * n)
                               for n, (pipelined, kinds) in enumerate(plans)))
    loop.run_until_complete(asyncio.wait_for(run(), 60))
    assert not p.loop_errors, p.loop_errors[:1]


@on_uvloop
async def test_large_request_body_bypass_then_next_request_in_the_same_read():
    body = pattern(300_000)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"POST /discard HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(body)
                          + body[:100_000])
        await asyncio.sleep(0.05)  # the proxy has read past the head: the rest bypasses the parser
        await client.send(body[100_000:] + b"GET /after HTTP/1.1\r\nHost: svc\r\n\r\n")
        first = await client.response()
        assert first.body == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        second = await client.response()
        assert second.status == 200 and second.body.startswith(b"GET /after ")
        await client.close()


@on_uvloop
async def test_client_gone_mid_request_aborts_upstream_and_counts_499():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        for path in ("/hang", "/big?size=50000000"):
            client = await RawClient.connect(p.port)
            await client.send(f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
            await asyncio.sleep(0.1)
            client.writer.transport.abort()
            for _ in range(100):  # the upstream connection is cut, not pooled
                if not b._protocols and not p.holder.http.services["svc"].servers[0].idle:
                    break
                await asyncio.sleep(0.02)
            assert not b._protocols
        assert p.metrics.requests[("svc", "499", "GET")] == 1  # the one whose head never came back
        assert p.metrics.open_connections["http"] == 0
        assert (await request(p.port)).status == 200


@on_uvloop
async def test_absolute_form_target_routes_by_authority_and_forwards_origin_form():
    async with Backend() as b:
        cfg = simple_config({"svc": [b.url]}, routers=[{"name": "r", "service": "svc", "match": {"hosts": ["svc"]}}])
        async with ProxyUnderTest(cfg) as p:
            client = await RawClient.connect(p.port)
            await client.send(b"GET http://SVC:5000/abs?x=1 HTTP/1.1\r\nHost: other\r\n\r\n")
            resp = await client.response()
            assert resp.status == 200
            assert b.requests[-1].path == "/abs?x=1"
            assert b.requests[-1].header("Host") == "SVC:5000"
            await client.send(b"OPTIONS * HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await client.response()).status == 200
            assert b.requests[-1].method == "OPTIONS" and b.requests[-1].path == "*"
            await client.close()


def _server_tls():
    import ssl
    from pathlib import Path

    data = Path(__file__).parent / "testdata"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(data / "upstream-cert.pem", data / "upstream-key.pem")
    return ctx


@on_uvloop
async def test_https_servers_are_reached_over_tls_with_keep_alive():
    """scheme https (the Service annotation): the hop to the pod is TLS; the client speaks plain HTTP
    to the proxy as for any mesh service; the upstream connection is reused."""
    async with Backend("secure", tls=_server_tls()) as secure:
        assert secure.url.startswith("https://")
        async with ProxyUnderTest(simple_config([secure.url])) as p:
            client = await RawClient.connect(p.port)
            for i in range(3):
                await client.send(f"POST /x{i} HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello".encode())
                resp = await client.response()
                assert resp.status == 200 and resp.body.endswith(b"hello")
            await client.close()
        assert [r.path for r in secure.requests] == ["/x0", "/x1", "/x2"]
        assert secure.connections == 1  # one TLS connection, kept alive
    async with Backend("plain") as plain:  # the same server spoken to with TLS fails cleanly: 502
        https_to_plain = plain.url.replace("http://", "https://")
        async with ProxyUnderTest(simple_config([https_to_plain])) as p:
            assert (await request(p.port)).status == 502


class _ReadThenClose(asyncio.Protocol):
    """Answers GETs; reads a whole POST, then closes without answering (a worker killed mid-request)."""

    seen: list = []
    conns = 0

    def connection_made(self, transport):
        self.transport, self.buf = transport, b""
        type(self).conns += 1

    def data_received(self, data):
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            length = int(next((v for n, _, v in (l.partition(b": ") for l in head.split(b"\r\n")[1:])
                               if n.lower() == b"content-length"), b"0"))
            if len(rest) < length:
                return
            self.buf = rest[length:]
            line = head.split(b"\r\n", 1)[0]
            type(self).seen.append(line)
            if line.startswith(b"POST"):
                self.transport.close()
                return
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")


@on_uvloop
async def test_a_post_the_server_read_is_not_sent_again_on_a_fresh_connection():
    # A reset pooled connection used to be retried for any request: a POST the server had read
    # (and maybe acted on) ran twice. Only requests safe to repeat are sent again (RFC 9110 9.2.2).
    _ReadThenClose.seen, _ReadThenClose.conns = [], 0
    server = await asyncio.get_running_loop().create_server(_ReadThenClose, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with ProxyUnderTest(simple_config([url])) as p:
            client = await RawClient.connect(p.port)
            await client.send(b"GET /warm HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await client.response()).status == 200  # the upstream connection is pooled now
            await client.send(b"POST /charge HTTP/1.1\r\nHost: svc\r\nContent-Length: 9\r\n\r\namount=10")
            assert (await client.response()).status == 502
            await asyncio.sleep(0.1)
            assert _ReadThenClose.seen == [b"GET /warm HTTP/1.1", b"POST /charge HTTP/1.1"]  # once
            # with an idempotency key the request says it is safe to repeat: sent again
            await client.send(b"POST /charge HTTP/1.1\r\nHost: svc\r\nIdempotency-Key: k1\r\nContent-Length: 9\r\n\r\n"
                              b"amount=10")
            assert (await client.response()).status == 502
            await asyncio.sleep(0.1)
            assert _ReadThenClose.seen[2:] == [b"POST /charge HTTP/1.1"]  # the pool was empty: fresh, once
            await client.close()
    finally:
        server.close()
        await server.wait_closed()


@on_uvloop
async def test_a_body_too_big_to_replay_goes_on_a_fresh_connection():
    # It could not be sent again if the pooled connection turned out closed (the keep-alive race).
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        assert (await request(p.port)).status == 200
        assert b.connections == 1
        big = b"x" * (2 * 1024 * 1024)
        assert (await request(p.port, method="POST", path="/discard", body=big)).status == 200
        assert b.connections == 2
        assert (await request(p.port)).status == 200  # small ones still use the pool
        assert b.connections == 2


def test_forwarded_port_reads_the_host_as_go_would():
    from lightmesh.proxy.routing import forwarded_port

    assert [forwarded_port(h) for h in (b"svc", b"svc:8080", b"[fd00::1]:8443", b"[fd00::1]", b"fd00::10",
                                        b"svc:", b"svc:x", None)] == [
        b"80", b"8080", b"8443", b"80", b"80", b"80", b"80", b"80"]
    assert forwarded_port(b"svc", b"https") == forwarded_port(b"svc", b" WSS ") == b"443"
    assert forwarded_port(b"svc:8080", b"https") == b"8080"


@on_uvloop
async def test_forwarded_headers_a_request_headers_edit_decides_are_the_edits_alone():
    # an edit that sets X-Real-Ip and X-Forwarded-Server and removes X-Forwarded-Port got the
    # proxy's own added next to (or instead of) it, differently on HTTP/1.1 and HTTP/2
    mws = [{"type": "request_headers", "name": "h", "set": {"X-Real-Ip": "9.9.9.9", "X-Forwarded-Server": "edited",
                                                            "X-Forwarded-Proto": "https"},
            "remove": ["X-Forwarded-Port"]}]
    routers = [{"name": "r", "service": "svc", "middlewares": ["h"]}]
    async with Backend() as b, ProxyUnderTest(simple_config([b.url], routers=routers, middlewares=mws)) as p:
        for sent in ({}, {"X-Real-Ip": "10.1.1.1", "X-Forwarded-Port": "8080"}):
            await request(p.port, host="svc", headers=sent)
            seen = b.requests[-1]
            assert seen.header_all("X-Real-Ip") == ["9.9.9.9"], sent
            assert seen.header_all("X-Forwarded-Server") == ["edited"], sent
            assert seen.header_all("X-Forwarded-Proto") == ["https"], sent
            assert seen.header_all("X-Forwarded-Port") == [], sent
            assert seen.header_all("X-Forwarded-For") == ["127.0.0.1"], sent


@on_uvloop
async def test_an_upstreams_forwarded_headers_reach_the_client_on_every_response_path():
    # X-Forwarded-Server was dropped from responses rebuilt by the parser (hop-by-hop "both sides")
    from .backends import ScriptedUpstream

    response = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Forwarded-Server: upstream-lb\r\n"
                b"X-Real-Ip: 10.2.2.2\r\nX-Forwarded-Port: 443\r\n\r\n0\r\n\r\n")
    async with ScriptedUpstream([[response]]) as up, ProxyUnderTest(simple_config([up.url])) as p:
        resp = await request(p.port)
        assert resp.status == 200
        assert (resp.header("X-Forwarded-Server"), resp.header("X-Real-Ip"), resp.header("X-Forwarded-Port")) == (
            "upstream-lb", "10.2.2.2", "443")


@on_uvloop
async def test_the_peer_is_appended_to_whatever_x_forwarded_for_the_edits_left():
    # set/add/remove of X-Forwarded-For by a request_headers edit dropped the proxy's append (and
    # an add dropped the client's list on HTTP/1.1): Traefik appends the peer last, whatever they did
    cases = [({"set": {"X-Forwarded-For": "1.2.3.4"}}, ["1.2.3.4, 127.0.0.1"]),
             ({"add": {"X-Forwarded-For": "1.2.3.4"}}, ["5.5.5.5, 1.2.3.4, 127.0.0.1"]),
             ({"remove": ["X-Forwarded-For"]}, ["127.0.0.1"]),
             ({"add": {"X-Real-Ip": "9.9.9.9"}}, ["5.5.5.5, 127.0.0.1"])]
    for edit, expected in cases:
        mws = [{"type": "request_headers", "name": "h", **edit}]
        routers = [{"name": "r", "service": "svc", "middlewares": ["h"]}]
        async with Backend() as b, ProxyUnderTest(simple_config([b.url], routers=routers, middlewares=mws)) as p:
            await request(p.port, host="svc", headers={"X-Forwarded-For": "5.5.5.5"})
            seen = b.requests[-1]
            assert seen.header_all("X-Forwarded-For") == expected, edit
            if "X-Real-Ip" in edit.get("add", {}):  # only added: it goes next to the proxy's own
                assert sorted(seen.header_all("X-Real-Ip")) == ["127.0.0.1", "9.9.9.9"]
