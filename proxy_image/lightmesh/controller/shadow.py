"""Shadow Services: the ClusterIP each meshed Service gets in the mesh namespace (pure).

This module owns their names and their desired shape; the shell's writer applies them.

* Name: :func:`shadow_name` — ``lm-<name, trimmed>-<10 hex of sha256("ns/name")>``, a DNS-1035 label
  of at most 63 characters whatever the lengths of the Service's name and namespace (Traefik Mesh's
  ``<meshNs>-<svc>-6d61657368-<ns>`` failed past 63, upstream #746). The labels
  ``lightmesh.io/service-name`` / ``-namespace`` map a shadow Service back to its Service.
* Shape: type ClusterIP, selector = the proxy pods, ``internalTrafficPolicy: Local`` (the proxy on
  the client's own node: one hop, the client's source address preserved), ``ipFamilyPolicy:
  PreferDualStack`` (an IPv4 and an IPv6 ClusterIP in a dual-stack cluster), one port per meshed user
  port: ``port`` = the user's port, ``targetPort`` = the mesh port, same protocol.
* A Service left out for bad annotations keeps its existing shadow Service unchanged (same ClusterIP
  once fixed); a Service with no meshed port gets none (a Service needs at least one port).
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Sequence

from lightmesh import wire
from lightmesh.controller.model import Settings
from lightmesh.controller.ports import PortTable, _labels_key
from lightmesh.controller.topology import Topology

PREFIX = "lm-"
_HASH_CHARS = 10
_MAX_NAME_PART = 63 - len(PREFIX) - 1 - _HASH_CHARS - 10  # leaves room; names stay well under 63


@functools.lru_cache(maxsize=1 << 16)  # pure; asked for every Service on every rebuild
def shadow_name(namespace: str, name: str) -> str:
    """``lm-whoami-1a2b3c4d5e``: ≤ 63 chars, starts with a letter, ends with a letter or digit."""
    digest = hashlib.sha256(f"{namespace}/{name}".encode()).hexdigest()[:_HASH_CHARS]
    part = re.sub(r"[^a-z0-9-]+", "-", name.lower())[:_MAX_NAME_PART].strip("-")
    return f"{PREFIX}{part}-{digest}" if part else f"{PREFIX}{digest}"


def _shadow(namespace: str, name: str, ports: list[dict], settings: Settings) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": shadow_name(namespace, name),
            "namespace": settings.mesh_namespace,
            "labels": {wire.LABEL_SHADOW_SERVICE_NAME: name, wire.LABEL_SHADOW_SERVICE_NAMESPACE: namespace,
                       wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER},
        },
        "spec": {
            "type": "ClusterIP",
            "selector": dict(wire.PROXY_POD_LABELS),
            "internalTrafficPolicy": "Local",
            # Both families where the cluster has both (the proxies listen on [::]); a single-stack
            # cluster gives one, and keeps this value, so the writer sees no difference to patch.
            "ipFamilyPolicy": "PreferDualStack",
            "ports": ports,
        },
    }


def desired_shadow_services(topology: Topology, ports: PortTable, settings: Settings,
                            existing: Sequence[dict] = ()) -> list[dict]:
    """Every shadow Service the mesh needs, sorted by name. ``existing``: the shadow Services in the
    cluster, used only to keep those of Services left out for bad annotations."""
    out = []
    for svc in topology.services.values():
        spec_ports = []
        for p in svc.ports:
            mesh = ports.mesh_port(svc.key, p.port, svc.traffic_type)
            if mesh is None:
                continue
            entry = {"name": p.name, "port": p.port, "protocol": p.protocol, "targetPort": mesh}
            if not p.name:
                del entry["name"]
            spec_ports.append(entry)
        if spec_ports:
            out.append(_shadow(svc.namespace, svc.name, spec_ports, settings))
    if topology.excluded:
        for old in existing or ():
            key = _labels_key(old)
            if key in topology.excluded:
                ns, name = key.split("/", 1)
                spec = old.get("spec") if isinstance(old.get("spec"), dict) else {}
                ports_ = spec.get("ports") if isinstance(spec.get("ports"), list) else []
                kept = [{k: v for k, v in p.items() if k in ("name", "port", "protocol", "targetPort")}
                        for p in ports_ if _sane_port(p)]
                kept = list({(p["port"], p.get("protocol", "TCP")): p for p in reversed(kept)}.values())[::-1]
                if kept:
                    shadow = _shadow(ns, name, kept, settings)
                    old_name = (old.get("metadata") or {}).get("name")
                    if isinstance(old_name, str) and old_name:
                        shadow["metadata"]["name"] = old_name  # unchanged, whatever named it
                    out.append(shadow)
    return sorted(out, key=lambda s: s["metadata"]["name"])


def _sane_port(p: object) -> bool:
    """A port of an existing shadow Service worth writing back unchanged."""
    return (isinstance(p, dict) and all(type(p.get(k)) is int and 1 <= p[k] <= 65535 for k in ("port", "targetPort"))
            and p.get("protocol", "TCP") in ("TCP", "UDP") and isinstance(p.get("name", ""), str))


def shadow_index(shadow_services: Sequence[dict]) -> dict[str, dict]:
    """Existing shadow Services by the "ns/name" of the Service they shadow (labels, not names)."""
    out: dict[str, dict] = {}
    for svc in shadow_services or ():
        key = _labels_key(svc)
        if key is not None:
            out.setdefault(key, svc)
    return out
