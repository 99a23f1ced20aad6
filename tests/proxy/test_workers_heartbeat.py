"""The supervisor's heartbeat over real worker processes: a periodic snapshot keeps each worker's
counters (a worker killed between two scrapes loses at most one interval), and a worker that stops
answering (SIGSTOP stands for a busy loop) is killed and restarted.

Healthy workers are never taken for stuck: not when the supervisor itself was stopped or the whole
proxy frozen (silence counts from when a heartbeat request was sent, and a round after the
supervisor overslept kills nobody), not while they start (a start-up allowance of its own), not
while one drains after a SIGTERM of its own (it keeps answering). Restarts are jittered.

The hidden ``--heartbeat-interval``/``--heartbeat-timeout`` flags shorten 5 s/30 s to keep the
tests short. Each proxy runs in its own session and its whole process group is killed at the end
(``proxy_process``), a stopped worker included.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
import types

import pytest

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


@contextlib.asynccontextmanager
async def _running_proxy(tmp_path, name: str, *flags: str, workers: int = 2, ready_timeout: float = 10.0):
    """``lightmesh proxy --config`` with ``workers`` workers in front of backend A (and a TCP echo),
    its heartbeat every 0.2 s, plus ``flags``; yields once every worker runs config v1: ``proc``,
    ``admin`` (URL), ``port`` (HTTP), ``log`` (its output) and that moment's ``workers``."""
    echo, eport = await tcp_echo()
    hp, tp, ap = free_port(), free_port(), free_port()
    admin = f"http://127.0.0.1:{ap}"
    cfg_path, log_path = tmp_path / "proxy.json", tmp_path / "proxy.log"
    try:
        async with Backend("A") as backend:
            cfg_path.write_text(make(1, hp, backend.url, tp, eport).to_json())
            with proxy_process("--config", str(cfg_path), "--workers", str(workers), "--admin-address", "127.0.0.1",
                               "--admin-port", str(ap), "--name", name, "--heartbeat-interval", "0.2", *flags,
                               log_path=log_path) as proc:
                await wait_ready(admin, proc, name, timeout=ready_timeout)
                data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, 1)), ready_timeout,
                                   "workers on v1")
                yield types.SimpleNamespace(proc=proc, admin=admin, port=hp, log=log_path, workers=data["workers"])
    finally:
        echo.close()


def test_a_worker_killed_between_scrapes_keeps_what_it_counted(tmp_path):
    # Snapshots were fetched only by a scrape: whatever a worker counted since the last scrape was
    # lost when it died. Here nobody scrapes before the kill.
    async def main():
        async with _running_proxy(tmp_path, "hb-metrics") as px:
            pids = [w["pid"] for w in px.workers]
            for _ in range(40):  # fresh connections: both workers serve some
                assert (await request(px.port)).status == 200
            # both workers' counts reach the supervisor by the heartbeat alone: wait for a
            # few intervals, then kill both (whichever served what)
            await asyncio.sleep(1.0)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            await until(lambda: _when(rawdata(px.admin), lambda d: workers_on(d, 1) and not
                                      set(pids) & {w["pid"] for w in d["workers"]}), 15, "workers restarted")
            assert await _requests_total(px.admin) == 40

    run(main())


def test_a_stopped_worker_is_killed_and_restarted(tmp_path):
    async def main():
        victim = None
        try:
            async with _running_proxy(tmp_path, "hb-stuck", "--heartbeat-timeout", "1.5") as px:
                victim = px.workers[1]["pid"]
                os.kill(victim, signal.SIGSTOP)  # as stuck as a worker gets: alive, answers nothing
                data = await until(lambda: _when(rawdata(px.admin), lambda d: workers_on(d, 1) and
                                                 d["workers"][1]["pid"] != victim), 8, "stuck worker replaced")
                assert data["workers"][1]["restarts"] == 1 and data["workers"][0]["restarts"] == 0
                assert not os.path.exists(f"/proc/{victim}") or _zombie_or_gone(victim)
                errors = [line for line in px.log.read_text().splitlines()
                          if "answered no heartbeat" in line]
                assert len(errors) == 1 and "ERROR" in errors[0], errors
                assert f"worker 1 (pid {victim}) answered no heartbeat for " in errors[0]
                # every new connection is served again (none lands on a stopped worker)
                for _ in range(20):
                    conn = await RawClient.connect(px.port)
                    try:
                        await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
                        assert (await conn.response(3)).status == 200
                    finally:
                        await conn.close()
        finally:
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


async def _soon(check, what: str, timeout: float = 10.0) -> None:
    """Until ``check()``: polled often (the supervisor's loop runs every 0.05 s), bounded generously
    (a stalled host makes the supervisor start every silence clock again: see below)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_the_heartbeat_keeps_one_request_in_flight_and_kills_a_silent_worker(caplog):
    # Waits for what it checks, never a fixed time: a round that comes late (the host stalled this
    # process) judges nobody and starts every silence clock again (HEARTBEAT_OVERSLEEP), so on a
    # slow host the kill comes later, and it needs a 0.5 s stretch without such a stall.
    async def scenario():
        sup = _supervisor("--heartbeat-interval", "0.05", "--heartbeat-timeout", "0.5")
        now = time.monotonic()
        channels = []
        for worker, answers in zip(sup.workers, (True, False)):
            worker.alive, worker.proc, worker.pid, worker.last_heard = True, _FakeProc(4240 + worker.index), \
                4240 + worker.index, now
            worker.heard = True  # it said hello: the heartbeat, not the start-up allowance, applies
            worker.writer = _Channel(sup, worker, answers)
            channels.append(worker.writer)
        task = asyncio.get_running_loop().create_task(sup._heartbeat())
        answering, silent = sup.workers
        judged = []  # (when the silent worker was killed, the start of the silence it was killed for)

        def kill(proc=silent.proc):
            judged.append((time.monotonic(), silent.silent_since))
            _FakeProc.kill(proc)

        silent.proc.kill = kill
        try:
            await _soon(lambda: len(channels[0].requests) >= 4, "4 requests")  # asked each interval: it answers
            assert len(channels[1].requests) == 1  # one request outstanding, not one per interval
            assert answering.last_metrics is not None and silent.last_metrics is None
            assert silent.proc.kills == 0
            await _soon(lambda: silent.proc.kills, "the silent worker killed")
            # not before its limit, counted from its request (or from the last restart of its clock)
            [(killed_at, silent_since)] = judged
            assert killed_at - silent_since > 0.5, killed_at - silent_since
            assert silent.proc.kills == 1 and answering.proc.kills == 0
            assert len(channels[1].requests) == 1
        finally:
            sup.stopping = True
            task.cancel()
        errors = [r for r in caplog.records if "answered no heartbeat" in r.getMessage()]
        assert len(errors) == 1 and errors[0].levelname == "ERROR"
        message = errors[0].getMessage()
        assert "worker 1 (pid 4241) answered no heartbeat for " in message and "(limit 0.5s)" in message, message

    asyncio.run(scenario())


def test_a_worker_that_exits_between_scrapes_leaves_its_heartbeat_counts():
    async def scenario():
        sup = _supervisor("--heartbeat-interval", "0.05")
        sup.stopping = False
        worker = sup.workers[0]
        worker.alive, worker.proc, worker.pid, worker.last_heard = True, _FakeProc(4250), 4250, time.monotonic()
        worker.heard = True
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


# ------------------------------------------------------------------ a paused supervisor, slow starts, drains


@pytest.mark.parametrize("who", ["supervisor", "group"])
def test_pausing_the_supervisor_or_the_whole_proxy_kills_no_healthy_worker(tmp_path, who):
    # Silence was now - last_heard: after the supervisor (or the whole pod: docker pause, a cgroup
    # freeze, Ctrl-Z) was stopped longer than the timeout, every healthy worker was SIGKILLed at
    # once on resume, their answers still unread in the channels.
    async def main():
        async with _running_proxy(tmp_path, "hb-pause", "--heartbeat-timeout", "1") as px:
            pids = [w["pid"] for w in px.workers]
            await asyncio.sleep(0.5)  # a few rounds answered
            pause = (lambda s: os.kill(px.proc.pid, s)) if who == "supervisor" else \
                (lambda s: os.killpg(px.proc.pid, s))
            pause(signal.SIGSTOP)
            try:
                if who == "supervisor":  # the workers go on serving meanwhile
                    for _ in range(5):
                        assert (await request(px.port, timeout=3)).status == 200
                await asyncio.sleep(2.5)  # 2.5 timeouts
            finally:
                pause(signal.SIGCONT)
            await asyncio.sleep(1.5)  # 7 rounds after the resume
            data = await rawdata(px.admin)
            assert [(w["pid"], w["alive"], w["restarts"]) for w in data["workers"]] == \
                [(pid, True, 0) for pid in pids]
            text = px.log.read_text()
            assert "answered no heartbeat" not in text and "killing it" not in text, text[-3000:]
            assert "heartbeat: the supervisor did not run for " in text
            for _ in range(10):
                assert (await request(px.port, timeout=3)).status == 200

    run(main(), timeout=40)


def test_workers_slower_to_start_than_the_heartbeat_timeout_are_not_killed(tmp_path, monkeypatch):
    # Start-up counted against the heartbeat timeout: a worker slower to start than that (24
    # workers on 2 cores) was killed before its first word, and all of them restarted together,
    # forever. Here every worker takes 2 s to start (a sitecustomize that sleeps), the timeout is 1 s.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import sys, time\nif '--worker-fd' in sys.argv:\n    time.sleep(2.0)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))

    async def main():
        async with _running_proxy(tmp_path, "hb-slowstart", "--heartbeat-timeout", "1", ready_timeout=9) as px:
            await asyncio.sleep(1.0)  # answered heartbeats since
            data = await rawdata(px.admin)
            assert [w["restarts"] for w in data["workers"]] == [0, 0], data
            text = px.log.read_text()
            assert "killing it" not in text, text[-3000:]
            assert (await request(px.port, timeout=3)).status == 200

    run(main(), timeout=40)


def test_a_worker_draining_on_its_own_sigterm_keeps_answering_and_is_not_killed(tmp_path):
    # A worker draining after its own SIGTERM stopped answering control messages: with a drain
    # longer than the heartbeat timeout it was SIGKILLed mid-drain and its in-flight request lost.
    async def main():
        async with _running_proxy(tmp_path, "hb-drain", "--heartbeat-timeout", "1", "--drain-timeout", "10",
                                  workers=1) as px:
            pid = px.workers[0]["pid"]
            loop = asyncio.get_running_loop()
            conn = await RawClient.connect(px.port)
            try:
                await conn.send(b"GET /slow?ms=3000 HTTP/1.1\r\nHost: svc\r\n\r\n")
                await asyncio.sleep(0.3)
                os.kill(pid, signal.SIGTERM)
                seen = loop.create_task(until(lambda: _when(rawdata(px.admin), lambda d: d["workers"][0].get(
                    "draining") and d["workers"][0]["pid"] == pid), 2.5, "rawdata: the worker drains"))
                assert (await conn.response(8)).status == 200  # 2.7 timeouts later
                await seen
            finally:
                await conn.close()
            data = await until(lambda: _when(rawdata(px.admin), lambda d: workers_on(d, 1) and
                                             d["workers"][0]["pid"] != pid), 8, "the worker restarted")
            assert data["workers"][0]["restarts"] == 1 and data["workers"][0].get("draining") is False
            text = px.log.read_text()
            assert "answered no heartbeat" not in text and "killing it" not in text, text[-3000:]
            assert f"worker 0 (pid {pid}) got a SIGTERM: draining (up to 10s)" in text
            assert f"worker 0 (pid {pid}) exited with code 0" in text

    run(main(), timeout=40)


# ------------------------------------------------------------------ the same rules, by a clock of our own


class _Clock:
    def __init__(self, monkeypatch) -> None:
        from lightmesh.proxy import main as proxy_main
        self.now = 1000.0
        monkeypatch.setattr(proxy_main, "time", types.SimpleNamespace(monotonic=lambda: self.now, time=time.time))


def _live(sup, worker, pid: int, clock: _Clock, heard: bool) -> _Channel:
    """``worker`` as ``_spawn`` leaves it at ``clock.now``, having said hello if ``heard``."""
    worker.alive, worker.proc, worker.pid = True, _FakeProc(pid), pid
    worker.started_at = worker.last_heard = worker.silent_since = clock.now
    worker.heard, worker.heartbeat_id = False, None
    worker.writer = _Channel(sup, worker, False)
    if heard:
        sup._handle(worker, {"type": "hello", "pid": pid})
    return worker.writer


def _answer(sup, worker) -> None:
    """The worker answers the last snapshot request it was sent."""
    last = worker.writer.requests[-1]
    sup._handle(worker, {"type": "snapshot", "id": last["id"], "metrics": {}, "status": {}})


def test_silence_counts_from_the_request_and_a_late_round_kills_nobody(monkeypatch, caplog):
    clock = _Clock(monkeypatch)
    sup = _supervisor()  # the real 5 s / 30 s
    healthy, stuck = sup.workers
    _live(sup, healthy, 4260, clock, heard=True)
    _live(sup, stuck, 4261, clock, heard=True)
    sup._heartbeat_round(30.0)
    clock.now += 0.01
    _answer(sup, healthy)
    _answer(sup, stuck)
    clock.now += 5
    sup._heartbeat_round(30.0)  # both asked again
    # The supervisor is stopped for 35 s; both answers wait in the channels. Its first round
    # after it resumed comes before it reads them: it must not judge anyone on that time.
    clock.now += 35
    sup._heartbeat_round(30.0)
    assert (healthy.proc.kills, stuck.proc.kills) == (0, 0)
    clock.now += 0.01
    _answer(sup, healthy)  # read at last; "stuck" really is stuck from now on
    # Rounds every 5 s: the stuck worker's clock started again at the late round (its request
    # was sent long before, but the supervisor could not read meanwhile) and runs out 30 s later.
    rearmed = clock.now - 0.01
    kills_at = None
    for _ in range(8):
        clock.now += 5
        sup._heartbeat_round(30.0)
        _answer(sup, healthy)
        if stuck.proc.kills and kills_at is None:
            kills_at = clock.now
    assert healthy.proc.kills == 0
    assert stuck.proc.kills == 1 and 30 < kills_at - rearmed <= 35, kills_at - rearmed
    assert len(stuck.writer.requests) == 2  # one outstanding request at a time
    errors = [r.getMessage() for r in caplog.records if "answered no heartbeat" in r.getMessage()]
    assert len(errors) == 1 and "worker 1 (pid 4261) answered no heartbeat for 3" in errors[0], errors


def test_silence_counts_from_when_the_unanswered_request_was_sent(monkeypatch):
    clock = _Clock(monkeypatch)
    sup = _supervisor()
    worker = sup.workers[0]
    _live(sup, worker, 4270, clock, heard=True)
    sup.workers[1].alive = False
    sup._heartbeat_round(30.0)
    clock.now += 0.01
    _answer(sup, worker)  # then nothing more: last heard at +0.01, next request sent at +5
    rounds = []
    for _ in range(8):
        clock.now += 5
        sup._heartbeat_round(30.0)
        rounds.append(worker.proc.kills)
    # request sent at +5: 30 s elapse at +35, so the round at +40 kills (not the one at +35,
    # 35 s after the worker was last heard from)
    assert rounds == [0, 0, 0, 0, 0, 0, 0, 1], rounds


def test_a_starting_worker_has_its_own_longer_allowance(monkeypatch, caplog):
    from lightmesh.proxy import main as proxy_main
    clock = _Clock(monkeypatch)
    sup = _supervisor()
    slow, never = sup.workers
    _live(sup, slow, 4280, clock, heard=False)
    _live(sup, never, 4281, clock, heard=False)
    t0 = clock.now
    limit = max(getattr(proxy_main, "WORKER_START_TIMEOUT", 120.0), 30.0)
    assert limit >= 120
    killed = {}
    while clock.now - t0 < limit + 10:
        clock.now += 5
        if clock.now - t0 == 60:
            sup._handle(slow, {"type": "hello", "pid": 4280})  # a minute to start: fine
        sup._heartbeat_round(30.0)
        if clock.now - t0 > 60 and slow.writer.requests:
            _answer(sup, slow)
        for w in (slow, never):
            if w.proc.kills and w.index not in killed:
                killed[w.index] = clock.now - t0
    assert slow.proc.kills == 0
    assert not [r for r in never.writer.requests if r["type"] == "snapshot"]  # not asked before its hello
    assert killed == {1: limit + 5}, killed
    errors = [r.getMessage() for r in caplog.records if "killing it" in r.getMessage()]
    assert len(errors) == 1 and "worker 1 (pid 4281) sent nothing in the 125.0s since its start (limit 120s)" \
        in errors[0], errors


def test_workers_that_exit_together_restart_apart(monkeypatch):
    # Every worker that died at the same moment restarted exactly 0.5 s later, in step again.
    # Checked on the delays the supervisor waits (when the timers fire is up to the host).
    slept = {}  # the task that slept → how long
    real_sleep = asyncio.sleep

    async def sleep(delay, *args, **kwargs):
        slept[asyncio.current_task()] = delay
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", sleep)

    async def scenario():
        sup = _supervisor("--workers", "8")
        spawned = {}  # worker index → the delay its restart waited

        async def spawn(worker):
            spawned[worker.index] = slept.get(asyncio.current_task())

        sup._spawn = spawn
        now = time.monotonic()
        for worker in sup.workers:
            worker.started_at = now - 1  # a quick exit: the first back-off step, 0.5 s
            sup._schedule_restart(worker)
        await asyncio.wait(set(sup._tasks), timeout=10)
        assert len(spawned) == 8 and None not in spawned.values(), spawned  # each restart waited
        delays = sorted(spawned.values())
        assert 0.5 <= delays[0] and delays[-1] <= 0.5 * 1.25, delays
        assert delays[-1] - delays[0] > 0.02, delays  # not all at once

    asyncio.run(scenario())


def test_a_worker_draining_on_its_own_sigterm_is_not_ready_and_is_reported_only_if_the_proxy_goes_on(caplog):
    # With one worker draining after its own SIGTERM (its listeners closed), /ping said 200 while
    # every connection was refused; and a SIGTERM to the whole group logged "then it exits and is
    # restarted" for each worker when their message came before the supervisor's own handler.
    async def scenario():
        sup = _supervisor("--workers", "1")
        sup.config = object()
        [worker] = sup.workers[:1]
        sup.workers = [worker]
        worker.alive, worker.applied_hash, worker.applied_version = True, "h1", 3
        assert sup.ready() and sup.applied_hash() == "h1" and sup.applied_version() == 3
        sup._handle(worker, {"type": "draining", "timeout": 15})
        assert not sup.ready() and sup.applied_hash() is None and sup.applied_version() == 0
        sup.stopping = True  # the group's SIGTERM reached the supervisor just after
        await asyncio.sleep(0.7)
        assert not [r for r in caplog.records if "got a SIGTERM" in r.getMessage()]
        sup.stopping = False
        sup._handle(worker, {"type": "draining", "timeout": 15})  # its own SIGTERM: the proxy goes on
        await asyncio.sleep(0.7)
        assert len([r for r in caplog.records if "got a SIGTERM" in r.getMessage()]) == 1

    asyncio.run(scenario())
