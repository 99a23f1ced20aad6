"""The one call the controller shell makes: cluster state → everything the mesh needs (pure).

``build(state, settings, version, previous_ports)`` runs topology → mesh ports → desired shadow
Services → proxy config and returns them with every object error, sorted. It never raises on bad
objects (they are reported and left out); a :class:`lightmesh.config.ConfigError` escaping from
here would be a bug in this package.

The shell keeps ``result.ports`` and passes it back as ``previous_ports`` next time, so mesh ports
stay put between rebuilds even before the shadow Services are written back; at start it
passes ``None`` and the ports are recovered from ``state.shadow_services``.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from lightmesh.config import ConfigAssembler, ProxyConfig
from lightmesh.controller.model import ClusterState, ObjectError, Settings
from lightmesh.controller.ports import PortTable, allocate_ports
from lightmesh.controller.provider import ProviderCache, build_config_with_errors
from lightmesh.controller.shadow import desired_shadow_services, shadow_index, shadow_name
from lightmesh.controller.topology import Topology, TopologyCache, build_topology


@dataclass(frozen=True)
class BuildResult:
    topology: Topology
    ports: PortTable
    shadow_services: list[dict]  # desired shadow Services (mesh namespace), sorted by name
    config: ProxyConfig
    errors: list[ObjectError]  # topology + ports + config errors, sorted, no duplicates

    def topology_json(self) -> dict:
        """What ``GET /api/topology/current`` serves: per Service its mesh (shadow) name, hosts,
        ports with mesh ports and endpoint counts; TrafficTargets, TrafficSplits and Gateway API
        HTTPRoute rules; Services left out and why; every error with its object and reason.
        JSON-able, deterministic."""
        t = self.topology
        shadows = shadow_index(self.shadow_services)
        services = []
        for svc in t.services.values():
            shadow = shadows.get(svc.key)
            services.append({
                "namespace": svc.namespace,
                "name": svc.name,
                "shadow_service": shadow_name(svc.namespace, svc.name) if shadow else None,
                "traffic_type": svc.traffic_type.value,
                "scheme": svc.mesh.scheme.value,
                "annotations": dict(sorted(svc.mesh.sources.items())),
                "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol, "target_port": p.target_port,
                           "mesh_port": self.ports.mesh_port(svc.key, p.port, svc.traffic_type),
                           "endpoints": len(p.endpoints)} for p in svc.ports],
                "traffic_targets": [st.target.key for st in t.service_targets.get(svc.key, ())],
                "traffic_split": t.splits[svc.key].key if svc.key in t.splits else None,
                "http_routes": sorted({r.route for r in t.mesh_routes.get(svc.key, ())}),
            })
        return {
            "config_version": self.config.version,
            "config_hash": self.config.hash,
            "services": services,
            "excluded_services": [{"service": k, "reason": v} for k, v in t.excluded.items()],
            "traffic_targets": [{"namespace": tt.namespace, "name": tt.name, "destination": tt.destination,
                                 "sources": list(tt.sources), "source_pods": len(tt.source_ips),
                                 "http_matches": len(tt.http_matches), "tcp": tt.tcp_ports is not None,
                                 "udp": tt.udp_ports is not None} for tt in t.traffic_targets],
            "traffic_splits": [{"namespace": s.namespace, "name": s.name, "root": s.root,
                                "backends": [{"service": b.service, "weight": b.weight} for b in s.backends]}
                               for s in t.splits.values()],
            "http_route_rules": [{"route": r.route, "kind": "GRPCRoute" if r.grpc else "HTTPRoute",
                                  "rule": r.index, "parent": parent, "port": r.port,
                                  "matches": len(r.matches), "timeout_seconds": r.timeout_seconds,
                                  "backends": [{"service": b.service, "port": b.port, "weight": b.weight}
                                               for b in r.backends if b.service]}
                                 for parent, rules in t.mesh_routes.items() for r in rules],
            "errors": [e.to_dict() for e in self.errors],
        }


def build(state: ClusterState, settings: Settings, version: int,
          previous_ports: PortTable | None = None, assembler: ConfigAssembler | None = None,
          topology_cache: TopologyCache | None = None, provider_cache: ProviderCache | None = None) -> BuildResult:
    """Topology, mesh ports, desired shadow Services and the proxy config ``version`` for ``state``.

    ``assembler``, ``topology_cache``, ``provider_cache``: the shell keeps them across builds, so what did not change is
    not computed again (the same result, faster when little changed)."""
    # A build allocates hundreds of thousands of small objects and frees them by reference count;
    # the cyclic GC would rescan the (large, live) caches many times meanwhile: ~30% of the time
    # at 5,000 Services. Pause it for the duration; it runs again right after.
    paused = gc.isenabled()
    gc.disable()
    try:
        topology = build_topology(state, settings, topology_cache)
        ports = allocate_ports(topology, state.shadow_services, settings, previous_ports)
        shadows = desired_shadow_services(topology, ports, settings, state.shadow_services)
        config, config_errors = build_config_with_errors(topology, ports, state.shadow_services, settings, version,
                                                         assembler, provider_cache)
        errors = sorted(set(topology.errors) | set(ports.errors) | set(config_errors))
    finally:
        if paused:
            gc.enable()
    return BuildResult(topology, ports, shadows, config, errors)
