"""UDP routes on loopback: per-client sessions, replies from the listening socket, idle expiry,
allow-list drop, weights, route updates."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from lightmesh.config import L4Server, UDPRoute
from lightmesh.proxy.metrics import ProxyMetrics
from lightmesh.proxy.runtime import open_listener_socket
from lightmesh.proxy.udp import UDPListener, UDPRouteState


def run(coro, timeout: float = 30.0):
    return uvloop.run(asyncio.wait_for(coro, timeout))


class Echo(asyncio.DatagramProtocol):
    """Answers ``<tag>:<payload>`` to whoever sent; remembers the source addresses it saw."""

    def __init__(self, tag: bytes) -> None:
        self.tag = tag
        self.sources: list = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.sources.append(addr)
        self.transport.sendto(self.tag + b":" + data, addr)


async def echo_backend(tag: bytes):
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: Echo(tag), local_addr=("127.0.0.1", 0))
    return transport, proto, transport.get_extra_info("sockname")[1]


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data, addr) -> None:
        self.queue.put_nowait((data, addr))


async def client(port: int, local: str = "127.0.0.1"):
    transport, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        Client, local_addr=(local, 0), remote_addr=None)
    return transport, proto


def make_route(ports, *, weights=None, allowed=None, idle=30.0, name="udp-route"):
    weights = weights or [1] * len(ports)
    return UDPRoute(name=name, address="127.0.0.1", port=1, allowed_sources=allowed,
                    session_idle_timeout_seconds=idle,
                    servers=[L4Server(address="127.0.0.1", port=p, weight=w) for p, w in zip(ports, weights)])


async def start(route: UDPRoute, metrics=None):
    sock = open_listener_socket("udp", "127.0.0.1", 0)
    port = sock.getsockname()[1]
    listener = await UDPListener(asyncio.get_running_loop(), UDPRouteState(route), metrics or ProxyMetrics()).start(sock)
    return listener, port


async def ask(transport, proto, port: int, payload: bytes, timeout: float = 3.0):
    transport.sendto(payload, ("127.0.0.1", port))
    return await asyncio.wait_for(proto.queue.get(), timeout)


def test_session_per_client_and_replies_from_listening_socket():
    async def main():
        bt, backend, bport = await echo_backend(b"A")
        metrics = ProxyMetrics()
        listener, port = await start(make_route([bport]), metrics)
        c1, p1 = await client(port)
        c2, p2 = await client(port, "127.0.0.2")
        try:
            for i in range(3):
                data, addr = await ask(c1, p1, port, b"one%d" % i)
                assert data == b"A:one%d" % i and addr == ("127.0.0.1", port)
            data, addr = await ask(c2, p2, port, b"two")
            assert data == b"A:two" and addr == ("127.0.0.1", port)
            assert len(listener.sessions) == 2
            # one upstream socket per client: the backend saw exactly two source addresses
            assert len(set(backend.sources)) == 2
            assert metrics.l4_connections[("udp-route", "udp")] == 2
            assert metrics.open_connections["udp"] == 2
            assert metrics.l4_bytes[("udp-route", "udp", "upstream")] == 4 + 4 + 4 + 3
            assert metrics.l4_bytes[("udp-route", "udp", "downstream")] == 6 + 6 + 6 + 5
        finally:
            c1.close(), c2.close(), listener.close(), bt.close()
        assert metrics.open_connections["udp"] == 0

    run(main())


def test_idle_sessions_expire():
    async def main():
        bt, backend, bport = await echo_backend(b"A")
        listener, port = await start(make_route([bport], idle=0.2))
        c, p = await client(port)
        try:
            await ask(c, p, port, b"x")
            assert len(listener.sessions) == 1
            for _ in range(100):
                if not listener.sessions:
                    break
                await asyncio.sleep(0.05)
            assert not listener.sessions
            # the next datagram opens a fresh session (a new upstream source port)
            await ask(c, p, port, b"y")
            assert len(set(backend.sources)) == 2
        finally:
            c.close(), listener.close(), bt.close()

    run(main())


def test_traffic_keeps_a_session_alive():
    async def main():
        bt, backend, bport = await echo_backend(b"A")
        # idle 1 s (swept every 0.25 s): a gap of 0.1 s stays far below it even when the host
        # stalls this process (0.1-0.4 s); the traffic lasts 1.6 s, past when an unrefreshed
        # session would have been swept (1-1.25 s)
        listener, port = await start(make_route([bport], idle=1.0))
        c, p = await client(port)
        try:
            for _ in range(16):
                await ask(c, p, port, b"x")
                await asyncio.sleep(0.1)
            assert len(set(backend.sources)) == 1
        finally:
            c.close(), listener.close(), bt.close()

    run(main())


def test_denied_source_is_dropped():
    async def main():
        bt, backend, bport = await echo_backend(b"A")
        metrics = ProxyMetrics()
        listener, port = await start(make_route([bport], allowed=["127.0.0.2/32"]), metrics)
        bad, pbad = await client(port, "127.0.0.1")
        good, pgood = await client(port, "127.0.0.2")
        try:
            with pytest.raises(asyncio.TimeoutError):
                await ask(bad, pbad, port, b"nope", timeout=0.5)
            assert backend.sources == []
            assert metrics.acl_denied[("udp-route", "udp")] == 1
            data, _ = await ask(good, pgood, port, b"yes")
            assert data == b"A:yes"
            # revoking the source ends its session at once
            listener.update(UDPRouteState(make_route([bport], allowed=[]), listener.route))
            assert not listener.sessions
            with pytest.raises(asyncio.TimeoutError):
                await ask(good, pgood, port, b"again", timeout=0.5)
        finally:
            bad.close(), good.close(), listener.close(), bt.close()

    run(main())


def test_weights_spread_sessions():
    async def main():
        ta, _, pa = await echo_backend(b"A")
        tb, _, pb = await echo_backend(b"B")
        listener, port = await start(make_route([pa, pb], weights=[3, 1]))
        clients = [await client(port) for _ in range(8)]
        try:
            answers = [(await ask(t, p, port, b"x"))[0][:1] for t, p in clients]
            assert answers.count(b"A") == 6 and answers.count(b"B") == 2
        finally:
            for t, _ in clients:
                t.close()
            listener.close(), ta.close(), tb.close()

    run(main())


def test_route_update_moves_sessions_off_removed_servers():
    async def main():
        ta, _, pa = await echo_backend(b"A")
        tb, _, pb = await echo_backend(b"B")
        listener, port = await start(make_route([pa]))
        c, p = await client(port)
        try:
            assert (await ask(c, p, port, b"x"))[0] == b"A:x"
            listener.update(UDPRouteState(make_route([pa, pb], weights=[1, 1]), listener.route))
            assert (await ask(c, p, port, b"y"))[0] == b"A:y"  # its server stayed: session kept
            listener.update(UDPRouteState(make_route([pb]), listener.route))
            assert (await ask(c, p, port, b"z"))[0] == b"B:z"  # its server left: new session
        finally:
            c.close(), listener.close(), ta.close(), tb.close()

    run(main())


def test_a_closed_server_is_ejected_and_its_clients_move_to_a_live_one():
    # A server with nothing listening answers with ICMP port unreachable (ECONNREFUSED on the
    # session socket). Before, the session stayed on it: a client that kept retrying fed the dead
    # server for good, and half the new clients were sent there. Now the session ends, the server
    # is ejected (passive health, as for TCP) and the next datagram goes to the live server.
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        t_live, _, live = await echo_backend(b"live")
        metrics = ProxyMetrics()
        listener, port = await start(make_route([dead, live]), metrics)
        clients = [await client(port) for _ in range(4)]
        try:
            answers = []
            for c, p in clients:
                for _ in range(20):  # UDP: retry until an answer, as a client would
                    c.sendto(b"q", ("127.0.0.1", port))
                    try:
                        answers.append((await asyncio.wait_for(p.queue.get(), 0.2))[0])
                        break
                    except asyncio.TimeoutError:
                        continue
            assert answers == [b"live:q"] * 4
            assert metrics.upstream_errors[("udp-route", "refused")] >= 1
            assert all(s.server[1] == live for s in listener.sessions.values())
        finally:
            for c, _ in clients:
                c.close()
            listener.close(), t_live.close()

    run(main())


def test_a_closed_only_server_leaves_the_listener_serving():
    async def main():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            dead = s.getsockname()[1]
        listener, port = await start(make_route([dead]))
        c, p = await client(port)
        try:
            for _ in range(3):  # refused each time: the session ends, the next datagram tries again
                c.sendto(b"x", ("127.0.0.1", port))
                await asyncio.sleep(0.05)
            assert not listener.closed and len(listener.sessions) <= 1
            t, _, back = await echo_backend(b"back")
            listener.update(UDPRouteState(make_route([back])))
            assert (await ask(c, p, port, b"y"))[0] == b"back:y"
            t.close()
        finally:
            c.close(), listener.close()

    run(main())


def test_session_cap_drops_new_clients():
    async def main():
        bt, _, bport = await echo_backend(b"A")
        metrics = ProxyMetrics()
        sock = open_listener_socket("udp", "127.0.0.1", 0)
        port = sock.getsockname()[1]
        listener = await UDPListener(asyncio.get_running_loop(), UDPRouteState(make_route([bport])), metrics,
                                     max_sessions=1).start(sock)
        c1, p1 = await client(port)
        c2, p2 = await client(port)
        try:
            assert (await ask(c1, p1, port, b"x"))[0] == b"A:x"
            with pytest.raises(asyncio.TimeoutError):
                await ask(c2, p2, port, b"y", timeout=0.5)
            assert metrics.refused_connections[("udp", "max_sessions")] == 1
        finally:
            c1.close(), c2.close(), listener.close(), bt.close()

    run(main())


def test_the_listening_socket_asks_for_a_large_receive_buffer():
    # A burst of first datagrams from new clients outran session set-up with the ~200 KiB default.
    import socket as socket_mod

    from lightmesh.proxy.udp import RECV_BUFFER_BYTES

    async def main():
        listener, _port = await start(make_route([9]))
        try:
            got = listener.transport.get_extra_info("socket").getsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF)
            with open("/proc/sys/net/core/rmem_max") as f:
                cap = int(f.read())
            assert got == 2 * min(RECV_BUFFER_BYTES, cap)  # Linux doubles what it grants (bookkeeping)
        finally:
            listener.close()

    asyncio.run(main())


def test_idle_sessions_expire_while_the_config_changes_faster_than_the_sweep():
    # A busy cluster swaps configs every few tens of ms, and every swap updates every listener:
    # the sweep used to be pushed back each time, so no session ever expired.
    async def main():
        bt, backend, bport = await echo_backend(b"A")
        listener, port = await start(make_route([bport], idle=0.2))  # sweep every 0.05 s
        c, p = await client(port)
        try:
            await ask(c, p, port, b"x")
            assert len(listener.sessions) == 1
            for _ in range(100):  # an update every 0.01 s, for at most 1 s
                listener.update(UDPRouteState(make_route([bport], idle=0.2), listener.route))
                if not listener.sessions:
                    break
                await asyncio.sleep(0.01)
            assert not listener.sessions
            # a shorter idle timeout brings the next sweep forward
            await ask(c, p, port, b"y")
            listener.update(UDPRouteState(make_route([bport], idle=30.0), listener.route))
            listener.update(UDPRouteState(make_route([bport], idle=0.1), listener.route))
            await asyncio.sleep(0.3)
            assert not listener.sessions
        finally:
            c.close(), listener.close(), bt.close()

    run(main())


_UDP_ECHO_SERVER = r"""
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(10)
print(s.getsockname()[1], flush=True)
sources = set()
end = time.monotonic() + 15
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    if data == b"done":
        print(len(sources), flush=True)
        break
    sources.add(addr)
    s.sendto(data, addr)
"""
_UDP_STEADY_CLIENT = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
for _ in range(10):  # a datagram 0.2 s after each answer: well within the 1 s idle timeout
    s.sendto(b"x", ("127.0.0.1", int(sys.argv[1])))
    s.recvfrom(2048)
    time.sleep(0.2)
print("ok", flush=True)
"""


def test_a_proxy_frozen_past_a_sessions_idle_timeout_reads_its_datagrams_first():
    # Before: frozen (SIGSTOP, a cgroup freezer, CPU throttling) past a session's idle timeout while
    # its client sent on time, the proxy's sweep ran before its first read after the freeze, ended
    # the session, and the waiting datagram opened another: the server saw a new source port (a
    # stateful UDP protocol breaks). Server, client and freezer are other processes.
    from .backends import client_through_a_freeze, server_process

    async def main():
        async with server_process(_UDP_ECHO_SERVER) as (sport, server):
            listener, port = await start(make_route([sport], idle=1.0))
            try:
                assert await client_through_a_freeze(_UDP_STEADY_CLIENT, port) == b"ok"
            finally:
                listener.close()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"done", ("127.0.0.1", sport))
            assert int(await asyncio.wait_for(server.stdout.readline(), 10)) == 1  # one session throughout

    run(main())
