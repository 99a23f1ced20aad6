"""Timeouts when the proxy's own loop is late: a timer that fires late (the process was frozen or
CPU-throttled, or the loop is busy) puts its judgement off once, so that what arrived meanwhile
is read first, and only once, so that a busy proxy still times its connections out. Deadlines
that fall within a millisecond of their timer (uvloop hands such timers back as plain handles)
fire like any other. On HTTP/2 the header, idle, body and response timers all do. An h2c server
connection broken by a protocol error takes no new stream.
Real sockets on loopback; clients, servers and the freezer that must outlive a freeze of this
process are other processes."""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
import time

import h2.config
import h2.connection
import h2.events
import pytest

from lightmesh.proxy.http import HTTPOptions
from lightmesh.proxy.metrics import ProxyMetrics
from lightmesh.proxy.timers import within

from .backends import (H2_CLIENT_SCRIPT, Backend, ProxyUnderTest, client_through_a_freeze, on_uvloop,
                       server_process, simple_config)
from .test_h2c import H2Client, H2Server


def _stalled_body(port: int, out: list, wait: float) -> None:
    """A client thread: a body that stops after its first byte; notes the status it gets."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(wait)
        s.sendall(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nx")
        try:
            out.append(s.recv(12).decode())
        except socket.timeout:
            out.append("still open")


@pytest.mark.parametrize("timeout", [0.3, 1.1])
@on_uvloop
async def test_every_stalled_body_gets_its_408_whatever_its_deadline_falls_on(timeout):
    # Before: a timer set less than ~0.5 ms ahead is a plain uvloop Handle, without the when() the
    # late-tick check read: it raised, the connection's timer was gone, and some 4 in 10 stalled
    # clients were never timed out.
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=HTTPOptions(body_timeout=timeout)) as p:
        out: list[str] = []
        clients = [threading.Thread(target=_stalled_body, args=(p.port, out, timeout + 3)) for _ in range(30)]
        for i, t in enumerate(clients):
            t.start()
            if i % 3 == 0:
                await asyncio.sleep(0.0007)  # spread the deadlines over the milliseconds
        while any(t.is_alive() for t in clients):
            await asyncio.sleep(0.05)
        assert collections.Counter(out) == {"HTTP/1.1 408": 30}
        assert not p.loop_errors


@on_uvloop
async def test_every_stalled_http2_body_gets_its_408_whatever_its_deadline_falls_on():
    async with H2Server() as up, ProxyUnderTest(simple_config([up.url]), options=HTTPOptions(body_timeout=0.3)) as p:
        clients = [await H2Client.connect(p.port) for _ in range(20)]
        sids = []
        for i, c in enumerate(clients):
            sids.append(c.start("/echo", body=b"part", more=True))
            if i % 2 == 0:
                await asyncio.sleep(0.0007)
        results = [(await c.wait([sid], timeout=5))[0] for c, sid in zip(clients, sids)]
        assert [r["headers"][b":status"] for r in results] == [b"408"] * 20
        assert not p.loop_errors
        for c in clients:
            await c.close()


def _client(port: int, kind: str, out: dict, wait: float) -> None:
    """A client thread: ``head`` sends half a head, ``body`` half a body, ``idle`` one request and
    then nothing; notes how long the proxy took to close."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.settimeout(wait)
        if kind == "head":
            s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n")
        elif kind == "body":
            s.sendall(b"POST / HTTP/1.1\r\nHost: svc\r\nContent-Length: 10\r\n\r\nx")
        else:
            s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
        start = time.monotonic()
        try:
            while s.recv(65536):
                pass
            out[kind] = time.monotonic() - start
        except socket.timeout:
            out[kind] = None


@on_uvloop
async def test_a_busy_loop_still_times_its_connections_out():
    # Every loop iteration takes 0.12 s (more than a tick may be late): a late tick is put off
    # once, then judged. Putting it off again and again kept every connection open for good.
    loop = asyncio.get_running_loop()
    opts = HTTPOptions(header_timeout=0.5, idle_timeout=0.5, body_timeout=0.5)
    async with Backend() as b, ProxyUnderTest(simple_config([b.url]), options=opts) as p:
        busy = True

        def hog() -> None:
            if busy:
                time.sleep(0.12)
                loop.call_soon(hog)
        loop.call_soon(hog)
        out: dict = {}
        clients = [threading.Thread(target=_client, args=(p.port, kind, out, 5.0)) for kind in ("head", "body", "idle")]
        try:
            for t in clients:
                t.start()
            deadline = time.monotonic() + 8
            while any(t.is_alive() for t in clients) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        finally:
            busy = False
        assert set(out) == {"head", "body", "idle"}
        assert all(seconds is not None and seconds < 3 for seconds in out.values()), out


_SERVER = r"""
import socket, time
listener = socket.create_server(("127.0.0.1", 0))
listener.settimeout(15)
print(listener.getsockname()[1], flush=True)
conn, _ = listener.accept()
conn.settimeout(10)
head = b""
while b"\r\n\r\n" not in head:
    head += conn.recv(65536)
time.sleep(0.5)  # well within the proxy's 1 s response timeout
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
time.sleep(1)
"""
_H1_CLIENT = r"""
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
s.sendall(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
print(s.recv(64).split(b"\r\n")[0].decode())
"""
_H2_CLIENT = H2_CLIENT_SCRIPT + r"""
c.send_headers(1, GET, end_stream=True)
s.sendall(c.data_to_send())
print(status_of(1))
"""


@pytest.mark.parametrize("client", ["http/1.1", "h2"])
@on_uvloop
async def test_a_proxy_frozen_past_a_response_timeout_reads_the_answer_before_it_judges(client):
    # The server answers 0.5 s after the head, within the 1 s response timeout, but this process
    # (the proxy) is frozen from 0.3 s to 1.8 s. Before: the timer, first after the freeze, gave
    # 504 and counted the server as failing although its answer was already here.
    opts = HTTPOptions(response_timeout=1.0)
    async with (server_process(_SERVER) as (port, _),
                ProxyUnderTest(simple_config([f"http://127.0.0.1:{port}"]), options=opts) as p):
        out = await client_through_a_freeze(_H1_CLIENT if client == "http/1.1" else _H2_CLIENT, p.port)
        assert out in (b"HTTP/1.1 200 OK", b"200"), out
        assert not p.metrics.upstream_errors


_BAD_SETTINGS = b"\x00\x00\x06\x04\x00\x00\x00\x00\x00" + b"\x00\x02\x00\x00\x00\x02"  # ENABLE_PUSH=2


class _BreakingH2Server(asyncio.Protocol):
    """An h2c server that answers 200; ``break_first()`` makes its first connection send an invalid
    SETTINGS frame (a protocol error for the proxy)."""

    conns: list = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())
        self.conns.append(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except Exception:
            self.transport.abort()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.conn.send_headers(ev.stream_id, [(b":status", b"200")])
                self.conn.send_data(ev.stream_id, b"ok", end_stream=True)
        self.transport.write(self.conn.data_to_send())


@on_uvloop
async def test_a_stream_forwarded_while_a_broken_h2c_connection_closes_goes_to_a_new_one():
    # The server breaks the protocol and, in the same loop iteration, a client's stream is forwarded:
    # before, the connection (aborted, not yet lost) was still the server's, h2 refused the HEADERS
    # with a ProtocolError that escaped, and the client's whole connection was cut.
    loop = asyncio.get_running_loop()
    _BreakingH2Server.conns = []
    server = await loop.create_server(_BreakingH2Server, "127.0.0.1", 0)
    url = f"h2c://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        async with ProxyUnderTest(simple_config([url])) as p:
            a = await H2Client.connect(p.port)
            (first,) = await a.wait([a.start("/warm", method="GET")], timeout=5)
            assert first["headers"][b":status"] == b"200"
            b = await H2Client.connect(p.port)
            await asyncio.sleep(0.2)  # b's preface handled
            wake, waker = socket.socketpair()
            sent = loop.create_future()

            def both() -> None:  # one I/O callback: the server's bad frame, then b's request
                loop.remove_reader(wake.fileno())
                _BreakingH2Server.conns[0].transport.write(_BAD_SETTINGS)
                time.sleep(0.1)  # the bad frame is in the proxy's socket first
                sid = b.start("/after", method="GET")
                time.sleep(0.1)
                sent.set_result(sid)
            try:
                loop.add_reader(wake.fileno(), both)
                waker.send(b"!")
                sid = await sent
                (r,) = await b.wait([sid], timeout=5)
            finally:
                wake.close()
                waker.close()
            assert r["headers"][b":status"] == b"200"
            assert len(_BreakingH2Server.conns) == 2
            assert not p.loop_errors
            await a.close()
            await b.close()
    finally:
        for proto in _BreakingH2Server.conns:
            proto.transport.abort()
        server.close()
        await server.wait_closed()


_KEEP_ALIVE_SERVER = r"""
import socket, threading
listener = socket.create_server(("127.0.0.1", 0))
listener.settimeout(15)
print(listener.getsockname()[1], flush=True)

def serve(conn):
    conn.settimeout(8)
    try:
        while conn.recv(65536):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    except OSError:
        pass
    conn.close()

for _ in range(4):
    try:
        conn, _ = listener.accept()
    except socket.timeout:
        break
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
threading.Event().wait(8)
"""
_H2_SECOND_STREAM_CLIENT = H2_CLIENT_SCRIPT + r"""
c.send_headers(1, GET, end_stream=True)
s.sendall(c.data_to_send())
status_of(1)
time.sleep(0.9)  # the proxy is frozen from 0.3 s to 1.5 s: its 0.5 s idle timeout passes meanwhile
c.send_headers(3, GET, end_stream=True)
s.sendall(c.data_to_send())
print(status_of(3))
"""


@on_uvloop
async def test_an_http2_connection_frozen_past_its_idle_timeout_reads_the_new_stream_first():
    # Before: HTTP/2's idle timer closed the connection (GOAWAY, then a reset over the unread
    # bytes) with a stream the client sent on time waiting unread.
    async with (server_process(_KEEP_ALIVE_SERVER) as (port, _),
                ProxyUnderTest(simple_config([f"http://127.0.0.1:{port}"]), options=HTTPOptions(idle_timeout=0.5)) as p):
        assert await client_through_a_freeze(_H2_SECOND_STREAM_CLIENT, p.port, length=1.2) == b"200"


_H2_LATE_SETTINGS_CLIENT = H2_CLIENT_SCRIPT + r"""
opening = c.data_to_send()
s.sendall(opening[:24])  # the preface alone
time.sleep(0.9)  # on time for the 1 s header timeout, which passes while the proxy is frozen (0.3-1.5 s)
c.send_headers(1, GET, end_stream=True)
s.sendall(opening[24:] + c.data_to_send())
print(status_of(1))
"""


@on_uvloop
async def test_an_http2_connection_frozen_past_its_header_timeout_reads_the_settings_first():
    # The header timeout (1 s, from the preface) falls inside the freeze; the client's SETTINGS and
    # first request came at 0.9 s, on time. Before: GOAWAY with them unread.
    async with (server_process(_KEEP_ALIVE_SERVER) as (port, _),
                ProxyUnderTest(simple_config([f"http://127.0.0.1:{port}"]), options=HTTPOptions(header_timeout=1.0)) as p):
        assert await client_through_a_freeze(_H2_LATE_SETTINGS_CLIENT, p.port, length=1.2) == b"200"


_LATE_ACCEPT_SERVER = r"""
import socket, time

def listen_overflows():
    lines = open("/proc/net/netstat").read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["ListenOverflows"])

listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(0)
filler = socket.create_connection(listener.getsockname())  # the accept queue is full: a SYN is dropped
dropped_before = listen_overflows()
print(listener.getsockname()[1], flush=True)
deadline = time.monotonic() + 10
while listen_overflows() == dropped_before and time.monotonic() < deadline:
    time.sleep(0.01)
listener.accept()[0].close()  # room again: the proxy's SYN, sent again 1 s after the first, gets through
listener.settimeout(10)
conn, _ = listener.accept()
conn.settimeout(10)
conn.recv(65536)
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
time.sleep(1)
"""


@pytest.mark.parametrize("client", ["http/1.1", "h2", "tcp"])
@on_uvloop
async def test_a_proxy_frozen_past_a_connect_timeout_sees_the_connection_made_first(client):
    # The server's handshake completes ~1 s after the proxy's first SYN (dropped: a full accept
    # queue), within the 1.5 s connect timeout, while the proxy is frozen (0.3 s to 2.3 s). Before:
    # the connect's timer, first after the freeze, failed the server (502, counted, ejected).
    async with server_process(_LATE_ACCEPT_SERVER) as (port, _):
        if client == "tcp":
            from .test_tcp import make_route, start_listener
            metrics = ProxyMetrics()
            listener, lport = await start_listener(make_route([port], timeout=1.5), metrics=metrics)
            try:
                out = await client_through_a_freeze(_H1_CLIENT, lport, length=2.0)
            finally:
                listener.close()
            errors = metrics.upstream_errors
        else:
            async with ProxyUnderTest(simple_config([f"http://127.0.0.1:{port}"]),
                                      options=HTTPOptions(connect_timeout=1.5)) as p:
                out = await client_through_a_freeze(_H1_CLIENT if client == "http/1.1" else _H2_CLIENT, p.port,
                                                    length=2.0)
            errors = p.metrics.upstream_errors
        assert out in (b"HTTP/1.1 200 OK", b"200"), (out, errors)
        assert not errors


@on_uvloop
async def test_within_is_wait_for_with_a_late_timer_put_off_once():
    loop = asyncio.get_running_loop()
    assert await within(asyncio.sleep(0.01, "done"), 1.0) == "done"
    start = loop.time()
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(5), 0.1)
    assert 0.09 < loop.time() - start < 2

    # cancelled from outside: CancelledError, not a timeout, and its timer goes with it
    waiting = loop.create_task(within(asyncio.sleep(5), 0.2))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await asyncio.sleep(0.3)

    # the loop is held past the deadline, and the result comes after the timer's turn (as what
    # was read after a freeze does): the result wins
    arrived = loop.create_future()
    loop.call_later(0.05, loop.call_soon, loop.call_soon, arrived.set_result, "on time")
    loop.call_later(0.01, time.sleep, 0.3)  # holds the loop from 0.01 s to 0.31 s (deadline 0.1 s)
    assert await within(arrived, 0.1) == "on time"

    # nothing arrives: put off once only, then judged
    loop.call_later(0.01, time.sleep, 0.3)
    start = loop.time()
    with pytest.raises(TimeoutError):
        await within(loop.create_future(), 0.1)
    assert loop.time() - start < 1
