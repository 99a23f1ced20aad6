"""``python -m lightmesh proxy`` as a process: supervisor + 2 workers serving HTTP and TCP from a config
file or a (stub) controller, admin endpoints, file reload, worker restart, drain on SIGTERM → exit 0.

Each proxy runs in its own session and its whole process group is killed in ``finally``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import types
import urllib.error
import urllib.request

import pytest
import uvloop

from conftest import lightmesh_cmd, lightmesh_env
from lightmesh import wire
from lightmesh.config import HTTPConfig, L4Server, TCPRoute, make_config
from proxy.backends import Backend, RawClient, request
from proxy.test_source import StubController


def run(coro, timeout: float = 90.0):
    return uvloop.run(asyncio.wait_for(coro, timeout))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make(version: int, http_port: int, backend_url: str, tcp_port: int, echo_port: int):
    http = HTTPConfig.model_validate({
        "entry_points": [{"name": "web", "address": "127.0.0.1", "port": http_port}],
        "services": [{"name": "svc", "servers": [{"url": backend_url}]}],
        "routers": [{"name": "r", "entry_points": ["web"], "service": "svc"}]})
    return make_config(version, http, [TCPRoute(name="echo", address="127.0.0.1", port=tcp_port,
                                                servers=[L4Server(address="127.0.0.1", port=echo_port)])])


def rate_limited(version: int, http_port: int, backend_url: str, average: int, burst: int,
                 period_seconds: int = 1, limited: bool = True) -> str:
    """A config (JSON) with entry point ``web`` on ``http_port`` routing to ``backend_url``, through a
    rate limit (``limited``) of ``average`` per ``period_seconds`` with ``burst``."""
    http = HTTPConfig.model_validate({
        "entry_points": [{"name": "web", "address": "127.0.0.1", "port": http_port}],
        "services": [{"name": "svc", "servers": [{"url": backend_url}]}],
        "middlewares": [{"type": "rate_limit", "name": "rl", "average": average, "burst": burst,
                         "period_seconds": period_seconds}] if limited else [],
        "routers": [{"name": "r", "entry_points": ["web"], "service": "svc",
                     "middlewares": ["rl"] if limited else []}]})
    return make_config(version, http).to_json()


def http_get(url: str) -> tuple[int | None, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None, b""


async def get(url: str) -> tuple[int | None, bytes]:
    return await asyncio.to_thread(http_get, url)


async def rawdata(admin: str) -> dict:
    status, body = await get(admin + "/api/rawdata")
    return json.loads(body) if status == 200 else {}


async def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def tcp_echo():
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def tcp_ping(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.readexactly(4), 5)
    finally:
        writer.close()


@contextlib.contextmanager
def proxy_process(*args: str, log_path):
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(lightmesh_cmd("proxy", *args), stdout=log, stderr=subprocess.STDOUT,
                                env=lightmesh_env(), start_new_session=True)
    try:
        yield proc
    except BaseException:
        print(f"--- proxy log ({log_path}) ---\n{open(log_path, errors='replace').read()[-6000:]}")
        raise
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def workers_on(data: dict, version: int) -> bool:
    workers = data.get("workers") or []
    return bool(workers) and all(w["alive"] and w["applied_version"] == version for w in workers)


def test_file_config_two_workers_end_to_end(tmp_path):
    async def main():
        echo, eport = await tcp_echo()
        hp, tp, tp2, ap = free_port(), free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        async with Backend("A") as backend:
            cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
            with proxy_process("--config", str(cfg_path), "--workers", "2", "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", "test-proxy", "--log-format", "json",
                               "--drain-timeout", "5", log_path=tmp_path / "proxy.log") as proc:
                try:
                    await wait_ready(admin, proc, "test-proxy")
                    assert (await get(admin + "/live"))[0] == 200
                    data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "workers on v1")
                    assert data["config"]["hash"] == data["hash"] == make(1, hp, backend.url, tp, eport).hash
                    assert len({w["pid"] for w in data["workers"]}) == 2 and data["name"] == "test-proxy"
                    assert data["workers"][0]["listeners"] == sorted([f"http 127.0.0.1:{hp}", f"tcp 127.0.0.1:{tp}"])

                    for _ in range(20):
                        assert (await request(hp, path="/x")).status == 200
                    assert await tcp_ping(tp) == b"ping"
                    status, body = await get(admin + "/metrics")
                    text = body.decode()
                    assert status == 200
                    assert 'lightmesh_proxy_requests_total{service="svc",code="200",method="GET"} 20' in text
                    assert 'lightmesh_proxy_l4_connections_total{route="echo",protocol="tcp"} 1' in text
                    assert "lightmesh_proxy_config_version 1" in text
                    assert 'lightmesh_proxy_config_reloads_total{result="applied"} 1' in text

                    # reload: the TCP route moves; both workers follow
                    cfg_path.write_text(make(2, hp, backend.url, tp2, eport).to_json())
                    await until(lambda: _when(rawdata(admin), lambda d: d["version"] == 2 and workers_on(d, 2)),
                                10, "workers on v2")
                    assert await tcp_ping(tp2) == b"ping"

                    # invalid file: refused, reported, v2 keeps serving
                    cfg_path.write_text('{"version": 3, "tcp": [{"name": "x", "port": 0}]}')
                    data = await until(lambda: _when(rawdata(admin), lambda d: d["last_error"]), 10, "last_error")
                    assert "tcp['x'].port" in data["last_error"] and data["version"] == 2
                    assert (await request(hp)).status == 200
                    assert 'config_reloads_total{result="failed"} 1' in (await get(admin + "/metrics"))[1].decode()
                    # the bad edit reverted: the file holds the config in force again, the error goes
                    cfg_path.write_text(make(2, hp, backend.url, tp2, eport).to_json())
                    data = await until(lambda: _when(rawdata(admin), lambda d: d["last_error"] is None), 10,
                                       "error cleared")
                    assert data["version"] == 2

                    # a dead worker is restarted and gets the current config
                    victim = data["workers"][0]["pid"]
                    os.kill(victim, signal.SIGKILL)
                    data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 2) and victim not in
                                                     [w["pid"] for w in d["workers"]]), 15, "worker restarted")
                    assert data["workers"][0]["restarts"] == 1
                    for _ in range(10):
                        assert (await request(hp)).status == 200
                    # the dead worker's counts stay in the totals: counters never go back
                    text = (await get(admin + "/metrics"))[1].decode()
                    assert 'lightmesh_proxy_requests_total{service="svc",code="200",method="GET"} 31' in text
                    # reloads are counted once per config by the supervisor, the dead worker's not added
                    assert 'lightmesh_proxy_config_reloads_total{result="applied"} 2' in text

                    # SIGTERM (to the supervisor only, as the kubelet does): a slow request in flight
                    # finishes, then exit 0 promptly
                    slow = await RawClient.connect(hp)
                    await slow.send(b"GET /slow?ms=700 HTTP/1.1\r\nHost: svc\r\n\r\n")
                    await asyncio.sleep(0.2)
                    started = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    resp = await slow.response(5)
                    assert resp.status == 200
                    await slow.close()
                    code = await asyncio.to_thread(proc.wait, 10)
                    assert code == 0 and time.monotonic() - started < 8
                finally:
                    echo.close()
        log = (tmp_path / "proxy.log").read_text()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        assert lines and {"time", "level", "logger", "pid", "message"} <= set(lines[0])
        assert any("refused" in line["message"] for line in lines)

    run(main())


def test_a_version_0_config_is_as_ready_as_any_other(tmp_path):
    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        async with Backend("A") as backend:
            cfg_path.write_text(make(0, hp, backend.url, tp, eport).to_json())
            with proxy_process("--config", str(cfg_path), "--workers", "1", "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", "v0-proxy", log_path=tmp_path / "proxy.log") as proc:
                try:
                    data = await wait_ready(admin, proc, "v0-proxy")
                    assert data["version"] == 0 and (await request(hp)).status == 200
                finally:
                    echo.close()

    run(main())


def test_a_rate_limit_holds_per_client_ip_across_workers(tmp_path):
    # Each worker has its own buckets; connections of one client IP must all reach the same worker,
    # or two workers would let twice the burst through.
    async def main():
        hp, ap = free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        async with Backend("A") as backend:
            cfg_path.write_text(rate_limited(1, hp, backend.url, average=1, burst=3, period_seconds=60))
            with proxy_process("--config", str(cfg_path), "--workers", "2", "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", "rl-proxy", log_path=tmp_path / "proxy.log") as proc:
                await wait_ready(admin, proc, "rl-proxy")
                await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "both workers on v1")
                for client_ip in ("127.0.31.1", "127.0.31.2"):
                    statuses = []
                    for _ in range(10):  # a fresh connection each: the kernel would spread them by port
                        conn = await RawClient.connect(hp, local_host=client_ip)
                        await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
                        statuses.append((await conn.response()).status)
                        await conn.close()
                    assert statuses == [200] * 3 + [429] * 7, (client_ip, statuses)

    run(main())


def test_a_rate_limit_added_under_open_keep_alive_connections_holds_across_workers(tmp_path):
    # Steering by client IP places new connections only: keep-alive connections opened before the
    # rate limit came stayed on whichever worker the kernel's hash chose, each with its own
    # buckets, and one client got N times its limit for as long as they lasted.
    async def main():
        hp, ap = free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        async with Backend("A") as backend:
            def config(version: int, limited: bool) -> str:
                return rate_limited(version, hp, backend.url, average=1, burst=5, period_seconds=60, limited=limited)

            cfg_path.write_text(config(1, False))
            with proxy_process("--config", str(cfg_path), "--workers", "2", "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", "rl-keep", log_path=tmp_path / "proxy.log") as proc:
                await wait_ready(admin, proc, "rl-keep")
                await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "both workers on v1")
                conns = [await RawClient.connect(hp, local_host="127.0.31.9") for _ in range(12)]
                for conn in conns:  # keep-alive, spread over both workers by the kernel's hash
                    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                    assert (await conn.response()).status == 200
                cfg_path.write_text(config(2, True))
                await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 2)), 10, "both workers on v2")
                statuses = []
                for conn in conns:  # one more request per client connection, reconnecting if it was ended
                    try:
                        await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                        statuses.append((await conn.response(3)).status)
                    except (ConnectionError, asyncio.IncompleteReadError, AssertionError, OSError):
                        await conn.close()
                        conn = await RawClient.connect(hp, local_host="127.0.31.9")
                        await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                        statuses.append((await conn.response(3)).status)
                    await conn.close()
                assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses

    run(main())


def test_after_a_worker_restart_keep_alive_connections_on_rate_limited_ports_reconnect(tmp_path):
    # A restart reorders the port's reuseport group, so clients map to other workers; their open
    # keep-alive connections stayed where they were, a second bucket each for as long as they lived.
    async def main():
        hp, ap = free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        async with Backend("A") as backend:
            cfg_path.write_text(rate_limited(1, hp, backend.url, average=100, burst=100))
            with proxy_process("--config", str(cfg_path), "--workers", "2", "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", "rejoin", log_path=tmp_path / "proxy.log") as proc:
                data = await wait_ready(admin, proc, "rejoin")
                await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "both workers on v1")
                conns = []
                for ip in ("127.0.31.20", "127.0.31.21"):  # steered by IP: one on each worker
                    conn = await RawClient.connect(hp, local_host=ip)
                    await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                    assert (await conn.response()).status == 200
                    conns.append(conn)
                victim = data["workers"][0]["pid"]
                os.kill(victim, signal.SIGKILL)

                async def back():
                    workers = (await rawdata(admin)).get("workers") or []
                    return len(workers) == 2 and all(w["alive"] and w["applied_version"] == 1 for w in workers) \
                        and victim not in [w["pid"] for w in workers]
                await until(back, 15, "the killed worker restarted")
                for conn in conns:  # the killed worker's connection died with it; the other was recycled
                    assert await conn.read_all(5) == b""
                    await conn.close()
                assert b"a worker restarted: 1 client connections" in (tmp_path / "proxy.log").read_bytes()

    run(main())


def test_file_reloads_under_load_fail_no_request(tmp_path):
    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        async with Backend("A") as a, Backend("B") as b:
            cfg_path.write_text(make(1, hp, a.url, tp, eport).to_json())
            with proxy_process("--config", str(cfg_path), "--workers", "2", "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", "load-proxy", "--log-level", "warning",
                               log_path=tmp_path / "proxy.log") as proc:
                try:
                    await wait_ready(admin, proc, "load-proxy")
                    await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "workers on v1")
                    stop = asyncio.Event()
                    statuses: list[int] = []
                    backends: set[str] = set()

                    async def client(n: int) -> None:
                        conn = await RawClient.connect(hp)
                        try:
                            while not stop.is_set():
                                await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                                resp = await conn.response(5)
                                statuses.append(resp.status)
                                backends.add(resp.header("X-Backend") or "")
                                if len(statuses) % 5 == n:  # new connections land on either worker
                                    await conn.close()
                                    conn = await RawClient.connect(hp)
                        finally:
                            await conn.close()

                    clients = [asyncio.create_task(client(n)) for n in range(4)]
                    try:
                        for version in range(2, 10):
                            await asyncio.sleep(0.25)
                            cfg_path.write_text(make(version, hp, (a, b)[version % 2].url, tp, eport).to_json())
                        await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 9)), 10, "workers on v9")
                        await asyncio.sleep(0.2)
                    finally:
                        stop.set()
                        outcomes = await asyncio.gather(*clients, return_exceptions=True)
                    assert [o for o in outcomes if o is not None] == []
                    assert len(statuses) > 50 and set(statuses) == {200}
                    assert backends == {"A", "B"}
                finally:
                    echo.close()

    run(main())


def test_controller_source_and_group_sigterm(tmp_path):
    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        stub = await StubController(hold=1.0).start()
        try:
            async with Backend("A") as backend:
                with proxy_process("--controller", stub.url, "--workers", "2", "--admin-address", "127.0.0.1",
                                   "--admin-port", str(ap), "--name", "node-1-proxy",
                                   log_path=tmp_path / "proxy.log") as proc:
                    # the controller has nothing yet (503): alive but not ready
                    await until(lambda: _when(rawdata(admin), lambda d: d.get("name") == "node-1-proxy"), 30, "admin")
                    assert (await get(admin + "/live"))[0] == 200
                    await until(lambda: _when(asyncio.sleep(0, len(stub.requests)), bool), 10, "first poll")
                    assert (await get(admin + "/ping"))[0] == 503
                    stub.publish(make(1, hp, backend.url, tp, eport))
                    await wait_ready(admin, proc, "node-1-proxy")
                    assert (await request(hp)).status == 200
                    assert await tcp_ping(tp) == b"ping"
                    # the controller hears which version the workers applied
                    await until(lambda: _when(asyncio.sleep(0, stub.requests),
                                              lambda rs: rs[-1].get(wire.HEADER_APPLIED_VERSION) == "1"),
                                10, "applied version announced")
                    assert stub.requests[-1][wire.HEADER_PROXY_NAME] == "node-1-proxy"
                    # controller down: the proxy keeps serving its config
                    await stub.stop()
                    await until(lambda: _when(rawdata(admin), lambda d: d["last_error"]), 15, "error recorded")
                    assert (await request(hp)).status == 200
                    assert (await get(admin + "/ping"))[0] == 200
                    # back with the same config: the error clears, nothing is re-applied
                    stub = await StubController(hold=1.0).start(stub.port)
                    stub.publish(make(1, hp, backend.url, tp, eport))
                    data = await until(lambda: _when(rawdata(admin), lambda d: d["source"]["connected"]), 15,
                                       "reconnected")
                    assert data["last_error"] is None
                    assert all(w["applied_version"] == 1 for w in data["workers"])
                    metrics = (await get(admin + "/metrics"))[1].decode()
                    assert 'lightmesh_proxy_config_reloads_total{result="applied"} 1' in metrics
                    os.killpg(proc.pid, signal.SIGTERM)  # the whole group, like Ctrl-C or a test harness
                    assert await asyncio.to_thread(proc.wait, 15) == 0
        finally:
            echo.close()
            with contextlib.suppress(Exception):
                await stub.stop()

    run(main())


def test_tracing_and_access_log(tmp_path):
    from observability.otlp_receiver import OTLPReceiver

    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        with OTLPReceiver() as receiver:
            async with Backend("A") as backend:
                cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
                with proxy_process("--config", str(cfg_path), "--workers", "1", "--admin-address", "127.0.0.1",
                                   "--admin-port", str(ap), "--otlp-endpoint", receiver.endpoint,
                                   "--trace-sample-ratio", "1", "--access-log", "--log-level", "warning",
                                   "--name", "traced-proxy", log_path=tmp_path / "proxy.log") as proc:
                    try:
                        await wait_ready(admin, proc, "traced-proxy")
                        parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
                        resp = await request(hp, path="/traced", headers={"traceparent": parent})
                        assert resp.status == 200
                        sent = backend.requests[-1].header("traceparent")
                        assert sent and sent.split("-")[1] == "0af7651916cd43dd8448eb211c80319c"
                        proc.send_signal(signal.SIGTERM)  # shutdown flushes the batch exporter
                        assert await asyncio.to_thread(proc.wait, 15) == 0
                    finally:
                        echo.close()
            spans = await asyncio.to_thread(receiver.wait_for, lambda s: s["attributes"].get("service") == "svc", 10)
        assert spans and spans[0]["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
        assert spans[0]["parent_span_id"] == "b7ad6b7169203331"
        # access log despite --log-level warning: one bare JSON object per line on stdout
        records = [json.loads(line) for line in (tmp_path / "proxy.log").read_text().splitlines()
                   if line.startswith("{")]
        traced = [r for r in records if r.get("path") == "/traced"]
        assert len(traced) == 1 and traced[0]["status"] == 200 and traced[0]["service"] == "svc"

    run(main())


@pytest.mark.parametrize("args, message", [
    ((), "one of the arguments --controller --config is required"),
    (("--controller", "http://x", "--config", "f"), "not allowed with argument"),
    (("--config", "f", "--workers", "0"), "argument --workers: must be a whole number from 1 to 256, got '0'"),
    (("--config", "f", "--workers", "abc"), "argument --workers: must be a whole number from 1 to 256, got 'abc'"),
    (("--config", "f", "--otlp-endpoint", "collector:4318"), "--otlp-endpoint: must be an http"),
    (("--config", "f", "--trace-sample-ratio", "2"), "--trace-sample-ratio: must be in [0, 1]"),
    (("--config", "f", "--trace-sample-ratio", "abc"), "--trace-sample-ratio: must be a number in [0, 1], got 'abc'"),
])
def test_bad_flags_exit_2(args, message):
    result = subprocess.run(lightmesh_cmd("proxy", *args), capture_output=True, text=True, env=lightmesh_env(),
                            timeout=60)
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.parametrize("flag, value, message", [
    ("--workers", "257", "must be a whole number from 1 to 256, got '257'"),
    ("--workers", "1.5", "must be a whole number from 1 to 256, got '1.5'"),
    ("--workers", "1_0", "must be a whole number from 1 to 256, got '1_0'"),
    ("--workers", "9" * 5000, "must be a whole number from 1 to 256, got '" + "9" * 40 + "...'"),
    ("--max-header-bytes", "abc", "must be a whole number >= 1, got 'abc'"),
    ("--max-header-bytes", "0", "must be a whole number >= 1, got '0'"),
    ("--max-connections", "-1", "must be a whole number >= 0, got '-1'"),
    ("--max-connections", "lots", "must be a whole number >= 0, got 'lots'"),
    ("--admin-port", "http", "must be a port number from 0 to 65535, got 'http'"),
    ("--admin-port", "70000", "must be a port number from 0 to 65535, got '70000'"),
    ("--drain-timeout", "abc", "must be seconds in (0, 86400], got 'abc'"),
    ("--header-timeout", "nan", "must be seconds in (0, 86400], got 'nan'"),
    ("--tunnel-idle-timeout", "-1", "must be seconds in (0, 86400], got '-1'"),
    ("--shutdown-delay", "61", "must be seconds from 0 to 60, got '61'"),
    ("--shutdown-delay", "-1", "must be seconds from 0 to 60, got '-1'"),
    ("--shutdown-delay", "inf", "must be seconds from 0 to 60, got 'inf'"),
])
def test_number_flags_name_the_flag_and_the_range(flag, value, message, capsys):
    # argparse names the type= function of a flag whose function raised ValueError ("invalid
    # _positive_int value: 'abc'"); every number flag says what it wants instead.
    import argparse

    from lightmesh.proxy import main as proxy_main
    parser = argparse.ArgumentParser(prog="lightmesh proxy")
    proxy_main.configure(parser)
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["--config", "f", f"{flag}={value}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and f"argument {flag}: {message}" in err, err
    assert "invalid" not in err and "_int" not in err


def test_the_workers_flag_takes_1_to_256_and_its_default_is_capped(monkeypatch):
    import argparse

    from lightmesh.proxy import main as proxy_main
    for count, expected in ((512, 256), (8, 8), (None, 1)):
        monkeypatch.setattr(proxy_main.os, "cpu_count", lambda count=count: count)
        parser = argparse.ArgumentParser()
        proxy_main.configure(parser)
        assert parser.parse_args(["--config", "f"]).workers == expected
    assert parser.parse_args(["--config", "f", "--workers", "256"]).workers == 256
    assert parser.parse_args(["--config", "f", "--workers", " 3 "]).workers == 3


def test_busy_admin_port_exits_1(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(lightmesh_cmd("proxy", "--config", str(tmp_path / "none.json"), "--workers", "1",
                                              "--admin-address", "127.0.0.1", "--admin-port", str(port)),
                                capture_output=True, text=True, env=lightmesh_env(), timeout=60,
                                start_new_session=True)
    assert result.returncode == 1 and f"admin port 127.0.0.1:{port}" in result.stderr


async def _ping_ok(admin: str) -> bool:
    return (await get(admin + "/ping"))[0] == 200


async def wait_ready(admin: str, proc: subprocess.Popen, name: str, timeout: float = 30.0) -> dict:
    """/ping 200 from *this* proxy (ports are shared with other test runs on the machine: the
    rawdata name proves whose admin port answered)."""
    async def check():
        assert proc.poll() is None, f"the proxy exited with code {proc.returncode}"
        if not await _ping_ok(admin):
            return None
        data = await rawdata(admin)
        assert data.get("name") == name, f"another process answers on {admin}: {data.get('name')!r}"
        return data
    return await until(check, timeout, "/ping 200")


async def _status_is(url: str, status: int) -> bool:
    return (await get(url))[0] == status


async def _when(awaitable, predicate):
    value = await awaitable
    return value if predicate(value) else None


# ------------------------------------------------------------------------------ the image (no Docker engine here)


def parse_dockerfile(text: str) -> list[list[tuple[str, str]]]:
    """Stages → [(INSTRUCTION, arguments)], continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    stages: list[list[tuple[str, str]]] = []
    preamble: list[tuple[str, str]] = []
    for entry in logical:
        instruction, _, args = entry.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        (stages[-1] if stages else preamble).append((instruction, args.strip()))
    return [preamble, *stages]


def test_dockerfile_structure(repo_root):
    import re
    import tomllib

    from lightmesh import cli

    text = (repo_root / "proxy_image" / "Dockerfile").read_text()
    preamble, *stages = parse_dockerfile(text)
    args = dict(a.split("=", 1) for i, a in preamble if i == "ARG" and "=" in a)
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", args["PYTHON_IMAGE"])
    assert len(stages) >= 2, "multi-stage: a builder and the runtime"
    builder, final = stages[0], stages[-1]
    assert builder[0] == ("FROM", "${PYTHON_IMAGE} AS builder")
    assert final[0][1].startswith("${PYTHON_IMAGE}"), "the final stage starts from the slim base, not the builder"
    assert any(i == "RUN" and "pip wheel" in a for i, a in builder)

    final_runs = " ".join(a for i, a in final if i == "RUN")
    for tool in ("build-essential", "gcc", "g++", "clang", "make ", "-dev ", "apt-get install"):
        assert tool not in final_runs, f"final stage installs {tool.strip()}"
    assert "--no-index" in final_runs  # only the builder's wheels, nothing fetched or compiled here
    assert "--mount=type=bind,from=builder" in final_runs
    assert not any(i == "COPY" and "--from=builder" in a and "/wheels" in a for i, a in final)

    users = [a for i, a in final if i == "USER"]
    assert users, "the final stage sets a USER"
    uid = users[-1].split(":")[0]
    install_src = (repo_root / "mesh_components" / "install.py").read_text()
    assert uid.isdigit() and int(uid) != 0
    assert int(uid) == int(re.search(r"^RUN_AS_USER = (\d+)", install_src, re.M).group(1))

    entrypoint = [json.loads(a) for i, a in final if i == "ENTRYPOINT"]
    assert entrypoint == [["lightmesh"]]
    cmd = [json.loads(a) for i, a in final if i == "CMD"]
    assert cmd and cmd[-1][0] in cli.COMMANDS
    assert {"proxy", "controller"} <= set(cli.COMMANDS)
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["lightmesh"] == "lightmesh.cli:main"

    env = " ".join(a for i, a in final if i == "ENV")
    assert "MALLOC_TRIM_THRESHOLD_=268435456" in env and "MALLOC_TOP_PAD_=67108864" in env
    for i, a in builder:
        if i == "COPY":
            *sources, _dest = a.split()
            for source in sources:
                assert (repo_root / source).exists(), f"COPY {source}: not in the build context (repo root)"


def test_worker_options_from_flags():
    import argparse

    from lightmesh.proxy import main as proxy_main

    parser = argparse.ArgumentParser()
    proxy_main.configure(parser)
    default = proxy_main.worker_options(parser.parse_args(["--config", "f"]))
    assert default["max_connections"] == proxy_main.DEFAULT_MAX_CONNECTIONS and "max_connections" not in default["http"]
    assert default["otlp_endpoint"] is None and default["http"] == {"access_log": False}
    assert default["access_log_queue"] == proxy_main.ACCESS_LOG_QUEUE_LINES  # not an HTTPOptions field
    assert proxy_main.worker_options(parser.parse_args(["--config", "f", "--access-log-queue", "16"]))[
        "access_log_queue"] == 16
    unlimited = proxy_main.worker_options(parser.parse_args(["--config", "f", "--max-connections", "0"]))
    assert unlimited["max_connections"] == 0 and unlimited["http"]["max_connections"] >= 1 << 62
    tuned = proxy_main.worker_options(parser.parse_args(
        ["--config", "f", "--header-timeout", "3", "--idle-timeout", "60", "--max-header-bytes", "8192",
         "--max-connections", "50", "--access-log", "--body-timeout", "15", "--response-timeout", "2.5"]))
    assert tuned["http"] == {"access_log": True, "max_connections": 50, "header_timeout": 3.0,
                             "idle_timeout": 60.0, "max_header_bytes": 8192, "body_timeout": 15.0,
                             "response_timeout": 2.5}
    options = proxy_main._build_runtime_options(tuned)
    assert options.max_connections == 50
    assert (options.http.header_timeout, options.http.idle_timeout, options.http.max_header_bytes,
            options.http.max_connections, options.http.access_log) == (3.0, 60.0, 8192, 50, True)
    assert (options.http.body_timeout, options.http.response_timeout) == (15.0, 2.5)
    off = proxy_main.worker_options(parser.parse_args(["--config", "f", "--response-timeout", "0",
                                                        "--tunnel-idle-timeout", "300"]))
    assert off["http"]["response_timeout"] == 0.0 and off["http"]["tunnel_idle_timeout"] == 300.0
    defaults = proxy_main._build_runtime_options(default).http
    assert (defaults.body_timeout, defaults.response_timeout, defaults.tunnel_idle_timeout) == (60.0, 0.0, 0.0)
    for bad in (["--body-timeout", "0"], ["--body-timeout", "-1"], ["--response-timeout", "x"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--config", "f", *bad])


@contextlib.asynccontextmanager
async def serving_proxy(tmp_path, name: str, *flags: str, workers: int = 1):
    """``lightmesh proxy`` (``--workers``, ``flags``) on the ``make`` config (HTTP to a backend, TCP
    to an echo server), ready; yields a namespace with ``proc``, ``http`` and ``tcp`` (ports),
    ``admin`` (URL), ``log`` (path) and ``pids`` (the workers')."""
    echo, eport = await tcp_echo()
    hp, tp, ap = free_port(), free_port(), free_port()
    admin = f"http://127.0.0.1:{ap}"
    cfg_path, log = tmp_path / f"{name}.json", tmp_path / f"{name}.log"
    try:
        async with Backend("A") as backend:
            cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
            with proxy_process("--config", str(cfg_path), "--workers", str(workers), "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", name, *flags, log_path=log) as proc:
                data = await wait_ready(admin, proc, name)
                yield types.SimpleNamespace(proc=proc, http=hp, tcp=tp, admin=admin, log=log,
                                            pids=[w["pid"] for w in data["workers"]])
    finally:
        echo.close()


def test_sighup_drains_and_exits_0_like_sigterm(tmp_path):
    # A closed terminal sends SIGHUP to the whole group: the supervisor used to die at once (129)
    # and leave its workers to notice; now it drains them like SIGTERM and exits 0.
    async def main():
        async with serving_proxy(tmp_path, "hup", workers=2) as p:
            assert (await request(p.http)).status == 200
            os.killpg(p.proc.pid, signal.SIGHUP)
            assert await asyncio.to_thread(p.proc.wait, 15) == 0
            for pid in p.pids:  # the workers went with it
                await until(lambda pid=pid: asyncio.sleep(0, not os.path.exists(f"/proc/{pid}")), 10,
                            f"worker {pid} gone")

    run(main())


def test_sigterm_with_a_shutdown_delay_serves_on_not_ready_then_drains(tmp_path):
    # In a cluster the pod stays in the shadow Services' endpoints for a moment after SIGTERM
    # (kube-proxy): the proxy used to stop accepting at once, so those clients were refused.
    async def main():
        async with serving_proxy(tmp_path, "delay", "--shutdown-delay", "2") as p:
            kept = await RawClient.connect(p.http)  # a keep-alive connection from before
            started = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)  # the supervisor alone, as the kubelet signals PID 1
            await until(lambda: _status_is(p.admin + "/ping", 503), 1.5, "/ping 503 after SIGTERM")
            # new connections are still accepted and served, HTTP and TCP, and old ones too
            assert (await request(p.http)).status == 200
            assert await tcp_ping(p.tcp) == b"ping"
            await kept.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await kept.response(5)).status == 200
            assert time.monotonic() - started < 1.8  # all of that within the delay
            await kept.close()
            assert await asyncio.to_thread(p.proc.wait, 20) == 0
            assert time.monotonic() - started >= 1.9  # the delay was served in full
            assert b"serving on for 2s before draining" in p.log.read_bytes()
        # a second signal ends the delay at once
        async with serving_proxy(tmp_path, "hurry", "--shutdown-delay", "60") as p:
            p.proc.send_signal(signal.SIGTERM)
            await until(lambda: _status_is(p.admin + "/ping", 503), 1.5, "/ping 503 after SIGTERM")
            assert (await request(p.http)).status == 200
            started = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(p.proc.wait, 20) == 0
            assert time.monotonic() - started < 10

    run(main())


def test_the_shutdown_delay_holds_for_group_signals_and_replaces_a_worker_that_dies_in_it(tmp_path):
    # A terminal's Ctrl-C, systemd or `kill -TERM -PGID` signal every process of the group: the
    # workers used to drain at once (refusing connections for the whole delay), and a worker that
    # died during the delay was neither restarted nor logged.
    async def main():
        for sig in (signal.SIGINT, signal.SIGTERM):
            async with serving_proxy(tmp_path, sig.name, "--shutdown-delay", "3", workers=2) as p:
                started = time.monotonic()
                os.killpg(p.proc.pid, sig)
                await until(lambda: _status_is(p.admin + "/ping", 503), 1.5, "/ping 503 after the signal")
                for _ in range(6):  # both workers still accept (SO_REUSEPORT spreads new connections)
                    assert (await request(p.http)).status == 200
                assert await tcp_ping(p.tcp) == b"ping"
                assert time.monotonic() - started < 2.5
                assert await asyncio.to_thread(p.proc.wait, 30) == 0
                assert time.monotonic() - started >= 2.9
        # a worker killed during the delay is logged and replaced: the proxy still serves
        async with serving_proxy(tmp_path, "crash", "--shutdown-delay", "5") as p:
            (pid,) = p.pids
            p.proc.send_signal(signal.SIGTERM)
            await until(lambda: _status_is(p.admin + "/ping", 503), 1.5, "/ping 503 after SIGTERM")
            os.kill(pid, signal.SIGKILL)

            async def replaced():
                workers = (await rawdata(p.admin)).get("workers") or []
                return any(w["alive"] and w["pid"] != pid and w["applied_version"] == 1 for w in workers)
            await until(replaced, 4, "the killed worker replaced during the delay")
            assert (await request(p.http)).status == 200
            assert f"(pid {pid}) exited with code -9; restarting it".encode() in p.log.read_bytes()
            assert await asyncio.to_thread(p.proc.wait, 30) == 0

    run(main())


def test_a_second_signal_ends_the_delay_of_workers_that_got_the_groups_sigterm(tmp_path):
    # After a SIGTERM to the whole group each worker served out its own delay and ignored the
    # supervisor's drain: a second signal to the supervisor ended in a SIGKILL of the workers.
    async def main():
        async with serving_proxy(tmp_path, "twice", "--shutdown-delay", "30", "--drain-timeout", "2",
                                 workers=2) as p:
            os.killpg(p.proc.pid, signal.SIGTERM)
            await until(lambda: _status_is(p.admin + "/ping", 503), 1.5, "/ping 503 after the signal")
            assert (await request(p.http)).status == 200
            started = time.monotonic()
            p.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(p.proc.wait, 30) == 0
            assert time.monotonic() - started < 5
            assert b"did not stop in time" not in p.log.read_bytes()

    run(main())


def test_a_listener_error_clears_once_the_port_is_free_again(tmp_path):
    # /api/rawdata kept "cannot listen on ... Address already in use" after the retried listener
    # had opened: the error described the past.
    async def main():
        hp, ap = free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        squatter = socket.socket()  # holds the port without SO_REUSEPORT: the proxy cannot share it
        squatter.bind(("127.0.0.1", hp))
        squatter.listen(1)
        cfg_path = tmp_path / "proxy.json"
        async with Backend("A") as backend:
            cfg_path.write_text(make(1, hp, backend.url, free_port(), 9).to_json())
            with proxy_process("--config", str(cfg_path), "--workers", "1", "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), log_path=tmp_path / "proxy.log"):
                data = await until(lambda: _when(rawdata(admin), lambda d: d.get("last_error")), 20, "busy port")
                assert "Address already in use" in data["last_error"]
                squatter.close()
                data = await until(lambda: _when(rawdata(admin), lambda d: d.get("last_error") is None), 20,
                                   "error cleared")
                assert f"http 127.0.0.1:{hp}" in data["workers"][0]["listeners"]
                assert (await request(hp)).status == 200

    run(main())


def _soft_nofile(pid: int) -> int:
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


def test_the_proxy_raises_its_open_files_limit_to_the_hard_limit(tmp_path):
    # a soft limit of 1,024 (the usual default) against --max-connections 10,000 and up to six
    # descriptors per spliced TCP relay: hundreds of relays were reset at EMFILE
    import resource

    def limited():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096))

    async def main():
        hp, tp, ap = free_port(), free_port(), free_port()
        cfg_path = tmp_path / "proxy.json"
        cfg_path.write_text(make(1, hp, "http://127.0.0.1:9", tp, 9).to_json())
        with open(tmp_path / "proxy.log", "wb") as log:
            proc = subprocess.Popen(lightmesh_cmd("proxy", "--config", str(cfg_path), "--workers", "1",
                                                  "--admin-address", "127.0.0.1", "--admin-port", str(ap),
                                                  "--name", "nofile-proxy"),
                                    stdout=log, stderr=subprocess.STDOUT, env=lightmesh_env(),
                                    start_new_session=True, preexec_fn=limited)
        try:
            data = await wait_ready(f"http://127.0.0.1:{ap}", proc, "nofile-proxy")
            pids = [proc.pid, *(w["pid"] for w in data["workers"])]
            assert [_soft_nofile(pid) for pid in pids] == [4096] * len(pids)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    run(main())
