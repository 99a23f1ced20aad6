"""Mesh ports: which proxy port serves which Service port (pure, deterministic, stable).

This module owns the port plan the shadow Services (``targetPort``) and the proxy listeners share:

* HTTP: all HTTP Services share the ports ``http_port_base`` .. ``http_port_base + http_port_limit - 1``
  and are told apart by Host, which ignores the port: a Service's mesh port must mean that one port
  of that Service for as long as kube-proxy may send to it. So assignments are stable, per Service:
  a port keeps its mesh port while the Service keeps that port number and stays HTTP, wherever it
  moves in the port list (claims from the existing shadow Services first, then the previous table,
  as for TCP/UDP below); a new port takes the lowest mesh port free *for that Service* (other
  Services' use of it does not matter). A mesh port of a port the Service no longer has is free for
  its other ports only once neither its shadow Service nor the previous table maps a port to it:
  until the shadow is patched, kube-proxy on some nodes still sends the old port's clients there,
  and they would reach the new port's pods with a 200. No free mesh port
  left for the Service → that port is not meshed and an :class:`ObjectError` names it (http port
  limit). A fresh Service gets ``http_port_base + i`` for its i-th meshed port. A Service left out
  for bad annotations keeps its claims.
* TCP / UDP: one mesh port per Service port, mesh-wide, from ``tcp_port_base`` (``udp_port_base``)
  up to ``limit`` ports. Stable: an assignment recorded in an existing shadow Service (its port's
  ``targetPort``) or else in the previous table is kept while the Service keeps that port and traffic
  type. The shadow Services come first: the leader writes them and every replica reads them, so all
  replicas agree on the ports kube-proxy actually sends to, whatever order each saw events in; the
  previous table only bridges the moment between an allocation and its shadow's write;
  new ports take the lowest free port, in sorted (namespace, name, port) order. A Service that is
  gone (or changed its traffic type or port) frees its ports, but only once no shadow Service
  targets them any more: until its shadow is deleted or patched (and an orphan whose delete fails
  stays), kube-proxy still sends that Service's clients to the port, so giving it to another
  Service would hand them its traffic; nor does a port the Service no longer has go to its new
  port while the shadow still targets it (or the previous table still gives it, for a shadow
  written but not seen yet) (the old port's clients would reach the new port's pods),
  unless no other port is free: then the Service whose shadow alone targets it takes it back, the
  lesser harm than leaving the port unmeshed. A Service left out for bad annotations keeps its
  reservations, so fixing the annotation brings it back on the same ports. Exhaustion → an error
  for that Service only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

from lightmesh import wire
from lightmesh.annotations import TrafficType
from lightmesh.controller.model import ObjectError, Settings
from lightmesh.controller.topology import Topology

PortKey = tuple[str, int]  # ("ns/name", service port)


@dataclass(frozen=True)
class PortTable:
    """(Service key, Service port number) → mesh port, by traffic type."""

    http: Mapping[PortKey, int] = field(default_factory=dict)
    tcp: Mapping[PortKey, int] = field(default_factory=dict)
    udp: Mapping[PortKey, int] = field(default_factory=dict)
    errors: tuple[ObjectError, ...] = ()

    def mesh_port(self, service_key: str, port: int, traffic_type: TrafficType | str) -> int | None:
        table = {"http": self.http, "tcp": self.tcp, "udp": self.udp}[TrafficType(traffic_type).value]
        return table.get((service_key, port))

    def to_dict(self) -> dict:
        return {kind: [{"service": k[0], "port": k[1], "mesh_port": v} for k, v in sorted(table.items())]
                for kind, table in (("http", self.http), ("tcp", self.tcp), ("udp", self.udp))}


def _labels_key(svc: object) -> str | None:
    meta = svc.get("metadata") if isinstance(svc, dict) else None
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict):
        return None
    name, ns = labels.get(wire.LABEL_SHADOW_SERVICE_NAME), labels.get(wire.LABEL_SHADOW_SERVICE_NAMESPACE)
    return f"{ns}/{name}" if isinstance(name, str) and isinstance(ns, str) and name and ns else None


def recovered_claims(shadow_services: Sequence[dict]) -> list[tuple[str, str, int, int]]:
    """(protocol, service key, service port, mesh port) for every port of every shadow Service."""
    claims = []
    for svc in shadow_services or ():
        key = _labels_key(svc)
        if key is None:
            continue
        spec = svc.get("spec") if isinstance(svc.get("spec"), dict) else {}
        for p in spec.get("ports") if isinstance(spec.get("ports"), list) else []:
            if not isinstance(p, dict):
                continue
            port, target = p.get("port"), p.get("targetPort")
            if isinstance(port, int) and isinstance(target, int) and not isinstance(target, bool):
                claims.append((str(p.get("protocol", "TCP")), key, port, target))
    return sorted(claims)


def targeted_ports(shadow_services: Sequence[dict]) -> dict[str, dict[int, set[str | None]]]:
    """Protocol → every ``targetPort`` some shadow Service has → the Services whose shadows do
    (their ``ns/name``; None for a shadow whose labels are unreadable)."""
    out: dict[str, dict[int, set[str | None]]] = {}
    for svc in shadow_services or ():
        spec = svc.get("spec") if isinstance(svc, dict) and isinstance(svc.get("spec"), dict) else {}
        owner = _labels_key(svc) if isinstance(svc, dict) else None
        for p in spec.get("ports") if isinstance(spec.get("ports"), list) else []:
            target = p.get("targetPort") if isinstance(p, dict) else None
            if isinstance(target, int) and not isinstance(target, bool):
                out.setdefault(str(p.get("protocol", "TCP")), {}).setdefault(target, set()).add(owner)
    return out


def _allocate_http(topology: Topology, recovered: list[tuple[str, str, int, int]], settings: Settings,
                   previous: PortTable | None, errors: list[ObjectError]) -> dict[PortKey, int]:
    """HTTP mesh ports, per Service (see the module docstring)."""
    base, limit = settings.http_port_base, settings.http_port_limit
    in_range = range(base, base + limit)
    # Per Service: its claims, the shadow Services' first (what kube-proxy routes by), then the
    # previous table's (allocations whose shadow write is still on its way).
    shadow_claims: dict[str, list[tuple[int, int]]] = {}
    previous_claims: dict[str, list[tuple[int, int]]] = {}
    for proto, key, port, mesh in recovered:
        if proto == "TCP" and mesh in in_range:
            shadow_claims.setdefault(key, []).append((port, mesh))
    if previous is not None:
        for (key, port), mesh in sorted(previous.http.items()):
            if mesh in in_range:
                previous_claims.setdefault(key, []).append((port, mesh))
    table: dict[PortKey, int] = {}
    for key in sorted(topology.excluded):  # left out for bad annotations: keeps its reservations
        taken: set[int] = set()
        for port, mesh in shadow_claims.get(key, []) + previous_claims.get(key, []):
            if (key, port) not in table and mesh not in taken:
                table[(key, port)] = mesh
                taken.add(mesh)
    for svc in topology.services.values():
        if svc.traffic_type is not TrafficType.HTTP:
            continue
        wanted = {p.port for p in svc.ports}
        claims = shadow_claims.get(svc.key, []) + previous_claims.get(svc.key, [])
        mine: dict[int, int] = {}
        taken = set()
        for port, mesh in claims:
            if port in wanted and port not in mine and mesh not in taken:
                mine[port] = mesh
                taken.add(mesh)
        # Not free for a new port of this Service: a mesh port its shadow still maps some port to,
        # or the previous table a port it no longer has (its shadow may be written with it already):
        # kube-proxy may still send that port's clients there (see the module docstring).
        held = taken | {mesh for _, mesh in shadow_claims.get(svc.key, ())}
        held.update(mesh for port, mesh in previous_claims.get(svc.key, ()) if port not in wanted)
        free = (mesh for mesh in in_range if mesh not in held)
        blocked: list = []  # ports that found no mesh port free
        assigned = 0
        for p in svc.ports:
            mesh = mine.get(p.port)
            if mesh is None:
                mesh = next(free, None)
            if mesh is None:
                blocked.append(p)
                continue
            table[(svc.key, p.port)] = mesh
            assigned += 1
        if blocked and not assigned:
            # Every port of the Service waits for a held mesh port (all replaced in one edit, at the
            # limit): unmeshed, its shadow would be deleted and made again with a new ClusterIP, and
            # its mesh name would not resolve meanwhile. The held ports are given then, as before
            # this stability rule: the lesser harm.
            spare = (mesh for mesh in in_range if mesh not in taken)
            for p in list(blocked):
                mesh = next(spare, None)
                if mesh is not None:
                    table[(svc.key, p.port)] = mesh
                    blocked.remove(p)
        # The last of the ports left out could never fit (more ports than the limit); the others
        # only wait for mesh ports their shadow still routes.
        never = max(0, assigned + len(blocked) - limit)
        for n, p in enumerate(blocked):
            waiting = n < len(blocked) - never
            if waiting:
                why = (f"port {p.port}: the {limit} HTTP mesh ports of this service (http port limit) are in "
                       "use, some by ports it no longer has that its shadow Service still routes to until it "
                       "is updated; that port is not meshed for now")
            elif p.index >= limit:
                why = (f"port {p.port} is HTTP port #{p.index + 1} of this service but the mesh serves "
                       f"{limit} per service (http port limit); that port is not meshed")
            else:  # over the limit, and the ports meshed are those that were first
                why = (f"port {p.port}: this service has {len(wanted)} HTTP ports but the mesh serves {limit} per "
                       "service (http port limit); the ones meshed keep their mesh ports, so this one is not meshed")
            errors.append(ObjectError("Service", svc.namespace, svc.name, f"spec.ports[port={p.port}]", why))
    return dict(sorted(table.items()))


def allocate_ports(topology: Topology, shadow_services: Sequence[dict], settings: Settings,
                   previous: PortTable | None = None) -> PortTable:
    """Plan every mesh port; see the module docstring for the rules."""
    errors: list[ObjectError] = []
    recovered = recovered_claims(shadow_services)
    http = _allocate_http(topology, recovered, settings, previous, errors)
    targeted = targeted_ports(shadow_services)
    tables = {}
    for kind, protocol in ((TrafficType.TCP, "TCP"), (TrafficType.UDP, "UDP")):
        base = getattr(settings, f"{kind.value}_port_base")
        limit = getattr(settings, f"{kind.value}_port_limit")
        in_range = range(base, base + limit)
        wanted: list[PortKey] = [(svc.key, p.port) for svc in topology.services.values()
                                 if svc.traffic_type is kind for p in svc.ports]
        wanted_set = set(wanted)
        # Claims: the shadow Services first (what kube-proxy routes by, the same for every replica),
        # then the previous table (allocations whose shadow is not written yet).
        claims: list[tuple[PortKey, int]] = [((key, port), mesh) for proto, key, port, mesh in recovered
                                             if proto == protocol]
        if previous is not None:
            claims += sorted(getattr(previous, kind.value).items())
        table: dict[PortKey, int] = {}
        taken: set[int] = set()
        for key, mesh in claims:
            keep = key in wanted_set or key[0] in topology.excluded
            if keep and key not in table and mesh in in_range and mesh not in taken:
                table[key] = mesh
                taken.add(mesh)
        # A port a shadow still sends to is not free (see the module docstring). To the Service whose
        # shadow alone still targets it, it is given only when no other port is free (the lesser harm
        # than leaving the port unmeshed).
        targets = targeted.get(protocol, {})
        # Nor is a port the previous table gave a port no longer kept: its shadow may be written with
        # it already, and not yet seen here (the next round sees the shadow, which then holds it).
        previous_owners: dict[int, set[str]] = {}
        if previous is not None:
            for (svc_key, _), mesh in getattr(previous, kind.value).items():
                if mesh in in_range and mesh not in taken:
                    previous_owners.setdefault(mesh, set()).add(svc_key)
        # "Its own" only to a Service that alone may have clients there: by the cached shadows and
        # by the previous table both (a stale cache may show another Service's former use of it).
        own: dict[str, list[int]] = {}
        for port in sorted(set(targets) | set(previous_owners)):
            if port not in in_range or port in taken:
                continue
            owners = targets.get(port, set()) | previous_owners.get(port, set())
            if len(owners) == 1:
                (owner,) = owners
                if owner is not None:
                    own.setdefault(owner, []).append(port)
        reserved = taken | set(targets) | set(previous_owners)
        free = (port for port in in_range if port not in reserved)
        for key in wanted:
            if key in table:
                continue
            mesh = next(free, None)
            if mesh is None:
                mine = own.get(key[0])
                mesh = mine.pop(0) if mine else None
            if mesh is None:
                ns, name = key[0].split("/", 1)
                errors.append(ObjectError(
                    "Service", ns, name, f"spec.ports[port={key[1]}]",
                    f"no free {kind.value.upper()} mesh port left ({limit} in use mesh-wide, "
                    f"{kind.value} port limit); port {key[1]} is not meshed"))
                continue
            table[key] = mesh
        tables[kind.value] = dict(sorted(table.items()))
    return PortTable(http, tables["tcp"], tables["udp"], tuple(sorted(errors)))
