"""The kmock shim (tests/controller/kube.py) does what the controller tests rely on."""

import asyncio

import httpx2 as httpx
import pytest

from lightmesh.controller.sources import ApiError, KubeAPI

from .kube import cluster, parse_selector


def svc(name, ns="a", labels=None):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
            "spec": {"ports": [{"port": 80}]}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 60))


async def collect(api, path, rv, n, timeout=10):
    events = []
    async def go():
        async for event in api.watch(path, rv, timeout_seconds=30):
            events.append(event)
            if len(events) >= n:
                return
    await asyncio.wait_for(go(), timeout)
    return events


def test_selector_forms():
    labels = {"app": "x", "tier": "web"}
    assert parse_selector("app=x")(labels) and parse_selector("app==x,tier")(labels)
    assert not parse_selector("app!=x")(labels) and parse_selector("!gone")(labels)
    assert not parse_selector("gone")(labels) and parse_selector("")(labels)


def test_stamping_lists_selectors_and_conflicts():
    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            try:
                a = await api.request("POST", "/api/v1/namespaces/a/services", body=svc("one", labels={"app": "x"}))
                b = await api.request("POST", "/api/v1/namespaces/a/services", body=svc("two"))
                assert a["metadata"]["resourceVersion"] == "1" and b["metadata"]["resourceVersion"] == "2"
                assert a["metadata"]["uid"] and a["metadata"]["creationTimestamp"]
                items, rv = await api.list("/api/v1/services")
                assert rv == "2" and {i["metadata"]["name"] for i in items} == {"one", "two"}
                body = await api.get("/api/v1/services", labelSelector="app=x")
                assert body["kind"] == "ServiceList" and [i["metadata"]["name"] for i in body["items"]] == ["one"]
                with pytest.raises(ApiError) as dup:
                    await api.request("POST", "/api/v1/namespaces/a/services", body=svc("one"))
                assert dup.value.status == 409
                patched = await api.request("PATCH", "/api/v1/namespaces/a/services/one",
                                            body={"metadata": {"resourceVersion": "1", "labels": {"app": None}}},
                                            content_type="application/merge-patch+json")
                assert patched["metadata"]["resourceVersion"] == "3" and patched["metadata"]["labels"] == {}
                with pytest.raises(ApiError) as stale:
                    await api.request("PATCH", "/api/v1/namespaces/a/services/one",
                                      body={"metadata": {"resourceVersion": "1"}},
                                      content_type="application/merge-patch+json")
                assert stale.value.status == 409
                kube.fail_next("GET", "/services/two", 500)
                with pytest.raises(ApiError) as scripted:
                    await api.get("/api/v1/namespaces/a/services/two")
                assert scripted.value.status == 500
                assert (await api.get("/api/v1/namespaces/a/services/two"))["metadata"]["name"] == "two"
                assert (await api.get("/version/"))["gitVersion"].startswith("v1.")
            finally:
                await api.close()

    run(scenario())


def test_watch_resume_gone_close_and_variants():
    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            try:
                await api.request("POST", "/api/v1/namespaces/a/services", body=svc("one"))
                await api.request("POST", "/api/v1/namespaces/a/services", body=svc("two"))
                await api.request("DELETE", "/api/v1/namespaces/a/services/one")
                # from scratch: the current objects as ADDED
                events = await collect(api, "/api/v1/services", None, 1)
                assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [("ADDED", "two")]
                # from resourceVersion 1: only what happened after it, with increasing versions
                events = await collect(api, "/api/v1/services", "1", 2)
                assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
                    ("ADDED", "two"), ("DELETED", "one")]
                assert [int(e["object"]["metadata"]["resourceVersion"]) for e in events] == [2, 3]
                # compaction: a resume from before it is 410 Gone
                kube.compact()
                events = await collect(api, "/api/v1/services", "2", 1)
                assert events[0]["type"] == "ERROR" and events[0]["object"]["code"] == 410
                # close_watches ends open streams; timeoutSeconds ends them too
                ended = asyncio.Event()

                async def watch_until_closed():
                    async for _ in api.watch("/api/v1/services", "3", timeout_seconds=300):
                        pass
                    ended.set()

                task = asyncio.create_task(watch_until_closed())
                for _ in range(500):  # until our stream is registered and closed (no sleep-and-hope)
                    kube.close_watches()
                    if ended.is_set():
                        break
                    await asyncio.sleep(0.02)
                assert ended.is_set()
                await task
                # watch=True and watch=1 are watches (kubernetes_asyncio sends the former)
                for flag in ("True", "1"):
                    async with httpx.AsyncClient(base_url=str(kube.url)) as raw:
                        async with raw.stream("GET", "/api/v1/services",
                                              params={"watch": flag, "timeoutSeconds": "1"}) as resp:
                            lines = [line async for line in resp.aiter_lines() if line.strip()]
                    assert lines and '"type": "ADDED"' in lines[0], flag
            finally:
                await api.close()

    run(scenario())
