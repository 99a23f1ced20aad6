"""The supervisor's ``/metrics`` over real worker processes, around worker deaths, drains and restarts:

- every scrape counts each worker exactly once, whatever dies while it waits (a worker that answered,
  then died while the scrape still waited for a slower one, was counted from its answer and from the
  retired totals both: the counter went up, then down, a reset to Prometheus);
- a worker draining after a SIGTERM of its own sends a final snapshot as it exits: the requests that
  finished during the drain are counted (they were lost);
- ``lightmesh_proxy_config_version`` is the oldest version a serving worker has applied: a restarted
  worker that has applied none yet does not pull it to 0.

Everything listens on 127.0.103.0/24. Each proxy runs in its own session and its whole process group
is killed at the end (``proxy_process``), a stopped worker included (and SIGCONTed first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import types

from lightmesh.config import HTTPConfig, make_config
from proxy.backends import Backend, RawClient
from proxy.test_proxy_process import _when, get, proxy_process, rawdata, run, until, wait_ready, workers_on

HOST = "127.0.103.1"  # the proxy's listeners and admin port
BACKEND_HOST = "127.0.103.2"
REQUESTS = 'lightmesh_proxy_requests_total{service="svc",code="200",method="GET"} '
VERSION = 'lightmesh_proxy_config_version '


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _config(version: int, http_port: int, backend_url: str) -> str:
    http = HTTPConfig.model_validate({
        "entry_points": [{"name": "web", "address": HOST, "port": http_port}],
        "services": [{"name": "svc", "servers": [{"url": backend_url}]}],
        "routers": [{"name": "r", "entry_points": ["web"], "service": "svc"}]})
    return make_config(version, http).to_json()


async def _get(port: int, path: str = "/", client: int = 10, timeout: float = 5.0) -> int:
    """One GET on a fresh connection from 127.0.103.<client>; the response status."""
    conn = await RawClient.connect(port, host=HOST, local_host=f"127.0.103.{client}")
    try:
        await conn.send(f"GET {path} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode())
        return (await conn.response(timeout)).status
    finally:
        await conn.close()


async def _scrape(admin: str) -> str:
    status, body = await get(admin + "/metrics")
    assert status == 200, status
    return body.decode()


def _value(text: str, prefix: str) -> float:
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix):])
    return 0.0


@contextlib.asynccontextmanager
async def _running_proxy(tmp_path, name: str, *flags: str, workers: int = 2, version: int = 1):
    """``lightmesh proxy --config`` with ``workers`` workers in front of one backend, on
    127.0.103.1; yields once every worker runs ``version``: ``proc``, ``admin`` (URL), ``port``
    (HTTP), ``log`` and that moment's ``workers``."""
    hp, ap = _free_port(), _free_port()
    admin = f"http://{HOST}:{ap}"
    cfg_path, log_path = tmp_path / "proxy.json", tmp_path / "proxy.log"
    async with Backend("A", host=BACKEND_HOST) as backend:
        cfg_path.write_text(_config(version, hp, backend.url))
        with proxy_process("--config", str(cfg_path), "--workers", str(workers), "--admin-address", HOST,
                           "--admin-port", str(ap), "--name", name, *flags, log_path=log_path) as proc:
            await wait_ready(admin, proc, name, timeout=20)
            data = await until(lambda: _when(rawdata(admin), lambda d: workers_on(d, version)), 20,
                               f"workers on v{version}")
            yield types.SimpleNamespace(proc=proc, admin=admin, port=hp, log=log_path, workers=data["workers"])


def test_a_worker_dying_while_a_scrape_waits_for_a_slow_one_is_counted_once(tmp_path):
    async def main():
        async with _running_proxy(tmp_path, "m-race") as px:
            first, second = (w["pid"] for w in px.workers)
            for i in range(40):  # fresh connections from 8 addresses: both workers serve some
                assert await _get(px.port, client=10 + i % 8) == 200
            assert _value(await _scrape(px.admin), REQUESTS) == 40  # both answered: their last snapshots
            os.kill(second, signal.SIGSTOP)  # the slow one: the scrape waits for it (up to 2 s)
            try:
                scrape = asyncio.get_running_loop().create_task(_scrape(px.admin))
                await asyncio.sleep(0.7)  # the first worker answered that scrape long ago
                os.kill(first, signal.SIGKILL)
                during = await scrape
            finally:
                os.kill(second, signal.SIGCONT)
            after = await _scrape(px.admin)
            # the killed worker: from the retired totals only; the stopped one: its last snapshot
            assert (_value(during, REQUESTS), _value(after, REQUESTS)) == (40, 40), \
                (_value(during, REQUESTS), _value(after, REQUESTS))
            await until(lambda: _when(rawdata(px.admin), lambda d: workers_on(d, 1) and
                                      first not in {w["pid"] for w in d["workers"]}), 15, "worker 0 restarted")
            assert _value(await _scrape(px.admin), REQUESTS) == 40

    run(main(), timeout=60)


def test_requests_that_finish_while_a_worker_drains_on_its_own_sigterm_are_counted(tmp_path):
    async def main():
        async with _running_proxy(tmp_path, "m-drain", "--drain-timeout", "10", workers=1) as px:
            pid = px.workers[0]["pid"]
            for _ in range(5):
                assert await _get(px.port) == 200
            assert _value(await _scrape(px.admin), REQUESTS) == 5
            conn = await RawClient.connect(px.port, host=HOST, local_host="127.0.103.10")
            try:
                await conn.send(b"GET /slow?ms=1500 HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n")
                await asyncio.sleep(0.3)
                os.kill(pid, signal.SIGTERM)  # it drains: the slow request ends during the drain
                assert (await conn.response(8)).status == 200
            finally:
                await conn.close()
            await until(lambda: _when(rawdata(px.admin), lambda d: workers_on(d, 1) and
                                      d["workers"][0]["pid"] != pid), 15, "the worker restarted")
            text = await _scrape(px.admin)
            bucket = 'lightmesh_proxy_request_duration_seconds_bucket{service="svc",le="%s"} '
            counted = (_value(text, REQUESTS), _value(text, bucket % "1.0"), _value(text, bucket % "2.5"),
                       _value(text, 'lightmesh_proxy_request_duration_seconds_count{service="svc"} '))
            assert counted == (6, 5, 6, 6), counted  # the slow one (1.5 s) in (1, 2.5]
            assert f"worker 0 (pid {pid}) exited with code 0" in px.log.read_text()

    run(main(), timeout=60)


def test_a_restarted_worker_that_has_applied_nothing_yet_does_not_pull_the_config_version_to_0(
        tmp_path, monkeypatch):
    # A marker file makes each worker started after it sleep 6 s before anything (a slow start):
    # the restarted worker is alive, with no config, that long.
    marker = tmp_path / "slow-start"
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        f"if '--worker-fd' in sys.argv and os.path.exists({str(marker)!r}):\n"
        "    time.sleep(6.0)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p))

    async def main():
        async with _running_proxy(tmp_path, "m-version", version=7) as px:
            assert _value(await _scrape(px.admin), VERSION) == 7
            victim = px.workers[1]["pid"]
            marker.write_text("")
            os.kill(victim, signal.SIGKILL)
            restarted = await until(lambda: _when(rawdata(px.admin), lambda d: d["workers"][1]["alive"] and
                                                  d["workers"][1]["pid"] != victim), 5, "worker 1 restarted")
            started = time.monotonic()
            assert restarted["workers"][1]["applied_version"] == 0  # rawdata: per worker, as it is
            text = await _scrape(px.admin)  # (waits up to 2 s for the starting worker's answer)
            data = await rawdata(px.admin)
            assert time.monotonic() - started < 5.5 and data["workers"][1]["applied_hash"] is None, \
                "the scrape came after the restarted worker applied the config: inconclusive"
            assert _value(text, VERSION) == 7, [l for l in text.splitlines() if l.startswith(VERSION)]
            assert (await get(px.admin + "/ping"))[0] == 200  # worker 0 serves v7
            await until(lambda: _when(rawdata(px.admin), lambda d: workers_on(d, 7)), 20, "worker 1 on v7")
            assert _value(await _scrape(px.admin), VERSION) == 7

    run(main(), timeout=60)


# ------------------------------------------------------------------ the supervisor alone (no processes)


def _supervisor(workers: int = 2):
    import argparse

    from lightmesh.proxy import main as proxy_main
    parser = argparse.ArgumentParser()
    proxy_main.configure(parser)
    sup = proxy_main.Supervisor(parser.parse_args(["--config", "unused.json", "--workers", str(workers)]))
    sup.stopping = sup.draining = True  # no restart (no real process) of a worker that exits
    return sup


def _counted(n: int) -> dict:
    from lightmesh.proxy.metrics import ProxyMetrics
    recorded = ProxyMetrics()
    for _ in range(n):
        recorded.request("svc", 200, "GET", 0.01)
    return recorded.snapshot()


class _Channel:
    """The supervisor's end of a worker's channel: ``answer`` (a count, or None: silent) answers each
    snapshot request through ``sup._handle``; ``then`` runs ``delay`` seconds after the request."""

    def __init__(self, sup, worker, answer: int | None, then=None, delay: float = 0.0) -> None:
        self.sup, self.worker, self.answer, self.then, self.delay = sup, worker, answer, then, delay

    def write(self, data: bytes) -> None:
        msg = json.loads(data[4:])
        loop = asyncio.get_running_loop()
        if msg["type"] == "snapshot" and self.answer is not None:
            loop.call_soon(self.sup._handle, self.worker, {"type": "snapshot", "id": msg["id"],
                                                           "metrics": _counted(self.answer), "status": {}})
        if self.then is not None:
            loop.call_later(self.delay, self.then)
            self.then = None

    def close(self) -> None:
        pass


def _alive(worker, pid: int) -> None:
    worker.alive, worker.pid, worker.proc, worker.heard = True, pid, None, True


def test_each_worker_is_counted_once_whatever_exits_while_a_scrape_waits(monkeypatch):
    from lightmesh.proxy import main as proxy_main
    monkeypatch.setattr(proxy_main, "SNAPSHOT_TIMEOUT", 0.5)

    async def scenario():
        sup = _supervisor()
        fast, slow = sup.workers
        _alive(fast, 4300)
        _alive(slow, 4301)
        slow.last_metrics = proxy_main._worker_counts(_counted(3))  # its last heartbeat's answer

        def fast_exits():
            # it answered the scrape (11), then sends a final snapshot (12: a request ended in its
            # drain) as it exits, while the scrape still waits for the silent one
            sup._handle(fast, {"type": "snapshot", "id": None, "metrics": _counted(12), "status": {}})
            asyncio.get_running_loop().create_task(sup._worker_exited(fast))
        fast.writer = _Channel(sup, fast, 11, then=fast_exits, delay=0.1)
        slow.writer = _Channel(sup, slow, None)
        line = 'lightmesh_proxy_requests_total{service="svc",code="200",method="GET"} '
        during = await sup.metrics_text()
        assert not fast.alive and line + "15" in during, [l for l in during.splitlines() if l.startswith(line)]
        after = await sup.metrics_text()
        assert line + "15" in after

    asyncio.run(scenario())


def test_the_config_version_gauge_leaves_out_workers_with_no_config_the_controller_header_does_not():
    sup = _supervisor(3)
    assert sup.config_version() == 0  # before any config
    for worker, (version, digest) in zip(sup.workers, ((7, "h7"), (6, "h6"), (0, None))):
        _alive(worker, 4310 + worker.index)
        worker.applied_version, worker.applied_hash = version, digest
    # the gauge: the oldest version applied (6); the restarted worker with none is not "version 0"
    assert sup.config_version() == 6
    # X-Lightmesh-Applied-Version (and its re-poll on a change): what *every* worker applied, as before
    assert sup.applied_version() == 0 and sup.applied_hash() is None
    sup.workers[1].draining = True  # a draining worker applies nothing new: left out of both
    assert sup.config_version() == 7
    for worker in sup.workers[:2]:
        worker.applied_hash = None  # no serving worker has one (all restarting): the last version stays
    sup.workers[1].draining = False
    assert sup.config_version() == 7  # before: 0, a dip to 0 on the dashboard at every lone worker's restart
    # the value kept is the last one applied, not the last one scraped
    for worker in sup.workers:
        sup._handle(worker, {"type": "applied", "version": 9, "hash": "h9"})
    for worker in sup.workers:
        worker.applied_hash = None
    assert sup.config_version() == 9
    # a config numbered 0 is a config all the same (its hash says it was applied)
    sup.workers[0].applied_version, sup.workers[0].applied_hash = 0, "h0"
    sup.workers[1].applied_version, sup.workers[1].applied_hash = 4, "h4"
    assert sup.config_version() == 0


def test_a_removed_services_counter_does_not_go_down_while_a_worker_still_shows_it(monkeypatch):
    # Its retired part (a worker that exited) was pruned as soon as the reload came, while a worker
    # that had not answered since still showed the service: 20, then 10, then gone.
    from lightmesh.proxy import main as proxy_main
    monkeypatch.setattr(proxy_main, "SNAPSHOT_TIMEOUT", 0.2)

    async def scenario():
        sup = _supervisor(1)
        (silent,) = sup.workers
        _alive(silent, 4320)
        silent.last_metrics = proxy_main._worker_counts(_counted(10))  # from before the reload
        silent.writer = _Channel(sup, silent, None)
        sup.retired_metrics = proxy_main._worker_counts(_counted(10))  # a worker that exited
        backend = {"name": "other", "servers": [{"url": "http://127.0.0.1:1"}]}
        sup._on_config(make_config(2, HTTPConfig.model_validate({
            "entry_points": [{"name": "web", "port": 5000}], "services": [backend],
            "routers": [{"name": "r", "entry_points": ["web"], "service": "other"}]})))
        assert _value(await sup.metrics_text(), REQUESTS) == 20  # the silent worker still shows svc
        silent.writer = _Channel(sup, silent, 0)  # it answers (after the reload): svc is gone there
        assert REQUESTS not in await sup.metrics_text()  # the series ends, never going down first

    asyncio.run(scenario())


def test_requests_that_finish_while_the_whole_proxy_drains_show_in_its_metrics_meanwhile(tmp_path):
    # The workers stopped reading the supervisor's channel when it said drain: every scrape during
    # the drain waited 2 s per worker and showed the counts from before it.
    async def main():
        async with _running_proxy(tmp_path, "m-stop", "--drain-timeout", "10", workers=1) as px:
            for _ in range(3):
                assert await _get(px.port) == 200
            slow = []
            for client, ms in ((11, 300), (12, 2500)):  # one ends early in the drain, one holds it open
                conn = await RawClient.connect(px.port, host=HOST, local_host=f"127.0.103.{client}")
                await conn.send(f"GET /slow?ms={ms} HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n".encode())
                slow.append(conn)
            try:
                await asyncio.sleep(0.1)
                px.proc.send_signal(signal.SIGTERM)
                assert (await slow[0].response(5)).status == 200
                started = time.monotonic()
                text = await _scrape(px.admin)
                assert time.monotonic() - started < 1.5  # answered, not waited out
                assert _value(text, REQUESTS) == 4
                assert (await slow[1].response(8)).status == 200
            finally:
                for conn in slow:
                    await conn.close()

    run(main(), timeout=60)


def test_exited_workers_counts_stay_bounded_across_reloads_without_scrapes():
    # Pruned only at a scrape, they grew by one set of series per renamed service and worker exit.
    from lightmesh.proxy import main as proxy_main
    from lightmesh.proxy.metrics import ProxyMetrics

    def config(version: int, service: str):
        return make_config(version, HTTPConfig.model_validate({
            "entry_points": [{"name": "web", "port": 5000}],
            "services": [{"name": service, "servers": [{"url": "http://127.0.0.1:1"}]}],
            "routers": [{"name": "r", "entry_points": ["web"], "service": service}]}))

    sup = _supervisor(1)
    for version in range(1, 201):
        name = f"svc-{version}"
        sup._on_config(config(version, name))
        exited = ProxyMetrics()
        exited.request(name, 200, "GET", 0.01)
        sup.retired_metrics = proxy_main.metrics_mod.merge([sup.retired_metrics,
                                                             proxy_main._worker_counts(exited.snapshot())])
    rows = sum(len(r) for r in sup.retired_metrics.values())
    sup._on_config(config(201, "svc-201"))
    assert rows <= 10 and sum(len(r) for r in sup.retired_metrics.values()) <= rows, rows  # one service's rows


def test_a_removed_services_counts_stay_while_a_worker_may_still_report_some_from_before_the_reload():
    # Pruned at the config, the exited workers' 5 went; a worker's answer made before it applied the
    # config then showed 3: a counter going down. The previous config's names wait for a scrape that
    # every worker answers.
    from lightmesh.proxy import main as proxy_main
    from lightmesh.proxy.metrics import ProxyMetrics

    def config(version: int, names: list[str]):
        return make_config(version, HTTPConfig.model_validate({
            "entry_points": [{"name": "web", "port": 5000}],
            "services": [{"name": n, "servers": [{"url": "http://127.0.0.1:1"}]} for n in names],
            "routers": [{"name": f"r-{n}", "entry_points": ["web"], "service": n} for n in names]}))

    def counts(**by_service: int) -> dict:
        recorded = ProxyMetrics()
        for service, n in by_service.items():
            for _ in range(n):
                recorded.request(service.replace("_", "-"), 200, "GET", 0.01)
        return proxy_main._worker_counts(recorded.snapshot())

    async def scenario():
        sup = _supervisor(1)
        (worker,) = sup.workers
        _alive(worker, 4330)
        worker.writer = None  # asked nothing: its last snapshot stands in
        sup._on_config(config(1, ["svc-x", "svc-y"]))
        sup.retired_metrics = counts(svc_x=5)  # a worker that exited
        worker.last_metrics = counts(svc_y=1)
        sup._on_config(config(2, ["svc-y"]))
        worker.last_metrics = counts(svc_x=3, svc_y=1)  # its answer, made before it applied v2
        line = 'lightmesh_proxy_requests_total{service="svc-x",code="200",method="GET"} '
        assert line + "8" in await sup.metrics_text()

    asyncio.run(scenario())
