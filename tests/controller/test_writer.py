"""Shadow Service writers: the local store (loopback ClusterIPs, persistence) and the Kubernetes writer."""

from __future__ import annotations

import asyncio
import ipaddress
import json

from lightmesh import wire
from lightmesh.controller.sources import KubeAPI
from lightmesh.controller.writer import KubeShadowWriter, LocalShadowStore, managed_part, subset

from .kube import cluster

MESH = "lightmesh"


def desired(name, target=10000, port=80, svc=None):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": MESH,
                         "labels": {wire.LABEL_SHADOW_SERVICE_NAME: svc or name,
                                    wire.LABEL_SHADOW_SERVICE_NAMESPACE: "shop",
                                    wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER}},
            "spec": {"type": "ClusterIP", "selector": dict(wire.PROXY_POD_LABELS), "internalTrafficPolicy": "Local",
                     "ports": [{"name": "main", "port": port, "protocol": "TCP", "targetPort": target}]}}


def test_subset_ignores_what_the_server_adds():
    want = desired("a")
    have = json.loads(json.dumps(want))
    have["metadata"].update(uid="u", resourceVersion="3", managedFields=[{}])
    have["spec"].update(clusterIP="10.0.0.1", sessionAffinity="None")
    have["spec"]["ports"][0]["nodePort"] = None
    assert subset(managed_part(want), have)
    have["spec"]["ports"][0]["targetPort"] = 10001
    assert not subset(managed_part(want), have)
    assert not subset({"spec": {"ports": [{}]}}, {"spec": {"ports": [{}, {}]}})  # a port more is a difference


def test_dual_stack_preference_patches_old_shadows_once():
    # Shadows written before ipFamilyPolicy was set read back SingleStack: one patch upgrades them.
    # Afterwards a single-stack cluster keeps PreferDualStack with one family: no patch loop.
    want = desired("a")
    want["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    old = json.loads(json.dumps(want))
    old["spec"].update(ipFamilyPolicy="SingleStack", ipFamilies=["IPv4"], clusterIPs=["10.0.0.1"])
    assert not subset(managed_part(want), old)
    after = json.loads(json.dumps(old))
    after["spec"]["ipFamilyPolicy"] = "PreferDualStack"
    assert subset(managed_part(want), after)


def test_local_store_allocates_stable_loopback_ips_and_persists(tmp_path):
    state = tmp_path / ".lightmesh-shadows.json"
    store = LocalShadowStore(state, MESH)
    names = [f"lm-svc-{i}" for i in range(300)]
    assert store.apply([desired(n) for n in names])
    ips = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in store.list()}
    network = ipaddress.ip_network("127.1.0.0/16")
    assert len(set(ips.values())) == 300
    for ip in ips.values():
        address = ipaddress.ip_address(ip)
        assert address in network and address.packed[-1] not in (0, 1, 255)
    assert all(s["spec"]["clusterIPs"] == [s["spec"]["clusterIP"]] for s in store.list())
    assert not store.apply([desired(n) for n in names])  # same desired: no change, no write
    # a changed port keeps the address; removal drops; the rest keep theirs
    changed = [desired(n, target=10001 if n == "lm-svc-0" else 10000) for n in names[:-1]]
    assert store.apply(changed)
    after = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in store.list()}
    assert after == {n: ips[n] for n in names[:-1]}
    store.remember_config(7, "abc")
    # a new store on the same file (a restarted controller) recovers shadows, addresses and version
    again = LocalShadowStore(state, MESH)
    assert {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in again.list()} == after
    assert [s for s in again.list() if s["metadata"]["name"] == "lm-svc-0"][0]["spec"]["ports"][0]["targetPort"] \
        == 10001
    assert again.last_config == {"version": 7, "hash": "abc"}
    # the address is a function of the name: the same name gets the same address in a fresh store
    fresh = LocalShadowStore(tmp_path / "other.json", MESH)
    fresh.apply([desired("lm-svc-5")])
    assert fresh.list()[0]["spec"]["clusterIP"] == ips["lm-svc-5"]


def test_local_store_survives_a_corrupt_state_file(tmp_path):
    state = tmp_path / ".lightmesh-shadows.json"
    state.write_text("{garbage")
    store = LocalShadowStore(state, MESH)
    assert store.list() == [] and store.last_config == {}
    assert store.apply([desired("lm-a")])
    assert json.loads(state.read_text())["shadows"][0]["metadata"]["name"] == "lm-a"
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_kube_writer_never_takes_over_a_users_service():
    async def scenario():
        async with cluster() as kube:
            user = kube.put_object({"apiVersion": "v1", "kind": "Service",
                                    "metadata": {"name": "lm-clash", "namespace": MESH},
                                    "spec": {"ports": [{"port": 1}]}})
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            try:
                writer = KubeShadowWriter(api, MESH)
                failures = await writer.apply([desired("lm-clash"), desired("lm-ok")], existing=[])
                assert failures == 1
                assert kube.get_object("v1", "services", MESH, "lm-clash") == user
                assert kube.get_object("v1", "services", MESH, "lm-ok") is not None
                # an orphan is deleted only when it carries our label (the cache gives only those)
                ok = kube.get_object("v1", "services", MESH, "lm-ok")
                assert await writer.apply([], existing=[ok, user]) == 0
                assert kube.get_object("v1", "services", MESH, "lm-ok") is None
                assert kube.get_object("v1", "services", MESH, "lm-clash") == user
                # a create racing a cache that lags: 409, then it is ours, so it is patched
                await writer.apply([desired("lm-race")], existing=[])
                assert await writer.apply([desired("lm-race", target=10009)], existing=[]) == 0
                got = kube.get_object("v1", "services", MESH, "lm-race")
                assert got["spec"]["ports"][0]["targetPort"] == 10009
                # persistent conflicts give up after a few tries and report a failure
                kube.fail_next("PATCH", "/services/lm-race", 409, "Conflict", count=10)
                assert await writer.apply([desired("lm-race", target=10010)], existing=[got]) == 1
            finally:
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_writer_that_stops_being_leader_sends_no_more_of_its_batch():
    # Leadership was checked once per batch: a leader that stepped down (a slow API server, the very
    # case) went on sending the rest of its creates after another replica had taken over.
    from lightmesh.controller.writer import WRITE_CONCURRENCY

    sent: list[str] = []

    class SlowAPI:
        async def request(self, method, path, **kwargs):
            sent.append(method)
            await asyncio.sleep(0.02)
            return {}

    async def scenario():
        writer = KubeShadowWriter(SlowAPI(), MESH)
        leader = {"is": True}

        async def step_down():
            await asyncio.sleep(0.01)  # while the first requests are in flight
            leader["is"] = False
        stepping = asyncio.create_task(step_down())
        failures = await writer.apply([desired(f"lm-{i}") for i in range(40)], existing=[],
                                      still_leader=lambda: leader["is"])
        await stepping
        return failures

    failures = asyncio.run(asyncio.wait_for(scenario(), 30))
    assert len(sent) <= WRITE_CONCURRENCY, len(sent)  # the ones already under way, no more
    assert failures == 40 - len(sent)  # not written: the batch is not clean (the new leader writes)


def test_a_hand_edited_state_file_never_crashes_the_store_nor_hides_a_service(tmp_path, caplog):
    state = tmp_path / "state.json"
    for content in ("[]", "null", '"x"', '{"shadows": "x"}', '{"shadows": [{"metadata": "x"}, {"spec": "x"}, 7]}'):
        state.write_text(content)
        assert LocalShadowStore(state).list() == []  # it starts afresh, it does not crash
    # an address that is not one of ours (not an IP, or outside 127.1.0.0/16): a new one, not a
    # shadow nothing can serve (its Service silently out of the mesh, for good)
    good = {**desired("lm-good"), "spec": {**desired("lm-good")["spec"], "clusterIP": "127.1.0.9"}}
    bad = {**desired("lm-bad"), "spec": {**desired("lm-bad")["spec"], "clusterIP": "not-an-ip"}}
    away = {**desired("lm-away"), "spec": {**desired("lm-away")["spec"], "clusterIP": "10.9.9.9"}}
    state.write_text(json.dumps({"shadows": [good, bad, away]}))
    with caplog.at_level("WARNING"):
        store = LocalShadowStore(state)
    assert [s["metadata"]["name"] for s in store.list()] == ["lm-good"]
    assert "not-an-ip" in caplog.text and "10.9.9.9" in caplog.text
    store.apply([desired("lm-good"), desired("lm-bad"), desired("lm-away")])
    addresses = {s["metadata"]["name"]: s["spec"]["clusterIP"] for s in store.list()}
    assert addresses["lm-good"] == "127.1.0.9"
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("127.1.0.0/16") for a in addresses.values())
    # two shadows with one address (their listeners would clash), or one the allocator never gives
    twin = {**desired("lm-twin"), "spec": {**desired("lm-twin")["spec"], "clusterIP": "127.1.0.9"}}
    edge = {**desired("lm-edge"), "spec": {**desired("lm-edge")["spec"], "clusterIP": "127.1.0.0"}}
    state.write_text(json.dumps({"shadows": [good, twin, edge]}))
    store = LocalShadowStore(state)
    assert [s["metadata"]["name"] for s in store.list()] == ["lm-good"]
    store.apply([desired("lm-good"), desired("lm-twin"), desired("lm-edge")])
    addresses = [s["spec"]["clusterIP"] for s in store.list()]
    assert len(set(addresses)) == 3 and "127.1.0.0" not in addresses
