"""Middlewares and load balancing through a live proxy: allow-list, deny, rate limit, circuit
breaker, retry, request timeout, round robin / weighted, passive health, state across swaps."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter

import pytest

from lightmesh.proxy.metrics import CB_OPEN

from .backends import (Backend, ProxyUnderTest, RawClient, ResetServer, closed_port, on_uvloop, pattern, request,
                       simple_config)


def _cfg(servers, middlewares, names=None, **kw):
    names = names if names is not None else [m["name"] for m in middlewares]
    return simple_config(servers, routers=[{"name": "r", "service": "svc", "middlewares": names}],
                         middlewares=middlewares, **kw)


class LimiterClock:
    """The clock of every rate limiter a plane builds while the test runs (``monkeypatch``): it
    moves only by ``advance``, so a token is due exactly when the test says, whatever a host that
    stalls the test leaves of a sleep. The wait for a token is still real time. ``reserved`` counts
    the requests let wait for their token (from that moment they wait)."""

    def __init__(self, monkeypatch) -> None:
        from lightmesh.proxy import routing
        from lightmesh.proxy.policies import RateLimiter

        self.now, self.reserved = 1000.0, 0
        clock = self

        class Limiter(RateLimiter):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, clock=lambda: clock.now, **kwargs)

            def reserve(self, ip: str) -> None:
                clock.reserved += 1
                super().reserve(ip)

        monkeypatch.setattr(routing, "RateLimiter", Limiter)

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def until_reserved(self, n: int, timeout: float = 5.0) -> None:
        for _ in range(int(timeout / 0.005)):
            if self.reserved >= n:
                return
            await asyncio.sleep(0.005)
        raise AssertionError(f"{self.reserved} requests waiting for a token, not {n}")


async def _get_from(port: int, local: str, path: str = "/", headers: dict | None = None):
    client = await RawClient.connect(port, local_host=local)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        await client.send(f"GET {path} HTTP/1.1\r\nHost: svc\r\n{extra}\r\n".encode())
        return await client.response()
    finally:
        await client.close()


@on_uvloop
async def test_allow_list_by_peer_address_never_by_header():
    mws = [{"type": "allow_list", "name": "acl", "source_ranges": ["127.0.0.1/32"]}]
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        assert (await _get_from(p.port, "127.0.0.1")).status == 200
        denied = await _get_from(p.port, "127.0.0.2", headers={"X-Forwarded-For": "127.0.0.1",
                                                               "X-Real-Ip": "127.0.0.1"})
        assert denied.status == 403
        assert p.metrics.acl_denied[("svc", "http")] == 1
        assert len(b.requests) == 1
        # cached per connection: a second request on the same denied connection is denied too
        client = await RawClient.connect(p.port, local_host="127.0.0.2")
        for _ in range(2):
            await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await client.response()).status == 403
        await client.close()


@on_uvloop
async def test_empty_allow_list_denies_everything_and_order_is_router_order():
    mws = [{"type": "allow_list", "name": "none", "source_ranges": []},
           {"type": "deny", "name": "teapot", "status_code": 451}]
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        assert (await request(p.port)).status == 403
        p.apply(_cfg([b.url], mws, names=["teapot", "none"], version=2))
        assert (await request(p.port)).status == 451
        assert not b.requests
        # refused by an allow-list, then by a deny rule: both count (the metric's meaning)
        assert p.metrics.acl_denied[("svc", "http")] == 2


@on_uvloop
async def test_rate_limit_per_source_with_retry_after_and_state_kept_across_swap():
    mws = [{"type": "rate_limit", "name": "rl", "average": 1, "burst": 2, "period_seconds": 60}]
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        statuses = [(await _get_from(p.port, "127.0.0.1")).status for _ in range(2)]
        assert statuses == [200, 200]
        limited = await _get_from(p.port, "127.0.0.1")
        assert limited.status == 429
        assert 1 <= int(limited.header("Retry-After")) <= 60
        assert p.metrics.rate_limited["svc"] == 1
        assert (await _get_from(p.port, "127.0.0.3")).status == 200  # another source, its own bucket
        p.apply(_cfg([b.url], mws, version=2))  # same definition: buckets survive
        assert (await _get_from(p.port, "127.0.0.1")).status == 429
        changed = [{**mws[0], "burst": 3}]
        p.apply(_cfg([b.url], changed, version=3))  # changed definition: fresh state
        assert (await _get_from(p.port, "127.0.0.1")).status == 200


@on_uvloop
async def test_circuit_breaker_opens_on_network_errors():
    down = f"http://127.0.0.1:{closed_port()}"
    mws = [{"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"}]
    async with ProxyUnderTest(_cfg([down], mws)) as p:
        statuses = []
        for _ in range(60):  # the breaker evaluates its window every 100 ms
            statuses.append((await request(p.port)).status)
            if statuses[-1] == 503:
                break
            await asyncio.sleep(0.02)
        assert statuses[0] == 502 and statuses[-1] == 503
        assert p.metrics.breaker_state["svc"] == CB_OPEN


@on_uvloop
async def test_circuit_breaker_judges_requests_after_their_retries_not_failed_attempts():
    # the README's pairing (retry 2 + NetworkErrorRatio() > 0.5) with a dead replica: a failed
    # attempt the retry answered must not open the breaker (it did after a quiet spell, when the
    # window held that failure alone: 503 for 10 s for a service that answered every request)
    down = f"http://127.0.0.1:{closed_port()}"
    mws = [{"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"},
           {"type": "retry", "name": "retry", "attempts": 2}]
    async with Backend() as b, ProxyUnderTest(_cfg([down, b.url], mws)) as p:
        await asyncio.sleep(0.15)  # past the breaker's first check time: the next sample is checked
        statuses = []
        for _ in range(6):
            statuses.append((await request(p.port)).status)
            await asyncio.sleep(0.12)
        assert statuses == [200] * 6
        assert p.metrics.retries["svc"] >= 1 and p.metrics.breaker_state.get("svc", 0) != CB_OPEN
    # every attempt failing is still a failed request
    async with ProxyUnderTest(_cfg([down], mws)) as p:
        await asyncio.sleep(0.15)
        first = (await request(p.port)).status
        await asyncio.sleep(0.12)
        assert (first, (await request(p.port)).status) == (502, 503)


@on_uvloop
async def test_circuit_breaker_reads_upstream_503_as_a_response_code_not_a_network_error():
    """Traefik's semantics: an upstream 503 is a response code (ResponseCodeRatio trips), not a
    network error (NetworkErrorRatio stays 0); only 502/504 and no response count as network errors."""
    async with Backend("sick") as sick:
        for expression, trips in (("ResponseCodeRatio(500, 600, 0, 600) > 0.5", True),
                                  ("NetworkErrorRatio() > 0.5", False)):
            mws = [{"type": "circuit_breaker", "name": "cb", "expression": expression}]
            async with ProxyUnderTest(_cfg([sick.url], mws)) as p:
                statuses = []
                for _ in range(30):  # the breaker evaluates its window every 100 ms
                    statuses.append((await request(p.port, path="/status/503")).status)
                    await asyncio.sleep(0.02)
                assert (p.metrics.breaker_state.get("svc", 0) == CB_OPEN) is trips, (expression, statuses)
                assert statuses[0] == 503


@on_uvloop
async def test_round_robin_and_weighted_balancing():
    async with Backend("a") as a, Backend("b") as b:
        async with ProxyUnderTest(simple_config([a.url, b.url])) as p:
            seen = [(await request(p.port)).header("X-Backend") for _ in range(6)]
            assert Counter(seen) == {"a": 3, "b": 3}
            assert all(x != y for x, y in zip(seen, seen[1:]))
        cfg = simple_config([a.url, b.url], load_balancer="weighted", weights={a.url: 3, b.url: 1})
        async with ProxyUnderTest(cfg) as p:
            seen = [(await request(p.port)).header("X-Backend") for _ in range(8)]
            assert Counter(seen) == {"a": 6, "b": 2}


@on_uvloop
async def test_retry_on_refused_and_reset_goes_to_next_server_and_ejects():
    async with Backend("good") as good, ResetServer() as reset:
        refused = f"http://127.0.0.1:{closed_port()}"
        mws = [{"type": "retry", "name": "retry", "attempts": 2}]
        async with ProxyUnderTest(_cfg([refused, reset.url, good.url], mws)) as p:
            for _ in range(6):
                resp = await request(p.port, "POST", body=b"replay me")
                assert resp.status == 200 and resp.body.endswith(b"replay me")
            assert p.metrics.retries["svc"] >= 2
            assert p.metrics.upstream_errors[("svc", "connect")] == 1  # ejected after one refusal
            assert reset.connections == 1  # ejected after one reset
        # without retry: 502
        async with ProxyUnderTest(simple_config([refused])) as p:
            assert (await request(p.port)).status == 502
            assert "svc" not in p.metrics.retries


@on_uvloop
async def test_no_retry_for_bodies_over_1mib_or_after_response_bytes():
    async with Backend("good") as good, Backend("a") as a, Backend("b") as b:
        mws = [{"type": "retry", "name": "retry", "attempts": 1}]
        async with ProxyUnderTest(_cfg([a.url, b.url], mws)) as p:
            # /reset: the backend reads the whole request, then resets. A small body is replayed
            # on the next server; a body over 1 MiB is not.
            assert (await request(p.port, "POST", "/reset", body=b"small")).status == 502
            assert (len(a.requests), len(b.requests)) == (1, 1)
            big = pattern((1 << 20) + 100_000)
            assert (await request(p.port, "POST", "/reset", body=big, timeout=10)).status == 502
            assert len(a.requests) + len(b.requests) == 3
            assert p.metrics.retries["svc"] == 1
        async with ProxyUnderTest(_cfg([good.url], mws)) as p:
            client = await RawClient.connect(p.port)
            await client.send(b"GET /partial HTTP/1.1\r\nHost: svc\r\n\r\n")
            raw = await client.read_all()
            assert raw.startswith(b"HTTP/1.1 200 ") and raw.endswith(b"0123456789")  # cut, not retried
            await client.close()
            assert [r.path for r in good.requests].count("/partial") == 1
            assert "svc" not in p.metrics.retries


@on_uvloop
async def test_request_timeout_504():
    mws = [{"type": "request_timeout", "name": "to", "seconds": 0.2}]
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert (await request(p.port, path="/hang")).status == 504
        assert loop.time() - start < 2
        assert (await request(p.port, path="/slow?ms=20")).status == 200
        assert p.metrics.upstream_errors[("svc", "timeout")] == 1
        assert p.metrics.requests[("svc", "504", "GET")] == 1


@on_uvloop
async def test_retry_timeout_and_breaker_together_keep_the_listener_healthy():
    mws = [{"type": "retry", "name": "retry", "attempts": 1},
           {"type": "request_timeout", "name": "to", "seconds": 0.3},
           {"type": "circuit_breaker", "name": "cb", "expression": "ResponseCodeRatio(500, 600, 0, 600) > 0.99"}]
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        results = await asyncio.gather(*(request(p.port, path=path) for path in
                                         ["/", "/status/500", "/hang", "/slow?ms=10"] * 3))
        assert sorted(r.status for r in results) == [200] * 6 + [500] * 3 + [504] * 3
        assert not p.loop_errors


@on_uvloop
async def test_local_answer_keeps_alive_after_small_body_and_closes_on_pending_body():
    mws = [{"type": "allow_list", "name": "none", "source_ranges": []}]
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        client = await RawClient.connect(p.port)
        for _ in range(2):  # body in the same read: read and dropped, connection kept
            await client.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\n\r\nhello")
            assert (await client.response()).status == 403
        # body announced but not sent yet: answered, then closed (no waiting for the upload)
        await client.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 100000\r\n\r\n")
        resp = await client.response()
        assert resp.status == 403 and resp.header("Connection") == "close"
        assert await client.closed()
        await client.close()
        # Expect: 100-continue to a denied route: final answer at once, connection closed
        client = await RawClient.connect(p.port)
        await client.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n")
        resp = await client.response()
        assert resp.status == 403 and resp.header("Connection") == "close"
        assert await client.closed()
        await client.close()
        assert p.metrics.requests[("svc", "403", "POST")] == 4
        assert not b.requests


@on_uvloop
async def test_request_headers_middleware_removes_sets_and_adds_fields():
    mws = [{"type": "request_headers", "name": "h1", "set": {"X-Env": "canary"}, "add": {"X-Added": "1"},
            "remove": ["X-Secret"]},
           {"type": "request_headers", "name": "h2", "add": {"X-Added": "2"}}]
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        resp = await request(p.port, headers={"X-Env": "prod", "x-env": "prod2", "X-Secret": "s", "X-Kept": "k"})
        assert resp.status == 200
        seen = b.requests[-1]
        assert seen.header_all("X-Env") == ["canary"]  # set replaces every field of that name
        assert seen.header_all("X-Added") == ["1", "2"] and seen.header("X-Secret") is None
        assert seen.header("X-Kept") == "k" and seen.header("X-Forwarded-For") == "127.0.0.1"
        # chunked upload with the edits: framing untouched
        client = await RawClient.connect(p.port)
        await client.send(b"POST /echo HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\nX-Secret: s\r\n\r\n"
                          b"3\r\nabc\r\n0\r\n\r\n")
        assert (await client.response()).status == 200
        assert b.requests[-1].body == b"abc" and b.requests[-1].header("X-Secret") is None
        await client.close()


def test_request_headers_middleware_refuses_framing_fields_and_bad_values():
    from lightmesh.config import ConfigError, load_config_dict

    base = simple_config(["http://127.0.0.1:1"]).model_dump(mode="json")
    for kind in ("request_headers", "response_headers"):
        for bad, what in (({"set": {"Host": "x"}}, "Host"), ({"remove": ["Content-Length"]}, "Content-Length"),
                          ({"add": {"X-A": "a\r\nInjected: 1"}}, "visible characters"), ({"set": {"bad name": "v"}}, "bad name"),
                          ({"remove": ["Transfer-Encoding"]}, "Transfer-Encoding")):
            cfg = dict(base, http=dict(base["http"], middlewares=[{"type": kind, "name": "h", **bad}]))
            with pytest.raises(ConfigError, match=what):
                load_config_dict(cfg)


@on_uvloop
async def test_response_headers_middleware_edits_passed_through_and_rebuilt_heads():
    mws = [{"type": "response_headers", "name": "r", "set": {"X-Backend": "hidden"}, "add": {"X-Mesh": "1"},
            "remove": ["Content-Type"]}]
    async with Backend("b1") as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        client = await RawClient.connect(p.port)
        # a Content-Length response (the head would be passed through as received) and a chunked one
        for path in ("/", "/chunked?n=2&size=3", "/"):
            await client.send(f"GET {path} HTTP/1.1\r\nHost: svc\r\n\r\n".encode())
            resp = await client.response()
            assert resp.status == 200
            assert resp.header("X-Backend") == "hidden" and resp.header("X-Mesh") == "1"
            assert resp.header("Content-Type") is None
        assert resp.body.startswith(b"GET / HTTP/1.1")  # the body is untouched
        await client.close()
    # without the middleware the same backend's head is intact
    async with Backend("b1") as b, ProxyUnderTest(_cfg([b.url], [])) as p:
        resp = await request(p.port)
        assert resp.header("X-Backend") == "b1" and resp.header("Content-Type") == "text/plain"


class ScriptedServer:
    """Reads one request head (and a Content-Length body unless ``read_body`` is False), writes
    ``answer``, then resets (``reset``) or keeps the connection open. Counts the requests it got."""

    def __init__(self, answer: bytes, reset: bool = True, read_body: bool = True) -> None:
        self.answer, self.reset, self.read_body = answer, reset, read_body
        self.requests = 0
        self.server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader, writer) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests += 1
            length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n")
                      if line.startswith(b"content-length:")]
            if self.read_body and length:
                await reader.readexactly(length[0])
            writer.write(self.answer)
            await writer.drain()
            if self.reset:
                await asyncio.sleep(0.05)  # the answer's bytes reach the proxy first
                writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                                           b"\x01\0\0\0\0\0\0\0")  # close() sends RST
                writer.transport.abort()
            else:
                await reader.read()  # until the proxy closes
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()


@on_uvloop
@pytest.mark.parametrize("answer", [
    pytest.param(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n", id="relayed-1xx"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Le", id="partial-head"),
])
async def test_no_retry_once_the_server_answered_anything(answer):
    # A 1xx went out to the client, or the server had begun its head: it acted on the request, and
    # a POST must not run twice (the contract: retry only on a reset before any response byte).
    mws = [{"type": "retry", "name": "retry", "attempts": 2}]
    async with ScriptedServer(answer) as scripted, Backend("good") as good:
        async with ProxyUnderTest(_cfg([scripted.url, good.url], mws)) as p:
            seen = []
            for _ in range(2):  # round robin: one of the two goes to the scripted server first
                client = await RawClient.connect(p.port)
                await client.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 4\r\n\r\nbody")
                statuses = [(await client.response()).status]
                while statuses[-1] < 200:  # interim responses come as their own entries
                    statuses.append((await client.response()).status)
                await client.close()
                seen.append(statuses)
            assert scripted.requests == 1 and len(good.requests) == 1, seen
            assert "svc" not in p.metrics.retries
            # the client saw the 103 (if any), then the proxy's 502 for the lost response
            expected = [103, 502] if answer.startswith(b"HTTP/1.1 103") else [502]
            assert sorted(seen) == sorted([[200], expected]), seen


@on_uvloop
async def test_an_answer_before_the_request_body_says_the_connection_closes():
    # 417 to Expect: 100-continue, without reading the body: the proxy closes the connection after
    # it (the body may still come), so the relayed head must say Connection: close (RFC 9112 §9.6).
    async with ScriptedServer(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n",
                              reset=False, read_body=False) as scripted:
        async with ProxyUnderTest(simple_config([scripted.url])) as p:
            client = await RawClient.connect(p.port)
            await client.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
            resp = await client.response()
            assert resp.status == 417
            assert resp.header("connection") == "close", resp.headers
            assert await client.closed()


@on_uvloop
async def test_a_chunked_body_of_1mib_is_replayed_as_a_content_length_one_is():
    # the replay bound counts body bytes: chunk framing does not push a 1 MiB body over it
    mws = [{"type": "retry", "name": "retry", "attempts": 1}]
    async with Backend("a") as a, Backend("b") as b:
        async with ProxyUnderTest(_cfg([a.url, b.url], mws)) as p:
            body = pattern(1 << 20)
            chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 4096]), body[i:i + 4096])
                              for i in range(0, len(body), 4096)) + b"0\r\n\r\n"
            client = await RawClient.connect(p.port)
            await client.send(b"POST /reset HTTP/1.1\r\nHost: svc\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks)
            resp = await client.response(timeout=10)
            await client.close()
            assert resp.status == 502  # /reset on both servers; what matters is that it was tried twice
            assert [r.body == body for r in (*a.requests, *b.requests)] == [True, True]
            assert p.metrics.retries["svc"] == 1


@on_uvloop
async def test_a_full_duplex_answer_keeps_the_connection_when_the_body_completes_first():
    # The server answers as soon as it has the head and reads the body while its response streams;
    # the body completes before the response ends, so the connection carries the next request.
    async def handle(reader, writer):
        try:
            for _ in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
                await writer.drain()
                if b"content-length: 10" in head.lower():
                    await reader.readexactly(10)
                writer.write(b"4\r\nlast\r\n0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with ProxyUnderTest(simple_config([url])) as p:
            client = await RawClient.connect(p.port)
            await client.send(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\n")
            await asyncio.sleep(0.2)  # the response head is out before the body
            await client.send(b"0123456789")
            first = await client.response()
            assert first.status == 200 and first.body == b"firstlast" and first.header("connection") is None
            await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await client.response()).body == b"firstlast"
            await client.close()
    finally:
        server.close()


@on_uvloop
async def test_running_out_of_descriptors_is_not_blamed_on_the_server(monkeypatch):
    # EMFILE on an upstream connect was counted reason="connect", ejected a healthy server for 10 s
    # and went into circuit breakers as the service's network error
    import errno

    from lightmesh.proxy import http as proxy_http

    real_connect = proxy_http._connect
    failures = []

    async def exhausted_once(loop, server, timeout):
        if not failures:
            failures.append(server)
            raise OSError(errno.EMFILE, "Too many open files")
        return await real_connect(loop, server, timeout)

    monkeypatch.setattr(proxy_http, "_connect", exhausted_once)
    mws = [{"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"}]
    async with Backend("a") as a, Backend("b") as b, ProxyUnderTest(_cfg([a.url, b.url], mws)) as p:
        await asyncio.sleep(0.15)  # past the breaker's first check time
        first = await request(p.port)
        assert first.status == 502
        await asyncio.sleep(0.12)
        seen = [(await request(p.port)).header("X-Backend") for _ in range(4)]
        assert Counter(seen) == {"a": 2, "b": 2}  # nobody ejected
        assert p.metrics.upstream_errors == {("svc", "local_limit"): 1}
        assert p.metrics.breaker_state.get("svc", 0) != CB_OPEN


@on_uvloop
async def test_a_malformed_response_counts_as_a_network_error_in_the_breaker():
    # the 502 for a response the parser refused never reached the breaker on HTTP/1.1 (HTTP/2 did)
    from .backends import ScriptedUpstream

    mws = [{"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"}]
    async with ScriptedUpstream([[b"HTTP/1.1 2x0 nonsense\r\n\r\n"]] * 10) as up, \
            ProxyUnderTest(_cfg([up.url], mws)) as p:
        await asyncio.sleep(0.15)  # past the breaker's first check time
        statuses = []
        for _ in range(4):
            statuses.append((await request(p.port)).status)
            await asyncio.sleep(0.12)
        assert statuses[0] == 502 and 503 in statuses, statuses
        assert p.metrics.breaker_state.get("svc") == CB_OPEN


@on_uvloop
async def test_a_rate_limited_request_whose_token_is_due_soon_waits_instead_of_a_429(monkeypatch):
    # Traefik's limiter (and so Traefik Mesh) delays a request up to 1/(2*rate) s for its token and
    # refuses only beyond that; a 429 at once gave a migrated client more refusals than before
    import time

    clock = LimiterClock(monkeypatch)
    mws = [{"type": "rate_limit", "name": "rl", "average": 5, "burst": 1}]  # 5/s: waits up to 0.1 s
    async with Backend() as b, ProxyUnderTest(_cfg([b.url], mws)) as p:
        client = await RawClient.connect(p.port)
        try:
            async def get():
                await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                return await client.response()

            assert (await get()).status == 200
            refused = await get()  # the next token is 0.2 s away: beyond the wait, refused
            assert refused.status == 429 and refused.header("Retry-After") == "1"
            assert refused.header("X-Retry-In").endswith("ms"), refused.header("X-Retry-In")
            clock.advance(0.15)  # the token is now 0.05 s away: waited for
            t0 = time.monotonic()
            assert (await get()).status == 200
            assert time.monotonic() - t0 >= 0.03
        finally:
            await client.close()
        assert p.metrics.rate_limited["svc"] == 1 and len(b.requests) == 2


def delay_routes_config(url: str):
    """Routes for the rate-limit wait tests (HTTP/1.1 and HTTP/2): ``a`` a limiter then a deny, ``b``
    an allow-list only, ``c`` a limiter and a 0.25 s request timeout; each limiter 1/s, burst 1
    (a request waits up to 0.5 s for its token)."""
    mws = [*({"type": "rate_limit", "name": f"rl-{r}", "average": 1, "burst": 1} for r in "ac"),
           {"type": "deny", "name": "no", "status_code": 403},
           {"type": "allow_list", "name": "lo", "source_ranges": ["127.0.0.0/8"]},
           {"type": "request_timeout", "name": "t", "seconds": 0.25}]
    routers = [{"name": "a", "service": "svc", "middlewares": ["rl-a", "no"], "match": {"hosts": ["a"]}},
               {"name": "b", "service": "svc", "middlewares": ["lo"], "match": {"hosts": ["b"]}},
               {"name": "c", "service": "svc", "middlewares": ["rl-c", "t"], "match": {"hosts": ["c"]}}]
    return simple_config([url], routers=routers, middlewares=mws)


@on_uvloop
async def test_a_delay_never_outlives_its_request_nor_counts_in_its_timeouts(monkeypatch):
    # (1) a rate limit passed with a delay, then a later check refused: the next request of the
    # connection waited for that token; (2) a waiting request got a 504 from its own request or
    # response timeout; (3) a pipelined request waited its full delay again after the one before it
    import time

    from lightmesh.proxy.http import HTTPOptions

    clock = LimiterClock(monkeypatch)  # the waits below are exactly 0.4 s, however the host stalls

    async with Backend() as be, ProxyUnderTest(delay_routes_config(be.url),
                                               options=HTTPOptions(response_timeout=0.2)) as p:
        client = await RawClient.connect(p.port)
        try:
            async def get(host, path="/"):
                t0 = time.monotonic()
                await client.send(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path.encode(), host))
                return (await client.response()).status, time.monotonic() - t0

            assert (await get(b"a"))[0] == 403  # the token taken, then denied
            clock.advance(0.6)
            assert (await get(b"a"))[0] == 403  # a delayed pass (token due in 0.4 s), then denied
            status, took = await get(b"b")
            assert status == 200 and took < 0.35, took  # nothing to wait for on route b (c's wait is 0.4 s)
            assert (await get(b"c"))[0] == 200  # c's own limiter: its token
            clock.advance(0.6)
            status, took = await get(b"c")  # waits 0.4 s: more than both timeouts, which start after
            assert status == 200 and took >= 0.3, (status, took)
            assert ("svc", "timeout") not in p.metrics.upstream_errors
        finally:
            await client.close()


@on_uvloop
async def test_a_pipelined_request_is_forwarded_when_its_token_is_due_not_a_full_delay_later():
    # the delay was measured from the request's head but started again once the one before it was
    # answered: a 600 ms response, then a token due 0.4 s in, made the second wait 1.0 s in all
    import time

    mws = [{"type": "rate_limit", "name": "rl", "average": 1, "burst": 1}]
    routers = [{"name": "b", "service": "svc", "match": {"hosts": ["b"]}},
               {"name": "d", "service": "svc", "middlewares": ["rl"], "match": {"hosts": ["d"]}}]
    async with Backend() as be, ProxyUnderTest(simple_config([be.url], routers=routers, middlewares=mws)) as p:
        client = await RawClient.connect(p.port)
        try:
            await client.send(b"GET / HTTP/1.1\r\nHost: d\r\n\r\n")
            assert (await client.response()).status == 200
            await asyncio.sleep(0.6)
            t0 = time.monotonic()
            await client.send(b"GET /slow?ms=600 HTTP/1.1\r\nHost: b\r\n\r\nGET / HTTP/1.1\r\nHost: d\r\n\r\n")
            first, second = await client.response(), await client.response()
            assert (first.status, second.status) == (200, 200)
            assert time.monotonic() - t0 < 0.85
        finally:
            await client.close()
