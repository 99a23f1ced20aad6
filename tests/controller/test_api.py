"""The controller API over a real socket: long-poll semantics, readiness, topology, nodes, metrics."""

import asyncio
import json

import aiohttp
import pytest

from lightmesh import wire
from lightmesh.config import EntryPoint, HTTPConfig, make_config
from lightmesh.controller.api import ConfigStore, ControllerAPI, etag_matches
from lightmesh.controller.metrics import ControllerMetrics


def config(version, port=5000):
    return make_config(version, HTTPConfig(entry_points=[EntryPoint(name=f"http-{port}", port=port)]))


class Result:
    def __init__(self, topology):
        self.topology = topology

    def topology_json(self):
        return json.dumps(self.topology)


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def started(**kwargs):
    store = ConfigStore()
    api = ControllerAPI(store, **kwargs)
    port = await api.start("127.0.0.1", 0)
    return store, api, f"http://127.0.0.1:{port}"


def test_etag_matching():
    assert etag_matches('"abc"', '"abc"')
    assert etag_matches('W/"abc", "x"', '"abc"')
    assert etag_matches("*", '"abc"')
    assert not etag_matches('"abd"', '"abc"')
    assert not etag_matches(None, '"abc"')


def test_503_before_config_then_200_then_304_then_200_on_change():
    async def scenario():
        ready = {"synced": False}
        store, api, url = await started(ready=lambda: ready["synced"])
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url + wire.CONFIG_PATH) as resp:
                    assert resp.status == 503
                async with http.get(url + wire.READINESS_PATH) as resp:
                    assert resp.status == 503
                async with http.get(url + wire.TOPOLOGY_PATH) as resp:
                    assert resp.status == 503
                first = config(1)
                store.publish(first, Result({"services": {}, "errors": []}))
                async with http.get(url + wire.READINESS_PATH) as resp:
                    assert resp.status == 503  # a config but the sources are not synced
                ready["synced"] = True
                async with http.get(url + wire.READINESS_PATH) as resp:
                    assert resp.status == 200 and await resp.json() is True
                # no If-None-Match: the config at once
                async with http.get(url + wire.CONFIG_PATH) as resp:
                    assert resp.status == 200
                    assert resp.headers["ETag"] == first.etag()
                    assert resp.headers[wire.HEADER_CONFIG_VERSION] == "1"
                    body = await resp.json()
                    assert body["hash"] == first.hash and body["version"] == 1
                # a proxy that reads other config schemas: told so, not sent one it would refuse
                for schemas, code in (("2", 200), ("1, 2", 200), ("1", 406), ("3", 406), ("", 406)):
                    async with http.get(url + wire.CONFIG_PATH, headers={wire.HEADER_CONFIG_SCHEMA: schemas,
                                                                         wire.HEADER_PROXY_NAME: "p"}) as resp:
                        assert resp.status == code, (schemas, resp.status)
                        if code == 406:
                            assert "serves proxy config schema 2; proxy p reads schema" in await resp.text()
                # wait=0: answers at once, 200 with the config (how the local harness reads it)
                async with http.get(url + wire.CONFIG_PATH + "?wait=0") as resp:
                    assert resp.status == 200 and (await resp.json())["hash"] == first.hash
                # same hash, short wait: 304 at the end of the wait
                headers = {"If-None-Match": first.etag()}
                async with http.get(url + wire.CONFIG_PATH + "?wait=0.2", headers=headers) as resp:
                    assert resp.status == 304 and resp.headers["ETag"] == first.etag()
                async with http.get(url + wire.CONFIG_PATH + "?wait=0", headers=headers) as resp:
                    assert resp.status == 304
                # a held poll returns 200 as soon as the hash changes
                poll = asyncio.create_task(http.get(url + wire.CONFIG_PATH + "?wait=20", headers=headers))
                await asyncio.sleep(0.2)
                assert not poll.done()  # held
                second = config(2, port=5001)
                store.publish(second)
                resp = await poll
                assert resp.status == 200 and resp.headers["ETag"] == second.etag()
                assert resp.headers[wire.HEADER_CONFIG_VERSION] == "2"
                assert (await resp.json())["hash"] == second.hash
                resp.release()
                # a stale ETag gets the current config at once
                async with http.get(url + wire.CONFIG_PATH, headers=headers) as resp:
                    assert resp.status == 200 and resp.headers["ETag"] == second.etag()
                async with http.get(url + wire.CONFIG_PATH + "?wait=abc") as resp:
                    assert resp.status == 400
                async with http.get(url + wire.TOPOLOGY_PATH) as resp:
                    assert resp.status == 200 and (await resp.json()) == {"services": {}, "errors": []}
        finally:
            await api.stop()

    run(scenario())


def test_stop_releases_held_polls():
    async def scenario():
        store, api, url = await started()
        store.publish(config(1))
        async with aiohttp.ClientSession() as http:
            poll = asyncio.create_task(http.get(url + wire.CONFIG_PATH, headers={"If-None-Match": config(1).etag()}))
            await asyncio.sleep(0.2)
            await api.stop()
            try:
                resp = await asyncio.wait_for(poll, 10)  # released well before LONG_POLL_SECONDS
                assert resp.status in (304, 503)
                resp.release()
            except aiohttp.ClientError:
                pass  # or the connection was closed: either way the proxy retries

    run(scenario())


def test_nodes_join_proxy_pods_and_reported_versions():
    pods = [{"metadata": {"name": "lightmesh-proxy-a", "namespace": "lightmesh", "labels": wire.PROXY_POD_LABELS},
             "spec": {"nodeName": "node-a"},
             "status": {"podIP": "10.0.0.5", "conditions": [{"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "lightmesh-proxy-b", "namespace": "lightmesh", "labels": wire.PROXY_POD_LABELS},
             "spec": {"nodeName": "node-b"}, "status": {"podIP": "10.0.0.6"}}]

    async def scenario():
        store, api, url = await started(proxy_pods=lambda: pods)
        try:
            store.publish(config(3))
            async with aiohttp.ClientSession() as http:
                # other-replica-proxy applied the same config from another replica, numbered 7 there
                # refused-proxy holds version 3 (its ETag is the next If-None-Match) but refused it:
                # its workers still run version 2's config, and it says so
                for name, applied in (("lightmesh-proxy-a", "3"), ("local-proxy", "2"), ("other-replica-proxy", "7"),
                                      ("refused-proxy", "2")):
                    headers = {wire.HEADER_PROXY_NAME: name, wire.HEADER_APPLIED_VERSION: applied}
                    if name != "local-proxy":
                        headers["If-None-Match"] = config(3).etag()
                    if name == "refused-proxy":
                        headers[wire.HEADER_APPLIED_HASH] = config(2, port=5001).hash
                    elif name == "lightmesh-proxy-a":
                        headers[wire.HEADER_APPLIED_HASH] = config(3).hash
                    async with http.get(url + wire.CONFIG_PATH + "?wait=0", headers=headers) as resp:
                        assert resp.status == (304 if "If-None-Match" in headers else 200)
                async with http.get(url + wire.NODES_PATH) as resp:
                    nodes = {n["name"]: n for n in await resp.json()}
        finally:
            await api.stop()
        assert nodes["lightmesh-proxy-a"]["ip"] == "10.0.0.5" and nodes["lightmesh-proxy-a"]["ready"] is True
        assert nodes["lightmesh-proxy-a"]["applied_version"] == 3 and nodes["lightmesh-proxy-a"]["up_to_date"]
        assert nodes["lightmesh-proxy-a"]["config_hash"] == config(3).hash
        assert nodes["local-proxy"]["config_hash"] is None
        assert nodes["lightmesh-proxy-b"]["ready"] is False and nodes["lightmesh-proxy-b"]["applied_version"] is None
        assert nodes["local-proxy"]["applied_version"] == 2 and not nodes["local-proxy"]["up_to_date"]
        assert nodes["local-proxy"]["ip"] == "127.0.0.1"
        assert nodes["other-replica-proxy"]["applied_version"] == 7 and nodes["other-replica-proxy"]["up_to_date"]
        assert nodes["refused-proxy"]["config_hash"] == config(3).hash and not nodes["refused-proxy"]["up_to_date"]
        assert nodes["refused-proxy"]["applied_hash"] == config(2, port=5001).hash

    run(scenario())


def test_metrics_endpoint():
    async def scenario():
        metrics = ControllerMetrics()
        metrics["config_version"].set(7)
        store, api, url = await started(metrics=metrics)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/metrics") as resp:
                    assert resp.status == 200
                    assert "lightmesh_controller_config_version 7.0" in await resp.text()
        finally:
            await api.stop()

    run(scenario())


@pytest.mark.parametrize("wait", ["0", "-5", "1e9"])
def test_wait_is_clamped(wait):
    async def scenario():
        store, api, url = await started()
        store.publish(config(1))
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url + wire.CONFIG_PATH + f"?wait={wait}") as resp:
                    assert resp.status == 200
        finally:
            await api.stop()

    run(scenario())


def test_nodes_forget_proxies_that_stopped_polling_and_have_no_pod():
    # After a DaemonSet rollout the old proxies' names stayed listed (not up to date) for good.
    from lightmesh.controller.api import STALE_PROXY_SECONDS

    async def scenario():
        store, api, url = await started(proxy_pods=lambda: [])
        try:
            store.publish(config(1))
            store.record_proxy("gone-proxy", "1", "10.0.0.9")
            store.record_proxy("live-proxy", "1", "10.0.0.8")
            store.proxies["gone-proxy"]["last_seen"] -= STALE_PROXY_SECONDS + 1
            async with aiohttp.ClientSession() as http:
                async with http.get(url + wire.NODES_PATH) as resp:
                    names = [n["name"] for n in await resp.json()]
        finally:
            await api.stop()
        assert names == ["live-proxy"] and "gone-proxy" not in store.proxies

    run(scenario())


def test_made_up_proxy_names_cannot_keep_real_proxies_out_of_the_table(monkeypatch):
    # A full table dropped every new name: 10,000 made-up names, polled again every 90 s, kept the
    # real proxies out of /api/status/nodes for good.
    from lightmesh.controller import api as api_mod

    monkeypatch.setattr(api_mod, "MAX_TRACKED_PROXIES", 50)
    store = ConfigStore()
    for i in range(50):
        store.record_proxy(f"fake-{i}", "1", "10.0.0.9")
    store.record_proxy("node-1-proxy", "7", "10.0.0.1")
    assert store.proxies["node-1-proxy"]["applied_version"] == 7 and len(store.proxies) == 50
    assert "fake-0" not in store.proxies  # the one seen longest ago made room
    # a proxy that keeps polling stays while new names come and go
    for i in range(50, 200):
        store.record_proxy(f"fake-{i}", "1", "10.0.0.9")
        if i % 40 == 0:
            store.record_proxy("node-1-proxy", "8", "10.0.0.1")
    assert store.proxies["node-1-proxy"]["applied_version"] == 8 and len(store.proxies) == 50


def test_live_answers_whatever_the_state():
    # The liveness probe was a TCP connect, which a hung event loop still accepts (the kernel does).
    # /live answers only when the loop runs, and does so syncing, unready, without config or stopping.
    async def scenario():
        store, api, url = await started(ready=lambda: False)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(url + "/live") as resp:
                    assert resp.status == 200 and await resp.text() == "ok"
                async with http.get(url + wire.READINESS_PATH) as resp:
                    assert resp.status == 503
                store.publish(config(1))
                async with http.get(url + "/live") as resp:
                    assert resp.status == 200
        finally:
            await api.stop()

    run(scenario())


async def _until_held(api, n: int, timeout: float = 5.0) -> None:
    """Until ``n`` config polls are held (they reach the server some time after they are sent)."""
    for _ in range(int(timeout / 0.02)):
        if sum(api._held.values()) == n:
            return
        await asyncio.sleep(0.02)
    assert sum(api._held.values()) == n, api._held


def test_held_polls_per_client_are_capped_and_the_rest_answered_at_once(monkeypatch):
    import lightmesh.controller.api as api_module

    monkeypatch.setattr(api_module, "MAX_HELD_POLLS_PER_CLIENT", 3, raising=False)

    async def scenario():
        store, api, url = await started()
        first = config(1)
        store.publish(first)
        held = {"If-None-Match": first.etag()}
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
                polls = [asyncio.create_task(http.get(url + wire.CONFIG_PATH + "?wait=20", headers=held))
                         for _ in range(3)]
                await _until_held(api, 3)  # (not a fixed sleep: on a slow host they may not be there yet)
                assert not any(p.done() for p in polls)  # up to the cap: held
                # over the cap: answered at once, never an error: 304 when up to date ...
                started_at = asyncio.get_running_loop().time()
                async with asyncio.timeout(3):
                    async with http.get(url + wire.CONFIG_PATH + "?wait=20", headers=held) as resp:
                        assert resp.status == 304 and resp.headers["ETag"] == first.etag()
                assert asyncio.get_running_loop().time() - started_at < 1.0
                # ... and the config when the client's is stale
                async with http.get(url + wire.CONFIG_PATH + "?wait=20", headers={"If-None-Match": '"old"'}) as resp:
                    assert resp.status == 200 and (await resp.json())["hash"] == first.hash
                # the held ones still get the next config
                second = config(2, port=5001)
                store.publish(second)
                for poll in polls:
                    resp = await asyncio.wait_for(poll, 5)
                    assert resp.status == 200 and resp.headers["ETag"] == second.etag()
                    resp.release()
                # released: a poll is held again
                poll = asyncio.create_task(http.get(url + wire.CONFIG_PATH + "?wait=20",
                                                    headers={"If-None-Match": second.etag()}))
                await _until_held(api, 1)
                assert not poll.done()
                store.publish(config(3, port=5002))
                (await asyncio.wait_for(poll, 5)).release()
                assert api._held == {}
        finally:
            await api.stop()

    run(scenario())


def test_a_poll_whose_client_went_away_ends_and_frees_its_place(monkeypatch):
    # aiohttp does not end a handler when its client disconnects, unless asked: abandoned polls
    # (a proxy re-asks on every applied version, or restarts) stayed held for up to 30 s, each
    # taking memory and a place under the per-client cap, so live polls were no longer held.
    import lightmesh.controller.api as api_module

    monkeypatch.setattr(api_module, "MAX_HELD_POLLS_PER_CLIENT", 3, raising=False)

    async def scenario():
        store, api, url = await started()
        first = config(1)
        store.publish(first)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        request = (f"GET {wire.CONFIG_PATH}?wait=20 HTTP/1.1\r\nHost: x\r\n"
                   f"If-None-Match: {first.etag()}\r\n\r\n").encode()
        try:
            writers = []
            for _ in range(3):
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
                writer.write(request)
                writers.append(writer)
            for _ in range(30):
                if sum(api._held.values()) == 3:
                    break
                await asyncio.sleep(0.05)
            assert sum(api._held.values()) == 3
            for writer in writers:  # the clients go away
                writer.close()
            for _ in range(40):
                if not api._held:
                    break
                await asyncio.sleep(0.05)
            assert api._held == {}
            # a live poll is held again, not answered at once
            async with aiohttp.ClientSession() as http:
                poll = asyncio.create_task(http.get(url + wire.CONFIG_PATH + "?wait=20",
                                                    headers={"If-None-Match": first.etag()}))
                await asyncio.sleep(0.3)
                assert not poll.done()
                store.publish(config(2, port=5001))
                resp = await asyncio.wait_for(poll, 5)
                assert resp.status == 200
                resp.release()
        finally:
            await api.stop()

    run(scenario())
