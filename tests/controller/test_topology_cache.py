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
