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
from proctools import listen_backlog


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


async def _closed_within(port: int, data: bytes, seconds: float) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), seconds) == b""  # EOF, no answer
    finally:
        writer.close()


def test_the_api_admin_and_dns_servers_keep_the_accept_queue_and_time_out_slow_heads(monkeypatch):
    # aiohttp listened again with a backlog of 128 (asyncio 100 for the DNS): every proxy polling a
    # restarted controller overflowed it; and a request head never finished held its connection
    # (and a file descriptor) for good: a few hundred slowloris connections took the API down
    from lightmesh.controller import api as controller_api
    from lightmesh.proxy import admin as proxy_admin

    monkeypatch.setattr(controller_api, "HTTP_HEAD_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(proxy_admin, "HTTP_HEAD_TIMEOUT_SECONDS", 0.3)

    class AdminState:
        def ready(self):
            return True

        async def metrics_text(self):
            return ""

        def rawdata(self):
            return {}

    async def main():
        from lightmesh.config import HTTPConfig, make_config

        store = controller_api.ConfigStore()
        store.publish(make_config(1, HTTPConfig()))
        api = controller_api.ControllerAPI(store)
        api_port = await api.start("127.0.0.1", 0)
        admin = await proxy_admin.AdminServer(AdminState(), "127.0.0.1", 0).start()
        dns = MeshDNS(DNSTable())
        dns_port = await dns.start("127.0.0.1", 0)
        try:
            assert [listen_backlog(p) for p in (api_port, admin.port, dns_port)] == [netutil.LISTEN_BACKLOG] * 3
            for port in (api_port, admin.port):
                assert await _closed_within(port, b"GET /api/configuration/current HTTP/1.1\r\nHost: x\r\n", 3)
                assert await _closed_within(port, b"", 3)  # nothing sent at all
            # a request in progress is not cut: a long poll held past the head timeout is answered
            reader, writer = await asyncio.open_connection("127.0.0.1", api_port)
            writer.write(b"GET /api/configuration/current?wait=1 HTTP/1.1\r\nHost: x\r\nIf-None-Match: *\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.close()
            assert head.split(b" ")[1] == b"304", head  # after wait=1 s, past the 0.3 s head timeout
        finally:
            await api.stop()
            await admin.stop()
            await dns.stop()

    asyncio.run(main())
