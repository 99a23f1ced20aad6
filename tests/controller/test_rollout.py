"""Application rollouts through the mesh (audit z16): HTTP mesh ports that stay put while a Service's
port list changes, serving terminating endpoints while a Service has no ready one, EndpointSlices
the mesh cannot use reported, ``ports: null`` as a missing ``ports``."""

from __future__ import annotations

import json

from hypothesis import given, settings as hsettings, strategies as st

from lightmesh.controller.build import build
from lightmesh.controller.events import EventRecorder
from lightmesh.controller.model import ClusterState, Settings
from lightmesh.controller.ports import PortTable, allocate_ports
from lightmesh.controller.shadow import desired_shadow_services
from lightmesh.controller.topology import build_topology

SETTINGS = Settings()


def http_service(name, ports, ns="shop"):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "annotations": {"lightmesh.io/traffic-type": "http"}},
            "spec": {"ports": [{"name": f"p{p}", "port": p, "targetPort": p + 1000} for p in ports]}}


class Controller:
    """Rounds of the pure core as the shell runs them: each round sees the shadow Services the last
    round wrote (what kube-proxy may still route by while this round's write is on its way) and
    passes its port table on."""

    def __init__(self, settings: Settings = SETTINGS) -> None:
        self.settings = settings
        self.shadows: list[dict] = []
        self.table: PortTable | None = None

    def round(self, services: list[dict]) -> PortTable:
        topology = build_topology(ClusterState(services=services), self.settings)
        table = allocate_ports(topology, self.shadows, self.settings, self.table)
        self.table, self.shadows = table, desired_shadow_services(topology, table, self.settings)
        return table


def routed(shadows: list[dict]) -> dict[tuple[str, int], int]:
    """(Service key, mesh port) → the Service port a shadow Service sends there."""
    out = {}
    for s in shadows:
        labels = s["metadata"]["labels"]
        key = f"{labels['lightmesh.io/service-namespace']}/{labels['lightmesh.io/service-name']}"
        for p in s["spec"]["ports"]:
            out[(key, p["targetPort"])] = p["port"]
    return out


def assert_safe(old_shadows: list[dict], table: PortTable) -> None:
    """No mesh port a (not yet patched) shadow sends port P of a Service to means another port of it:
    Host matching ignores the port, so that client would get the other port's pods."""
    unsafe: dict[str, list[str]] = {}
    ports_of: dict[str, int] = {}
    for (key, port), mesh in table.http.items():
        ports_of[key] = ports_of.get(key, 0) + 1
        before = routed(old_shadows).get((key, mesh))
        if before not in (None, port):
            unsafe.setdefault(key, []).append(
                f"{key}: mesh port {mesh} means port {port} now, its shadow still sends port {before}")
    for key, problems in unsafe.items():
        # the one exception: every port of the Service replaced at its limit (no free mesh port for
        # any of them) reuses the held ones rather than lose its shadow (see ports._allocate_http)
        assert len(problems) == ports_of[key] and all_replaced(old_shadows, table, key), problems


def all_replaced(old_shadows: list[dict], table: PortTable, key: str) -> bool:
    """No port of ``key`` in ``table`` is one its old shadow routes (all of them are new)."""
    old_ports = {port for (k, _), port in routed(old_shadows).items() if k == key}
    return not any(port in old_ports for (k, port) in table.http if k == key)


# ---------------------------------------------------------------------------- 1. stable HTTP mesh ports


def test_a_port_added_in_front_keeps_the_others_mesh_ports():
    c = Controller()
    assert c.round([http_service("web", [9090])]).http == {("shop/web", 9090): 5000}
    old = c.shadows
    table = c.round([http_service("web", [80, 9090])])
    assert table.http == {("shop/web", 80): 5001, ("shop/web", 9090): 5000}
    assert_safe(old, table)


def test_removing_the_first_port_does_not_move_the_second_onto_its_mesh_port():
    # [http 80, admin 9090] → [admin 9090] turned 5000 into web:9090: clients of web:80 whose node had
    # the old shadow rule reached the admin port with a 200.
    c = Controller()
    assert c.round([http_service("web", [80, 9090])]).http == {("shop/web", 80): 5000, ("shop/web", 9090): 5001}
    old = c.shadows
    table = c.round([http_service("web", [9090])])
    assert table.http == {("shop/web", 9090): 5001}
    assert_safe(old, table)


def test_reordered_ports_keep_their_mesh_ports():
    c = Controller()
    first = c.round([http_service("web", [80, 9090, 8443])]).http
    assert c.round([http_service("web", [8443, 9090, 80])]).http == first


def test_a_freed_mesh_port_goes_to_another_port_of_that_service_only_once_no_shadow_sends_there():
    c = Controller()
    c.round([http_service("web", [80, 9090]), http_service("api", [8080])])
    old = c.shadows
    # 80 removed and 8443 added in one change: 5000 still receives web:80's clients (old shadow)
    table = c.round([http_service("web", [9090, 8443]), http_service("api", [8080])])
    assert table.http == {("shop/api", 8080): 5000, ("shop/web", 8443): 5002, ("shop/web", 9090): 5001}
    assert_safe(old, table)
    # its shadow patched (written by that round and seen by the next): 5000 is free for web again
    table = c.round([http_service("web", [9090, 8443, 8081]), http_service("api", [8080])])
    assert table.http[("shop/web", 8081)] == 5000 and table.http[("shop/web", 8443)] == 5002


def test_a_shadow_write_still_on_its_way_holds_the_mesh_port_too():
    # The previous table maps port 80 to 5000 and its shadow may be written already, though this
    # round does not see it yet: another port of web must not take 5000 at once.
    c = Controller()
    c.round([http_service("web", [80])])
    c.shadows = []  # the write not seen yet
    table = c.round([http_service("web", [8443])])
    assert table.http == {("shop/web", 8443): 5001}


def test_exhaustion_by_a_port_a_shadow_still_routes_is_reported_for_that_port_only():
    c = Controller(Settings(http_port_limit=2))
    c.round([http_service("web", [80, 9090])])
    table = c.round([http_service("web", [9090, 8443])])
    assert table.http == {("shop/web", 9090): 5001}
    [err] = table.errors
    assert (err.name, err.field) == ("web", "spec.ports[port=8443]") and "http port limit" in err.message
    table = c.round([http_service("web", [9090, 8443])])  # web:80 gone from the shadow: 5000 free
    assert table.http == {("shop/web", 8443): 5000, ("shop/web", 9090): 5001} and not table.errors


def test_other_services_use_of_a_mesh_port_does_not_matter():
    c = Controller()
    c.round([http_service("a", [80, 81])])
    table = c.round([http_service("a", [81]), http_service("b", [80])])  # b is told apart by Host
    assert table.http == {("shop/a", 81): 5001, ("shop/b", 80): 5000}


def test_a_restarted_controller_recovers_the_moved_ports_from_the_shadow_services():
    c = Controller()
    c.round([http_service("web", [9090])])
    c.round([http_service("web", [80, 9090])])
    fresh = Controller()
    fresh.shadows = c.shadows
    assert fresh.round([http_service("web", [9090, 80])]).http == c.table.http


def test_the_proxy_config_serves_each_port_on_its_table_mesh_port():
    c = Controller()
    c.round([http_service("web", [9090])])
    services = [http_service("web", [80, 9090])]
    state = ClusterState(services=services, shadow_services=[
        {**s, "metadata": {**s["metadata"], "namespace": SETTINGS.mesh_namespace}} for s in c.shadows])
    result = build(state, SETTINGS, 1, previous_ports=c.table)
    config = json.loads(result.config.model_dump_json())
    routers = {r["service"]: r["entry_points"] for r in config["http"]["routers"]}
    assert routers == {"shop/web:80": ["http-5001"], "shop/web:9090": ["http-5000"]}
    assert sorted(e["port"] for e in config["http"]["entry_points"]) == [5000, 5001]
    shadow_ports = {p["port"]: p["targetPort"] for s in result.shadow_services for p in s["spec"]["ports"]}
    assert shadow_ports == {80: 5001, 9090: 5000}


PORT_LISTS = st.lists(st.lists(st.sampled_from([80, 81, 443, 8080, 9090]), max_size=4, unique=True),
                      min_size=2, max_size=6)


@hsettings(max_examples=300, deadline=None)
@given(PORT_LISTS, PORT_LISTS, st.sampled_from([2, 3, 10]))
def test_random_port_list_changes_keep_surviving_ports_and_never_reuse_a_routed_mesh_port(web, api, limit):
    settings = Settings(http_port_limit=limit)
    c = Controller(settings)
    previous: dict = {}
    for i in range(max(len(web), len(api))):
        services = [http_service(name, ports[min(i, len(ports) - 1)]) for name, ports in (("web", web), ("api", api))]
        old_shadows = c.shadows
        table = c.round(services)
        assert_safe(old_shadows, table)
        for key, mesh in table.http.items():
            assert settings.http_port_base <= mesh < settings.http_port_base + limit
            if key in previous:
                assert previous[key] == mesh, f"{key} moved from {previous[key]} to {mesh}"
        for name in ("web", "api"):
            mine = [m for (k, _), m in table.http.items() if k == f"shop/{name}"]
            assert len(mine) == len(set(mine)), "two ports of one Service share a mesh port"
        previous = dict(table.http)


def test_at_the_limit_replacing_every_port_keeps_the_shadow():
    # With --http-port-limit 1, [80] → [8443] left 8443 no free mesh port (5000 held for 80): the
    # Service had no meshed port, so its shadow was deleted and made again with a new ClusterIP a
    # round later, its mesh name unresolvable meanwhile. The held port is given instead.
    c = Controller(Settings(http_port_limit=1))
    assert c.round([http_service("web", [80])]).http == {("shop/web", 80): 5000}
    table = c.round([http_service("web", [8443])])
    assert table.http == {("shop/web", 8443): 5000} and not table.errors
    # with ports left that keep theirs, a replaced one still waits for its shadow (limit 2)
    c = Controller(Settings(http_port_limit=2))
    c.round([http_service("web", [80, 81])])
    old = c.shadows
    table = c.round([http_service("web", [80, 8443])])
    assert table.http == {("shop/web", 80): 5000}
    assert "not meshed for now" in table.errors[0].message
    assert_safe(old, table)


def test_of_the_ports_left_out_only_those_over_the_limit_are_told_so():
    # [80, 81] → [90, 91, 80] at limit 2: 80 keeps 5000, 5001 waits for the shadow; 90 is only
    # waiting (meshed once the shadow is patched), 91 is the one over the limit.
    c = Controller(Settings(http_port_limit=2))
    c.round([http_service("web", [80, 81])])
    table = c.round([http_service("web", [90, 91, 80])])
    assert table.http == {("shop/web", 80): 5000}
    messages = {e.field: e.message for e in table.errors}
    assert "not meshed for now" in messages["spec.ports[port=90]"]
    assert "has 3 HTTP ports but the mesh serves 2" in messages["spec.ports[port=91]"]
    assert c.round([http_service("web", [90, 91, 80])]).http[("shop/web", 90)] == 5001


def test_over_the_limit_the_error_says_so_and_stays_after_a_reorder():
    c = Controller(Settings(http_port_limit=2))
    c.round([http_service("web", [80, 81, 82])])
    table = c.round([http_service("web", [82, 80, 81])])
    assert table.http == {("shop/web", 80): 5000, ("shop/web", 81): 5001}  # they keep their mesh ports
    [err] = table.errors
    assert "has 3 HTTP ports but the mesh serves 2" in err.message and "for now" not in err.message


def test_a_fresh_service_still_gets_its_ports_in_order():
    table = Controller(Settings(http_port_limit=2)).round([http_service("web", [80, 81, 82])])
    assert table.http == {("shop/web", 80): 5000, ("shop/web", 81): 5001}
    [err] = table.errors
    assert "HTTP port #3" in err.message and "http port limit" in err.message


# ---------------------------------------------------------------------------- 2. serving terminating endpoints


def web(ports=None, annotations=None):
    meta = {"name": "web", "namespace": "app"}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"ports": ports or [{"name": "http", "port": 80, "targetPort": 8080}]}}


def pod(name, ip, sa="web"):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "app"},
            "spec": {"serviceAccountName": sa}, "status": {"phase": "Running", "podIP": ip}}


def eps(name, endpoints, ports=None, service="web", address_type="IPv4"):
    out = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "app", "labels": {"kubernetes.io/service-name": service}},
           "addressType": address_type, "endpoints": endpoints}
    out["ports"] = [{"name": "http", "port": 8080, "protocol": "TCP"}] if ports is None else ports
    return out


def ep(ip, pod_name=None, **conditions):
    e = {"addresses": [ip], "conditions": conditions}
    if pod_name:
        e["targetRef"] = {"kind": "Pod", "name": pod_name, "namespace": "app"}
    return e


GRACE = {"ready": False, "serving": True, "terminating": True}


def servers(result, name="app/web:80"):
    config = json.loads(result.config.model_dump_json())
    return {s["name"]: [x["url"] for x in s["servers"]] for s in config["http"]["services"]}.get(name)


def test_a_service_with_only_pods_in_their_grace_period_keeps_them_as_servers():
    # Recreate rollout / scale to zero / a one-replica node drain: kube-proxy keeps sending to
    # serving terminating endpoints while there is no ready one, so svc.cluster.local answers.
    state = ClusterState(services=[web()], pods=[pod("a", "10.0.0.1"), pod("b", "10.0.0.2")],
                         endpoint_slices=[eps("web-1", [ep("10.0.0.1", "a", **GRACE), ep("10.0.0.2", "b", **GRACE),
                                                        ep("10.0.0.3", ready=False, serving=False, terminating=True),
                                                        ep("10.0.0.4", ready=False, terminating=True),  # serving = ready
                                                        ep("10.0.0.5", ready=False, serving=True)])])  # not terminating
    assert servers(build(state, SETTINGS, 1)) == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]


def test_terminating_endpoints_are_not_used_while_a_port_has_a_ready_one_and_the_choice_is_per_port():
    state = ClusterState(
        services=[web([{"name": "http", "port": 80, "targetPort": "http"},
                       {"name": "metrics", "port": 9090, "targetPort": "metrics"}])],
        endpoint_slices=[
            eps("web-1", [ep("10.0.0.1", ready=True), ep("10.0.0.2", **GRACE)]),
            # the new pod exposes only http: metrics has no ready endpoint, so its terminating ones serve
            eps("web-2", [ep("10.0.0.2", **GRACE), ep("10.0.0.9", ready=False, serving=False, terminating=True)],
                ports=[{"name": "metrics", "port": 9100, "protocol": "TCP"}]),
            # the same endpoint ready in another slice is ready
            eps("web-3", [ep("10.0.0.3", **GRACE)]), eps("web-4", [ep("10.0.0.3", ready=True)]),
        ])
    http, metrics = build_topology(state, SETTINGS).services["app/web"].ports
    assert [(e.ip, e.port) for e in http.endpoints] == [("10.0.0.1", 8080), ("10.0.0.3", 8080)]
    assert [(e.ip, e.port) for e in metrics.endpoints] == [("10.0.0.2", 9100)]


def test_acl_destination_pods_follow_the_same_endpoints():
    tt = {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
          "metadata": {"name": "t", "namespace": "app"},
          "spec": {"destination": {"kind": "ServiceAccount", "name": "web"},
                   "sources": [{"kind": "ServiceAccount", "name": "client"}],
                   "rules": [{"kind": "HTTPRouteGroup", "name": "all"}]}}
    group = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
             "metadata": {"name": "all", "namespace": "app"}, "spec": {"matches": [{"name": "all"}]}}
    base = dict(services=[web()], http_route_groups=[group], traffic_targets=[tt],
                pods=[pod("a", "10.0.0.1"), pod("other", "10.0.0.2", sa="other"), pod("c", "10.0.0.5", sa="client")])
    grace = build(ClusterState(**base, endpoint_slices=[eps("web-1", [ep("10.0.0.1", "a", **GRACE),
                                                                      ep("10.0.0.2", "other", **GRACE)])]),
                  Settings(acl=True), 1)
    config = json.loads(grace.config.model_dump_json())
    [allowed] = [r for r in config["http"]["routers"] if r["name"] == "app/web:80/tt/app/t/0"]
    [allow_list] = [m for m in config["http"]["middlewares"] if m["name"] == allowed["middlewares"][0]]
    assert allow_list["source_ranges"] == ["10.0.0.5/32"]
    dest = {s["name"]: [x["url"] for x in s["servers"]] for s in config["http"]["services"]}[allowed["service"]]
    assert dest == ["http://10.0.0.1:8080"]  # the destination ServiceAccount's terminating pod, not other's
    assert grace.topology.service_targets["app/web"][0].target.name == "t"
    # a ready pod back: the terminating ones leave the routers too
    ready = build(ClusterState(**base, endpoint_slices=[eps("web-1", [ep("10.0.0.1", "a", **GRACE),
                                                                      ep("10.0.0.3", ready=True)])]),
                  Settings(acl=True), 1)
    assert "http://10.0.0.1:8080" not in json.dumps(json.loads(ready.config.model_dump_json())["http"]["services"])


# ---------------------------------------------------------------------------- 3. FQDN slices reported


def test_an_fqdn_slice_is_reported_on_the_slice_not_dropped_silently():
    state = ClusterState(services=[web()], endpoint_slices=[
        eps("web-fqdn", [ep("db.example.com", ready=True)], address_type="FQDN"),
        eps("web-odd", [ep("10.0.0.1", ready=True)], address_type="ipv4"),
        eps("gone-fqdn", [ep("db.example.com", ready=True)], service="gone", address_type="FQDN"),  # no Service
    ])
    result = build(state, SETTINGS, 1)
    errors = {(e.kind, e.name, e.field): e.message for e in result.errors}
    assert set(errors) == {("EndpointSlice", "web-fqdn", "addressType"), ("EndpointSlice", "web-odd", "addressType")}
    assert errors[("EndpointSlice", "web-fqdn", "addressType")] == (
        "addressType FQDN is not supported (kube-proxy ignores it too); its endpoints are not used for service app/web")
    assert "'ipv4' is not supported (IPv4 or IPv6)" in errors[("EndpointSlice", "web-odd", "addressType")]
    assert servers(result) == []
    [err] = [e for e in result.errors if e.name == "web-fqdn"]
    event = EventRecorder(None, "test").body(err)
    assert event["involvedObject"] == {"kind": "EndpointSlice", "namespace": "app", "name": "web-fqdn",
                                       "apiVersion": "discovery.k8s.io/v1"}
    assert event["message"].startswith("addressType: addressType FQDN is not supported")


# ---------------------------------------------------------------------------- 4. ports: null


def test_a_slice_with_null_ports_is_a_slice_without_ports():
    missing = eps("web-1", [ep("10.0.0.1", ready=True)])
    del missing["ports"]
    null = eps("web-1", [ep("10.0.0.1", ready=True)])
    null["ports"] = None
    for sl in (missing, null):
        [p] = build_topology(ClusterState(services=[web()], endpoint_slices=[sl]), SETTINGS).services["app/web"].ports
        assert [(e.ip, e.port) for e in p.endpoints] == [("10.0.0.1", 8080)]


def test_a_split_backend_with_only_pods_in_their_grace_period_gives_its_share_to_ready_ones():
    # The fallback is per Service; a split used to send a backend's share to its terminating pods
    # while another backend had ready ones (README: such a backend's share goes to the others).
    def backend(name):
        return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "app"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}

    split = {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
             "metadata": {"name": "s", "namespace": "app"},
             "spec": {"service": "web", "backends": [{"service": "v1", "weight": 50}, {"service": "v2", "weight": 50}]}}

    def state(v1_conditions):
        return ClusterState(services=[web(), backend("v1"), backend("v2")], traffic_splits=[split],
                            endpoint_slices=[eps("v1-1", [ep("10.0.0.1", **v1_conditions)], service="v1"),
                                             eps("v2-1", [ep("10.0.0.2", **GRACE), ep("10.0.0.3", **GRACE)],
                                                 service="v2")])

    assert servers(build(state({"ready": True}), SETTINGS, 1)) == ["http://10.0.0.1:8080"]
    # no backend has a ready pod: the grace-period ones of every backend serve, each its share
    both = servers(build(state(GRACE), SETTINGS, 1))
    assert sorted(both) == ["http://10.0.0.1:8080", "http://10.0.0.2:8080", "http://10.0.0.3:8080"]
