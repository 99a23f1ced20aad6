"""``TopologyCache`` and ``ProviderCache`` (the controller reuses per-Service results between rounds)
never change the result."""

from __future__ import annotations

import copy
import dataclasses
import sys
from pathlib import Path

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from lightmesh.controller.build import build
from lightmesh.config import ConfigAssembler
from lightmesh.controller.model import ClusterState, Settings
from lightmesh.controller.provider import ProviderCache
from lightmesh.controller.topology import TopologyCache, build_topology

from .test_topology import SETTINGS, STATES

FIELDS = [f.name for f in dataclasses.fields(ClusterState)]


def _same(state, settings, cache, caches=None):
    cached, fresh = build_topology(state, settings, cache), build_topology(state, settings)
    assert cached.to_dict() == fresh.to_dict()
    assert cached == fresh
    if caches is not None:  # the whole build as the controller runs it
        warm, cold = build(state, settings, 3, **caches), build(state, settings, 3)
        assert warm.config == cold.config and warm.config.hash == cold.config.hash
        assert warm.errors == cold.errors and warm.shadow_services == cold.shadow_services


def _caches():
    return {"assembler": ConfigAssembler(), "topology_cache": TopologyCache(), "provider_cache": ProviderCache()}


def _mix(a: ClusterState, b: ClusterState, keep: int) -> ClusterState:
    """``a``'s objects (the same ones: cache hits) with ``b``'s appended and some of ``a``'s replaced by copies."""
    out = {}
    for f in FIELDS:
        old = list(getattr(a, f) or [])
        out[f] = [o if i % (keep + 1) else copy.deepcopy(o) for i, o in enumerate(old)] + list(getattr(b, f) or [])
    return ClusterState(**out)


@hsettings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(STATES, STATES, SETTINGS, st.integers(0, 3))
def test_cached_builds_equal_fresh_ones(first, second, settings, keep):
    cache, caches = TopologyCache(), _caches()
    _same(first, settings, cache, caches)
    _same(first, settings, cache, caches)  # everything reused
    _same(_mix(first, second, keep), settings, cache, caches)
    _same(ClusterState(**{f: list(getattr(first, f) or [])[::-1] for f in FIELDS}), settings, cache, caches)
    _same(first, dataclasses.replace(settings, acl=not settings.acl, default_mode="udp"), cache, caches)
    _same(first, dataclasses.replace(settings, domains=("other.example",)), cache, caches)


def test_one_changed_object_at_a_time_on_the_bench_cluster():
    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    try:
        from bench_controller import cluster
    finally:
        sys.path.pop(0)
    state, settings, cache, caches = cluster(150), Settings(acl=True), TopologyCache(), _caches()
    _same(state, settings, cache, caches)
    svc = copy.deepcopy(state.services[3])
    svc["metadata"]["annotations"] = {"mesh.traefik.io/retry-attempts": "x"}  # invalid: left out
    state.services[3] = svc
    _same(state, settings, cache, caches)
    sl = copy.deepcopy(state.endpoint_slices[5])
    sl["endpoints"][0]["addresses"] = ["10.250.0.1"]
    state.endpoint_slices[5] = sl
    _same(state, settings, cache, caches)
    pod = copy.deepcopy(state.pods[0])
    pod["spec"]["serviceAccountName"] = "other"
    state.pods[0] = pod
    _same(state, settings, cache, caches)
    del state.endpoint_slices[9]
    _same(state, settings, cache, caches)
    target = copy.deepcopy(state.traffic_targets[2])
    target["spec"]["sources"] = []
    state.traffic_targets[2] = target
    _same(state, settings, cache, caches)
    shadows = copy.deepcopy(build(state, settings, 1).shadow_services[:3])  # a shadow ClusterIP: one more host
    for i, shadow in enumerate(shadows):
        shadow["spec"]["clusterIP"] = f"10.97.0.{i + 1}"
    state = dataclasses.replace(state, shadow_services=shadows)
    _same(state, settings, cache, caches)
    moved = {**shadows[1], "spec": {**shadows[1]["spec"], "clusterIP": "10.97.1.1"}}
    state = dataclasses.replace(state, shadow_services=[shadows[0], moved])
    _same(state, settings, cache, caches)
    _same(state, Settings(acl=False), cache, caches)


def _bench_cluster(n: int):
    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    try:
        from bench_controller import cluster
    finally:
        sys.path.pop(0)
    return cluster(n)


def test_a_pod_change_recomputes_only_what_reads_that_pod():
    state, settings, cache = _bench_cluster(60), Settings(acl=True), TopologyCache()
    first = build_topology(state, settings, cache)
    # svc1's pod svc1-0 gets another ServiceAccount (its endpoint identity changes)
    i = next(k for k, p in enumerate(state.pods) if p["metadata"]["name"] == "svc1-0")
    pod = copy.deepcopy(state.pods[i])
    pod["spec"]["serviceAccountName"] = "moved"
    state.pods[i] = pod
    second = build_topology(state, settings, cache)
    assert second == build_topology(state, settings)
    assert second.services["ns1/svc1"] is not first.services["ns1/svc1"]
    assert second.services["ns1/svc1"].ports[0].endpoints[0].service_account == "ns1/moved"
    assert second.services["ns2/svc2"] is first.services["ns2/svc2"]  # reused: reads none of the changed pod
    # the client pod of tt0 leaves: tt0's source IPs shrink, tt2 is reused
    client = next(k for k, p in enumerate(state.pods) if p["metadata"]["name"] == "client0")
    del state.pods[client]
    third = build_topology(state, settings, cache)
    assert third == build_topology(state, settings)
    by_name = {t.name: t for t in third.traffic_targets}
    assert by_name["tt0"].source_ips == ()
    assert by_name["tt2"] is {t.name: t for t in second.traffic_targets}["tt2"]


def test_pod_changes_seen_through_ip_only_endpoints_and_duplicate_ips():
    state, settings, cache = _bench_cluster(20), Settings(acl=True), TopologyCache()
    # svc3's endpoints without targetRef: identity comes from the pod that has the IP
    sl = copy.deepcopy(state.endpoint_slices[3])
    for ep in sl["endpoints"]:
        del ep["targetRef"]
    state.endpoint_slices[3] = sl
    _same(state, settings, cache)
    ip = sl["endpoints"][0]["addresses"][0]
    k = next(k for k, p in enumerate(state.pods) if p["status"]["podIP"] == ip)
    pod = copy.deepcopy(state.pods[k])
    pod["spec"]["serviceAccountName"] = "renamed"  # the same IP, another identity
    state.pods[k] = pod
    topo = build_topology(state, settings, cache)
    assert topo == build_topology(state, settings)
    assert topo.services["ns3/svc3"].ports[0].endpoints[0].service_account == "ns3/renamed"
    # a second running pod claims the IP (a stale object during a restart): the last one wins, as cold
    impostor = copy.deepcopy(pod)
    impostor["metadata"]["name"] = "impostor"
    impostor["spec"]["serviceAccountName"] = "impostor"
    state.pods.append(impostor)
    _same(state, settings, cache)
    state.pods[k], state.pods[-1] = state.pods[-1], state.pods[k]  # same objects, other order
    _same(state, settings, cache)
    finished = copy.deepcopy(state.pods[-1])  # the pod that held the IP last finishes: the other one has it
    finished["status"]["phase"] = "Succeeded"
    state.pods[-1] = finished
    _same(state, settings, cache)
    state.pods.clear()
    _same(state, settings, cache)


def test_a_cached_port_in_acl_mode_brings_no_unused_middleware():
    """Found by hypothesis: in ACL mode a Service with a retry annotation and no TrafficTarget only
    has its deny router, so its retry middleware is used by nothing. A cold build emitted it, a
    build reusing the port from the ProviderCache did not: same routing, different hash."""
    svc = {"kind": "Service", "metadata": {"name": "a", "namespace": "b",
                                           "annotations": {"lightmesh.io/retry-attempts": "2"}},
           "spec": {"ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}], "clusterIP": "10.0.0.1"}}
    state, settings, cache, caches = ClusterState(services=[svc]), Settings(acl=True), TopologyCache(), _caches()
    _same(state, settings, cache, caches)
    _same(state, settings, cache, caches)  # the port comes from the ProviderCache
    config = build(state, settings, 3).config
    used = {name for r in config.http.routers for name in r.middlewares}
    assert {m.name for m in config.http.middlewares} == used
