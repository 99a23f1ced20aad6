"""Sources: namespace filters, the file source, informer event handling, SMI version discovery."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
import yaml

from lightmesh import wire
from lightmesh.controller.sources import (FileSource, Informer, KubeAPI, KubeSource, ObjectFilter, classify,
                                          discover)

from .kube import cluster


def obj(kind, name, ns="shop", api_version="v1", labels=None):
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": ns, "labels": labels or {}}}


SHADOW_LABELS = {wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER}


def test_filter_routes_objects():
    f = ObjectFilter.create("lightmesh", ignore="legacy, ,")
    objects = [
        obj("Service", "web"),
        obj("Service", "kubernetes", "default"),
        obj("Service", "dns", "kube-system"),
        obj("Service", "old", "legacy"),
        obj("Service", "lm-web-1", "lightmesh", labels=SHADOW_LABELS),
        obj("Service", "lightmesh-controller", "lightmesh"),  # ours by name only: not a shadow
        obj("Service", "fake-shadow", "shop", labels=SHADOW_LABELS),  # label outside the mesh namespace
        obj("Pod", "proxy-1", "lightmesh", labels=wire.PROXY_POD_LABELS),
        obj("Pod", "web-1"),
        obj("EndpointSlice", "web-x", api_version="discovery.k8s.io/v1"),
        obj("TCPRoute", "gw", api_version="gateway.networking.k8s.io/v1alpha2"),  # Gateway API: not SMI's
        obj("TCPRoute", "smi", api_version="specs.smi-spec.io/v1alpha4"),
        obj("TrafficSplit", "s", api_version="split.smi-spec.io/v1alpha2"),
        obj("ConfigMap", "c"),
        "not an object",
    ]
    groups = classify(objects, f)
    names = {k: [o["metadata"]["name"] for o in v] for k, v in groups.items() if v}
    assert names == {"services": ["web"], "shadow_services": ["lm-web-1"], "proxy_pods": ["proxy-1"],
                     "pods": ["web-1"], "endpoint_slices": ["web-x"], "tcp_routes": ["smi"],
                     "mesh_tcp_routes": ["gw"], "traffic_splits": ["s"]}
    only = ObjectFilter.create("lightmesh", watch="shop")
    assert only.route("services", obj("Service", "x", "other")) is None
    assert only.route("services", obj("Service", "x", "shop")) == "services"
    assert only.route("services", obj("Service", "lm-x", "lightmesh", labels=SHADOW_LABELS)) == "shadow_services"


def test_file_source_reads_changes_skips_dotfiles_and_keeps_last_good(tmp_path):
    f = ObjectFilter.create("lightmesh")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([obj("Service", "web"), None, obj("Pod", "web-1")]))
    (tmp_path / "b.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [obj("Service", "api")]}))
    (tmp_path / ".lightmesh-shadows.json").write_text("{not even json")
    (tmp_path / ".cluster.yaml.tmp").write_text(yaml.safe_dump(obj("Service", "half")))
    (tmp_path / "notes.txt").write_text("ignored")
    changes = []
    source = FileSource(tmp_path, f, on_change=lambda: changes.append(1))
    assert source.load()
    snap = source.snapshot()
    assert sorted(o["metadata"]["name"] for o in snap["services"]) == ["api", "web"]
    assert [o["metadata"]["name"] for o in snap["pods"]] == ["web-1"]
    assert not source.load()  # nothing changed: no rebuild
    # a file becomes malformed: its last good objects stay, the error is remembered
    (tmp_path / "a.yaml").write_text("kind: [oops\n")
    assert not source.load()
    assert sorted(o["metadata"]["name"] for o in source.snapshot()["services"]) == ["api", "web"]
    assert "a.yaml" in next(iter(source.errors))
    # a document without kind is an error too, for that file only
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"metadata": {"name": "x"}}))
    assert not source.load() and source.errors
    # fixed and replaced atomically (as the harness does): picked up
    tmp = tmp_path / ".a.yaml.tmp"
    tmp.write_text(yaml.safe_dump(obj("Service", "web2")))
    os.replace(tmp, tmp_path / "a.yaml")
    assert source.load() and not source.errors
    assert sorted(o["metadata"]["name"] for o in source.snapshot()["services"]) == ["api", "web2"]
    # a file removed: its objects go
    (tmp_path / "b.json").unlink()
    assert source.load()
    assert [o["metadata"]["name"] for o in source.snapshot()["services"]] == ["web2"]


def test_file_source_run_notifies(tmp_path):
    async def scenario():
        (tmp_path / "a.yaml").write_text(yaml.safe_dump(obj("Service", "web")))
        changed = asyncio.Event()
        source = FileSource(tmp_path, ObjectFilter.create("lightmesh"), on_change=changed.set, poll_seconds=0.02)
        task = asyncio.create_task(source.run())
        try:
            await asyncio.wait_for(changed.wait(), 10)
            assert source.synced.is_set()
            changed.clear()
            (tmp_path / "b.yaml").write_text(yaml.safe_dump(obj("Service", "api")))
            await asyncio.wait_for(changed.wait(), 10)
            assert len(source.snapshot()["services"]) == 2
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_informer_applies_events():
    informer = Informer(api=None, resource=None, on_change=lambda: None)
    svc = obj("Service", "web")
    svc["metadata"]["resourceVersion"] = "5"
    assert informer.apply({"type": "ADDED", "object": svc})
    assert not informer.apply({"type": "MODIFIED", "object": svc})  # identical: no rebuild
    assert informer.resource_version == "5"
    assert not informer.apply({"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}})
    assert informer.resource_version == "9"
    assert informer.apply({"type": "DELETED", "object": svc})
    assert informer.cache == {}
    try:
        informer.apply({"type": "ERROR", "object": {"code": 410, "reason": "Expired"}})
    except Exception as exc:  # noqa: BLE001
        assert getattr(exc, "status", None) == 410
    else:
        raise AssertionError("ERROR events raise")


def test_discovery_picks_the_newest_served_version_per_kind():
    served = {
        "access.smi-spec.io/v1alpha1/traffictargets": ("TrafficTarget", True),
        "specs.smi-spec.io/v1alpha1/httproutegroups": ("HTTPRouteGroup", True),
        "specs.smi-spec.io/v1alpha1/tcproutes": ("TCPRoute", True),
        "specs.smi-spec.io/v1alpha3/httproutegroups": ("HTTPRouteGroup", True),
        "specs.smi-spec.io/v1alpha3/tcproutes": ("TCPRoute", True),
        "specs.smi-spec.io/v1alpha3/udproutes": ("UDPRoute", True),
        "specs.smi-spec.io/v1alpha4/httproutegroups": ("HTTPRouteGroup", True),  # v1alpha4 without UDPRoute
        "specs.smi-spec.io/v1alpha4/tcproutes": ("TCPRoute", True),
        # no split group at all; Gateway API at v1beta1 only (an older cluster)
        "gateway.networking.k8s.io/v1beta1/httproutes": ("HTTPRoute", True),
        "gateway.networking.k8s.io/v1alpha2/grpcroutes": ("GRPCRoute", True),
        "gateway.networking.k8s.io/v1alpha2/tcproutes": ("TCPRoute", True),
    }

    async def scenario():
        async with cluster(smi=served) as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            try:
                found = await discover(api)
            finally:
                await api.close()
        versions = {f: (r.version if r else None) for f, r in found.items()}
        assert versions == {"services": "v1", "endpoint_slices": "v1", "pods": "v1",
                            "traffic_targets": "v1alpha1", "http_route_groups": "v1alpha4",
                            "tcp_routes": "v1alpha4", "udp_routes": "v1alpha3", "traffic_splits": None,
                            "mesh_http_routes": "v1beta1", "mesh_grpc_routes": "v1alpha2",
                            "mesh_tcp_routes": "v1alpha2", "mesh_udp_routes": None}

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_kube_source_lists_watches_and_filters():
    async def scenario():
        async with cluster() as kube:
            kube.put_object(obj("Service", "web"))
            kube.put_object(obj("Service", "dns", "kube-system"))
            kube.put_object(obj("TrafficSplit", "split", api_version="split.smi-spec.io/v1alpha4"))
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            changes = asyncio.Event()
            source = KubeSource(api, ObjectFilter.create("lightmesh"), on_change=changes.set)
            task = asyncio.create_task(source.run())
            try:
                await asyncio.wait_for(source.synced.wait(), 20)
                snap = source.snapshot()
                assert [o["metadata"]["name"] for o in snap["services"]] == ["web"]
                assert [o["metadata"]["name"] for o in snap["traffic_splits"]] == ["split"]
                changes.clear()
                kube.put_object(obj("HTTPRouteGroup", "routes", api_version="specs.smi-spec.io/v1alpha4"))
                await asyncio.wait_for(changes.wait(), 20)
                for _ in range(100):
                    if source.snapshot()["http_route_groups"]:
                        break
                    await asyncio.sleep(0.02)
                assert [o["metadata"]["name"] for o in source.snapshot()["http_route_groups"]] == ["routes"]
                assert source.api_versions()["TrafficSplit"] == "split.smi-spec.io/v1alpha4"
                assert source.uid("Service", "shop", "web")
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_smi_crds_installed_after_start_are_picked_up():
    async def scenario():
        async with cluster(smi={}) as kube:  # no SMI at start
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            changes = asyncio.Event()
            source = KubeSource(api, ObjectFilter.create("lightmesh"), on_change=changes.set,
                                rediscover_seconds=0.05)
            task = asyncio.create_task(source.run())
            try:
                await asyncio.wait_for(source.synced.wait(), 20)
                assert source.informers["traffic_splits"].resource is None
                kube.serve({"split.smi-spec.io/v1alpha2/trafficsplits": ("TrafficSplit", True)})
                kube.put_object(obj("TrafficSplit", "canary", api_version="split.smi-spec.io/v1alpha2"))
                for _ in range(500):
                    if source.snapshot()["traffic_splits"]:
                        break
                    await asyncio.sleep(0.02)
                assert [o["metadata"]["name"] for o in source.snapshot()["traffic_splits"]] == ["canary"]
                # a newer version appears: switched to it, objects never disappear in between
                kube.serve({"split.smi-spec.io/v1alpha4/trafficsplits": ("TrafficSplit", True)})
                kube.put_object(obj("TrafficSplit", "canary", api_version="split.smi-spec.io/v1alpha4"))
                for _ in range(500):
                    assert source.snapshot()["traffic_splits"]
                    if source.api_versions()["TrafficSplit"] == "split.smi-spec.io/v1alpha4":
                        break
                    await asyncio.sleep(0.02)
                assert source.snapshot()["traffic_splits"][0]["apiVersion"] == "split.smi-spec.io/v1alpha4"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


async def _until(predicate, seconds=20.0):
    for _ in range(int(seconds / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def test_a_failed_discovery_request_keeps_what_is_watched():
    # A 503 on /apis/<group>/<version> used to read as "not served": the TrafficTarget informer was
    # replaced by an empty one, and in ACL mode all traffic was denied until the next discovery.
    target = obj("TrafficTarget", "t", api_version="access.smi-spec.io/v1alpha3")

    async def scenario():
        async with cluster() as kube:
            kube.put_object(target)
            # at start: failing discovery is retried (readiness waits), never taken as "no SMI"
            kube.fail_next("GET", "/apis/access.smi-spec.io/v1alpha3", 503, count=2)
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            source = KubeSource(api, ObjectFilter.create("lightmesh"), rediscover_seconds=0.05)
            task = asyncio.create_task(source.run())
            try:
                await asyncio.wait_for(source.synced.wait(), 30)
                informer = source.informers["traffic_targets"]
                assert informer.resource is not None and [o["metadata"]["name"] for o in
                                                          source.snapshot()["traffic_targets"]] == ["t"]
                kube.fail_next("GET", "/apis/access.smi-spec.io/v1alpha3", 503, count=10)
                kube.fail_next("GET", "/apis/split.smi-spec.io/v1alpha4", 429, count=10)
                for _ in range(50):  # several re-discovery periods while the errors last
                    assert source.snapshot()["traffic_targets"], "the TrafficTargets vanished"
                    await asyncio.sleep(0.02)
                assert await _until(lambda: not kube.failures)
                await asyncio.sleep(0.2)
                assert source.informers["traffic_targets"] is informer  # never replaced
                assert source.informers["traffic_splits"].resource is not None
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_an_optional_kind_the_controller_may_not_list_does_not_keep_it_unready():
    route = obj("GRPCRoute", "g", api_version="gateway.networking.k8s.io/v1")

    async def scenario():
        async with cluster() as kube:
            kube.put_object(obj("Service", "web"))
            kube.put_object(route)
            kube.fail_next("GET", "/grpcroutes", 403, "Forbidden", count=10_000)
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            changes = asyncio.Event()
            source = KubeSource(api, ObjectFilter.create("lightmesh"), on_change=changes.set)
            task = asyncio.create_task(source.run())
            try:
                await asyncio.wait_for(source.synced.wait(), 20)  # ready, without GRPCRoutes
                snap = source.snapshot()
                assert [o["metadata"]["name"] for o in snap["services"]] == ["web"] and snap["mesh_grpc_routes"] == []
                assert source.informers["mesh_grpc_routes"].forbidden
                kube.failures.clear()  # the ClusterRole is fixed: picked up on the next retry
                assert await _until(lambda: source.snapshot()["mesh_grpc_routes"], 40)
                assert not source.informers["mesh_grpc_routes"].forbidden
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_built_in_kinds_forbidden_keep_the_controller_unready():
    async def scenario():
        async with cluster() as kube:
            kube.fail_next("GET", "/api/v1/pods", 403, "Forbidden", count=10_000)
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            source = KubeSource(api, ObjectFilter.create("lightmesh"))
            task = asyncio.create_task(source.run())
            try:
                await asyncio.sleep(1.0)
                assert not source.synced.is_set()  # without pods, no identity: never serve half a mesh
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_watch_metrics_tell_smi_and_gateway_api_route_kinds_apart():
    from lightmesh.controller.sources import Resource

    kinds = {Informer(None, Resource(f, g, "v1", k, p), lambda: None).kind
             for f, g, k, p in [("tcp_routes", "specs.smi-spec.io", "TCPRoute", "tcproutes"),
                                ("mesh_tcp_routes", "gateway.networking.k8s.io", "TCPRoute", "tcproutes"),
                                ("services", "", "Service", "services")]}
    assert kinds == {"TCPRoute", "TCPRoute.gateway.networking.k8s.io", "Service"}


def test_in_acl_mode_the_access_kinds_forbidden_keep_the_controller_unready():
    # Absent TrafficTargets deny everything in ACL mode: a controller that starts before its
    # ClusterRoleBinding is in effect must wait for it, not publish deny-all.
    from lightmesh.controller.sources import ACL_REQUIRED

    async def scenario():
        async with cluster() as kube:
            kube.put_object(obj("TrafficTarget", "t", api_version="access.smi-spec.io/v1alpha3"))
            kube.fail_next("GET", "/traffictargets", 403, "Forbidden", count=3)
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            source = KubeSource(api, ObjectFilter.create("lightmesh"), required=ACL_REQUIRED)
            task = asyncio.create_task(source.run())
            try:
                await asyncio.sleep(0.3)
                assert not source.synced.is_set()
                await asyncio.wait_for(source.synced.wait(), 30)  # the RBAC took effect: the retry lists them
                assert [o["metadata"]["name"] for o in source.snapshot()["traffic_targets"]] == ["t"]
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_watch_that_held_resets_the_backoff_of_an_earlier_outage(monkeypatch):
    # Only a received event reset the backoff: a quiet kind, after an outage and a healthy while,
    # waited the outage's long pause (up to 30 s) on its next single failure.
    from lightmesh.controller import sources

    monkeypatch.setattr(sources, "BACKOFF_MIN_SECONDS", 0.01)
    monkeypatch.setattr(sources, "HEALTHY_WATCH_SECONDS", 0.3)
    monkeypatch.setattr(sources.random, "random", lambda: 1.0)  # no jitter: the pauses are exact

    async def scenario():
        async with cluster() as kube:
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            informer = Informer(api, sources.BUILTIN["services"], lambda: None)
            task = asyncio.create_task(informer.run())
            try:
                await asyncio.wait_for(informer.synced.wait(), 20)
                # an outage: 9 re-watches fail (0.01 + 0.02 + ... + 2.56 s), the pause is now 5.12 s
                accepted = len(kube.watch_requests)
                kube.fail_next("GET", "/services", 503, "ServiceUnavailable", count=9)
                kube.close_watches()
                for _ in range(1000):  # until a watch is accepted again (the fake records only those)
                    if not kube.failures and len(kube.watch_requests) > accepted:
                        break
                    await asyncio.sleep(0.02)
                await asyncio.sleep(0.6)  # the watch holds, quiet
                kube.fail_next("GET", "/services", 503, "ServiceUnavailable", count=1)
                kube.close_watches()
                await asyncio.sleep(0.1)
                kube.put_object(obj("Service", "late"))
                started = asyncio.get_running_loop().time()
                for _ in range(1000):
                    if ("shop", "late") in informer.cache:
                        break
                    await asyncio.sleep(0.02)
                assert asyncio.get_running_loop().time() - started < 1.0
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await api.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_in_a_pod_a_failed_in_cluster_configuration_names_what_failed_there(monkeypatch, tmp_path):
    # Before: "Configuration file ~/.kube/config not found", while the service account token was
    # what was missing.
    from lightkube.core.exceptions import ConfigError

    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ConfigError) as raised:
        KubeAPI.from_kubeconfig()
    message = str(raised.value)
    assert message.startswith("in-cluster configuration (KUBERNETES_SERVICE_HOST is set): ")
    assert "/var/run/secrets/kubernetes.io/serviceaccount/token" in message and "no kubeconfig either" in message

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")  # outside a pod: the kubeconfig is what is missing
    with pytest.raises(ConfigError, match="^Configuration file .* not found$"):
        KubeAPI.from_kubeconfig()
