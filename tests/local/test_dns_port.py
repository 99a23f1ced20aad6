"""The mesh DNS on local mode's default port 5353, which mDNS responders (avahi) hold too."""

import asyncio
import socket

import pytest
from dnslib import DNSRecord

from lightmesh.controller.dns import DNSTable, MeshDNS
from proctools import free_dns_port

TABLE = DNSTable(("traefik.mesh",), {("whoami", "whoami"): ("127.1.0.7",)})


def mdns_like_holder() -> socket.socket:
    """What avahi does: 0.0.0.0:<port> with SO_REUSEADDR and SO_REUSEPORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", free_dns_port()))  # free for TCP too: the mesh DNS binds both
    sock.setblocking(False)
    return sock


def test_binds_next_to_an_mdns_responder_and_gets_the_unicast_queries():
    with mdns_like_holder() as holder:
        port = holder.getsockname()[1]

        async def scenario():
            server = MeshDNS(TABLE)
            assert await server.start("127.0.0.1", port) == port  # before: [Errno 98] Address already in use
            try:
                query = DNSRecord.question("whoami.whoami.traefik.mesh")
                reply = DNSRecord.parse(await asyncio.to_thread(query.send, "127.0.0.1", port, timeout=2))
                assert [str(rr.rdata) for rr in reply.rr] == ["127.1.0.7"]
            finally:
                await server.stop()

        asyncio.run(asyncio.wait_for(scenario(), 30))
        with pytest.raises(BlockingIOError):  # the query reached our socket, not the responder's
            holder.recv(512)


def test_a_port_still_taken_names_the_flag():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:  # no SO_REUSEADDR: no sharing
        plain.bind(("127.0.0.1", free_dns_port()))  # its TCP twin free: the UDP one is what is taken
        port = plain.getsockname()[1]

        async def scenario():
            server = MeshDNS(TABLE)
            with pytest.raises(OSError) as failure:
                await server.start("127.0.0.1", port)
            await server.stop()
            return str(failure.value)

        message = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert message == f"Address already in use (udp 127.0.0.1:{port}); choose another port with --dns-port"
