"""Real client traffic for the demo and the end-to-end tests: HTTP, TCP and UDP over loopback.

A client's identity in the mesh is its source address (ARCHITECTURE principle 3), so every call can
bind a source IP — the address of the client pod it speaks for.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class HTTPResult:
    status: int | None  # None: the request failed (connection error, reset, timeout)
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    error: str = ""

    @property
    def hostname(self) -> str | None:
        for line in self.body.decode(errors="replace").splitlines():
            if line.startswith("Hostname: "):
                return line.removeprefix("Hostname: ").strip()
        return None


class HTTPClient:
    """One keep-alive connection to ``address:port`` sending ``Host: host`` from ``source``."""

    def __init__(self, address: str, port: int, host: str, source: str | None = None, timeout: float = 5.0) -> None:
        self.address, self.port, self.host, self.source, self.timeout = address, port, host, source, timeout
        self._conn: http.client.HTTPConnection | None = None

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.address, self.port, timeout=self.timeout,
                                                    source_address=(self.source, 0) if self.source else None)
        return self._conn

    def get(self, path: str = "/", headers: dict[str, str] | None = None, method: str = "GET") -> HTTPResult:
        start = time.perf_counter()
        try:
            conn = self._connection()
            conn.request(method, path, headers={"Host": self.host, **(headers or {})})
            resp = conn.getresponse()
            body = resp.read()
            result = HTTPResult(resp.status, body, {k.lower(): v for k, v in resp.getheaders()},
                                time.perf_counter() - start)
            if resp.will_close:
                self.close()
            return result
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return HTTPResult(None, seconds=time.perf_counter() - start, error=f"{type(exc).__name__}: {exc}")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def http_burst(address: str, port: int, host: str, count: int, source: str | None = None,
               path: str = "/", max_seconds: float = 60.0) -> list[HTTPResult]:
    """``count`` sequential requests on one keep-alive connection, stopping at ``max_seconds``."""
    results = []
    deadline = time.monotonic() + max_seconds
    with HTTPClient(address, port, host, source) as client:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            results.append(client.get(path))
    return results


def hostnames(results: list[HTTPResult]) -> Counter:
    return Counter(r.hostname for r in results if r.status == 200)


def tcp_exchange(address: str, port: int, payload: bytes, source: str | None = None, timeout: float = 5.0,
                 expect: bytes | None = None) -> bytes:
    """Send ``payload``, read until the answer is complete (``expect`` received, or the peer closes,
    or a short quiet spell once at least as many bytes as sent came back)."""
    with socket.create_connection((address, port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        sock.sendall(payload)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:  # a denied connection may be reset rather than closed
                break
            if not chunk:
                break
            received += chunk
            if expect is not None and received == expect:
                break
            if len(received) >= len(payload):  # the echo-style stand-ins answer in one go
                sock.settimeout(0.2)
        return received


def timed_tcp_exchanges(address: str, port: int, payload: bytes, expect: bytes, count: int,
                        max_seconds: float = 30.0) -> list[tuple[bytes, float]]:
    """``count`` exchanges, each on a new connection: (answer, seconds from connect to the whole
    answer). Bounded by ``max_seconds``."""
    results = []
    deadline = time.monotonic() + max_seconds
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        start = time.perf_counter()
        try:
            answer = tcp_exchange(address, port, payload, expect=expect)
        except OSError:
            answer = b""
        results.append((answer, time.perf_counter() - start))
    return results


def udp_exchange(address: str, port: int, payload: bytes, source: str | None = None, timeout: float = 3.0) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        if source:
            sock.bind((source, 0))
        sock.settimeout(timeout)
        sock.sendto(payload, (address, port))
        try:
            return sock.recv(65536)
        except socket.timeout:
            return b""
