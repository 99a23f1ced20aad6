"""The pack reads TrafficSplits, L4 access rules, Gateway API backends and the controller's flags as the
controller reads them (two read-only audits compared the pack with the controller's own build):

* TrafficSplit service names: ``name``, ``name.<ns>``, ``name.<ns>.svc.<domain>`` are ``name`` in the
  split's namespace; a name in another namespace is refused (``topology._split_service_name``);
* a split backend of another traffic type than the root's, or without every port of the root, is
  dropped, and a split left with no usable backend is ignored;
* a split ``matches`` entry without ``kind`` makes the controller ignore the split, and so do matches
  naming no valid HTTP match for an http root;
* a TCPRoute/UDPRoute limited to ports lets traffic in only on a Service port (or numeric targetPort)
  it lists: another Service's port of the same ServiceAccount does not cover a Service;
* a Gateway API backendRef whose ``port`` is not a port of the backend Service is dropped;
* flags the controller's settings refuse at start (``--watch-namespaces`` naming kube-system or the
  mesh namespace, a namespace both watched and ignored) are reported, and do not hide violations.

Each case is checked against the controller itself (``lightmesh.controller.build``) on the same objects.
"""

import copy
import re

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from lightmesh.controller.build import build
from lightmesh.controller.main import settings_from_args
from lightmesh.controller.model import ClusterState, Settings
from lightmesh_policies import model
from lightmesh_policies.rules import acl_service_has_traffic_target, require_acl, traffic_split_valid
from policykit import (R, controller, deployment, http_route_group, messages, on_stack, pods_and_slices, port_route,
                       proxy, run_policy, service, traffic_split, traffic_target)

HTTP = {"lightmesh.io/traffic-type": "http"}
RULE = [{"kind": "HTTPRouteGroup", "name": "all"}]


# ------------------------------------------------------------------------- the controller, as reference


def controller_build(stack, acl=True):
    """What the controller builds from the stack's objects (its own code, with the pods and slices the
    cluster would add); the controller's and proxy's own workloads are left out."""
    objects = [copy.deepcopy(r.props) for r in stack if r.props.get("metadata", {}).get("namespace") != "lightmesh"]
    pods, slices = pods_and_slices(objects)
    return build(ClusterState.from_objects(objects + pods + slices), Settings(acl=acl), 1)


def controller_errors(stack, acl=True):
    return [str(e) for e in controller_build(stack, acl).errors]


# ------------------------------------------------------------------------------- 1. split service names


def split_stack(root="web", backends=(("web-v1", 90), ("web-v2", 10)), *, matches=None, v2_ports=None,
                v2_annotations=HTTP, acl=True):
    """An apex Service web (no pods) split between web-v1 and web-v2, each with a TrafficTarget for frontend."""
    stack = [controller(acl=acl), proxy(), deployment("shop", "frontend", {"app": "frontend"}, "frontend", kind="Pod"),
             service("shop", "web", HTTP, None), http_route_group("shop", "all", [{"name": "all", "pathRegex": "/.*"}]),
             traffic_split("shop", "canary", root, list(backends), matches=matches)]
    for name in ("web-v1", "web-v2"):
        stack += [deployment("shop", name, {"app": name}, name),
                  service("shop", name, v2_annotations if name == "web-v2" else HTTP, {"app": name},
                          ports=v2_ports if name == "web-v2" else None),
                  traffic_target("shop", f"to-{name}", name, ["frontend"], RULE)]
    return stack


@pytest.mark.parametrize("root", ["web.shop", "web.shop.svc", "web.shop.svc.cluster.local"])
def test_a_split_root_and_backends_written_as_dns_names_are_the_services_of_the_split_namespace(root):
    stack = split_stack(root, [("web-v1.shop", 90), ("web-v2.shop.svc.cluster.local", 10)])
    split = controller_build(stack).topology.splits["shop/web"]  # the reference: the controller applies it
    assert [(b.service, b.weight) for b in split.backends] == [("shop/web-v1", 90), ("shop/web-v2", 10)]
    # was: "root Service shop/web.shop is not declared", "'web-v1.shop' is not a Service name"
    assert run_policy(traffic_split_valid, stack) == []
    # the root is an apex again (the split was not seen as rooted at shop/web): judged through its backends
    assert run_policy(acl_service_has_traffic_target, stack) == []
    # ... and those backends are the ones judged: one its callers may not reach is reported
    unreachable = [r for r in stack if r.name != "to-web-v2-tt"]
    [msg] = messages(run_policy(acl_service_has_traffic_target, unreachable))
    assert msg.startswith("Service shop/web-v2 (http) is not the destination of any TrafficTarget")


@pytest.mark.parametrize("config", [{}, {"allow_external_services": True}])
def test_a_split_root_in_another_namespace_is_reported_as_the_controller_refuses_it(config):
    stack = split_stack("web.other")
    [error] = [e for e in controller_errors(stack) if "TrafficSplit" in e]
    assert "the TrafficSplit is ignored" in error
    [msg] = messages(run_policy(traffic_split_valid, stack, config))
    assert msg.startswith("TrafficSplit shop/canary spec.service 'web.other' is not a Service of namespace shop: a "
                          "TrafficSplit's services are in its own namespace (its name alone, or "
                          "web.shop.svc.<cluster domain>): the controller ignores this TrafficSplit. Fix: ")
    assert msg.split(": a TrafficSplit")[0].split("spec.service ")[1] in error  # the controller's own words
    assert "create the TrafficSplit in that namespace" in msg
    # the apex is no split's root then: the controller has nothing to send its traffic to
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert msg.startswith("Service shop/web is a mesh Service, but the ServiceAccount of its pods cannot be resolved")


def test_a_split_backend_in_another_namespace_is_reported_as_dropped():
    stack = split_stack(backends=[("web-v1", 90), ("web-v2.other", 10)])
    assert [b.service for b in controller_build(stack).topology.splits["shop/web"].backends] == ["shop/web-v1"]
    [msg] = messages(run_policy(traffic_split_valid, stack, {"allow_external_services": True}))
    assert msg.startswith("TrafficSplit shop/canary backends[1] service 'web-v2.other' is not a Service of namespace "
                          "shop")
    assert "the controller drops this backend" in msg and " Fix: " in msg
    # a name the controller refuses in the split's own namespace: told how to write it
    stack = split_stack(backends=[("web-v1", 90), ("web-v2.shop.cluster", 10)])
    [msg] = messages(run_policy(traffic_split_valid, stack))
    assert "Fix: write 'web-v2' (or web-v2.shop.svc.<cluster domain>)" in msg


# ------------------------------------------------------------------- 2./3. backends the controller drops


def test_a_split_backend_of_another_traffic_type_is_reported_as_dropped():
    stack = split_stack(v2_annotations={"lightmesh.io/traffic-type": "tcp"})
    built = controller_build(stack)
    assert [b.service for b in built.topology.splits["shop/web"].backends] == ["shop/web-v1"]
    assert any("backend shop/web-v2 is tcp, the root is http; backend ignored" in str(e) for e in built.errors)
    msgs = messages(run_policy(traffic_split_valid, stack))
    assert msgs == ["TrafficSplit shop/canary backends[1] (web-v2): Service shop/web-v2 is tcp, the root shop/web is "
                    "http: the controller drops this backend (\"backend ignored\"), so it gets none of the split's "
                    "traffic. Fix: give Service shop/web-v2 the root's traffic type (annotation "
                    "lightmesh.io/traffic-type: http, MeshService traffic_type), or split shop/web between Services "
                    "of its own traffic type."]
    # the only backend of weight above 0 dropped: the controller ignores the whole split
    only = split_stack(backends=[("web-v1", 0), ("web-v2", 100)], v2_annotations={"lightmesh.io/traffic-type": "tcp"})
    assert "shop/web" not in controller_build(only).topology.splits
    msgs = messages(run_policy(traffic_split_valid, only))
    assert len(msgs) == 2 and msgs[1].startswith(
        "TrafficSplit shop/canary has no backend the controller can use with a weight above 0 (it drops backends[1] "
        "'web-v2'): it ignores the whole TrafficSplit")


def test_a_split_backend_without_every_port_of_the_root_is_reported_as_dropped():
    stack = split_stack(v2_ports=[{"name": "http", "port": 8000, "targetPort": 80}])
    built = controller_build(stack)
    assert [b.service for b in built.topology.splits["shop/web"].backends] == ["shop/web-v1"]
    assert any("backend shop/web-v2 does not expose port(s) 80 of the root; backend ignored" in str(e)
               for e in built.errors)
    [msg] = messages(run_policy(traffic_split_valid, stack))
    assert msg.startswith("TrafficSplit shop/canary backends[1] (web-v2): Service shop/web-v2 does not expose port(s) "
                          "80 of the root shop/web (it has 8000;")
    assert "Fix: add port(s) 80 to Service shop/web-v2 (spec.ports[].port; its targetPort may differ)" in msg
    # the port matters, not the targetPort; and a UDP port of the same number is no port of an http Service
    same_port = split_stack(v2_ports=[{"port": 80, "targetPort": 9090}])
    assert run_policy(traffic_split_valid, same_port) == []
    udp = split_stack(v2_ports=[{"port": 80, "protocol": "UDP"}, {"port": 81}])
    assert "shop/web-v2" not in [b.service for b in controller_build(udp).topology.splits["shop/web"].backends]
    [msg] = messages(run_policy(traffic_split_valid, udp))
    assert "does not expose port(s) 80 of the root shop/web (it has 81;" in msg


def test_dropped_split_backends_are_not_judged_for_coverage_or_reachability():
    # web-v2 (not annotated: judged on the apex's behalf) lacks port 80: the controller drops it, so its
    # missing TrafficTarget denies nobody the split's traffic
    stack = [r for r in split_stack(v2_annotations=None, v2_ports=[{"port": 8000}]) if r.name != "to-web-v2-tt"]
    assert [b.service for b in controller_build(stack).topology.splits["shop/web"].backends] == ["shop/web-v1"]
    assert run_policy(acl_service_has_traffic_target, stack) == []
    msgs = messages(run_policy(traffic_split_valid, stack))
    assert len(msgs) == 1 and "the controller drops this backend" in msgs[0]  # not "not reachable by"
    # kept, it is judged
    kept = [r for r in split_stack(v2_annotations=None) if r.name != "to-web-v2-tt"]
    [msg] = messages(run_policy(acl_service_has_traffic_target, kept))
    assert msg.startswith("Service shop/web (root of TrafficSplit shop/canary, no pods of its own) through its backend "
                          "Service shop/web-v2")


def test_unknown_split_backend_types_and_ports_are_not_judged():
    stack = split_stack(v2_annotations={"lightmesh.io/traffic-type": UNKNOWN_STRING_VALUE})
    assert run_policy(traffic_split_valid, stack) == []
    stack = split_stack(v2_ports=[{"port": UNKNOWN_STRING_VALUE}])
    assert run_policy(traffic_split_valid, stack) == []


# ------------------------------------------------------------------------------- 4. split matches


def test_a_split_match_without_kind_is_reported_as_the_controller_ignores_the_split():
    stack = split_stack(matches=[{"name": "all"}])
    built = controller_build(stack)
    assert "shop/web" not in built.topology.splits
    assert any("spec.matches[0]" in str(e) and "the TrafficSplit is ignored" in str(e) for e in built.errors)
    [msg] = messages(run_policy(traffic_split_valid, stack))
    assert msg == ("TrafficSplit shop/canary matches[0] ('all') has no kind: the controller reads a match only with its "
                   "kind (HTTPRouteGroup, TCPRoute or UDPRoute) and ignores a TrafficSplit with any other match. Fix: "
                   "set matches[0].kind to HTTPRouteGroup (TrafficSplitArgs matches= creates one with its kind).")
    with_kind = split_stack(matches=[{"kind": "HTTPRouteGroup", "name": "all"}])
    assert "shop/web" in controller_build(with_kind).topology.splits
    assert run_policy(traffic_split_valid, with_kind) == []


def test_an_http_split_whose_matches_name_no_valid_http_match_is_reported_as_ignored():
    beta = http_route_group("shop", "beta", [{"name": "b", "methods": ["GET,POST"]}])  # a match the controller ignores
    for matches, extra in (([{"kind": "HTTPRouteGroup", "name": "beta"}], beta),
                           ([{"kind": "TCPRoute", "name": "db"}], port_route("TCPRoute", "shop", "db"))):
        stack = split_stack(matches=matches) + [extra]
        built = controller_build(stack)
        assert "shop/web" not in built.topology.splits
        assert any("the referenced HTTPRouteGroups have no valid match; the TrafficSplit is ignored" in str(e)
                   for e in built.errors)
        [msg] = messages(run_policy(traffic_split_valid, stack))
        assert msg.startswith("TrafficSplit shop/canary matches name no HTTP match the controller accepts"), msg
        assert "(\"the referenced HTTPRouteGroups have no valid match\")" in msg and " Fix: " in msg


# ------------------------------------------------------------------- 5. TCPRoute/UDPRoute ports and coverage


def data_stack(route_ports, cache_port=6379, destination_port=None, kind="TCPRoute"):
    """One ServiceAccount (data) behind two Services, db on 5432 and cache; a TrafficTarget whose
    TCPRoute/UDPRoute allows ``route_ports``."""
    traffic, protocol = ("tcp", "TCP") if kind == "TCPRoute" else ("udp", "UDP")
    cache = cache_port if isinstance(cache_port, dict) else {"port": cache_port}
    stack = [controller(acl=True), proxy(), deployment("shop", "client", {"app": "client"}, "client", kind="Pod"),
             deployment("shop", "data", {"app": "data"}, "data"),
             service("shop", "db", {"lightmesh.io/traffic-type": traffic}, {"app": "data"},
                     ports=[{"port": 5432, "protocol": protocol}]),
             service("shop", "cache", {"lightmesh.io/traffic-type": traffic}, {"app": "data"},
                     ports=[{**cache, "protocol": protocol}]),
             port_route(kind, "shop", "pg", ports=route_ports),
             traffic_target("shop", "c2d", "data", ["client"], [{"kind": kind, "name": "pg"}])]
    if destination_port is not None:
        stack[-1].props["spec"]["destination"]["port"] = destination_port
    return stack


def allowed_sources(stack, service_key, kind="TCPRoute"):
    """The sources the controller's proxy config lets in to a Service (every port of it)."""
    config = controller_build(stack).config
    routes = config.tcp if kind == "TCPRoute" else config.udp
    return sorted({s for r in routes if r.name.startswith(service_key + ":") for s in (r.allowed_sources or [])})


@pytest.mark.parametrize("kind", ["TCPRoute", "UDPRoute"])
def test_an_l4_rule_limited_to_another_services_port_does_not_cover_a_service(kind):
    stack = data_stack([5432], kind=kind)
    assert allowed_sources(stack, "shop/db", kind) != [] and allowed_sources(stack, "shop/cache", kind) == []
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))  # was: none (cache counted as covered)
    field = "tcp" if kind == "TCPRoute" else "udp"
    assert msg.startswith(f"Service shop/cache ({field}) is not allowed on any of its ports: the {kind} rules of the "
                          f"TrafficTargets for ServiceAccount shop/data are limited to ports it does not serve "
                          f"(TrafficTarget shop/c2d rules[0] ({kind} shop/pg: port(s) 5432)); a {kind} rule allows "
                          f"only the ports it lists, and the controller compares them with Service shop/cache's "
                          f"{field.upper()} ports and their numeric targetPorts (6379)"), msg
    assert f'Fix: add its port to the route (AccessPolicy {field}={{"ports": [6379]}})' in msg
    # every port, or the cache's own port, covers it
    for ports in ([], [5432, 6379]):
        assert allowed_sources(data_stack(ports, kind=kind), "shop/cache", kind) != []
        assert run_policy(acl_service_has_traffic_target, data_stack(ports, kind=kind)) == []


def test_an_l4_rule_counts_on_a_target_port_as_the_controller_compares_it():
    # cache 6379 -> targetPort 5432: the controller accepts the numeric targetPort in the route's ports
    stack = data_stack([5432], cache_port={"port": 6379, "targetPort": 5432})
    assert allowed_sources(stack, "shop/cache") != []
    assert run_policy(acl_service_has_traffic_target, stack) == []
    # a TrafficTarget on destination port 6379 (cache's pods' port) with a TCPRoute allowing only 5432 (db's):
    # the controller attaches it to cache only, where the route lets nothing in
    stack = data_stack([5432], destination_port=6379)
    assert allowed_sources(stack, "shop/cache") == []
    msgs = messages(run_policy(acl_service_has_traffic_target, stack))
    assert any(m.startswith("Service shop/cache (tcp) is not allowed on any of its ports") for m in msgs), msgs


def test_an_l4_rule_with_unknown_ports_is_not_judged():
    stack = data_stack([UNKNOWN_STRING_VALUE])
    assert run_policy(acl_service_has_traffic_target, stack) == []
    stack = data_stack([5432], cache_port={"port": UNKNOWN_STRING_VALUE})
    assert run_policy(acl_service_has_traffic_target, stack) == []


# ------------------------------------------------------------------- 6. Gateway API backend ports


def http_route(backends, parent="web"):
    return R("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "canary-hr",
             {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
              "metadata": {"name": "canary", "namespace": "shop"},
              "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent}],
                       "rules": [{"backendRefs": backends}]}})


def route_stack(backends):
    return [r for r in split_stack() if r.name != "canary-ts"] + [http_route(backends)]


def test_a_route_backend_on_a_port_the_service_does_not_have_is_reported_as_dropped():
    stack = route_stack([{"name": "web-v1", "port": 8080}])  # web-v1's port is 80 (8080 would be a targetPort)
    built = controller_build(stack)
    assert any("backend shop/web-v1 port 8080 is not a mesh Service port; backend ignored" in str(e)
               for e in built.errors)
    assert [b.service for rule in built.topology.mesh_routes["shop/web"] for b in rule.backends] == [""]
    [msg] = messages(run_policy(traffic_split_valid, stack))  # was: none
    assert msg == ("HTTPRoute shop/canary spec.rules[0].backendRefs[0] (Service shop/web-v1): port 8080 is not a port "
                   "of Service shop/web-v1 the controller meshes (80: its TCP ports, by its traffic type http); the "
                   "controller drops this backend (\"not a mesh Service port; backend ignored\"), so the rule is left "
                   "with no backend and requests matching it answer 500. Fix: set "
                   "spec.rules[0].backendRefs[0].port to a port of the Service (its spec.ports[].port, not the "
                   "targetPort).")
    # a backendRef without a port is dropped too
    [msg] = messages(run_policy(traffic_split_valid, route_stack([{"name": "web-v1"}])))
    assert "no port is set" in msg and "requests matching it answer 500" in msg
    # next to a backend the controller keeps: that one takes the traffic
    stack = route_stack([{"name": "web-v1", "port": 80}, {"name": "web-v2", "port": 8080}])
    assert [b.service for b in controller_build(stack).topology.mesh_routes["shop/web"][0].backends] == [
        "shop/web-v1", ""]
    [msg] = messages(run_policy(traffic_split_valid, stack))
    assert msg.startswith("HTTPRoute shop/canary spec.rules[0].backendRefs[1] (Service shop/web-v2): port 8080")
    assert "and its share goes to the rule's other backends" in msg
    assert run_policy(traffic_split_valid, route_stack([{"name": "web-v1", "port": 80.0}])) == []


def test_a_dropped_route_backend_is_not_judged_for_coverage_or_reachability():
    # web-v2 (not annotated: judged on the apex's behalf; no TrafficTarget) is dropped by the controller: it
    # denies nobody the route's traffic
    def stack_with(port):
        stack = route_stack([{"name": "web-v1", "port": 80}, {"name": "web-v2", "port": port}])
        return [service("shop", "web-v2", None, {"app": "web-v2"}) if r.name == "web-v2-svc" else r
                for r in stack if r.name != "to-web-v2-tt"]
    assert run_policy(acl_service_has_traffic_target, stack_with(8080)) == []
    msgs = messages(run_policy(traffic_split_valid, stack_with(8080)))
    assert len(msgs) == 1 and "the controller drops this backend" in msgs[0]  # not "not reachable by"
    # kept, it is judged
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack_with(80)))
    assert msg.startswith("Service shop/web (parent of HTTPRoute shop/canary, no pods of its own) through its backend "
                          "Service shop/web-v2")
    [msg] = messages(run_policy(traffic_split_valid, stack_with(80)))
    assert "backend 'web-v2' (ServiceAccount shop/web-v2) is not reachable by shop/frontend" in msg


def test_an_unknown_route_backend_port_is_not_judged():
    assert run_policy(traffic_split_valid, route_stack([{"name": "web-v1", "port": UNKNOWN_STRING_VALUE}])) == []


# ------------------------------------------------------------------- 7. flags the controller refuses at start


def workload(r):
    return model.workload_from(model.resource_from_policy(r.type, r.name, r.urn, r.props))


def controller_refusal(extra_args):
    """What the controller says about these flags: the ValueError of its own settings_from_args, or None."""
    import argparse

    from lightmesh.controller.main import configure
    parser = argparse.ArgumentParser()
    configure(parser)
    try:
        settings_from_args(parser.parse_args(extra_args))
    except ValueError as exc:
        return str(exc)
    return None


def shop_stack(*extra_args):
    return [controller(acl=True, extra_args=list(extra_args)), proxy(),
            deployment("shop", "web", {"app": "web"}, "web"), service("shop", "web", HTTP, {"app": "web"})]


@pytest.mark.parametrize("extra_args", [
    ["--watch-namespaces", "shop", "--ignore-namespaces", "shop"],
    ["--watch-namespaces=shop,kube-system"],
    ["--watch-namespaces", "shop,lightmesh"],
    ["--namespace", "mesh", "--watch-namespaces", "mesh"],
    ["--watch-n", "shop", "--ignore", "shop,other"],  # abbreviations, as argparse takes them
    ["--http-port-base", "65535", "--http-port-limit", "10"],
    ["--domains", "my mesh"],
])
def test_flags_the_controller_refuses_at_start_are_reported(extra_args):
    refusal = controller_refusal(extra_args)
    assert refusal is not None  # the reference: `lightmesh controller` exits at start with these
    stack = shop_stack(*extra_args)
    for on in (stack, on_stack(stack, "prod")):  # on every stack, production or not
        [msg] = messages(run_policy(require_acl, on))
        assert msg == (f"Lightmesh controller Deployment lightmesh/lightmesh-controller container "
                       f"'lightmesh-controller' command/args: the controller refuses these flags at start: {refusal}. "
                       f"It logs \"invalid settings\" and exits (code 2), over and over (crash loop), so there is no "
                       f"mesh at all. Fix: " + msg.split(" Fix: ")[1])
    assert model.controller_settings_problem(workload(stack[0])) == refusal


def test_a_namespace_both_watched_and_ignored_no_longer_hides_violations():
    # the pack read the overlap as "shop ignored" and skipped its Services: a controller that would not start
    # is judged by the defaults, as for --acl=true
    stack = shop_stack("--watch-namespaces", "shop", "--ignore-namespaces", "shop")
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert msg.startswith("Service shop/web (http) is not the destination of any TrafficTarget")
    [msg] = messages(run_policy(require_acl, stack))
    assert "--watch-namespaces and --ignore-namespaces both name shop" in msg
    assert "Fix: name each namespace in one of the two lists only (MeshInstallArgs watch_namespaces, " \
           "ignore_namespaces)" in msg


def test_flags_the_controller_takes_are_not_reported():
    for extra_args in ([], ["--watch-namespaces", "shop", "--ignore-namespaces", "other"],
                       ["--namespace", "mesh", "--watch-namespaces", "lightmesh"], ["--domains", "Mesh."]):
        assert controller_refusal(extra_args) is None, extra_args
        assert run_policy(require_acl, shop_stack(*extra_args)) == [], extra_args
    # a value not known yet that the settings depend on: not judged; one they do not: still judged
    assert run_policy(require_acl, shop_stack("--watch-namespaces", "shop", "--namespace", UNKNOWN_STRING_VALUE)) == []
    assert run_policy(require_acl, shop_stack("--watch-namespaces", "shop", "--ignore-namespaces",
                                              UNKNOWN_STRING_VALUE)) == []
    [msg] = messages(run_policy(require_acl, shop_stack("--watch-namespaces", "kube-system", "--otlp-endpoint",
                                                        UNKNOWN_STRING_VALUE)))
    assert "--watch-namespaces names kube-system" in msg
    # --acl=true is its parser's refusal, reported as such (once)
    [msg] = messages(run_policy(require_acl, shop_stack("--acl=true", "--watch-namespaces", "kube-system")))
    assert "--acl is a switch and takes no value" in msg


@pytest.mark.parametrize("extra_args, said", [
    (["--watch-namespaces=Bad_NS"], "argument --watch-namespaces: 'Bad_NS' is not a namespace name"),
    (["--api-port", "70000"], "argument --api-port: 70000 is not a port number (1-65535)"),
    (["--watchNamespaces=shop"], "unrecognized arguments: --watchNamespaces=shop"),  # Traefik Mesh's spelling
    (["--d", "x"], "ambiguous option: --d could match"),
])
def test_flags_the_controllers_parser_refuses_are_reported(extra_args, said):
    # only --acl=<value> was: any other flag its parser refuses stopped the controller without a word
    import argparse

    from lightmesh.controller.main import configure
    parser = argparse.ArgumentParser(exit_on_error=False)
    configure(parser)
    parser.error = lambda message: (_ for _ in ()).throw(argparse.ArgumentError(None, message))
    with pytest.raises(argparse.ArgumentError, match=re.escape(said)) as refused:  # the reference
        parser.parse_args(extra_args)
    stack = shop_stack(*extra_args)
    for on in (stack, on_stack(stack, "prod")):
        [msg] = messages(run_policy(require_acl, on))
        assert msg.startswith("Lightmesh controller Deployment lightmesh/lightmesh-controller container "
                              f"'lightmesh-controller' command/args: the controller's flag parser refuses them at "
                              f"start ({refused.value}), so it exits (code 2)"), msg


def test_acl_with_a_value_is_reported_once_in_its_own_words():
    [msg] = messages(run_policy(require_acl, shop_stack("--acl=true")))
    assert "--acl is a switch and takes no value" in msg
