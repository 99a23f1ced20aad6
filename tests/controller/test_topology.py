"""Topology: version normalization, endpoint rules, and the promise that no object ever breaks a build."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from lightmesh.controller.build import build
from lightmesh.controller.model import ClusterState, ObjectError, Settings
from lightmesh.controller.topology import HTTPMatch, build_topology, parse_weight


def svc(name, ns="app", ports=None, annotations=None, **spec):
    meta = {"name": name, "namespace": ns}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"ports": ports or [{"port": 80}], **spec}}


def pod(name, ip, sa="default", ns="app", phase="Running", **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"serviceAccountName": sa, **spec}, "status": {"phase": phase, "podIP": ip}}


def eps(service, endpoints, ports=None, ns="app"):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "ports": ports if ports is not None else [{"port": 8080}], "endpoints": endpoints}


def group(name, matches, version="v1alpha4", ns="app"):
    return {"apiVersion": f"specs.smi-spec.io/{version}", "kind": "HTTPRouteGroup",
            "metadata": {"name": name, "namespace": ns}, "spec": {"matches": matches}}


# ---------------------------------------------------------------------------- versions


@pytest.mark.parametrize("value, quantity, expected", [
    (50, False, 50), ("50", False, 50), (0, False, 0), (-1, False, None), (True, False, None), ("1.5", False, None),
    ("500m", True, 500), ("1", True, 1000), (1, True, 1000), ("1.5", True, 1500), ("2k", True, 2_000_000),
    (0.25, True, 250), ("abc", True, None), (None, True, None),
    (-1, True, None), (-0.5, True, None), ("-1", True, None),  # v1alpha1: negative ones were -1000
])
def test_split_weights_across_versions(value, quantity, expected):
    assert parse_weight(value, quantity) == expected


def test_headers_as_map_or_list_of_one_key_maps_mean_the_same():
    state = ClusterState(http_route_groups=[
        group("new", [{"name": "m", "headers": {"X-A": "1", "x-b": "2"}}], "v1alpha4"),
        group("old", [{"name": "m", "headers": [{"X-A": "1"}, {"x-b": "2"}]}], "v1alpha2"),
    ], traffic_targets=[
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
         "metadata": {"name": f"t-{g}", "namespace": "app"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "x"},
                  "sources": [{"kind": "ServiceAccount", "name": "c"}],
                  "rules": [{"kind": "HTTPRouteGroup", "name": g}]}} for g in ("new", "old")])
    t = build_topology(state, Settings())
    assert t.errors == ()
    assert t.traffic_targets[0].http_matches == t.traffic_targets[1].http_matches == (
        HTTPMatch("m", None, (), (("x-a", "1"), ("x-b", "2"))),)


def test_one_header_under_two_spellings_must_match_both_regexes():
    # Before: the later spelling replaced the earlier's regex without a word, so in ACL mode a
    # source reached more than its TrafficTarget allowed ('^(acme|evil)$' alone).
    state = ClusterState.from_objects([
        pod("w", "10.0.0.2", sa="x"), pod("c", "10.0.0.9", sa="c"), svc("web"),
        eps("web", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
        group("new", [{"name": "m", "headers": {"X-Tenant": "^acme$", "x-tenant": "^(acme|evil)$"}}], "v1alpha4"),
        group("old", [{"name": "m", "headers": [{"X-Tenant": "^acme$"}, {"x-tenant": "^(acme|evil)$"}]}], "v1alpha2"),
        *[{"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
           "metadata": {"name": f"t-{g}", "namespace": "app"},
           "spec": {"destination": {"kind": "ServiceAccount", "name": "x"},
                    "sources": [{"kind": "ServiceAccount", "name": "c"}],
                    "rules": [{"kind": "HTTPRouteGroup", "name": g}]}} for g in ("new", "old")]])
    t = build_topology(state, Settings(acl=True))
    assert t.errors == ()
    assert t.traffic_targets[0].http_matches == t.traffic_targets[1].http_matches == (
        HTTPMatch("m", None, (), (("x-tenant", ("^acme$", "^(acme|evil)$")),)),)
    routers = build(state, Settings(acl=True), 1).config.http.routers
    headers = [r.match.headers for r in routers if r.match.headers]
    assert headers and all(h == {"x-tenant": ["^acme$", "^(acme|evil)$"]} for h in headers)


def test_v1alpha1_objects_without_spec_and_sources_default_to_the_target_namespace():
    state = ClusterState(
        pods=[pod("c", "10.0.0.5", sa="client")],
        # specs and access v1alpha1 have no `spec`: matches / destination, sources, specs on top
        http_route_groups=[{"apiVersion": "specs.smi-spec.io/v1alpha1", "kind": "HTTPRouteGroup",
                            "metadata": {"name": "g", "namespace": "app"}, "matches": [{"name": "all"}]}],
        traffic_targets=[{"apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",
                          "metadata": {"name": "t", "namespace": "app"},
                          "destination": {"kind": "ServiceAccount", "name": "server", "port": "8080"},
                          "sources": [{"kind": "ServiceAccount", "name": "client"}],
                          "specs": [{"kind": "HTTPRouteGroup", "name": "g", "matches": ["all"]}]}])
    [tt] = build_topology(state, Settings()).traffic_targets
    assert (tt.destination, tt.destination_port, tt.sources, tt.source_ips) == (
        "app/server", 8080, ("app/client",), ("10.0.0.5",))
    assert len(tt.http_matches) == 1


@pytest.mark.parametrize("path, matches, misses", [
    ("/api", ["/api", "/api/v1"], ["/", "/x/api"]),
    ("api", ["/api", "/api/v1"], ["/x/api"]),
    ("^/api", ["/api"], ["/x/api"]),
    (".*", ["/", "/anything"], []),
    ("api|v2", ["/api", "/v2", "/v2/x", "api"], ["/x/v2", "/other"]),  # the slash applies to every alternative
])
def test_path_regex_is_anchored_at_the_start_like_smi_and_traefik(path, matches, misses):
    import re

    state = ClusterState(http_route_groups=[group("g", [{"name": "m", "pathRegex": path}])])
    t = build_topology(state, Settings())
    assert t.errors == ()
    state = ClusterState(http_route_groups=state.http_route_groups, traffic_targets=[
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": "t", "namespace": "app"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "s"}, "rules": [{"kind": "HTTPRouteGroup", "name": "g"}]}}])
    [m] = build_topology(state, Settings()).traffic_targets[0].http_matches
    assert all(re.match(m.path_regex, p) for p in matches)
    assert not any(re.match(m.path_regex, p) for p in misses)


# ---------------------------------------------------------------------------- services and endpoints


def test_endpoint_identity_by_target_ref_else_by_ip_and_ready_rules():
    state = ClusterState(
        services=[svc("web", ports=[{"port": 80, "targetPort": 8080}])],
        pods=[pod("a", "10.0.0.1", "web"), pod("b", "10.0.0.2", "web"), pod("done", "10.0.0.3", "web", phase="Failed")],
        endpoint_slices=[eps("web", [
            {"addresses": ["10.0.0.1"], "targetRef": {"kind": "Pod", "name": "a"}},
            {"addresses": ["10.0.0.2"], "conditions": {"ready": None}},
            {"addresses": ["10.0.0.3"], "conditions": {"ready": True}},
            {"addresses": ["10.0.0.4"], "conditions": {"ready": False}},
        ])])
    [p] = build_topology(state, Settings()).services["app/web"].ports
    assert [(e.ip, e.port, e.pod, e.service_account) for e in p.endpoints] == [
        ("10.0.0.1", 8080, "app/a", "app/web"), ("10.0.0.2", 8080, "app/b", "app/web"), ("10.0.0.3", 8080, None, None)]


def test_host_network_pods_are_never_an_identity_by_ip():
    # Their IP is the node's: as a TrafficTarget source it would let every process on the node in,
    # and as the IP of an endpoint without targetRef it says nothing about which pod serves it.
    state = ClusterState(
        services=[svc("web", ports=[{"port": 80, "targetPort": 8080}])],
        pods=[pod("agent", "10.1.0.1", "agent", hostNetwork=True), pod("web", "10.0.0.1", "web"),
              pod("hostweb", "10.1.0.2", "web", hostNetwork=True)],
        endpoint_slices=[eps("web", [
            {"addresses": ["10.0.0.1"]},
            {"addresses": ["10.1.0.2"], "targetRef": {"kind": "Pod", "name": "hostweb"}},
            {"addresses": ["10.1.0.1"]},
        ])],
        traffic_targets=[{"apiVersion": "access.smi-spec.io/v1alpha2", "kind": "TrafficTarget",
                          "metadata": {"name": "t", "namespace": "app"},
                          "spec": {"destination": {"kind": "ServiceAccount", "name": "web", "namespace": "app"},
                                   "sources": [{"kind": "ServiceAccount", "name": "agent", "namespace": "app"},
                                               {"kind": "ServiceAccount", "name": "web", "namespace": "app"}],
                                   "rules": []}}])
    topo = build_topology(state, Settings(acl=True))
    [tt] = topo.traffic_targets
    assert tt.source_ips == ("10.0.0.1",)  # not the agent's node IP, nor hostweb's
    [p] = topo.services["app/web"].ports
    assert [(e.ip, e.service_account) for e in p.endpoints] == [
        ("10.0.0.1", "app/web"), ("10.1.0.1", None), ("10.1.0.2", "app/web")]


def test_named_target_port_is_resolved_per_slice_port_name():
    state = ClusterState(
        services=[svc("web", ports=[{"name": "http", "port": 80, "targetPort": "web"},
                                    {"name": "metrics", "port": 9090, "targetPort": "metrics"}])],
        endpoint_slices=[
            eps("web", [{"addresses": ["10.0.0.1"]}], [{"name": "http", "port": 8080}, {"name": "metrics", "port": 9100}]),
            eps("web", [{"addresses": ["10.0.0.2"]}], [{"name": "http", "port": 8081}]),
        ])
    http, metrics = build_topology(state, Settings()).services["app/web"].ports
    assert [(e.ip, e.port) for e in http.endpoints] == [("10.0.0.1", 8080), ("10.0.0.2", 8081)]
    assert [(e.ip, e.port) for e in metrics.endpoints] == [("10.0.0.1", 9100)]


def test_bad_annotation_leaves_the_service_out_and_names_key_and_value():
    state = ClusterState(services=[svc("broken", annotations={"lightmesh.io/retry-attempts": "many"}), svc("ok")])
    result = build(state, Settings(), 1)
    assert list(result.topology.services) == ["app/ok"]
    [err] = result.errors
    assert (err.kind, err.namespace, err.name) == ("Service", "app", "broken")
    assert "lightmesh.io/retry-attempts" in err.field and "'many'" in err.message
    api = json.dumps(result.topology_json())
    assert "retry-attempts" in api and "many" in api
    assert [r.name for r in result.config.http.routers] == ["app/ok:80"]


def test_default_mode_and_suitable_ports():
    state = ClusterState(services=[svc("dns", ports=[{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}])])
    t = build_topology(state, Settings(default_mode="udp"))
    assert [(p.port, p.protocol) for p in t.services["app/dns"].ports] == [(53, "UDP")]
    t = build_topology(state, Settings(default_mode="tcp"))
    assert [(p.port, p.protocol) for p in t.services["app/dns"].ports] == [(53, "TCP")]


def test_settings_reject_bad_flags():
    with pytest.raises(ValueError):
        Settings(default_mode="grpc")
    with pytest.raises(ValueError):
        Settings(listen_mode="everywhere")
    with pytest.raises(ValueError):
        Settings(tcp_port_base=65530, tcp_port_limit=25)


def test_cluster_state_from_objects_sorts_kinds():
    shadow = svc("lm-x-1", ns="lightmesh")
    shadow["metadata"]["labels"] = {"app.kubernetes.io/managed-by": "lightmesh-controller"}
    gateway_route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute", "metadata": {"name": "r"}}
    smi_route = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute", "metadata": {"name": "r"}}
    state = ClusterState.from_objects([svc("a"), shadow, pod("p", "10.0.0.1"), gateway_route, smi_route, "junk",
                                       {"kind": "ConfigMap"}])
    assert [s["metadata"]["name"] for s in state.services] == ["a"]
    assert [s["metadata"]["name"] for s in state.shadow_services] == ["lm-x-1"]
    assert len(state.pods) == 1 and state.tcp_routes == (smi_route,)


def test_object_errors_sort_and_serialize():
    a = ObjectError("Service", "b", "x", "f", "m")
    b = ObjectError("Service", "a", "y", "f", "m")
    assert sorted([a, b]) == [b, a]
    assert json.loads(json.dumps(a.to_dict())) == {"kind": "Service", "namespace": "b", "name": "x", "field": "f",
                                                   "message": "m"}
    assert str(a) == "Service b/x f: m"


# ---------------------------------------------------------------------------- never raise

NAMES = st.integers(0, 9).flatmap(lambda i: st.sampled_from(["kube-system", "lightmesh", "Bad_Name", "", "x" * 70])
                                   if i == 9 else st.sampled_from(["a", "b", "web", "default"]))
IPS = st.sampled_from(["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1", "127.1.0.1", "None", "999.1.1.1", ""])
JUNK = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-3, 70_000), st.floats(allow_nan=True), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


def maybe(strategy):
    """Usually the well-formed value, sometimes anything at all (nested: keep junk rare enough
    that whole well-formed objects, and so deep code paths, are common too)."""
    return st.integers(0, 11).flatmap(lambda i: JUNK if i == 11 else strategy)  # shrinks towards valid


ANNOTATION_VALUES = st.sampled_from(["http", "tcp", "udp", "h2c", "https", "2", "0", "many", "5s", "1m", "-1",
                                     "NetworkErrorRatio() > 0.5", "LatencyAtQuantileMS(50.0) > 100", "(", "100"])
ANNOTATIONS = st.dictionaries(
    st.sampled_from([p + k for p in ("lightmesh.io/", "mesh.traefik.io/", "maesh.containo.us/")
                     for k in ("traffic-type", "scheme", "retry-attempts", "circuit-breaker-expression",
                               "ratelimit-average", "ratelimit-burst", "request-timeout")]),
    maybe(ANNOTATION_VALUES), max_size=4)
PORT = st.fixed_dictionaries({"port": maybe(st.sampled_from([80, 81, 53, 8080])),
                              "protocol": maybe(st.sampled_from(["TCP", "UDP", "SCTP"])),
                              "name": maybe(st.sampled_from(["", "http", "dns"])),
                              "targetPort": maybe(st.sampled_from([8080, "http", "dns", 0, "80"]))})
META = st.fixed_dictionaries({"name": maybe(NAMES), "namespace": maybe(NAMES)})
SERVICE = st.fixed_dictionaries({
    "kind": st.just("Service"),
    "metadata": maybe(st.fixed_dictionaries({"name": maybe(NAMES), "namespace": maybe(NAMES),
                                             "annotations": maybe(ANNOTATIONS)})),
    "spec": maybe(st.fixed_dictionaries({"ports": maybe(st.lists(maybe(PORT), max_size=4)),
                                         "type": maybe(st.sampled_from(["ClusterIP", "ExternalName"])),
                                         "clusterIP": maybe(IPS)}))})
POD = st.fixed_dictionaries({
    "metadata": maybe(META),
    "spec": maybe(st.fixed_dictionaries({"serviceAccountName": maybe(NAMES)})),
    "status": maybe(st.fixed_dictionaries({"phase": maybe(st.sampled_from(["Running", "Failed"])), "podIP": maybe(IPS),
                                           "podIPs": maybe(st.lists(st.fixed_dictionaries({"ip": IPS}), max_size=2))}))})
SLICE = st.fixed_dictionaries({
    "metadata": maybe(st.fixed_dictionaries({"name": NAMES, "namespace": maybe(NAMES),
                                             "labels": maybe(st.fixed_dictionaries({"kubernetes.io/service-name": maybe(NAMES)}))})),
    "addressType": maybe(st.sampled_from(["IPv4", "IPv6", "FQDN"])),
    "ports": maybe(st.lists(maybe(st.fixed_dictionaries({"name": maybe(st.sampled_from(["", "http", "dns"])),
                                                         "port": maybe(st.sampled_from([8080, 53, 0])),
                                                         "protocol": maybe(st.sampled_from(["TCP", "UDP"]))})),
                            max_size=3)),
    "endpoints": maybe(st.lists(maybe(st.fixed_dictionaries({
        "addresses": maybe(st.lists(maybe(IPS), max_size=2)),
        "conditions": maybe(st.fixed_dictionaries({"ready": maybe(st.booleans())})),
        "targetRef": maybe(st.fixed_dictionaries({"kind": st.just("Pod"), "name": maybe(NAMES)}))})), max_size=4))})
MATCH = st.fixed_dictionaries({"name": maybe(NAMES), "pathRegex": maybe(st.sampled_from(["/api", "api", "(", ".*"])),
                               "methods": maybe(st.lists(maybe(st.sampled_from(["GET", "*", "B AD"])), max_size=2)),
                               "headers": maybe(st.one_of(st.dictionaries(st.sampled_from(["X-A", "bad header"]),
                                                                          maybe(st.sampled_from(["a", "["]))),
                                                          st.lists(st.dictionaries(st.sampled_from(["X-B"]),
                                                                                   st.sampled_from(["b"])))))})
REF = st.fixed_dictionaries({"kind": maybe(st.sampled_from(["ServiceAccount", "HTTPRouteGroup", "TCPRoute",
                                                            "UDPRoute", "Group"])),
                             "name": maybe(NAMES), "namespace": maybe(NAMES),
                             "matches": maybe(st.lists(maybe(NAMES), max_size=2)),
                             "port": maybe(st.sampled_from([8080, "8080", 0]))})
SMI_VERSION = st.sampled_from(["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"])
GROUP = st.builds(lambda v, m, s: {"apiVersion": f"specs.smi-spec.io/{v}", "kind": "HTTPRouteGroup", "metadata": m,
                                   "spec": {"matches": s}}, SMI_VERSION, maybe(META), maybe(st.lists(maybe(MATCH), max_size=3)))
L4ROUTE = st.builds(lambda m, p: {"metadata": m, "spec": {"matches": {"ports": p}}}, maybe(META),
                    maybe(st.lists(maybe(st.sampled_from([80, 53, "x"])), max_size=2)))
TARGET = st.builds(lambda v, m, d, s, r: {"apiVersion": f"access.smi-spec.io/{v}", "metadata": m,
                                          "spec": {"destination": d, "sources": s, "rules": r}},
                   SMI_VERSION, maybe(META), maybe(REF), maybe(st.lists(maybe(REF), max_size=2)),
                   maybe(st.lists(maybe(REF), max_size=3)))
SPLIT = st.builds(lambda v, m, root, b, mt: {"apiVersion": f"split.smi-spec.io/{v}", "metadata": m,
                                             "spec": {"service": root, "backends": b, "matches": mt}},
                  SMI_VERSION, maybe(META), maybe(NAMES),
                  maybe(st.lists(maybe(st.fixed_dictionaries({"service": maybe(NAMES),
                                                              "weight": maybe(st.sampled_from([0, 1, 50, "500m", "1"]))})),
                                 max_size=3)),
                  maybe(st.lists(maybe(REF), max_size=2)))
SHADOW = st.builds(lambda name, ns, ip, ports: {
    "metadata": {"name": "lm-x", "namespace": "lightmesh",
                 "labels": {"lightmesh.io/service-name": name, "lightmesh.io/service-namespace": ns}},
    "spec": {"clusterIP": ip, "ports": ports}}, maybe(NAMES), maybe(NAMES), maybe(IPS),
    maybe(st.lists(st.fixed_dictionaries({"port": maybe(st.sampled_from([80, 53])),
                                          "protocol": maybe(st.sampled_from(["TCP", "UDP"])),
                                          "targetPort": maybe(st.sampled_from([5000, 10000, 10001, 15000, 9]))}),
                   max_size=3)))

GW_MATCH = st.fixed_dictionaries({
    "path": maybe(st.fixed_dictionaries({"type": maybe(st.sampled_from(["Exact", "PathPrefix", "RegularExpression", "X"])),
                                         "value": maybe(st.sampled_from(["/", "/api/", "(", "x", 3]))})),
    "headers": maybe(st.lists(maybe(st.fixed_dictionaries({"name": maybe(st.sampled_from(["X-A", "bad name"])),
                                                           "value": maybe(st.sampled_from(["a", "["])),
                                                           "type": maybe(st.sampled_from(["Exact", "RegularExpression"]))})),
                              max_size=2)),
    "method": maybe(st.sampled_from(["GET", "B AD", 1])),
    "queryParams": maybe(st.just([{"name": "a", "value": "b"}]))})
GW_BACKEND = st.fixed_dictionaries({"name": maybe(NAMES), "port": maybe(st.sampled_from([80, 8080, "80", 0])),
                                    "weight": maybe(st.sampled_from([0, 1, 10, -1, "5"])),
                                    "namespace": maybe(NAMES), "kind": maybe(st.sampled_from(["Service", "Pod"]))})
GW_ROUTE = st.builds(lambda m, parents, rules: {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                                                "metadata": m, "spec": {"parentRefs": parents, "rules": rules}},
                     maybe(META),
                     maybe(st.lists(maybe(st.fixed_dictionaries({"group": maybe(st.sampled_from(["", "core", "x"])),
                                                                 "kind": maybe(st.sampled_from(["Service", "Gateway"])),
                                                                 "name": maybe(NAMES), "namespace": maybe(NAMES),
                                                                 "port": maybe(st.sampled_from([80, 53, "x"]))})),
                                    max_size=2)),
                     maybe(st.lists(maybe(st.fixed_dictionaries({
                         "matches": maybe(st.lists(maybe(GW_MATCH), max_size=2)),
                         "backendRefs": maybe(st.lists(maybe(GW_BACKEND), max_size=2)),
                         "timeouts": maybe(st.fixed_dictionaries({"request": maybe(st.sampled_from(["5s", "0s", "x", 5]))})),
                         "filters": maybe(st.just([{"type": "RequestHeaderModifier"}]))})), max_size=3)))

GRPC_ROUTE = st.builds(lambda route, matches: {**route, "kind": "GRPCRoute",
                                              "spec": {**route["spec"], "rules": [{**r, "matches": matches} for r in
                                                                                  (route["spec"]["rules"] or [])
                                                                                  if isinstance(r, dict)]}},
                       GW_ROUTE.filter(lambda r: isinstance(r["spec"].get("rules"), list)),
                       maybe(st.lists(maybe(st.fixed_dictionaries({
                           "method": maybe(st.fixed_dictionaries({
                               "type": maybe(st.sampled_from(["Exact", "RegularExpression", "Prefix"])),
                               "service": maybe(st.sampled_from(["a.B", "(", "", 3])),
                               "method": maybe(st.sampled_from(["Get", "x y"]))})),
                           "headers": maybe(st.just([{"name": "x-a", "value": "1"}]))})), max_size=2)))

STATES = st.builds(
    ClusterState,
    services=st.lists(maybe(SERVICE), max_size=6), endpoint_slices=st.lists(maybe(SLICE), max_size=5),
    pods=st.lists(maybe(POD), max_size=5), traffic_targets=st.lists(maybe(TARGET), max_size=3),
    http_route_groups=st.lists(maybe(GROUP), max_size=3), tcp_routes=st.lists(maybe(L4ROUTE), max_size=2),
    udp_routes=st.lists(maybe(L4ROUTE), max_size=2), traffic_splits=st.lists(maybe(SPLIT), max_size=3),
    mesh_http_routes=st.lists(maybe(GW_ROUTE), max_size=3), mesh_grpc_routes=st.lists(maybe(GRPC_ROUTE), max_size=2),
    mesh_tcp_routes=st.lists(maybe(GW_ROUTE), max_size=2), mesh_udp_routes=st.lists(maybe(GW_ROUTE), max_size=2),
    shadow_services=st.lists(maybe(SHADOW), max_size=4))
SETTINGS = st.builds(Settings, acl=st.booleans(), default_mode=st.sampled_from(["http", "tcp", "udp"]),
                     listen_mode=st.sampled_from(["node", "shadow-ip"]), tcp_port_limit=st.integers(0, 3),
                     http_port_limit=st.integers(0, 3), udp_port_limit=st.integers(0, 2))


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(STATES, SETTINGS)
def test_no_object_ever_breaks_the_build(state, settings):
    result = build(state, settings, 3)  # a ConfigError or any exception here is a bug
    json.dumps(result.topology_json())
    json.dumps(result.topology.to_dict())
    assert result.errors == sorted(set(result.errors))
    if settings.acl:  # default deny: every router refuses or filters by source first; L4 always filters
        middlewares = {m.name: m.type for m in result.config.http.middlewares}
        for router in result.config.http.routers:
            assert router.middlewares and middlewares[router.middlewares[0]] in ("deny", "allow_list"), router
        assert all(r.allowed_sources is not None for r in [*result.config.tcp, *result.config.udp])
    else:
        assert all(r.allowed_sources is None for r in [*result.config.tcp, *result.config.udp])
    if settings.listen_mode == "node":
        for ep in result.config.http.entry_points:
            assert settings.http_port_base <= ep.port < settings.http_port_base + settings.http_port_limit


# Well-formed objects from a small universe, so references resolve and the deep paths (targets,
# splits, ACL, stable ports, shadow IPs) run on most examples.
def _good_states():
    svc_names, sas, ips = st.sampled_from(["a", "b", "c"]), st.sampled_from(["sa1", "sa2"]), st.sampled_from(
        ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd00::1"])
    port = st.fixed_dictionaries({"port": st.sampled_from([80, 81, 53]),
                                  "protocol": st.sampled_from(["TCP", "TCP", "UDP"]),
                                  "name": st.sampled_from(["", "http", "dns"]),
                                  "targetPort": st.sampled_from([8080, "http", "dns"])})
    annotations = st.dictionaries(st.sampled_from(["lightmesh.io/traffic-type", "lightmesh.io/retry-attempts",
                                                   "lightmesh.io/ratelimit-average", "lightmesh.io/ratelimit-burst",
                                                   "lightmesh.io/scheme", "lightmesh.io/request-timeout"]),
                                  st.sampled_from(["http", "tcp", "udp", "2", "5", "h2c", "1s"]), max_size=2)
    service = st.builds(lambda n, a, p: {"kind": "Service", "metadata": {"name": n, "namespace": "ns", "annotations": a},
                                         "spec": {"ports": p}},
                        svc_names, annotations, st.lists(port, min_size=1, max_size=3, unique_by=lambda p: p["port"]))
    pod_ = st.builds(lambda i, sa, ip: {"metadata": {"name": f"p{i}", "namespace": "ns"},
                                        "spec": {"serviceAccountName": sa}, "status": {"phase": "Running", "podIP": ip}},
                     st.integers(1, 4), sas, ips)
    slice_ = st.builds(lambda n, eps: {"metadata": {"name": "s", "namespace": "ns", "labels": {"kubernetes.io/service-name": n}},
                                       "ports": [{"name": "", "port": 8080}, {"name": "http", "port": 8081},
                                                 {"name": "dns", "port": 53, "protocol": "UDP"}],
                                       "endpoints": eps},
                       svc_names, st.lists(st.builds(lambda ip, ready, i: {"addresses": [ip], "conditions": {"ready": ready},
                                                                           **({"targetRef": {"kind": "Pod", "name": f"p{i}"}} if i else {})},
                                                     ips, st.sampled_from([True, True, False, None]), st.integers(0, 4)),
                                           min_size=1, max_size=4))
    match = st.fixed_dictionaries({"name": st.sampled_from(["m1", "m2"]), "pathRegex": st.sampled_from(["/api", ".*"]),
                                   "methods": st.sampled_from([["GET"], ["*"], []]),
                                   "headers": st.sampled_from([{}, {"X-A": "a"}])})
    group_ = st.builds(lambda n, m: {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                                     "metadata": {"name": n, "namespace": "ns"}, "spec": {"matches": m}},
                       st.sampled_from(["g1", "g2"]), st.lists(match, max_size=2))
    route = st.builds(lambda p: {"metadata": {"name": "r1", "namespace": "ns"}, "spec": {"matches": {"ports": p}}},
                      st.sampled_from([[], [80], [53]]))
    rule = st.one_of(st.builds(lambda g, m: {"kind": "HTTPRouteGroup", "name": g, "matches": m},
                               st.sampled_from(["g1", "g2"]), st.sampled_from([[], ["m1"], ["m2", "zz"]])),
                     st.sampled_from([{"kind": "TCPRoute", "name": "r1"}, {"kind": "UDPRoute", "name": "r1"}]))
    target = st.builds(lambda i, d, s, r, port: {"apiVersion": "access.smi-spec.io/v1alpha3",
                                                 "metadata": {"name": f"t{i}", "namespace": "ns"},
                                                 "spec": {"destination": {"kind": "ServiceAccount", "name": d, **port},
                                                          "sources": [{"kind": "ServiceAccount", "name": x} for x in s],
                                                          "rules": r}},
                       st.integers(1, 3), sas, st.lists(sas, max_size=2), st.lists(rule, max_size=3),
                       st.sampled_from([{}, {"port": 8080}, {"port": 53}]))
    split = st.builds(lambda i, root, b, m: {"apiVersion": "split.smi-spec.io/v1alpha4",
                                             "metadata": {"name": f"s{i}", "namespace": "ns"},
                                             "spec": {"service": root, "backends": b, "matches": m}},
                      st.integers(1, 3), svc_names,
                      st.lists(st.fixed_dictionaries({"service": svc_names, "weight": st.integers(0, 100)}), max_size=3),
                      st.sampled_from([[], [{"kind": "HTTPRouteGroup", "name": "g1"}]]))
    gw_match = st.fixed_dictionaries({"path": st.fixed_dictionaries({
        "type": st.sampled_from(["Exact", "PathPrefix", "RegularExpression"]), "value": st.sampled_from(["/", "/api", "/v[0-9]"])}),
        "headers": st.sampled_from([[], [{"name": "X-A", "value": "a"}]]), "method": st.sampled_from([None, "GET"])})
    gw_route = st.builds(lambda i, parent, port, rules: {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": f"hr{i}", "namespace": "ns"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent, **port}], "rules": rules}},
        st.integers(1, 2), svc_names, st.sampled_from([{}, {"port": 80}, {"port": 81}]),
        st.lists(st.fixed_dictionaries({"matches": st.lists(gw_match, max_size=2),
                                        "backendRefs": st.lists(st.fixed_dictionaries({
                                            "name": svc_names, "port": st.sampled_from([80, 81]),
                                            "weight": st.integers(0, 100)}), max_size=2)}), max_size=2))
    shadow = st.builds(lambda n, ip, ports: {
        "metadata": {"name": f"lm-{n}", "namespace": "lightmesh",
                     "labels": {"lightmesh.io/service-name": n, "lightmesh.io/service-namespace": "ns"}},
        "spec": {"clusterIP": ip, "ports": ports}}, svc_names, st.sampled_from(["127.1.0.1", "127.1.0.2", "None"]),
        st.lists(st.fixed_dictionaries({"port": st.sampled_from([80, 81, 53]), "protocol": st.sampled_from(["TCP", "UDP"]),
                                        "targetPort": st.sampled_from([10000, 10001, 15000, 5000])}), max_size=3))
    return st.builds(ClusterState, services=st.lists(service, min_size=1, max_size=4),
                     endpoint_slices=st.lists(slice_, min_size=1, max_size=4),
                     pods=st.lists(pod_, min_size=2, max_size=4), traffic_targets=st.lists(target, max_size=3),
                     http_route_groups=st.lists(group_, max_size=2), tcp_routes=st.lists(route, max_size=1),
                     udp_routes=st.lists(route, max_size=1), traffic_splits=st.lists(split, max_size=2),
                     mesh_http_routes=st.lists(gw_route, max_size=2), mesh_tcp_routes=st.lists(gw_route, max_size=1),
                     mesh_udp_routes=st.lists(gw_route, max_size=1), shadow_services=st.lists(shadow, max_size=3))


GOOD_STATES = _good_states()
GOOD_SETTINGS = st.builds(Settings, acl=st.booleans(), default_mode=st.sampled_from(["http", "tcp", "udp"]),
                          listen_mode=st.sampled_from(["node", "shadow-ip"]), tcp_port_limit=st.integers(1, 3),
                          http_port_limit=st.integers(1, 3), udp_port_limit=st.integers(1, 2))


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(GOOD_STATES, GOOD_SETTINGS)
def test_well_formed_clusters_build_and_keep_the_acl_promises(state, settings):
    test_no_object_ever_breaks_the_build.hypothesis.inner_test(state, settings)
    result = build(state, settings, 1)
    assert not [e for e in result.errors if "internal" in e.message]
    # every server the config forwards to is a ready endpoint of a meshed service
    endpoints = {(e.ip, e.port) for s in result.topology.services.values() for p in s.ports for e in p.endpoints}
    for service in result.config.http.services:
        for server in service.servers:
            host, port = server.url.split("://")[1].rsplit(":", 1)
            assert (host.strip("[]"), int(port)) in endpoints


def test_unhashable_junk_where_names_and_protocols_go():
    """Values used as dict keys are type-checked first (YAML lets a list stand anywhere)."""
    state = ClusterState.from_objects([
        {"kind": ["Service"], "apiVersion": "v1"},
        svc("web", ports=[{"port": 80, "protocol": "TCP"}]),
        eps("web", [{"addresses": ["10.0.0.1"]}], [{"port": 8080, "protocol": ["TCP"]}, {"port": 8080}]),
        group("g", [{"name": "m"}]),
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": "t", "namespace": "app"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "s"},
                  "sources": [{"kind": "ServiceAccount", "name": "c"}],
                  "rules": [{"kind": "HTTPRouteGroup", "name": "g", "matches": [{"a": 1}, ["m"], "m"]}]}},
    ])
    result = build(state, Settings(acl=True), 1)
    assert [e.field for e in result.errors] == ["spec.rules[0].matches", "spec.rules[0].matches"]
    assert len(result.topology.traffic_targets[0].http_matches) == 1
    assert [e.port for e in result.topology.services["app/web"].ports[0].endpoints] == [8080]


UNHASHABLE_OR_ODD = st.one_of(JUNK, st.just([]), st.just({}), st.just([["x"]]), st.just({"a": [1]}), st.just(None),
                              st.just(True), st.just(-1), st.just(1.5), st.just("x\n"))


def _mutate(obj, data):
    """Replace one randomly chosen value somewhere inside ``obj`` (a deep copy) with junk."""
    import copy

    obj = copy.deepcopy(obj)
    node = obj
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
        if not keys:
            return obj
        key = data.draw(st.sampled_from(keys))
        child = node[key]
        if isinstance(child, (dict, list)) and child and data.draw(st.booleans()):
            node = child
            continue
        node[key] = data.draw(UNHASHABLE_OR_ODD)
        return obj


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(GOOD_STATES, GOOD_SETTINGS, st.data())
def test_one_junk_value_anywhere_in_a_good_cluster(state, settings, data):
    fields = [f for f in state.__dataclass_fields__ if getattr(state, f)]
    name = data.draw(st.sampled_from(fields))
    objects = list(getattr(state, name))
    i = data.draw(st.integers(0, len(objects) - 1))
    objects[i] = _mutate(objects[i], data)
    test_no_object_ever_breaks_the_build.hypothesis.inner_test(ClusterState(**{**state.__dict__, name: objects}), settings)


def test_inert_objects_are_reported_not_silent():
    # Each of these allows or meshes nothing; the reason used to go unsaid.
    state = ClusterState.from_objects([
        svc("dns", ports=[{"port": 53, "protocol": "TCP"}], annotations={"mesh.traefik.io/traffic-type": "udp"}),
        svc("plain-udp", ports=[{"port": 53, "protocol": "UDP"}]),  # no annotation: quietly not meshed
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "junk", "namespace": "app"}, "spec": {"ports": "abc"}},
        pod("w", "10.0.0.2", sa="web"),
        svc("web", ports=[{"port": 80}]),
        eps("web", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
        {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute", "metadata": {"name": "t", "namespace": "app"},
         "spec": {}},
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": "tcp-on-http", "namespace": "app"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "web"},
                  "sources": [{"kind": "ServiceAccount", "name": "c"}], "rules": [{"kind": "TCPRoute", "name": "t"}]}},
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": "nobody", "namespace": "app"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "web"}, "sources": [],
                  "rules": [{"kind": "TCPRoute", "name": "t"}]}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r", "namespace": "app"},
         "spec": {"parentRefs": "web", "rules": "bad"}},
    ])
    errors = {(e.kind, e.name, e.field): e.message for e in build(state, Settings(acl=True), 1).errors}
    assert "needs a UDP port" in errors[("Service", "dns", "metadata.annotations[mesh.traefik.io/traffic-type]")]
    assert not [k for k in errors if k[1] == "plain-udp"]
    assert "not a list" in errors[("Service", "junk", "spec.ports")]
    assert "fit none of the destination's services (http)" in errors[("TrafficTarget", "tcp-on-http", "spec.rules")]
    assert "no sources" in errors[("TrafficTarget", "nobody", "spec.sources")]
    assert "not a list" in errors[("HTTPRoute", "r", "spec.parentRefs")]
    assert "not a list" in errors[("HTTPRoute", "r", "spec.rules")]


def test_dual_stack_pods_are_one_server_each():
    # A dual-stack Service has an IPv4 and an IPv6 EndpointSlice naming the same pods: each pod is
    # one endpoint (its IPv4 address), not two, so a weighted share is not doubled.
    ref = lambda name: {"kind": "Pod", "name": name, "namespace": "app"}  # noqa: E731
    state = ClusterState.from_objects([
        pod("d-1", "10.16.0.1", sa="web"), pod("d-2", "10.16.0.2", sa="web"),
        svc("d", ports=[{"port": 80, "targetPort": 8080}]),
        eps("d", [{"addresses": ["10.16.0.1"], "targetRef": ref("d-1")},
                  {"addresses": ["10.16.0.2"], "targetRef": ref("d-2")}]),
        {**eps("d", [{"addresses": ["fd00::16:1"], "targetRef": ref("d-1")},
                     {"addresses": ["fd00::16:2"], "targetRef": ref("d-2")}]),
         "metadata": {"name": "d-v6", "namespace": "app", "labels": {"kubernetes.io/service-name": "d"}},
         "addressType": "IPv6"},
        svc("only6", ports=[{"port": 80, "targetPort": 8080}]),
        eps("only6", [{"addresses": ["fd00::17:1"]}]),
    ])
    services = build_topology(state, Settings()).services
    assert [(e.ip, e.pod) for e in services["app/d"].ports[0].endpoints] == [
        ("10.16.0.1", "app/d-1"), ("10.16.0.2", "app/d-2")]
    assert [e.ip for e in services["app/only6"].ports[0].endpoints] == ["fd00::17:1"]  # IPv6-only stays


def test_numbers_of_thousands_of_digits_are_refused_not_a_stalled_mesh():
    # int() of more than 4,300 digits raises in Python: one such annotation failed every reconcile
    # round, so no Service at all was published.
    huge = "9" * 5000
    state = ClusterState.from_objects([
        svc("huge", annotations={"lightmesh.io/retry-attempts": huge, "lightmesh.io/ratelimit-average": huge,
                                 "lightmesh.io/ratelimit-burst": "1"}),
        svc("port", ports=[{"port": 80, "targetPort": huge}]),
        svc("odd", ports=[{"port": 80, "targetPort": "٣"}]),  # a Unicode digit: not a port number
        svc("good", ports=[{"port": 80}]),
        {"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit", "metadata": {"name": "s", "namespace": "app"},
         "spec": {"service": "good", "backends": [{"service": "good", "weight": "9" * 400}]}},
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": "t", "namespace": "app"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "s", "port": huge},
                  "sources": [{"kind": "ServiceAccount", "name": "c"}]}},
    ])
    result = build(state, Settings(), 1)
    assert "app/good" in result.topology.services
    fields = {(e.name, e.field) for e in result.errors}
    assert ("huge", "metadata.annotations[lightmesh.io/retry-attempts]") in fields
    assert ("port", "spec.ports[0].targetPort") in fields
    assert ("t", "spec.destination.port") in fields
    assert not [e for e in result.errors if "internal" in e.message]


def test_a_tcp_route_with_only_bad_ports_allows_none_and_huge_float_weights_are_refused():
    state = ClusterState.from_objects([
        pod("w", "10.0.0.2", sa="db"), pod("c", "10.0.0.9", sa="client"),
        svc("db", ports=[{"port": 5432}], annotations={"lightmesh.io/traffic-type": "tcp"}),
        eps("db", [{"addresses": ["10.0.0.2"]}], [{"port": 5432}]),
        {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute", "metadata": {"name": "t", "namespace": "app"},
         "spec": {"matches": {"ports": ["x", 70000]}}},
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": "tt", "namespace": "app"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "db"},
                  "sources": [{"kind": "ServiceAccount", "name": "client"}], "rules": [{"kind": "TCPRoute", "name": "t"}]}},
        {"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit", "metadata": {"name": "s", "namespace": "app"},
         "spec": {"service": "db", "backends": [{"service": "db", "weight": 1e308}]}},
    ])
    result = build(state, Settings(acl=True), 1)
    assert "no valid port listed" in {e.field: e.message for e in result.errors if e.name == "t"}["spec.matches.ports"]
    [route] = result.config.tcp
    assert route.allowed_sources == []  # before: every port allowed, so the client was let in
    assert not [e for e in result.errors if "internal" in e.message]


def test_a_traffic_target_grants_access_to_its_own_namespace_only():
    # A tenant could write a TrafficTarget in its namespace naming another namespace's
    # ServiceAccount as destination, and so let itself in (Traefik Mesh took it as written).
    state = ClusterState.from_objects([
        pod("api-0", "10.1.0.1", sa="bank-api", ns="bank"), pod("x", "10.9.0.1", sa="attacker", ns="attacker"),
        svc("api", ns="bank", ports=[{"port": 80}]),
        eps("api", [{"addresses": ["10.1.0.1"]}], [{"port": 80}], ns="bank"),
        group("all", [{"name": "all", "pathRegex": ".*"}], ns="attacker"),
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
         "metadata": {"name": "steal", "namespace": "attacker"},
         "spec": {"destination": {"kind": "ServiceAccount", "name": "bank-api", "namespace": "bank"},
                  "sources": [{"kind": "ServiceAccount", "name": "attacker"}],
                  "rules": [{"kind": "HTTPRouteGroup", "name": "all"}]}},
    ])
    result = build(state, Settings(acl=True), 1)
    errors = {(e.name, e.field): e.message for e in result.errors}
    assert "grants access to its own namespace's ServiceAccounts only" in errors[("steal", "spec.destination.namespace")]
    assert not result.topology.service_targets
    allow = [m for m in result.config.http.middlewares if m.type == "allow_list"]
    assert all("10.9.0.1/32" not in m.source_ranges for m in allow)


def test_a_route_the_proxy_could_not_compile_is_reported_and_the_rest_published():
    # A header value outside Latin-1 or an inline flag inside the group the controller wraps a regex
    # in passed the controller and then failed the whole config: every proxy refused it, or the
    # controller never published at all. Now such a rule is reported and the others go on.
    def route(name, rule):
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": "app"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}], "rules": [rule]}}
    state = ClusterState.from_objects([
        svc("web", ports=[{"port": 80}]), eps("web", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
        svc("other", ports=[{"port": 80}]), eps("other", [{"addresses": ["10.0.0.3"]}], [{"port": 80}]),
        route("euro", {"filters": [{"type": "RequestHeaderModifier",
                                    "requestHeaderModifier": {"set": [{"name": "x-price", "value": "5 €"}]}}],
                       "backendRefs": [{"name": "web", "port": 80}]}),
        route("ctl", {"filters": [{"type": "RequestHeaderModifier",
                                   "requestHeaderModifier": {"add": [{"name": "x-a", "value": "a\x0bb"}]}}],
                      "backendRefs": [{"name": "web", "port": 80}]}),
        route("flags", {"matches": [{"headers": [{"type": "RegularExpression", "name": "x", "value": "(?i)yes"}]}],
                        "backendRefs": [{"name": "web", "port": 80}]}),
        route("path-flags", {"matches": [{"path": {"type": "RegularExpression", "value": "/(?i)api"}}],
                             "backendRefs": [{"name": "web", "port": 80}]}),
    ])
    result = build(state, Settings(), 1)  # builds: no exception, a config is published
    reported = {e.name for e in result.errors if e.kind == "HTTPRoute"}
    # (an inline flag inside a group is valid for RE2, which runs route regexes: those two work)
    assert reported == {"euro", "ctl"}
    assert {r.name.split("/route/")[1].split("/")[1] for r in result.config.http.routers if "/route/" in r.name} >= {
        "flags", "path-flags"}
    assert any(r.service.startswith("app/other") for r in result.config.http.routers)


def test_a_route_timeout_above_a_day_is_reported_and_capped_not_a_failed_build():
    # timeouts.request: "25h" passed the topology and then failed the proxy config's bound (24h):
    # no Service anywhere got updates any more (the controller kept its last config).
    def route(name, timeout):
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": "app"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                         "rules": [{"backendRefs": [{"name": "web", "port": 80}], "timeouts": {"request": timeout}}]}}
    for timeout in ("25h", "100000h", "9" * 400 + "h"):
        state = ClusterState.from_objects([
            svc("web", ports=[{"port": 80}]), eps("web", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
            svc("other", ports=[{"port": 80}]), eps("other", [{"addresses": ["10.0.0.3"]}], [{"port": 80}]),
            route("slow", timeout)])
        result = build(state, Settings(), 1)  # no ConfigError: a config is published
        [error] = [e for e in result.errors if e.kind == "HTTPRoute"]
        assert (error.name, error.field) == ("slow", "spec.rules[0].timeouts.request")
        assert "more than 24h" in error.message and "24h is used" in error.message
        [limit] = [m for m in result.config.http.middlewares if m.type == "request_timeout"]
        assert limit.seconds == 86400
        assert any(r.service.startswith("app/other") for r in result.config.http.routers)


def test_file_only_input_that_would_fail_the_whole_config_is_reported_on_its_object():
    # From --manifests files only (the API server refuses both): a lone surrogate in an HTTPRoute's
    # Exact path or header value, and a 250-character Service name, each failed the whole build.
    def route(name, match):
        return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": "app"},
                "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                         "rules": [{"matches": [match], "backendRefs": [{"name": "web", "port": 80}]}]}}
    long_name = "a" * 250
    state = ClusterState.from_objects([
        svc("web", ports=[{"port": 80}]), eps("web", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
        svc(long_name, ports=[{"port": 80}]), eps(long_name, [{"addresses": ["10.0.0.3"]}], [{"port": 80}]),
        route("path", {"path": {"type": "Exact", "value": "/x\ud800"}}),
        route("prefix", {"path": {"type": "PathPrefix", "value": "/\udfff"}}),
        route("header", {"headers": [{"name": "x-a", "value": "\ud800"}]}),
        route("fine", {"path": {"type": "Exact", "value": "/ok"}}),
    ])
    result = build(state, Settings(), 1)  # no ConfigError
    errors = {(e.kind, e.name, e.field): e.message for e in result.errors}
    assert "not valid Unicode text" in errors[("HTTPRoute", "path", "spec.rules[0].matches[0]")]
    assert "not valid Unicode text" in errors[("HTTPRoute", "prefix", "spec.rules[0].matches[0]")]
    assert "not valid Unicode text" in errors[("HTTPRoute", "header", "spec.rules[0].matches[0]")]
    assert "at most 63 characters" in errors[("Service", long_name, "metadata.name")]
    assert f"app/{long_name}" not in result.topology.services and "app/web" in result.topology.services
    assert any("/route/app/fine/" in r.name for r in result.config.http.routers)


def test_http_only_annotations_on_a_tcp_or_udp_service_are_reported_and_the_service_stays_meshed():
    # Traefik Mesh ignored retry, rate limit etc. on a TCP Service without a word: the user believed
    # the database had a circuit breaker. The Service is still meshed (Services written for Traefik
    # Mesh keep working); each unused annotation is an object error naming it.
    state = ClusterState.from_objects([
        pod("w", "10.0.0.2", sa="db"),
        svc("db", ports=[{"port": 5432}], annotations={
            "lightmesh.io/traffic-type": "tcp", "mesh.traefik.io/retry-attempts": "3",
            "lightmesh.io/circuit-breaker-expression": "NetworkErrorRatio() > 0.5",
            "lightmesh.io/ratelimit-average": "10", "lightmesh.io/ratelimit-burst": "20"}),
        eps("db", [{"addresses": ["10.0.0.2"]}], [{"port": 5432}]),
        pod("d", "10.0.0.3", sa="dns"),
        svc("dns", ports=[{"port": 53, "protocol": "UDP"}],
            annotations={"lightmesh.io/traffic-type": "udp", "lightmesh.io/request-timeout": "5s"}),
        eps("dns", [{"addresses": ["10.0.0.3"]}], [{"port": 53, "protocol": "UDP"}]),
        svc("web", ports=[{"port": 80}], annotations={"lightmesh.io/retry-attempts": "3"}),
    ])
    result = build(state, Settings(), 1)
    errors = {(e.name, e.field): e.message for e in result.errors}
    assert set(errors) == {
        ("db", "metadata.annotations[mesh.traefik.io/retry-attempts]"),
        ("db", "metadata.annotations[lightmesh.io/circuit-breaker-expression]"),
        ("db", "metadata.annotations[lightmesh.io/ratelimit-average]"),
        ("db", "metadata.annotations[lightmesh.io/ratelimit-burst]"),
        ("dns", "metadata.annotations[lightmesh.io/request-timeout]")}, errors
    assert errors[("db", "metadata.annotations[mesh.traefik.io/retry-attempts]")] == (
        "annotation mesh.traefik.io/retry-attempts applies to HTTP traffic only; "
        "traffic type tcp does not use it, ignored")
    assert "traffic type udp" in errors[("dns", "metadata.annotations[lightmesh.io/request-timeout]")]
    assert [r.servers for r in result.config.tcp] and [r.servers for r in result.config.udp]  # still meshed


def test_half_a_rate_limit_pair_is_reported_and_the_service_stays_meshed_without_a_limit():
    # Traefik Mesh applied no rate limit to a Service with only one of the pair and kept it; leaving
    # it out of the mesh (NXDOMAIN for its mesh name) broke manifests written for Traefik Mesh
    state = ClusterState.from_objects([
        pod("w", "10.0.0.2", sa="web"),
        svc("avg", ports=[{"port": 80}], annotations={"mesh.traefik.io/ratelimit-average": "100"}),
        eps("avg", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
        svc("burst", ports=[{"port": 80}], annotations={"maesh.containo.us/ratelimit-burst": "10"}),
        eps("burst", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
        svc("bad", ports=[{"port": 80}], annotations={"mesh.traefik.io/ratelimit-average": "lots"}),
        eps("bad", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
    ])
    result = build(state, Settings(), 1)
    errors = {(e.name, e.field): e.message for e in result.errors}
    assert errors[("avg", "metadata.annotations[mesh.traefik.io/ratelimit-average]")] == (
        "annotation mesh.traefik.io/ratelimit-average='100': needs mesh.traefik.io/ratelimit-burst too; "
        "no rate limit is applied; the service stays in the mesh")
    assert "needs maesh.containo.us/ratelimit-average too" in errors[
        ("burst", "metadata.annotations[maesh.containo.us/ratelimit-burst]")]
    # nor does a bad value of half a pair leave it out: Traefik Mesh ignored half a pair before
    # reading its value, and no rate limit applies whatever it is
    assert errors[("bad", "metadata.annotations[mesh.traefik.io/ratelimit-average]")] == (
        "annotation mesh.traefik.io/ratelimit-average='lots': must be a whole number, and needs "
        "mesh.traefik.io/ratelimit-burst too; no rate limit is applied; the service stays in the mesh")
    meshed = {s.name for s in result.topology.services.values()}
    assert {"avg", "burst", "bad"} <= meshed
    routed = {r.service.split(":")[0] for r in result.config.http.routers}
    assert routed == {"app/avg", "app/bad", "app/burst"}, routed
    assert not result.config.http.middlewares  # and no rate limit anywhere


def test_numbers_above_our_bounds_that_traefik_mesh_accepted_are_reported_and_capped():
    state = ClusterState.from_objects([
        pod("w", "10.0.0.2", sa="web"),
        svc("many", ports=[{"port": 80}], annotations={
            "mesh.traefik.io/retry-attempts": "200", "mesh.traefik.io/ratelimit-average": "5000000",
            "mesh.traefik.io/ratelimit-burst": "9" * 40}),
        eps("many", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
        svc("none", ports=[{"port": 80}], annotations={"mesh.traefik.io/retry-attempts": "0"}),
        eps("none", [{"addresses": ["10.0.0.2"]}], [{"port": 80}]),
    ])
    result = build(state, Settings(), 1)
    errors = {(e.name, e.field): e.message for e in result.errors}
    assert errors[("many", "metadata.annotations[mesh.traefik.io/retry-attempts]")] == (
        "annotation mesh.traefik.io/retry-attempts='200': must be between 1 and 100; "
        "100 is used; the service stays in the mesh")
    assert errors[("many", "metadata.annotations[mesh.traefik.io/ratelimit-average]")].endswith(
        "1000000 is used; the service stays in the mesh")
    assert errors[("many", "metadata.annotations[mesh.traefik.io/ratelimit-burst]")].endswith(
        "1000000 is used; the service stays in the mesh")
    meshed = {s.name for s in result.topology.services.values()}
    assert "many" in meshed and "none" not in meshed  # below the bound is still an error
    by_type = {m.type: m for m in result.config.http.middlewares}
    assert by_type["retry"].attempts == 99  # retries after the first try: 100 tries in all
    assert (by_type["rate_limit"].average, by_type["rate_limit"].burst) == (1_000_000, 1_000_000)


@pytest.mark.parametrize("written, name, refused", [
    ("shop", "shop", False),
    ("shop.canary", "shop", False),
    ("shop.canary.svc", "shop", False),
    ("shop.canary.svc.cluster.local", "shop", False),
    ("shop.canary.svc.corp.example", "shop", False),  # another cluster domain
    ("shop.elsewhere", "shop", True),  # a namesake in another namespace: not this namespace's shop
    ("shop.elsewhere.svc.cluster.local", "shop", True),
    ("shop.canary.cluster.local", "shop", True),
])
def test_a_split_service_written_as_a_name_in_another_namespace_is_refused(written, name, refused):
    from lightmesh.controller.topology import _split_service_name

    got, problem = _split_service_name(written, "canary")
    assert got == name and (problem is not None) == refused
    if refused:
        assert f"{written!r} is not a Service of namespace canary" in problem


@pytest.mark.parametrize("match, field, message", [
    ({"name": "routes"}, "spec.matches[0].kind",
     "no kind: must be HTTPRouteGroup, TCPRoute or UDPRoute; the TrafficSplit is ignored"),
    ({"kind": "HTTPRoute", "name": "routes"}, "spec.matches[0].kind",
     "'HTTPRoute': must be HTTPRouteGroup, TCPRoute or UDPRoute; the TrafficSplit is ignored"),
    ({"kind": "HTTPRouteGroup"}, "spec.matches[0].name", "missing; the TrafficSplit is ignored"),
    ({"kind": "HTTPRouteGroup", "name": "nope"}, "spec.matches[0]",
     "HTTPRouteGroup app/nope not found; the TrafficSplit is ignored"),
])
def test_a_split_match_without_a_kind_or_name_says_so(match, field, message):
    # Before: a match without a kind, or of another kind, read "None app/routes not found" (or
    # "HTTPRoute app/routes not found") although the group named exists.
    state = ClusterState.from_objects([
        svc("web"), svc("web-v2"), group("routes", [{"name": "all", "pathRegex": ".*"}]),
        {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit", "metadata": {"name": "s", "namespace": "app"},
         "spec": {"service": "web", "backends": [{"service": "web-v2", "weight": 1}], "matches": [match]}},
    ])
    result = build(state, Settings(), 1)
    assert [(e.field, e.message) for e in result.errors if e.name == "s"] == [(field, message)]
    assert not result.topology.splits
