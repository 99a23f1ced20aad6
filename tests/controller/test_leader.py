"""Lease leader election against the Kubernetes API fake, and two controllers of which one writes."""

from __future__ import annotations

import asyncio
import contextlib
import time

from lightmesh import wire
from lightmesh.controller.api import ConfigStore
from lightmesh.controller.leader import LeaderElector
from lightmesh.controller.metrics import ControllerMetrics
from lightmesh.controller.model import Settings
from lightmesh.controller.reconcile import Controller
from lightmesh.controller.shadow import shadow_name
from lightmesh.controller.sources import KubeAPI, KubeSource, ObjectFilter
from lightmesh.controller.writer import KubeShadowWriter

from .kube import cluster

MESH = "lightmesh"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


async def until(check, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def lease(kube):
    return kube.get_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME)


def test_acquire_renew_expire_takeover_with_an_observed_clock():
    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            clock = Clock()
            a = LeaderElector(api, MESH, "a", lease_seconds=15, clock=clock)
            b = LeaderElector(api, MESH, "b", lease_seconds=15, clock=clock)
            try:
                assert await a.try_acquire_or_renew()  # creates the Lease
                assert lease(kube)["spec"]["holderIdentity"] == "a"
                assert not await b.try_acquire_or_renew()  # held, and b just started observing
                clock.now += 10
                assert await a.try_acquire_or_renew()  # renewed: a new renewTime
                clock.now += 10
                assert not await b.try_acquire_or_renew()  # b saw the renewal 10 s ago: not expired
                # a stops renewing (crashed): after a full lease duration without change, b takes over
                clock.now += 15
                assert await b.try_acquire_or_renew()
                spec = lease(kube)["spec"]
                assert spec["holderIdentity"] == "b" and spec["leaseTransitions"] == 1
                assert spec["leaseDurationSeconds"] == 15
                # a comes back: it sees b holding and does not fight
                assert not await a.try_acquire_or_renew()
            finally:
                await api.close()

    run(scenario())


def test_only_one_wins_a_race_and_release_hands_over_at_once():
    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            clock = Clock()
            electors = [LeaderElector(api, MESH, f"r{i}", lease_seconds=15, clock=clock) for i in range(4)]
            try:
                # all create at once: one POST wins, the rest get 409
                results = await asyncio.gather(*(e.try_acquire_or_renew() for e in electors))
                assert results.count(True) == 1
                holder = electors[results.index(True)]
                # all observe, the lease "expires", all try at once: optimistic concurrency lets one win
                others = [e for e in electors if e is not holder]
                await asyncio.gather(*(e.try_acquire_or_renew() for e in others))
                clock.now += 16
                results = await asyncio.gather(*(e.try_acquire_or_renew() for e in others))
                assert results.count(True) == 1
                assert lease(kube)["spec"]["holderIdentity"] == others[results.index(True)].identity
            finally:
                await api.close()

    run(scenario())


def test_run_loops_one_leader_then_handover_on_shutdown():
    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            changes: list[tuple[str, bool]] = []
            metrics = {name: ControllerMetrics() for name in ("a", "b")}
            electors = {name: LeaderElector(api, MESH, name, lease_seconds=15, renew_seconds=0.1, retry_seconds=0.05,
                                            metrics=metrics[name],
                                            on_change=lambda leader, n=name: changes.append((n, leader)))
                        for name in ("a", "b")}
            tasks = {name: asyncio.create_task(e.run()) for name, e in electors.items()}
            try:
                await until(lambda: any(e.is_leader for e in electors.values()), "a leader")
                await asyncio.sleep(0.3)  # several renew/retry rounds: still exactly one
                leaders = [n for n, e in electors.items() if e.is_leader]
                assert len(leaders) == 1
                first = leaders[0]
                other = "b" if first == "a" else "a"
                assert metrics[first].registry.get_sample_value("lightmesh_controller_is_leader") == 1
                assert metrics[other].registry.get_sample_value("lightmesh_controller_is_leader") == 0
                # the leader shuts down: it releases the Lease, the other takes over without waiting 15 s
                tasks[first].cancel()
                await asyncio.gather(tasks[first], return_exceptions=True)
                assert not electors[first].is_leader
                await until(lambda: electors[other].is_leader, "takeover after release", timeout=5)
                assert lease(kube)["spec"]["holderIdentity"] == other
                assert (first, True) in changes and (first, False) in changes and (other, True) in changes
            finally:
                for task in tasks.values():
                    task.cancel()
                await asyncio.gather(*tasks.values(), return_exceptions=True)
                await api.close()

    run(scenario())


@contextlib.asynccontextmanager
async def replica(kube, identity):
    api = KubeAPI.from_kubeconfig(server=str(kube.url))
    metrics = ControllerMetrics()
    source = KubeSource(api, ObjectFilter.create(MESH), metrics=metrics)
    elector = LeaderElector(api, MESH, identity, lease_seconds=15, renew_seconds=0.1, retry_seconds=0.05,
                            metrics=metrics)
    controller = Controller(Settings(mesh_namespace=MESH), source, store=ConfigStore(), metrics=metrics,
                            kube_writer=KubeShadowWriter(api, MESH, metrics), elector=elector)
    elector.on_change = controller.leadership_changed
    task = asyncio.create_task(controller.run())
    try:
        yield controller, task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await api.close()


def writes(controller) -> float:
    registry = controller.metrics.registry
    return sum(registry.get_sample_value("lightmesh_controller_shadow_service_writes_total", {"action": a}) or 0
               for a in ("create", "update", "delete"))


def test_two_controllers_one_writes_both_serve():
    def service(name, port):
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
                "spec": {"selector": {"app": name}, "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}}

    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web", 80))
            async with replica(kube, "one") as (one, one_task), replica(kube, "two") as (two, two_task):
                await until(lambda: one.ready() and two.ready(), "both ready")
                await until(lambda: shadow_name("shop", "web") in {
                    s["metadata"]["name"] for s in kube.list_objects("v1", "services", MESH)}, "shadow written")
                leader, follower = (one, two) if one.elector.is_leader else (two, one)
                assert not follower.elector.is_leader
                kube.put_object(service("api", 8080))
                await until(lambda: shadow_name("shop", "api") in {
                    s["metadata"]["name"] for s in kube.list_objects("v1", "services", MESH)}, "second shadow")
                # both serve the same config (same hash) from their own caches; only the leader wrote
                await until(lambda: one.config.hash == two.config.hash, "same config on both")
                assert writes(leader) == 2 and writes(follower) == 0
                # the leader goes away (releasing the Lease): the follower takes over and writes
                leader_task = one_task if leader is one else two_task
                leader_task.cancel()
                await asyncio.gather(leader_task, return_exceptions=True)
                await until(lambda: follower.elector.is_leader, "takeover", timeout=10)
                kube.put_object(service("db", 5432))
                await until(lambda: writes(follower) == 1, "the new leader writes")
                assert follower.metrics.registry.get_sample_value("lightmesh_controller_is_leader") == 1

    run(scenario())


def test_a_leader_whose_renewal_hangs_steps_down_before_another_may_take_over():
    # The renewal's GET and PATCH each had the whole HTTP timeout (10 s) while is_leader stayed true:
    # with a slow API server, the other replica took the Lease and both wrote for seconds.
    async def scenario():
        async with cluster() as kube:
            apis = [KubeAPI.from_kubeconfig(server=str(kube.url)) for _ in range(2)]
            a = LeaderElector(apis[0], MESH, "a", lease_seconds=2, renew_seconds=0.5, retry_seconds=0.2)
            b = LeaderElector(apis[1], MESH, "b", lease_seconds=2, renew_seconds=0.5, retry_seconds=0.2)
            tasks = [asyncio.create_task(a.run())]
            try:
                await until(lambda: a.is_leader, "a leads")
                tasks.append(asyncio.create_task(b.run()))
                await asyncio.sleep(0.5)
                original = kube._handle

                async def slow(request):  # a's renewals are stuck in the API server (under the HTTP timeout)
                    if str(getattr(request.method, "value", request.method)).upper() == "PATCH" and \
                            ((request.data or {}).get("spec") or {}).get("holderIdentity") == "a":
                        await asyncio.sleep(6)
                    return await original(request)

                kube._handle = slow
                both = 0
                deadline = time.monotonic() + 5
                while time.monotonic() < deadline:
                    both += a.is_leader and b.is_leader
                    await asyncio.sleep(0.02)
                assert both == 0
                assert b.is_leader and not a.is_leader  # a stepped down; b took the expired Lease
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                for api in apis:
                    await api.close()

    run(scenario())


def test_a_renew_deadline_at_or_past_the_lease_duration_is_refused():
    import pytest

    with pytest.raises(ValueError, match="renew deadline"):
        LeaderElector(None, MESH, "a", lease_seconds=15, renew_deadline_seconds=15)


def test_identity_is_the_pod_name_and_a_suffix_of_each_process_and_a_restart_takes_over(monkeypatch):
    # The identity was the pod name alone: a second process with the same one (a container restarted
    # in its pod, two controllers without POD_NAME on one host) renewed "its" Lease: two leaders.
    monkeypatch.setenv(wire.ENV_POD_NAME, "controller-0")

    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            clock = Clock()
            try:
                first = LeaderElector(api, MESH, lease_seconds=15, clock=clock)
                assert first.identity.startswith("controller-0_") and len(first.identity) > len("controller-0_")
                assert await first.try_acquire_or_renew()
                # the same pod's next process (the first crashed): another candidate, not the holder
                second = LeaderElector(api, MESH, lease_seconds=15, clock=clock)
                assert second.identity.startswith("controller-0_") and second.identity != first.identity
                assert not await second.try_acquire_or_renew()
                clock.now += 10
                assert not await second.try_acquire_or_renew()
                assert await first.try_acquire_or_renew()  # the first, still alive, keeps it
                assert not await second.try_acquire_or_renew()
                clock.now += 15  # the first stopped renewing: the Lease expires, the second takes over
                assert await second.try_acquire_or_renew()
                assert lease(kube)["spec"]["holderIdentity"] == second.identity
                # a release (SIGTERM) hands over at once to the next process of the same pod
                second.is_leader = True
                await second._release()
                third = LeaderElector(api, MESH, lease_seconds=15, clock=clock)
                assert await third.try_acquire_or_renew()
                assert lease(kube)["spec"]["holderIdentity"] == third.identity
            finally:
                await api.close()

    run(scenario())


def _put_lease(kube, holder, annotation=None):
    from lightmesh.controller.leader import micro_time

    SETTINGS_ANNOTATION = "lightmesh.io/settings"

    meta = {"name": wire.LEASE_NAME, "namespace": MESH}
    if annotation is not None:
        meta["annotations"] = {SETTINGS_ANNOTATION: annotation}
    kube.put_object({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta,
                     "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": micro_time(),
                              "acquireTime": micro_time(), "leaseTransitions": 0}})


def test_the_leader_records_its_settings_and_followers_read_only_the_holders_record(caplog):
    import json

    SETTINGS_ANNOTATION = "lightmesh.io/settings"
    ours = Settings(http_port_base=6000).shaping_record()

    async def scenario():
        async with cluster() as kube:
            def annotation():
                return ((lease(kube) or {}).get("metadata", {}).get("annotations") or {}).get(SETTINGS_ANNOTATION)

            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            clock = Clock()
            seen = []
            try:
                follower = LeaderElector(api, MESH, "f", lease_seconds=15, clock=clock, settings_record=ours,
                                         on_leader_settings=seen.append)
                # a malformed record: not used, logged once however many rounds read it
                _put_lease(kube, "other", "{not json")
                caplog.clear()
                for _ in range(3):
                    assert not await follower.try_acquire_or_renew()
                assert follower.leader_settings is None and seen == []
                assert len([r for r in caplog.records if SETTINGS_ANNOTATION in r.getMessage()]) == 1
                # the holder's record (extra fields pass through: the controller skips them)
                theirs = {"http_port_base": 7000, "from_the_future": True}
                kube.patch_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME, {"metadata": {
                    "annotations": {SETTINGS_ANNOTATION: json.dumps({"holder": "other", "settings": theirs})}}})
                assert not await follower.try_acquire_or_renew()
                assert follower.leader_settings == theirs and seen == [theirs]
                assert not await follower.try_acquire_or_renew()
                assert seen == [theirs]  # told once per change
                # a record an earlier holder wrote (the holder now is an older release that writes none)
                kube.patch_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME,
                                  {"spec": {"holderIdentity": "older-release"}})
                assert not await follower.try_acquire_or_renew()
                assert follower.leader_settings is None and seen == [theirs, None]
                # taking over: our own record, written with the Lease; no leader's settings to follow
                clock.now += 16
                assert await follower.try_acquire_or_renew()
                assert json.loads(annotation()) == {"holder": "f", "settings": ours}
                # someone overwrote it: the next renewal puts ours back
                kube.patch_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME,
                                  {"metadata": {"annotations": {SETTINGS_ANNOTATION: "x"}}})
                assert await follower.try_acquire_or_renew()
                assert json.loads(annotation()) == {"holder": "f", "settings": ours}
                # released: no holder, no record
                follower.is_leader = True
                await follower._release()
                assert annotation() is None and not lease(kube)["spec"].get("holderIdentity")
                # a new Lease is created with the record
                await api.request("DELETE", LeaderElector(api, MESH, "x").path)
                creator = LeaderElector(api, MESH, "c", lease_seconds=15, clock=clock, settings_record=ours)
                assert await creator.try_acquire_or_renew()
                assert json.loads(annotation()) == {"holder": "c", "settings": ours}
            finally:
                await api.close()

    run(scenario())


def test_a_free_lease_keeps_the_last_record_and_a_resigned_elector_only_reads():
    # A candidate that lost the race for a just-released Lease (409) forgot the leader's settings
    # and built with its own until its next read; and a resigned replica (--shutdown-delay) stopped
    # reading the Lease altogether.
    import json

    from lightmesh.controller.leader import micro_time

    old = Settings().shaping_record()

    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            clock = Clock()
            try:
                _put_lease(kube, "o1", json.dumps({"holder": "o1", "settings": old}))
                candidate = LeaderElector(api, MESH, "n", lease_seconds=15, clock=clock,
                                          settings_record=Settings(http_port_base=6000).shaping_record())
                assert not await candidate.try_acquire_or_renew() and candidate.leader_settings == old
                # o1 releases; another replica's PATCH lands first: ours gets 409
                kube.patch_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME,
                                  {"metadata": {"annotations": {"lightmesh.io/settings": None}},
                                   "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None}})
                kube.fail_next("PATCH", "leases", 409)
                assert not await candidate.try_acquire_or_renew()
                assert candidate.leader_settings == old  # still what the shadows follow
                # the winner's record replaces it on the next read
                theirs = Settings(http_port_base=7000).shaping_record()
                kube.patch_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME, {
                    "metadata": {"annotations": {"lightmesh.io/settings": json.dumps({"holder": "o2",
                                                                                       "settings": theirs})}},
                    "spec": {"holderIdentity": "o2", "renewTime": micro_time()}})
                assert not await candidate.try_acquire_or_renew() and candidate.leader_settings == theirs
                # resigned: it reads the Lease on, and never takes it, free or expired
                await candidate.resign()
                kube.patch_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME,
                                  {"spec": {"holderIdentity": None, "renewTime": None}})
                clock.now += 100
                await candidate.step()
                assert not candidate.is_leader and not lease(kube)["spec"].get("holderIdentity")
                kube.patch_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME, {
                    "metadata": {"annotations": {"lightmesh.io/settings": json.dumps({"holder": "o3",
                                                                                       "settings": old})}},
                    "spec": {"holderIdentity": "o3", "renewTime": micro_time()}})
                await candidate.step()
                assert candidate.leader_settings == old and not candidate.is_leader
                # a leader that resigns releases the Lease at once
                leader = LeaderElector(api, MESH, "l", lease_seconds=15, clock=clock)
                await leader.step()  # o3's Lease, first seen now: it expires 15 s later on our clock
                clock.now += 16
                await leader.step()
                assert leader.is_leader and lease(kube)["spec"]["holderIdentity"] == "l"
                await leader.resign()
                assert not leader.is_leader and not lease(kube)["spec"].get("holderIdentity")
                await leader.step()
                assert not leader.is_leader and not lease(kube)["spec"].get("holderIdentity")
            finally:
                await api.close()

    run(scenario())
