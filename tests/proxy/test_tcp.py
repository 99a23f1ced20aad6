"""TCP routes on loopback: echo, half-close, allow-list, failover, both relay paths, big transfers.

Every test runs the listener on uvloop (as the proxy does); the relay tests run both the splice path
and the Protocol fallback. Backends are plain asyncio servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest
import uvloop

from lightmesh.config import L4Server, TCPRoute
from lightmesh.proxy import balancer as balancer_module
from lightmesh.proxy.metrics import ProxyMetrics
from lightmesh.proxy.runtime import open_listener_socket
from lightmesh.proxy.tcp import SPLICE_AVAILABLE, TCPListener, TCPRouteState

RELAYS = [pytest.param(True, id="splice", marks=pytest.mark.skipif(not SPLICE_AVAILABLE, reason="no os.splice")),
          pytest.param(False, id="protocol")]


def run(coro, timeout: float = 30.0):
    return uvloop.run(asyncio.wait_for(coro, timeout))


def refused_port() -> int:
    """A loopback port nobody listens on (bound then closed: connect gets ECONNREFUSED)."""
    return refused_ports(1)[0]


def refused_ports(n: int) -> list[int]:
    """``n`` distinct such ports (bound together: two calls of ``refused_port`` may get one port twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


async def echo_backend(tag: bytes = b""):
    """Echo server; with ``tag`` it prefixes every connection's output (to see who answered)."""
    async def handle(reader, writer):
        try:
            if tag:
                writer.write(tag)
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def until_eof_backend():
    """Reads everything until the client half-closes, then answers with a digest and closes."""
    async def handle(reader, writer):
        data = await reader.read()  # until EOF: only a passed-through half-close gets here
        writer.write(b"got %d %s" % (len(data), hashlib.sha256(data).hexdigest().encode()))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def make_route(ports: list[int], *, allowed=None, weights=None, timeout: float = 2.0, name="tcp-route"):
    weights = weights or [1] * len(ports)
    return TCPRoute(name=name, address="127.0.0.1", port=1, allowed_sources=allowed, connect_timeout_seconds=timeout,
                    servers=[L4Server(address="127.0.0.1", port=p, weight=w) for p, w in zip(ports, weights)])


async def start_listener(route: TCPRoute, *, use_splice: bool = True, metrics: ProxyMetrics | None = None):
    sock = open_listener_socket("tcp", "127.0.0.1", 0)
    listener = TCPListener(asyncio.get_running_loop(), sock, TCPRouteState(route), metrics or ProxyMetrics(),
                           use_splice=use_splice)
    return listener, sock.getsockname()[1]


async def exchange(port: int, payload: bytes, *, half_close: bool = True) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        async def send():
            for i in range(0, len(payload), 1 << 16):
                writer.write(payload[i:i + (1 << 16)])
                await writer.drain()
            if half_close:
                writer.write_eof()

        sender = asyncio.create_task(send())
        received = await reader.read() if half_close else await reader.readexactly(len(payload))
        await sender
        return received
    finally:
        writer.close()


@pytest.mark.parametrize("use_splice", RELAYS)
def test_echo_and_metrics(use_splice):
    async def main():
        server, port = await echo_backend()
        metrics = ProxyMetrics()
        listener, lport = await start_listener(make_route([port]), use_splice=use_splice, metrics=metrics)
        try:
            for _ in range(3):
                assert await exchange(lport, b"hello mesh") == b"hello mesh"
            assert await listener.wait_idle(5)
        finally:
            listener.close()
            server.close()
        assert metrics.l4_connections[("tcp-route", "tcp")] == 3
        assert metrics.l4_bytes[("tcp-route", "tcp", "upstream")] == 30
        assert metrics.l4_bytes[("tcp-route", "tcp", "downstream")] == 30
        assert metrics.open_connections["tcp"] == 0

    run(main())


@pytest.mark.parametrize("use_splice", RELAYS)
def test_half_close_passes_through_and_reply_still_arrives(use_splice):
    async def main():
        server, port = await until_eof_backend()
        listener, lport = await start_listener(make_route([port]), use_splice=use_splice)
        try:
            payload = os.urandom(300_000)
            reply = await exchange(lport, payload)
            assert reply == b"got %d %s" % (len(payload), hashlib.sha256(payload).hexdigest().encode())
        finally:
            listener.close()
            server.close()

    run(main())


@pytest.mark.parametrize("use_splice", RELAYS)
def test_large_transfer_integrity(use_splice, monkeypatch):
    calls = []
    real_splice = getattr(os, "splice", None)
    if real_splice is not None:  # count: proves which relay path moved the bytes
        monkeypatch.setattr(os, "splice", lambda *a, **kw: calls.append(1) or real_splice(*a, **kw))

    async def main():
        server, port = await echo_backend()
        listener, lport = await start_listener(make_route([port]), use_splice=use_splice)
        try:
            payload = os.urandom(16 * 1024 * 1024)
            received = await exchange(lport, payload)
            assert len(received) == len(payload)
            assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
        finally:
            listener.close()
            server.close()

    run(main(), timeout=60)
    assert (len(calls) > 0) == use_splice


@pytest.mark.parametrize("use_splice", RELAYS)
def test_backend_reset_closes_client(use_splice):
    async def main():
        async def handle(reader, writer):
            await reader.read(1)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.transport.abort()  # RST

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        listener, lport = await start_listener(make_route([port]), use_splice=use_splice)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            writer.write(b"x")
            try:
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
            writer.close()
            assert await listener.wait_idle(5)
        finally:
            listener.close()
            server.close()

    run(main())


def test_denied_source_is_closed_at_once():
    async def main():
        server, port = await echo_backend(tag=b"served")
        metrics = ProxyMetrics()
        listener, lport = await start_listener(make_route([port], allowed=["10.0.0.0/8"]), metrics=metrics)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            try:
                data = await asyncio.wait_for(reader.read(), 2)  # closed at once, not after a timeout
            except ConnectionResetError:
                data = b""
            assert data == b""
            writer.close()
            assert metrics.acl_denied[("tcp-route", "tcp")] == 1
            assert ("tcp-route", "tcp") not in metrics.l4_connections
            # an empty list is nobody; a matching CIDR lets the client through
            listener.update(TCPRouteState(make_route([port], allowed=[])))
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            assert await asyncio.wait_for(reader.read(), 2) == b""
            writer.close()
            listener.update(TCPRouteState(make_route([port], allowed=["127.0.0.0/8"])))
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            assert await reader.readexactly(6) == b"served"
            writer.close()
            assert metrics.acl_denied[("tcp-route", "tcp")] == 2
        finally:
            listener.close()
            server.close()

    run(main())


def test_failover_to_next_server_and_ejection():
    async def main():
        server, port = await echo_backend(tag=b"B")
        dead = refused_port()
        metrics = ProxyMetrics()
        route = make_route([dead, port])
        listener, lport = await start_listener(route, metrics=metrics)
        try:
            for _ in range(6):
                reader, writer = await asyncio.open_connection("127.0.0.1", lport)
                assert await asyncio.wait_for(reader.readexactly(1), 5) == b"B"
                writer.close()
            # the refusing server was tried once, then ejected (passive health): one error only
            assert metrics.upstream_errors[("tcp-route", "connect")] == 1
            assert (("127.0.0.1", dead)) in listener.route.balancer.ejected()
        finally:
            listener.close()
            server.close()

    run(main())


def test_no_server_reachable_closes_client():
    async def main():
        metrics = ProxyMetrics()
        listener, lport = await start_listener(make_route(refused_ports(2)), metrics=metrics)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            assert metrics.upstream_errors[("tcp-route", "connect")] == 2
            assert await listener.wait_idle(2)
            assert metrics.open_connections["tcp"] == 0
        finally:
            listener.close()

    run(main())


def test_weights_spread_connections():
    async def main():
        a, pa = await echo_backend(tag=b"A")
        b, pb = await echo_backend(tag=b"B")
        listener, lport = await start_listener(make_route([pa, pb], weights=[3, 1]))
        seen = []
        try:
            for _ in range(8):
                reader, writer = await asyncio.open_connection("127.0.0.1", lport)
                seen.append(await asyncio.wait_for(reader.readexactly(1), 5))
                writer.close()
        finally:
            listener.close()
            a.close()
            b.close()
        assert seen.count(b"A") == 6 and seen.count(b"B") == 2

    run(main())


def test_route_update_applies_to_new_connections_only():
    async def main():
        a, pa = await echo_backend(tag=b"A")
        b, pb = await echo_backend(tag=b"B")
        listener, lport = await start_listener(make_route([pa]))
        try:
            r1, w1 = await asyncio.open_connection("127.0.0.1", lport)
            assert await r1.readexactly(1) == b"A"
            listener.update(TCPRouteState(make_route([pb]), listener.route))
            r2, w2 = await asyncio.open_connection("127.0.0.1", lport)
            assert await r2.readexactly(1) == b"B"
            w1.write(b"still here")  # the old connection keeps its server
            assert await r1.readexactly(10) == b"still here"
            w1.close()
            w2.close()
        finally:
            listener.close()
            a.close()
            b.close()

    run(main())


def test_connect_timeout_moves_on(monkeypatch):
    monkeypatch.setattr(balancer_module, "random_start", lambda n: 0)  # the stuck server first

    async def main():
        server, port = await echo_backend(tag=b"B")
        # A listener whose backlog is full never completes the handshake: connect times out.
        stuck = socket.socket()
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(0)
        fillers = []
        try:
            for _ in range(8):
                f = socket.socket()
                f.setblocking(False)
                try:
                    f.connect(stuck.getsockname())
                except BlockingIOError:
                    pass
                fillers.append(f)
            metrics = ProxyMetrics()
            route = make_route([stuck.getsockname()[1], port], timeout=0.3)
            listener, lport = await start_listener(route, metrics=metrics)
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", lport)
                assert await asyncio.wait_for(reader.readexactly(1), 5) == b"B"
                writer.close()
                assert metrics.upstream_errors.get(("tcp-route", "connect_timeout")) == 1
            finally:
                listener.close()
        finally:
            for f in fillers:
                f.close()
            stuck.close()
            server.close()

    run(main())


def test_close_cuts_established_connections():
    async def main():
        server, port = await echo_backend()
        metrics = ProxyMetrics()
        listener, lport = await start_listener(make_route([port]), metrics=metrics)
        reader, writer = await asyncio.open_connection("127.0.0.1", lport)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        assert not await listener.wait_idle(0.1)
        listener.close()
        try:
            assert await asyncio.wait_for(reader.read(), 2) == b""
        except ConnectionResetError:
            pass
        writer.close()
        server.close()
        assert metrics.open_connections["tcp"] == 0

    run(main())


def test_a_failure_every_connection_repeats_is_logged_once_per_interval(caplog):
    # at the open-files limit every accept and connect failed with a log line each: 10 lines a
    # second per route for as long as it lasted; a dead server does the same per client
    import logging

    async def main():
        metrics = ProxyMetrics()
        listener, lport = await start_listener(make_route([refused_port()], name="dead-route"), metrics=metrics)
        try:
            for _ in range(12):
                reader, writer = await asyncio.open_connection("127.0.0.1", lport)
                assert await asyncio.wait_for(reader.read(), 5) == b""
                writer.close()
            assert await listener.wait_idle(2)
            assert metrics.upstream_errors[("dead-route", "connect")] >= 1  # every event is still counted
        finally:
            listener.close()

    with caplog.at_level(logging.WARNING, logger="lightmesh.proxy.tcp"):
        run(main())
    lines = [r.getMessage() for r in caplog.records if "dead-route" in r.getMessage()]
    assert lines == ["tcp route dead-route: no server reachable (1 tried)"], lines


def test_connections_beyond_max_connections_are_closed_and_counted():
    async def main():
        server, bport = await echo_backend()
        metrics = ProxyMetrics()
        sock = open_listener_socket("tcp", "127.0.0.1", 0)
        listener = TCPListener(asyncio.get_running_loop(), sock, TCPRouteState(make_route([bport])), metrics,
                               max_connections=1)
        lport = sock.getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", lport)
            writer.write(b"held")
            assert await reader.readexactly(4) == b"held"
            r2, w2 = await asyncio.open_connection("127.0.0.1", lport)
            assert await asyncio.wait_for(r2.read(), 5) == b""  # closed at once
            w2.close()
            assert metrics.refused_connections == {("tcp", "max_connections"): 1}
            assert metrics.upstream_errors == {}  # a limit of ours, not an upstream failure
            writer.close()
        finally:
            listener.close()
            server.close()

    run(main())
