"""What the controller's pure core takes in and reports: cluster state, settings, object errors.

This module owns the three value types every other core module (``topology``, ``ports``,
``shadow``, ``provider``, ``build``) and the shell share:

* :class:`ClusterState` — the raw Kubernetes objects (dicts exactly as the API server returns them:
  ``apiVersion``/``kind``/``metadata``/``spec``/``status``) grouped by kind, plus the shadow
  Services that already exist in the mesh namespace (they carry the allocated mesh ports and, in a
  cluster, their ``spec.clusterIP``). Nothing here is validated: the core must cope with anything.
* :class:`Settings` — the controller's flags that shape the topology and the config.
* :class:`ObjectError` — one problem with one object: the object is left out (or partly applied)
  and the error is reported; the rest of the mesh is still built.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Literal, Sequence

from lightmesh import wire

TrafficMode = Literal["http", "tcp", "udp"]
ListenMode = Literal["node", "shadow-ip"]

# Namespaces never meshed whatever the settings say (the mesh's own objects live in the mesh namespace).
ALWAYS_IGNORED_NAMESPACES = ("kube-system",)
ALWAYS_IGNORED_SERVICES = (("default", "kubernetes"),)

_SMI_KINDS = {
    "TrafficTarget": "traffic_targets",
    "HTTPRouteGroup": "http_route_groups",
    "TCPRoute": "tcp_routes",
    "UDPRoute": "udp_routes",
    "TrafficSplit": "traffic_splits",
}


_GW_KINDS = {"HTTPRoute": "mesh_http_routes", "GRPCRoute": "mesh_grpc_routes", "TCPRoute": "mesh_tcp_routes",
             "UDPRoute": "mesh_udp_routes"}


@dataclass(frozen=True)
class ClusterState:
    """Raw objects by kind. Any sequence of dicts works (lists from a cache, tuples in tests).

    SMI objects may be of any served version (access v1alpha1–3, specs v1alpha1–4, split
    v1alpha1–4); :mod:`topology` normalizes the differences. Objects of unrelated API groups with
    the same kind (e.g. Gateway API ``TCPRoute``) must not be put here. ``mesh_http_routes`` and
    ``mesh_grpc_routes``, ``mesh_tcp_routes``, ``mesh_udp_routes`` are Gateway API ``HTTPRoute`` (v1,
    v1beta1), ``GRPCRoute``, ``TCPRoute`` and ``UDPRoute`` (v1, v1alpha2) objects; only those with a
    Service parent are used.
    """

    services: Sequence[dict] = ()
    endpoint_slices: Sequence[dict] = ()
    pods: Sequence[dict] = ()
    traffic_targets: Sequence[dict] = ()
    http_route_groups: Sequence[dict] = ()
    tcp_routes: Sequence[dict] = ()
    udp_routes: Sequence[dict] = ()
    traffic_splits: Sequence[dict] = ()
    mesh_http_routes: Sequence[dict] = ()  # Gateway API HTTPRoutes (GAMMA: a Service parent)
    mesh_grpc_routes: Sequence[dict] = ()  # Gateway API GRPCRoutes (the same, for gRPC)
    mesh_tcp_routes: Sequence[dict] = ()  # Gateway API TCPRoutes (not SMI's ``tcp_routes``)
    mesh_udp_routes: Sequence[dict] = ()  # Gateway API UDPRoutes
    shadow_services: Sequence[dict] = ()

    @classmethod
    def from_objects(cls, objects: Iterable[dict], mesh_namespace: str = wire.DEFAULT_MESH_NAMESPACE
                     ) -> ClusterState:
        """Sort a flat list of objects (a manifest directory, a test fixture) into a state.

        Services in ``mesh_namespace`` labelled managed-by the controller are shadow Services;
        kinds the core does not use are dropped; SMI kinds only from ``*.smi-spec.io`` groups.
        """
        groups: dict[str, list[dict]] = {name: [] for name in cls.__dataclass_fields__}
        for obj in objects:
            if not isinstance(obj, dict):
                continue
            kind = obj.get("kind")
            if not isinstance(kind, str):
                continue
            api_version = str(obj.get("apiVersion") or "")
            meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
            if kind == "Service":
                labels = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
                shadow = (meta.get("namespace") == mesh_namespace
                          and labels.get(wire.LABEL_MANAGED_BY) == wire.MANAGED_BY_CONTROLLER)
                groups["shadow_services" if shadow else "services"].append(obj)
            elif kind == "EndpointSlice":
                groups["endpoint_slices"].append(obj)
            elif kind == "Pod":
                groups["pods"].append(obj)
            elif kind in _SMI_KINDS and ".smi-spec.io/" in api_version:
                groups[_SMI_KINDS[kind]].append(obj)
            elif kind in _GW_KINDS and api_version.startswith("gateway.networking.k8s.io/"):
                groups[_GW_KINDS[kind]].append(obj)
        return cls(**{name: tuple(items) for name, items in groups.items()})


# The settings that shape what a replica serves (the proxy config, the shadow Services, the DNS
# answers) and may differ between the replicas of a rollout: with leader election every replica uses
# the leader's (recorded on its Lease, see leader.py), so proxies polling any replica listen where the
# leader's shadow Services send traffic. Not among them: ``mesh_namespace`` (the Lease lives there: the
# same for every replica sharing it) and ``watch_namespaces``/``ignore_namespaces`` (they decide what
# each replica watches; a replica cannot serve objects it does not watch).
SHAPING_FIELDS = ("acl", "default_mode", "domains", "listen_mode", "http_port_base", "http_port_limit",
                  "tcp_port_base", "tcp_port_limit", "udp_port_base", "udp_port_limit")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_RECORD_TYPES = {
    "acl": lambda v: isinstance(v, bool),
    "default_mode": lambda v: isinstance(v, str),
    "listen_mode": lambda v: isinstance(v, str),
    "domains": lambda v: isinstance(v, list) and all(isinstance(d, str) for d in v),
    **{f"{proto}_port_{what}": _is_int for proto in ("http", "tcp", "udp") for what in ("base", "limit")},
}


@dataclass(frozen=True)
class Settings:
    """Controller settings that shape the topology and the proxy config.

    ``listen_mode``: ``node`` — proxies listen on ``::`` (dual stack) at the mesh ports (HTTP
    ports from ``http_port_base`` shared and routed by Host, one TCP/UDP port per service port;
    see ``ports.py``);
    ``shadow-ip`` — (local mode) proxies listen on each shadow Service's ClusterIP at the user
    Service's own ports, as kube-proxy would forward them.
    Namespaces ``kube-system`` and ``mesh_namespace`` and the Service ``default/kubernetes`` are
    always ignored; ``watch_namespaces`` empty means all.
    """

    mesh_namespace: str = wire.DEFAULT_MESH_NAMESPACE
    acl: bool = False
    default_mode: TrafficMode = "http"
    domains: tuple[str, ...] = wire.DEFAULT_DOMAINS
    watch_namespaces: tuple[str, ...] = ()
    ignore_namespaces: tuple[str, ...] = ()
    http_port_base: int = wire.HTTP_PORT_BASE
    http_port_limit: int = wire.DEFAULT_HTTP_PORT_LIMIT
    tcp_port_base: int = wire.TCP_PORT_BASE
    tcp_port_limit: int = wire.DEFAULT_TCP_PORT_LIMIT
    udp_port_base: int = wire.UDP_PORT_BASE
    udp_port_limit: int = wire.DEFAULT_UDP_PORT_LIMIT
    listen_mode: ListenMode = "node"

    def __post_init__(self) -> None:
        # Settings come from flags: a wrong one is the operator's error, raised at startup.
        if self.default_mode not in ("http", "tcp", "udp"):
            raise ValueError(f"default_mode must be http, tcp or udp, not {self.default_mode!r}")
        if self.listen_mode not in ("node", "shadow-ip"):
            raise ValueError(f"listen_mode must be node or shadow-ip, not {self.listen_mode!r}")
        for what in ("http", "tcp", "udp"):
            base, limit = getattr(self, f"{what}_port_base"), getattr(self, f"{what}_port_limit")
            if limit < 0 or not 1 <= base or base + max(limit, 1) - 1 > 65535:
                raise ValueError(f"{what} port range {base}+{limit} (--{what}-port-base/--{what}-port-limit) "
                                 f"is outside 1-65535")
        # HTTP and TCP mesh ports are both TCP listeners of the proxy: shared numbers would send one
        # service's traffic to the other's listener.
        http_end, tcp_end = self.http_port_base + self.http_port_limit, self.tcp_port_base + self.tcp_port_limit
        if self.http_port_limit and self.tcp_port_limit and self.http_port_base < tcp_end \
                and self.tcp_port_base < http_end:
            raise ValueError(f"http port range {self.http_port_base}-{http_end - 1} overlaps the tcp port range "
                             f"{self.tcp_port_base}-{tcp_end - 1} (--http-port-base, --tcp-port-base)")
        # tuples, so Settings stays hashable whatever the caller passed
        for name in ("domains", "watch_namespaces", "ignore_namespaces"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        # A namespace watched but never meshed is a mistake in the flags: say so at start rather than
        # serve a mesh without it and without a word.
        never = [n for n in self.watch_namespaces if n in ALWAYS_IGNORED_NAMESPACES or n == self.mesh_namespace]
        if never:
            raise ValueError(f"--watch-namespaces names {', '.join(never)}, whose Services are never meshed "
                             f"(kube-system and the mesh namespace {self.mesh_namespace!r} are always ignored)")
        both = [n for n in self.watch_namespaces if n in self.ignore_namespaces]
        if both:
            raise ValueError(f"--watch-namespaces and --ignore-namespaces both name {', '.join(both)}")
        object.__setattr__(self, "domains", normalise_domains(self.domains))

    def shaping_record(self) -> dict:
        """The fields of :data:`SHAPING_FIELDS` as JSON-able values (what a leader records on its Lease)."""
        return {name: list(value) if isinstance(value, tuple) else value
                for name in SHAPING_FIELDS for value in (getattr(self, name),)}

    def with_record(self, record: object) -> tuple[Settings, list[str]]:
        """These settings with a leader's recorded :data:`SHAPING_FIELDS` (a dict as
        :meth:`shaping_record` makes), and what was wrong with the record.

        A field the record lacks keeps this replica's value; a field this release does not know is
        skipped (a newer leader's; named in the problems). A record that is not a dict, has a field of
        the wrong type or makes invalid settings is not used at all: ``(self, [why])``. Never raises.
        """
        if not isinstance(record, dict):
            return self, [f"the record is a {type(record).__name__}, not an object"]
        problems = [f"unknown field {name!r} skipped" for name in sorted(map(str, record)) if name not in SHAPING_FIELDS]
        changes: dict = {}
        for name in SHAPING_FIELDS:
            if name not in record:
                continue
            value = record[name]
            check = _RECORD_TYPES[name]
            if not check(value):
                return self, [f"field {name!r} has an invalid value {value!r}"]
            changes[name] = tuple(value) if isinstance(value, list) else value
        try:
            return replace(self, **changes), problems
        except (ValueError, TypeError) as exc:
            return self, [f"invalid settings: {exc}"]

    def ignored_namespace(self, namespace: str) -> bool:
        if namespace in ALWAYS_IGNORED_NAMESPACES or namespace == self.mesh_namespace:
            return True
        if namespace in self.ignore_namespaces:
            return True
        return bool(self.watch_namespaces) and namespace not in self.watch_namespaces


_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def normalise_domains(domains: tuple[str, ...]) -> tuple[str, ...]:
    """Lowercase, without a trailing dot; a name that is not a DNS name is the operator's error.

    Router hosts are built as ``<svc>.<ns>.<domain>`` and compared with request hosts, so ``Mesh.``
    must become ``mesh`` here, and ``my mesh`` must stop the controller at start, not fail every
    round."""
    out: list[str] = []
    for raw in domains:
        name = raw.strip().rstrip(".").lower() if isinstance(raw, str) else raw
        if not isinstance(name, str) or not name or len(name) > 253 \
                or not all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
            raise ValueError(f"domains (--domains): {raw!r} is not a DNS name (letters, digits, '-' and '.')")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError("domains (--domains): at least one mesh domain is required")
    return tuple(out)


@dataclass(frozen=True, order=True)
class ObjectError:
    """One object left out or partly applied, and why. Sortable; ``to_dict()`` is JSON-able.

    ``field`` is a path into the object (``spec.rules[0].name``,
    ``metadata.annotations[mesh.traefik.io/retry-attempts]``); ``message`` says what is wrong and
    what the mesh did about it.
    """

    kind: str
    namespace: str
    name: str
    field: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    def __str__(self) -> str:
        where = f"{self.kind} {self.namespace}/{self.name}" if self.namespace else f"{self.kind} {self.name}"
        return f"{where} {self.field}: {self.message}"


def meta_of(obj: object) -> tuple[str, str]:
    """(namespace, name) of a raw object; empty strings when missing or malformed."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return "", ""
    ns, name = meta.get("namespace"), meta.get("name")
    return (ns if isinstance(ns, str) else "default" if ns is None else ""), (name if isinstance(name, str) else "")


__all__ = ["ClusterState", "Settings", "SHAPING_FIELDS", "ObjectError", "TrafficMode", "ListenMode", "meta_of",
           "ALWAYS_IGNORED_NAMESPACES", "ALWAYS_IGNORED_SERVICES"]
