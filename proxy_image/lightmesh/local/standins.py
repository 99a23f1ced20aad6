"""Stand-ins for the example images, so local mode runs the seed article's whoami without Docker.

* ``traefik/whoami`` (HTTP): answers every path with ``Name`` (its ``WHOAMI_NAME``, when set),
  ``Hostname``, ``IP``, ``RemoteAddr``, the request line and the headers, like the real image; ``/health`` → 200, ``/data?size=N`` → N bytes.
* ``traefik/whoamitcp`` (TCP) and ``traefik/whoamiudp`` (UDP): answer ``Received: <data>``, or the
  hostname when sent ``WHO``.

Each stand-in binds one pod's 127.x address. :meth:`StandIn.kill` drops the listener *and* every
open connection at once — what a crashed container does to its clients.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httptools

WHOAMI_IMAGES = {"traefik/whoami": "http", "traefik/whoamitcp": "tcp", "traefik/whoamiudp": "udp"}
DEFAULT_PORTS = {"http": 80, "tcp": 8080, "udp": 8080}
MAX_DATA_BYTES = 64 * 1024 * 1024


def image_kind(image: str) -> str | None:
    """``docker.io/traefik/whoami:v1.6.0`` → ``http``; None for images without a stand-in."""
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name = name[: name.rfind(":")]
    for prefix in ("docker.io/", "index.docker.io/"):
        name = name.removeprefix(prefix)
    return WHOAMI_IMAGES.get(name)


class _WhoamiHTTP(asyncio.Protocol):
    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.standin.connections.add(transport)

    def connection_lost(self, exc) -> None:
        self.standin.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url, self.headers = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        version = self.parser.get_http_version()
        target = self.url.decode("latin-1")
        path = urlsplit(target).path
        status, body, ctype = 200, b"", b"text/plain; charset=utf-8"
        if path == "/health":
            body = b""
        elif path == "/data":
            size = parse_qs(urlsplit(target).query).get("size", ["0"])[0]
            n = int(size) if size.isdigit() else 0
            body = b"-" * min(n, MAX_DATA_BYTES)
            ctype = b"application/octet-stream"
        else:
            peer = self.transport.get_extra_info("peername")
            lines = [f"Name: {self.standin.name}"] if self.standin.name else []
            lines += [f"Hostname: {self.standin.hostname}", f"IP: {self.standin.address}",
                     f"RemoteAddr: {peer[0]}:{peer[1]}", f"{method} {target} HTTP/{version}"]
            lines += [f"{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in self.headers]
            body = ("\n".join(lines) + "\n").encode()
        keep_alive = self.parser.should_keep_alive()
        head = (b"HTTP/1.1 %d OK\r\ncontent-type: %s\r\ncontent-length: %d\r\n%s\r\n"
                % (status, ctype, len(body), b"" if keep_alive else b"connection: close\r\n"))
        self.transport.write(head + body)
        if not keep_alive:
            self.transport.close()


class _WhoamiTCP(asyncio.Protocol):
    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.standin.connections.add(transport)

    def connection_lost(self, exc) -> None:
        self.standin.connections.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(_answer(self.standin.hostname, data))


class _WhoamiUDP(asyncio.DatagramProtocol):
    def __init__(self, standin: StandIn) -> None:
        self.standin = standin
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(_answer(self.standin.hostname, data), addr)


def _answer(hostname: str, data: bytes) -> bytes:
    if data.strip() == b"WHO":
        return hostname.encode() + b"\n"
    return b"Received: " + data


@dataclass(eq=False)
class StandIn:
    """One pod's stand-in server on ``address:port``."""

    kind: str  # http | tcp | udp
    hostname: str
    address: str
    port: int
    name: str = ""  # the container's WHOAMI_NAME: traefik/whoami answers "Name: <it>" first

    def __post_init__(self) -> None:
        self.connections: set = set()
        self._server = None
        self._udp = None

    @property
    def running(self) -> bool:
        return self._server is not None or self._udp is not None

    async def start(self) -> StandIn:
        loop = asyncio.get_running_loop()
        if self.kind == "udp":
            self._udp, _ = await loop.create_datagram_endpoint(
                lambda: _WhoamiUDP(self), local_addr=(self.address, self.port))
        else:
            factory = {"http": _WhoamiHTTP, "tcp": _WhoamiTCP}[self.kind]
            self._server = await loop.create_server(lambda: factory(self), self.address, self.port,
                                                    family=socket.AF_INET, reuse_address=True)
        return self

    async def kill(self) -> None:
        """Stop accepting and reset every open connection, like a crashed container."""
        if self._server is not None:
            self._server.close()
            for transport in list(self.connections):
                transport.abort()
            await self._server.wait_closed()
            self._server = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        self.connections.clear()
