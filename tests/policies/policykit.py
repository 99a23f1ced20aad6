"""Test helpers for the policy pack: run a policy the way the SDK does, build Kubernetes-shaped props.

Props are built in the engine's shape (camelCase Kubernetes objects) and, when ``proxied=True``,
wrapped by the SDK's own ``unknown_checking_proxy`` exactly as the analyzer wraps them.
"""

from __future__ import annotations

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
    """A resource of a hand-built stack: (type token, resource name, props)."""

    def __init__(self, type_: str, name: str, props: dict, parent_types: tuple[str, ...] = ()) -> None:
        self.type, self.name, self.props, self.parent_types = type_, name, props, parent_types

    @property
    def urn(self) -> str:
        chain = "$".join([*self.parent_types, self.type])
        return f"urn:pulumi:test::lightmesh::{chain}::{self.name}"


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


def port_route(kind: str, ns: str, name: str, version: str = "v1alpha4") -> R:
    return R(f"kubernetes:specs.smi-spec.io/{version}:{kind}", f"{name}-route",
             {"apiVersion": f"specs.smi-spec.io/{version}", "kind": kind,
              "metadata": {"name": name, "namespace": ns}, "spec": {"matches": {"name": "all", "ports": []}}})


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
