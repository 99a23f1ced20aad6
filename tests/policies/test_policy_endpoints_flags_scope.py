"""The pack sees a Service's pods, the controller's flags and the namespaces it reads as the controller
does (a review found four gaps):

* a named ``targetPort`` is resolved per pod as Kubernetes resolves it: only the pods declaring that port
  name (with the Service port's protocol) are endpoints, so only their ServiceAccounts are the
  Service's, and a name no pod declares leads nowhere (not "unknown");
* at preview, container ports not known yet (the containers, a container, its ports, a port, its name,
  the whole pod spec) make that resolution unknown: nothing depending on it is judged;
* the controller's flags are read after Kubernetes' ``$(VAR)`` expansion from the container's
  environment (a literal ``value``, a ``fieldRef`` to ``metadata.namespace``); a value the stack does not
  tell is unknown, and the settings depending on it are not judged;
* TrafficSplits, Gateway API routes, TrafficTargets and SMI routes in a namespace the controller ignores
  (``--ignore-namespaces``, outside ``--watch-namespaces``, kube-system, the mesh namespace) are not
  judged: the controller reads none of them.

Each case is checked against the controller itself (``lightmesh.controller.build``), given the pods and
EndpointSlices Kubernetes would make.
"""

import argparse
import copy

import pytest
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE as U

from lightmesh.controller.build import build
from lightmesh.controller.main import configure, settings_from_args
from lightmesh.controller.model import ClusterState
from lightmesh_policies import model
from lightmesh_policies.rules import (acl_service_has_traffic_target, require_acl, traffic_split_valid,
                                      traffic_target_valid)
from policykit import (R, controller, deployment, http_route_group, messages, pods_and_slices, port_route, proxy,
                       run_policy, service, traffic_split, traffic_target)

HTTP = {"lightmesh.io/traffic-type": "http"}
TCP = {"lightmesh.io/traffic-type": "tcp"}
ACL_RULES = (acl_service_has_traffic_target, traffic_target_valid, traffic_split_valid)


# ------------------------------------------------------------------------- the controller, as reference


def controller_build(stack, flags=()):
    """What the controller builds from the stack's objects with these flags (its own parser and settings),
    given one running pod per workload and the EndpointSlices Kubernetes makes (named ports per pod)."""
    parser = argparse.ArgumentParser()
    configure(parser)
    settings = settings_from_args(parser.parse_args(["--acl", *flags]))
    objects = [copy.deepcopy(r.props) for r in stack if r.props["metadata"].get("namespace") != "lightmesh"]
    pods, slices = pods_and_slices(objects)
    return build(ClusterState.from_objects(objects + pods + slices), settings, 1)


def service_accounts(built, key):
    return sorted({e.service_account for p in built.topology.services[key].ports for e in p.endpoints})


def attached(built, key):
    return [st.target.key for st in built.topology.service_targets.get(key, ())]


def run_all(stack, policies=ACL_RULES):
    return [(p.name, m) for p in policies for m in messages(run_policy(p, stack))]


def with_ports(r, ports, container=0):
    r.props["spec"]["template"]["spec"]["containers"][container]["ports"] = ports
    return r


# ------------------------------------------------------------- 1. container ports not known at preview


def data_stack(b_ports, destination_port=6543):
    """Service db (tcp, targetPort pg) over data-a (pg is 5432) and data-b (pg is ``b_ports``), both of
    ServiceAccount data; a TrafficTarget for data on ``destination_port``."""
    stack = [controller(acl=True), proxy(), deployment("shop", "client", {"app": "client"}, "client"),
             with_ports(deployment("shop", "data-a", {"app": "data", "v": "a"}, "data"),
                        [{"name": "pg", "containerPort": 5432}]),
             with_ports(deployment("shop", "data-b", {"app": "data", "v": "b"}, "data"), b_ports),
             service("shop", "db", TCP, {"app": "data"}, ports=[{"name": "pg", "port": 15432, "targetPort": "pg"}]),
             port_route("TCPRoute", "shop", "pg"),
             traffic_target("shop", "c2d", "data", ["client"], [{"kind": "TCPRoute", "name": "pg"}])]
    stack[-1].props["spec"]["destination"]["port"] = destination_port
    return stack


UNKNOWN_PATHS = {
    "containers": ("spec", "template", "spec", "containers"),
    "containers[0]": ("spec", "template", "spec", "containers", 0),
    "ports": ("spec", "template", "spec", "containers", 0, "ports"),
    "ports[0]": ("spec", "template", "spec", "containers", 0, "ports", 0),
    "ports[0].name": ("spec", "template", "spec", "containers", 0, "ports", 0, "name"),
    "ports[0].protocol": ("spec", "template", "spec", "containers", 0, "ports", 0, "protocol"),
    "ports[0].containerPort": ("spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"),
    "template.spec": ("spec", "template", "spec"),
    # whether the Service selects data-b at all
    "metadata.namespace": ("metadata", "namespace"),
    "template.labels": ("spec", "template", "metadata", "labels"),
}


@pytest.mark.parametrize("path", UNKNOWN_PATHS.values(), ids=UNKNOWN_PATHS.keys())
def test_container_ports_not_known_yet_leave_a_named_target_port_unknown(path):
    after_apply = data_stack([{"name": "pg", "containerPort": 6543, "protocol": "TCP"}])
    # the reference: after apply, data-b's pg is 6543, and the controller attaches the TrafficTarget
    assert attached(controller_build(after_apply), "shop/db") == ["shop/c2d"]
    assert run_all(after_apply) == []
    preview = copy.deepcopy(after_apply)
    obj = preview[4].props
    for key in path[:-1]:
        obj = obj[key]
    obj[path[-1]] = U
    # was: data-b's ports read as none, data-a's 5432 taken for the only one: "not a port the pods listen on"
    assert run_all(preview) == []


def test_a_port_known_to_differ_is_still_judged():
    # data-b's pg is 5432 too: no pod of ServiceAccount data listens on 6543, as the controller finds
    stack = data_stack([{"name": "pg", "containerPort": 5432}])
    built = controller_build(stack)
    assert attached(built, "shop/db") == []
    assert any("port 6543 is not exposed by service shop/db" in str(e) for e in built.errors)
    found = run_all(stack)
    assert [p for p, _ in found] == ["lightmesh-acl-service-has-traffic-target", "lightmesh-traffic-target-valid"]
    assert found[1][1].startswith("TrafficTarget shop/c2d spec.destination.port 6543 is not a port the pods of "
                                  "ServiceAccount shop/data listen on for any of its Services (Service shop/db: 5432)")
    # a workload of another ServiceAccount whose ports are not known yet does not hide it: the controller
    # compares the destination port with the ports of the destination ServiceAccount's endpoints only
    other = data_stack([{"name": "pg", "containerPort": 5432}])
    other[4].props["spec"]["template"]["spec"]["serviceAccountName"] = "backup"
    other[4].props["spec"]["template"]["spec"]["containers"][0]["ports"] = U
    assert [p for p, _ in run_all(other)] == ["lightmesh-acl-service-has-traffic-target",
                                              "lightmesh-traffic-target-valid"]


# ------------------------------------------------------------- 4. a named targetPort selects the endpoints


def named_stack(backup_ports=(), db_ports=({"name": "pg", "containerPort": 5432},), service_ports=None):
    """Service db (tcp, targetPort pg) selects tier=data: Deployment db (ServiceAccount db) and Deployment
    backup (ServiceAccount backup); a TrafficTarget for db only."""
    return [controller(acl=True), proxy(), deployment("shop", "client", {"app": "client"}, "client"),
            with_ports(deployment("shop", "db", {"tier": "data", "app": "db"}, "db"), list(db_ports)),
            with_ports(deployment("shop", "backup", {"tier": "data", "app": "backup"}, "backup"), list(backup_ports)),
            service("shop", "db", TCP, {"tier": "data"},
                    ports=service_ports or [{"name": "pg", "port": 5432, "targetPort": "pg"}]),
            port_route("TCPRoute", "shop", "pg"),
            traffic_target("shop", "c2db", "db", ["client"], [{"kind": "TCPRoute", "name": "pg"}])]


@pytest.mark.parametrize("backup_ports", [
    [],  # no port at all
    [{"name": "postgres", "containerPort": 5432}],  # another name
    [{"name": "pg", "containerPort": 5432, "protocol": "UDP"}],  # the name, of another protocol
], ids=["none", "other-name", "other-protocol"])
def test_pods_without_the_named_target_port_are_not_the_services(backup_ports):
    stack = named_stack(backup_ports)
    assert service_accounts(controller_build(stack), "shop/db") == ["shop/db"]  # Kubernetes: no backup endpoint
    # was: "Service shop/db (tcp) is not the destination of any TrafficTarget: ... ServiceAccount shop/backup"
    assert run_all(stack) == []


def test_pods_with_the_named_target_port_are_the_services():
    stack = named_stack([{"name": "pg", "containerPort": 5432}])
    assert service_accounts(controller_build(stack), "shop/db") == ["shop/backup", "shop/db"]
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert msg.startswith("Service shop/db (tcp) is not the destination of any TrafficTarget: its pods run as "
                          "ServiceAccount shop/backup")
    # a sidecar (an init container that keeps running) declares ports too; another init container does not
    for policy, expected in (("Always", 1), (None, 0)):
        sidecar = named_stack()
        spec = sidecar[4].props["spec"]["template"]["spec"]
        spec["initContainers"] = [{"name": "agent", "image": "agent:1", "ports": [{"name": "pg", "containerPort": 5432}],
                                   **({"restartPolicy": policy} if policy else {})}]
        assert len(service_accounts(controller_build(sidecar), "shop/db")) == 1 + expected
        assert len(run_policy(acl_service_has_traffic_target, sidecar)) == expected
    # a numeric port next to the named one takes every selected pod
    both = named_stack(service_ports=[{"name": "pg", "port": 5432, "targetPort": "pg"}, {"name": "m", "port": 9090}])
    assert service_accounts(controller_build(both), "shop/db") == ["shop/backup", "shop/db"]
    assert len(run_policy(acl_service_has_traffic_target, both)) == 1


def test_pods_whose_ports_are_not_known_yet_are_not_judged_for_the_named_port():
    for unknown in (U, [U], [{"name": U, "containerPort": 5432}]):
        stack = named_stack()
        stack[4].props["spec"]["template"]["spec"]["containers"][0]["ports"] = unknown
        assert run_all(stack) == [], unknown


def test_a_port_name_no_pod_declares_leads_nowhere():
    # Service s0 (http) has ports http -> 'http' (no pod declares it) and pg -> 'pg' (5432); a TrafficTarget
    # on destination port 5353 attaches to nothing (was: the 'http' port made the pod ports unknown)
    stack = [controller(acl=True), proxy(), deployment("shop", "client", {"app": "client"}, "client"),
             with_ports(deployment("shop", "w1", {"app": "w1"}, "a"), [{"name": "pg", "containerPort": 5432}]),
             service("shop", "s0", HTTP, {"app": "w1"}, ports=[{"name": "http", "port": 80, "targetPort": "http"},
                                                               {"name": "pg", "port": 5432, "targetPort": "pg"}]),
             http_route_group("shop", "g", [{"name": "all", "pathRegex": "/.*"}]),
             traffic_target("shop", "tt0", "a", ["client"], [{"kind": "HTTPRouteGroup", "name": "g"}])]
    stack[-1].props["spec"]["destination"]["port"] = 5353
    built = controller_build(stack)
    assert attached(built, "shop/s0") == []
    assert any("port 5353 is not exposed by service shop/s0" in str(e) for e in built.errors)
    [(_, coverage), (_, target)] = run_all(stack)
    assert coverage.startswith("Service shop/s0 (http) is not the destination of any TrafficTarget on its ports: its "
                               "pods run as ServiceAccount shop/a, but TrafficTarget shop/tt0 (spec.destination.port "
                               "5353) only allow a port its pods do not listen on for it (5432: ")
    assert target.startswith("TrafficTarget shop/tt0 spec.destination.port 5353 is not a port the pods of "
                             "ServiceAccount shop/a listen on for any of its Services (Service shop/s0: 5432)")
    # on 5432 it is attached, and covers the Service
    stack[-1].props["spec"]["destination"]["port"] = 5432
    assert attached(controller_build(stack), "shop/s0") == ["shop/tt0"]
    assert run_all(stack) == []


def test_pods_that_are_no_endpoint_at_all_leave_nothing_to_cover():
    # every selected pod lacks the named port: Kubernetes gives the Service no endpoints, the controller no
    # ServiceAccount, so there is no TrafficTarget it would need
    stack = [r for r in named_stack(db_ports=[]) if r.name != "c2db-tt"]
    assert controller_build(stack).topology.services["shop/db"].ports[0].endpoints == ()
    assert run_policy(acl_service_has_traffic_target, stack) == []


# ------------------------------------------------------------- 2. $(VAR) in the controller's flags


def mesh_stack(args, env=None):
    """A controller in namespace mesh with ``args`` and ``env``; Services mesh/helper and other/x, neither
    the destination of a TrafficTarget."""
    ctl = controller(acl=True, extra_args=args)
    ctl.props["metadata"]["namespace"] = "mesh"
    ctl.props["spec"]["template"]["spec"]["containers"][0]["env"] = env if env is not None else [
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "WATCH", "value": "shop"}]
    return [ctl, proxy(), deployment("mesh", "helper", {"app": "helper"}, "helper"),
            service("mesh", "helper", HTTP, {"app": "helper"}),
            deployment("other", "x", {"app": "x"}, "x"), service("other", "x", HTTP, {"app": "x"})]


def uncovered(stack):
    return [m.split(" (")[0] for m in messages(run_policy(acl_service_has_traffic_target, stack))]


@pytest.mark.parametrize("args, expanded", [
    (["--namespace", "$(POD_NAMESPACE)"], ["--namespace", "mesh"]),
    (["--namespace=$(POD_NAMESPACE)"], ["--namespace=mesh"]),
    (["--namespace=$(POD_NAMESPACE)", "--watch-namespaces", "$(WATCH)"], ["--namespace=mesh", "--watch-namespaces",
                                                                           "shop"]),
    (["--namespace", "mesh", "--watch-namespaces", "$(WATCH),other"], ["--namespace", "mesh", "--watch-namespaces",
                                                                      "shop,other"]),
])
def test_flags_are_read_after_kubernetes_expands_them(args, expanded):
    # the reference: the controller runs with the expanded words, and meshes only what they let it
    built = controller_build(mesh_stack(expanded), expanded)
    meshed = [key for key in ("mesh/helper", "other/x") if key in built.topology.services]
    # was: '$(POD_NAMESPACE)' refused by the flag parser, the defaults judged instead: mesh/helper reported
    assert uncovered(mesh_stack(args)) == [f"Service {key}" for key in meshed]
    assert uncovered(mesh_stack(expanded)) == [f"Service {key}" for key in meshed]


def test_a_flag_value_the_stack_does_not_tell_is_not_judged():
    from_config_map = [{"name": "NS", "valueFrom": {"configMapKeyRef": {"name": "mesh", "key": "namespace"}}}]
    for args, env in ((["--namespace", "$(NS)"], from_config_map),
                      (["--namespace", "$(UNSET)"], []),  # envFrom, the Service links: not known here
                      (["--watch-namespaces=$(NS)"], from_config_map),
                      (["--namespace", "$(POD_NAME)"],
                       [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]),
                      (["--namespace", "$(NS)"], [{"name": "NS", "value": U}])):
        stack = mesh_stack(args, env)
        assert uncovered(stack) == [], args  # whether the controller meshes either Service is not known
        assert run_policy(require_acl, stack) == [], args
    # a word not known yet where the subcommand stands: the flags after it may be the controller's
    stack = mesh_stack(["--namespace", "mesh"])
    stack[0].props["spec"]["template"]["spec"]["containers"][0]["args"][0] = U
    assert uncovered(stack) == []
    # a value it does tell, that the controller refuses at start, is reported as such
    stack = mesh_stack(["--watch-namespaces", "$(WATCH)"], [{"name": "WATCH", "value": "shop,kube-system"}])
    [msg] = messages(run_policy(require_acl, stack))
    assert "the controller refuses these flags at start: --watch-namespaces names kube-system" in msg


def test_expansion_is_kubernetes_own():
    env = [{"name": "A", "value": "sh"}, {"name": "B", "value": "$(A)op"}, {"name": "C", "value": "$$(A)"},
           {"name": "D", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}, {"name": "A", "value": "x"}]
    ctl = controller(acl=True, extra_args=["--namespace", "$(D)", "--watch-namespaces", "$(B)", "--kubeconfig",
                                           "$(A)$$(A)$(C)"])
    ctl.props["metadata"]["namespace"] = "mesh"
    ctl.props["spec"]["template"]["spec"]["containers"][0]["env"] = env
    workload = model.workload_from(model.resource_from_policy(ctl.type, ctl.name, ctl.urn, ctl.props))
    [line] = model._command_lines(workload.pod_spec, workload.namespace)
    # a value sees the variables before it (B: "shop"), the last definition wins (A: "x"), $$ is a $
    assert line[1:] == ["--acl", "--namespace", "mesh", "--watch-namespaces", "shop", "--kubeconfig", "x$(A)$(A)"]
    assert model.controller_ignore_settings(workload) == model.IgnoreSettings("mesh", ("shop",), ())


# ------------------------------------------------------------- 3. namespaces the controller ignores


def legacy_stack(*flags, namespace="legacy"):
    """An apex web split between web-v1 and web-v2 (whose port 80 is missing: the controller would drop
    it), an HTTPRoute with a backend on a port web-v2 lacks, a TrafficTarget without rules and an
    HTTPRouteGroup with a match the controller ignores, all in ``namespace``."""
    ns = namespace
    return [controller(acl=True, extra_args=list(flags)), proxy(),
            service(ns, "web", None, None, ports=[{"name": "http", "port": 80}]),
            service(ns, "web-v1", None, {"app": "v1"}, ports=[{"name": "http", "port": 80, "targetPort": 8080}]),
            service(ns, "web-v2", None, {"app": "v2"}, ports=[{"name": "http", "port": 8080}]),
            traffic_split(ns, "canary", "web", [("web-v1", 90), ("web-v2", 10)]),
            R("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "legacy-hr",
              {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
               "metadata": {"name": "web2", "namespace": ns},
               "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web-v1"}],
                        "rules": [{"backendRefs": [{"name": "web-v2", "port": 80}]}]}}),
            http_route_group(ns, "bad", [{"name": "x", "methods": ["GET,POST"]}]),
            traffic_target(ns, "empty", "web", ["client"], [])]


@pytest.mark.parametrize("flags, namespace", [
    (["--ignore-namespaces", "legacy"], "legacy"),
    (["--watch-namespaces", "shop"], "legacy"),
    ([], "kube-system"),
    ([], "lightmesh"),
    (["--namespace", "mesh"], "mesh"),
], ids=["ignored", "not-watched", "kube-system", "mesh-namespace", "own-namespace"])
def test_objects_in_namespaces_the_controller_ignores_are_not_judged(flags, namespace):
    judged = {p for p, _ in run_all(legacy_stack(namespace=namespace))}
    if namespace not in ("kube-system", "lightmesh"):  # judged where the controller reads them
        assert judged == {"lightmesh-traffic-split-valid", "lightmesh-traffic-target-valid"}
        built = controller_build(legacy_stack(namespace=namespace))
        assert f"{namespace}/web" in built.topology.splits and built.topology.mesh_routes
    stack = legacy_stack(*flags, namespace=namespace)
    built = controller_build(stack, flags)
    assert not built.topology.splits and not built.topology.mesh_routes and not built.errors
    # was: "backends[1] (web-v2): ... does not expose port(s) 80", "HTTPRoute legacy/web2 ... backendRefs[0]"
    assert run_all(stack) == []


def test_objects_in_a_namespace_the_controller_may_ignore_are_not_judged():
    for flags in (["--ignore-namespaces", U], ["--watch-namespaces", U], ["--namespace", U]):
        assert run_all(legacy_stack(*flags)) == [], flags
    # a flag the namespace does not depend on leaves it judged
    assert run_all(legacy_stack("--otlp-endpoint", U)) != []
