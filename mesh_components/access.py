"""``AccessPolicy`` and ``TrafficSplit``: SMI objects from typed, validated args.

``AccessPolicy`` renders one ``TrafficTarget`` (access v1alpha3) plus the route objects its rules name:
an ``HTTPRouteGroup`` for ``http_matches``, a ``TCPRoute`` for ``tcp``, a ``UDPRoute`` for ``udp``
(specs v1alpha4). In ACL mode the mesh denies by default; this object is what allows traffic from
the source ServiceAccounts to the pods running as the destination ServiceAccount.

``TrafficSplit`` renders a ``TrafficSplit`` (split v1alpha4) and, for ``matches``, the
``HTTPRouteGroup`` it references.

Kubernetes object names are derived from the instance name, so the instance name must be a DNS
subdomain: an AccessPolicy writes ``<name>`` (TrafficTarget), ``<name>-http`` (HTTPRouteGroup),
``<name>-tcp``, ``<name>-udp``; a TrafficSplit writes ``<name>`` (TrafficSplit) and
``<name>-matches`` (HTTPRouteGroup); each within the 253 characters of an object name (so at most
248 for an AccessPolicy with HTTP rules). No suffix of one component is a suffix of the other, so
an AccessPolicy and a TrafficSplit never write the same object, whatever their names (``api`` and
``api`` included); two instances of one component have different names and never collide either.
The object bodies come from the pure renderers in :mod:`mesh_components.smi`.
"""

import re
from typing import Any, Mapping, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from mesh_components import smi
from mesh_components._common import Checker, child_options, is_known, shown, type_token

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token
_LABELS = {"app.kubernetes.io/managed-by": "pulumi", "app.kubernetes.io/part-of": "lightmesh"}


class HttpMatchArgs(TypedDict):
    """One HTTP match (an entry of an SMI HTTPRouteGroup). All given conditions must hold."""

    name: str
    """Name of the match (unique within the policy)."""
    path_regex: NotRequired[str]
    """Regular expression the path must match, anchored at the start (e.g. ``/api/.*``)."""
    methods: NotRequired[list[str]]
    """HTTP methods matched (``*`` = any; default: any)."""
    headers: NotRequired[dict[str, str]]
    """Header name → regular expression its value must match."""


class AccessSourceArgs(TypedDict):
    """A client identity allowed by an AccessPolicy."""

    service_account: str
    """ServiceAccount the client pods run as."""
    namespace: NotRequired[str]
    """Namespace of that ServiceAccount (default: the policy's namespace)."""


class PortMatchArgs(TypedDict):
    """TCP or UDP traffic allowed by an AccessPolicy."""

    ports: NotRequired[list[int]]
    """Destination ports allowed (empty or unset = every port of the destination Service)."""


class AccessPolicyArgs(TypedDict):
    """Inputs for AccessPolicy."""

    namespace: str
    """Namespace of the destination (the SMI objects are created there)."""
    destination_service_account: str
    """ServiceAccount of the destination pods."""
    sources: list[AccessSourceArgs]
    """Client identities allowed (at least one)."""
    http_matches: NotRequired[list[HttpMatchArgs]]
    """HTTP requests allowed (any one match suffices)."""
    tcp: NotRequired[PortMatchArgs]
    """TCP traffic allowed."""
    udp: NotRequired[PortMatchArgs]
    """UDP traffic allowed."""


class AccessPolicy(pulumi.ComponentResource):
    """Allows traffic from source ServiceAccounts to a destination ServiceAccount (SMI TrafficTarget)."""

    traffic_target_name: pulumi.Output[str]
    """Name of the TrafficTarget."""
    route_names: pulumi.Output[list[str]]
    """Names of the route objects (HTTPRouteGroup / TCPRoute / UDPRoute) the TrafficTarget references."""

    def __init__(self, name: str, args: AccessPolicyArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        objects = render_access_policy(name, args)
        super().__init__(type_token("AccessPolicy"), name, None, opts)
        child = child_options(self, opts)
        routes = {o["kind"]: _custom_resource(f"{name}-{o['kind'].lower()}", o, child) for o in objects[:-1]}
        target = _custom_resource(f"{name}-traffictarget", objects[-1],
                                  pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=list(routes.values()))))
        # for composition and tests (not a cross-language output)
        self.children: dict[str, pulumi.Resource] = {**routes, "TrafficTarget": target}
        self.traffic_target_name = target.metadata.apply(lambda m: m["name"])
        self.route_names = pulumi.Output.all(*[r.metadata.apply(lambda m: m["name"]) for r in routes.values()])
        self.register_outputs({"traffic_target_name": self.traffic_target_name, "route_names": self.route_names})


def render_access_policy(name: str, args: Mapping[str, Any]) -> list[dict]:
    """The SMI objects of an AccessPolicy, routes first and the TrafficTarget last (pure, validated)."""
    check = Checker("AccessPolicy", name)
    check.dns_subdomain("name", name)
    check.known_fields("args", args, AccessPolicyArgs)
    namespace = check.require(args, "namespace")
    destination = check.require(args, "destination_service_account")
    check.plain("namespace", namespace)
    check.plain("destination_service_account", destination)
    check.dns_label("namespace", namespace)
    check.dns_subdomain("destination_service_account", destination)
    sources = check.non_empty_list("sources", check.plain("sources", check.require(args, "sources")))
    for i, s in enumerate(sources):
        check.known_fields(f"sources[{i}]", s, AccessSourceArgs)
        if not s.get("service_account"):
            raise check.fail(f"sources[{i}].service_account is required, got {s!r}")
        check.plain(f"sources[{i}].service_account", s["service_account"])
        check.plain(f"sources[{i}].namespace", s.get("namespace"))
        check.dns_subdomain(f"sources[{i}].service_account", s["service_account"])
        if s.get("namespace") is not None:
            check.dns_label(f"sources[{i}].namespace", s["namespace"])
    check.unique("sources", [(s["service_account"], s.get("namespace") or namespace) for s in sources])

    http, tcp, udp = (check.plain(f, args.get(f)) for f in ("http_matches", "tcp", "udp"))
    if not http and tcp is None and udp is None:
        raise check.fail("at least one of http_matches, tcp or udp is required "
                         "(a TrafficTarget without rules allows nothing)")
    objects: list[dict] = []
    rules: list[dict] = []
    if http:
        matches = check_http_matches(check, "http_matches", http)
        objects.append(smi.render_http_route_group(f"{name}-http", namespace, matches, _LABELS))
        rules.append({"kind": "HTTPRouteGroup", "name": f"{name}-http", "matches": [m["name"] for m in matches]})
    for field, kind, value in (("tcp", "TCPRoute", tcp), ("udp", "UDPRoute", udp)):
        if value is None:
            continue
        check.known_fields(field, value, PortMatchArgs)
        ports = check.list_of(f"{field}.ports", check.plain(f"{field}.ports", value.get("ports") or []))
        for i, p in enumerate(ports):
            # a port is written into the route's spec as a number, and checked for duplicates, at preview
            check.plain(f"{field}.ports[{i}]", p)
            check.integer(f"{field}.ports[{i}]", p, 1, 65535)
        check.unique(f"{field}.ports", ports)
        objects.append(smi.render_port_route(kind, f"{name}-{field}", namespace, ports, _LABELS))
        rules.append({"kind": kind, "name": f"{name}-{field}"})
    objects.append(smi.render_traffic_target(name, namespace, destination, sources, rules, _LABELS))
    _check_object_names(check, name, objects)
    return objects


def check_http_matches(check: Checker, field: str, matches: Any) -> list[dict]:
    """Validate HTTP matches: names unique DNS-style, regexes compile, methods known, header names tokens."""
    matches = check.non_empty_list(field, matches)
    for i, m in enumerate(matches):
        where = f"{field}[{i}]"
        check.known_fields(where, m, HttpMatchArgs)
        for key in ("name", "path_regex", "methods", "headers"):
            check.plain(f"{where}.{key}", m.get(key))
        if not m.get("name"):
            raise check.fail(f"{where}.name is required, got {m!r}")
        check.dns_subdomain(f"{where}.name", m["name"])
        if m.get("path_regex") is not None:
            check.regex(f"{where}.path_regex", m["path_regex"])
        for j, method in enumerate(check.list_of(f"{where}.methods", m.get("methods") or [])):
            check.plain(f"{where}.methods[{j}]", method)
            if not isinstance(method, str) or method.upper() not in smi.HTTP_METHODS:
                raise check.fail(f"{where}.methods[{j}] must be one of {', '.join(smi.HTTP_METHODS)}, got {method!r}")
        for header, value in check.mapping(f"{where}.headers", m.get("headers") or {}).items():
            if not isinstance(header, str) or not _HEADER_NAME.fullmatch(header):
                raise check.fail(f"{where}.headers has an invalid header name {shown(header)}")
            check.regex(f"{where}.headers[{header!r}]", value)
    check.unique(f"{field}[].name", [m["name"] for m in matches])
    return [dict(m) for m in matches]


class BackendArgs(TypedDict):
    """A weighted backend of a TrafficSplit."""

    service: str
    """Backend Service name (same namespace, same ports as the root Service)."""
    weight: int
    """Whole-number weight; traffic share = weight / sum of weights."""


class TrafficSplitArgs(TypedDict):
    """Inputs for TrafficSplit."""

    namespace: str
    """Namespace of the root and backend Services."""
    service: str
    """Root Service clients call (e.g. ``web``)."""
    backends: list[BackendArgs]
    """Weighted backends (at least one; weights sum to more than 0)."""
    matches: NotRequired[list[HttpMatchArgs]]
    """Only split requests matching one of these (A/B by path/header); others go to the root Service."""


class TrafficSplit(pulumi.ComponentResource):
    """Splits traffic for a root Service across weighted backends (SMI TrafficSplit)."""

    traffic_split_name: pulumi.Output[str]
    """Name of the TrafficSplit object."""
    total_weight: pulumi.Output[int]
    """Sum of the backend weights."""

    def __init__(self, name: str, args: TrafficSplitArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        objects = render_traffic_split(name, args)
        super().__init__(type_token("TrafficSplit"), name, None, opts)
        child = child_options(self, opts)
        deps = [_custom_resource(f"{name}-httproutegroup", o, child) for o in objects[:-1]]
        split = _custom_resource(f"{name}-trafficsplit", objects[-1],
                                 pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=deps)))
        self.children: dict[str, pulumi.Resource] = {**{"HTTPRouteGroup": d for d in deps}, "TrafficSplit": split}
        self.traffic_split_name = split.metadata.apply(lambda m: m["name"])
        self.total_weight = pulumi.Output.from_input(sum(b["weight"] for b in objects[-1]["spec"]["backends"]))
        self.register_outputs({"traffic_split_name": self.traffic_split_name, "total_weight": self.total_weight})


MAX_WEIGHT = 1_000_000
#: Suffix of a TrafficSplit's HTTPRouteGroup. Not ``-http``: an AccessPolicy of the same name writes
#: ``<name>-http``, and two components writing one object overwrite each other.
SPLIT_MATCHES_SUFFIX = "-matches"


def render_traffic_split(name: str, args: Mapping[str, Any]) -> list[dict]:
    """The SMI objects of a TrafficSplit (an optional HTTPRouteGroup, then the TrafficSplit)."""
    check = Checker("TrafficSplit", name)
    check.dns_subdomain("name", name)
    check.known_fields("args", args, TrafficSplitArgs)
    namespace = check.require(args, "namespace")
    service = check.require(args, "service")
    check.plain("namespace", namespace)
    check.plain("service", service)
    check.dns_label("namespace", namespace)
    check.dns_label("service", service)
    backends = check.non_empty_list("backends", check.plain("backends", check.require(args, "backends")))
    normalised = []
    for i, b in enumerate(backends):
        check.known_fields(f"backends[{i}]", b, BackendArgs)
        if not b.get("service"):
            raise check.fail(f"backends[{i}].service is required, got {b!r}")
        check.plain(f"backends[{i}].service", b["service"])
        check.dns_label(f"backends[{i}].service", b["service"])
        if b["service"] == service:
            raise check.fail(f"backends[{i}].service is the root Service {service!r} itself: a split's backends "
                             f"are other Services (e.g. {service}-v1, {service}-v2)")
        if "weight" not in b:
            raise check.fail(f"backends[{i}].weight is required")
        # A weight shapes the SMI object and the total_weight output, so it must be known at preview.
        check.plain(f"backends[{i}].weight", b["weight"])
        check.integer(f"backends[{i}].weight", b["weight"], 0, MAX_WEIGHT)
        normalised.append({"service": b["service"], "weight": int(b["weight"])})
    check.unique("backends[].service", [b["service"] for b in normalised])
    if sum(b["weight"] for b in normalised) == 0:
        raise check.fail("backends weights sum to 0: at least one backend needs a positive weight")
    objects: list[dict] = []
    group = None
    if check.plain("matches", args.get("matches")):
        matches = check_http_matches(check, "matches", args["matches"])
        group = f"{name}{SPLIT_MATCHES_SUFFIX}"
        objects.append(smi.render_http_route_group(group, namespace, matches, _LABELS))
    objects.append(smi.render_traffic_split(name, namespace, service, normalised, group, _LABELS))
    _check_object_names(check, name, objects)
    return objects


#: The API server's limit on an SMI object's name (custom resources: a DNS subdomain).
MAX_OBJECT_NAME = 253


def _check_object_names(check: Checker, name: str, objects: list[dict]) -> None:
    """The instance name is a DNS subdomain, but a derived name (``<name>-http``, ``<name>-matches``) may
    still be too long for the API server, which would refuse the object only at ``pulumi up``."""
    for o in objects:
        derived = o["metadata"]["name"]
        if len(derived) > MAX_OBJECT_NAME:
            suffix = derived[len(name):]
            raise check.fail(f"name is too long: the {o['kind']} {shown(derived)} would exceed Kubernetes' "
                             f"{MAX_OBJECT_NAME}-character limit on object names; use a name of at most "
                             f"{MAX_OBJECT_NAME - len(suffix)} characters")


def _plain(check: Checker, field: str, value: Any) -> None:
    # SMI object names and references must be known at preview to validate and to name objects;
    # accepting Outputs here would postpone every check to the apply phase.
    if not is_known(value):
        raise check.fail(f"{field} must be a plain string, not an Output")


def _custom_resource(resource_name: str, obj: dict, opts: pulumi.ResourceOptions) -> k8s.apiextensions.CustomResource:
    return k8s.apiextensions.CustomResource(resource_name, api_version=obj["apiVersion"], kind=obj["kind"],
                                            metadata=obj["metadata"], spec=obj["spec"], opts=opts)
