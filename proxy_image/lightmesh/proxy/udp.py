"""UDP routes: one listening socket per route, per-client sessions, allow-list, weighted servers.

This module owns the L4 UDP data path of one worker. A :class:`UDPListener` is the
``DatagramProtocol`` of the route's listening socket. The first datagram from a client address
(ip, port) opens a *session*: the route's balancer picks a server and a connected, non-blocking UDP
socket to it is created and watched with ``add_reader``. The client's datagrams go out on that
socket; the server's replies come back on it and are sent to the client **from the listening
socket**, so the client sees answers from the port it talked to. The source address is the
listening socket's: on a route bound to one address, the address the client talked to; on a
wildcard listener (``0.0.0.0``/``::``) the one the kernel picks for the route back to the client
(no ``IP_PKTINFO``), which differs from the one the client sent to only on a host with several
addresses, and a connected UDP client drops such replies.

Sessions are per worker process: the kernel hands each datagram to one worker's socket by a hash
of the client's address over the sockets on the port (``SO_REUSEPORT``). When a worker exits or
comes back, that set changes and many clients hash to another worker, not only the exited one's:
their next datagram opens a new session there (a new source port at the server), and the session
left in the previous worker ends at its idle timeout (replies the server still sends on it reach
the client meanwhile); the exited worker's sessions end with it.

A session ends after ``session_idle_timeout_seconds`` without traffic either way (swept by a timer,
not one timer per session; a sweep that runs late, the process stalled, reads first), or when a config change removes its server or stops allowing its
client, or when its server is found closed (an ICMP port unreachable, seen as ECONNREFUSED on the
session socket): that server is ejected for a while (passive health, as for TCP) and
``upstream_errors_total{reason="refused"}`` counts it, so the client's next datagram opens a
session on another server instead of feeding a dead one for as long as it keeps retrying. Datagrams from a source the allow-list refuses are dropped (``acl_denied_total{protocol=
"udp"}``). Sessions per listener are capped (:data:`MAX_SESSIONS`): beyond, new clients are dropped
rather than exhausting file descriptors.

Metrics: ``l4_connections_total`` per session, ``open_connections{protocol="udp"}`` = live
sessions, ``l4_bytes_total`` (``upstream`` client → server, ``downstream`` back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket

from lightmesh import config as cfg
from lightmesh.proxy.logthrottle import LogThrottle
from lightmesh.proxy.metrics import ProxyMetrics
from lightmesh.proxy.tcp import _family, _make_allow_list, _make_balancer
from lightmesh.proxy.timers import put_off_if_late

log = logging.getLogger("lightmesh.proxy.udp")
_throttled = LogThrottle(log)  # per-datagram failures: one line per route and kind each 10 s

MAX_SESSIONS = 16384
RECV_BATCH = 64  # replies read per wake-up of one session socket
RECV_BUFFER_BYTES = 4 * 1024 * 1024  # asked for the listening socket (the kernel may give less)
MAX_DATAGRAM = 65535


class UDPRouteState:
    """A compiled :class:`~lightmesh.config.UDPRoute`."""

    __slots__ = ("name", "config", "allow", "balancer", "idle_timeout")

    def __init__(self, route: cfg.UDPRoute, previous: UDPRouteState | None = None) -> None:
        self.name = route.name
        self.config = route
        self.allow = _make_allow_list(route.allowed_sources)
        self.balancer = _make_balancer(route.servers, previous)
        self.idle_timeout = route.session_idle_timeout_seconds

    def allows(self, ip: str) -> bool:
        return self.allow is None or self.allow.allows(ip)


class UDPSession:
    __slots__ = ("client", "server", "sock", "fd", "last", "route_name")

    def __init__(self, client, server, sock: socket.socket, route_name: str, now: float) -> None:
        self.client = client
        self.server = server
        self.sock = sock
        self.fd = sock.fileno()
        self.last = now
        self.route_name = route_name


class UDPListener(asyncio.DatagramProtocol):
    """The listening side of one UDP route; call :meth:`start` with the bound socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop, route: UDPRouteState, metrics: ProxyMetrics, *,
                 max_sessions: int = MAX_SESSIONS) -> None:
        self.loop = loop
        self.route = route
        self.metrics = metrics
        self.max_sessions = max_sessions
        self.sessions: dict[tuple, UDPSession] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_due = 0.0  # when the next sweep is meant to run
        self.closed = False

    async def start(self, sock: socket.socket) -> UDPListener:
        # A burst of new clients (DNS-like traffic) outruns session set-up: the default receive
        # buffer (~200 KiB, a few hundred datagrams) dropped half of 500 back-to-back first
        # datagrams. The kernel caps this at net.core.rmem_max (x2); raise that for more.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER_BYTES)
        await self.loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._schedule_sweep()
        return self

    @property
    def active(self) -> int:
        return len(self.sessions)

    # ------------------------------------------------------------------ datagrams

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        session = self.sessions.get(addr)
        if session is None:
            session = self._open(addr)
            if session is None:
                return
        try:
            session.sock.send(data)
        except (BlockingIOError, InterruptedError):
            return  # the socket buffer is full: UDP may drop, so do we
        except ConnectionRefusedError:  # an ICMP port unreachable for an earlier datagram
            self._refused(session)
            return
        except OSError as exc:
            # e.g. ECONNREFUSED left over from an ICMP port unreachable: drop this datagram only
            log.debug("udp route %s: send to %s failed: %s", session.route_name, session.server, exc)
            return
        session.last = self.loop.time()
        self.metrics.l4_relayed(session.route_name, "udp", "upstream", len(data))

    def error_received(self, exc) -> None:
        log.debug("udp route %s: %s", self.route.name, exc)

    def _open(self, addr) -> UDPSession | None:
        route = self.route
        if not route.allows(addr[0]):
            self.metrics.denied(route.name, "udp")
            return None
        if len(self.sessions) >= self.max_sessions:
            self.metrics.refused_connection("udp", "max_sessions")
            return None
        server = route.balancer.pick()
        if server is None:
            self.metrics.upstream_error(route.name, "no_server")
            return None
        try:
            sock = socket.socket(_family(server[0]), socket.SOCK_DGRAM)
        except OSError as exc:  # EMFILE: drop this datagram, keep the others flowing
            self.metrics.upstream_error(route.name, "socket")
            _throttled.error(f"socket {route.name}", "udp route %s: no socket for a new session: %s", route.name, exc)
            return None
        try:
            sock.setblocking(False)
            sock.connect(server)
        except OSError as exc:
            sock.close()
            route.balancer.failed(server)
            self.metrics.upstream_error(route.name, "connect")
            _throttled.warning(f"unreachable {route.name}", "udp route %s: cannot reach %s: %s", route.name, server, exc)
            return None
        session = UDPSession(addr, server, sock, route.name, self.loop.time())
        self.sessions[addr] = session
        self.loop.add_reader(session.fd, self._replies, session)
        self.metrics.l4_connection(route.name, "udp")
        self.metrics.connection_opened("udp")
        return session

    def _replies(self, session: UDPSession) -> None:
        transport = self.transport
        recv = session.sock.recv
        got = 0
        refused = False
        for _ in range(RECV_BATCH):
            try:
                data = recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except ConnectionRefusedError:  # an ICMP port unreachable for an earlier datagram
                refused = True
                break
            except OSError as exc:
                log.debug("udp route %s: session %s: %s", session.route_name, session.client, exc)
                self._close_session(session)
                return
            if transport is None or transport.is_closing():
                break
            transport.sendto(data, session.client)
            got += len(data)
        if got:
            session.last = self.loop.time()
            self.route.balancer.succeeded(session.server)
            self.metrics.l4_relayed(session.route_name, "udp", "downstream", got)
        if refused:  # (after the replies of this batch are counted)
            self._refused(session)

    def _refused(self, session: UDPSession) -> None:
        """Nothing listens at the session's server: eject it and end the session."""
        if self.sessions.get(session.client) is not session:
            return
        self.route.balancer.failed(session.server)
        self.metrics.upstream_error(session.route_name, "refused")
        log.debug("udp route %s: %s:%d refused (port unreachable): session of %s ended",
                  session.route_name, session.server[0], session.server[1], session.client)
        self._close_session(session)

    # ------------------------------------------------------------------ sessions

    def _close_session(self, session: UDPSession) -> None:
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
            self.loop.remove_reader(session.fd)
            session.sock.close()
            self.metrics.connection_closed("udp")

    def _sweep_interval(self) -> float:
        return max(0.02, min(1.0, self.route.idle_timeout / 4))

    def _schedule_sweep(self) -> None:
        if not self.closed:
            self._sweep_due = due = self.loop.time() + self._sweep_interval()
            self._sweeper = self.loop.call_at(due, self._sweep, due)

    def _sweep(self, due: float) -> None:
        """``due``: see lightmesh.proxy.timers (datagrams that came meanwhile keep their sessions)."""
        if not self.closed and (later := put_off_if_late(self.loop, due, self._sweep)) is not None:
            self._sweeper = later
            return
        horizon = self.loop.time() - self.route.idle_timeout
        for session in [s for s in self.sessions.values() if s.last < horizon]:
            self._close_session(session)
        self._schedule_sweep()

    def update(self, route: UDPRouteState) -> None:
        """New sessions use ``route``; sessions whose server left or whose client is no longer
        allowed end now (their next datagram opens a session by the new rules)."""
        self.route = route
        servers = {(s.address, s.port) for s in route.config.servers}
        for session in list(self.sessions.values()):
            session.route_name = route.name
            if session.server not in servers or not route.allows(session.client[0]):
                self._close_session(session)
        # Every config swap updates every listener: pushing the next sweep back each time would
        # stop sessions from ever expiring under frequent swaps. Only a shorter interval (a
        # shorter idle timeout) brings it forward.
        due = self.loop.time() + self._sweep_interval()
        if self._sweeper is None or self._sweep_due > due:
            if self._sweeper is not None:
                self._sweeper.cancel()
            self._schedule_sweep()

    def stop_accepting(self) -> None:
        """Drain: UDP has no accept; sessions keep working until :meth:`close`."""

    async def wait_idle(self, timeout: float) -> bool:
        return True  # UDP sessions are not waited for: nothing guarantees they ever end

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for session in list(self.sessions.values()):
            self._close_session(session)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc) -> None:
        if not self.closed:
            self.close()
