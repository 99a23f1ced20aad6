"""Listening sockets: '::' is dual stack (IPv4 and IPv6 clients), and falls back to 0.0.0.0 where
there is no IPv6; the servers that use it (proxy admin port, controller API and DNS) answer both."""

from __future__ import annotations

import asyncio
import errno
import socket

import pytest
from dnslib import QTYPE, DNSRecord

from conftest import without_ipv6
from lightmesh import netutil
from lightmesh.controller.dns import DNSTable, MeshDNS


def _connects(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as client:
        client.settimeout(2)
        return client.connect_ex((host, port)) == 0


def test_the_any_address_takes_ipv4_and_ipv6_clients():
    sock = netutil.listening_socket("::", 0)
    try:
        port = sock.getsockname()[1]
        assert _connects("127.0.0.1", port) and _connects("::1", port)
    finally:
        sock.close()


def test_without_ipv6_the_any_address_is_ipv4(monkeypatch):
    without_ipv6(monkeypatch)
    sock = netutil.listening_socket("::", 0)
    try:
        assert sock.family == socket.AF_INET and sock.getsockname()[0] == "0.0.0.0"
    finally:
        sock.close()


def test_a_busy_port_is_still_an_error():
    with socket.socket(socket.AF_INET6) as busy:
        busy.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        busy.bind(("::", 0))
        busy.listen()
        with pytest.raises(OSError) as err:
            netutil.listening_socket("::", busy.getsockname()[1]).close()
        assert err.value.errno == errno.EADDRINUSE


def test_the_mesh_dns_on_the_any_address_answers_both_families():
    shadow = {"metadata": {"labels": {"lightmesh.io/service-name": "web", "lightmesh.io/service-namespace": "shop"}},
              "spec": {"clusterIP": "10.96.0.7"}}

    async def main():
        server = MeshDNS(DNSTable.from_shadows([shadow], ["lightmesh"]))
        port = await server.start("::", 0)
        try:
            for host in ("127.0.0.1", "::1"):
                reply = await asyncio.to_thread(
                    lambda h=host: DNSRecord.parse(DNSRecord.question("web.shop.lightmesh", "A").send(h, port, timeout=2, ipv6=":" in h)))
                assert [str(r.rdata) for r in reply.rr if r.rtype == QTYPE.A] == ["10.96.0.7"], host
        finally:
            await server.stop()

    asyncio.run(main())
