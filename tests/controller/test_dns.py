"""The mesh DNS over real UDP and TCP sockets on loopback."""

import asyncio
import socket
import struct
import time

from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from lightmesh import wire
from lightmesh.controller.dns import EDNS_UDP_PAYLOAD, TTL, DNSTable, MeshDNS


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


def _open(port, local="127.0.0.1"):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(local, 0))
    return sock


def _ask(sock, name="whoami.whoami.lightmesh"):
    packet = DNSRecord.question(name).pack()
    sock.sendall(struct.pack("!H", len(packet)) + packet)
    size = struct.unpack("!H", _read(sock, 2))[0]
    return [str(r.rdata) for r in DNSRecord.parse(_read(sock, size)).rr]


def _closed(sock):
    try:
        return sock.recv(10) == b""
    except ConnectionResetError:
        return True


def test_tcp_connections_are_bounded_and_the_longest_idle_makes_room(monkeypatch):
    # one client holding every connection (a query now and then) used to lock all others out
    import lightmesh.controller.dns as dns_module

    monkeypatch.setattr(dns_module, "MAX_TCP_CONNECTIONS", 3)
    monkeypatch.setattr(dns_module, "MAX_TCP_CONNECTIONS_PER_CLIENT", 2)

    async def scenario():
        server = MeshDNS(TABLE)
        port = await server.start("127.0.0.1", 0)
        try:
            def clients():
                hog1, hog2 = _open(port), _open(port)
                assert _ask(hog1) == ["127.1.2.3"] and _ask(hog2) == ["127.1.2.3"]
                time.sleep(0.02)
                assert _ask(hog2) == ["127.1.2.3"]  # hog1 is now the longer idle
                hog3 = _open(port)  # the client's third: its longest-idle one makes room
                assert _ask(hog3) == ["127.1.2.3"] and _closed(hog1)
                other = _open(port, "127.0.0.2")  # another client: under its own bound
                assert _ask(other) == ["127.1.2.3"]
                busy = _open(port, "127.0.0.3")  # total bound reached: the longest idle (hog2) goes
                assert _closed(hog2)
                busy.sendall(b"\x00\x20")  # a query under way (length sent, body not yet)
                time.sleep(0.05)
                hog3.sendall(b"\x00\x20")
                other.sendall(b"\x00\x20")
                time.sleep(0.05)
                refused = _open(port, "127.0.0.4")  # every connection busy: closed at once
                assert _closed(refused)
                for s in (hog1, hog2, hog3, other, busy, refused):
                    s.close()
            await asyncio.to_thread(clients)
            # UDP still answers
            reply = await asyncio.to_thread(udp_query, port, "whoami.whoami.lightmesh")
            assert [str(r.rdata) for r in reply.rr] == ["127.1.2.3"]
        finally:
            await server.stop()

    run(scenario())


def test_a_label_holding_a_dot_is_not_one_of_our_names():
    server = MeshDNS(TABLE)
    for labels, rcode in (((b"whoami.whoami", b"traefik", b"mesh"), RCODE.NXDOMAIN),
                          ((b"whoami.whoami.traefik.mesh",), RCODE.REFUSED),
                          ((b"whoami", b"whoami", b"traefik", b"mesh"), RCODE.NOERROR)):
        query = DNSRecord.question("x.example")
        query.questions[0].qname.label = labels
        reply = DNSRecord.parse(server.answer(query.pack()))
        assert reply.header.rcode == rcode, (labels, reply)
        assert bool(reply.rr) is (rcode == RCODE.NOERROR)
    # errors about the message are not authoritative answers
    two = DNSRecord.question("whoami.whoami.lightmesh")
    two.add_question(two.questions[0])
    reply = DNSRecord.parse(server.answer(two.pack()))
    assert reply.header.rcode == RCODE.FORMERR and reply.header.aa == 0


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


def _with_opt(name, qtype="A", version=0, count=1):
    query = DNSRecord.question(name, qtype)
    for _ in range(count):  # what dig and CoreDNS's forward plugin send: an OPT record, 4096 bytes
        query.add_ar(EDNS0(udp_len=4096, version=version, flags="do"))
    return query


def _opts(reply):
    return [rr for rr in reply.ar if rr.rtype == QTYPE.OPT]


def test_edns_queries_get_an_opt_record_back_and_other_versions_badvers():
    async def scenario():
        server = MeshDNS(TABLE)
        port = await server.start("127.0.0.1", 0)
        try:
            loop = asyncio.get_running_loop()
            reply = DNSRecord.parse(await loop.run_in_executor(
                None, lambda: _with_opt("whoami.whoami.traefik.mesh").send("127.0.0.1", port, timeout=2)))
            assert reply.header.rcode == RCODE.NOERROR and reply.header.aa == 1
            assert [str(rr.rdata) for rr in reply.rr] == ["127.1.2.3"]
            (opt,) = _opts(reply)
            assert opt.rclass == EDNS_UDP_PAYLOAD  # an OPT's class is the sender's UDP payload size
            assert opt.ttl == 0  # extended RCODE 0, version 0, DO clear: nothing here is signed
        finally:
            await server.stop()

    run(scenario())
    server = MeshDNS(TABLE)
    for name, rcode in (("nope.whoami.traefik.mesh", RCODE.NXDOMAIN), ("example.com", RCODE.REFUSED)):
        reply = DNSRecord.parse(server.answer(_with_opt(name).pack()))
        assert reply.header.rcode == rcode and len(_opts(reply)) == 1, reply
    # a query without OPT gets a reply without one (the control)
    assert not _opts(DNSRecord.parse(server.answer(DNSRecord.question("whoami.whoami.traefik.mesh").pack())))
    # EDNS version 1: BADVERS (extended RCODE 16 = 1 in the OPT's upper TTL byte, 0 in the header)
    reply = DNSRecord.parse(server.answer(_with_opt("whoami.whoami.traefik.mesh", version=1).pack()))
    (opt,) = _opts(reply)
    assert reply.header.rcode == 0 and opt.ttl >> 24 == 1 and (opt.ttl >> 16) & 0xFF == 0
    assert not reply.rr and reply.header.aa == 0
    # two OPT records: FORMERR, with none in the reply
    reply = DNSRecord.parse(server.answer(_with_opt("whoami.whoami.traefik.mesh", count=2).pack()))
    assert reply.header.rcode == RCODE.FORMERR and not _opts(reply) and not reply.rr


def test_a_query_already_read_is_answered_even_when_room_is_made_at_that_moment(monkeypatch):
    # a new connection at the bound took the longest-idle one although its next query had just been
    # read: on uvloop (the controller's loop) the reply then hit a closed transport and was lost
    import uvloop

    import lightmesh.controller.dns as dns_module

    monkeypatch.setattr(dns_module, "MAX_TCP_CONNECTIONS", 2)
    query = DNSRecord.question("whoami.whoami.lightmesh").pack()
    errors = []

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        server = MeshDNS(TABLE)
        port = await server.start("127.0.0.1", 0)
        answered = 0
        try:
            for _ in range(30):
                r1, w1 = await asyncio.open_connection("127.0.0.1", port)
                await asyncio.sleep(0.002)
                _r2, w2 = await asyncio.open_connection("127.0.0.1", port)  # at the bound
                await asyncio.sleep(0.002)
                w1.write(struct.pack("!H", len(query)) + query)  # the query and a third connection together
                _r3, w3 = await asyncio.open_connection("127.0.0.1", port)
                try:
                    size = struct.unpack("!H", await asyncio.wait_for(r1.readexactly(2), 2))[0]
                    answered += bool(await r1.readexactly(size))
                except (asyncio.IncompleteReadError, ConnectionError):
                    pass
                for w in (w1, w2, w3):
                    w.close()
                await asyncio.sleep(0.002)
        finally:
            await server.stop()
        return answered

    assert uvloop.run(asyncio.wait_for(scenario(), 60)) == 30
    assert not [e for e in errors if isinstance(e.get("exception"), RuntimeError)], errors


def test_udp_answers_fit_what_the_client_takes_512_bytes_or_its_edns_size():
    many = DNSTable.from_shadows([shadow("big", "many", *[f"10.9.0.{i}" for i in range(1, 41)])],
                                 wire.DEFAULT_DOMAINS)  # 40 A records: ~700 bytes
    server = MeshDNS(many)
    name = "many.big.traefik.mesh"
    plain = DNSRecord.parse(server.answer(DNSRecord.question(name).pack(), udp=True))
    assert plain.header.tc == 1 and not plain.rr  # the classic limit: the client asks again over TCP
    offered = DNSRecord.parse(server.answer(_with_opt(name).pack(), udp=True))  # offers 4096
    assert offered.header.tc == 0 and len(offered.rr) == 40
    small = _with_opt(name)
    small.ar = [EDNS0(udp_len=600)]
    cut = DNSRecord.parse(server.answer(small.pack(), udp=True))
    assert cut.header.tc == 1 and not cut.rr and len(_opts(cut)) == 1
    assert len(DNSRecord.parse(server.answer(DNSRecord.question(name).pack())).rr) == 40  # TCP: no limit
