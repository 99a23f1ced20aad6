"""Cluster state → Topology: which Services are meshed, how, with which endpoints and SMI policy (pure).

This module owns the reading of raw Kubernetes and SMI objects: every version difference and every
malformed field is dealt with here, so :mod:`provider` works on clean, typed values only.

What is meshed (as Traefik Mesh does, reference §1.3–§1.4, §3):

* Every Service outside ignored namespaces (``kube-system``, the mesh namespace, ``--ignore``, not in
  ``--watch``), except ``default/kubernetes`` and ``ExternalName`` Services, is meshed with its
  ``traffic-type`` annotation or the default mode. Ports that do not suit the traffic type
  (``udp`` → UDP ports only, ``http``/``tcp`` → TCP ports only) are not meshed.
* A Service whose mesh annotations are invalid is left out of the config (``excluded``) and each bad
  annotation is reported with its key and value. Its existing shadow Service and mesh ports are kept
  (see :mod:`ports`, :mod:`shadow`), so fixing the annotation brings it back at the same address.
  On ``tcp``/``udp`` Services the HTTP-only annotations are unused: a bad one is reported, not fatal.
  Half a rate-limit pair (average without burst, or the reverse) is reported and applies no rate
  limit; the Service stays meshed, as Traefik Mesh kept it (manifests written for it keep working).
* A port's ``index`` counts meshed ports only (Traefik counted skipped ports too, quirk 15); HTTP
  mesh ports no longer follow it (see :mod:`ports`).

Endpoints come from EndpointSlices (``kubernetes.io/service-name`` label) of addressType IPv4 or
IPv6 (another, such as FQDN, is reported on the slice and not used, as kube-proxy ignores it): the
ready ones (``conditions.ready`` missing = ready); a Service port with no ready endpoint at all uses
its serving terminating ones instead (``serving`` and ``terminating`` true: pods in their grace
period, e.g. during a Recreate rollout, a scale to zero or a drain; ``serving`` missing = ``ready``),
per port, as kube-proxy does (KEP-1669), so the mesh name answers as long as the ClusterIP does.
The port is resolved per slice by the Service port's name (that
is where named ``targetPort``\\s are resolved per pod; a slice without ``ports``, or ``ports: null``,
takes a numeric ``targetPort``), pod identity (ServiceAccount) by ``targetRef``,
else by IP. Endpoints without a pod (a Service without selector) are routed to but have no identity.

SMI (any served version): TrafficTarget ``rules`` (v1alpha2+) or ``specs`` (v1alpha1); HTTPRouteGroup
``headers`` as a map (v1alpha3+) or a list of one-key maps (v1alpha2); TrafficSplit weights as
quantities (v1alpha1: ``"500m"``) or whole numbers (v1alpha2+). A TrafficTarget attaches to every
Service whose endpoints (as chosen above) run as its destination ServiceAccount; sources are the IPs of every
running pod of the source ServiceAccounts (ready or not, as upstream). A TrafficTarget with no usable
rule allows nothing (unlike Traefik Mesh). A TrafficSplit is resolved in one hop: its backends'
endpoints are used directly, so a backend that is itself a split root is reported and its own pods
are used (no cycle can form).

Gateway API (GAMMA): ``HTTPRoute`` (v1, v1beta1) whose ``parentRefs`` name a meshed HTTP Service of
its own namespace (producer routes). Each rule becomes a :class:`MeshRule` of that Service (one
port, or all): its matches (paths → anchored regexes for the proxy: ``Exact`` ``/a$``,
``PathPrefix`` by whole path elements, ``RegularExpression`` as a full match; headers ``Exact`` or
``RegularExpression``; method), its weighted Service backends (same namespace, explicit port) and
its request timeout and Request/ResponseHeaderModifier filters. Consumer routes, other filters,
query-parameter matches and cross-namespace backends are reported and left out. A Service with routes attached keeps no TrafficSplit.
``GRPCRoute`` (v1, v1alpha2) likewise: a method match is a path match on ``/<service>/<method>``,
and its backends are reached over h2c. ``TCPRoute``/``UDPRoute`` (v1, v1alpha2) on tcp/udp
Services: the first rule's weighted backends; their errors carry the kind with its group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Mapping

from lightmesh.annotations import (HTTP_ONLY_KEYS, MAX_TIMEOUT_SECONDS, TRAFFIC_TYPE, MeshSettings, TrafficType,
                                   lookup, parse_annotations_lenient, parse_duration)
from lightmesh.config import header_value_ok
from lightmesh.controller.model import ALWAYS_IGNORED_SERVICES, ClusterState, ObjectError, Settings
from lightmesh.userregex import compile_user_regex

MAX_WEIGHT = 1_000_000
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Kubernetes object names (DNS-1123 subdomain) and namespaces (label): names end up in config
# element names and hosts, so anything else is reported instead of reaching the proxy.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
NO_PORT = 0  # in a route's port list: a port no connection has (the route allows none)
_QUANTITY = re.compile(r"^\s*([0-9]{1,12}(?:\.[0-9]{1,12})?|\.[0-9]{1,12})\s*(m|k|M|G)?\s*$")
_QUANTITY_MILLI = {None: 1000, "m": 1, "k": 1_000_000, "M": 1_000_000_000, "G": 1_000_000_000_000}


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True, slots=True)
class Endpoint:
    ip: str
    port: int
    pod: str | None = None  # "ns/name"
    service_account: str | None = None  # "ns/name"


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    protocol: str  # TCP | UDP
    target_port: int | str
    index: int  # position among the Service's meshed ports (HTTP mesh ports: see ports.py, stable, not by index)
    endpoints: tuple[Endpoint, ...] = ()
    terminating: bool = False  # the endpoints are pods in their grace period (no ready one: see _endpoints)


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    traffic_type: TrafficType
    mesh: MeshSettings
    ports: tuple[ServicePort, ...]
    cluster_ip: str | None = None

    @cached_property  # read ~100 times per Service per rebuild; not a field (eq/hash/replace ignore it)
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None


@dataclass(frozen=True)
class HTTPMatch:
    """One HTTPRouteGroup match: every part must match (AND); empty parts match anything."""

    name: str
    path_regex: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[tuple[str, str | tuple[str, ...]], ...] = ()  # several regexes: each must match


@dataclass(frozen=True)
class TrafficTarget:
    namespace: str
    name: str
    destination: str  # ServiceAccount "ns/name"
    destination_port: int | None
    sources: tuple[str, ...]  # ServiceAccounts "ns/name"
    source_ips: tuple[str, ...]  # sorted IPs of the sources' running pods
    http_matches: tuple[HTTPMatch, ...] = ()  # alternatives (OR); empty = no HTTP allowed
    tcp_ports: tuple[int, ...] | None = None  # None = no TCPRoute rule; () = every port
    udp_ports: tuple[int, ...] | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class ServiceTarget:
    """A TrafficTarget applied to one Service: destination pods are its endpoints running as
    ``target.destination``, on ``ports`` (Service port numbers)."""

    target: TrafficTarget
    ports: tuple[int, ...]


@dataclass(frozen=True)
class SplitBackend:
    service: str  # "ns/name"
    weight: int


@dataclass(frozen=True)
class TrafficSplit:
    namespace: str
    name: str
    root: str  # "ns/name" of the root (apex) Service
    backends: tuple[SplitBackend, ...]
    http_matches: tuple[HTTPMatch, ...] | None = None  # None = all traffic to the root

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class RouteBackend:
    service: str  # "ns/name"
    port: int  # a port of that Service
    weight: int


@dataclass(frozen=True)
class MeshRule:
    """One rule of a Gateway API HTTPRoute whose parent is a mesh Service (GAMMA): requests to the
    parent (on ``port``, or every port when None) that match one of ``matches`` go to ``backends``
    (weighted); no usable backend → 500, as the Gateway API asks."""

    route: str  # "ns/name" of the HTTPRoute (or GRPCRoute)
    index: int  # rule index in the route
    port: int | None
    matches: tuple[HTTPMatch, ...]
    backends: tuple[RouteBackend, ...]
    timeout_seconds: float | None = None
    # per match, the Gateway API's precedence, larger first: HTTPRoute (Exact path, path characters,
    # not a regex, method, header count); GRPCRoute (0, service characters, 1, method characters,
    # header count). Ties keep the order of the rules (oldest route, namespace/name, rule index).
    precedence: tuple[tuple[int, int, int, int, int], ...] = ()
    grpc: bool = False  # from a GRPCRoute: the backends are reached over HTTP/2 (h2c) whatever their scheme
    # RequestHeaderModifier / ResponseHeaderModifier: (set pairs, add pairs, names to remove), or None
    header_edits: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[str, ...]] | None = None
    response_edits: tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], tuple[str, ...]] | None = None


@dataclass(frozen=True)
class Topology:
    services: Mapping[str, Service] = field(default_factory=dict)  # by "ns/name", sorted
    excluded: Mapping[str, str] = field(default_factory=dict)  # Services left out → reason
    traffic_targets: tuple[TrafficTarget, ...] = ()
    service_targets: Mapping[str, tuple[ServiceTarget, ...]] = field(default_factory=dict)
    splits: Mapping[str, TrafficSplit] = field(default_factory=dict)  # by root "ns/name"
    errors: tuple[ObjectError, ...] = ()
    # Gateway API HTTPRoutes by parent Service "ns/name": with any rule attached to a port of the
    # parent, requests on that port that match no rule are not routed (404), as GAMMA specifies
    mesh_routes: Mapping[str, tuple[MeshRule, ...]] = field(default_factory=dict)

    def rules_for(self, service: str, port: int) -> tuple[MeshRule, ...]:
        return tuple(r for r in self.mesh_routes.get(service, ()) if r.port is None or r.port == port)

    def to_dict(self) -> dict:
        """Everything, JSON-able and deterministic (golden files, debugging)."""
        return {
            "services": [_service_dict(s) for s in self.services.values()],
            "excluded": dict(self.excluded),
            "traffic_targets": [_target_dict(t) for t in self.traffic_targets],
            "service_targets": {k: [{"target": st.target.key, "ports": list(st.ports)} for st in v]
                                for k, v in self.service_targets.items()},
            "splits": [_split_dict(s) for s in self.splits.values()],
            "mesh_routes": {k: [_rule_dict(r) for r in v] for k, v in self.mesh_routes.items()},
            "errors": [e.to_dict() for e in self.errors],
        }


def _match_dict(m: HTTPMatch) -> dict:
    return {"name": m.name, "path_regex": m.path_regex, "methods": list(m.methods), "headers": dict(m.headers)}


def _service_dict(s: Service) -> dict:
    mesh = s.mesh
    return {
        "key": s.key, "traffic_type": s.traffic_type.value, "scheme": mesh.scheme.value,
        "retry_attempts": mesh.retry_attempts, "circuit_breaker_expression": mesh.circuit_breaker_expression,
        "rate_limit": None if mesh.rate_limit is None else {"average": mesh.rate_limit.average,
                                                            "burst": mesh.rate_limit.burst},
        "request_timeout_seconds": mesh.request_timeout_seconds, "cluster_ip": s.cluster_ip,
        "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol, "target_port": p.target_port,
                   "index": p.index,
                   "endpoints": [{"ip": e.ip, "port": e.port, "pod": e.pod, "service_account": e.service_account}
                                 for e in p.endpoints]} for p in s.ports],
    }


def _target_dict(t: TrafficTarget) -> dict:
    return {"key": t.key, "destination": t.destination, "destination_port": t.destination_port,
            "sources": list(t.sources), "source_ips": list(t.source_ips),
            "http_matches": [_match_dict(m) for m in t.http_matches],
            "tcp_ports": None if t.tcp_ports is None else list(t.tcp_ports),
            "udp_ports": None if t.udp_ports is None else list(t.udp_ports)}


def _rule_dict(r: MeshRule) -> dict:
    return {"route": r.route, "index": r.index, "port": r.port, "matches": [_match_dict(m) for m in r.matches],
            "precedence": [list(p) for p in r.precedence],
            "backends": [{"service": b.service, "port": b.port, "weight": b.weight} for b in r.backends],
            "timeout_seconds": r.timeout_seconds, "grpc": r.grpc,
            "header_edits": _edits_dict(r.header_edits), "response_edits": _edits_dict(r.response_edits)}


def _edits_dict(edits) -> dict | None:
    return None if edits is None else {"set": dict(edits[0]), "add": dict(edits[1]), "remove": list(edits[2])}


def _split_dict(s: TrafficSplit) -> dict:
    return {"key": s.key, "root": s.root,
            "backends": [{"service": b.service, "weight": b.weight} for b in s.backends],
            "http_matches": None if s.http_matches is None else [_match_dict(m) for m in s.http_matches]}


# --------------------------------------------------------------------------- tolerant accessors


def _d(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _l(value: Any) -> list:
    return value if isinstance(value, list) else list(value) if isinstance(value, tuple) else []


def _s(value: Any) -> str:
    return value if isinstance(value, str) else ""


def port_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and 1 <= value <= 65535:
        return value
    if isinstance(value, str) and 0 < len(value) <= 5 and value.isascii() and value.isdigit() \
            and 1 <= int(value) <= 65535:
        return int(value)
    return None


_GOOD_NAMESPACES: set[str] = set()  # namespaces repeat on every object: check each once


def _meta(obj: dict) -> tuple[str, str]:
    """(namespace, name); ("", "") unless both are valid Kubernetes names (then nothing can be said
    about the object: it is skipped without an error, there is no name to report it under)."""
    meta = obj.get("metadata")
    if type(meta) is not dict:
        return "", ""
    ns, name = meta.get("namespace", "default"), meta.get("name")
    if type(ns) is not str or type(name) is not str:
        return "", ""
    if ns not in _GOOD_NAMESPACES:
        if not _NAMESPACE.fullmatch(ns):
            return "", ""
        if len(_GOOD_NAMESPACES) < 100_000:
            _GOOD_NAMESPACES.add(ns)
    return (ns, name) if _NAME.fullmatch(name) else ("", "")


class _Errors:
    def __init__(self) -> None:
        self.items: list[ObjectError] = []

    def add(self, kind: str, ns: str, name: str, where: str, message: str) -> None:
        self.items.append(ObjectError(kind, ns, name, where, message))


# --------------------------------------------------------------------------- pods


@dataclass
class _Pods:
    by_name: dict[tuple[str, str], tuple[str, str]]  # (ns, name) → (pod "ns/name", sa "ns/name")
    by_ip: dict[str, tuple[str, str]]  # ip of a running pod → (pod "ns/name", sa "ns/name")
    ips_by_sa: dict[str, set[str]]


# What a Pod contributes to the index: (ns, name), (pod "ns/name", sa "ns/name"), identity IPs; or
# None for an object that is not a usable Pod.
_PodFacts = tuple[tuple[str, str], tuple[str, str], tuple[str, ...]] | None


def _pod_facts(pod: Any) -> _PodFacts:
    """Hot at scale: plain type checks, no helpers."""
    if type(pod) is not dict:
        return None
    ns, name = _meta(pod)
    if not ns:
        return None
    spec, status = pod.get("spec"), pod.get("status")
    spec = spec if type(spec) is dict else {}
    status = status if type(status) is dict else {}
    sa = spec.get("serviceAccountName") or spec.get("serviceAccount")
    key = (f"{ns}/{name}", f"{ns}/{sa if type(sa) is str and sa else 'default'}")
    # A finished pod's IP can already belong to another pod: never an identity. A hostNetwork pod's
    # IP is its node's, shared by every process there: never an identity either (an endpoint's
    # targetRef still names it as a destination).
    if status.get("phase") in ("Succeeded", "Failed") or spec.get("hostNetwork") is True:
        return (ns, name), key, ()
    pod_ip = status.get("podIP")
    more = status.get("podIPs")
    if type(pod_ip) is str and pod_ip and (type(more) is not list or len(more) <= 1):  # single stack
        return (ns, name), key, ((pod_ip,) if _is_ip(pod_ip) else ())
    ips = [pod_ip] if type(pod_ip) is str and pod_ip else []
    if type(more) is list:  # dual stack; [0] repeats podIP
        ips += [p["ip"] for p in more if type(p) is dict and type(p.get("ip")) is str and p["ip"] not in ips]
    return (ns, name), key, tuple(ip for ip in ips if _is_ip(ip))


def _index_facts(facts: Any) -> _Pods:
    """By name and by IP (endpoint identity; the last pod wins a duplicate), IPs by ServiceAccount
    (TrafficTarget sources)."""
    by_name: dict[tuple[str, str], tuple[str, str]] = {}
    by_ip: dict[str, tuple[str, str]] = {}
    ips_by_sa: dict[str, set[str]] = {}
    for fact in facts:
        if fact is None:
            continue
        ref, key, ips = fact
        by_name[ref] = key
        for ip in ips:
            by_ip[ip] = key
            accounts = ips_by_sa.get(key[1])
            if accounts is None:
                ips_by_sa[key[1]] = {ip}
            else:
                accounts.add(ip)
    return _Pods(by_name, by_ip, ips_by_sa)


def _index_pods(pods: Any) -> _Pods:
    """One pass over every pod (see _index_facts)."""
    return _index_facts(_pod_facts(pod) for pod in pods or ())


# [0-9], not \d: \d also matches other scripts' digits ("१.2.3.4"), which ipaddress rejects
_IPV4 = re.compile(r"^(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}"
                   r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$")


def _is_ip(text: str) -> bool:
    """Same verdict as :mod:`ipaddress` (which the config validator uses), much faster for IPv4."""
    if _IPV4.fullmatch(text):
        return True
    if ":" not in text:
        return False
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------- services


@dataclass
class _RawPort:
    name: str
    port: int
    protocol: str
    target_port: int | str


def _service_ports(obj: dict, ns: str, name: str, traffic_type: TrafficType, errors: _Errors) -> list[_RawPort]:
    wanted = "UDP" if traffic_type is TrafficType.UDP else "TCP"
    out: list[_RawPort] = []
    raw_ports = _d(obj.get("spec")).get("ports")
    if raw_ports is not None and not isinstance(raw_ports, list):
        errors.add("Service", ns, name, "spec.ports", f"{raw_ports!r} is not a list of ports; the Service is not meshed")
    for i, raw in enumerate(_l(raw_ports)):
        raw = _d(raw)
        port = port_number(raw.get("port")) if not isinstance(raw.get("port"), str) else None
        protocol = raw.get("protocol", "TCP")
        if port is None or protocol not in ("TCP", "UDP", "SCTP"):
            errors.add("Service", ns, name, f"spec.ports[{i}]",
                       f"port {raw.get('port')!r}/{protocol!r} is not a valid port; that port is not meshed")
            continue
        if protocol != wanted:
            continue  # not suitable for the traffic type: not meshed, as upstream (no error)
        target = raw.get("targetPort", port)
        if isinstance(target, str) and target.isascii() and target.isdigit():
            target = int(target) if len(target) <= 5 else 0  # all digits: a number (out of range: refused)
        if not ((isinstance(target, int) and not isinstance(target, bool) and 1 <= target <= 65535)
                or (isinstance(target, str) and target)):
            errors.add("Service", ns, name, f"spec.ports[{i}].targetPort",
                       f"targetPort {target!r} is neither a port number nor a port name; that port is not meshed")
            continue
        if any(o.port == port for o in out):
            errors.add("Service", ns, name, f"spec.ports[{i}]", f"port {port}/{protocol} is listed twice; "
                                                                "the second is not meshed")
            continue
        out.append(_RawPort(_s(raw.get("name")), port, protocol, target))
    return out


def _annotation_errors(ns: str, name: str, settings: MeshSettings, found: list, errors: _Errors) -> bool:
    """Report annotation errors; True when the Service must be left out."""
    fatal = False
    http = settings.traffic_type is TrafficType.HTTP
    for err in found:
        key = err.annotation.rsplit("/", 1)[-1]
        unused = not http and key in HTTP_ONLY_KEYS
        if unused:
            what = "not used by a non-HTTP service, ignored"
        elif not err.fatal:
            what = f"{err.effect}; the service stays in the mesh"
        else:
            what = "the service is left out of the mesh"
        errors.add("Service", ns, name, f"metadata.annotations[{err.annotation}]",
                   f"annotation {err.annotation}={err.value!r}: {err.reason}; {what}")
        fatal = fatal or (not unused and err.fatal)
    return fatal


def _unused_http_keys(ns: str, name: str, settings: MeshSettings, found: list, errors: _Errors) -> None:
    """Say that valid HTTP-only annotations on a TCP/UDP Service do nothing (Traefik Mesh ignored
    them without a word; the Service stays meshed, so Services written for it keep working)."""
    reported = {err.annotation for err in found}
    for key in HTTP_ONLY_KEYS:
        full = settings.sources.get(key)
        if full is not None and full not in reported:
            errors.add("Service", ns, name, f"metadata.annotations[{full}]",
                       f"annotation {full} applies to HTTP traffic only; traffic type "
                       f"{settings.traffic_type.value} does not use it, ignored")


# --------------------------------------------------------------------------- endpoint slices


def _slices_by_service(slices: Any) -> tuple[dict[tuple[str, str], list[dict]], list[tuple[str, str, str, Any]]]:
    """The usable slices by Service (ns, name); and (ns, Service, slice name, addressType) of every
    slice whose addressType is neither IPv4 nor IPv6 (missing: IPv4, for hand-written slices)."""
    out: dict[tuple[str, str], list[dict]] = {}
    unusable: list[tuple[str, str, str, Any]] = []
    for sl in slices or ():
        if not isinstance(sl, dict):
            continue
        ns, name = _meta(sl)
        owner = _d(_d(sl.get("metadata")).get("labels")).get("kubernetes.io/service-name")
        if isinstance(owner, str) and owner:
            address_type = sl.get("addressType", "IPv4")
            if address_type in ("IPv4", "IPv6"):
                out.setdefault((ns, owner), []).append(sl)
            elif ns:
                unusable.append((ns, owner, name, address_type))
    return out, unusable


def _report_unusable_slices(unusable: list[tuple[str, str, str, Any]], services: dict[str, Service],
                            excluded: dict[str, str], errors: _Errors) -> None:
    """Say why a meshed Service's FQDN (or otherwise unknown addressType) slice adds no endpoint."""
    for ns, owner, name, address_type in sorted(unusable, key=repr):
        key = f"{ns}/{owner}"
        if key not in services and key not in excluded:
            continue
        if address_type == "FQDN":
            why = "addressType FQDN is not supported (kube-proxy ignores it too); its endpoints are not used"
        else:
            shown = address_type if isinstance(address_type, (str, int, float, bool, type(None))) else type(address_type).__name__
            why = f"addressType {shown!r} is not supported (IPv4 or IPv6); its endpoints are not used"
        if name:
            errors.add("EndpointSlice", ns, name, "addressType", f"{why} for service {key}")
        else:  # a slice without a usable name: say it on the Service
            errors.add("Service", ns, owner, "EndpointSlice addressType", f"an EndpointSlice of this service: {why}")


def _endpoints(ns: str, ports: list[_RawPort], slices: list[dict], pods: _Pods
               ) -> list[tuple[Endpoint, ...]]:
    """Endpoints per Service port (sorted, deduplicated): the ready ones, or if that port has none,
    the serving terminating ones. Hot at scale: plain type checks."""
    per_port: list[dict[tuple[str, int], Endpoint]] = [{} for _ in ports]
    fallback: list[dict[tuple[str, int], Endpoint]] = [{} for _ in ports]  # serving, terminating, not ready
    by_name, by_ip = pods.by_name, pods.by_ip
    for sl in slices:
        slice_ports = {}
        for sp in _l(sl.get("ports")):
            sp = _d(sp)
            number = port_number(sp.get("port")) if not isinstance(sp.get("port"), str) else None
            protocol = sp.get("protocol", "TCP")
            if number is not None and type(protocol) is str:
                slice_ports[(_s(sp.get("name")), protocol)] = number
        resolved: list[tuple[int, int]] = []  # (index of the Service port, endpoint port)
        for i, p in enumerate(ports):
            number = slice_ports.get((p.name, p.protocol))
            if number is None and sl.get("ports") is None and isinstance(p.target_port, int):
                number = p.target_port  # hand-written slice without ports (or null): the numeric targetPort
            if number is not None:
                resolved.append((i, number))
        if not resolved:
            continue
        endpoints = sl.get("endpoints")
        for ep in endpoints if type(endpoints) is list else ():
            if type(ep) is not dict:
                continue
            tables = per_port
            conditions = ep.get("conditions")
            if type(conditions) is dict:
                ready = conditions.get("ready")
                if ready is not None and ready is not True:
                    # Not ready: still a server, as kube-proxy's, while it is serving and terminating
                    # (grace period), for a port with no ready endpoint at all (see the docstring).
                    serving = conditions.get("serving")
                    if serving is not True or conditions.get("terminating") is not True:
                        continue  # (serving missing: as ready, which is not)
                    tables = fallback
            ref = ep.get("targetRef")
            known = None
            if type(ref) is dict and ref.get("kind", "Pod") == "Pod" and type(ref.get("name")) is str:
                ref_ns = ref.get("namespace")
                known = by_name.get((ref_ns if type(ref_ns) is str and ref_ns else ns, ref["name"]))
            addresses = ep.get("addresses")
            for ip in addresses if type(addresses) is list else ():
                if type(ip) is not str or not _is_ip(ip):
                    continue
                pod_key, sa = known or by_ip.get(ip) or (None, None)
                for i, number in resolved:
                    table = tables[i]
                    if (ip, number) not in table:
                        table[(ip, number)] = Endpoint(ip, number, pod_key, sa)
    return [(_one_per_pod(tuple(v for _, v in sorted((d or spare).items()))), not d and bool(spare))
            for d, spare in zip(per_port, fallback)]


def _one_per_pod(endpoints: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
    """Dual stack: a pod is in an IPv4 and an IPv6 EndpointSlice; it is one server (its IPv4
    address), not two, or it would take twice its share."""
    if not any(":" in e.ip for e in endpoints) or all(":" in e.ip for e in endpoints):
        return endpoints
    kept: dict[tuple, Endpoint] = {}
    for e in sorted(endpoints, key=lambda e: ":" in e.ip):  # IPv4 first (stable: ip order kept)
        kept.setdefault((e.pod, e.port) if e.pod else (e.ip, e.port), e)
    return tuple(sorted(kept.values(), key=lambda e: (e.ip, e.port)))


# --------------------------------------------------------------------------- SMI specs


def _http_match(raw: Any, group: tuple[str, str], i: int, errors: _Errors, prefix: str = "spec.") -> HTTPMatch | None:
    raw = _d(raw)
    name = _s(raw.get("name"))
    where = f"{prefix}matches[{i}]"

    def bad(msg: str) -> None:
        errors.add("HTTPRouteGroup", *group, where, f"{msg}; this match is ignored")

    path = raw.get("pathRegex")
    if path is not None:
        if not isinstance(path, str):
            return bad(f"pathRegex {path!r} is not a string")
        # SMI anchors pathRegex at the start of the path; Traefik strips a leading "/" and matches the
        # rest after "/": both "/api" and "api" select /api... Keep that: an optional leading slash.
        # The optional slash applies to every alternative: "api|v2" selects /api and /v2 (Traefik
        # wraps the expression in a group the same way).
        path = path[1:] if path.startswith("^") else path
        if not path.startswith("/"):
            path = "/?(?:" + path + ")"
        try:
            compile_user_regex(path)  # RE2, as the proxy runs it
        except ValueError as exc:
            return bad(f"pathRegex {raw.get('pathRegex')!r} is not a valid regular expression: {exc}")
    methods = []
    for m in _l(raw.get("methods")):
        if not isinstance(m, str) or not (m == "*" or _TOKEN.fullmatch(m)):
            return bad(f"method {m!r} is not an HTTP method")
        methods.append(m.upper())
    if "*" in methods:
        methods = []
    headers: dict[str, tuple[str, ...]] = {}
    raw_headers = raw.get("headers")
    # v1alpha3+: {name: regex}; v1alpha2: [{name: regex}, ...]
    parts = [raw_headers] if isinstance(raw_headers, dict) else _l(raw_headers)
    for part in parts:
        for hname, regex in _d(part).items():
            if not isinstance(hname, str) or not _TOKEN.fullmatch(hname) or not isinstance(regex, str):
                return bad(f"header {hname!r}: {regex!r} is not a header name and a regular expression")
            try:
                compile_user_regex(regex)  # RE2, as the proxy runs it
            except ValueError as exc:
                return bad(f"header {hname!r} regex {regex!r} is invalid: {exc}")
            # one header under two spellings (names are case-insensitive): both regexes must match
            have = headers.setdefault(hname.lower(), ())
            if regex not in have:
                headers[hname.lower()] = (*have, regex)
    return HTTPMatch(name, path, tuple(sorted(set(methods))),
                     tuple(sorted((n, r[0] if len(r) == 1 else r) for n, r in headers.items())))


@dataclass
class _Specs:
    groups: dict[tuple[str, str], tuple[dict[str, HTTPMatch], list[HTTPMatch], set[str]]]
    tcp: dict[tuple[str, str], tuple[int, ...]]
    udp: dict[tuple[str, str], tuple[int, ...]]


def _index_specs(state: ClusterState, settings: Settings, errors: _Errors) -> _Specs:
    groups = {}
    for obj in state.http_route_groups or ():
        if not isinstance(obj, dict):
            continue
        key = _meta(obj)
        if not key[1] or settings.ignored_namespace(key[0]):
            continue
        by_name: dict[str, HTTPMatch] = {}
        ordered: list[HTTPMatch] = []
        bad: set[str] = set()
        spec_matches = _d(obj.get("spec")).get("matches")
        top = spec_matches is None and "matches" in obj  # specs v1alpha1/v1alpha2: no spec, matches on top
        for i, raw in enumerate(_l(obj.get("matches") if top else spec_matches)):
            match = _http_match(raw, key, i, errors, "" if top else "spec.")
            if match is None:
                bad.add(_s(_d(raw).get("name")))
                continue
            ordered.append(match)
            if match.name:
                by_name.setdefault(match.name, match)
        groups[key] = (by_name, ordered, bad)
    l4 = {}
    for kind, objects in (("TCPRoute", state.tcp_routes), ("UDPRoute", state.udp_routes)):
        found = l4.setdefault(kind, {})
        for obj in objects or ():
            if not isinstance(obj, dict):
                continue
            key = _meta(obj)
            if not key[1] or settings.ignored_namespace(key[0]):
                continue
            matches = _d(obj.get("spec")).get("matches")
            # v1alpha4: spec.matches.ports (empty = every port); older versions: spec {}.
            ports = []
            listed = _l(_d(matches).get("ports")) if isinstance(matches, dict) else []
            for raw in listed:
                number = port_number(raw)
                if number is None:
                    errors.add(kind, *key, "spec.matches.ports", f"{raw!r} is not a port number; ignored")
                else:
                    ports.append(number)
            if listed and not ports:
                # only bad entries: no port, not every port (what an empty list means)
                errors.add(kind, *key, "spec.matches.ports", "no valid port listed: this route allows no port")
                ports = [NO_PORT]
            found[key] = tuple(sorted(set(ports)))
    return _Specs(groups, l4["TCPRoute"], l4["UDPRoute"])


# --------------------------------------------------------------------------- traffic targets


def _traffic_target(obj: dict, settings: Settings, specs: _Specs, pods: _Pods, errors: _Errors
                    ) -> TrafficTarget | None:
    ns, name = _meta(obj)
    spec = _d(obj.get("spec"))
    p = "spec."
    if "destination" not in spec and "destination" in obj:  # access v1alpha1: no spec, fields on top
        spec, p = obj, ""

    def err(where: str, msg: str) -> None:
        errors.add("TrafficTarget", ns, name, p + where, msg)

    dest = _d(spec.get("destination"))
    dest_name = _s(dest.get("name"))
    if dest.get("kind", "ServiceAccount") != "ServiceAccount" or not dest_name:
        err("destination", "destination must be a ServiceAccount with a name; the TrafficTarget is ignored")
        return None
    dest_ns = _s(dest.get("namespace")) or ns
    if dest_ns != ns:
        # Access to a namespace's pods is that namespace's to grant: otherwise any tenant able to
        # create a TrafficTarget could let itself into every other (as OSM's admission check says).
        # Traefik Mesh took the destination namespace as written.
        err("destination.namespace", f"{dest_ns!r} is not this TrafficTarget's namespace {ns!r}: a TrafficTarget "
                                     "grants access to its own namespace's ServiceAccounts only; it is ignored")
        return None
    dest_port = None
    if dest.get("port") not in (None, ""):
        dest_port = port_number(dest.get("port"))
        if dest_port is None:
            err("destination.port", f"{dest.get('port')!r} is not a port number; the TrafficTarget is ignored")
            return None
    sources: list[str] = []
    for i, src in enumerate(_l(spec.get("sources"))):
        src = _d(src)
        if src.get("kind", "ServiceAccount") != "ServiceAccount" or not _s(src.get("name")):
            err(f"sources[{i}]", "a source must be a ServiceAccount with a name; this source is ignored")
            continue
        sources.append(f"{_s(src.get('namespace')) or ns}/{src['name']}")
    sources = sorted(set(sources))
    if not sources:
        err("sources", "no sources: this TrafficTarget allows nothing; list the ServiceAccounts to allow")
    ips = sorted(set().union(*(pods.ips_by_sa.get(s, ()) for s in sources)) if sources else set())

    matches: list[HTTPMatch] = []
    tcp: set[int] | None = None
    udp: set[int] | None = None
    tcp_all = udp_all = False
    # v1alpha2+: spec.rules; v1alpha1: spec.specs (same shape)
    rules_field = "rules" if "rules" in spec or (p and "specs" not in spec) else "specs"
    if not _l(spec.get(rules_field)):
        # Reported because Traefik Mesh read it the other way (all traffic allowed): a migrated
        # rule-less TrafficTarget is a deny that should not be silent.
        err(rules_field, "no rules: this TrafficTarget allows nothing (Traefik Mesh allowed all "
                                   "traffic here); list the HTTPRouteGroup, TCPRoute or UDPRoute rules to allow")
    for i, rule in enumerate(_l(spec.get(rules_field))):
        rule = _d(rule)
        kind, rname = rule.get("kind"), _s(rule.get("name"))
        where = f"{rules_field}[{i}]"
        if kind == "HTTPRouteGroup":
            group = specs.groups.get((ns, rname))
            if group is None:
                err(where, f"HTTPRouteGroup {ns}/{rname} not found; this rule allows nothing")
                continue
            by_name, ordered, bad = group
            wanted = [m for m in _l(rule.get("matches"))]
            if not wanted:
                matches.extend(ordered)
                continue
            for mname in wanted:
                if not isinstance(mname, str):
                    err(f"{where}.matches", f"match name {mname!r} is not a string; ignored")
                elif mname in by_name:
                    matches.append(by_name[mname])
                elif mname not in bad:
                    err(f"{where}.matches", f"HTTPRouteGroup {ns}/{rname} has no match {mname!r}; ignored")
        elif kind in ("TCPRoute", "UDPRoute"):
            table = specs.tcp if kind == "TCPRoute" else specs.udp
            ports = table.get((ns, rname))
            if ports is None:
                err(where, f"{kind} {ns}/{rname} not found; this rule allows nothing")
                continue
            if kind == "TCPRoute":
                tcp = (tcp or set()) | set(ports)
                tcp_all = tcp_all or not ports
            else:
                udp = (udp or set()) | set(ports)
                udp_all = udp_all or not ports
        else:
            err(f"{where}.kind", f"rule kind {kind!r} is not HTTPRouteGroup, TCPRoute or UDPRoute; ignored")
    unique = tuple(dict.fromkeys(matches))
    return TrafficTarget(
        ns, name, f"{dest_ns}/{dest_name}", dest_port, tuple(sources), tuple(ips), unique,
        None if tcp is None else () if tcp_all else tuple(sorted(tcp)),
        None if udp is None else () if udp_all else tuple(sorted(udp)))


def _attach_targets(targets: list[TrafficTarget], services: dict[str, Service], errors: _Errors
                    ) -> dict[str, tuple[ServiceTarget, ...]]:
    by_sa: dict[str, set[str]] = {}
    for svc in services.values():
        for p in svc.ports:
            for e in p.endpoints:
                if e.service_account:
                    by_sa.setdefault(e.service_account, set()).add(svc.key)
    out: dict[str, list[ServiceTarget]] = {}
    for tt in targets:
        kinds: set[TrafficType] = set()  # traffic types of the Services the destination backs
        for key in sorted(by_sa.get(tt.destination, ())):
            svc = services[key]
            ports = []
            for p in svc.ports:
                if tt.destination_port is None or p.target_port == tt.destination_port or any(
                        e.port == tt.destination_port and e.service_account == tt.destination for e in p.endpoints):
                    ports.append(p.port)
            if not ports:
                errors.add("TrafficTarget", tt.namespace, tt.name, "spec.destination.port",
                           f"port {tt.destination_port} is not exposed by service {key}; "
                           "nothing is allowed to that service by this TrafficTarget")
                continue
            out.setdefault(key, []).append(ServiceTarget(tt, tuple(ports)))
            kinds.add(svc.traffic_type)
        # Rules exist but none is of a kind its destination's Services take (an HTTPRouteGroup for
        # a TCP Service): it allows nothing anywhere, which deserves a word. (A TrafficTarget that
        # opens HTTP while its ServiceAccount also runs a UDP Service is normal: not reported.)
        rule_kinds = {kind for kind, present in ((TrafficType.HTTP, bool(tt.http_matches)),
                                                 (TrafficType.TCP, tt.tcp_ports is not None),
                                                 (TrafficType.UDP, tt.udp_ports is not None)) if present}
        if kinds and rule_kinds and not kinds & rule_kinds:
            names = {TrafficType.HTTP: "HTTPRouteGroup", TrafficType.TCP: "TCPRoute", TrafficType.UDP: "UDPRoute"}
            errors.add("TrafficTarget", tt.namespace, tt.name, "spec.rules",
                       f"its rules ({', '.join(sorted(names[k] for k in rule_kinds))}) fit none of the destination's "
                       f"services ({', '.join(sorted(k.value for k in kinds))}); this TrafficTarget allows nothing")
    return {k: tuple(v) for k, v in sorted(out.items())}


# --------------------------------------------------------------------------- traffic splits


def parse_weight(value: Any, quantity: bool) -> int | None:
    """A backend weight: v1alpha1 quantities ("500m", "1") in milli-units, else whole numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):  # (a negative one is no weight, whichever version)
        return None if value < 0 else value * 1000 if quantity else value
    if isinstance(value, float) and quantity and 0 <= value <= 1e12:  # (1e308 * 1000 is inf)
        return round(value * 1000)
    if isinstance(value, str):
        if not quantity and value.strip().isascii() and value.strip().isdigit():
            return int(value) if len(value.strip()) <= 9 else None
        m = _QUANTITY.match(value)
        if m and quantity:
            return round(float(m.group(1)) * _QUANTITY_MILLI[m.group(2)])
    return None


def _split_service_name(value: object, namespace: str) -> tuple[str, str | None]:
    """A TrafficSplit's ``service``: its name, and why it cannot be used (or None).

    SMI's services are in the split's own namespace; v1alpha1 examples wrote them as FQDNs
    (``name.ns.svc.cluster.local``), which are read as ``name`` when ``ns`` is that namespace. A
    name in another namespace is refused: read as ``name`` it would send the traffic to a namesake."""
    text = _s(value)
    name, _, rest = text.partition(".")
    if rest:
        other, _, tail = rest.partition(".")
        if other != namespace or (tail and tail.partition(".")[0] != "svc"):
            return name, (f"{text!r} is not a Service of namespace {namespace}: a TrafficSplit's services are "
                          f"in its own namespace (its name alone, or {name}.{namespace}.svc.<cluster domain>)")
    return name, None


def _splits(state: ClusterState, settings: Settings, services: dict[str, Service], specs: _Specs,
            errors: _Errors) -> dict[str, TrafficSplit]:
    raw_splits = []
    for obj in state.traffic_splits or ():
        if not isinstance(obj, dict):
            continue
        ns, name = _meta(obj)
        if not name or settings.ignored_namespace(ns):
            continue
        raw_splits.append((ns, name, obj))
    raw_splits.sort(key=lambda item: item[:2])
    backend_fields: dict[tuple[str, str], str] = {}  # (split key, backend key) → field, for nested reports
    out: dict[str, TrafficSplit] = {}
    for ns, name, obj in raw_splits:
        spec = _d(obj.get("spec"))

        def err(where: str, msg: str) -> None:
            errors.add("TrafficSplit", ns, name, where, msg)

        root_name, problem = _split_service_name(spec.get("service"), ns)
        if problem:
            err("spec.service", f"root service {problem}; the TrafficSplit is ignored")
            continue
        root = services.get(f"{ns}/{root_name}")
        if root is None:
            err("spec.service", f"root service {ns}/{root_name or '?'} is not in the mesh; the TrafficSplit is ignored")
            continue
        if root.key in out:
            err("spec.service", f"service {root.key} already has TrafficSplit {out[root.key].key}; "
                                "this TrafficSplit is ignored")
            continue
        quantity = str(obj.get("apiVersion", "")).endswith("/v1alpha1")
        backends: list[SplitBackend] = []
        for i, raw in enumerate(_l(spec.get("backends"))):
            raw = _d(raw)
            where = f"spec.backends[{i}]"
            bname, problem = _split_service_name(raw.get("service"), ns)
            weight = parse_weight(raw.get("weight"), quantity)
            backend = services.get(f"{ns}/{bname}")
            if weight is None:
                err(f"{where}.weight", f"weight {raw.get('weight')!r} is not a valid weight; backend ignored")
                continue
            if problem:
                err(f"{where}.service", f"backend service {problem}; backend ignored")
                continue
            if backend is None:
                err(f"{where}.service", f"backend service {ns}/{bname or '?'} is not in the mesh; backend ignored")
                continue
            if backend.traffic_type is not root.traffic_type:
                err(f"{where}.service", f"backend {backend.key} is {backend.traffic_type.value}, the root is "
                                        f"{root.traffic_type.value}; backend ignored")
                continue
            missing = [p.port for p in root.ports if backend.port(p.port) is None]
            if missing:
                err(f"{where}.service", f"backend {backend.key} does not expose port(s) "
                                        f"{', '.join(map(str, missing))} of the root; backend ignored")
                continue
            backend_fields.setdefault((f"{ns}/{name}", backend.key), f"{where}.service")
            backends.append(SplitBackend(backend.key, weight))
        if not backends or not any(b.weight for b in backends):
            err("spec.backends", "no usable backend with a weight above 0; the TrafficSplit is ignored")
            continue
        http_matches: tuple[HTTPMatch, ...] | None = None
        bad_match = False
        if _l(spec.get("matches")):
            found: list[HTTPMatch] = []
            for i, m in enumerate(_l(spec.get("matches"))):
                m = _d(m)
                kind, mname = m.get("kind"), _s(m.get("name"))
                if kind not in ("HTTPRouteGroup", "TCPRoute", "UDPRoute"):
                    err(f"spec.matches[{i}].kind", f"{'no kind' if kind is None else repr(kind)}: must be "
                                                   f"HTTPRouteGroup, TCPRoute or UDPRoute; the TrafficSplit is ignored")
                    bad_match = True
                elif not mname:
                    err(f"spec.matches[{i}].name", "missing; the TrafficSplit is ignored")
                    bad_match = True
                elif kind == "HTTPRouteGroup" and (ns, mname) in specs.groups:
                    found.extend(specs.groups[(ns, mname)][1])
                elif kind in ("TCPRoute", "UDPRoute") and (ns, mname) in (specs.tcp if kind == "TCPRoute"
                                                                         else specs.udp):
                    pass  # L4 matches select ports only; a split applies to every port of its root
                else:
                    err(f"spec.matches[{i}]", f"{kind} {ns}/{mname} not found; the TrafficSplit is ignored")
                    bad_match = True
            if root.traffic_type is TrafficType.HTTP and not bad_match:
                http_matches = tuple(dict.fromkeys(found))
                if not http_matches:
                    err("spec.matches", "the referenced HTTPRouteGroups have no valid match; "
                                        "the TrafficSplit is ignored")
                    bad_match = True
        if bad_match:
            continue
        out[root.key] = TrafficSplit(ns, name, root.key, tuple(backends), http_matches)
    # Nested splits are reported once every split is known (only splits actually in force count).
    for split in out.values():
        for b in split.backends:
            inner = out.get(b.service)
            if b.service != split.root and inner is not None:
                errors.add("TrafficSplit", split.namespace, split.name, backend_fields[(split.key, b.service)],
                           f"backend {b.service} is itself the root of TrafficSplit {inner.key}: nested splits "
                           "are not followed (resolved in one hop), its own pods are used")
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- the builder


class TopologyCache:
    """What :func:`build_topology` may reuse from its previous call (the controller keeps one).

    A Service's result (its meshed ports and endpoints, or why it is left out, and the errors it
    produced) is reused when the next call gets the very same Service object and the very same
    EndpointSlice objects for it, under the same settings, and no Pod it may refer to changed (by
    name in an endpoint's ``targetRef``, or by IP). The SMI route specs are reused when every route
    object is the same; a TrafficTarget when it and the specs are, and no Pod running as one of
    its sources changed. The sources replace an object when it changes (watch caches, re-read
    files), never edit one in place: that is what makes identity a safe test. Anything else is
    computed as without a cache. Pods change far more often than anything else (every rollout,
    every readiness flip), so a Pod change recomputes only what depends on that Pod.
    """

    def __init__(self) -> None:
        self.settings: Settings | None = None
        self.pods_seen: list = []  # the Pod objects of the last call (kept alive: ids stay unique)
        self.pod_facts: dict[int, _PodFacts] = {}  # id(pod) → what it contributes, for pods_seen
        self.pods: _Pods | None = None
        # (ns, name) → (Service object, its slices, outcome, errors, the pod names and IPs it read)
        self.services: dict[tuple[str, str], tuple[dict, tuple, Service | str, list[ObjectError], frozenset]] = {}
        self.spec_objects: tuple[list, ...] = ()  # HTTPRouteGroups, TCPRoutes, UDPRoutes of the last call
        self.specs: tuple[_Specs, list[ObjectError]] | None = None
        self.targets: dict[int, tuple[dict, TrafficTarget | None, list[ObjectError]]] = {}  # by id(object)


def _same_objects(a, b) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _pod_changes(old: list, new: list, old_facts: dict[int, _PodFacts]
                 ) -> tuple[set, set, list[_PodFacts]] | None:
    """What differs between two Pod lists, compared by object identity: the ``(ns, name)`` keys
    and IPs (old and new values) of the pods replaced, added or removed, their ServiceAccounts
    ``"ns/sa"``, and the facts of every pod of ``new``. None when the pods that stayed are not in
    the same relative order (the index keeps the last pod of a duplicate name or IP, so order can
    matter): nothing is reused then."""
    new_ids = {id(p) for p in new}
    kept_new = [p for p in new if id(p) in old_facts]
    kept_old = [p for p in old if id(p) in new_ids]
    if not _same_objects(kept_new, kept_old):
        return None
    refs: set = set()
    accounts: set = set()
    facts: list[_PodFacts] = []
    changed: list[_PodFacts] = []
    for pod in new:
        fact = old_facts.get(id(pod), _MISSING)
        if fact is _MISSING:
            fact = _pod_facts(pod)
            changed.append(fact)
        facts.append(fact)
    if len(kept_old) != len(old):
        changed += [old_facts[id(p)] for p in old if id(p) not in new_ids]
    for fact in changed:
        if fact is not None:
            ref, key, ips = fact
            refs.add(ref)
            refs.update(ips)
            accounts.add(key[1])
    return refs, accounts, facts


_MISSING = object()


def _pod_refs(ns: str, slices: Any) -> frozenset:
    """Every pod a Service's endpoints may resolve to: ``targetRef`` keys and addresses (the same
    reading as :func:`_endpoints`, wider: a key listed here that resolves to nothing is harmless)."""
    refs: set = set()
    for sl in slices:
        endpoints = sl.get("endpoints") if type(sl) is dict else None
        for ep in endpoints if type(endpoints) is list else ():
            if type(ep) is not dict:
                continue
            ref = ep.get("targetRef")
            if type(ref) is dict and type(ref.get("name")) is str:
                ref_ns = ref.get("namespace")
                refs.add((ref_ns if type(ref_ns) is str and ref_ns else ns, ref["name"]))
            addresses = ep.get("addresses")
            if type(addresses) is list:
                refs.update(ip for ip in addresses if type(ip) is str)
    return frozenset(refs)


def _service(obj: dict, ns: str, name: str, spec: dict, default_mode: TrafficType, slices: Any, pods: _Pods,
             errors: _Errors) -> Service | str:
    """One Service: its topology entry, or the reason it is left out."""
    annotations = _d(_d(obj.get("metadata")).get("annotations"))
    mesh, found = parse_annotations_lenient(annotations, default_mode)
    if _annotation_errors(ns, name, mesh, found, errors):
        return "; ".join(str(e) for e in found)
    if mesh.traffic_type is not TrafficType.HTTP:
        _unused_http_keys(ns, name, mesh, found, errors)
    raw_ports = _service_ports(obj, ns, name, mesh.traffic_type, errors)
    if not raw_ports and _l(spec.get("ports")):
        chosen = lookup(annotations, TRAFFIC_TYPE)
        if chosen is not None:  # asked for by name: say why nothing happens (by default it is quiet)
            wanted = "UDP" if mesh.traffic_type is TrafficType.UDP else "TCP"
            errors.add("Service", ns, name, f"metadata.annotations[{chosen[0]}]",
                       f"traffic type {mesh.traffic_type.value} needs a {wanted} port and the Service has none; "
                       "it is not meshed")
    per_port = _endpoints(ns, raw_ports, slices, pods) if raw_ports else []
    ports = tuple(ServicePort(p.name, p.port, p.protocol, p.target_port, i, eps, terminating)
                  for i, (p, (eps, terminating)) in enumerate(zip(raw_ports, per_port)))
    cluster_ip = spec.get("clusterIP")
    return Service(ns, name, mesh.traffic_type, mesh, ports,
                   cluster_ip if isinstance(cluster_ip, str) and _is_ip(cluster_ip) else None)


def _internal(errors: _Errors, kind: str, ns: str, name: str, exc: Exception) -> str:
    """Report an unexpected failure while reading one object (a bug: the fuzz tests look for this
    message) and leave that object out."""
    reason = f"internal error while reading this object ({type(exc).__name__}: {str(exc)[:200]}); it is left out"
    errors.add(kind, ns, name, "", reason)
    return reason


def build_topology(state: ClusterState, settings: Settings, cache: TopologyCache | None = None) -> Topology:
    """Read ``state`` into a :class:`Topology`. Never raises on bad objects: they are reported in
    ``errors`` and left out (or partly applied). ``cache``: see :class:`TopologyCache` (same result)."""
    errors = _Errors()
    pod_objects = list(state.pods or ())
    # changed: the pod keys/IPs and ServiceAccounts that differ from the cached call, or None (cold)
    changed: tuple[set, set] | None = None
    pods = pod_facts = None
    if cache is not None and cache.settings == settings and cache.pods is not None:
        if _same_objects(cache.pods_seen, pod_objects):
            changed, pods, pod_facts = (set(), set()), cache.pods, cache.pod_facts
        else:
            diff = _pod_changes(cache.pods_seen, pod_objects, cache.pod_facts)
            if diff is not None:
                changed = diff[0], diff[1]
                pods = _index_facts(diff[2])
                pod_facts = {id(p): f for p, f in zip(pod_objects, diff[2])}
    if pods is None:
        facts = [_pod_facts(p) for p in pod_objects]
        pods = _index_facts(facts)
        pod_facts = {id(p): f for p, f in zip(pod_objects, facts)} if cache is not None else {}
    previous = cache.services if changed is not None else {}
    changed_refs, changed_accounts = changed if changed is not None else (set(), set())
    kept: dict[tuple[str, str], tuple[dict, tuple, Service | str, list[ObjectError], frozenset]] = {}
    slices, unusable_slices = _slices_by_service(state.endpoint_slices)
    default_mode = TrafficType(settings.default_mode)
    services: dict[str, Service] = {}
    excluded: dict[str, str] = {}
    ignored = set(ALWAYS_IGNORED_SERVICES)
    seen: set[tuple[str, str]] = set()
    for obj in state.services or ():
        if not isinstance(obj, dict):
            continue
        ns, name = _meta(obj)
        if not ns or not name or settings.ignored_namespace(ns) or (ns, name) in ignored or (ns, name) in seen:
            continue
        seen.add((ns, name))
        spec = _d(obj.get("spec"))
        if spec.get("type") == "ExternalName":
            continue  # nothing to route to (upstream ignores them too)
        if len(name) > 63:  # only from files: the API server refuses it (a DNS label); config names would overflow
            errors.add("Service", ns, name, "metadata.name", "a Service name has at most 63 characters (a DNS "
                                                             "label, as the API server requires); not meshed")
            continue
        its_slices = slices.get((ns, name), ())
        hit = previous.get((ns, name))
        if (hit is not None and hit[0] is obj and _same_objects(hit[1], its_slices)
                and (not changed_refs or changed_refs.isdisjoint(hit[4]))):
            outcome = hit[2]
            errors.items.extend(hit[3])
        else:
            mark = len(errors.items)
            try:
                outcome = _service(obj, ns, name, spec, default_mode, its_slices, pods, errors)
            except Exception as exc:  # a bug here must cost this object, never every reconcile
                outcome = _internal(errors, "Service", ns, name, exc)
            hit = (obj, tuple(its_slices), outcome, errors.items[mark:],
                   _pod_refs(ns, its_slices) if cache is not None else frozenset())
        if cache is not None:
            kept[(ns, name)] = hit
        if isinstance(outcome, str):
            excluded[f"{ns}/{name}"] = outcome
        else:
            services[f"{ns}/{name}"] = outcome
    services = dict(sorted(services.items()))
    if unusable_slices:
        _report_unusable_slices(unusable_slices, services, excluded, errors)

    # HTTPRouteGroups/TCPRoutes/UDPRoutes, then TrafficTargets (which read them and the Pods): reused
    # when all of those are the very same objects as last time
    spec_objects = (list(state.http_route_groups or ()), list(state.tcp_routes or ()), list(state.udp_routes or ()))
    specs_warm = changed is not None and cache.specs is not None and all(
        _same_objects(a, b) for a, b in zip(cache.spec_objects, spec_objects))
    if specs_warm:
        specs, spec_errors = cache.specs
        errors.items.extend(spec_errors)
    else:
        mark = len(errors.items)
        specs = _index_specs(state, settings, errors)
        spec_errors = errors.items[mark:]
    previous_targets = cache.targets if specs_warm else {}
    kept_targets: dict[int, tuple[dict, TrafficTarget | None, list[ObjectError]]] = {}
    targets: list[TrafficTarget] = []
    for obj in state.traffic_targets or ():
        if not isinstance(obj, dict):
            continue
        ns, name = _meta(obj)
        if not name or settings.ignored_namespace(ns):
            continue
        done = previous_targets.get(id(obj))
        if (done is not None and done[0] is obj
                and (done[1] is None or not changed_accounts or changed_accounts.isdisjoint(done[1].sources))):
            tt = done[1]
            errors.items.extend(done[2])
        else:
            mark = len(errors.items)
            try:
                tt = _traffic_target(obj, settings, specs, pods, errors)
            except Exception as exc:  # as for Services
                _internal(errors, "TrafficTarget", ns, name, exc)
                tt = None
            done = (obj, tt, errors.items[mark:])
        kept_targets[id(obj)] = done
        if tt is not None:
            targets.append(tt)
    if cache is not None:
        cache.settings, cache.pods_seen, cache.pods, cache.services = settings, pod_objects, pods, kept
        cache.pod_facts = pod_facts
        cache.spec_objects, cache.specs, cache.targets = spec_objects, (specs, spec_errors), kept_targets
    targets.sort(key=lambda t: (t.namespace, t.name))
    service_targets = _attach_targets(targets, services, errors)
    splits = _splits(state, settings, services, specs, errors)
    mesh_routes = _mesh_routes(state, settings, services, errors)
    for root in [r for r in splits if r in mesh_routes]:
        split = splits.pop(root)
        errors.add("TrafficSplit", split.namespace, split.name, "spec.service",
                   f"service {root} has Gateway API HTTPRoutes attached, which decide its traffic; "
                   "the TrafficSplit is ignored")
    return Topology(services, dict(sorted(excluded.items())), tuple(targets), service_targets, splits,
                    tuple(sorted(set(errors.items))), mesh_routes)


# --------------------------------------------------------------------------- Gateway API (GAMMA)

_GW_GROUP = "gateway.networking.k8s.io"


def _gw_path(raw: Any) -> tuple[str | None, tuple[int, int, int]] | str:
    """An HTTPRoute path match → (regex for the proxy's anchored match, (exact, characters, not a
    regex) for the precedence), or an error."""
    raw = _d(raw)
    kind = raw.get("type", "PathPrefix")
    value = raw.get("value", "/")
    if not isinstance(value, str) or not value.startswith("/"):
        return f"path value {value!r} must start with /"
    if not _is_text(value):
        return f"path value {value!r} is not valid Unicode text"
    if kind == "Exact":
        return re.escape(value) + "$", (1, len(value), 1)
    if kind == "PathPrefix":
        prefix = value.rstrip("/")
        if not prefix:
            return None, (0, 1, 1)  # "/": every path
        return re.escape(prefix) + "(?:/.*)?$", (0, len(value), 1)  # whole path elements: /foo, /foo/x, not /foobar
    if kind == "RegularExpression":
        try:
            compile_user_regex(f"(?:{value})")  # RE2, as the proxy runs it: inside a group
        except ValueError as exc:
            return f"path regular expression {value!r} is invalid: {exc}"
        return f"(?:{value})$", (0, len(value), 0)  # (implementation-specific: after a prefix as long)
    return f"path type {kind!r} is not Exact, PathPrefix or RegularExpression"


def _is_text(value: str) -> bool:
    """False for a lone surrogate, which a JSON manifest may hold (``"\\ud800"``) and no regex engine
    or wire can carry: it would fail the whole config, not just this route."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _gw_match(raw: Any) -> tuple[HTTPMatch, tuple[int, int, int, int, int]] | str:
    raw = _d(raw)
    if raw.get("queryParams"):
        return "queryParams matches are not supported"
    path = _gw_path(raw.get("path")) if "path" in raw else (None, (0, 1, 1))
    if isinstance(path, str):
        return path
    methods: tuple[str, ...] = ()
    if raw.get("method") is not None:
        method = raw.get("method")
        if not isinstance(method, str) or not _TOKEN.fullmatch(method):
            return f"method {method!r} is not an HTTP method"
        methods = (method.upper(),)
    headers: dict[str, str] = {}
    for i, h in enumerate(_l(raw.get("headers"))):
        h = _d(h)
        name, value, kind = h.get("name"), h.get("value"), h.get("type", "Exact")
        if not isinstance(name, str) or not _TOKEN.fullmatch(name) or not isinstance(value, str):
            return f"headers[{i}] must have a header name and a string value"
        if not _is_text(value):
            return f"headers[{i}] value {value!r} is not valid Unicode text"
        if kind == "Exact":
            regex = "^" + re.escape(value) + "$"
        elif kind == "RegularExpression":
            try:
                compile_user_regex(f"(?:{value})")  # RE2, as the proxy runs it: inside a group
            except ValueError as exc:
                return f"headers[{i}] regular expression {value!r} is invalid: {exc}"
            regex = f"^(?:{value})$"
        else:
            return f"headers[{i}].type {kind!r} is not Exact or RegularExpression"
        headers.setdefault(name.lower(), regex)  # the spec: the first of equivalent names counts
    path_regex, (exact, chars, literal) = path
    return (HTTPMatch("", path_regex, methods, tuple(sorted(headers.items()))),
            (exact, chars, literal, int(bool(methods)), len(headers)))


_GRPC_NAME = re.compile(r"^[A-Za-z0-9_.]+$")
_GW_TRAFFIC = {"HTTPRoute": TrafficType.HTTP, "GRPCRoute": TrafficType.HTTP, "TCPRoute": TrafficType.TCP,
               "UDPRoute": TrafficType.UDP}


def _grpc_match(raw: Any) -> tuple[HTTPMatch, tuple[int, int, int, int, int]] | str:
    """A GRPCRoute match → an HTTP match on the request path ``/<service>/<method>`` and headers."""
    raw = _d(raw)
    method = _d(raw.get("method"))
    kind = method.get("type", "Exact")
    service, name = method.get("service"), method.get("method")
    for what, value in (("service", service), ("method", name)):
        if value is not None and (not isinstance(value, str) or not value):
            return f"method.{what} {value!r} must be a non-empty string"
    if kind == "Exact":
        for what, value in (("service", service), ("method", name)):
            if value is not None and not _GRPC_NAME.fullmatch(value):
                return f"method.{what} {value!r} is not a gRPC name"
        svc_re = re.escape(service) if service else "[^/]+"
        method_re = re.escape(name) if name else "[^/]+"
    elif kind == "RegularExpression":
        for what, value in (("service", service), ("method", name)):
            if value is not None:
                try:
                    compile_user_regex(f"(?:{value})")  # RE2, as the proxy runs it: inside a group
                except ValueError as exc:
                    return f"method.{what} regular expression {value!r} is invalid: {exc}"
        svc_re = f"(?:{service})" if service else "[^/]+"
        method_re = f"(?:{name})" if name else "[^/]+"
    else:
        return f"method.type {kind!r} is not Exact or RegularExpression"
    path = None if not service and not name else f"/{svc_re}/{method_re}$"
    headers = _gw_match({"headers": raw.get("headers")}) if raw.get("headers") else None
    if isinstance(headers, str):
        return headers
    header_pairs = headers[0].headers if headers else ()
    return HTTPMatch("", path, (), header_pairs), (0, len(service or ""), 1, len(name or ""), len(header_pairs))


def _mesh_routes(state: ClusterState, settings: Settings, services: dict[str, Service], errors: _Errors
                 ) -> dict[str, tuple[MeshRule, ...]]:
    """Gateway API HTTPRoutes, GRPCRoutes, TCPRoutes and UDPRoutes with mesh Services (of the
    matching traffic type) as parents (producer routes: the route in the Service's namespace).
    Oldest route first (the Gateway API's precedence), then by namespace/name, then kind. An L4 rule has no
    match: its backends take the parent port's whole traffic (first rule only)."""
    routes = []
    seen: set[tuple[str, str, str]] = set()
    for kind, objects in (("GRPCRoute", state.mesh_grpc_routes), ("HTTPRoute", state.mesh_http_routes),
                          ("TCPRoute", state.mesh_tcp_routes), ("UDPRoute", state.mesh_udp_routes)):
        for obj in objects or ():
            if not isinstance(obj, dict):
                continue
            ns, name = _meta(obj)
            if not name or settings.ignored_namespace(ns) or (kind, ns, name) in seen:
                continue
            seen.add((kind, ns, name))
            created = _s(_d(obj.get("metadata")).get("creationTimestamp"))
            routes.append((created, kind, ns, name, obj))
    routes.sort(key=lambda r: (r[0], r[2], r[3], r[1]))  # oldest, then namespace/name (the spec's ties)
    out: dict[str, list[MeshRule]] = {}
    for _created, route_kind, ns, name, obj in routes:
        spec = _d(obj.get("spec"))
        grpc = route_kind == "GRPCRoute"
        parse_match = _grpc_match if grpc else _gw_match
        wanted = _GW_TRAFFIC[route_kind]
        # SMI has kinds of these names too: Gateway API ones are reported as "TCPRoute.<group>"
        reported = route_kind if wanted is TrafficType.HTTP else f"{route_kind}.{_GW_GROUP}"

        def err(where: str, msg: str, reported: str = reported) -> None:
            errors.add(reported, ns, name, where, msg)

        for field in ("parentRefs", "rules"):
            if spec.get(field) is not None and not isinstance(spec.get(field), list):
                err(f"spec.{field}", f"{spec.get(field)!r} is not a list; the route is ignored")
        parents: list[tuple[str, int | None]] = []
        for i, ref in enumerate(_l(spec.get("parentRefs"))):
            ref = _d(ref)
            if ref.get("kind") != "Service" or ref.get("group", _GW_GROUP) not in ("", "core"):
                continue  # a Gateway (or anything else) is another controller's parent
            where = f"spec.parentRefs[{i}]"
            pns = _s(ref.get("namespace")) or ns
            if pns != ns:
                err(where, f"consumer routes (a parent in another namespace, {pns}) are not supported; "
                           "this parent is ignored")
                continue
            parent = services.get(f"{ns}/{_s(ref.get('name'))}")
            if parent is None:
                err(where, f"parent service {ns}/{_s(ref.get('name')) or '?'} is not in the mesh; ignored")
                continue
            if parent.traffic_type is not wanted:
                err(where, f"parent service {parent.key} is {parent.traffic_type.value}, not {wanted.value}; ignored")
                continue
            port = None
            if ref.get("port") is not None:
                port = port_number(ref.get("port"))
                if port is None or parent.port(port) is None:
                    err(f"{where}.port", f"{ref.get('port')!r} is not a port of {parent.key}; this parent is ignored")
                    continue
            section = ref.get("sectionName")
            if section is not None:  # for a Service parent: the name of one of its ports
                named = [q.port for q in parent.ports if q.name == section]
                if not named:
                    err(f"{where}.sectionName", f"{parent.key} has no port named {section!r}; this parent is ignored")
                    continue
                if port is not None and port != named[0]:
                    err(f"{where}.sectionName", f"port {section!r} of {parent.key} is {named[0]}, not port {port}; "
                                                "this parent is ignored")
                    continue
                port = named[0]
            parents.append((parent.key, port))
        # one attachment per Service port: a parent without a port covers them all
        whole = {key for key, port in parents if port is None}
        parents = list(dict.fromkeys((key, None if key in whole else port) for key, port in parents))
        if not parents:
            continue
        for k, rule in enumerate(_l(spec.get("rules"))):
            rule = _d(rule)
            where = f"spec.rules[{k}]"
            if wanted is not TrafficType.HTTP and k > 0:
                err(where, f"a {route_kind} is applied with its first rule only; this rule is ignored")
                continue
            edits = _header_filters(_l(rule.get("filters")))
            unfiltered = isinstance(edits, str)
            if unfiltered:
                # The spec: a filter that cannot be applied must not be skipped; the requests it
                # would have processed get an error (never another rule's backends).
                answer = "are refused (503)" if grpc else "answer 500"
                err(f"{where}.{edits.partition(': ')[0]}",
                    f"{edits.partition(': ')[2]}; requests matching this rule {answer}")
                edits = (None, None)
            matches: list[tuple[HTTPMatch, bool]] = []
            bad = None
            for j, raw in enumerate((_l(rule.get("matches")) or [{}]) if wanted is TrafficType.HTTP else ()):
                found = parse_match(raw)
                if isinstance(found, str):
                    bad = (f"{where}.matches[{j}]", f"{found}; this rule is ignored")
                    break
                matches.append(found)
            if bad is not None:
                err(*bad)
                continue
            timeout = None
            raw_timeouts = _d(rule.get("timeouts"))
            if raw_timeouts.get("backendRequest") is not None:
                err(f"{where}.timeouts.backendRequest", "a per-try backend timeout is not supported; ignored "
                                                        "(timeouts.request bounds the whole request)")
            if raw_timeouts.get("request") is not None:
                try:
                    timeout = parse_duration(_s(raw_timeouts.get("request")))
                except ValueError as exc:
                    err(f"{where}.timeouts.request", f"{raw_timeouts.get('request')!r}: {exc}; the timeout is ignored")
                else:
                    if timeout > MAX_TIMEOUT_SECONDS:  # the proxy's bound: beyond it the whole config would fail
                        err(f"{where}.timeouts.request", f"{raw_timeouts.get('request')!r} is more than 24h, the "
                                                         "longest supported; 24h is used")
                        timeout = MAX_TIMEOUT_SECONDS
                timeout = timeout or None  # "0s": no timeout
            backends: list[RouteBackend] = []
            for j, ref in enumerate(_l(rule.get("backendRefs"))):
                ref = _d(ref)
                bwhere = f"{where}.backendRefs[{j}]"
                if _weight(ref) is None:
                    err(f"{bwhere}.weight", f"weight {ref.get('weight')!r} is not a whole number from 0 to 1000000; "
                                            "backend ignored")
                    continue
                if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
                    err(bwhere, "only Service backends are supported; backend ignored")
                    backends.append(RouteBackend("", 0, _weight(ref)))
                    continue
                if (_s(ref.get("namespace")) or ns) != ns:
                    err(f"{bwhere}.namespace", "backends in another namespace are not supported; backend ignored "
                                              )
                    backends.append(RouteBackend("", 0, _weight(ref)))
                    continue
                backend = services.get(f"{ns}/{_s(ref.get('name'))}")
                port = port_number(ref.get("port"))
                if backend is None or port is None or backend.port(port) is None:
                    what = f"{ns}/{_s(ref.get('name')) or '?'}" + (f" port {ref.get('port')}" if port is None or backend
                                                                    else "")
                    err(bwhere, f"backend {what} is not a mesh Service port; backend ignored")
                    backends.append(RouteBackend("", 0, _weight(ref)))
                    continue
                backends.append(RouteBackend(backend.key, port, _weight(ref)))
            if not backends:
                answer = ("connections to it are closed" if wanted is not TrafficType.HTTP
                          else "requests matching this rule are refused (503)" if grpc
                          else "requests matching this rule answer 500")
                err(f"{where}.backendRefs", f"no backend: {answer}")
            if unfiltered:
                backends = []
            for parent, port in parents:
                out.setdefault(parent, []).append(MeshRule(
                    f"{ns}/{name}", k, port, tuple(m for m, _ in matches), tuple(backends), timeout,
                    tuple(p for _, p in matches), grpc, *edits))
    return {k: tuple(v) for k, v in sorted(out.items())}


_HEADER_FILTERS = {"RequestHeaderModifier": ("requestHeaderModifier", 0),
                   "ResponseHeaderModifier": ("responseHeaderModifier", 1)}


def _header_filters(filters: list):
    """A rule's filters → (request edits, response edits), each (set, add, remove) or None; or
    ``"<field>: <reason>"`` when a filter cannot be applied (the rule is then left out)."""
    from lightmesh.config import _check_field_name  # the proxy's own rule for editable fields

    found: list[tuple[dict, dict, list] | None] = [None, None]
    for i, f in enumerate(filters):
        f = _d(f)
        where = f"filters[{i}]"
        if f.get("type") not in _HEADER_FILTERS:
            return f"{where}: filter {f.get('type')!r} is not supported (only RequestHeaderModifier and " \
                   "ResponseHeaderModifier)"
        key, side = _HEADER_FILTERS[f["type"]]
        mod = _d(f.get(key))
        set_, add, remove = found[side] or ({}, {}, [])
        for op, target in (("set", set_), ("add", add)):
            for j, h in enumerate(_l(mod.get(op))):
                h = _d(h)
                name, value = h.get("name"), h.get("value")
                if not isinstance(name, str) or not isinstance(value, str) or not header_value_ok(value):
                    return (f"{where}.{key}.{op}[{j}]: a header needs a name and a value of visible Latin-1 "
                            "characters, spaces and tabs (at most 8192)")
                try:
                    _check_field_name(name)
                except ValueError as exc:
                    return f"{where}.{key}.{op}[{j}]: {exc}"
                if op == "set" and any(n.lower() == name.lower() for n in target):
                    continue  # the spec: the first entry of equivalent names is the one applied
                target[name] = value
        for j, name in enumerate(_l(mod.get("remove"))):
            try:
                remove.append(_check_field_name(name if isinstance(name, str) else ""))
            except ValueError as exc:
                return f"{where}.{key}.remove[{j}]: {exc}"
        found[side] = (set_, add, remove)
    return tuple(None if e is None else (tuple(e[0].items()), tuple(e[1].items()), tuple(e[2])) for e in found)


def _weight(ref: dict) -> int | None:
    weight = ref.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= 1_000_000:
        return None
    return weight
