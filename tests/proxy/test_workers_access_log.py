"""``--access-log`` with several workers on one stdout: every line at most 4096 bytes (PIPE_BUF), the
newline included, written in one ``write``, so lines from different workers never interleave on a
pipe; a longer record is cut (its longest strings) and marked ``"truncated": true``, still one JSON
object. Lines are queued and written by a thread of each worker's own: a stdout nobody reads holds
up no request (lines are dropped and counted instead). Unit tests of the bounding and the handler,
then proxies with 2 workers writing to a pipe.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import threading
import time

from conftest import lightmesh_cmd, lightmesh_env
from lightmesh.proxy import main as proxy_main
from proxy.backends import Backend, RawClient
from proxy.test_proxy_process import (_when, free_port, get, make, rawdata, run, tcp_echo, until, wait_ready,
                                      workers_on)

LIMIT = 4096


def record(**fields) -> dict:
    base = {"time": 1700000000.123, "client": "127.0.0.1", "entry_point": "web", "method": "GET",
            "host": "svc", "path": "/", "router": "r", "service": "svc", "upstream": "http://127.0.0.1:80",
            "status": 200, "retries": 0, "duration_ms": 1.5}
    return {**base, **fields}


def test_a_short_record_is_left_as_it_is():
    line = json.dumps(record(path="/x" * 100))
    assert proxy_main.bound_access_line(line) is line


def test_a_long_path_is_cut_and_marked_and_the_rest_kept():
    rec = record(path="/" + "a" * 20000)
    line = proxy_main.bound_access_line(json.dumps(rec))
    assert len(line.encode()) + 1 <= LIMIT
    assert len(line.encode()) + 1 >= LIMIT - 8  # cut to fit, not far below
    out = json.loads(line)
    assert out.pop("truncated") is True
    assert out["path"].startswith("/aaa") and rec["path"].startswith(out["path"])
    assert {k: v for k, v in out.items() if k != "path"} == {k: v for k, v in rec.items() if k != "path"}


def test_long_host_and_path_with_escaped_bytes_both_cut():
    # latin-1 bytes above 0x7f are \u00XX in JSON (6 bytes each); a Host as long as the path
    rec = record(host="h" * 9000, path="/" + "\xff" * 9000, method="M" * 64)
    line = proxy_main.bound_access_line(json.dumps(rec))
    assert line.isascii() and len(line) + 1 <= LIMIT
    out = json.loads(line)
    assert out["truncated"] is True and out["status"] == 200 and out["method"] == "M" * 64
    assert rec["host"].startswith(out["host"]) and rec["path"].startswith(out["path"])
    assert len(out["host"]) + 6 * len(out["path"]) > 3000  # what fits is kept


def test_exactly_at_the_limit_and_one_past_it():
    rec = record(path="/")
    room = LIMIT - 1 - len(json.dumps(rec))
    at_limit = json.dumps(record(path="/" + "b" * room))
    assert len(at_limit) == LIMIT - 1 and proxy_main.bound_access_line(at_limit) == at_limit
    past = json.dumps(record(path="/" + "b" * (room + 1)))
    out = proxy_main.bound_access_line(past)
    assert len(out) + 1 <= LIMIT and json.loads(out)["truncated"] is True


def test_a_long_message_that_is_not_json_becomes_one_json_object():
    out = proxy_main.bound_access_line("é" * 5000)
    assert len(out.encode()) + 1 <= LIMIT
    parsed = json.loads(out)
    assert parsed["truncated"] is True and set(parsed["message"]) == {"é"}


def test_the_handler_writes_each_line_in_one_write(monkeypatch):
    writes = []
    real_write = os.write

    def spy(fd, data):
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(proxy_main.os, "write", spy)
    read_end, write_end = os.pipe()
    try:
        handler = proxy_main.AccessLogHandler(write_end)
        handler.setFormatter(proxy_main.AccessLogFormatter())
        logger = logging.getLogger("test.access.one-write")
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.INFO)
        logger.info(json.dumps(record(path="/" + "c" * 10000)))
        logger.info(json.dumps(record(path="/short")))
        assert handler.drain(5)  # written by the handler's own thread
        handler.close()
        assert len(writes) == 2
        assert all(w.endswith(b"\n") and len(w) <= LIMIT for w in writes)
        got = os.read(read_end, 65536)
        assert got == b"".join(writes)
        assert [json.loads(line)["path"][:6] for line in got.splitlines()] == ["/ccccc", "/short"]
    finally:
        os.close(read_end)
        os.close(write_end)


def test_two_workers_writing_long_lines_to_one_pipe(tmp_path):
    # 6 clients at once send requests with 20 KB paths; both workers log them to the same pipe.
    # Before: 20 KB lines, written in several pieces, interleaved with the other worker's.
    clients, per_client, path_len = 6, 20, 20000
    chunks: list[bytes] = []

    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        try:
            async with Backend("A") as backend:
                cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
                with open(tmp_path / "proxy.log", "wb") as stderr:
                    proc = subprocess.Popen(
                        lightmesh_cmd("proxy", "--config", str(cfg_path), "--workers", "2", "--access-log",
                                      "--admin-address", "127.0.0.1", "--admin-port", str(ap), "--name", "al-pipe",
                                      "--log-level", "warning"),
                        stdout=subprocess.PIPE, stderr=stderr, env=lightmesh_env(), start_new_session=True)
                reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(65536), b"")),
                                          daemon=True)
                reader.start()
                try:
                    await wait_ready(admin, proc, "al-pipe")
                    await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "workers on v1")

                    async def client(n: int) -> None:
                        letter = chr(ord("a") + n)
                        for _ in range(per_client):
                            conn = await RawClient.connect(hp)  # new connections: both workers get some
                            try:
                                await conn.send(f"GET /{letter * path_len} HTTP/1.1\r\nHost: svc\r\n"
                                                f"Connection: close\r\n\r\n".encode())
                                assert (await conn.response(5)).status == 200
                            finally:
                                await conn.close()

                    await asyncio.gather(*(client(n) for n in range(clients)))
                    proc.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait, 15) == 0
                    await asyncio.to_thread(reader.join, 5)
                finally:
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(10)
                    proc.stdout.close()
        finally:
            echo.close()

    run(main())
    lines = b"".join(chunks).split(b"\n")
    assert lines[-1] == b""  # ends with a newline
    lines = lines[:-1]
    assert len(lines) == clients * per_client
    too_long = [len(line) + 1 for line in lines if len(line) + 1 > LIMIT]
    assert not too_long, f"{len(too_long)} lines over {LIMIT} bytes: {too_long[:5]}"
    records = [json.loads(line) for line in lines]  # every line one JSON object
    for rec in records:
        assert rec["truncated"] is True and rec["status"] == 200
        letter = rec["path"][1]
        assert rec["path"] == "/" + letter * (len(rec["path"]) - 1)  # one client's path, not a mix
    counts = {}
    for rec in records:
        counts[rec["path"][1]] = counts.get(rec["path"][1], 0) + 1
    assert counts == {chr(ord("a") + n): per_client for n in range(clients)}


def _logger(handler, name: str) -> logging.Logger:
    handler.setFormatter(proxy_main.AccessLogFormatter())
    logger = logging.getLogger(name)
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_a_stdout_nobody_reads_never_blocks_the_logging_thread():
    # The handler wrote on the caller's thread (the worker's event loop), blocking when the pipe
    # was full: a stalled log shipper stopped every request. Now the lines past the pipe's room
    # and the handler's queue are dropped and counted, at once.
    queued = getattr(proxy_main, "ACCESS_LOG_QUEUE_LINES", 4096)
    lines = queued + 400
    read_end, write_end = os.pipe()
    handler = proxy_main.AccessLogHandler(write_end)
    logger = _logger(handler, "test.access.stalled")
    chunks: list[bytes] = []
    try:
        def log_all():
            for n in range(lines):
                logger.info(json.dumps(record(path=f"/{n}/" + "d" * 400)))

        logging_thread = threading.Thread(target=log_all, daemon=True)
        started = time.monotonic()
        logging_thread.start()
        logging_thread.join(5)
        assert not logging_thread.is_alive(), "logging blocked on a full pipe"
        assert time.monotonic() - started < 5
        dropped = handler.dropped
        assert 0 < dropped < 400, dropped  # the pipe's room (64 KiB) and the queue took the rest
        # a reader comes back: everything queued gets written, whole lines only
        reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: os.read(read_end, 65536), b"")),
                                  daemon=True)
        reader.start()
        assert handler.drain(10)
        handler.close()
        os.close(write_end)
        write_end = None
        reader.join(10)
        got = b"".join(chunks).split(b"\n")
        assert got[-1] == b""
        paths = [json.loads(line)["path"] for line in got[:-1]]
        assert len(paths) == lines - dropped
        numbers = [int(p.split("/")[1]) for p in paths]
        assert numbers == sorted(numbers) and numbers[0] == 0  # in order, the first ones kept
    finally:
        if write_end is not None:
            os.close(read_end)  # unblocks a writer stuck on the pipe (EPIPE)
            os.close(write_end)
        else:
            os.close(read_end)


def test_a_stdout_nobody_reads_holds_up_no_request_and_kills_no_worker(tmp_path):
    # Before: both workers blocked in write() once the pipe was full, every request after that
    # hung, and the heartbeat killed both workers again and again (382 of 400 requests failed).
    requests, path_len = 150, 3000
    read_end, write_end = os.pipe()  # nobody ever reads read_end

    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        log_path = tmp_path / "proxy.log"
        try:
            async with Backend("A") as backend:
                cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
                with open(log_path, "wb") as stderr:
                    proc = subprocess.Popen(
                        lightmesh_cmd("proxy", "--config", str(cfg_path), "--workers", "2", "--access-log",
                                      "--admin-address", "127.0.0.1", "--admin-port", str(ap), "--name", "al-stall",
                                      "--heartbeat-interval", "0.2", "--heartbeat-timeout", "1",
                                      "--access-log-queue", "16"),
                        stdout=write_end, stderr=stderr, env=lightmesh_env(), start_new_session=True)
                os.close(write_end)
                try:
                    await wait_ready(admin, proc, "al-stall")
                    data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "workers on v1")
                    pids = [w["pid"] for w in data["workers"]]
                    for n in range(requests):
                        conn = await RawClient.connect(hp)  # new connections: both workers get some
                        try:
                            await conn.send(f"GET /{n}/{'e' * path_len} HTTP/1.1\r\nHost: svc\r\n"
                                            f"Connection: close\r\n\r\n".encode())
                            assert (await conn.response(2)).status == 200, n
                        finally:
                            await conn.close()
                    await asyncio.sleep(1.5)  # 1.5 heartbeat timeouts
                    data = await rawdata(admin)
                    assert [(w["pid"], w["restarts"]) for w in data["workers"]] == [(pid, 0) for pid in pids]
                    status, body = await get(admin + "/metrics")
                    assert status == 200
                    dropped = [line for line in body.decode().splitlines()
                               if line.startswith("lightmesh_proxy_access_log_dropped_total ")]
                    assert len(dropped) == 1 and 0 < float(dropped[0].split()[1]) < requests, dropped
                    # the exit is bounded too: the queued lines get ACCESS_LOG_FLUSH_SECONDS (2 s)
                    proc.send_signal(signal.SIGTERM)
                    assert await asyncio.to_thread(proc.wait, 8) == 0
                    text = log_path.read_text()
                    assert "killing it" not in text, text[-3000:]
                    assert "lines still queued at exit were not written within 2s" in text
                finally:
                    if proc.poll() is None:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait(10)
        finally:
            echo.close()

    try:
        run(main(), timeout=40)
    finally:
        os.close(read_end)
