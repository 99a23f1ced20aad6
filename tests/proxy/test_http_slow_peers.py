"""HTTP/1.1 with peers that do not keep up: a pipelining client that reads none of the answers the
proxy gives itself, a long run of pipelined local answers, and request bodies the proxy (not the
client) holds back — a server that reads slowly, a server that takes its time to say
``100 Continue``. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
import time

from lightmesh.proxy.http import ClientProtocol, HTTPOptions

from .backends import Backend, ProxyUnderTest, RawClient, on_uvloop, send_until_blocked, simple_config

KNOWN = {"name": "known", "service": "svc", "match": {"hosts": ["known"]}}


def _client_side(p: ProxyUnderTest) -> ClientProtocol:
    (conn,) = [c for c in p.options.connections.conns if isinstance(c, ClientProtocol)]
    return conn


@on_uvloop
async def test_a_pipelining_client_that_reads_no_answers_stops_being_read():
    # Before: every pipelined request no route matched was read and answered (404) into the
    # transport's buffer, which grew by ~50 MB/s for as long as the client kept sending.
    async with Backend() as b, ProxyUnderTest(simple_config([b.url], routers=[KNOWN])) as p:
        loop = asyncio.get_running_loop()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", p.port))
        try:
            request = b"GET /p HTTP/1.1\r\nHost: nowhere.example\r\n\r\n"
            sent = await send_until_blocked(sock, request * 2000, 400_000 * len(request))
            transport = _client_side(p).transport
            # the transport's high-water mark (512 KiB) and at most one read's worth of answers
            assert transport.get_write_buffer_size() < 2_000_000, (transport.get_write_buffer_size(), sent)
            assert not transport.is_reading()
        finally:
            sock.close()


@on_uvloop
async def test_hundreds_of_pipelined_local_answers_behind_a_forwarded_request_all_arrive():
    # Before: each local answer was given from inside the previous one's completion; ~500 of them
    # overflowed the stack, every answer was lost and the connection hung.
    n = 1000
    async with Backend() as b, ProxyUnderTest(simple_config([b.url], routers=[KNOWN])) as p:
        c = await RawClient.connect(p.port)
        try:
            await c.send(b"GET /first HTTP/1.1\r\nHost: known\r\n\r\n"
                         + b"GET /p HTTP/1.1\r\nHost: unknown\r\n\r\n" * n)
            statuses = [(await c.response(timeout=10)).status for _ in range(n + 1)]
        finally:
            await c.close()
        assert statuses == [200] + [404] * n
        assert not p.loop_errors


class _SlowReader(asyncio.Protocol):
    """Reads nothing for ``delay`` seconds, then the whole Content-Length body, then 200."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = bytearray()  # (not bytes: += would copy the whole 24 MiB body at every read)
        self.want = -1

    def connection_made(self, transport) -> None:
        self.transport = transport
        loop = asyncio.get_running_loop()
        loop.call_soon(transport.pause_reading)  # (uvloop starts reading after connection_made)
        loop.call_later(self.delay, transport.resume_reading)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.want < 0 and b"\r\n\r\n" in self.buf:
            head, _, _ = self.buf.partition(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            self.want = len(head) + 4 + length
        if 0 <= self.want <= len(self.buf):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%d"
                                 % (len(str(len(self.buf))), len(self.buf)))
            self.buf, self.want = bytearray(), -1


@on_uvloop
async def test_a_server_that_reads_the_body_slowly_does_not_make_the_client_time_out():
    # Before: the proxy stopped reading the client (the server was behind), then blamed the
    # client for the silence: 408 after --body-timeout, and the server got a truncated body.
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _SlowReader(1.2), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    body = b"x" * (24 << 20)
    try:
        async with ProxyUnderTest(simple_config([url]), options=HTTPOptions(body_timeout=0.4)) as p:
            c = await RawClient.connect(p.port)
            try:
                c.writer.write(b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                r = await c.response(timeout=20)
            finally:
                await c.close()
        assert r.status == 200
    finally:
        server.close()
        await server.wait_closed()


@on_uvloop
async def test_the_body_timeout_starts_again_when_the_proxy_reads_again():
    # Before: a pause of ours only pushed the deadline on when a tick found it passed. Reading
    # resumed from an I/O callback (the server caught up) just before that deadline left the
    # client no time at all: the loop runs due timers before its next poll, so the tick gave 408
    # to a client whose bytes were already waiting (a CI failure of the test above).
    timeout = 0.5
    ours = 1 << 12  # a pause bit of the test's own, as a server or client behind would set one
    loop = asyncio.get_running_loop()
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=HTTPOptions(body_timeout=timeout)) as p:
        c = await RawClient.connect(p.port)
        wake, waker = socket.socketpair()
        try:
            await c.send(b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nhello")
            conn = _client_side(p)
            for _ in range(200):
                if conn.cur is not None and not conn.in_head and conn.deadline is not None:
                    break
                await asyncio.sleep(0.01)
            conn.pause_for(ours)
            await c.send(b"world")  # waits in the kernel while the proxy is not reading
            for _ in range(300):  # until the (pushed on) deadline is close
                if conn.deadline - loop.time() < 0.2:
                    break
                await asyncio.sleep(0.01)
            resumed = loop.create_future()

            def on_wake() -> None:  # an I/O callback, as a server catching up resumes reading
                loop.remove_reader(wake.fileno())
                old_deadline = conn.deadline
                conn.resume_for(ours)
                # the rest of this loop iteration outlasts the old deadline, well within body_timeout
                time.sleep(max(0.0, old_deadline - loop.time()) + 0.1)
                resumed.set_result(None)

            loop.add_reader(wake.fileno(), on_wake)
            waker.send(b"!")
            await resumed
            r = await c.response(timeout=5)
        finally:
            wake.close()
            waker.close()
            await c.close()
    assert r.status == 200, r
    assert b.requests[-1].body == b"helloworld"


class _LateContinue(asyncio.Protocol):
    """Says ``100 Continue`` ``delay`` seconds after the head, then answers 200 with the body."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.buf = b""
        self.head_seen = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.head_seen and b"\r\n\r\n" in self.buf:
            self.head_seen = True
            asyncio.get_running_loop().call_later(self.delay, self.transport.write, b"HTTP/1.1 100 Continue\r\n\r\n")
        head, sep, rest = self.buf.partition(b"\r\n\r\n")
        if sep and rest == b"hello":
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n" + rest)


@on_uvloop
async def test_a_client_waiting_for_100_continue_is_still_bounded_by_the_body_timeout():
    # The wait for 100 Continue counts: with a server that waits for the body without sending 100,
    # neither side would ever give up (a connection held for good by one request head).
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _LateContinue(30.0), "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        options = HTTPOptions(body_timeout=0.3, header_timeout=0.3, idle_timeout=0.3)
        async with ProxyUnderTest(simple_config([url]), options=options) as p:
            c = await RawClient.connect(p.port)
            try:
                await c.send(b"POST /up HTTP/1.1\r\nHost: svc\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
                r = await c.response(timeout=5)
                assert await c.closed()
            finally:
                await c.close()
        assert r.status == 408
    finally:
        server.close()
        await server.wait_closed()
