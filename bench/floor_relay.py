"""The floor of a proxy built as Lightmesh is: what uvloop, httptools and one Python callback per read cost.

Context for ``bench_proxy.py`` (target ``floor``), not a product: each client connection gets its
own upstream connection (no pool, no load balancing, no routing, no middleware, no metrics); the
request is parsed by httptools and its head rebuilt with an ``X-Forwarded-For`` line, as any HTTP
proxy must; response bytes are fed to a response parser (framing only) and passed on as received.
One write per read on each side, as Lightmesh corks its output. The difference between this and
the ``lightmesh`` target is Lightmesh's own per-request work; the difference between this and nginx
is the runtime's. It handles what the benchmark sends (keep-alive GETs, bodiless) and nothing more.

Usage: ``python bench/floor_relay.py --port P --backend B [--mode rebuild|parse|raw]`` on 127.0.0.1.
``parse`` forwards the request as received (parsed, not rebuilt); ``raw`` parses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import socket

import httptools
import uvloop


class Upstream(asyncio.Protocol):
    def __init__(self, client: Client, parse: bool) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self) if parse else None

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        if self.client.waiting:
            transport.writelines(self.client.waiting)
            self.client.waiting.clear()

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)  # framing only: the bytes go on as they came
        self.client.transport.write(data)

    def on_message_complete(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.transport.close()


class Client(asyncio.Protocol):
    def __init__(self, backend: int, mode: str) -> None:
        self.backend = backend
        self.rebuild = mode == "rebuild"
        self.parser = httptools.HttpRequestParser(self) if mode != "raw" else None
        self.upstream = Upstream(self, mode != "raw")
        self.waiting: list[bytes] = []  # request bytes read before the upstream connected
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list[bytes] = []
        self.head = b""
        self.xff = b""

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.xff = b"X-Forwarded-For: " + transport.get_extra_info("peername")[0].encode() + b"\r\n"
        loop = asyncio.get_running_loop()
        loop.create_task(loop.create_connection(lambda: self.upstream, "127.0.0.1", self.backend))

    def data_received(self, data: bytes) -> None:
        if self.parser is not None:
            self.parser.feed_data(data)
            if self.rebuild:
                data, self.head = self.head, b""
        upstream = self.upstream.transport
        if upstream is None:
            self.waiting.append(data)
        else:
            upstream.write(data)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers += (name, b": ", value, b"\r\n")

    def on_headers_complete(self) -> None:
        if self.rebuild:
            self.head = b"".join((self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\n",
                                  *self.headers, self.xff, b"\r\n"))
        self.url = b""
        self.headers = []

    def on_message_complete(self) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream.transport is not None:
            self.upstream.transport.close()


async def serve(port: int, backend: int, mode: str) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    server = await loop.create_server(lambda: Client(backend, mode), sock=sock)
    async with server:
        await server.serve_forever()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--backend", type=int, required=True)
    ap.add_argument("--mode", choices=("rebuild", "parse", "raw"), default="rebuild")
    args = ap.parse_args()
    uvloop.install()
    asyncio.run(serve(args.port, args.backend, args.mode))


if __name__ == "__main__":
    main()
