"""Where the proxy and the server could disagree about a request or a response (desync), found by
differential testing against a server that logs every byte: bytes after an Upgrade request, a
fragment in the request target, a Host with userinfo, and a partial head after a response on a
connection that goes back to the pool. Real sockets on loopback."""

from __future__ import annotations

import asyncio

import pytest

from .backends import ProxyUnderTest, RawClient, on_uvloop, simple_config
from .test_h2c import H2Client, H2Server

DENY_ADMIN = [{"name": "admin", "service": "svc", "middlewares": ["deny"], "priority": 10,
               "match": {"path_regex": "^/admin"}},
              {"name": "rest", "service": "svc"}]
DENY = [{"type": "deny", "name": "deny", "status_code": 403}]


class LoggingOrigin:
    """A server that records every byte per connection and answers each request head it sees with
    ``answer`` (a non-WebSocket endpoint: it ignores Upgrade)."""

    def __init__(self, answer: bytes = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok") -> None:
        self.answer = answer
        self.received: list[bytearray] = []
        self.server = None
        self.url = ""

    async def __aenter__(self) -> LoggingOrigin:
        owner = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.transport = transport
                self.seen = bytearray()
                owner.received.append(self.seen)
                self.answered = 0

            def data_received(self, data: bytes) -> None:
                self.seen += data
                while self.seen.count(b"\r\n\r\n") > self.answered:
                    self.answered += 1
                    self.transport.write(owner.answer)

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    def everything(self) -> bytes:
        return b"".join(bytes(r) for r in self.received)


@on_uvloop
async def test_bytes_after_an_upgrade_request_reach_no_server_that_did_not_switch_protocols():
    async with LoggingOrigin() as origin, ProxyUnderTest(
            simple_config([origin.url], routers=DENY_ADMIN, middlewares=DENY)) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                         b"GET /admin HTTP/1.1\r\nHost: svc\r\nX-Forwarded-For: 10.6.6.6\r\n\r\n")
            r = await c.response()
            assert r.status == 200 and await c.closed()
        finally:
            await c.close()
        # the server answered without switching: what the client sent after the head never went on
        assert b"/admin" not in origin.everything(), origin.everything()


@on_uvloop
async def test_bytes_sent_with_an_upgrade_request_go_through_once_the_server_switches():
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    async with LoggingOrigin(switch) as origin, ProxyUnderTest(simple_config([origin.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                         b"first frame")
            r = await c.response()
            assert r.status == 101
            await c.send(b" and more")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while not origin.received or not origin.received[0].endswith(b"first frame and more"):
                assert loop.time() < deadline, origin.received
                await asyncio.sleep(0.02)
        finally:
            await c.close()


@on_uvloop
async def test_a_fragment_in_the_request_target_is_refused():
    async with LoggingOrigin() as origin, ProxyUnderTest(
            simple_config([origin.url], routers=DENY_ADMIN, middlewares=DENY)) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /admin#/../x HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await c.response()).status == 400
        finally:
            await c.close()
        h2 = await H2Client.connect(p.port)
        try:
            (r,) = await h2.wait([h2.start("/admin#/../x", method="GET", authority="svc")])
            assert r["reset"] is not None or r["headers"][b":status"] == b"400"
        finally:
            await h2.close()
        assert origin.everything() == b""


@pytest.mark.parametrize("host, status", [
    (b"svc:1@internal.example", 400), (b"user@svc", 400), (b"svc:abc", 400), (b"svc?x", 400),
    (b"svc", 200), (b"svc:8080", 200), (b"[::1]:80", 200), (b"SVC.", 200), (b"svc ", 200), (b"svc\t", 200),
    (b"[fe80::1%25eth0]:80", 200)])
@on_uvloop
async def test_a_host_the_server_would_read_as_another_name_is_refused(host, status):
    routers = [{"name": "deny-internal", "service": "svc", "middlewares": ["deny"],
                "match": {"hosts": ["internal.example"]}}, {"name": "rest", "service": "svc"}]
    async with LoggingOrigin() as origin, ProxyUnderTest(
            simple_config([origin.url], routers=routers, middlewares=DENY)) as p:
        heads = [b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"]
        if not host[-1:].isspace():  # and the absolute form
            heads.append(b"GET http://" + host + b"/ HTTP/1.1\r\nHost: svc\r\n\r\n")
        for head in heads:
            c = await RawClient.connect(p.port)
            try:
                await c.send(head)
                assert (await c.response()).status == status, head
            finally:
                await c.close()
        assert (origin.everything() == b"") is (status == 400)
        if status == 200 and host in (b"svc ", b"svc\t"):  # the forwarded headers read it without
            assert b"X-Forwarded-Host: svc\r\n" in origin.everything(), origin.everything()


@on_uvloop
async def test_h2_authority_with_userinfo_is_refused():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url])) as p:
        c = await H2Client.connect(p.port)
        try:
            (bad, good) = await c.wait([c.start("/echo", body=b"x", authority="svc:1@internal.example"),
                                        c.start("/echo", body=b"x", authority="svc:8080")])
        finally:
            await c.close()
        assert bad["reset"] is not None and good["headers"][b":status"] == b"200"
        assert [r[b":authority"] for r in up.requests] == [b"svc:8080"]


@on_uvloop
async def test_a_partial_head_after_a_response_never_reaches_the_next_client():
    # The server sends a complete response and, in the same write, the start of another head. The
    # connection went back to the pool with that head in its parser; the next client's response
    # was read as its continuation (its status line became a header value of the injected head).
    injected = (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
                b"HTTP/1.1 200 OK\r\nSet-Cookie: session=ATTACKER\r\nX-Pad: ")
    async with LoggingOrigin(injected) as origin, ProxyUnderTest(simple_config([origin.url])) as p:
        a = await RawClient.connect(p.port)
        try:
            await a.send(b"GET /first HTTP/1.1\r\nHost: svc\r\n\r\n")
            first = await a.response()
        finally:
            await a.close()
        origin.answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nclean"
        b = await RawClient.connect(p.port)
        try:
            await b.send(b"GET /victim HTTP/1.1\r\nHost: svc\r\n\r\n")
            second = await b.response()
        finally:
            await b.close()
        assert (first.status, first.body) == (200, b"hi")
        assert (second.status, second.body) == (200, b"clean")
        assert not any(name.lower() == "set-cookie" for name, _ in second.headers)
        assert len(origin.received) == 2  # the first connection was not reused


@on_uvloop
async def test_a_whole_response_before_the_whole_request_says_the_connection_closes():
    async with LoggingOrigin() as origin, ProxyUnderTest(simple_config([origin.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nabc")
            r = await c.response()
            assert await c.closed()
        finally:
            await c.close()
        assert r.status == 200 and ("Connection", "close") in r.headers, r.headers


UPGRADE_LINES = b"Connection: Upgrade\r\nUpgrade: websocket\r\n"


@on_uvloop
@pytest.mark.parametrize("framing, pieces", [
    # Content-Length: with the head, in a later read, and a body too big to stay in one read
    ("length", [b"hello"]),
    ("length", [b"", b"hel", b"lo"]),
    ("length", [b"x" * 300_000]),
    # chunked, with an extension and a trailer field, split inside a chunk and inside the trailer
    ("chunked", [b"5;ext=1\r\nhello\r\n0\r\nX-Check: 1\r\n\r\n"]),
    ("chunked", [b"", b"5\r\nhel", b"lo\r\n3\r\nabc\r\n0\r\nX-Ch", b"eck: 1\r\n\r\n"]),
])
async def test_an_upgrade_request_with_a_body_goes_as_a_plain_request_with_its_body(framing, pieces):
    # llhttp stops after the head of any Upgrade request: the body was held for a tunnel that a
    # server ignoring the Upgrade never opened (Content-Length: the server waited forever; chunked:
    # it got an empty body). `curl --http2 -d ...` sends such a request.
    from .backends import Backend
    body = b"".join(pieces)
    if framing == "length":
        head_end = b"Content-Length: %d\r\n\r\n" % len(body)
        expected = body
    else:
        head_end = b"Transfer-Encoding: chunked\r\n\r\n"
        expected = b"helloabc" if b"abc" in body else b"hello"
    async with Backend() as backend, ProxyUnderTest(simple_config([backend.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\n" + UPGRADE_LINES + head_end + pieces[0])
            for piece in pieces[1:]:
                await asyncio.sleep(0.05)
                await c.send(piece)
            r = await c.response()
            assert r.status == 200 and r.header("x-body-length") == str(len(expected))
            assert await c.closed()  # as after any Upgrade request: the connection ends with the answer
        finally:
            await c.close()
    (seen,) = backend.requests
    assert seen.body == expected and seen.header("upgrade") is None
    if framing == "chunked":
        assert seen.header("x-check") == "1"  # the trailer field went on


@on_uvloop
async def test_bytes_after_a_declined_upgrade_requests_body_are_not_forwarded():
    async with LoggingOrigin() as origin, ProxyUnderTest(
            simple_config([origin.url], routers=DENY_ADMIN, middlewares=DENY)) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"POST / HTTP/1.1\r\nHost: svc\r\n" + UPGRADE_LINES + b"Content-Length: 2\r\n\r\nhi"
                         b"GET /admin HTTP/1.1\r\nHost: svc\r\n\r\n")
            r = await c.response()
            assert r.status == 200 and await c.closed()
        finally:
            await c.close()
        everything = origin.everything()
        assert everything.endswith(b"\r\n\r\nhi") and b"/admin" not in everything, everything


@on_uvloop
async def test_an_h2c_upgrade_is_declined_and_the_connection_goes_on_in_http1():
    # The proxy drops HTTP2-Settings (hop-by-hop), so no server could take an h2c upgrade on:
    # forwarded, the server saw "Upgrade: h2c" without it. Declined, the client goes on in HTTP/1.1.
    from .backends import Backend
    async with Backend() as backend, ProxyUnderTest(simple_config([backend.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /one HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n"
                         b"GET /two HTTP/1.1\r\nHost: svc\r\n\r\n")
            first, second = await c.response(), await c.response()
            assert (first.status, second.status) == (200, 200)
            await c.send(b"GET /three HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await c.response()).status == 200  # still open: keep-alive as for any request
        finally:
            await c.close()
    assert [r.path for r in backend.requests] == ["/one", "/two", "/three"]
    assert all(r.header("upgrade") is None and r.header("http2-settings") is None for r in backend.requests)


@on_uvloop
async def test_an_h2c_upgrade_answered_locally_keeps_the_connection_going():
    # Declined, an h2c request is a plain one: its local answer (403 here) carried no
    # Connection: close, but the bytes after it were never read; a pipelined request got a 400.
    from .backends import Backend
    async with Backend() as backend, ProxyUnderTest(
            simple_config([backend.url], routers=DENY_ADMIN, middlewares=DENY)) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n"
                         b"GET /admin HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                         b"GET /three HTTP/1.1\r\nHost: svc\r\n\r\n")
            statuses = [(await c.response()).status for _ in range(3)]
            assert statuses == [200, 403, 200]
            await c.send(b"GET /four HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
            assert (await c.response()).status == 200
        finally:
            await c.close()
    assert [r.path for r in backend.requests] == ["/one", "/three", "/four"]


@on_uvloop
@pytest.mark.parametrize("head", [
    b"GET /x HTTP/1.0\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
    b"GET /x HTTP/1.1\r\nHost: svc\r\nConnection: close, Upgrade\r\nUpgrade: h2c\r\n\r\n",
])
async def test_a_declined_upgrade_on_a_closing_connection_gets_its_answer_and_no_phantom_400(head):
    from .backends import Backend
    async with Backend() as backend, ProxyUnderTest(simple_config([backend.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(head)
            assert (await c.response()).status == 200 and await c.closed()
        finally:
            await c.close()
        assert not [k for k in p.metrics.requests if k[1] == "400"], dict(p.metrics.requests)


@on_uvloop
@pytest.mark.parametrize("framing", [b"Content-Length: 5\r\n\r\nhello", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"])
async def test_proxy_connection_upgrade_with_a_body_goes_as_a_plain_request(framing):
    # llhttp reads Proxy-Connection as Connection and stops after the head; the proxy treats it as
    # hop-by-hop and forwards no Upgrade, so the body was lost as before the decline
    from .backends import Backend
    async with Backend() as backend, ProxyUnderTest(simple_config([backend.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nProxy-Connection: Upgrade\r\nUpgrade: x\r\n" + framing)
            r = await c.response()
            assert r.status == 200 and r.header("x-body-length") == "5"
        finally:
            await c.close()
    (seen,) = backend.requests
    assert seen.body == b"hello" and seen.header("upgrade") is None


@on_uvloop
async def test_a_request_timeout_still_answers_an_upgrade_request_with_a_body():
    from .backends import Backend
    routers = [{"name": "r", "service": "svc", "middlewares": ["quick"]}]
    middlewares = [{"type": "request_timeout", "name": "quick", "seconds": 0.3}]
    async with Backend() as backend, ProxyUnderTest(
            simple_config([backend.url], routers=routers, middlewares=middlewares)) as p:
        c = await RawClient.connect(p.port)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            await c.send(b"POST /hang HTTP/1.1\r\nHost: svc\r\n" + UPGRADE_LINES + b"Content-Length: 2\r\n\r\nhi")
            assert (await c.response(timeout=5)).status == 504 and loop.time() - started < 3
        finally:
            await c.close()


@on_uvloop
async def test_an_upgrade_offering_h2c_and_another_protocol_goes_on_with_the_other():
    switch = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    async with LoggingOrigin(switch) as origin, ProxyUnderTest(simple_config([origin.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: h2c, websocket\r\n\r\n")
            assert (await c.response()).status == 101
        finally:
            await c.close()
        assert b"Upgrade: websocket\r\n" in origin.everything() and b"h2c" not in origin.everything()


SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"


class SwitchingOrigin(LoggingOrigin):
    """Answers GET /ws (an Upgrade) with 101, other requests with 200; records every byte."""

    def __init__(self) -> None:
        super().__init__()
        owner = self
        self.answer = None

        class Proto(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.transport = transport
                self.seen = bytearray()
                self.switched = False
                owner.received.append(self.seen)

            def data_received(self, data: bytes) -> None:
                self.seen += data
                while not self.switched and b"\r\n\r\n" in self.seen[self.seen.rfind(b"HTTP/1.") :]:
                    head = bytes(self.seen[self.seen.rfind(b"GET ") :])
                    if head.startswith(b"GET /ws"):
                        self.switched = True
                        self.transport.write(SWITCH)
                    else:
                        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    break

        self.proto = Proto

    async def __aenter__(self) -> SwitchingOrigin:
        self.server = await asyncio.get_running_loop().create_server(self.proto, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self


async def _tunnel_carries(origin: SwitchingOrigin, c: RawClient, first: bytes) -> None:
    await c.send(b" second")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not any(bytes(r).endswith(first + b" second") for r in origin.received):
        assert loop.time() < deadline, origin.received
        await asyncio.sleep(0.02)


@on_uvloop
async def test_a_websocket_upgrade_pipelined_behind_a_request_still_tunnels():
    # The tunnel was set up for the request answered first (the GET ahead of it), which has no
    # Upgrade: the connection was marked broken, and nothing the client sent went through.
    async with SwitchingOrigin() as origin, ProxyUnderTest(simple_config([origin.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /before HTTP/1.1\r\nHost: svc\r\n\r\n"
                         b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nfirst")
            assert (await c.response()).status == 200
            assert (await c.response()).status == 101
            await _tunnel_carries(origin, c, b"first")
        finally:
            await c.close()
        assert not [k for k in p.metrics.requests if k[1] == "400"], dict(p.metrics.requests)


@on_uvloop
@pytest.mark.parametrize("head", [
    b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: close, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /ws HTTP/1.0\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
])
async def test_an_upgrade_on_a_connection_that_would_close_tunnels_once_switched(head):
    async with SwitchingOrigin() as origin, ProxyUnderTest(simple_config([origin.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(head + b"first")
            r = await c.response()
            assert r.status == 101 and r.header("connection") == "Upgrade"
            await _tunnel_carries(origin, c, b"first")
        finally:
            await c.close()


@on_uvloop
async def test_an_upgrade_answered_locally_behind_a_pipelined_request_counts_no_phantom_400():
    from .backends import Backend
    async with Backend() as backend, ProxyUnderTest(
            simple_config([backend.url], routers=DENY_ADMIN, middlewares=DENY)) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /one HTTP/1.1\r\nHost: svc\r\n\r\n"
                         b"GET /admin HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
            assert [(await c.response()).status for _ in range(2)] == [200, 403]
            assert await c.closed()
        finally:
            await c.close()
        assert not [k for k in p.metrics.requests if k[1] == "400"], dict(p.metrics.requests)


@on_uvloop
async def test_upgrade_fields_on_several_lines_are_one_list():
    async with SwitchingOrigin() as origin, ProxyUnderTest(simple_config([origin.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /ws HTTP/1.1\r\nHost: svc\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                         b"Upgrade: h2c\r\n\r\n")
            assert (await c.response()).status == 101
        finally:
            await c.close()
        assert b"Upgrade: websocket\r\n" in origin.everything()


@on_uvloop
@pytest.mark.parametrize("first", [b"GET /a HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n",
                                   b"GET /a HTTP/1.0\r\nHost: svc\r\n\r\n"])
async def test_a_request_pipelined_behind_one_that_closes_is_not_read_and_not_counted_as_a_400(first):
    from .backends import Backend
    async with Backend() as backend, ProxyUnderTest(simple_config([backend.url])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(first + b"GET /b HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await c.response()).status == 200 and await c.closed()
        finally:
            await c.close()
        assert [r.path for r in backend.requests] == ["/a"]
        assert not [k for k in p.metrics.requests if k[1] == "400"], dict(p.metrics.requests)
