"""The supervisor's heartbeat over real worker processes: a periodic snapshot keeps each worker's
counters (a worker killed between two scrapes loses at most one interval), and a worker that stops
answering (SIGSTOP stands for a busy loop) is killed and restarted.

The hidden ``--heartbeat-interval``/``--heartbeat-timeout`` flags shorten 5 s/30 s to keep the
tests short. Each proxy runs in its own session and its whole process group is killed at the end
(``proxy_process``), a stopped worker included.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

from proxy.backends import Backend, RawClient, request
from proxy.test_proxy_process import (_when, free_port, get, make, proxy_process, rawdata, run, tcp_echo, until,
                                      wait_ready, workers_on)

REQUESTS_LINE = 'lightmesh_proxy_requests_total{service="svc",code="200",method="GET"} '


async def _requests_total(admin: str) -> int:
    status, body = await get(admin + "/metrics")
    assert status == 200
    for line in body.decode().splitlines():
        if line.startswith(REQUESTS_LINE):
            return int(float(line[len(REQUESTS_LINE):]))
    return 0


def test_a_worker_killed_between_scrapes_keeps_what_it_counted(tmp_path):
    # Snapshots were fetched only by a scrape: whatever a worker counted since the last scrape was
    # lost when it died. Here nobody scrapes before the kill.
    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        try:
            async with Backend("A") as backend:
                cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
                with proxy_process("--config", str(cfg_path), "--workers", "2", "--admin-address", "127.0.0.1",
                                   "--admin-port", str(ap), "--name", "hb-metrics", "--heartbeat-interval", "0.2",
                                   log_path=tmp_path / "proxy.log") as proc:
                    await wait_ready(admin, proc, "hb-metrics")
                    data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "workers on v1")
                    pids = [w["pid"] for w in data["workers"]]
                    for _ in range(40):  # fresh connections: both workers serve some
                        assert (await request(hp)).status == 200
                    # both workers' counts reach the supervisor by the heartbeat alone: wait for a
                    # few intervals, then kill both (whichever served what)
                    await asyncio.sleep(1.0)
                    for pid in pids:
                        os.kill(pid, signal.SIGKILL)
                    await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1) and not
                                              set(pids) & {w["pid"] for w in d["workers"]}), 15, "workers restarted")
                    assert await _requests_total(admin) == 40
        finally:
            echo.close()

    run(main())


def test_a_stopped_worker_is_killed_and_restarted(tmp_path):
    async def main():
        echo, eport = await tcp_echo()
        hp, tp, ap = free_port(), free_port(), free_port()
        admin = f"http://127.0.0.1:{ap}"
        cfg_path = tmp_path / "proxy.json"
        log_path = tmp_path / "proxy.log"
        victim = None
        try:
            async with Backend("A") as backend:
                cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
                with proxy_process("--config", str(cfg_path), "--workers", "2", "--admin-address", "127.0.0.1",
                                   "--admin-port", str(ap), "--name", "hb-stuck", "--heartbeat-interval", "0.2",
                                   "--heartbeat-timeout", "1.5", log_path=log_path) as proc:
                    await wait_ready(admin, proc, "hb-stuck")
                    data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), 10, "workers on v1")
                    victim = data["workers"][1]["pid"]
                    os.kill(victim, signal.SIGSTOP)  # as stuck as a worker gets: alive, answers nothing
                    data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1) and
                                                     d["workers"][1]["pid"] != victim), 8, "stuck worker replaced")
                    assert data["workers"][1]["restarts"] == 1 and data["workers"][0]["restarts"] == 0
                    assert not os.path.exists(f"/proc/{victim}") or _zombie_or_gone(victim)
                    errors = [line for line in log_path.read_text().splitlines()
                              if "answered no heartbeat" in line]
                    assert len(errors) == 1 and "ERROR" in errors[0], errors
                    assert f"worker 1 (pid {victim}) answered no heartbeat for " in errors[0]
                    # every new connection is served again (none lands on a stopped worker)
                    for _ in range(20):
                        conn = await RawClient.connect(hp)
                        try:
                            await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
                            assert (await conn.response(3)).status == 200
                        finally:
                            await conn.close()
        finally:
            echo.close()
            if victim is not None:  # the group kill took it; a SIGCONT does no harm if it is gone
                try:
                    os.kill(victim, signal.SIGCONT)
                except ProcessLookupError:
                    pass

    run(main())


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


# ------------------------------------------------------------------ the supervisor's loop alone (no processes)


class _FakeProc:
    def __init__(self, pid: int) -> None:
        self.pid, self.kills = pid, 0

    def poll(self):
        return -9 if self.kills else None

    def kill(self) -> None:
        self.kills += 1


class _Channel:
    """The supervisor's end of a worker's control channel: records the frames it writes, and
    answers snapshot requests through ``sup._handle`` when ``answer`` is set."""

    def __init__(self, sup, worker, answer: bool) -> None:
        self.sup, self.worker, self.answer, self.requests = sup, worker, answer, []

    def write(self, data: bytes) -> None:
        msg = json.loads(data[4:])
        self.requests.append(msg)
        if self.answer and msg["type"] == "snapshot":
            from lightmesh.proxy.metrics import ProxyMetrics
            counted = ProxyMetrics()
            for _ in range(len(self.requests)):
                counted.request("svc", 200, "GET", 0.01)
            asyncio.get_running_loop().call_soon(self.sup._handle, self.worker, {
                "type": "snapshot", "id": msg["id"], "metrics": counted.snapshot(), "status": {}})

    def close(self) -> None:
        pass


def _supervisor(*flags: str):
    import argparse

    from lightmesh.proxy import main as proxy_main
    parser = argparse.ArgumentParser()
    proxy_main.configure(parser)
    return proxy_main.Supervisor(parser.parse_args(["--config", "unused.json", "--workers", "2", *flags]))


def test_the_heartbeat_keeps_one_request_in_flight_and_kills_a_silent_worker(caplog):
    async def scenario():
        sup = _supervisor("--heartbeat-interval", "0.05", "--heartbeat-timeout", "1")
        now = time.monotonic()
        channels = []
        for worker, answers in zip(sup.workers, (True, False)):
            worker.alive, worker.proc, worker.pid, worker.last_heard = True, _FakeProc(4240 + worker.index), \
                4240 + worker.index, now
            worker.writer = _Channel(sup, worker, answers)
            channels.append(worker.writer)
        task = asyncio.get_running_loop().create_task(sup._heartbeat())
        try:
            await asyncio.sleep(0.3)  # ~6 intervals, well before the deadline
            answering, silent = sup.workers
            assert len(channels[0].requests) >= 4  # asked each interval, since it answers
            assert len(channels[1].requests) == 1  # one request outstanding, not one per interval
            assert answering.last_metrics is not None and silent.last_metrics is None
            assert silent.proc.kills == 0
            await asyncio.sleep(1.0)
            assert silent.proc.kills == 1 and answering.proc.kills == 0
            assert len(channels[1].requests) == 1
        finally:
            sup.stopping = True
            task.cancel()
        errors = [r for r in caplog.records if "answered no heartbeat" in r.getMessage()]
        assert len(errors) == 1 and errors[0].levelname == "ERROR"
        message = errors[0].getMessage()
        assert "worker 1 (pid 4241) answered no heartbeat for " in message and "(limit 1s)" in message, message

    asyncio.run(scenario())


def test_a_worker_that_exits_between_scrapes_leaves_its_heartbeat_counts():
    async def scenario():
        sup = _supervisor("--heartbeat-interval", "0.05")
        sup.stopping = False
        worker = sup.workers[0]
        worker.alive, worker.proc, worker.pid, worker.last_heard = True, _FakeProc(4250), 4250, time.monotonic()
        worker.writer = _Channel(sup, worker, True)
        task = asyncio.get_running_loop().create_task(sup._heartbeat())
        try:
            await asyncio.sleep(0.2)
        finally:
            task.cancel()
        asked = len(worker.writer.requests)
        sup.stopping = True  # no restart
        worker.proc = None
        await sup._worker_exited(worker)
        text = await sup.metrics_text()
        assert f'lightmesh_proxy_requests_total{{service="svc",code="200",method="GET"}} {asked}' in text, text

    asyncio.run(scenario())
