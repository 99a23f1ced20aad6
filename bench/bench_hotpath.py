"""The HTTP proxy's per-request Python cost, measured in process, without sockets or a kernel.

A ``ClientProtocol`` and an ``UpstreamProtocol`` are wired to in-memory transports that record
what is written. One request is fed to the client side, the bytes it writes upstream are checked,
the backend's response is fed to the upstream side, and the bytes written to the client are
checked: the whole path a proxied keep-alive request takes through our code (parsing, routing,
the mesh chain of the benchmark route, metrics, pooling), minus the syscalls. The socket benchmark
(``bench_proxy.py``) gives the end-to-end figures; this one isolates the user-space part, which is
where Lightmesh differs from nginx (kernel time per request is about the same for every proxy),
and it is quiet enough to compare two versions of the code to within a few percent.

Scenarios: ``repeated`` (wrk's one identical request), ``varied`` (a unique ``X-Request-Id`` per
request, as traced traffic has), ``browser`` (a request head with 12 typical headers).

Usage: ``make bench BENCH=hotpath`` or ``.venv/bin/python bench/bench_hotpath.py [--requests N]
[--repeat R] [--scenarios a,b] [--no-save]``. Prints µs of CPU per request (best of R runs of N
requests each) and writes ``bench/results/hotpath.json``. ``BENCH_QUICK=1``: a short smoke run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
for _p in (str(REPO / "proxy_image"), str(REPO)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from lightmesh import config as c  # noqa: E402
from lightmesh.proxy import http as proxy_http  # noqa: E402
from lightmesh.proxy.metrics import ProxyMetrics  # noqa: E402
from lightmesh.proxy.routing import compile_http  # noqa: E402

BACKEND = ("127.0.0.1", 9001)
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 30 Nov 2026 01:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n" + b"x" * 100)
BROWSER_HEADERS = (b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/120.0\r\n"
                   b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
                   b"Accept-Language: en-GB,en;q=0.5\r\nAccept-Encoding: gzip, deflate, br\r\n"
                   b"Referer: http://whoami.whoami.traefik.mesh/\r\nCookie: session=0123456789abcdef\r\n"
                   b"Upgrade-Insecure-Requests: 1\r\nSec-Fetch-Dest: document\r\nSec-Fetch-Mode: navigate\r\n"
                   b"Sec-Fetch-Site: same-origin\r\nCache-Control: max-age=0\r\n")


class MemoryTransport(asyncio.Transport):
    """Records writes; every other transport call is a no-op."""

    def __init__(self, peer: tuple[str, int]) -> None:
        super().__init__()
        self.peer = peer
        self.written: list[bytes] = []
        self.closing = False

    def get_extra_info(self, name, default=None):
        return self.peer if name == "peername" else default

    def write(self, data) -> None:
        self.written.append(bytes(data))

    def writelines(self, lines) -> None:
        self.written.append(b"".join(lines))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def take(self) -> bytes:
        data = b"".join(self.written)
        self.written.clear()
        return data


def bench_config() -> c.ProxyConfig:
    """The socket benchmark's route: allow-list, rate limit set very high, retry."""
    http = c.HTTPConfig(
        entry_points=[c.EntryPoint(name="bench", address="127.0.0.1", port=8000)],
        routers=[c.Router(name="bench", entry_points=["bench"], service="backend",
                          middlewares=["acl", "ratelimit", "retry"])],
        services=[c.HTTPService(name="backend", servers=[c.HTTPServer(url="http://%s:%d" % BACKEND)])],
        middlewares=[
            c.AllowListMiddleware(name="acl", source_ranges=["127.0.0.0/8"]),
            c.RateLimitMiddleware(name="ratelimit", average=1_000_000_000, burst=1_000_000_000),
            c.RetryMiddleware(name="retry", attempts=1),
        ],
    )
    return c.make_config(1, http=http)


class Holder:
    http = None


def requests_for(scenario: str, n: int) -> list[bytes]:
    if scenario == "repeated":
        return [b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\n\r\n"] * n
    if scenario == "varied":
        return [b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nX-Request-Id: %d\r\n\r\n" % i for i in range(n)]
    if scenario == "browser":
        return [b"GET /index.html?page=%d HTTP/1.1\r\nHost: whoami.whoami.traefik.mesh\r\n%s\r\n"
                % (i, BROWSER_HEADERS) for i in range(n)]
    raise ValueError(scenario)


async def run(scenario: str, n: int, metrics: ProxyMetrics, plane) -> float:
    """Seconds of process CPU for ``n`` proxied requests on one client connection."""
    holder = Holder()
    holder.http = plane
    options = proxy_http.HTTPOptions()
    client = proxy_http.ClientProtocol(holder, "bench", options, metrics)
    client_t = MemoryTransport(("127.0.0.1", 40000))
    client.connection_made(client_t)
    server = plane.services["backend"].servers[0]
    upstream = proxy_http.UpstreamProtocol(server)
    upstream_t = MemoryTransport(BACKEND)
    upstream.connection_made(upstream_t)
    upstream.idle_since = time.monotonic()
    server.idle.append(upstream)  # pooled: no connect in the measured loop
    reqs = requests_for(scenario, n)
    # one checked round trip first: the path is the real one
    client.data_received(reqs[0])
    sent = upstream_t.take()
    assert sent.startswith(b"GET /") and b"X-Forwarded-For: 127.0.0.1\r\n" in sent, (sent, client_t.written)
    upstream.data_received(RESPONSE)
    got = client_t.take()
    assert got == RESPONSE.replace(b"Connection: keep-alive\r\n", b""), got
    feed_client = client.data_received
    feed_upstream = upstream.data_received
    up_written = upstream_t.written
    cl_written = client_t.written
    t0 = time.process_time()
    for req in reqs:
        feed_client(req)
        feed_upstream(RESPONSE)
        up_written.clear()
        cl_written.clear()
    elapsed = time.process_time() - t0
    client.connection_lost(None)
    return elapsed


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    ap.add_argument("--requests", type=int, default=5_000 if quick else 50_000)
    ap.add_argument("--repeat", type=int, default=2 if quick else 7)
    ap.add_argument("--scenarios", default="repeated,varied,browser")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args(argv or [])
    if not 1 <= args.requests <= 10_000_000 or not 1 <= args.repeat <= 100:
        ap.error("--requests must be 1-10000000 and --repeat 1-100")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    metrics = ProxyMetrics()
    plane = compile_http(bench_config(), metrics=metrics)
    results = {}

    async def go() -> None:
        for scenario in args.scenarios.split(","):
            best = min([await run(scenario, args.requests, metrics, plane) for _ in range(args.repeat)])
            results[scenario] = round(best / args.requests * 1e6, 3)
            print(f"{scenario:10s} {results[scenario]:7.3f} µs CPU per request (best of {args.repeat} × {args.requests})")

    asyncio.run(go())
    if not args.no_save:
        out = HERE / "results" / "hotpath.json"
        out.write_text(json.dumps({"time": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                   "commit": _git("rev-parse", "--short", "HEAD"),
                                   "proxy_code_dirty": bool(_git("status", "--porcelain", "proxy_image/lightmesh/proxy")),
                                   "python": sys.version.split()[0], "requests": args.requests,
                                   "repeat": args.repeat, "us_per_request": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
