"""Test helpers for the policy pack: run a policy the way the SDK does, build Kubernetes-shaped props.

Props are built in the engine's shape (camelCase Kubernetes objects) and, when ``proxied=True``,
wrapped by the SDK's own ``unknown_checking_proxy`` exactly as the analyzer wraps them.
"""

from __future__ import annotations

import copy
from typing import Any

from pulumi_policy import (PolicyCustomTimeouts, PolicyResource, PolicyResourceOptions, ResourceValidationArgs,
                           ResourceValidationPolicy, StackValidationArgs)
from pulumi_policy.proxy import unknown_checking_proxy

from lightmesh import wire


def _opts() -> PolicyResourceOptions:
    return PolicyResourceOptions(protect=False, ignore_changes=[], delete_before_replace=None, aliases=[],
                                 custom_timeouts=PolicyCustomTimeouts(0, 0, 0), additional_secret_outputs=[],
                                 parent=None)


class R:
    """A resource of a hand-built stack: (type token, resource name, props). ``stack`` is the stack name in
    its URN (the require-acl rule reads it: "test" is not a production stack, "prod" is)."""

    def __init__(self, type_: str, name: str, props: dict, parent_types: tuple[str, ...] = (),
                 stack: str = "test") -> None:
        self.type, self.name, self.props, self.parent_types, self.stack = type_, name, props, parent_types, stack

    @property
    def urn(self) -> str:
        chain = "$".join([*self.parent_types, self.type])
        return f"urn:pulumi:{self.stack}::lightmesh::{chain}::{self.name}"


def on_stack(resources: list[R], stack: str) -> list[R]:
    """The same resources with URNs of stack ``stack``."""
    return [R(r.type, r.name, r.props, r.parent_types, stack) for r in resources]


def run_policy(policy: Any, resources: list[R], config: dict | None = None, proxied: bool = True
               ) -> list[tuple[str, str | None]]:
    """Run a stack or resource policy over ``resources``; returns [(message, urn)]."""
    violations: list[tuple[str, str | None]] = []
    wrap = unknown_checking_proxy if proxied else (lambda p: p)
    if isinstance(policy, ResourceValidationPolicy):
        for r in resources:
            args = ResourceValidationArgs(resource_type=r.type, props=wrap(r.props), urn=r.urn, name=r.name,
                                          opts=_opts(), provider=None, config=config or {})
            policy.validate(args, lambda msg, urn=None, r=r: violations.append((msg, urn or r.urn)))
    else:
        policy_resources = [PolicyResource(resource_type=r.type, props=wrap(r.props), urn=r.urn, name=r.name,
                                           opts=_opts(), provider=None, parent=None, dependencies=[],
                                           property_dependencies={}) for r in resources]
        policy.validate(StackValidationArgs(resources=policy_resources, config=config or {}),
                        lambda msg, urn=None: violations.append((msg, urn)))
    return violations


def messages(violations: list[tuple[str, str | None]]) -> list[str]:
    return [m for m, _ in violations]


# ------------------------------------------------------------------------------- object builders


def service(ns: str, name: str, annotations: dict | None = None, selector: Any = None, res: str | None = None,
            ports: list | None = None) -> R:
    spec: dict = {"ports": ports or [{"port": 80, "targetPort": 80}]}
    if selector is not None:
        spec["selector"] = selector
    return R("kubernetes:core/v1:Service", res or f"{name}-svc",
             {"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": name, "namespace": ns, "annotations": annotations or {}}, "spec": spec})


def service_patch(ns: str, name: str, annotations: dict, res: str | None = None) -> R:
    return R("kubernetes:core/v1:ServicePatch", res or f"{name}-patch",
             {"apiVersion": "v1", "kind": "Service",
              "metadata": {"name": name, "namespace": ns, "annotations": annotations}})


def deployment(ns: str, name: str, labels: dict, service_account: str | None = None, image: str = "app:v1",
               args: list | None = None, resources: dict | None = None, kind: str = "Deployment") -> R:
    container: dict = {"name": name, "image": image}
    if args is not None:
        container["args"] = args
    if resources is not None:
        container["resources"] = resources
    pod_spec: dict = {"containers": [container]}
    if service_account:
        pod_spec["serviceAccountName"] = service_account
    if kind == "Pod":
        return R("kubernetes:core/v1:Pod", name, {"apiVersion": "v1", "kind": "Pod",
                                                  "metadata": {"name": name, "namespace": ns, "labels": labels},
                                                  "spec": pod_spec})
    group = "apps/v1"
    return R(f"kubernetes:{group}:{kind}", name,
             {"apiVersion": group, "kind": kind, "metadata": {"name": name, "namespace": ns},
              "spec": {"selector": {"matchLabels": labels},
                       "template": {"metadata": {"labels": labels}, "spec": pod_spec}}})


RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}


def controller(acl: bool = True, image: str = "ghcr.io/lightmesh/lightmesh:0.1.0", extra_args: list | None = None,
               resources: dict | None = RESOURCES) -> R:
    args = ["controller", *(["--acl"] if acl else []), *(extra_args or [])]
    return deployment(wire.DEFAULT_MESH_NAMESPACE, wire.CONTROLLER_NAME, dict(wire.CONTROLLER_POD_LABELS),
                      wire.CONTROLLER_NAME, image=image, args=args, resources=resources)


def proxy(image: str = "ghcr.io/lightmesh/lightmesh:0.1.0", resources: dict | None = RESOURCES) -> R:
    return deployment(wire.DEFAULT_MESH_NAMESPACE, wire.PROXY_NAME, dict(wire.PROXY_POD_LABELS), wire.PROXY_NAME,
                      image=image, args=["proxy"], resources=resources, kind="DaemonSet")


def traffic_target(ns: str, name: str, destination: str, sources: list[str], rules: list[dict],
                   version: str = "v1alpha3") -> R:
    body = {"destination": {"kind": "ServiceAccount", "name": destination, "namespace": ns},
            "sources": [{"kind": "ServiceAccount", "name": s, "namespace": ns} for s in sources]}
    if version == "v1alpha1":
        props = {**body, "specs": rules}
    else:
        props = {"spec": {**body, "rules": rules}}
    return R(f"kubernetes:access.smi-spec.io/{version}:TrafficTarget", f"{name}-tt",
             {"apiVersion": f"access.smi-spec.io/{version}", "kind": "TrafficTarget",
              "metadata": {"name": name, "namespace": ns}, **props})


def http_route_group(ns: str, name: str, matches: list[dict], version: str = "v1alpha4") -> R:
    body = {"matches": matches} if version == "v1alpha1" else {"spec": {"matches": matches}}
    return R(f"kubernetes:specs.smi-spec.io/{version}:HTTPRouteGroup", f"{name}-hrg",
             {"apiVersion": f"specs.smi-spec.io/{version}", "kind": "HTTPRouteGroup",
              "metadata": {"name": name, "namespace": ns}, **body})


def port_route(kind: str, ns: str, name: str, version: str = "v1alpha4", ports: list | None = None) -> R:
    return R(f"kubernetes:specs.smi-spec.io/{version}:{kind}", f"{name}-route",
             {"apiVersion": f"specs.smi-spec.io/{version}", "kind": kind,
              "metadata": {"name": name, "namespace": ns}, "spec": {"matches": {"name": "all", "ports": ports or []}}})


def traffic_split(ns: str, name: str, root: str, backends: list[tuple[str, Any]], version: str = "v1alpha4",
                  matches: list[dict] | None = None) -> R:
    spec: dict = {"service": root, "backends": [{"service": s, "weight": w} for s, w in backends]}
    if matches is not None:
        spec["matches"] = matches
    return R(f"kubernetes:split.smi-spec.io/{version}:TrafficSplit", f"{name}-ts",
             {"apiVersion": f"split.smi-spec.io/{version}", "kind": "TrafficSplit",
              "metadata": {"name": name, "namespace": ns}, "spec": spec})


def whoami_acl_stack() -> list[R]:
    """The seed article's ACL setup, by hand: http whoami + tcp whoami-tcp behind one ServiceAccount."""
    return [
        controller(acl=True), proxy(),
        deployment("whoami", "whoami", {"app": "whoami"}, "whoami-server"),
        deployment("whoami", "whoami-tcp", {"app": "whoami-tcp"}, "whoami-server"),
        deployment("whoami", "client", {"app": "client"}, "whoami-client", kind="Pod"),
        service("whoami", "whoami", {"lightmesh.io/traffic-type": "http", "lightmesh.io/retry-attempts": "2"},
                {"app": "whoami"}),
        service("whoami", "whoami-tcp", {"lightmesh.io/traffic-type": "tcp"}, {"app": "whoami-tcp"},
                ports=[{"port": 8080}]),
        http_route_group("whoami", "app-routes", [{"name": "api", "pathRegex": "/api/.*", "methods": ["GET"]},
                                                   {"name": "all", "pathRegex": "/.*"}]),
        port_route("TCPRoute", "whoami", "app-tcp"),
        traffic_target("whoami", "client-to-server", "whoami-server", ["whoami-client"],
                       [{"kind": "HTTPRouteGroup", "name": "app-routes", "matches": ["api"]},
                        {"kind": "TCPRoute", "name": "app-tcp"}]),
    ]


def failing_stacks() -> list[tuple[list[R], dict]]:
    """(stack, policy config) pairs that between them make every rule report every kind of defect it
    knows — for checks that hold for every message (each names a fix)."""
    seed = whoami_acl_stack()
    no_target = [r for r in seed if r.name != "client-to-server-tt"]
    http_only = no_target + [traffic_target("whoami", "http-only", "whoami-server", ["whoami-client"],
                                            [{"kind": "HTTPRouteGroup", "name": "app-routes"}])]
    bad_target = traffic_target("whoami", "bad", "whoami-server", ["whoami-client"], [
        {"kind": "HTTPRoute", "name": "app-routes"},  # not an SMI route kind
        {"kind": "TCPRoute", "name": "missing"},
        {"kind": "HTTPRouteGroup", "name": "app-routes", "matches": ["nope", ["not", "a", "name"]]},
        {"kind": "UDPRoute", "name": "app-udp"},  # the destination backs no udp Service
        {"kind": "TCPRoute", "name": "db-port"},  # whoami-tcp listens on 8080 only
    ])
    bad_target.props["spec"]["sources"] += [{"kind": "Group", "name": "admins"}, {"kind": "ServiceAccount"},
                                            {"kind": "ServiceAccount", "name": {"not": "a name"}}]
    no_destination = traffic_target("whoami", "nowhere", "", [], [])
    group_destination = traffic_target("whoami", "group", "x", ["whoami-client"], [])
    group_destination.props["spec"]["destination"]["kind"] = "Group"
    list_destination = traffic_target("whoami", "listed", "x", ["whoami-client"], [])
    list_destination.props["spec"]["destination"]["name"] = ["whoami-server"]
    routes = [http_route_group("whoami", "bad-routes", [{"pathRegex": "/("}, {"name": "a", "headers": {"x": "[a-"}},
                                                        {"name": "a"}]),
              port_route("UDPRoute", "whoami", "app-udp"), port_route("TCPRoute", "whoami", "db-port", ports=[3306]),
              port_route("TCPRoute", "whoami", "typo-ports", ports=["9" * 5000, "\u00b2", 0])]
    targets = seed + routes + [bad_target, no_destination, group_destination, list_destination]

    split_services = []
    for name in ("web", "web-v1", "web-v2", "web-v3"):
        split_services += [deployment("shop", name, {"app": name}, f"{name}-sa"),
                           service("shop", name, {"lightmesh.io/traffic-type": "http"}, {"app": name})]
    rule = [{"kind": "HTTPRouteGroup", "name": "all"}]
    splits = [controller(), *split_services, http_route_group("shop", "all", [{"name": "all", "pathRegex": "/.*"}]),
              traffic_target("shop", "to-v1", "web-v1-sa", ["frontend", "admin"], rule),
              traffic_target("shop", "to-v2", "web-v2-sa", ["frontend"], rule),
              traffic_split("shop", "canary", "web", [("web-v1", 90), ("web-v2", 10), ("web-v1", 1), ("web", 1),
                                                      ("web-v9", "500m"), ("other.ns", -1), ("", 1)],
                            matches=[{"kind": "Foo", "name": "x"}, {"kind": "HTTPRouteGroup", "name": "beta"}]),
              traffic_split("shop", "again", "web", [("web-v3", 0)]),
              traffic_split("shop", "nowhere", "nope", [], version="v1alpha1"),
              traffic_split("shop", "quantities", "web-v3", [("web-v1", "lots")], version="v1alpha1"),
              traffic_split("shop", "a", "web-v1", [("web-v2", 1)]), traffic_split("shop", "b", "web-v2", [("web-v1", 1)]),
              traffic_split("shop", "rootless", "", [("web-v1", 1)])]

    apex = [controller(), service("shop", "web", {"lightmesh.io/traffic-type": "http"}, None),
            deployment("shop", "web-v1", {"app": "web-v1"}, "web-v1-sa"), service("shop", "web-v1", None, {"app": "web-v1"}),
            service("shop", "web-v2", None, None),
            traffic_split("shop", "canary", "web", [("web-v1", 1), ("web-v2", 1)])]

    hygiene = [controller(acl=False, image="ghcr.io/lightmesh/lightmesh:latest", resources=None),
               proxy(image="ghcr.io/lightmesh/lightmesh", resources={"requests": {"cpu": "1"}}),
               service("a", "x", {"lightmesh.io/retry-attempts": "two", "lightmesh.io/retry-attempt": "2",
                                  "lightmesh.io/zzzzzz": "1", "mesh.traefik.io/scheme": "ftp"})]
    malformed_account = [controller(), deployment("a", "web", {"app": "web"}), service("a", "web", {
        "lightmesh.io/traffic-type": "http"}, {"app": "web"})]
    malformed_account[1].props["spec"]["template"]["spec"]["serviceAccountName"] = ["web"]
    duplicates = [service("a", "x", res="x-1"), service("a", "x", res="x-2"),
                  service_patch("a", "x", {"lightmesh.io/traffic-type": "tcp"}, res="p-1"),
                  service_patch("a", "x", {"lightmesh.io/traffic-type": "udp"}, res="p-2")]
    # what the controller ignores or refuses: a destination port that is no number / that no pod listens
    # on, HTTPRouteGroup matches it ignores (and a rule left allowing nothing), --acl=true, a Gateway API
    # route whose backend does not allow the parent's callers
    ignored = copy.deepcopy(seed)
    ignored[0] = controller(acl=True, extra_args=["--acl=true"])
    for r in ignored:
        if r.name == "app-routes-hrg":
            r.props["spec"]["matches"] = [{"name": "api", "methods": ["GET,POST"]}, {"name": "all", "headers": [{"x": "[a-"}]},
                                          {"name": "x", "headers": {"x user": "a"}}]
    bad_port, far_port = (traffic_target("whoami", n, "whoami-server", ["whoami-client"], [{"kind": "TCPRoute",
                                                                                             "name": "app-tcp"}])
                          for n in ("bad-port", "far-port"))
    bad_port.props["spec"]["destination"]["port"] = "http"
    far_port.props["spec"]["destination"]["port"] = 9999
    route = R("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", "canary-hr", {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "canary", "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                 "rules": [{"backendRefs": [{"name": "web-v1", "port": 80}, {"name": "web-v3", "port": 80}]}]}})
    gamma = [r for r in splits if r.type.rsplit(":", 1)[-1] != "TrafficSplit"] + [route]
    return [
        (ignored + [bad_port, far_port], {}), (gamma, {}),
        (no_target, {}), (http_only, {}), (targets, {}), (splits, {}), (apex, {}), (duplicates, {}),
        ([controller(), service_patch("legacy", "billing", {"lightmesh.io/traffic-type": "http"})], {}),
        (malformed_account, {}),
        (on_stack(hygiene, "prod"), {}), (hygiene, {"require_digest": True, "require_acl": True}),
    ]


# ---------------------------------------------------------------------------- what the cluster adds


def find_port(pod_spec: dict, service_port: dict) -> int | None:
    """Kubernetes' ``FindPort``: the pod port a Service port leads to, None when the pod is no
    endpoint of it (a named targetPort its containers, sidecar init containers included, lack)."""
    target = service_port.get("targetPort", service_port["port"])
    if isinstance(target, int) or (isinstance(target, str) and target.isdigit()):
        return int(target)
    protocol = service_port.get("protocol", "TCP")
    containers = pod_spec.get("containers", []) + [c for c in pod_spec.get("initContainers", [])
                                                   if c.get("restartPolicy") == "Always"]
    for container in containers:
        for port in container.get("ports", []):
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return port["containerPort"]
    return None


def pods_and_slices(objects: list[dict]) -> tuple[list[dict], list[dict]]:
    """One running pod per Deployment/Pod, and the EndpointSlices Kubernetes makes for each Service
    (named ports resolved per pod): what the controller's build sees besides the stack's objects."""
    pods = []
    for i, obj in enumerate(o for o in objects if o["kind"] in ("Deployment", "Pod")):
        if obj["kind"] == "Pod":
            pod = copy.deepcopy(obj)
        else:
            template = obj["spec"]["template"]
            pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": obj["metadata"]["name"] + "-pod", "namespace": obj["metadata"]["namespace"],
                "labels": template["metadata"]["labels"]}, "spec": copy.deepcopy(template["spec"])}
        pod["status"] = {"phase": "Running", "podIP": f"10.1.0.{i + 1}"}
        pods.append(pod)
    slices = []
    for svc in (o for o in objects if o["kind"] == "Service"):
        selector, ns = svc["spec"].get("selector"), svc["metadata"]["namespace"]
        for pod in pods:
            labels = pod["metadata"].get("labels", {})
            if not selector or pod["metadata"]["namespace"] != ns \
                    or any(labels.get(k) != v for k, v in selector.items()):
                continue
            ports = [{"name": p.get("name", ""), "port": number, "protocol": p.get("protocol", "TCP")}
                     for p in svc["spec"].get("ports", []) if (number := find_port(pod["spec"], p)) is not None]
            if not ports:
                continue  # no endpoint of any of its ports
            slices.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                           "metadata": {"name": f"{svc['metadata']['name']}-{pod['metadata']['name']}", "namespace": ns,
                                        "labels": {"kubernetes.io/service-name": svc["metadata"]["name"]}},
                           "addressType": "IPv4", "ports": ports,
                           "endpoints": [{"addresses": [pod["status"]["podIP"]], "conditions": {"ready": True},
                                          "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"],
                                                        "namespace": ns}}]})
    return pods, slices
