"""Stand-in servers answer like the real example images, on real loopback sockets."""

import asyncio
import socket

from lightmesh.local.standins import StandIn


async def _http_get(address, port, path="/", headers=b""):
    reader, writer = await asyncio.open_connection(address, port)
    writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: whoami.whoami.traefik.mesh\r\n" + headers + b"\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    length = int([l for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0].split(b":")[1])
    body = await reader.readexactly(length)
    writer.close()
    await writer.wait_closed()
    return head, body


def test_whoami_http_tcp_udp_and_kill():
    async def scenario():
        http = await StandIn("http", "whoami-abc", "127.0.0.1", 0).start()
        port = http._server.sockets[0].getsockname()[1]
        head, body = await _http_get("127.0.0.1", port, "/x?y=1", b"X-Test: 1\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        text = body.decode()
        assert "Hostname: whoami-abc\nIP: 127.0.0.1\nRemoteAddr: 127.0.0.1:" in text
        assert "GET /x?y=1 HTTP/1.1" in text and "X-Test: 1" in text and "Name:" not in text
        named = await StandIn("http", "web-v2-abc", "127.0.0.1", 0, name="web-v2").start()
        _, named_body = await _http_get("127.0.0.1", named._server.sockets[0].getsockname()[1])
        assert named_body.decode().startswith("Name: web-v2\nHostname: web-v2-abc\n")  # as traefik/whoami
        await named.kill()
        _, data = await _http_get("127.0.0.1", port, "/data?size=1000")
        assert data == b"-" * 1000

        tcp = await StandIn("tcp", "whoami-tcp-1", "127.0.0.1", 0).start()
        tport = tcp._server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", tport)
        writer.write(b"my data")
        assert await reader.readexactly(len(b"Received: my data")) == b"Received: my data"
        await tcp.kill()
        assert await asyncio.wait_for(reader.read(), 5) == b""  # the open connection is reset/closed
        writer.close()

        udp = await StandIn("udp", "whoami-udp-1", "127.0.0.1", 0).start()
        uport = udp._udp.get_extra_info("sockname")[1]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(5)
        sock.sendto(b"WHO", ("127.0.0.1", uport))
        assert (await asyncio.get_running_loop().run_in_executor(None, sock.recv, 100)) == b"whoami-udp-1\n"
        sock.close()

        await http.kill()
        await udp.kill()
        assert not http.running and not tcp.running and not udp.running
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            pass
        else:
            raise AssertionError("killed stand-in still accepts connections")

    asyncio.run(asyncio.wait_for(scenario(), 20))
