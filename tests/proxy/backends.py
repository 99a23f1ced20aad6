"""Real HTTP test backends on loopback for proxy tests (importable by any test module).

:class:`Backend` is an HTTP/1.1 server (asyncio Protocol + httptools) on the running loop, bound to
``127.0.0.1`` (or another 127.x address) with an OS-chosen port. What it answers depends on the path:

=====================  ======================================================================
``/`` (anything else)  echo, whoami-like: body = request line + headers as received + body;
                       ``X-Backend: <name>``, ``X-Body-Length``
``/chunked?n=N&size=S`` N chunks of S bytes, chunked encoding
``/big?size=N``        N bytes (Content-Length), a repeating pattern (see :func:`pattern`)
``/bigchunked?size=N`` N bytes, chunked in 64 KiB chunks
``/slow?ms=M``         echo after M milliseconds
``/hang``              never answers (the connection stays open)
``/reset``             aborts the connection (RST) before any response byte
``/partial``           sends a head (Content-Length 1000) and 10 body bytes, then aborts
``/close``             echo with ``Connection: close``, then closes
``/nolength``          close-delimited body (no Content-Length), then closes
``/status/NNN``        answers status NNN with a short body
``/discard``           reads the whole body, answers its length and SHA-256 (no echo)
Upgrade request        ``101 Switching Protocols``, then echoes raw bytes (WebSocket-ish)
``Expect: 100-continue`` answered with ``100 Continue`` before the body is read
=====================  ======================================================================

Every request is recorded (:attr:`Backend.requests`: method, path, headers, body) and
:attr:`Backend.connections` / :attr:`Backend.bytes_received` count what reached the backend,
so a test can assert that nothing was forwarded.

:class:`ResetServer` accepts and resets every connection at once; :func:`closed_port` gives a
port where nothing listens (connection refused).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

import httptools

__all__ = ["Backend", "RecordedRequest", "ResetServer", "closed_port", "pattern", "Response", "RawClient", "request",
           "ProxyUnderTest", "simple_config", "on_uvloop"]


def pattern(size: int) -> bytes:
    """Deterministic body of ``size`` bytes (so corruption or reordering shows)."""
    block = bytes(range(256)) * 256  # 64 KiB
    reps, rest = divmod(size, len(block))
    return block * reps + block[:rest]


def closed_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` with no listener (bound then released; nothing reuses it this fast)."""
    s = socket.socket()
    s.bind((host, 0))
    port = s.getsockname()[1]
    s.close()
    return port


@dataclass
class RecordedRequest:
    method: str
    path: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    peer: str = ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]


class _BackendProtocol(asyncio.Protocol):
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.tunnel = False
        self.queue: list = []  # pipelined requests answered in order
        self.busy = False
        self.tasks: set[asyncio.Task] = set()
        self.peer = ""

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.backend.connections += 1
        self.backend._protocols.add(self)
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""

    def connection_lost(self, exc) -> None:
        self.backend._protocols.discard(self)
        for t in list(self.tasks):
            t.cancel()

    def data_received(self, data: bytes) -> None:
        self.backend.bytes_received += len(data)
        if self.tunnel:
            self.transport.write(data)
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            tail = data[exc.args[0]:]
            self.tunnel = True
            if tail:
                self.transport.write(tail)
        except httptools.HttpParserError:
            self.backend.parse_errors += 1
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def on_message_begin(self) -> None:
        self.url = b""
        self.headers = []
        self.body = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        for name, value in self.headers:
            if name.lower() == b"expect" and value.lower() == b"100-continue":
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        if self.parser.should_upgrade():
            self.transport.write(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
                                 + dict((k.lower(), v) for k, v in self.headers).get(b"upgrade", b"x") + b"\r\n\r\n")
            self._record(b"")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return
        req = self._record(b"".join(self.body))
        self.queue.append((req, self.parser.should_keep_alive(), self.parser.get_http_version()))
        self._next()

    def _record(self, body: bytes) -> RecordedRequest:
        req = RecordedRequest(self.parser.get_method().decode(), self.url.decode("latin-1"),
                              self.parser.get_http_version(),
                              [(k.decode("latin-1"), v.decode("latin-1")) for k, v in self.headers], body, self.peer)
        self.backend.requests.append(req)
        return req

    def _next(self) -> None:
        if self.busy or not self.queue:
            return
        self.busy = True
        req, keep, version = self.queue.pop(0)
        task = asyncio.ensure_future(self._answer(req, keep, version))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, req: RecordedRequest, keep: bool, version: str) -> None:
        try:
            await self.backend.respond(self, req, keep)
        finally:
            self.busy = False
        if self.transport is not None and not self.transport.is_closing():
            self._next()


class Backend:
    """See the module docstring. Use ``async with Backend() as b:`` or ``await start()``/``close()``."""

    def __init__(self, name: str = "backend", host: str = "127.0.0.1", tls=None) -> None:
        self.name = name
        self.host = host
        self.tls = tls  # an ssl.SSLContext: serve HTTPS (url scheme https)
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self.bytes_received = 0
        self.parse_errors = 0
        self._protocols: set[_BackendProtocol] = set()

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    async def start(self) -> Backend:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _BackendProtocol(self), self.host, 0, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for proto in list(self._protocols):
                if proto.transport is not None:
                    proto.transport.abort()
            await self.server.wait_closed()
            self.server = None

    async def __aenter__(self) -> Backend:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def respond(self, proto: _BackendProtocol, req: RecordedRequest, keep: bool) -> None:
        t = proto.transport
        parts = urlsplit(req.path)
        path = parts.path
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        conn = b"" if keep else b"Connection: close\r\n"
        if path == "/reset":
            t.abort()
            return
        if path == "/partial":
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n0123456789")
            await asyncio.sleep(0.05)
            t.abort()
            return
        if path == "/hang":
            await asyncio.sleep(3600)
            return
        if path == "/slow":
            await asyncio.sleep(int(query.get("ms", "100")) / 1000.0)
        if path == "/big":
            body = pattern(int(query.get("size", "1048576")))
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), conn))
            if req.method != "HEAD":
                t.write(body)
        elif path in ("/chunked", "/bigchunked"):
            if path == "/chunked":
                n, size = int(query.get("n", "3")), int(query.get("size", "10"))
                chunks = [bytes([65 + i % 26]) * size for i in range(n)]
            else:
                body = pattern(int(query.get("size", "1048576")))
                chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)]
            t.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Backend: %s\r\n%s\r\n"
                    % (self.name.encode(), conn))
            for chunk in chunks:
                t.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await asyncio.sleep(0)
            t.write(b"0\r\n\r\n")
        elif path == "/nolength":
            t.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nclose-delimited body from " + self.name.encode())
            t.close()
            return
        elif path.startswith("/status/"):
            status = int(path.rsplit("/", 1)[1])
            body = b"" if status in (204, 304) or req.method == "HEAD" else b"status %d\n" % status
            length = b"" if status in (204, 304) else b"Content-Length: %d\r\n" % len(body)
            t.write(b"HTTP/1.1 %d X\r\n%s%s\r\n%s" % (status, length, conn, body))
        elif path == "/discard":
            body = b"%d %s" % (len(req.body), hashlib.sha256(req.body).hexdigest().encode())
            t.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), conn, body))
        else:
            head = "%s %s HTTP/%s\r\n" % (req.method, req.path, req.version)
            head += "".join(f"{k}: {v}\r\n" for k, v in req.headers) + "\r\n"
            body = head.encode("latin-1") + req.body
            extra = b"Connection: close\r\n" if (path == "/close" or not keep) else b""
            t.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nX-Backend: %s\r\nX-Body-Length: %d\r\n"
                    b"Content-Length: %d\r\n%s\r\n" % (self.name.encode(), len(req.body), len(body), extra))
            if req.method != "HEAD":
                t.write(body)
            if path == "/close":
                t.close()
                return
        if not keep:
            t.close()


class ScriptedUpstream:
    """An upstream that answers each request (a head without body) with the next scripted response:
    a list of byte chunks, written with a pause between them so each arrives in its own read; a
    ``None`` chunk closes the connection."""

    def __init__(self, responses: list[list[bytes]]) -> None:
        self.responses = list(responses)
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None
        self.url = ""

    async def __aenter__(self) -> ScriptedUpstream:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Scripted(self), "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()


class _Scripted(asyncio.Protocol):
    def __init__(self, owner: ScriptedUpstream) -> None:
        self.owner = owner
        self.buf = b""
        self.transport = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.owner.connections += 1

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            _, self.buf = self.buf.split(b"\r\n\r\n", 1)
            asyncio.get_running_loop().create_task(self._answer(self.owner.responses.pop(0)))

    async def _answer(self, chunks: list[bytes]) -> None:
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(0.02)
            if chunk is None:
                self.transport.close()
                return
            self.transport.write(chunk)


class _ResetProtocol(asyncio.Protocol):
    def __init__(self, owner: ResetServer) -> None:
        self.owner = owner

    def connection_made(self, transport) -> None:
        self.owner.connections += 1
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # linger 0: close() sends RST instead of FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        transport.abort()


class ResetServer:
    """Accepts every connection and resets it before reading or answering anything."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def __aenter__(self) -> ResetServer:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _ResetProtocol(self), self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# --------------------------------------------------------------------------- proxy harness and client


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    version: str = "1.1"
    keep_alive: bool = True

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None


class _ResponseReader:
    """Incremental response parsing (httptools) for :class:`RawClient`."""

    def __init__(self, head_request: bool = False) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.done: list[Response] = []
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.head_request = head_request
        self.heads: list[bool] = []  # pipelined: per coming response, "answers a HEAD"

    def on_message_begin(self) -> None:
        self.headers, self.body = [], []
        if self.heads:
            self.head_request = self.heads.pop(0)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_headers_complete(self) -> None:
        if self.head_request:
            self._finish()
            # llhttp cannot be told that a HEAD response has no body: a fresh parser for the next
            self.parser = httptools.HttpResponseParser(self)

    def on_message_complete(self) -> None:
        if not self.head_request:
            self._finish()

    def _finish(self) -> None:
        self.done.append(Response(self.parser.get_status_code(), self.headers, b"".join(self.body),
                                  self.parser.get_http_version(), self.parser.should_keep_alive()))


class RawClient:
    """A test client on raw sockets: send exact bytes, read parsed responses or raw bytes, with deadlines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._parsed = _ResponseReader()
        self.raw = b""

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", local_host: str | None = None) -> RawClient:
        kwargs = {"local_addr": (local_host, 0)} if local_host else {}
        reader, writer = await asyncio.open_connection(host, port, **kwargs)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def expect_heads(self, heads: list[bool]) -> None:
        """Before reading pipelined responses: which of them answer HEAD requests (no body)."""
        self._parsed.heads = list(heads)

    async def response(self, timeout: float = 5.0, head: bool = False) -> Response:
        """The next complete response (1xx interim responses included as their own entries).
        ``head``: it answers a HEAD request (ignored after :meth:`expect_heads`)."""
        if not self._parsed.heads:
            self._parsed.head_request = head
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._parsed.done:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("no complete response in time")
            data = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not data:
                try:
                    self._parsed.parser.feed_data(b"")
                except httptools.HttpParserError:
                    pass
                if not self._parsed.done:
                    raise ConnectionError("connection closed before a complete response")
                break
            try:
                self._parsed.parser.feed_data(data)
            except httptools.HttpParserUpgrade as exc:
                self.raw += data[exc.args[0]:]
        return self._parsed.done.pop(0)

    async def read_raw(self, n: int, timeout: float = 5.0) -> bytes:
        """Exactly ``n`` raw bytes (after an upgrade, or for framing checks)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.raw) < n:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"got {len(self.raw)} of {n} bytes")
            data = await asyncio.wait_for(self.reader.read(65536), remaining)
            if not data:
                break
            self.raw += data
        out, self.raw = self.raw[:n], self.raw[n:]
        return out

    async def read_all(self, timeout: float = 5.0) -> bytes:
        """Everything until the peer closes."""
        chunks = [self.raw]
        self.raw = b""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError("peer did not close")
            try:
                data = await asyncio.wait_for(self.reader.read(65536), remaining)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    async def closed(self, timeout: float = 5.0) -> bool:
        """True when the peer closes (EOF or reset) within ``timeout``, ignoring any data."""
        try:
            await self.read_all(timeout)
            return True
        except TimeoutError:
            return False

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def request(port: int, method: str = "GET", path: str = "/", host: str = "svc", body: bytes = b"",
                  headers: dict[str, str] | None = None, timeout: float = 5.0) -> Response:
    """One request on a fresh connection (Content-Length body), the connection closed after."""
    client = await RawClient.connect(port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body or method in ("POST", "PUT"):
            lines.append(f"Content-Length: {len(body)}")
        await client.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return await client.response(timeout, head=method == "HEAD")
    finally:
        await client.close()


class ProxyUnderTest:
    """The HTTP data plane on a loopback listener, as a worker runs it: ``create_server`` with the
    module's ``protocol_factory`` and a holder whose ``http`` is the compiled plane.

    ``config`` is a :class:`lightmesh.config.ProxyConfig`; ``apply(config)`` swaps planes like the
    runtime does (compile with ``previous``, assign, close the old one)."""

    def __init__(self, config, entry_point: str = "web", options=None, host: str = "127.0.0.1") -> None:
        from types import SimpleNamespace

        from lightmesh.proxy.http import HTTPOptions
        from lightmesh.proxy.metrics import ProxyMetrics

        self.config = config
        self.entry_point = entry_point
        self.options = options or HTTPOptions()
        self.metrics = ProxyMetrics()
        self.holder = SimpleNamespace(http=None)
        self.host = host
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.loop_errors: list[dict] = []

    async def __aenter__(self) -> ProxyUnderTest:
        from lightmesh.proxy.http import protocol_factory
        from lightmesh.proxy.routing import compile_http

        self.holder.http = compile_http(self.config, None, self.metrics, self.options)
        loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def record(loop, context):  # callbacks that raised: a proxy bug the test should see
            self.loop_errors.append(context)
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
        loop.set_exception_handler(record)
        self.server = await loop.create_server(
            protocol_factory(self.holder, self.entry_point, self.options, self.metrics), self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def apply(self, config) -> None:
        from lightmesh.proxy.routing import compile_http

        old = self.holder.http
        self.holder.http = compile_http(config, old, self.metrics, self.options)
        self.config = config
        if old is not None:
            old.close()

    async def __aexit__(self, *exc) -> None:
        if self.server is not None:
            self.server.close()
            for conn in list(self.options.connections.conns):
                conn.abort()
            await self.server.wait_closed()
        if self.holder.http is not None:
            self.holder.http.close()
        await asyncio.sleep(0)  # let aborted transports run connection_lost


def simple_config(servers: list[str] | dict[str, list[str]], *, routers: list[dict] | None = None,
                  middlewares: list[dict] | None = None, port: int = 5000, version: int = 1,
                  pass_host_header: bool = True, load_balancer: str = "round_robin",
                  weights: dict[str, int] | None = None):
    """A config with entry point ``web``; ``servers`` is a list of URLs (service ``svc``, one
    catch-all router ``r``) or {service name: URLs}. ``routers`` entries are Router fields (default
    entry point ``web``)."""
    from lightmesh.config import HTTPConfig, make_config

    services = servers if isinstance(servers, dict) else {"svc": servers}
    weights = weights or {}
    http = {
        "entry_points": [{"name": "web", "address": "127.0.0.1", "port": port}],
        "services": [{"name": name, "servers": [{"url": u, "weight": weights.get(u, 1)} for u in urls],
                      "pass_host_header": pass_host_header, "load_balancer": load_balancer}
                     for name, urls in services.items()],
        "routers": [{"entry_points": ["web"], **r} for r in routers] if routers is not None else
                   [{"name": "r", "entry_points": ["web"], "service": next(iter(services))}],
        "middlewares": middlewares or [],
    }
    return make_config(version, HTTPConfig.model_validate(http))


async def send_until_blocked(sock, batch: bytes, max_bytes: int, seconds: float = 4.0) -> int:
    """Send ``batch`` on the non-blocking ``sock`` again and again, reading nothing, until a send
    waits 0.5 s (the kernel's buffers are full both ways: the peer stopped reading), ``max_bytes``
    went out or ``seconds`` passed; returns the bytes sent."""
    loop = asyncio.get_running_loop()
    sent = 0
    deadline = loop.time() + seconds
    while loop.time() < deadline and sent < max_bytes:  # bounded in count and time
        try:
            await asyncio.wait_for(loop.sock_sendall(sock, batch), 0.5)
        except asyncio.TimeoutError:
            break
        sent += len(batch)
    return sent


def on_uvloop(fn=None, *, timeout: float = 60.0):
    """Run an ``async def`` test on a fresh uvloop loop (what the proxy runs on), bounded by
    ``timeout`` seconds. The wrapped test is a plain function, so fixtures and parametrize work."""
    import functools

    import uvloop

    def wrap(func):
        @functools.wraps(func)
        def runner(*args, **kwargs):
            async def bounded():
                return await asyncio.wait_for(func(*args, **kwargs), timeout)
            return uvloop.run(bounded())
        return runner
    return wrap(fn) if fn is not None else wrap


# --------------------------------------------------------------------------- stalls of this process

_FREEZER = ("import os, signal, sys, time; time.sleep(float(sys.argv[2])); os.kill(int(sys.argv[1]), signal.SIGSTOP); "
            "time.sleep(float(sys.argv[3])); os.kill(int(sys.argv[1]), signal.SIGCONT)")


# The start of an HTTP/2 client script for client_through_a_freeze: a connection to the port in
# argv[1] (``s``, ``c``: the preface and SETTINGS not sent yet), a GET head for stream ids, and
# ``status_of(sid)``: the :status of stream ``sid`` once it comes (``closed`` or ``goaway`` instead).
H2_CLIENT_SCRIPT = r"""
import socket, sys, time
import h2.config, h2.connection, h2.events
GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"svc"), (b":path", b"/")]
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.settimeout(10)
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
c.initiate_connection()

def status_of(sid):
    for _ in range(100):
        data = s.recv(65536)
        if not data:
            return "closed"
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == sid:
                return dict(ev.headers)[b":status"].decode()
            if isinstance(ev, h2.events.ConnectionTerminated):
                return "goaway"
        s.sendall(c.data_to_send())
    return "no answer"
"""


async def client_through_a_freeze(source: str, port: int, start: float = 0.3, length: float = 1.5) -> bytes:
    """Run the Python ``source`` (a client, given ``port`` as argv[1]) in another process while a
    helper process freezes this one (SIGSTOP), the proxy's, from ``start`` for ``length`` seconds,
    as a cgroup freezer or CPU throttling would; returns the client's stdout, stripped."""
    procs = []
    try:
        client = await asyncio.create_subprocess_exec(sys.executable, "-c", source, str(port), stdout=subprocess.PIPE)
        procs.append(client)
        procs.append(await asyncio.create_subprocess_exec(
            sys.executable, "-c", _FREEZER, str(os.getpid()), str(start), str(length)))
        out, _ = await asyncio.wait_for(client.communicate(), 20)
        await asyncio.wait_for(procs[1].wait(), 5 + start + length)
        return out.strip()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def server_process(source: str):
    """Run the Python ``source`` (a server that prints its port on its first line) in another
    process, so that it outlives a freeze of this one; yields (port, the process)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", source, stdout=subprocess.PIPE)
    try:
        yield int(await asyncio.wait_for(proc.stdout.readline(), 10)), proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()
