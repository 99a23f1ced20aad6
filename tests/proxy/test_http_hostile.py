"""Hostile and malformed input: rejected with 4xx, connection closed, nothing forwarded upstream;
limits (header size, slowloris, idle); the listener survives garbage."""

from __future__ import annotations

import asyncio
import logging

import pytest
import uvloop
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightmesh.proxy.http import HTTPOptions

from .backends import Backend, ProxyUnderTest, RawClient, on_uvloop, request, simple_config

H = b"Host: svc\r\n"
P = b"POST / HTTP/1.1\r\n" + H

# name → (raw request, expected status). Every one is a single write, so nothing may reach the
# upstream (not even on a pooled connection that is already open).
HOSTILE = {
    "cl_and_te": (P + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te_and_cl": (P + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
    "duplicate_cl_differing": (P + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    "duplicate_cl_same": (P + b"Content-Length: 3\r\nContent-Length: 3\r\n\r\nabc", 400),
    "cl_list": (P + b"Content-Length: 3, 3\r\n\r\nabc", 400),
    "cl_sign": (P + b"Content-Length: +3\r\n\r\nabc", 400),
    "chunk_size_invalid": (P + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    "chunk_size_negative": (P + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n", 400),
    "chunk_size_overflow": (P + b"Transfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\nx\r\n", 400),
    "chunk_size_space": (P + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
    "chunk_data_too_long": (P + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcdef\r\n0\r\n\r\n", 400),
    "obs_fold_space": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n c\r\n\r\n", 400),
    "obs_fold_tab": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\r\n\tc\r\n\r\n", 400),
    "bare_cr_in_value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: b\rc\r\n\r\n", 400),
    "bare_lf_line_end": (b"GET / HTTP/1.1\r\nHost: svc\nX-A: b\r\n\r\n", 400),
    "bare_lf_everywhere": (b"GET / HTTP/1.1\nHost: svc\n\n", 400),
    "nul_in_value": (b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n", 400),
    "space_before_colon": (b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n", 400),
    "method_not_token": (b"G(T / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method_not_token_at": (b"FOO@ / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method_too_long": (b"X" * 65 + b" / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "method_empty": (b" / HTTP/1.1\r\n" + H + b"\r\n", 400),
    "te_gzip": (P + b"Transfer-Encoding: gzip\r\n\r\nabc", 400),
    "te_gzip_then_chunked": (P + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 400),
    "te_chunked_then_gzip": (P + b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400),
    "te_identity": (P + b"Transfer-Encoding: identity\r\n\r\n", 400),
    "te_twice": (P + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "te_in_http10": (b"POST / HTTP/1.0\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "two_hosts": (b"GET / HTTP/1.1\r\nHost: svc\r\nHost: other\r\n\r\n", 400),
    "no_host_http11": (b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400),
    "space_in_target": (b"GET /a b HTTP/1.1\r\n" + H + b"\r\n", 400),
    "http2_version": (b"GET / HTTP/2.0\r\n" + H + b"\r\n", 505),
    "http09": (b"GET /\r\n\r\n", 400),
    "connect": (b"CONNECT svc:443 HTTP/1.1\r\n" + H + b"\r\n", 405),
    "bad_target_form": (b"GET ftp://svc/ HTTP/1.1\r\n" + H + b"\r\n", 400),
}


async def _expect_rejected(port: int, raw: bytes, status: int) -> None:
    client = await RawClient.connect(port)
    await client.send(raw)
    data = await client.read_all(timeout=5)
    assert data.startswith(b"HTTP/1.1 %d " % status), data[:200]
    assert b"Connection: close" in data.partition(b"\r\n\r\n")[0]
    await client.close()


@pytest.mark.parametrize("name", sorted(HOSTILE))
@on_uvloop
async def test_hostile_request_rejected_and_not_forwarded(name):
    raw, status = HOSTILE[name]
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        assert (await request(p.port)).status == 200  # a pooled upstream connection exists
        before = (b.bytes_received, len(b.requests))
        await _expect_rejected(p.port, raw, status)
        await asyncio.sleep(0.05)
        assert (b.bytes_received, len(b.requests)) == before
        assert (await request(p.port)).status == 200  # the pooled connection is still good
        assert b.connections == 1
        assert not p.loop_errors


@on_uvloop
async def test_hostile_without_pooled_connection_reaches_nothing():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        for raw, status in (HOSTILE["chunk_size_invalid"], HOSTILE["cl_and_te"]):
            await _expect_rejected(p.port, raw, status)
        await asyncio.sleep(0.05)
        assert b.bytes_received == 0 and not b.requests


@on_uvloop
async def test_bad_request_after_good_pipelined_one():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /first HTTP/1.1\r\n" + H + b"\r\n" + HOSTILE["obs_fold_space"][0])
        first = await client.response()
        assert first.status == 200 and first.body.startswith(b"GET /first ")
        second = await client.response()
        assert second.status == 400
        assert await client.closed()
        assert [r.path for r in b.requests] == ["/first"]


@on_uvloop
async def test_bad_chunk_in_a_later_read_aborts_upstream_and_answers_400():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"POST /hang HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        await asyncio.sleep(0.1)
        await client.send(b"zz\r\n")
        data = await client.read_all()
        assert data.startswith(b"HTTP/1.1 400 ")
        assert not b.requests  # the backend never saw a complete request


@pytest.mark.parametrize("shape", ["one_big_header", "many_headers", "no_end_of_head", "long_url"])
@on_uvloop
async def test_header_size_limit_431(shape):
    opts = HTTPOptions(max_header_bytes=4096)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        if shape == "one_big_header":
            raw = b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n"
        elif shape == "many_headers":
            raw = b"GET / HTTP/1.1\r\n" + H + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 40) for i in range(200)) + b"\r\n"
        elif shape == "no_end_of_head":
            raw = b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 100_000
        else:
            raw = b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\n" + H + b"\r\n"
        await _expect_rejected(p.port, raw, 431)
        assert not b.requests
        # within the limit: fine
        assert (await request(p.port, headers={"X-Ok": "a" * 3000})).status == 200


@on_uvloop
async def test_slowloris_header_timeout_closes():
    opts = HTTPOptions(header_timeout=0.3)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        client = await RawClient.connect(p.port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n")

        async def trickle():  # a byte every 50 ms: never a complete head
            for _ in range(200):
                await asyncio.sleep(0.05)
                try:
                    await client.send(b"X")
                except (ConnectionError, OSError):
                    return
        trickling = asyncio.ensure_future(trickle())
        data = await client.read_all(timeout=10)
        elapsed = loop.time() - start
        trickling.cancel()
        assert 0.25 <= elapsed < 10
        assert data == b"" or data.startswith(b"HTTP/1.1 408 ")
        assert not b.requests
        # a silent connection is closed too
        silent = await RawClient.connect(p.port)
        assert await silent.closed(5.0)
        await client.close()
        await silent.close()


# --------------------------------------------------------------------------- garbage (hypothesis)

_TOKENS = [b"GET ", b"POST ", b"HEAD ", b"PUT ", b"/", b"/x?y=1", b" HTTP/1.1", b" HTTP/1.0", b"\r\n", b"\n",
           b"\r", b"Host: svc", b"Content-Length: 5", b"Content-Length: -1", b"Transfer-Encoding: chunked",
           b": ", b" ", b"\t", b"0", b"5", b"ffffffff", b"\x00", b"\xff", b"Connection: Upgrade", b"Upgrade: ws",
           b"Connection: close", b"Expect: 100-continue", b"hello", b"\r\n\r\n"]

garbage = st.one_of(
    st.binary(min_size=1, max_size=2048),
    st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=60).map(b"".join),
)


@pytest.fixture(scope="module")
def live_proxy():
    """One backend + proxy on a uvloop loop kept for the whole hypothesis run."""
    loop = uvloop.new_event_loop()
    backend = Backend()
    proxy = None

    async def start():
        nonlocal proxy
        await backend.start()
        proxy = ProxyUnderTest(simple_config([backend.url]), options=HTTPOptions(header_timeout=1.0))
        await proxy.__aenter__()
    loop.run_until_complete(start())
    yield loop, proxy, backend

    async def stop():
        await proxy.__aexit__(None, None, None)
        await backend.close()
    loop.run_until_complete(stop())
    loop.close()


async def _throw(port: int, data: bytes) -> None:
    client = await RawClient.connect(port)
    try:
        await client.send(data)
        try:
            await asyncio.wait_for(client.reader.read(65536), 0.1)
        except (asyncio.TimeoutError, ConnectionError):
            pass
    except ConnectionError:
        pass
    finally:
        await client.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=garbage)
def test_garbage_never_breaks_the_listener(live_proxy, data):
    loop, proxy, _backend = live_proxy
    loop.run_until_complete(asyncio.wait_for(_throw(proxy.port, data), 5))
    assert not proxy.loop_errors, proxy.loop_errors[:1]


def test_listener_still_serves_after_garbage(live_proxy):
    loop, proxy, _backend = live_proxy
    resp = loop.run_until_complete(asyncio.wait_for(request(proxy.port, path="/after-garbage"), 5))
    assert resp.status == 200 and resp.body.startswith(b"GET /after-garbage ")
    assert not proxy.loop_errors


# --------------------------------------------------------------------------- methods llhttp does not know


class _EchoUpstream:
    """A raw HTTP/1.1 upstream (no llhttp, which would refuse the methods under test): records
    each request's head and Content-Length body, answers 200 with the request line as the body."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []  # (head, body)
        self.url = ""
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> _EchoUpstream:
        owner = self

        class Proto(asyncio.Protocol):
            def connection_made(self, transport):
                self.transport, self.buf = transport, b""

            def data_received(self, data):
                self.buf += data
                while b"\r\n\r\n" in self.buf:
                    head, _, rest = self.buf.partition(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    if len(rest) < length:
                        return
                    owner.requests.append((head, rest[:length]))
                    self.buf = rest[length:]
                    line = head.split(b"\r\n", 1)[0]
                    self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(line), line))

        self.server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


@pytest.mark.parametrize("method", [b"FOO", b"get", b"X-CUSTOM.v2", b"M" * 64, b"!#$%&'*+-.^_`|~"])
@on_uvloop
async def test_token_method_llhttp_does_not_know_is_forwarded(method):
    # HTTP allows any token as a method; Traefik (Go) forwards them, so a mesh must too.
    async with _EchoUpstream() as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(method + b" /path?q=1 HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n\r\nhello"
                          + b"GET /next HTTP/1.1\r\n" + H + b"\r\n")  # and a pipelined request after it
        first = await client.response()
        assert first.status == 200 and first.body == method + b" /path?q=1 HTTP/1.1"
        second = await client.response()
        assert second.status == 200 and second.body == b"GET /next HTTP/1.1"
        await client.close()
        assert [(head.split(b"\r\n", 1)[0], body) for head, body in up.requests] == [
            (method + b" /path?q=1 HTTP/1.1", b"hello"), (b"GET /next HTTP/1.1", b"")]
        # bounded metric series: methods outside the known list count as _OTHER
        assert p.metrics.requests[("svc", "200", "_OTHER")] == 1
        assert p.metrics.requests[("svc", "200", "GET")] == 1
        assert not p.loop_errors


@on_uvloop
async def test_unknown_method_is_routed_by_its_name():
    routers = [{"name": "purge", "service": "cache", "match": {"methods": ["BAN"]}, "priority": 10},
               {"name": "rest", "service": "svc"}]
    async with _EchoUpstream() as cache, _EchoUpstream() as other, \
            ProxyUnderTest(simple_config({"cache": [cache.url], "svc": [other.url]}, routers=routers)) as p:
        assert (await request(p.port, method="BAN", path="/x")).status == 200
        assert (await request(p.port, method="GET", path="/y")).status == 200
        assert [h.split(b"\r\n", 1)[0] for h, _ in cache.requests] == [b"BAN /x HTTP/1.1"]
        assert [h.split(b"\r\n", 1)[0] for h, _ in other.requests] == [b"GET /y HTTP/1.1"]


@on_uvloop
async def test_unknown_method_with_a_smuggling_vector_is_still_refused():
    # llhttp parses the respelt head with its usual rules: CL + TE stays a 400 and nothing leaves.
    async with _EchoUpstream() as up, ProxyUnderTest(simple_config([up.url])) as p:
        await _expect_rejected(p.port, b"FOO / HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n"
                               b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400)
        await asyncio.sleep(0.05)
        assert not up.requests


@on_uvloop
async def test_unknown_method_split_over_reads_or_pipelined_is_a_400():
    # Documented limit: only a head whose start arrives in one read is respelt.
    async with _EchoUpstream() as up, ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /first HTTP/1.1\r\n" + H + b"\r\nFOO /second HTTP/1.1\r\n" + H + b"\r\n")
        assert (await client.response()).status == 200
        assert (await client.response()).status == 400
        assert await client.closed()
        client = await RawClient.connect(p.port)
        await client.send(b"PATC")  # a prefix llhttp accepts, then a method it does not know
        await asyncio.sleep(0.05)
        await client.send(b"HY / HTTP/1.1\r\n" + H + b"\r\n")
        assert (await client.response()).status == 400
        assert [h.split(b"\r\n", 1)[0] for h, _ in up.requests] == [b"GET /first HTTP/1.1"]


# --------------------------------------------------------------------------- found by an outside audit


@on_uvloop
async def test_connection_cannot_make_framing_or_forwarded_fields_hop_by_hop():
    # "Connection: Content-Length" used to drop Content-Length while the body was still forwarded:
    # the body reached the backend as a request of its own, past routing and the deny rule.
    routers = [{"name": "admin", "service": "svc", "priority": 10, "match": {"path_regex": "/admin"},
                "middlewares": ["deny"]}, {"name": "r", "service": "svc"}]
    deny = [{"type": "deny", "name": "deny", "status_code": 403}]
    async with Backend() as b, ProxyUnderTest(simple_config([b.url], routers=routers, middlewares=deny)) as p:
        smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: svc\r\n\r\n"
        client = await RawClient.connect(p.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: svc\r\n"
                          b"Connection: Content-Length, X-Forwarded-Host, x-forwarded-proto, Host, X-Forwarded-For\r\n"
                          b"X-Forwarded-Host: original\r\nX-Forwarded-Proto: https\r\nX-Forwarded-For: 10.1.1.1\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (len(smuggled), smuggled))
        assert (await client.response()).status == 200
        await asyncio.sleep(0.05)
        assert [(r.method, r.path) for r in b.requests] == [("POST", "/")]
        seen = b.requests[0]
        assert seen.body == smuggled and seen.header("Content-Length") == str(len(smuggled))
        assert seen.header("Host") == "svc"
        assert seen.header("X-Forwarded-Host") == "original" and seen.header("X-Forwarded-Proto") == "https"
        assert seen.header("X-Forwarded-For") == "10.1.1.1, 127.0.0.1"
        assert (await request(p.port, path="/admin/secret")).status == 403


@on_uvloop
async def test_an_empty_x_forwarded_for_is_replaced_not_appended_to():
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        for value in ("", " ", ","):
            assert (await request(p.port, headers={"X-Forwarded-For": value})).status == 200
            assert b.requests[-1].header("X-Forwarded-For") == "127.0.0.1", value


@on_uvloop
async def test_a_declined_upgrade_ends_the_connection_after_its_answer():
    # The connection used to hang: the client's next request went upstream as "new protocol" bytes.
    from .backends import ScriptedUpstream
    async with ScriptedUpstream([[b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 4\r\n\r\nnope"],
                                 [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]]) as up, \
            ProxyUnderTest(simple_config([up.url])) as p:
        client = await RawClient.connect(p.port)
        await client.send(b"GET /ws HTTP/1.1\r\nHost: svc\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        resp = await client.response()
        assert resp.status == 426 and resp.body == b"nope" and resp.header("Connection") == "close"
        assert await client.closed()
        # that upstream connection is not reused: it may hold bytes the client meant for the new protocol
        assert (await request(p.port)).status == 200
        assert up.connections == 2
        assert not p.loop_errors


@on_uvloop
async def test_a_second_response_nobody_asked_for_is_dropped_quietly(caplog):
    from .backends import ScriptedUpstream
    two = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nSMUGGL"
    async with ScriptedUpstream([[two], [b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"]]) as up, \
            ProxyUnderTest(simple_config([up.url])) as p:
        with caplog.at_level(logging.ERROR, logger="lightmesh.proxy.http"):
            first = await request(p.port)
            assert first.status == 200 and first.body == b"hello"
            second = await request(p.port)
            assert second.status == 200 and second.body == b"ok"  # on a new upstream connection
        assert up.connections == 2
        assert not [r for r in caplog.records if "bug" in r.getMessage()]
        assert not p.loop_errors


@pytest.mark.parametrize("raw", [b"FOO / HTTP/1.1\r\n\r\n", b"FOO / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"],
                         ids=["no_host", "two_hosts"])
@on_uvloop
async def test_an_unknown_method_on_a_bad_head_is_a_400_not_a_proxy_bug(raw, caplog):
    async with Backend() as b, ProxyUnderTest(simple_config([b.url])) as p:
        with caplog.at_level(logging.ERROR, logger="lightmesh.proxy.http"):
            await _expect_rejected(p.port, raw, 400)
        assert not [r for r in caplog.records if "bug" in r.getMessage()]
        assert not b.requests


@on_uvloop
async def test_trailer_fields_are_bounded_by_the_header_limit():
    opts = HTTPOptions(max_header_bytes=4096)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        for tail in (b"X-T: " + b"y" * 8000 + b"\r\n\r\n",  # one long trailer field
                     b"X-T: " + b"y" * 100_000):  # ... never ending
            client = await RawClient.connect(p.port)
            await client.send(P + b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n")
            await asyncio.sleep(0.05)
            for i in range(0, len(tail), 1000):  # several reads, as a slow client sends it
                try:
                    await client.send(tail[i:i + 1000])
                except (ConnectionError, OSError):
                    break
            data = await client.read_all()
            assert data.startswith(b"HTTP/1.1 431 "), data[:100]
        assert not b.requests  # the backend never saw a complete request
        # a chunk extension that never ends is bounded the same way
        client = await RawClient.connect(p.port)
        await client.send(P + b"Transfer-Encoding: chunked\r\n\r\n1;ext=" + b"e" * 8000)
        assert (await client.read_all()).startswith(b"HTTP/1.1 431 ")


@on_uvloop
async def test_the_header_limit_counts_the_whole_head():
    opts = HTTPOptions(max_header_bytes=4096)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        def head(size: int) -> bytes:
            start = b"GET / HTTP/1.1\r\n" + H + b"X-Pad: "
            return start + b"p" * (size - len(start) - 4) + b"\r\n\r\n"
        assert len(head(4096)) == 4096
        client = await RawClient.connect(p.port)
        await client.send(head(4096))
        assert (await client.response()).status == 200
        await client.close()
        await _expect_rejected(p.port, head(4097), 431)


@pytest.mark.parametrize("pieces", [1, 2], ids=["one_read", "two_reads"])
@on_uvloop
async def test_a_response_head_over_64_kib_is_a_502_however_it_arrives(pieces):
    # Only reads that left the head incomplete were counted: a 70 KB head in one read, or whose
    # last read completed it, was relayed.
    from .backends import ScriptedUpstream
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 70_000 + b"\r\nContent-Length: 2\r\n\r\nok"
    chunks = [head] if pieces == 1 else [head[:40_000], head[40_000:]]
    async with ScriptedUpstream([chunks]) as up, ProxyUnderTest(simple_config([up.url])) as p:
        assert (await request(p.port)).status == 502
        assert not p.loop_errors
