"""Golden files for the whole pure core, as Traefik Mesh's pkg/provider/testdata: objects in, config out.

Each ``testdata/<case>/input.yaml`` holds ``settings`` (fields of :class:`Settings`), ``objects``
(Kubernetes/SMI objects; shadow Services in the mesh namespace are recognised by their labels) and
``synthesize: true`` to let local mode's cluster synthesis run Deployments into Pods and
EndpointSlices first (what a cluster would have done). Expected: ``topology.json`` (topology, mesh
ports, desired shadow Services, errors) and ``config.json`` (the proxy config).

Regenerate after an intended change: ``LIGHTMESH_UPDATE_GOLDENS=1 .venv/bin/python -m pytest
tests/controller/test_provider.py`` and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from lightmesh.controller.build import build
from lightmesh.controller.model import ClusterState, Settings
from lightmesh.controller.provider import build_config
from lightmesh.local.cluster import synthesize

TESTDATA = Path(__file__).parent / "testdata"
CASES = sorted(p.name for p in TESTDATA.iterdir() if (p / "input.yaml").exists())
UPDATE = os.environ.get("LIGHTMESH_UPDATE_GOLDENS") == "1"


def load_case(name: str) -> tuple[ClusterState, Settings, dict]:
    spec = yaml.safe_load((TESTDATA / name / "input.yaml").read_text())
    settings = Settings(**(spec.get("settings") or {}))
    objects = spec.get("objects") or []
    if spec.get("synthesize"):
        objects = synthesize(objects).objects
    return ClusterState.from_objects(objects, settings.mesh_namespace), settings, spec


def render(name: str) -> tuple[dict, dict]:
    state, settings, spec = load_case(name)
    result = build(state, settings, version=1)
    topology = {
        "topology": result.topology.to_dict(),
        "ports": result.ports.to_dict(),
        "shadow_services": result.shadow_services,
        "errors": [e.to_dict() for e in result.errors],
        "api": result.topology_json(),
    }
    return topology, result.config.model_dump(mode="json")


def dump(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("case", CASES)
def test_golden(case: str) -> None:
    topology, config = render(case)
    for filename, data in (("topology.json", topology), ("config.json", config)):
        path = TESTDATA / case / filename
        if UPDATE or not path.exists():
            path.write_text(dump(data))
        assert dump(data) == path.read_text(), f"{case}/{filename} differs (LIGHTMESH_UPDATE_GOLDENS=1 to accept)"


@pytest.mark.parametrize("case", CASES)
def test_deterministic_and_order_independent(case: str) -> None:
    """The same objects in another order build the same config (caches iterate in any order)."""
    state, settings, _ = load_case(case)
    reversed_state = ClusterState(**{k: tuple(reversed(tuple(v))) for k, v in state.__dict__.items()})
    a, b = build(state, settings, 1), build(reversed_state, settings, 1)
    assert a.config.hash == b.config.hash
    assert a.errors == b.errors and a.shadow_services == b.shadow_services


def test_build_config_is_the_config_build_returns() -> None:
    state, settings, _ = load_case("acl-http-route-group")
    result = build(state, settings, 7)
    assert build_config(result.topology, result.ports, state.shadow_services, settings, 7) == result.config
    assert result.config.version == 7


def test_ports_survive_a_rebuild_with_previous_ports() -> None:
    state, settings, _ = load_case("plain-http-tcp-udp")
    first = build(state, settings, 1)
    again = build(state, settings, 2, previous_ports=first.ports)
    assert again.ports == first.ports and again.config.hash == first.config.hash


def test_two_services_on_one_shadow_ip_are_reported_not_merged() -> None:
    """A writer bug (one ClusterIP for two shadows) must not mix two Services on one listener."""
    objects = [{"kind": "Service", "metadata": {"name": n, "namespace": "app"}, "spec": {"ports": [{"port": 80}]}}
               for n in ("a", "b")]
    shadows = [{"metadata": {"name": f"lm-{n}", "namespace": "lightmesh",
                             "labels": {"lightmesh.io/service-name": n, "lightmesh.io/service-namespace": "app"}},
                "spec": {"clusterIP": "127.1.0.9", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 5000}]}}
               for n in ("a", "b")]
    result = build(ClusterState(services=objects, shadow_services=shadows), Settings(listen_mode="shadow-ip"), 1)
    assert [r.name for r in result.config.http.routers] == ["app/a:80"]
    [err] = result.errors
    assert err.name == "b" and "127.1.0.9:80" in err.message


def test_acl_split_never_allows_more_than_every_backend_does() -> None:
    """One hop to backend pods: only matches all weighted backends allow pass the split, with the
    sources all of them allow; a split without matches owns all the root's traffic."""
    def svc(name):
        return {"kind": "Service", "metadata": {"name": name, "namespace": "ab"}, "spec": {"ports": [{"port": 80}]}}

    def pod(name, ip, sa):
        return {"kind": "Pod", "metadata": {"name": name, "namespace": "ab"}, "spec": {"serviceAccountName": sa},
                "status": {"phase": "Running", "podIP": ip}}

    def slice_(service, ip):
        return {"metadata": {"name": service, "namespace": "ab", "labels": {"kubernetes.io/service-name": service}},
                "ports": [{"port": 80}], "endpoints": [{"addresses": [ip]}]}

    def target(name, sa, sources, group):
        return {"apiVersion": "access.smi-spec.io/v1alpha3", "metadata": {"name": name, "namespace": "ab"},
                "spec": {"destination": {"kind": "ServiceAccount", "name": sa},
                         "sources": [{"kind": "ServiceAccount", "name": s} for s in sources],
                         "rules": [{"kind": "HTTPRouteGroup", "name": group}]}}

    state = ClusterState(
        services=[svc("root"), svc("v1"), svc("v2")],
        pods=[pod("v1", "10.0.0.1", "v1"), pod("v2", "10.0.0.2", "v2"), pod("c", "10.0.1.1", "client"),
              pod("o", "10.0.1.2", "other")],
        endpoint_slices=[slice_("root", "10.0.0.1"), slice_("v1", "10.0.0.1"), slice_("v2", "10.0.0.2")],
        http_route_groups=[
            {"metadata": {"name": "api", "namespace": "ab"}, "spec": {"matches": [{"name": "api", "pathRegex": "/api"}]}},
            {"metadata": {"name": "api-admin", "namespace": "ab"},
             "spec": {"matches": [{"name": "api", "pathRegex": "/api"}, {"name": "admin", "pathRegex": "/admin"}]}}],
        traffic_targets=[target("to-v1", "v1", ["client", "other"], "api"),
                         target("to-v2", "v2", ["client"], "api-admin")],
        traffic_splits=[{"apiVersion": "split.smi-spec.io/v1alpha4", "metadata": {"name": "s", "namespace": "ab"},
                         "spec": {"service": "root", "backends": [{"service": "v1", "weight": 1},
                                                                  {"service": "v2", "weight": 1}]}}])
    config = build(state, Settings(acl=True), 1).config
    routers = {r.name: r for r in config.http.routers if r.name.startswith("ab/root:80")}
    assert sorted(routers) == ["ab/root:80/deny", "ab/root:80/split/0"]  # the root's own target routers are gone
    split = routers["ab/root:80/split/0"]
    assert (split.match.path_regex, split.service) == ("/api", "ab/root:80")  # /admin is not allowed by v1
    allow = {m.name: m for m in config.http.middlewares}[split.middlewares[0]]
    assert allow.source_ranges == ["10.0.1.1/32"]  # "other" is allowed on v1 only


def test_acl_split_with_its_own_path_match_and_a_different_target_path_combines_both() -> None:
    """A split match on /api and a TrafficTarget allowing /.*: the split router needs both paths.
    They are ANDed as a list of path regexes the proxy requires all of (RE2 has no lookahead)."""
    from lightmesh.proxy.routing import _path_predicate

    objects = yaml.safe_load("""
- {kind: Service, metadata: {name: root, namespace: ab}, spec: {ports: [{port: 80}]}}
- {kind: Service, metadata: {name: v1, namespace: ab}, spec: {ports: [{port: 80}]}}
- {kind: Pod, metadata: {name: v1, namespace: ab}, spec: {serviceAccountName: v1}, status: {phase: Running, podIP: 10.0.0.1}}
- {kind: Pod, metadata: {name: c, namespace: ab}, spec: {serviceAccountName: client}, status: {phase: Running, podIP: 10.0.1.1}}
- {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: root, namespace: ab, labels: {kubernetes.io/service-name: root}},
   ports: [{port: 80}], endpoints: [{addresses: [10.0.0.1]}]}
- {apiVersion: discovery.k8s.io/v1, kind: EndpointSlice, metadata: {name: v1, namespace: ab, labels: {kubernetes.io/service-name: v1}},
   ports: [{port: 80}], endpoints: [{addresses: [10.0.0.1]}]}
- {apiVersion: specs.smi-spec.io/v1alpha4, kind: HTTPRouteGroup, metadata: {name: all, namespace: ab},
   spec: {matches: [{name: all, pathRegex: "/.*"}]}}
- {apiVersion: specs.smi-spec.io/v1alpha4, kind: HTTPRouteGroup, metadata: {name: api, namespace: ab},
   spec: {matches: [{name: api, pathRegex: "/api/"}]}}
- apiVersion: access.smi-spec.io/v1alpha3
  kind: TrafficTarget
  metadata: {name: t, namespace: ab}
  spec: {destination: {kind: ServiceAccount, name: v1}, sources: [{kind: ServiceAccount, name: client}],
         rules: [{kind: HTTPRouteGroup, name: all}]}
- apiVersion: split.smi-spec.io/v1alpha4
  kind: TrafficSplit
  metadata: {name: s, namespace: ab}
  spec: {service: root, backends: [{service: v1, weight: 1}], matches: [{kind: HTTPRouteGroup, name: api}]}
""")
    config = build(ClusterState.from_objects(objects), Settings(acl=True), 1).config
    [split] = [r for r in config.http.routers if "/split/" in r.name and not r.name.endswith("/deny")]
    assert isinstance(split.match.path_regex, list) and len(split.match.path_regex) == 2
    path = _path_predicate(split.match.path_regex)  # as the proxy matches a path
    assert path("/api/users") and not path("/other") and not path("/ap")
    allow = {m.name: m for m in config.http.middlewares}[split.middlewares[0]]
    assert allow.source_ranges == ["10.0.1.1/32"]


def test_acl_splits_and_routes_reach_only_authorised_destination_pods():
    # A one-hop split (SMI TrafficSplit, TCP split, GAMMA HTTPRoute) used to send to every pod of a
    # backend, including a pod whose ServiceAccount no TrafficTarget names as destination.
    _, config = render("acl-split-authorised-pods")
    services = {s["name"]: s for s in config["http"]["services"]}
    intruder = "10.15.0.3"
    reachable = [r for r in config["http"]["routers"] if "deny" not in r["middlewares"]]
    assert {r["name"] for r in reachable} >= {"acl/root:80/split/0", "acl/hroot:80/route/acl/r/0/0/0"}
    for r in reachable:
        urls = [s["url"] for s in services[r["service"]]["servers"]]
        assert urls and not any(intruder in u for u in urls), (r["name"], urls)
    for route in config["tcp"]:
        assert [s["address"] for s in route["servers"]] == ["10.15.0.2"], route


def test_acl_destination_port_is_matched_per_pod():
    _, config = render("acl-destination-port-per-pod")
    services = {s["name"]: s for s in config["http"]["services"]}
    [allow] = [r for r in config["http"]["routers"] if "deny" not in r["middlewares"]]
    assert [s["url"] for s in services[allow["service"]]["servers"]] == ["http://10.7.0.1:8080"]


@pytest.mark.parametrize("acl", [False, True])
def test_a_split_reaches_each_backends_pods_in_the_backends_own_scheme(acl: bool) -> None:
    """Traefik Mesh sent split traffic through each backend's own router, so a backend annotated
    scheme: https (TLS pods) behind a plain root was spoken to over TLS; all got http:// (502s)."""
    def svc(name, scheme=None):
        annotations = {"mesh.traefik.io/scheme": scheme} if scheme else {}
        return {"kind": "Service", "metadata": {"name": name, "namespace": "ab", "annotations": annotations},
                "spec": {"ports": [{"port": 443}]}}

    def pod(name, ip, sa):
        return {"kind": "Pod", "metadata": {"name": name, "namespace": "ab"}, "spec": {"serviceAccountName": sa},
                "status": {"phase": "Running", "podIP": ip}}

    def slice_(service, ip):
        return {"metadata": {"name": service, "namespace": "ab", "labels": {"kubernetes.io/service-name": service}},
                "ports": [{"port": 8443}], "endpoints": [{"addresses": [ip]}]}

    targets = [{"apiVersion": "access.smi-spec.io/v1alpha3", "metadata": {"name": f"to-{sa}", "namespace": "ab"},
                "spec": {"destination": {"kind": "ServiceAccount", "name": sa},
                         "sources": [{"kind": "ServiceAccount", "name": "client"}],
                         "rules": [{"kind": "HTTPRouteGroup", "name": "all"}]}} for sa in ("v1", "v2")]
    state = ClusterState(
        services=[svc("secure"), svc("secure-v1", "https"), svc("secure-v2", "h2c")],
        pods=[pod("v1", "10.0.0.1", "v1"), pod("v2", "10.0.0.2", "v2"), pod("c", "10.0.1.1", "client")],
        endpoint_slices=[slice_("secure", "10.0.0.1"), slice_("secure-v1", "10.0.0.1"), slice_("secure-v2", "10.0.0.2")],
        http_route_groups=[{"metadata": {"name": "all", "namespace": "ab"},
                            "spec": {"matches": [{"name": "all", "pathRegex": "/.*"}]}}],
        traffic_targets=targets if acl else [],
        traffic_splits=[{"apiVersion": "split.smi-spec.io/v1alpha3", "metadata": {"name": "s", "namespace": "ab"},
                         "spec": {"service": "secure", "backends": [{"service": "secure-v1", "weight": 50},
                                                                    {"service": "secure-v2", "weight": 50}]}}])
    config = build(state, Settings(acl=acl), 1).config
    split = {s.name: s for s in config.http.services}["ab/secure:443"]
    assert sorted(s.url for s in split.servers) == ["h2c://10.0.0.2:8443", "https://10.0.0.1:8443"]
    # a backend without a scheme of its own takes the root's (a gRPC canary annotated on its root)
    state.services[0]["metadata"]["annotations"] = {"mesh.traefik.io/scheme": "h2c"}
    del state.services[1]["metadata"]["annotations"]["mesh.traefik.io/scheme"]
    config = build(state, Settings(acl=acl), 1).config
    split = {s.name: s for s in config.http.services}["ab/secure:443"]
    assert sorted(s.url for s in split.servers) == ["h2c://10.0.0.1:8443", "h2c://10.0.0.2:8443"]


def test_a_dual_stack_shadow_is_routed_by_either_cluster_ip() -> None:
    """A client may reach the shadow by its IPv6 ClusterIP as well (Host ``[fd00::10]``)."""
    from lightmesh.proxy.routing import compile_http, split_host

    service = {"kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": {"ports": [{"port": 80}]}}
    shadow = {"metadata": {"name": "lm-web", "namespace": "lightmesh",
                           "labels": {"lightmesh.io/service-name": "web", "lightmesh.io/service-namespace": "shop"}},
              "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::10"],
                       "ports": [{"port": 80, "protocol": "TCP", "targetPort": 5000}]}}
    result = build(ClusterState(services=[service], shadow_services=[shadow]), Settings(), 1)
    assert not result.errors
    [router] = result.config.http.routers
    assert {"10.96.0.10", "fd00::10"} <= set(router.match.hosts)
    plane = compile_http(result.config)
    for host in (b"10.96.0.10", b"[fd00::10]", b"[FD00::10]:80", b"web.shop.traefik.mesh"):
        routes = [t.lookup(split_host(host), "GET", b"/", []) for t in plane.entry_points.values()]
        assert [r.name for r in routes if r is not None] == ["shop/web:80"], host
