"""The mesh DNS: ``<svc>.<ns>.<domain>`` → the shadow Service's ClusterIP(s), over UDP and TCP.

Runs on the controller's asyncio loop (a ``DatagramProtocol`` and an ``asyncio`` TCP server, not
dnslib's threaded server) and answers from :class:`DNSTable`, which the reconcile loop replaces
whenever the shadow Services change. Answers:

* a known Service: its ClusterIPs of the asked family (A → IPv4, AAAA → IPv6; none of that family
  → NOERROR with an empty answer), TTL 5 s, authoritative, in the case the client asked;
* ANY: both families; other types on a known name: NOERROR, empty;
* an unknown name under one of our domains: NXDOMAIN (the domain apex itself: NOERROR, empty,
  or its SOA when asked; ``<ns>.<domain>`` of a namespace with a meshed Service: NOERROR, empty,
  since names exist below it and RFC 8020 reads NXDOMAIN as "nothing below"); negative answers carry the zone's SOA (minimum = TTL) so resolvers
  cache them for 5 s, as they cache positive ones;
* a name outside our domains: REFUSED (we are not a recursive resolver);
* a malformed query: FORMERR when it has a parsable header, else dropped.

EDNS(0) (RFC 6891): a query with an OPT record gets one back in every reply (our UDP payload
size, no options, the DO bit clear: nothing here is signed); an OPT of a version above 0 gets
BADVERS, two OPT records FORMERR. A query without OPT gets a reply without one.

Names are compared case-insensitively (RFC 4343), label by label: a label holding a ``.`` byte
(legal on the wire, never one of ours) names nothing here.

DNS over TCP is bounded (:data:`MAX_TCP_CONNECTIONS`, :data:`MAX_TCP_CONNECTIONS_PER_CLIENT`, an
idle timeout): at a bound, the longest-idle connection (of that client, or of anyone) is closed to
make room, so one client holding connections open cannot lock the others out.

The UDP socket sets ``SO_REUSEADDR``: local mode's default port 5353 is also mDNS's, and mDNS
responders (avahi) hold ``0.0.0.0:5353`` with ``SO_REUSEADDR``. Both flags set, our bind to
``127.0.0.1`` succeeds next to theirs, and unicast queries to 127.0.0.1 reach the socket bound to
that exact address (ours); multicast (mDNS itself) still reaches theirs.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable

from dnslib import AAAA, EDNS0, QTYPE, RCODE, RR, SOA, A, DNSError, DNSHeader, DNSRecord

from lightmesh import wire
from lightmesh.netutil import LISTEN_BACKLOG, listening_socket

log = logging.getLogger("lightmesh.controller.dns")

TTL = 5
_CLASSES = (1, 255)  # IN and ANY ("*"); CH (version.bind...) and the others are REFUSED
MAX_TCP_MESSAGE = 65535
EDNS_UDP_PAYLOAD = 1232  # the DNS flag day 2020 size: no IP fragmentation on any common path
_BADVERS = 16  # extended RCODE: 12 bits, the upper 8 in the OPT record's TTL field
TCP_IDLE_SECONDS = 10.0
MAX_TCP_QUERIES_PER_CONNECTION = 1000
MAX_TCP_CONNECTIONS = 256  # then the longest-idle connection makes room (UDP is the main path)
MAX_TCP_CONNECTIONS_PER_CLIENT = 64  # one client address: then its own longest-idle one makes room


@dataclass(frozen=True)
class DNSTable:
    """``(namespace, service)`` → addresses, and the domains we are authoritative for."""

    domains: tuple[str, ...] = wire.DEFAULT_DOMAINS
    addresses: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # longest first, so "a.mesh" wins over "mesh" when both are configured
        norm = tuple(sorted({d.strip(".").lower() for d in self.domains if d.strip(".")}, key=len, reverse=True))
        object.__setattr__(self, "domains", norm)
        object.__setattr__(self, "_namespaces", frozenset(ns for ns, _ in self.addresses))

    @classmethod
    def from_shadows(cls, shadows: Iterable[dict], domains: Iterable[str]) -> DNSTable:
        table: dict[tuple[str, str], tuple[str, ...]] = {}
        for shadow in shadows:
            meta = shadow.get("metadata") or {}
            labels = meta.get("labels") or {}
            name = labels.get(wire.LABEL_SHADOW_SERVICE_NAME)
            namespace = labels.get(wire.LABEL_SHADOW_SERVICE_NAMESPACE)
            spec = shadow.get("spec") or {}
            ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None"]
            valid = []
            for ip in ips:
                try:
                    valid.append(str(ipaddress.ip_address(ip)))
                except ValueError:
                    continue
            if name and namespace and valid:
                table[(namespace.lower(), name.lower())] = tuple(valid)
        return cls(tuple(domains), table)

    def lookup(self, qname: str) -> tuple[str, tuple[str, ...] | None]:
        """``("outside"|"apex"|"namespace"|"nxdomain"|"found", addresses)`` for a query name."""
        status, addresses, _ = self.resolve(qname)
        return status, addresses

    def zone_of(self, labels: tuple[str, ...]) -> str | None:
        """The domain whose labels end ``labels`` (compared label by label), or None."""
        for domain in self.domains:
            tail = tuple(domain.split("."))
            if len(labels) > len(tail) and labels[-len(tail):] == tail:
                return domain
        return None

    def resolve(self, qname: str) -> tuple[str, tuple[str, ...] | None, str | None]:
        """Like :meth:`lookup`, plus the domain (zone) the name falls in."""
        name = qname.rstrip(".").lower()
        for domain in self.domains:
            if name == domain:
                return "apex", None, domain
            if name.endswith("." + domain):
                labels = name[: -len(domain) - 1].split(".")
                if len(labels) == 2:
                    found = self.addresses.get((labels[1], labels[0]))
                    if found:
                        return "found", found, domain
                elif len(labels) == 1 and labels[0] in self._namespaces:
                    return "namespace", None, domain  # an empty non-terminal: names exist below it
                return "nxdomain", None, domain
        return "outside", None, None


def _soa(zone: str | None) -> RR:
    zone = zone or "."
    # serial 1: the zone is synthesized; minimum = TTL bounds negative caching
    return RR(zone, QTYPE.SOA, ttl=TTL, rdata=SOA(f"ns.{zone}", f"hostmaster.{zone}", (1, 60, 60, 600, TTL)))


class MeshDNS:
    """UDP + TCP DNS servers over one :class:`DNSTable` (swap ``self.table`` to update)."""

    def __init__(self, table: DNSTable | None = None) -> None:
        self.table = table or DNSTable()
        self._transport: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.base_events.Server | None = None
        self._tcp_tasks: set[asyncio.Task] = set()
        self._tcp_conns: dict[asyncio.StreamWriter, _TCPConn] = {}
        self.port: int | None = None

    # ------------------------------------------------------------------ answers (pure)

    def answer(self, data: bytes, udp: bool = False) -> bytes | None:
        """The reply to ``data``, or None. ``udp``: cut to what the client can take over UDP (512
        bytes, or the UDP payload size its OPT record offers, up to ours): TC set, answers dropped,
        and the client asks again over TCP."""
        try:
            request = DNSRecord.parse(data)
        except (DNSError, struct.error, ValueError, IndexError, UnicodeDecodeError):
            return self._formerr(data)
        if request.header.qr:
            return None  # a response, not a query: answering it could start a loop between servers
        reply = request.reply()  # copies id, sets QR, RD; AA set below
        reply.header.ra = 0
        opts = [rr for rr in request.ar if rr.rtype == QTYPE.OPT]
        if len(opts) > 1:
            reply.header.aa = 0
            reply.header.rcode = RCODE.FORMERR  # RFC 6891 6.1.1; no OPT in the reply
            return reply.pack()
        if opts:
            version = (opts[0].ttl >> 16) & 0xFF
            if version != 0:  # RFC 6891 6.1.3: BADVERS, with the version we speak (0)
                reply.header.aa = 0
                reply.add_ar(EDNS0(udp_len=EDNS_UDP_PAYLOAD, ext_rcode=_BADVERS >> 4))
                reply.header.rcode = _BADVERS & 0xF
                return reply.pack()
        self._answer(request, reply)
        if opts:
            reply.add_ar(EDNS0(udp_len=EDNS_UDP_PAYLOAD))
        packed = reply.pack()
        if udp:
            limit = min(max(opts[0].rclass, 512), EDNS_UDP_PAYLOAD) if opts else 512  # OPT's class: its size
            if len(packed) > limit:
                reply.rr = []
                reply.auth = []
                reply.header.tc = 1
                packed = reply.pack()
        return packed

    def _answer(self, request: DNSRecord, reply: DNSRecord) -> None:
        if request.header.opcode != 0 or len(request.questions) != 1:
            reply.header.aa = 0  # an error about the message, not an authoritative answer
            reply.header.rcode = RCODE.NOTIMP if request.header.opcode != 0 else RCODE.FORMERR
            return
        question = request.questions[0]
        labels = question.qname.label
        if any(b"." in label for label in labels):
            # str(qname) would join "whoami.whoami" + "traefik" + "mesh" into one of our names
            zone = self.table.zone_of(tuple(label.decode("latin-1").lower() for label in labels))
            status, addresses = ("nxdomain" if zone else "outside"), None
        else:
            status, addresses, zone = self.table.resolve(str(question.qname))
        if status == "outside" or question.qclass not in _CLASSES:  # mesh names are IN only
            reply.header.aa = 0
            reply.header.rcode = RCODE.REFUSED
            return
        reply.header.aa = 1
        if status == "nxdomain":
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(_soa(zone))  # lets resolvers cache the negative answer for TTL seconds
            return
        qtype = question.qtype
        if status == "apex" and qtype in (QTYPE.SOA, QTYPE.ANY):
            reply.add_answer(_soa(zone))
        for address in addresses or ():
            ip = ipaddress.ip_address(address)
            if ip.version == 4 and qtype in (QTYPE.A, QTYPE.ANY):
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
            elif ip.version == 6 and qtype in (QTYPE.AAAA, QTYPE.ANY):
                reply.add_answer(RR(question.qname, QTYPE.AAAA, rdata=AAAA(address), ttl=TTL))
        if not reply.rr:
            reply.add_auth(_soa(zone))  # NODATA: same negative caching

    @staticmethod
    def _formerr(data: bytes) -> bytes | None:
        if len(data) < 12 or data[2] & 0x80:
            return None  # not even a header, or a response (QR set): nothing to answer to
        (query_id,) = struct.unpack("!H", data[:2])
        return DNSRecord(DNSHeader(id=query_id, qr=1, rcode=RCODE.FORMERR)).pack()

    # ------------------------------------------------------------------ servers

    async def start(self, host: str, port: int) -> int:
        """Listen on ``host:port`` (UDP and TCP; port 0 picks one). A failed bind raises OSError
        whose message says which protocol and how to choose another port."""
        loop = asyncio.get_running_loop()
        try:
            # "::": dual stack, both protocols (lightmesh.netutil)
            tcp_sock = listening_socket(host, port)
        except OSError as exc:
            raise _bind_error(exc, host, port, "tcp") from None
        try:
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock, backlog=LISTEN_BACKLOG)
        except BaseException:
            tcp_sock.close()
            raise
        self.port = self._tcp.sockets[0].getsockname()[1]
        udp_sock = None
        try:
            udp_sock = listening_socket(host, self.port, socket.SOCK_DGRAM)
            self._transport, _ = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=udp_sock)
        except OSError as exc:
            if udp_sock is not None:
                udp_sock.close()
            self._tcp.close()
            raise _bind_error(exc, host, self.port, "udp") from None
        except BaseException:
            if udp_sock is not None:
                udp_sock.close()
            self._tcp.close()
            raise
        log.info("mesh DNS listening on %s:%s (udp+tcp) for %s", host, self.port, ", ".join(self.table.domains))
        return self.port

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._tcp_tasks):
                task.cancel()
            if self._tcp_tasks:
                await asyncio.wait(set(self._tcp_tasks), timeout=5)  # bounded: shutdown goes on regardless
            await self._tcp.wait_closed()
            self._tcp = None

    def _make_room(self, client: str) -> bool:
        """Room for a new TCP connection from ``client``: at a bound, close the longest-idle
        connection (of that client first). False when every candidate is busy with a query."""
        conns = self._tcp_conns
        mine = [c for c in conns.values() if c.client == client]
        if len(mine) >= MAX_TCP_CONNECTIONS_PER_CLIENT:
            pool = mine
        elif len(conns) >= MAX_TCP_CONNECTIONS:
            pool = list(conns.values())
        else:
            return True
        idle = [c for c in pool if c.idle and not c.has_input()]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.since)
        del conns[victim.writer]
        victim.writer.close()  # its reader sees EOF: the task ends
        return True

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        peer = writer.get_extra_info("peername")
        conn = _TCPConn(writer, peer[0] if peer else "", reader)
        if not self._make_room(conn.client):
            writer.close()
            return
        self._tcp_conns[writer] = conn
        if task is not None:
            self._tcp_tasks.add(task)
        loop = asyncio.get_running_loop()
        try:
            for _ in range(MAX_TCP_QUERIES_PER_CONNECTION):
                conn.idle, conn.since = True, loop.time()
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for may drop a cancel (stop())
                    # that arrives as a read completes, and this loop would go on serving
                    async with asyncio.timeout(TCP_IDLE_SECONDS):
                        size = struct.unpack("!H", await reader.readexactly(2))[0]
                    conn.idle = False
                    async with asyncio.timeout(TCP_IDLE_SECONDS):
                        data = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
                    return
                reply = self.answer(data)
                if reply is None or writer.is_closing():
                    return  # (closing: taken to make room while its query was in the read buffer)
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (ConnectionError, RuntimeError):  # RuntimeError: uvloop, a transport closed meanwhile
            return
        finally:
            if task is not None:
                self._tcp_tasks.discard(task)
            if self._tcp_conns.get(writer) is conn:
                del self._tcp_conns[writer]
            writer.close()


@dataclass
class _TCPConn:
    writer: asyncio.StreamWriter
    client: str
    reader: asyncio.StreamReader | None = None
    idle: bool = True  # waiting for the next query's length: may be closed to make room
    since: float = 0.0

    def has_input(self) -> bool:
        """Bytes of a next query already read but not yet handled (its task has not resumed):
        not idle, whatever ``idle`` says. StreamReader keeps them in ``_buffer``."""
        return bool(getattr(self.reader, "_buffer", b""))


class DNSBindError(OSError):
    """The mesh DNS cannot listen; ``str()`` is the whole one-line reason (no ``[Errno n]``)."""

    def __str__(self) -> str:
        return self.strerror or ""


def _bind_error(exc: OSError, host: str, port: int, protocol: str) -> DNSBindError:
    # asyncio's own bind error text repeats the address; the errno's text is the reason
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    hint = "choose another port with --dns-port"
    if isinstance(exc, PermissionError):
        hint = "ports below 1024 need CAP_NET_BIND_SERVICE; " + hint
    return DNSBindError(exc.errno, f"{reason} ({protocol} {host}:{port}); {hint}")


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, server: MeshDNS) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        reply = self.server.answer(data, udp=True)
        if reply is None or self.transport is None:
            return
        self.transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("DNS UDP error: %s", exc)
