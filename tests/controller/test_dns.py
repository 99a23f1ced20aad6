"""The mesh DNS over real UDP and TCP sockets on loopback."""

import asyncio
import socket
import struct
import time

from dnslib import QTYPE, RCODE, DNSRecord

from lightmesh import wire
from lightmesh.controller.dns import TTL, DNSTable, MeshDNS


def shadow(ns, name, *ips):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": f"lm-{name}", "namespace": "lightmesh",
                         "labels": {wire.LABEL_SHADOW_SERVICE_NAME: name, wire.LABEL_SHADOW_SERVICE_NAMESPACE: ns,
                                    wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER}},
            "spec": {"clusterIP": ips[0] if ips else None, "clusterIPs": list(ips)}}


TABLE = DNSTable.from_shadows([shadow("whoami", "whoami", "127.1.2.3"),
                               shadow("dual", "web", "10.0.0.7", "fd00::7"),
                               shadow("v6", "only", "fd00::8"),
                               shadow("pending", "noip")], wire.DEFAULT_DOMAINS)


def udp_query(port, name, qtype="A"):
    query = DNSRecord.question(name, qtype)
    return DNSRecord.parse(query.send("127.0.0.1", port, timeout=2))


def tcp_query(port, name, qtype="A", repeat=1):
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        for _ in range(repeat):  # several queries on one connection
            packet = DNSRecord.question(name, qtype).pack()
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            size = struct.unpack("!H", _read(sock, 2))[0]
            replies.append(DNSRecord.parse(_read(sock, size)))
    return replies


def _read(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed early"
        data += chunk
    return data


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_udp_and_tcp_answers():
    async def scenario():
        server = MeshDNS(TABLE)
        port = await server.start("127.0.0.1", 0)
        try:
            for ask in (lambda *a: udp_query(*a), lambda *a: tcp_query(*a)[0]):
                for domain in wire.DEFAULT_DOMAINS:
                    reply = await asyncio.to_thread(ask, port, f"whoami.whoami.{domain}")
                    assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
                    assert [(str(r.rdata), r.ttl, r.rtype) for r in reply.rr] == [("127.1.2.3", TTL, QTYPE.A)]
                    assert str(reply.rr[0].rname) == f"whoami.whoami.{domain}."
                # case-insensitive, and the answer keeps the asker's case
                reply = await asyncio.to_thread(ask, port, "WhoAmI.WHOAMI.Traefik.Mesh")
                assert [str(r.rdata) for r in reply.rr] == ["127.1.2.3"]
                # AAAA for an IPv4-only Service: NOERROR, no answer
                reply = await asyncio.to_thread(ask, port, "whoami.whoami.lightmesh", "AAAA")
                assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
                assert str(reply.auth[0].rname) == "lightmesh."  # NODATA carries the SOA
                # dual stack: each family for its type
                reply = await asyncio.to_thread(ask, port, "web.dual.maesh", "AAAA")
                assert [str(r.rdata) for r in reply.rr] == ["fd00::7"]
                reply = await asyncio.to_thread(ask, port, "web.dual.maesh", "A")
                assert [str(r.rdata) for r in reply.rr] == ["10.0.0.7"]
                reply = await asyncio.to_thread(ask, port, "only.v6.maesh", "A")
                assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
                # unknown under our domains: NXDOMAIN; a shadow without a ClusterIP yet is unknown
                for name in ("nope.whoami.traefik.mesh", "noip.pending.lightmesh", "a.b.c.lightmesh",
                             "nonamespace.lightmesh"):
                    reply = await asyncio.to_thread(ask, port, name)
                    assert reply.header.rcode == RCODE.NXDOMAIN, name
                    assert [r.rtype for r in reply.auth] == [QTYPE.SOA] and reply.auth[0].ttl == TTL
                # a namespace with meshed Services: names exist below it, so NOERROR, empty (RFC 8020:
                # NXDOMAIN would tell a resolver that minimises query names nothing exists below)
                reply = await asyncio.to_thread(ask, port, "whoami.lightmesh")
                assert reply.header.rcode == RCODE.NOERROR and reply.rr == []
                assert [r.rtype for r in reply.auth] == [QTYPE.SOA]
                reply = await asyncio.to_thread(ask, port, "traefik.mesh", "SOA")
                assert reply.header.rcode == RCODE.NOERROR and [r.rtype for r in reply.rr] == [QTYPE.SOA]
                # outside our domains: REFUSED, not authoritative
                reply = await asyncio.to_thread(ask, port, "example.com")
                assert reply.header.rcode == RCODE.REFUSED and reply.header.aa == 0 and reply.rr == []
                reply = await asyncio.to_thread(ask, port, "whoami.whoami.mesh")  # suffix, not our domain
                assert reply.header.rcode == RCODE.REFUSED
            replies = await asyncio.to_thread(tcp_query, port, "whoami.whoami.lightmesh", "A", 3)
            assert [[str(r.rdata) for r in rep.rr] for rep in replies] == [["127.1.2.3"]] * 3
        finally:
            await server.stop()

    run(scenario())


def test_table_swap_is_seen_by_the_next_query():
    async def scenario():
        server = MeshDNS(DNSTable(("lightmesh",)))
        port = await server.start("127.0.0.1", 0)
        try:
            reply = await asyncio.to_thread(udp_query, port, "a.b.lightmesh")
            assert reply.header.rcode == RCODE.NXDOMAIN
            server.table = DNSTable.from_shadows([shadow("b", "a", "127.1.0.9")], ["lightmesh"])
            reply = await asyncio.to_thread(udp_query, port, "a.b.lightmesh")
            assert [str(r.rdata) for r in reply.rr] == ["127.1.0.9"]
            # a domain no longer configured is outside
            reply = await asyncio.to_thread(udp_query, port, "a.b.maesh")
            assert reply.header.rcode == RCODE.REFUSED
        finally:
            await server.stop()

    run(scenario())


def test_garbage_gets_formerr_or_nothing():
    server = MeshDNS(TABLE)
    assert server.answer(b"\x00") is None
    reply = server.answer(b"\x12\x34" + b"\x01\x00" + b"\x00\x01" + b"\x00" * 6 + b"\xff\xff")
    assert reply is not None
    parsed = DNSRecord.parse(reply)
    assert parsed.header.id == 0x1234 and parsed.header.rcode == RCODE.FORMERR


def test_longest_domain_wins():
    table = DNSTable.from_shadows([shadow("ns", "svc", "127.1.0.5")], ["mesh", "traefik.mesh"])
    assert table.lookup("svc.ns.traefik.mesh") == ("found", ("127.1.0.5",))
    assert table.lookup("svc.ns.mesh") == ("found", ("127.1.0.5",))
    assert table.lookup("traefik.mesh.") == ("apex", None)
    assert table.lookup("x.svc.ns.mesh")[0] == "nxdomain"


def test_tcp_connections_are_capped(monkeypatch):
    import lightmesh.controller.dns as dns_module

    monkeypatch.setattr(dns_module, "MAX_TCP_CONNECTIONS", 1)

    async def scenario():
        server = MeshDNS(TABLE)
        port = await server.start("127.0.0.1", 0)
        try:
            def second_is_refused():
                with socket.create_connection(("127.0.0.1", port), timeout=5) as first:
                    first.sendall(b"\x00")  # half a length prefix: the server holds this connection
                    for _ in range(200):  # until the server registered the first one
                        if server._tcp_tasks:
                            break
                        time.sleep(0.01)
                    with socket.create_connection(("127.0.0.1", port), timeout=5) as second:
                        return second.recv(10)
            assert await asyncio.to_thread(second_is_refused) == b""  # closed at once
            # UDP still answers
            reply = await asyncio.to_thread(udp_query, port, "whoami.whoami.lightmesh")
            assert [str(r.rdata) for r in reply.rr] == ["127.1.2.3"]
        finally:
            await server.stop()

    run(scenario())


def test_responses_are_ignored_and_other_classes_refused():
    server = MeshDNS(TABLE)
    name = "whoami.whoami.lightmesh"
    assert DNSRecord.parse(server.answer(DNSRecord.question(name).pack())).rr  # the control: answered
    response = DNSRecord.question(name)
    response.header.qr = 1  # a response sent to us: answering it could loop between two servers
    assert server.answer(response.pack()) is None
    garbage_response = b"\x12\x34\x81\x00" + b"\x00\x01" + b"\x00" * 6 + b"\xff\xff"
    assert server.answer(garbage_response) is None
    chaos = DNSRecord.parse(server.answer(DNSRecord.question(name, "A", "CH").pack()))
    assert chaos.header.rcode == RCODE.REFUSED and not chaos.rr
    anyclass = DNSRecord.parse(server.answer(DNSRecord.question(name, "A", "*").pack()))
    assert anyclass.rr
