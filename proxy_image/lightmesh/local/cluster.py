"""Manifests → the state a cluster would reach after applying them (pure).

What kubelet, the Deployment controller and the EndpointSlice controller would have done, for the
objects local mode can stand in for:

* every replica of a Deployment (and every bare Pod) becomes a Running, Ready Pod with its own
  loopback address from ``pod_network`` and a name as a cluster gives it
  (``<deployment>-<pod-template-hash>-<suffix>``; the hash and suffix are derived from the manifest,
  so names are stable across runs);
* every Service with a selector gets ready EndpointSlices for the Pods it selects, with named
  ``targetPort``s resolved per Pod; a Service without a selector keeps the EndpointSlices given in
  the manifests (that is how an outside backend is meshed);
* containers running an image that has a stand-in (:mod:`lightmesh.local.standins`) are listed
  with the address and port to serve.

Everything else (Namespaces, ServiceAccounts, SMI objects, ...) passes through unchanged — except
with a :class:`HighPorts` remapping: a user without ``CAP_NET_BIND_SERVICE`` cannot listen below
``ip_unprivileged_port_start`` (1024), so every Service and pod port below it is moved up by one
offset (80 → 8080), and every reference to such a port with it (``targetPort``, Gateway API
``parentRefs``/``backendRefs`` ports, SMI ``TCPRoute``/``UDPRoute`` ports, a TrafficTarget's
destination port). One offset for all objects keeps references consistent (a TrafficSplit's
backends are matched on the root's port number); EndpointSlices given for Services without a
selector point outside the local cluster and are left alone.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lightmesh.local.standins import DEFAULT_PORTS, image_kind

DEFAULT_POD_NETWORK = "127.2.0.0/16"
MESH_IMAGE = "lightmesh/lightmesh"  # MeshInstall's controller/proxy image: local mode runs its own processes
NODE_NAME = "local"
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # what Kubernetes uses for generated names


class ManifestError(ValueError):
    """A manifest local mode cannot use; the message names the file/object and the field."""


@dataclass(frozen=True)
class StandInSpec:
    kind: str  # http | tcp | udp
    pod: str  # namespace/name
    hostname: str
    address: str
    port: int
    name: str = ""  # traefik/whoami's WHOAMI_NAME (its --name): a "Name:" line in every answer


PRIVILEGED_PORT_LIMIT = 1024  # the kernel's default ip_unprivileged_port_start
HIGH_PORT_OFFSETS = tuple(range(8000, 60001, 1000))  # 8000 first: 80 → 8080, 443 → 8443, as people expect


@dataclass(frozen=True)
class HighPorts:
    """Ports below ``below`` are served at ``port + offset`` (see the module docstring)."""

    offset: int
    below: int = PRIVILEGED_PORT_LIMIT

    def __call__(self, port):
        if isinstance(port, str) and port.isdigit():
            return str(self(int(port)))
        if isinstance(port, int) and not isinstance(port, bool) and 0 < port < self.below:
            return port + self.offset
        return port


NO_REMAP = HighPorts(0, 0)


def high_ports_for(manifests: list[dict], below: int = PRIVILEGED_PORT_LIMIT) -> HighPorts:
    """The smallest offset that moves no port of a Service or pod onto another port of the same
    object (e.g. a Service with ports 80 and 8080 gets 9000: 80 → 9080)."""
    for offset in HIGH_PORT_OFFSETS:
        remap = HighPorts(offset, below)
        if offset + below <= 65536 and high_ports_fit(remap, manifests):
            return remap
    raise ManifestError(f"cannot move the ports below {below} to free high ports: every offset "
                        f"{HIGH_PORT_OFFSETS[0]}..{HIGH_PORT_OFFSETS[-1]} collides with a port in use")


def high_ports_fit(remap: HighPorts, manifests: list[dict]) -> bool:
    """No Service or pod of ``manifests`` gets two of its ports onto one under ``remap``."""
    port_sets = [_declared_ports(obj) for obj in manifests if obj.get("kind") in ("Service", "Pod", "Deployment")]
    return all(len({(proto, remap(p)) for proto, p in ports}) == len(ports) for ports in port_sets)


def _declared_ports(obj: dict) -> set[tuple[str, int]]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Service":
        return {(p.get("protocol", "TCP"), p["port"]) for p in spec.get("ports") or []
                if isinstance(p, dict) and isinstance(p.get("port"), int)}
    if obj.get("kind") == "Deployment":
        spec = ((spec.get("template") or {}).get("spec")) or {}
    return {(p.get("protocol", "TCP"), p["containerPort"]) for c in spec.get("containers") or []
            if isinstance(c, dict) for p in c.get("ports") or []
            if isinstance(p, dict) and isinstance(p.get("containerPort"), int)}


@dataclass
class LocalCluster:
    objects: list[dict] = field(default_factory=list)
    pods: list[dict] = field(default_factory=list)
    standins: list[StandInSpec] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    high_ports: HighPorts = NO_REMAP
    remapped: dict[int, int] = field(default_factory=dict)  # port below the limit → where it is served

    def pod(self, namespace: str, name: str) -> dict:
        for pod in self.pods:
            if pod["metadata"]["namespace"] == namespace and pod["metadata"]["name"] == name:
                return pod
        raise KeyError(f"{namespace}/{name}")

    def pods_of(self, namespace: str, service_account: str) -> list[dict]:
        return [p for p in self.pods if p["metadata"]["namespace"] == namespace
                and p["spec"].get("serviceAccountName", "default") == service_account]


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def load_manifests(path: str | Path, notes: list[str] | None = None,
                   origins: list[str] | None = None) -> list[dict]:
    """Every object in ``path`` (a YAML or JSON file, or a directory of them, recursively, sorted), the
    items of ``kind: ...List`` objects included. In a directory ``lightmesh render`` wrote, the
    subdirectories it wrote other clusters into are skipped: local mode runs the first cluster.

    An object declared twice (same API group, kind, namespace and name) is kept once, the later one —
    what ``kubectl apply`` of the same files leaves in a cluster — and a note naming both places is
    appended to ``notes``. ``origins`` receives, for each object returned, where it was declared
    (``FILE document N``), for ``synthesize`` to name in its errors.
    """
    from lightmesh.local.render import describe_identity, object_identity, rendered_cluster_dirs

    root = Path(path)
    other_clusters = set() if root.is_file() else set(rendered_cluster_dirs(root))
    files = [root] if root.is_file() else sorted(
        p for p in root.rglob("*") if p.suffix in MANIFEST_SUFFIXES and p.is_file()
        and p.relative_to(root).parts[0] not in other_clusters
        # hidden files and directories are not manifests (.lightmesh-shadows.json, .github/, .vscode/),
        # as the controller's --manifests skips them
        and not any(part.startswith(".") for part in p.relative_to(root).parts))
    found: list[tuple[dict, str]] = []  # (object, where it was declared)
    for file in files:
        for index, doc in enumerate(_documents(file)):
            if doc is None:
                continue
            where = f"{file} document {index + 1}"
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                raise ManifestError(f"{where}: a Kubernetes object needs apiVersion and kind")
            if str(doc["kind"]).endswith("List") and isinstance(doc.get("items"), list):
                for item_index, item in enumerate(doc["items"]):
                    if not isinstance(item, dict) or "kind" not in item or "apiVersion" not in item:
                        raise ManifestError(f"{where} item {item_index + 1}: a Kubernetes object needs apiVersion "
                                            "and kind")
                    found.append((item, f"{where} item {item_index + 1}"))
            else:
                found.append((doc, where))
    latest: dict[tuple, int] = {}
    for position, (obj, where) in enumerate(found):
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        if not isinstance(meta.get("name"), str) or not meta["name"]:
            continue  # refused later, with the object named (synthesize)
        identity = object_identity(str(obj["apiVersion"]), str(obj["kind"]), meta.get("namespace"), meta["name"])
        if identity in latest and notes is not None:
            notes.append(f"{describe_identity(identity)} is declared twice ({found[latest[identity]][1]}; {where}): "
                         "the later one is used, as kubectl apply would leave it")
        latest[identity] = position
    kept = set(latest.values())
    result = [(obj, where) for position, (obj, where) in enumerate(found)
              if position in kept or not isinstance((obj.get("metadata") or {}).get("name"), str)
              or not (obj.get("metadata") or {}).get("name")]
    if origins is not None:
        origins.extend(where for _, where in result)
    return [obj for obj, _ in result]


def _documents(file: Path) -> list:
    """The documents of one manifest file; a syntax error is one line: ``file:line: ...``."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{file}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if file.suffix == ".json":
        try:
            return [json.loads(text)] if text.strip() else []
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{file}:{exc.lineno}: not valid JSON: {exc.msg} (column {exc.colno})") from None
    try:
        return list(yaml.safe_load_all(text))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise ManifestError(f"{file}{line}: not valid YAML: {exc.problem or exc.context or 'syntax error'}"
                            f"{column}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"{file}: not valid YAML: {' '.join(str(exc).split())}") from None


def _hash(text: str, length: int) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return "".join(_SUFFIX_ALPHABET[b % len(_SUFFIX_ALPHABET)] for b in digest[:length])


def _key(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    return f"{obj.get('kind')} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def synthesize(manifests: list[dict], pod_network: str = DEFAULT_POD_NETWORK,
               high_ports: HighPorts = NO_REMAP, origins: list[str] | None = None) -> LocalCluster:
    """The cluster the manifests make: pods run from Deployments and Pods, EndpointSlices for
    Services. ``origins`` (from ``load_manifests``), where each object was declared, prefixes an
    error about that object."""
    cluster = LocalCluster(high_ports=high_ports)
    addresses = _PodAddresses(pod_network)
    given_slices: list[dict] = []
    services: list[dict] = []
    for index, obj in enumerate(manifests):
        try:
            _add_object(obj, cluster, addresses, given_slices, services)
        except ManifestError as exc:
            if origins is None or index >= len(origins) or not origins[index]:
                raise
            raise ManifestError(f"{origins[index]}: {exc}") from None
    for service in services:
        selector = (service.get("spec") or {}).get("selector")
        if selector:
            cluster.objects.extend(_endpoint_slices(service, cluster.pods))
        else:
            name = service["metadata"]["name"]
            ns = service["metadata"]["namespace"]
            cluster.objects.extend(s for s in given_slices if s["metadata"].get("namespace") == ns
                                   and (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == name)
    cluster.objects.extend(cluster.pods)
    return cluster


class _PodAddresses:
    """The pod network's addresses, handed out in order (none ending in .0 or .255)."""

    def __init__(self, network: str) -> None:
        self.network = network
        hosts = list(ipaddress.ip_network(network).hosts())
        self._free = iter([str(ip) for ip in hosts if not str(ip).endswith((".0", ".255"))])
        self.left = sum(1 for ip in hosts if not str(ip).endswith((".0", ".255")))

    def take(self, owner: str) -> str:
        address = next(self._free, None)
        if address is None:
            raise ManifestError(f"{owner}: no address left in local mode's pod network {self.network}")
        self.left -= 1
        return address


def _add_object(obj: dict, cluster: LocalCluster, addresses: _PodAddresses, given_slices: list[dict],
                services: list[dict]) -> None:
    obj = copy.deepcopy(obj)
    kind = obj.get("kind")
    meta = obj.setdefault("metadata", {})
    if not meta.get("name"):
        raise ManifestError(f"{_key(obj)}: metadata.name is required")
    if kind not in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
        meta.setdefault("namespace", "default")
    if kind == "Deployment":
        cluster.objects.append(obj)
        for pod in _deployment_pods(obj, addresses.left, addresses.network):
            cluster.pods.append(_run_pod(pod, addresses.take(_key(obj)), cluster))
    elif kind == "Pod":
        cluster.pods.append(_run_pod(obj, addresses.take(_key(obj)), cluster))
    elif kind == "EndpointSlice":
        given_slices.append(obj)
    elif kind == "Service":
        _remap_service(obj, cluster)
        services.append(obj)
        cluster.objects.append(obj)
    else:
        _remap_references(obj, cluster)
        cluster.objects.append(obj)


def _deployment_pods(deployment: dict, room: int = 1 << 30, network: str = DEFAULT_POD_NETWORK) -> list[dict]:
    meta = deployment["metadata"]
    spec = deployment.get("spec") or {}
    template = spec.get("template")
    if not isinstance(template, dict):
        raise ManifestError(f"{_key(deployment)}: spec.template is required")
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise ManifestError(f"{_key(deployment)}: spec.replicas must be a whole number >= 0, got {replicas!r}")
    if replicas > room:  # checked before any pod is made: a typo such as 10000000 fails at once
        raise ManifestError(f"{_key(deployment)}: spec.replicas {replicas} is more pods than local mode's pod "
                            f"network {network} has addresses left ({room})")
    template_hash = _hash(yaml.safe_dump(template, sort_keys=True), 10)
    pods = []
    for index in range(replicas):
        pod_meta = copy.deepcopy(template.get("metadata") or {})
        labels = dict(pod_meta.get("labels") or {})
        labels["pod-template-hash"] = template_hash
        suffix = _hash("/".join((meta["namespace"], meta["name"], str(index))), 5)
        pod_meta.update(
            name=f"{meta['name']}-{template_hash}-{suffix}",
            namespace=meta["namespace"], labels=labels,
            ownerReferences=[{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                              "name": f"{meta['name']}-{template_hash}", "controller": True}])
        pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta,
                     "spec": copy.deepcopy(template.get("spec") or {})})
    return pods


def _remapped(cluster: LocalCluster, port):
    new = cluster.high_ports(port)
    if new != port:
        cluster.remapped[int(port)] = int(new)
    return new


def _remap_service(service: dict, cluster: LocalCluster) -> None:
    """Service ports (where the proxy listens) and, with a selector, targetPorts (pod ports)."""
    if cluster.high_ports is NO_REMAP:
        return
    spec = service.get("spec") or {}
    has_selector = bool(spec.get("selector"))
    for port in spec.get("ports") or []:
        if not isinstance(port, dict):
            continue
        if has_selector and "targetPort" not in port and isinstance(port.get("port"), int):
            port["targetPort"] = port["port"]  # the default follows the Service port: keep it on the pod's port
        if "port" in port:
            port["port"] = _remapped(cluster, port["port"])
        if has_selector and "targetPort" in port:
            port["targetPort"] = _remapped(cluster, port["targetPort"])


def _remap_references(obj: dict, cluster: LocalCluster) -> None:
    """Ports other objects use to name a Service port (see the module docstring)."""
    if cluster.high_ports is NO_REMAP:
        return
    group = str(obj.get("apiVersion", "")).split("/")[0]
    # access v1alpha1 TrafficTargets have no spec: destination and sources are top-level fields
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else obj if group == "access.smi-spec.io" else None
    if spec is None:
        return
    if group == "gateway.networking.k8s.io":
        # parentRefs default to kind Gateway, backendRefs to kind Service: only Service ports moved
        refs = [r for r in spec.get("parentRefs") or [] if isinstance(r, dict) and r.get("kind") == "Service"]
        for rule in spec.get("rules") or []:
            refs += [r for r in (rule.get("backendRefs") or []) if isinstance(r, dict)
                     and r.get("kind", "Service") == "Service"] if isinstance(rule, dict) else []
        for ref in refs:
            if "port" in ref:
                ref["port"] = _remapped(cluster, ref["port"])
    elif group == "specs.smi-spec.io" and isinstance(spec.get("matches"), dict):
        matches = spec["matches"]
        if isinstance(matches.get("ports"), list):
            matches["ports"] = [_remapped(cluster, p) for p in matches["ports"]]
    elif group == "access.smi-spec.io":
        destination = spec.get("destination")
        if isinstance(destination, dict) and "port" in destination:
            destination["port"] = _remapped(cluster, destination["port"])


def _run_pod(pod: dict, address: str, cluster: LocalCluster) -> dict:
    pod = copy.deepcopy(pod)
    spec = pod.setdefault("spec", {})
    spec.setdefault("serviceAccountName", spec.get("serviceAccount", "default"))
    spec["nodeName"] = NODE_NAME
    pod["status"] = {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}], "hostIP": "127.0.0.1",
                     "conditions": [{"type": "Ready", "status": "True"}]}
    meta = pod["metadata"]
    for container in spec.get("containers") or []:
        kind = image_kind(str(container.get("image", "")))
        if kind is None:
            if MESH_IMAGE in str(container.get("image", "")):
                note = ("the mesh's own pods (image lightmesh/lightmesh) get addresses but do not run: "
                        "local mode runs its own controller, mesh DNS and proxy")
                if note not in cluster.warnings:
                    cluster.warnings.append(note)
            elif container.get("image"):
                cluster.warnings.append(
                    f"Pod {meta['namespace']}/{meta['name']}: no stand-in for image {container['image']!r}; "
                    "the pod gets an address but serves nothing")
            continue
        port = _container_port(container, kind, f"Pod {meta['namespace']}/{meta['name']}")
        env = {e.get("name"): e.get("value") for e in container.get("env") or [] if isinstance(e, dict)}
        name = env.get("WHOAMI_NAME")
        cluster.standins.append(StandInSpec(kind, f"{meta['namespace']}/{meta['name']}", meta["name"], address,
                                            _remapped(cluster, port), name if isinstance(name, str) else ""))
    for container in spec.get("containers") or []:  # after the stand-ins read them: the pod's own view
        for port in (container.get("ports") or []) if isinstance(container, dict) else []:
            if isinstance(port, dict) and "containerPort" in port:
                port["containerPort"] = _remapped(cluster, port["containerPort"])
    return pod


def _container_port(container: dict, kind: str, pod: str = "") -> int:
    args = [str(a) for a in (container.get("args") or [])]
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--port=") else (
            args[i + 1] if arg == "--port" and i + 1 < len(args) else None)
        if value is not None:
            if not value.isdigit() or not 0 < int(value) < 65536:
                raise ManifestError(f"{pod} container {container.get('name', '?')!r}: args --port {value!r} "
                                    "is not a port number (1-65535)")
            return int(value)
    protocol = "UDP" if kind == "udp" else "TCP"
    for port in container.get("ports") or []:
        if port.get("protocol", "TCP") == protocol and isinstance(port.get("containerPort"), int):
            return port["containerPort"]
    return DEFAULT_PORTS[kind]


def _selects(selector: dict, pod: dict, namespace: str) -> bool:
    labels = pod["metadata"].get("labels") or {}
    return pod["metadata"]["namespace"] == namespace and all(labels.get(k) == v for k, v in selector.items())


def _resolve_target_port(service_port: dict, pod: dict) -> int | None:
    target = service_port.get("targetPort", service_port.get("port"))
    if isinstance(target, int):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    protocol = service_port.get("protocol", "TCP")
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target and port.get("protocol", "TCP") == protocol:
                return port.get("containerPort")
    return None


def _endpoint_slices(service: dict, pods: list[dict]) -> list[dict]:
    meta = service["metadata"]
    spec = service.get("spec") or {}
    selected = [p for p in pods if _selects(spec["selector"], p, meta["namespace"])]
    # One slice per distinct port resolution: pods that resolve a named targetPort differently
    # cannot share a slice (the EndpointSlice controller splits them the same way).
    groups: dict[tuple, list[dict]] = {}
    for pod in selected:
        resolved = tuple((p.get("name", ""), _resolve_target_port(p, pod), p.get("protocol", "TCP"))
                         for p in spec.get("ports") or [])
        usable = tuple(r for r in resolved if r[1] is not None)
        groups.setdefault(usable, []).append(pod)
    slices = []
    for ports, members in sorted(groups.items(), key=lambda item: str(item[0])):
        slices.append({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{meta['name']}-{_hash(meta['name'] + str(ports), 5)}",
                         "namespace": meta["namespace"],
                         "labels": {"kubernetes.io/service-name": meta["name"],
                                    "endpointslice.kubernetes.io/managed-by": "lightmesh-local"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [p["status"]["podIP"]],
                           "conditions": {"ready": True, "serving": True, "terminating": False},
                           "nodeName": NODE_NAME,
                           "targetRef": {"kind": "Pod", "name": p["metadata"]["name"],
                                         "namespace": meta["namespace"]}} for p in members],
            "ports": [{"name": name, "port": port, "protocol": protocol} for name, port, protocol in ports],
        })
    return slices
