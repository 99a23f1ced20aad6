"""Admin endpoints over real HTTP on 127.0.0.1, against a stub AdminState (the supervisor's side is
covered by test_proxy_process.py)."""

from __future__ import annotations

import socket

import aiohttp
import pytest

from lightmesh.proxy import metrics as proxy_metrics
from lightmesh.proxy.admin import AdminServer, PROMETHEUS_CONTENT_TYPE


class State:
    def __init__(self) -> None:
        self.is_ready = False
        self.worker_metrics = [proxy_metrics.ProxyMetrics(), proxy_metrics.ProxyMetrics()]

    def ready(self) -> bool:
        return self.is_ready

    async def metrics_text(self) -> str:
        return proxy_metrics.render(proxy_metrics.merge([m.snapshot() for m in self.worker_metrics]))

    def rawdata(self) -> dict:
        return {"version": 3, "hash": "abc", "config": {"version": 3, "hash": "abc"}, "last_error": None,
                "workers": [{"pid": 1, "applied_version": 3, "alive": True}]}


@pytest.mark.asyncio
async def test_endpoints():
    state = State()
    server = await AdminServer(state, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(base + "/live") as resp:
                assert resp.status == 200
            async with http.get(base + "/ping") as resp:
                assert resp.status == 503
            state.is_ready = True
            async with http.get(base + "/ping") as resp:
                assert resp.status == 200 and await resp.text() == "OK"
            state.worker_metrics[0].request("whoami", 200, "GET", 0.002)
            state.worker_metrics[1].request("whoami", 200, "GET", 0.003)
            async with http.get(base + "/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == PROMETHEUS_CONTENT_TYPE
                text = await resp.text()
            assert 'lightmesh_proxy_requests_total{service="whoami",code="200",method="GET"} 2' in text
            async with http.get(base + "/api/rawdata") as resp:
                data = await resp.json()
            assert data["config"]["hash"] == "abc" and data["workers"][0]["applied_version"] == 3
            async with http.get(base + "/nope") as resp:
                assert resp.status == 404
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_the_default_address_serves_ipv4_and_ipv6_probes():
    # the kubelet probes the pod's address of the cluster's family: "::" must answer both
    server = await AdminServer(State(), "::", 0).start()
    try:
        async with aiohttp.ClientSession() as http:
            for base in (f"http://127.0.0.1:{server.port}", f"http://[::1]:{server.port}"):
                async with http.get(base + "/live") as resp:
                    assert resp.status == 200, base
    finally:
        await server.stop()


@pytest.mark.asyncio
async def test_busy_port_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=f"admin port 127.0.0.1:{port}"):
            await AdminServer(State(), "127.0.0.1", port).start()


def test_merged_breaker_state_is_the_worst_not_the_largest_number():
    # open (1) is worse than recovering (2): a plain max would show the recovering worker
    snaps = [{proxy_metrics.PREFIX + "circuit_breaker_state": [["svc", state]]} for state in (2, 1, 0)]
    merged = proxy_metrics.merge(snaps)
    assert merged[proxy_metrics.PREFIX + "circuit_breaker_state"] == [["svc", proxy_metrics.CB_OPEN]]
    two = proxy_metrics.merge(snaps[::2])  # recovering and closed: recovering
    assert two[proxy_metrics.PREFIX + "circuit_breaker_state"] == [["svc", proxy_metrics.CB_RECOVERING]]


def test_a_worker_exiting_during_a_scrape_keeps_its_counters_in_that_scrape():
    # The scrape read the retired totals before waiting for the workers' snapshots: a worker that
    # exited meanwhile was in neither, and its counters dropped for that one scrape.
    import argparse

    from lightmesh.proxy import main as proxy_main
    from lightmesh.proxy.metrics import ProxyMetrics

    async def scenario():
        parser = argparse.ArgumentParser()
        proxy_main.configure(parser)
        sup = proxy_main.Supervisor(parser.parse_args(["--config", "unused.json", "--workers", "1"]))
        sup.stopping = True  # no restart of the worker that exits
        recorded = ProxyMetrics()
        for _ in range(7):
            recorded.request("svc", 200, "GET", 0.01)
        worker = sup.workers[0]
        worker.alive = True
        worker.last_metrics = proxy_main._worker_counts(recorded.snapshot())  # the previous scrape's

        class ExitsWhenAsked:  # the worker dies as the snapshot request reaches it
            def write(self, _data):
                asyncio.get_running_loop().create_task(sup._worker_exited(worker))

            def close(self):
                pass
        worker.writer = ExitsWhenAsked()
        during = await sup.metrics_text()
        line = 'lightmesh_proxy_requests_total{service="svc",code="200",method="GET"} 7'
        assert line in during, during
        assert not worker.alive and line in await sup.metrics_text()  # and in the retired totals after

    import asyncio
    asyncio.run(scenario())
