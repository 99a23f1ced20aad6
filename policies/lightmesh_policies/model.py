"""What a stack declares, read into plain mesh terms (pure; no Pulumi engine needed).

The policy engine hands every rule the resources of a stack as ``(type token, props)`` pairs, the
props being the Kubernetes object in the API's camelCase shape. This module owns turning those into
the few things the Lightmesh rules reason about:

* **Services** (created ``Service`` objects and ``ServicePatch`` annotations of existing ones, merged
  per namespace/name) with their mesh annotations and selector;
* **workloads** (Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob, Pod) with their pod
  labels and ServiceAccount — the bridge from a Service to the identity SMI access control uses;
* **SMI objects** of every version the controller accepts (access v1alpha1–3, specs v1alpha1–4,
  split v1alpha1–4), normalised (v1alpha1 keeps its fields at the top level, later versions under
  ``spec``; v1alpha1 TrafficTarget says ``specs`` where later versions say ``rules``);
* **Gateway API mesh routes** (GAMMA: ``HTTPRoute``, ``GRPCRoute``, ``TCPRoute``, ``UDPRoute`` of
  ``gateway.networking.k8s.io`` with a ``kind: Service`` parent), read as the controller reads them:
  parent Services of the route's namespace (with the port or port name they attach to), which rules
  it applies (its own match parsers decide) and each rule's weighted Service backends;
* the **mesh install**: the controller Deployment (ACL mode is read from its ``--acl`` argument, i.e.
  from what ``MeshInstall`` rendered, as the controller's own flag parser would read it) and the proxy
  DaemonSet.

Where an object goes is what the cluster will do with it: nowhere for a cluster-scoped kind, else its
metadata.namespace, else its Kubernetes provider's default ``namespace``
(``k8s.Provider(namespace="shop")``; the default provider's comes from the stack config
``kubernetes:namespace``), else ``default``.
What the controller reads field by field (HTTPRouteGroup matches, a TrafficTarget's
``destination.port``, port numbers, weights) is judged with the controller's own parsers, so the
rules report what the controller would ignore.

Unknown values (computed outputs during ``pulumi preview``) are the reason this layer exists: the
engine's props raise ``UnknownValueError`` when an unknown is touched, which would abort a whole
stack rule. :func:`materialize` copies the props once, replacing every unknown with :data:`UNKNOWN`;
rules then skip exactly the facts they cannot know yet and still judge everything else.
"""

from __future__ import annotations

import argparse
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from pulumi_policy.proxy import UnknownValueError, _is_unknown  # the SDK's own sentinel test

from lightmesh_policies._runtime import annotations as ann
from lightmesh_policies._runtime import (CLUSTER_SCOPED_KINDS, ControllerErrors, cluster_key, controller_cli,
                                         controller_gateway_match, controller_grpc_match, controller_http_match,
                                         controller_model, controller_service_ports,
                                         controller_split_service_name, wire)
from lightmesh_policies._runtime import port_number as controller_port_number


class _Unknown:
    """A value the engine does not know yet (preview). Falsy, and never equal to a real value."""

    _instance: "_Unknown | None" = None

    def __new__(cls) -> "_Unknown":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "<unknown during preview>"


UNKNOWN = _Unknown()


class _BadPort:
    """A port field that is set but is not a port number."""

    def __repr__(self) -> str:
        return "<not a port number>"


BAD_PORT = _BadPort()


def is_unknown(value: Any) -> bool:
    return value is UNKNOWN


def materialize(value: Any) -> Any:
    """A plain copy of engine props (dicts, lists, scalars) with unknowns replaced by :data:`UNKNOWN`.

    Works on the SDK's unknown-checking proxies and on plain dicts carrying the raw sentinels; secret
    wrappers are unwrapped (the rules never print secret values: they only look at mesh fields).
    """
    if hasattr(value, "value") and type(value).__name__ == "Secret":
        return materialize(value.value)
    if isinstance(value, str):
        return UNKNOWN if _is_unknown(value) else value
    if isinstance(value, Mapping):
        out = {}
        for key in list(value):
            try:
                item = value[key]
            except UnknownValueError:
                out[key] = UNKNOWN
                continue
            out[key] = materialize(item)
        return out
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        out_list = []
        for i in range(len(value)):
            try:
                item = value[i]
            except UnknownValueError:
                out_list.append(UNKNOWN)
                continue
            out_list.append(materialize(item))
        return out_list
    return value


def dig(obj: Any, *path: str | int) -> Any:
    """``obj[path[0]][path[1]]...``; :data:`UNKNOWN` if an unknown is met on the way, None if missing."""
    for key in path:
        if obj is UNKNOWN:
            return UNKNOWN
        if isinstance(key, int):
            if not isinstance(obj, list) or not -len(obj) <= key < len(obj):
                return None
        elif not isinstance(obj, dict):
            return None
        obj = obj[key] if isinstance(key, int) else obj.get(key)
    return obj


def has_unknown(value: Any) -> bool:
    """Whether :data:`UNKNOWN` is anywhere in ``value`` (a materialized value)."""
    if value is UNKNOWN:
        return True
    if isinstance(value, dict):
        return any(has_unknown(k) or has_unknown(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_unknown(v) for v in value)
    return False


def as_list(value: Any) -> list:
    """A list field: [] when missing or malformed; callers check :func:`is_unknown` first if it matters."""
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def known_or_unknown_text(value: Any) -> bool:
    """A string, or a value not known yet: what a name field may hold (anything else is malformed)."""
    return isinstance(value, str) or value is UNKNOWN


def port_number(value: Any) -> Any:
    """A port as the controller reads it (its own ``topology.port_number``); UNKNOWN; or None if not a
    port number. Numbers arrive from the engine as floats."""
    if value is UNKNOWN:
        return UNKNOWN
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return controller_port_number(value)


def whole_numbers(value: Any) -> Any:
    """``value`` with every whole float turned into an int, as the object is stored (JSON numbers):
    numbers travel through the engine as floats, and the controller's parsers take ints."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        return int(value)
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


_SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """``repr(value)`` for a message, cut short: a value thousands of characters long (a number of 5,000
    digits) would bury the message, and the repr of an int past 4,300 digits raises."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2 ** 53:
        value = int(value)  # numbers travel as floats: 53.0 was written 53
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        digits = int(value.bit_length() * 0.30103) + 1
        return f"{'a negative' if value < 0 else 'a'} whole number of about {digits} digits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - still reported, by its type
        return f"a {type(value).__name__}"
    if len(text) <= _SHOWN_CHARS:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:_SHOWN_CHARS]}... ({size})"


# --------------------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resource:
    """One resource of the stack, props already materialized."""

    type: str
    name: str
    urn: str
    props: dict
    parent_types: tuple[str, ...] = ()
    """Types of the component ancestors (from the parent chain or the URN), nearest last."""
    parent_names: tuple[str, ...] = ()
    """The names of those ancestors, in the same order, when the parent chain gave them (else ())."""
    cluster: str = ""
    """The cluster it is applied to: "" for the ambient one (default provider), else what tells its
    Kubernetes provider's cluster apart (``lightmesh.local.render.cluster_key``, or the provider's URN
    while that is unknown)."""
    default_namespace: Any = "default"
    """Where the object goes when its metadata.namespace is unset: its Kubernetes provider's
    ``namespace`` (``k8s.Provider(namespace="shop")``), ``default`` without one, UNKNOWN while the
    provider's namespace is not known (preview)."""

    @property
    def group_version(self) -> tuple[str, str]:
        """("access.smi-spec.io", "v1alpha3") for ``kubernetes:access.smi-spec.io/v1alpha3:TrafficTarget``."""
        parts = self.type.split(":")
        if len(parts) != 3 or parts[0] != "kubernetes" or "/" not in parts[1]:
            return "", ""
        group, _, version = parts[1].partition("/")
        return group, version

    @property
    def kind(self) -> str:
        return self.type.rsplit(":", 1)[-1]


def parent_types_from_urn(urn: str) -> tuple[str, ...]:
    """Component ancestry encoded in a URN: ``urn:pulumi:s::p::A$B$C::name`` → (A, B)."""
    parts = urn.split("::")
    if len(parts) < 4:
        return ()
    chain = parts[2].split("$")
    return tuple(t for t in chain[:-1] if t != "pulumi:pulumi:Stack")


def resource_from_policy(resource_type: str, name: str, urn: str, props: Any,
                         parent: Any = None, provider: Any = None) -> Resource:
    """Build a :class:`Resource` from what the policy SDK gives (``PolicyResource`` or validation args)."""
    parents: list[tuple[str, str]] = []
    while parent is not None:
        parents.insert(0, (parent.resource_type, getattr(parent, "name", "") or ""))
        parent = getattr(parent, "parent", None)
    chain = [p for p in parents if p[0] != "pulumi:pulumi:Stack"]
    parent_types = tuple(t for t, _ in chain) or parent_types_from_urn(urn)
    parent_names = tuple(n for _, n in chain)
    return Resource(resource_type, name, urn, as_dict(materialize(props)), parent_types, parent_names,
                    cluster_of(provider), default_namespace_of(provider))


def cluster_of(provider: Any) -> str:
    """The :attr:`Resource.cluster` of a resource given ``provider`` (a ``PolicyProviderResource``)."""
    if provider is None:
        return ""
    key = cluster_key(getattr(provider, "resource_type", None), as_dict(materialize(getattr(provider, "props", None))))
    return key if key is not None else str(getattr(provider, "urn", "") or "unknown")


KUBERNETES_PROVIDER = "pulumi:providers:kubernetes"


def default_namespace_of(provider: Any) -> Any:
    """The :attr:`Resource.default_namespace` of a resource given ``provider`` (a
    ``PolicyProviderResource``, None for the default provider): the Kubernetes provider's ``namespace``
    input, which the provider applies to every namespaced object without metadata.namespace;
    ``default`` when it sets none; UNKNOWN while it is not known (preview)."""
    if provider is None or getattr(provider, "resource_type", None) != KUBERNETES_PROVIDER:
        return "default"
    ns = dig(as_dict(materialize(getattr(provider, "props", None))), "namespace")
    if ns is UNKNOWN:
        return UNKNOWN
    return ns if isinstance(ns, str) and ns else "default"


# ------------------------------------------------------------------------------------------- names


def namespace_of(props: dict, default: Any = "default") -> Any:
    """The object's namespace; ``default`` (the provider's default namespace) when unset. Prefer
    :func:`resource_namespace`, which knows the resource's provider."""
    ns = dig(props, "metadata", "namespace")
    if ns is UNKNOWN:
        return UNKNOWN
    return ns if isinstance(ns, str) and ns else default


def is_cluster_scoped(resource: Resource) -> bool:
    """Whether the object is of a built-in cluster-scoped kind (Namespace, ClusterRole, ...: the API
    server ignores its metadata.namespace, and no provider's namespace applies to it)."""
    kind = resource.props.get("kind")
    return (kind if isinstance(kind, str) else resource.kind) in CLUSTER_SCOPED_KINDS


def resource_namespace(resource: Resource) -> Any:
    """The namespace ``resource``'s object goes to: "" for a cluster-scoped kind (whatever its
    metadata or provider say, known or not), else its metadata.namespace, else its Kubernetes
    provider's default namespace (:attr:`Resource.default_namespace`); UNKNOWN while either is unknown."""
    if is_cluster_scoped(resource):
        return ""
    return namespace_of(resource.props, resource.default_namespace)


def object_name(resource: Resource) -> tuple[Any, bool]:
    """(metadata.name, auto_named). Unnamed objects get a provider-generated name: the resource name
    stands in for display, and nothing can reference such an object by name anyway."""
    name = dig(resource.props, "metadata", "name")
    if name is UNKNOWN:
        return UNKNOWN, False
    if isinstance(name, str) and name:
        return name, False
    return resource.name, True


# ---------------------------------------------------------------------------------------- services

SERVICE = "kubernetes:core/v1:Service"
SERVICE_PATCH = "kubernetes:core/v1:ServicePatch"
MESH_SERVICE_COMPONENT = "lightmesh:index:MeshService"
MESH_INSTALL_COMPONENT = "lightmesh:index:MeshInstall"

TRAFFIC_TYPE_ROUTE_KIND = {
    ann.TrafficType.HTTP: "HTTPRouteGroup",
    ann.TrafficType.TCP: "TCPRoute",
    ann.TrafficType.UDP: "UDPRoute",
}
ROUTE_KIND_TRAFFIC_TYPE = {kind: tt for tt, kind in TRAFFIC_TYPE_ROUTE_KIND.items()}


@dataclass
class Service:
    namespace: str
    name: str
    annotations: Any = field(default_factory=dict)  # dict, or UNKNOWN
    selector: Any = None  # dict / None (no selector in the stack) / UNKNOWN
    ports: Any = None  # spec.ports list / None (not declared in the stack) / UNKNOWN
    created: bool = False  # a Service object is declared (not only patched)
    external_name: bool = False  # spec.type ExternalName: the controller never meshes it
    by_mesh_service: bool = False
    resources: list[Resource] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def urn(self) -> str:
        return self.resources[0].urn

    @property
    def is_meshed(self) -> Any:
        """True/False; UNKNOWN (falsy) while the annotations are not known and MeshService did not make it.
        A mesh key whose value is unknown still makes the Service a mesh Service: the key is there."""
        if self.by_mesh_service:
            return True
        if self.annotations is UNKNOWN:
            return UNKNOWN
        return ann.is_meshed(self.annotations)

    def traffic_type(self, default: Any = ann.TrafficType.HTTP) -> Any:
        """The traffic type its annotations ask for (``default``, the controller's, if none);
        UNKNOWN when the annotation's value, or the default it falls back to, is not known yet."""
        if self.annotations is UNKNOWN:
            return UNKNOWN
        found = ann.lookup(self.annotations, ann.TRAFFIC_TYPE)
        if found is None:
            return default
        if is_unknown(found[1]):
            return UNKNOWN
        fallback = ann.TrafficType.HTTP if is_unknown(default) else default
        settings, _ = ann.parse_annotations_lenient(dict([found]), fallback)
        return settings.traffic_type

    def meshed_ports(self, traffic: Any) -> Any:
        """The ports the controller meshes for traffic type ``traffic``, read by its own
        ``topology._service_ports``: only those of the traffic type's protocol (UDP for udp, TCP
        otherwise), each valid and listed once; entries with ``name``, ``port``, ``protocol`` and
        ``target_port`` (a number, or a port name). None when the stack does not declare the ports;
        UNKNOWN when they, or the traffic type, are not known yet."""
        if self.ports is UNKNOWN or is_unknown(traffic):
            return UNKNOWN
        if not isinstance(self.ports, list):
            return None
        if has_unknown(self.ports):
            return UNKNOWN
        obj = {"spec": {"ports": whole_numbers(self.ports)}}
        return controller_service_ports(obj, self.namespace, self.name, traffic, ControllerErrors())

    def exposed_ports(self, traffic: Any) -> Any:
        """Port numbers traffic of type ``traffic`` may be allowed on: each meshed port and its numeric
        targetPort (the controller accepts either in a TCPRoute/UDPRoute). None when the stack does
        not declare the ports."""
        ports = self.meshed_ports(traffic)
        if not isinstance(ports, list):
            return ports
        return {p.port for p in ports} | {p.target_port for p in ports if isinstance(p.target_port, int)}

    def pod_ports(self, workloads: list["Workload"], traffic: Any, identity: Any = None) -> Any:
        """The pod ports its meshed ports (those of ``traffic``'s protocol, see :meth:`meshed_ports`) lead
        to, as the controller compares a TrafficTarget's ``destination.port`` with them: each numeric
        ``targetPort`` (the port when unset), and each named one as Kubernetes resolves it on the pods of
        ``workloads`` (its selected pods; only those of ServiceAccount ``identity`` when given: the
        controller compares the port of that ServiceAccount's endpoints), see :func:`named_port`.
        ``(numbers, complete)``: ``complete`` is False while a pod's ports (or ServiceAccount) are not
        known yet, so a port not among ``numbers`` may still be one. UNKNOWN when the stack does not
        declare its ports, or they (or the traffic type) are not known yet."""
        ports = self.meshed_ports(traffic)
        if not isinstance(ports, list):
            return UNKNOWN
        numbers: set[int] = set()
        complete = True
        for entry in ports:
            found, entry_complete = _pod_ports(entry, workloads, identity)
            numbers |= found
            complete = complete and entry_complete
        return numbers, complete

    def target_ports(self, workloads: list["Workload"], traffic: Any, identity: Any = None) -> Any:
        """:meth:`pod_ports` as a set, UNKNOWN unless it is complete. A port name no selected pod
        declares (with the port's protocol) leads nowhere: Kubernetes makes no endpoint for it."""
        found = self.pod_ports(workloads, traffic, identity)
        if found is UNKNOWN or not found[1]:
            return UNKNOWN
        return found[0]

    def l4_rule_allows(self, workloads: list["Workload"], traffic: Any, destination_port: Any,
                       allowed: tuple[int, ...], identity: Any = None) -> Any:
        """Whether a TrafficTarget (``destination_port``: None for every port; ``identity``: its
        destination) with a TCPRoute/UDPRoute limited to the ports ``allowed`` (not empty) lets traffic
        in on at least one port the controller meshes for this Service (of ``traffic``'s protocol), as its
        ``provider.allowed_ips`` decides: a meshed port the TrafficTarget attaches to (see
        :meth:`pod_ports`) whose port, or numeric targetPort, is allowed. True/False/UNKNOWN; True when
        the stack does not declare the ports."""
        ports = self.meshed_ports(traffic)
        if ports is UNKNOWN:
            return UNKNOWN
        if not isinstance(ports, list):
            return True
        verdict: Any = False
        for entry in ports:
            if entry.port not in allowed and not (isinstance(entry.target_port, int) and entry.target_port in allowed):
                continue
            if destination_port is None:
                return True
            numbers, complete = _pod_ports(entry, workloads, identity)
            if destination_port in numbers:
                return True
            if not complete:
                verdict = UNKNOWN
        return verdict

    def serves(self, workload: "Workload", traffic: Any) -> Any:
        """Whether the pods of ``workload`` (which its selector selects) are endpoints of a port the
        controller meshes for this Service (of ``traffic``'s protocol), as Kubernetes makes them: a pod
        is an endpoint of a numeric ``targetPort`` always, of a named one only when one of its containers
        declares a port of that name and of the port's protocol (:func:`named_port`); a pod that is an
        endpoint of none of them is not the Service's for the controller (its ServiceAccount needs no
        TrafficTarget for it). True/False/UNKNOWN (a value it depends on is not known yet); True when the
        stack does not declare the ports, or the controller meshes none of them."""
        if self.ports is None:
            return True
        if is_unknown(traffic):
            # http and tcp mesh the TCP ports, udp the UDP ones: one verdict for both, or not known yet
            verdicts = {self.serves(workload, t) for t in (ann.TrafficType.TCP, ann.TrafficType.UDP)}
            return verdicts.pop() if len(verdicts) == 1 else UNKNOWN
        ports = self.meshed_ports(traffic)
        if ports is UNKNOWN:
            # a port not known yet may name a container port; numeric targetPorts only take every pod
            return True if self._numeric_target_ports_only() else UNKNOWN
        if not isinstance(ports, list) or not ports:
            return True
        verdict: Any = False
        for entry in ports:
            if not isinstance(entry.target_port, str):
                return True
            endpoint, _ = named_port(workload.pod_spec, entry.target_port, entry.protocol)
            if endpoint is True:
                return True
            if endpoint is UNKNOWN:
                verdict = UNKNOWN
        return verdict

    def _numeric_target_ports_only(self) -> bool:
        """Whether every entry of its (partly unknown) ports surely leads to a port number, not a name."""
        if not isinstance(self.ports, list):
            return False
        for entry in self.ports:
            if not isinstance(entry, dict):
                return False
            target = entry.get("targetPort", entry.get("port"))
            if is_unknown(target) and "targetPort" not in entry:
                continue  # defaults to the port, a number
            if is_unknown(target) or (isinstance(target, str) and not (target.isascii() and target.isdigit())):
                return False
        return True

    def describe(self) -> str:
        how = "" if self.created else " (existing Service annotated by a ServicePatch)"
        return f"Service {self.key}{how}"


def _pod_ports(entry: Any, workloads: list["Workload"], identity: Any = None) -> tuple[set[int], bool]:
    """The pod ports a meshed Service port (a ``topology._RawPort``) leads to on the pods of ``workloads``
    (those of ServiceAccount ``identity`` only, when given), and whether that set is complete: a number
    as is; a name as Kubernetes resolves it per pod (:func:`named_port`), a pod that does not declare it
    being no endpoint of that port. Incomplete while a pod's ports, or its ServiceAccount, are not known."""
    if not isinstance(entry.target_port, str):
        return {entry.target_port}, True
    numbers: set[int] = set()
    complete = True
    for w in workloads:
        maybe = is_unknown(w.service_account) or is_unknown(w.namespace)
        if isinstance(identity, Identity):
            if not identity.known:
                maybe = True
            elif not maybe and (w.namespace, w.service_account) != (identity.namespace, identity.name):
                continue
        endpoint, number = named_port(w.pod_spec, entry.target_port, entry.protocol)
        if endpoint is False:
            continue
        if maybe or endpoint is UNKNOWN or not isinstance(number, int):
            complete = False
        else:
            numbers.add(number)
    return numbers, complete


def named_port(pod_spec: Any, name: str, protocol: str) -> tuple[Any, Any]:
    """How Kubernetes resolves a Service port's named ``targetPort`` on a pod of ``pod_spec`` (its
    ``FindPort``, which builds the EndpointSlices the controller reads): the first port called ``name``
    of protocol ``protocol`` (a container port's protocol is TCP when unset) among its containers, then
    among its sidecar init containers (``restartPolicy: Always``). ``(endpoint, number)``: whether the
    pod is an endpoint of that Service port (True/False/UNKNOWN) and the port number (None when it is
    no endpoint, UNKNOWN when that number is not known yet). Anything not known yet on the way (the pod spec, a container
    list, a container, its ports, a port or its name or protocol) that could be such a port makes the
    answer unknown, unless a port known to match is found (then the number is unknown: the unknown
    one may come first)."""
    if pod_spec is UNKNOWN:
        return UNKNOWN, UNKNOWN
    if not isinstance(pod_spec, dict):
        return False, None
    uncertain = False
    for key in ("containers", "initContainers"):
        containers = pod_spec.get(key)
        if containers is UNKNOWN:
            uncertain = True
            continue
        for container in as_list(containers):
            if container is UNKNOWN:
                uncertain = True
                continue
            if not isinstance(container, dict):
                continue
            sidecar: Any = True
            if key == "initContainers":
                policy = container.get("restartPolicy")
                sidecar = UNKNOWN if is_unknown(policy) else policy == "Always"
                if sidecar is False:
                    continue  # an init container that exits before the pod serves: Kubernetes skips it
            ports = container.get("ports")
            if ports is UNKNOWN:
                uncertain = True
                continue
            for port in as_list(ports):
                if port is UNKNOWN:
                    uncertain = True
                    continue
                if not isinstance(port, dict):
                    continue
                port_name, port_protocol = port.get("name"), port.get("protocol")
                if not is_unknown(port_name) and port_name != name:
                    continue
                if not is_unknown(port_protocol) and (port_protocol or "TCP") != protocol:
                    continue
                if is_unknown(port_name) or is_unknown(port_protocol) or sidecar is UNKNOWN:
                    uncertain = True
                    continue
                number = port_number(port.get("containerPort"))
                return True, (UNKNOWN if uncertain or number is None else number)
    return (UNKNOWN, UNKNOWN) if uncertain else (False, None)


# --------------------------------------------------------------------------------------- workloads

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


@dataclass
class Workload:
    kind: str
    namespace: Any
    name: Any
    pod_labels: Any  # dict or UNKNOWN
    service_account: Any  # str, UNKNOWN, or None when malformed (see service_account_problem)
    pod_spec: Any
    resource: Resource
    service_account_problem: str | None = None

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def pod_template(resource: Resource) -> tuple[Any, Any]:
    """(pod metadata, pod spec) of a workload resource, by kind."""
    kind, props = resource.kind, resource.props
    if kind == "Pod":
        return dig(props, "metadata"), dig(props, "spec")
    if kind == "CronJob":
        return (dig(props, "spec", "jobTemplate", "spec", "template", "metadata"),
                dig(props, "spec", "jobTemplate", "spec", "template", "spec"))
    return dig(props, "spec", "template", "metadata"), dig(props, "spec", "template", "spec")


def containers_of(pod_spec: Any) -> list[dict]:
    """Containers and init containers (known ones) of a pod spec."""
    if not isinstance(pod_spec, dict):
        return []
    out = []
    for key in ("initContainers", "containers"):
        out += [c for c in as_list(pod_spec.get(key)) if isinstance(c, dict)]
    return out


def workload_from(resource: Resource) -> Workload | None:
    group, _ = resource.group_version
    if resource.kind not in WORKLOAD_KINDS or group not in ("core", "apps", "batch"):
        return None
    meta, spec = pod_template(resource)
    labels = dig(meta, "labels")
    if labels is not UNKNOWN:
        labels = labels if isinstance(labels, dict) else {}
    problem = None
    if spec is UNKNOWN:
        sa: Any = UNKNOWN
    else:
        sa, field_name = dig(spec, "serviceAccountName"), "serviceAccountName"
        if sa is None:
            sa, field_name = dig(spec, "serviceAccount"), "serviceAccount"  # deprecated alias
        if sa is None or sa == "":
            sa = "default"  # what the API server assigns
        elif not known_or_unknown_text(sa):
            # The API server would reject it; here it only means the identity is not known.
            problem, sa = f"its pod spec's {field_name} {sa!r} is not a string", None
    name, _ = object_name(resource)
    return Workload(resource.kind, resource_namespace(resource), name, labels, sa, spec, resource, problem)


def selects(selector: dict, labels: Any) -> Any:
    """Does a Service selector select pods with ``labels``? False as soon as one label surely differs
    (missing, or a known different value); UNKNOWN when only values not known yet (the selector's or
    the pods') stand between it and True."""
    if labels is UNKNOWN:
        return UNKNOWN
    verdict: Any = True
    for key, wanted in selector.items():
        actual = labels.get(key) if isinstance(labels, dict) else None
        if actual is None:
            return False
        if is_unknown(wanted) or is_unknown(actual):
            verdict = UNKNOWN
        elif actual != wanted:
            return False
    return verdict


# -------------------------------------------------------------------------------------- mesh install


def _command_line(container: dict) -> Any:
    parts: list = []
    for key in ("command", "args"):
        value = container.get(key)
        if value is UNKNOWN:
            return UNKNOWN
        parts += [p for p in as_list(value)]
    return parts


def _role(workload: Workload) -> str | None:
    """"controller" / "proxy" when the workload is a Lightmesh control- or data-plane workload.

    Recognised by (1) the pod label ``app.kubernetes.io/name`` MeshInstall sets, (2) a container
    running ``lightmesh controller|proxy`` (:func:`_lightmesh_subcommand`), or (3), for the
    controller, a container whose command line starts with the ``controller`` subcommand (the first
    word, or the second after an entry point) followed by one of the flags only Lightmesh's controller
    has (``--manifests``, ``--default-mode``, ``--dns-port``...: :data:`CONTROLLER_ONLY_FLAGS`; not
    ``--acl``, which Traefik Mesh's controller has too) — a mirrored image run by hand. A mirrored
    image run as a bare ``controller`` with none of those flags cannot be told from any other
    controller: give its pods the label. A workload running Traefik Mesh's image (any image naming
    ``traefik/mesh``) is never Lightmesh's, whatever its labels or flags: users migrate from Traefik
    Mesh, often running both side by side."""
    if any(is_traefik_mesh_image(c.get("image")) for c in containers_of(workload.pod_spec)):
        return None
    labels = workload.pod_labels if isinstance(workload.pod_labels, dict) else {}
    name = labels.get("app.kubernetes.io/name")
    if name == wire.CONTROLLER_NAME:
        return "controller"
    if name == wire.PROXY_NAME:
        return "proxy"
    # Installed by hand or by an older MeshInstall: recognise `lightmesh controller|proxy ...`.
    for container in containers_of(workload.pod_spec):
        line = _command_line(container)
        image = container.get("image")
        if not isinstance(line, list):
            continue
        role = _lightmesh_subcommand([w for w in line if isinstance(w, str)], image)
        if role is not None:
            return role
        if "controller" in line[:2]:
            after = line[line.index("controller") + 1:]
            if any(isinstance(w, str) and w.split("=", 1)[0] in CONTROLLER_ONLY_FLAGS for w in after):
                return "controller"
    return None


def _lightmesh_subcommand(words: list[str], image: Any) -> str | None:
    """"controller" / "proxy" when a command line runs that subcommand of the ``lightmesh`` CLI: the
    word right after the entry point (``lightmesh``, ``/usr/local/bin/lightmesh``, ``python -m
    lightmesh``), or the first word when the image is Lightmesh's (``lightmesh`` in its name: its
    entry point is the CLI). A word that merely contains "lightmesh" (a URL, a path, another
    program's name) never makes a workload Lightmesh's. A shell line (``sh -c "lightmesh ..."``) is
    one word: its flags could not be read either (label such pods)."""
    for i, word in enumerate(words[:-1]):
        if posixpath.basename(word) == "lightmesh" and words[i + 1] in ("controller", "proxy"):
            return words[i + 1]
    if isinstance(image, str) and "lightmesh" in image.lower() and words and words[0] in ("controller", "proxy"):
        return words[0]
    return None


def is_traefik_mesh_image(image: Any) -> bool:
    """Whether ``image`` is Traefik Mesh's (``traefik/mesh:v1.4``, ``docker.io/traefik/mesh``, a
    mirror such as ``registry.corp/traefik/mesh@sha256:...``)."""
    return isinstance(image, str) and "traefik/mesh" in image.lower()


def workload_role(resource: Resource) -> str | None:
    workload = workload_from(resource)
    return _role(workload) if workload else None


def _controller_switches() -> frozenset[str]:
    """The controller's flags that take no value (``--acl``, ``--leader-election``), from its own parser."""
    parser = argparse.ArgumentParser(add_help=False)
    controller_cli.configure(parser)
    return frozenset(opt for action in parser._actions if action.nargs == 0 for opt in action.option_strings)


CONTROLLER_SWITCHES = _controller_switches()


def _controller_options() -> list[str]:
    parser = argparse.ArgumentParser()  # as ``lightmesh controller`` builds it (with --help)
    controller_cli.configure(parser)
    return [opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")]


def _acl_words() -> frozenset[str]:
    """How ``--acl`` may be written so that the controller's parser (argparse, which takes unambiguous
    abbreviations) turns ACL mode on: ``--acl`` and ``--ac``. The flag takes no value: ``--acl=true``
    stops the controller at start (see :func:`bad_acl_args`)."""
    options = _controller_options()
    prefixes = ("--acl"[:n] for n in range(3, len("--acl") + 1))
    return frozenset(p for p in prefixes if [o for o in options if o.startswith(p)] == ["--acl"])


ACL_WORDS = _acl_words()

# Options of Lightmesh's controller that other programs' controllers are not known to share: with the
# `controller` subcommand they identify a Lightmesh controller whatever its image and labels (generic
# ones such as --kubeconfig, --namespace, --leader-election, --log-level are left out, and so is every
# flag Traefik Mesh's `controller` takes: --acl above all, which Traefik Mesh has too).
_GENERIC_OPTIONS = {"--help", "--kubeconfig", "--namespace", "--leader-election", "--log-level", "--log-format",
                    "--api-address", "--api-port", "--otlp-endpoint", "--shutdown-delay"}
TRAEFIK_MESH_CONTROLLER_FLAGS = frozenset({
    "--acl", "--namespace", "--logLevel", "--debug", "--kubeconfig", "--defaultMode", "--smi",
    "--watchNamespaces", "--ignoreNamespaces", "--apiHost", "--apiPort", "--limitHTTPPort", "--limitTCPPort",
    "--limitUDPPort", "--clusterDomain",
})
"""The flags of Traefik Mesh's ``controller`` (camelCase; Lightmesh's are kebab-case)."""
CONTROLLER_ONLY_FLAGS = frozenset(o for o in _controller_options() if o not in _GENERIC_OPTIONS
                                  and o.lower() not in {f.lower() for f in TRAEFIK_MESH_CONTROLLER_FLAGS})


@dataclass(frozen=True)
class OptionValueNotKnown:
    """A ``--option=value`` word whose value is not known (a ``$(VAR)`` Kubernetes expands from an
    environment variable the pack cannot resolve): the option is known, its value is not."""

    option: str


def expand_kubernetes_references(text: str, lookup) -> list:
    """``text`` with its ``$(VAR)`` references expanded as Kubernetes expands a container's
    ``command``, ``args`` and ``env`` values (``third_party/forked/golang/expansion``): ``$(NAME)`` is
    ``lookup(NAME)``, ``$$`` is ``$`` (so ``$$(NAME)`` is the text ``$(NAME)``), any other ``$`` is
    itself. As a list of pieces, each a string or UNKNOWN (``lookup`` did not know the value)."""
    pieces: list = []
    text_so_far: list[str] = []
    checkpoint, cursor = 0, 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            text_so_far.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            advance = 1
            if following == "$":
                text_so_far.append("$")  # an escaped $
            elif following == "(" and (close := text.find(")", cursor + 2)) != -1:
                value = lookup(text[cursor + 2:close])
                if value is UNKNOWN:
                    pieces += ["".join(text_so_far), UNKNOWN]
                    text_so_far = []
                else:
                    text_so_far.append(value)
                advance = close - cursor
            else:
                text_so_far.append("$" + following)  # not a reference (nor an incomplete one): as written
            cursor += advance
            checkpoint = cursor + 1
        cursor += 1
    text_so_far.append(text[checkpoint:])
    return [p for p in pieces + ["".join(text_so_far)] if p != ""]


def _env_lookup(container: dict, namespace: Any):
    """``lookup(name)`` for :func:`expand_kubernetes_references` of ``container``'s command line: the value
    of its environment variable ``name`` as Kubernetes sets it, where the stack tells it: a literal
    ``value`` (itself expanded with the variables before it, as Kubernetes does), or a ``valueFrom``
    ``fieldRef`` ``metadata.namespace`` (the pod's namespace, ``namespace``). UNKNOWN otherwise: another
    ``valueFrom`` (a ConfigMap, a Secret, another field), a variable not in ``env`` (it may come from
    ``envFrom`` or the Service links), or a value not known yet."""
    env = container.get("env")

    def value_of(name: str, before: int) -> Any:
        if env is UNKNOWN:
            return UNKNOWN
        entries = as_list(env)[:before]
        for j in range(len(entries) - 1, -1, -1):  # the last definition wins
            entry = entries[j]
            if not isinstance(entry, dict):
                if entry is UNKNOWN:
                    return UNKNOWN
                continue
            if is_unknown(entry.get("name")):
                return UNKNOWN
            if entry.get("name") != name:
                continue
            source = entry.get("valueFrom")
            if source is not None:
                field_path = dig(source, "fieldRef", "fieldPath")
                return namespace if field_path == "metadata.namespace" and isinstance(namespace, str) else UNKNOWN
            value = entry.get("value")
            if value is None:
                return ""
            if not isinstance(value, str):
                return UNKNOWN
            pieces = expand_kubernetes_references(value, lambda other: value_of(other, j))
            return UNKNOWN if UNKNOWN in pieces else "".join(pieces)
        return UNKNOWN

    return lambda name: value_of(name, len(as_list(env)) if isinstance(env, list) else 0)


def _expanded_word(word: Any, lookup) -> Any:
    """A command-line word as the container gets it (:func:`expand_kubernetes_references`): a string;
    UNKNOWN when a reference in it is not known; :class:`OptionValueNotKnown` for ``--option=$(VAR)``
    (the option written out, only its value unknown)."""
    if not isinstance(word, str) or "$" not in word:
        return word
    pieces = expand_kubernetes_references(word, lookup)
    if UNKNOWN not in pieces:
        return "".join(pieces)
    first = pieces[0]
    if isinstance(first, str) and first.startswith("-") and "=" in first:
        return OptionValueNotKnown(first.split("=", 1)[0])
    return UNKNOWN


def _command_lines(pod_spec: Any, namespace: Any = UNKNOWN) -> list:
    """The command line (command + args) of every container, each a list or UNKNOWN; a single UNKNOWN
    stands for a pod spec or container list not known yet (it may hold any container). Each word as
    the container gets it: ``$(VAR)`` references expanded from the container's environment as
    Kubernetes expands them (:func:`_expanded_word`; ``namespace`` is the pod's, for a ``fieldRef`` to
    ``metadata.namespace``), UNKNOWN where the stack does not tell the value."""
    if pod_spec is UNKNOWN:
        return [UNKNOWN]
    if not isinstance(pod_spec, dict):
        return []
    lines: list = []
    for key in ("initContainers", "containers"):
        containers = pod_spec.get(key)
        if containers is UNKNOWN:
            lines.append(UNKNOWN)
            continue
        for container in as_list(containers):
            if container is UNKNOWN:
                lines.append(UNKNOWN)
            elif isinstance(container, dict):
                line = _command_line(container)
                if isinstance(line, list) and any(isinstance(w, str) and "$" in w for w in line):
                    lookup = _env_lookup(container, namespace)
                    line = [_expanded_word(w, lookup) for w in line]
                lines.append(line)
    return lines


def _is_option_value(line: list, index: int) -> bool:
    """Whether ``line[index]`` is the value of the option before it (``--otlp-endpoint <url>``)."""
    if index == 0:
        return False
    before = line[index - 1]
    return (isinstance(before, str) and before.startswith("--") and "=" not in before
            and before not in CONTROLLER_SWITCHES)


def acl_flag(workload: Workload) -> Any:
    """True/False from the controller's ``--acl`` argument; UNKNOWN when it may be there but is not known.

    ``--acl`` anywhere makes it True, whatever else is unknown. A word not known yet (a computed value
    during preview) could only be ``--acl`` if it stands on its own: one that directly follows an
    option taking a value (``--otlp-endpoint <unknown>``, how MeshInstall renders a computed OTLP
    endpoint) is that option's value, so it does not hide a known absence of ``--acl``. MeshInstall
    itself always writes ``--acl`` as a plain known word (its ``acl`` arg must be known).
    """
    verdict: Any = False
    for line in _command_lines(workload.pod_spec, workload.namespace):
        if line is UNKNOWN:
            verdict = UNKNOWN
            continue
        for i, word in enumerate(line):
            if isinstance(word, str) and word in ACL_WORDS:
                return True
            if is_unknown(word) and not _is_option_value(line, i):
                verdict = UNKNOWN
    return verdict


def bad_acl_args(workload: Workload) -> list[tuple[Any, str, int, str]]:
    """``(container name, field, index, word)`` of every ``--acl=<value>`` (or ``--ac=<value>``) in
    the containers' ``command``/``args``: ``--acl`` is a switch, the controller's parser refuses a value
    ("ignored explicit argument") and the controller exits at start, over and over."""
    found = []
    for container in containers_of(workload.pod_spec):
        for key in ("command", "args"):
            for i, word in enumerate(as_list(container.get(key))):
                if isinstance(word, str) and "=" in word and word.split("=", 1)[0] in ACL_WORDS:
                    found.append((container.get("name"), key, i, word))
    return found


_DEFAULT_TYPE_FLAGS = ("--default-mode",)  # the controller's flag (lightmesh controller --help)


def default_traffic_type_flag(workload: Workload) -> Any:
    """The controller's default traffic type (``--default-mode X`` or ``=X``), http if unset; UNKNOWN
    when the flag's value, or a word that could be the flag, is not known yet."""
    unknown = False
    for line in _command_lines(workload.pod_spec, workload.namespace):
        if line is UNKNOWN:
            unknown = True
            continue
        for i, word in enumerate(line):
            if is_unknown(word):
                unknown = unknown or not _is_option_value(line, i)
                continue
            if isinstance(word, OptionValueNotKnown) and word.option in _DEFAULT_TYPE_FLAGS:
                return UNKNOWN
            if not isinstance(word, str):
                continue
            value: Any = None
            if word in _DEFAULT_TYPE_FLAGS and i + 1 < len(line):
                value = line[i + 1]
            elif word.startswith(tuple(f + "=" for f in _DEFAULT_TYPE_FLAGS)):
                value = word.split("=", 1)[1]
            if is_unknown(value) or isinstance(value, OptionValueNotKnown):
                return UNKNOWN
            if isinstance(value, str) and value:
                try:
                    return ann.TrafficType(value.lower())
                except ValueError:
                    pass
    return UNKNOWN if unknown else ann.TrafficType.HTTP


@dataclass(frozen=True)
class IgnoreSettings:
    """What the controller never meshes: its own namespace, kube-system, ``default/kubernetes``,
    ``--ignore-namespaces``, and with ``--watch-namespaces`` every other namespace. A field is
    :data:`UNKNOWN` while the flag's value is."""

    mesh_namespace: Any = wire.DEFAULT_MESH_NAMESPACE
    watch_namespaces: Any = ()
    ignore_namespaces: Any = ()

    def ignores(self, namespace: Any, name: Any) -> Any:
        """True/False for the Service ``namespace/name``; UNKNOWN when it depends on a value not known yet
        (a ``name`` not known yet may be ``default/kubernetes``'s)."""
        if (namespace, name) in controller_model.ALWAYS_IGNORED_SERVICES:
            return True
        if is_unknown(name) and any(is_unknown(namespace) or namespace == ns
                                    for ns, _ in controller_model.ALWAYS_IGNORED_SERVICES):
            return True if self.ignores_namespace(namespace) is True else UNKNOWN
        return self.ignores_namespace(namespace)

    def ignores_namespace(self, namespace: Any) -> Any:
        """True/False for every object of ``namespace`` (the controller reads none of a namespace it
        ignores: Services, pods, SMI objects, Gateway API routes; ``sources.ObjectFilter``); UNKNOWN
        when it depends on a value not known yet (the namespace or a flag)."""
        if is_unknown(namespace):
            return UNKNOWN
        if namespace in controller_model.ALWAYS_IGNORED_NAMESPACES:
            return True
        verdict: Any = False
        for value, ignored in ((self.mesh_namespace, lambda v: namespace == v),
                               (self.ignore_namespaces, lambda v: namespace in v),
                               (self.watch_namespaces, lambda v: bool(v) and namespace not in v)):
            if is_unknown(value):
                verdict = UNKNOWN
            elif ignored(value):
                return True
        return verdict


class _QuietParser(argparse.ArgumentParser):
    """The controller's parser, its refusals raised (with its own words) instead of printed to this
    process's stderr and exiting (an ambiguous abbreviation, a missing value)."""

    def error(self, message: str):  # type: ignore[override]
        raise argparse.ArgumentError(None, message)


def _controller_parser() -> argparse.ArgumentParser:
    parser = _QuietParser(add_help=False, exit_on_error=False)
    controller_cli.configure(parser)
    return parser


def _controller_flags(workload: Workload) -> tuple[Any, set[str]]:
    """The controller's flags read from its command line with its own parser: ``(argparse namespace,
    the options whose value is not known yet)`` (those are left out of the parse: their defaults stand
    in); ``(UNKNOWN, ...)`` when a free-standing word not known yet could be any flag; ``(None, ...)``
    when the parser refuses them (``--acl=true``: the controller would not start)."""
    flags, unknown_options, _ = _parse_controller_flags(workload)
    return flags, unknown_options


def controller_parser_problem(workload: Workload) -> str | None:
    """What the controller's own flag parser says of its command line when it refuses it (it exits
    at start: "argument --watch-namespaces: 'Bad_NS' is not a namespace name"); None when it takes
    it or a word is not known yet."""
    return _parse_controller_flags(workload)[2]


def _parse_controller_flags(workload: Workload) -> tuple[Any, set[str], str | None]:
    words: Any = None
    unknown_word = False
    for line in _command_lines(workload.pod_spec, workload.namespace):
        if line is UNKNOWN:
            return UNKNOWN, set(), None
        if "controller" in line:
            words = line[line.index("controller") + 1:]
            break
        unknown_word = unknown_word or any(is_unknown(w) for w in line)
    if words is None and unknown_word:
        return UNKNOWN, set(), None  # a word not known yet may be the subcommand, its flags following it
    unknown_options: set[str] = set()
    known: list[str] = []
    for i, word in enumerate(words or []):
        if is_unknown(word):
            if not _is_option_value(words, i):
                return UNKNOWN, set(), None
            unknown_options.add(known.pop())  # the option whose value it is, left out of the parse
        elif isinstance(word, OptionValueNotKnown):
            unknown_options.add(word.option)  # --option=$(VAR) not known here: left out of the parse too
        elif isinstance(word, str):
            known.append(word)
    try:
        flags, extras = _controller_parser().parse_known_args(known)
    except argparse.ArgumentError as exc:
        return None, unknown_options, str(exc)
    except SystemExit:
        return None, unknown_options, "the controller's flag parser refuses its command line"
    if extras:  # the controller parses with parse_args: a word it does not know stops it too
        return None, unknown_options, f"unrecognized arguments: {' '.join(extras)}"
    return flags, unknown_options, None


# The flags that make the controller's Settings (``main.settings_from_args``): its fields, the mesh
# namespace being ``--namespace``.
_SETTINGS_DESTS = frozenset({f for f in controller_model.Settings.__dataclass_fields__ if f != "mesh_namespace"}
                            | {"namespace"})


def _option_dest(word: str) -> str | None:
    """The flag (its argparse ``dest``) a command-line word names, as the controller's parser takes it
    (an unambiguous abbreviation included); None when it names no single flag."""
    actions = _controller_parser()._option_string_actions
    option = word.split("=", 1)[0]
    if option in actions:
        return actions[option].dest
    found = {actions[o].dest for o in actions if o.startswith("--") and o.startswith(option)}
    return found.pop() if len(found) == 1 else None


def _settings_problem(flags: Any, unknown_options: set[str]) -> str | None:
    if not isinstance(flags, argparse.Namespace):
        return None
    if any(_option_dest(o) in _SETTINGS_DESTS | {None} for o in unknown_options):
        return None  # a setting not known yet: whether the controller takes them is known after apply
    try:
        controller_cli.settings_from_args(flags)
    except (ValueError, TypeError) as exc:
        return str(exc)
    return None


def controller_settings_problem(workload: Workload) -> str | None:
    """Why the controller refuses its own flags at start (``lightmesh controller`` logs "invalid
    settings: <why>" and exits 2, over and over), read with its own ``main.settings_from_args``:
    ``--watch-namespaces`` naming kube-system or the mesh namespace, a namespace both watched and
    ignored, a port range outside 1-65535 or overlapping another, a domain that is no DNS name. None when
    it takes them, when its flag parser already refuses them (``--acl=true``, see :func:`bad_acl_args`),
    or when a value it depends on is not known yet."""
    return _settings_problem(*_controller_flags(workload))


def controller_container_name(workload: Workload) -> Any:
    """The name of the container whose command line runs the ``controller`` subcommand (the one whose
    flags the pack reads), None when none is known to."""
    for container in containers_of(workload.pod_spec):
        line = _command_line(container)
        if isinstance(line, list) and "controller" in line:
            return container.get("name")
    return None


def controller_ignore_settings(workload: Workload) -> IgnoreSettings:
    """The namespaces a controller workload ignores, read from its command line with the controller's
    own flag parser (``--namespace``, ``--watch-namespaces``, ``--ignore-namespaces``). A value not
    known yet makes that setting UNKNOWN; a free-standing word not known yet could be any of them. A
    controller that would not start (flags its parser or its settings refuse, e.g. a namespace both
    watched and ignored) is judged by the defaults: the rules still see what its ignore lists would hide,
    and ``lightmesh-require-acl`` reports the flags."""
    flags, unknown_options = _controller_flags(workload)
    if flags is UNKNOWN:
        return IgnoreSettings(UNKNOWN, UNKNOWN, UNKNOWN)
    if flags is None or _settings_problem(flags, unknown_options) is not None:
        return IgnoreSettings()

    def value(dest: str) -> Any:
        if any(_option_dest(o) in (dest, None) for o in unknown_options):
            return UNKNOWN
        parsed = getattr(flags, dest)
        return tuple(parsed) if isinstance(parsed, list) else parsed
    return IgnoreSettings(value("namespace"), value("watch_namespaces"), value("ignore_namespaces"))


# --------------------------------------------------------------------------------------------- SMI

ACCESS_GROUP = "access.smi-spec.io"
SPECS_GROUP = "specs.smi-spec.io"
SPLIT_GROUP = "split.smi-spec.io"
ROUTE_KINDS = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")


@dataclass(frozen=True)
class Identity:
    namespace: Any  # str, UNKNOWN, or None when malformed (see problem)
    name: Any  # str, UNKNOWN, None (missing), or None when malformed (see problem)
    kind: Any = field(default="ServiceAccount", compare=False)
    problem: str | None = field(default=None, compare=False)
    """Why the written name or namespace is unusable (not a string), for messages."""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def known(self) -> bool:
        return not is_unknown(self.namespace) and not is_unknown(self.name)

    def may_be(self, other: "Identity") -> bool:
        """Whether this identity, parts of which may be unknown yet, could turn out to be ``other``."""
        return all(mine is UNKNOWN or mine == theirs
                   for mine, theirs in ((self.namespace, other.namespace), (self.name, other.name)))


@dataclass
class Rule:
    kind: Any
    name: Any
    matches: Any  # list[str] or UNKNOWN


@dataclass
class TrafficTarget:
    namespace: Any
    name: Any
    destination: Any  # Identity, None (missing) or UNKNOWN
    sources: Any  # list[Identity] or UNKNOWN
    rules: Any  # list[Rule] or UNKNOWN
    version: str
    resource: Resource
    destination_port: Any = None
    """spec.destination.port as written: None when unset (every port), else the raw value."""

    def describe(self) -> str:
        return f"TrafficTarget {self.namespace}/{self.name}"

    @property
    def port(self) -> Any:
        """The destination port as the controller reads it: None (every port), a number, UNKNOWN, or
        :data:`BAD_PORT` when it is set but not a port number (the controller ignores the TrafficTarget)."""
        raw = self.destination_port
        if raw is None or raw == "":
            return None
        number = port_number(raw)
        return BAD_PORT if number is None else number

    @property
    def ignored_by_controller(self) -> bool:
        """The controller ignores it as a whole (reported by the TrafficTarget rule): a destination
        port that is not a port number, or a destination in another namespace. It allows nothing."""
        dest = self.destination
        return self.port is BAD_PORT or (isinstance(dest, Identity) and isinstance(dest.namespace, str)
                                         and isinstance(self.namespace, str) and dest.namespace != self.namespace)

    def allows_on(self, svc: "Service", workloads: list["Workload"], traffic: Any) -> Any:
        """Whether the controller attaches it to ``svc`` (whose pods run as its destination, and whose
        traffic type is ``traffic``): True without a destination port, else whether one of the pod
        ports of ``svc``'s meshed ports on its destination's pods is that port (see
        :meth:`Service.pod_ports`); UNKNOWN when that is not known yet."""
        port = self.port
        if port is None:
            return True
        if port is UNKNOWN or port is BAD_PORT:
            return UNKNOWN if port is UNKNOWN else False
        found = svc.pod_ports(workloads, traffic, self.destination)
        if found is UNKNOWN:
            return UNKNOWN
        numbers, complete = found
        return True if port in numbers else False if complete else UNKNOWN


@dataclass
class Route:
    kind: str
    namespace: Any
    name: Any
    matches: Any  # HTTPRouteGroup: list of match dicts; TCP/UDP: raw; or UNKNOWN
    resource: Resource

    def ports(self) -> Any:
        """TCPRoute/UDPRoute ports as the controller reads them: a tuple (empty = every port; entries
        that are not port numbers are ignored), or UNKNOWN."""
        matches = self.matches
        if matches is UNKNOWN:
            return UNKNOWN
        raw = dig(matches, "ports") if isinstance(matches, dict) else None  # v1alpha4; older: every port
        if raw is UNKNOWN:
            return UNKNOWN
        numbers = [port_number(p) for p in as_list(raw)]
        if any(n is UNKNOWN for n in numbers):
            return UNKNOWN
        return tuple(sorted({n for n in numbers if n is not None}))

    def bad_ports(self) -> list[tuple[int, Any]]:
        """``(index, entry)`` of the TCPRoute/UDPRoute ports entries that are not port numbers (known
        ones only): the controller ignores them, and a route left with no port allows every port."""
        raw = dig(self.matches, "ports") if isinstance(self.matches, dict) else None
        return [(i, p) for i, p in enumerate(as_list(raw)) if p is not UNKNOWN and port_number(p) is None]

    @property
    def matches_field(self) -> str:
        """Where the matches are written: ``spec.matches``, or ``matches`` (specs v1alpha1/2 on top)."""
        return "spec.matches" if isinstance(self.resource.props.get("spec"), dict) else "matches"

    def controller_verdicts(self) -> Any:
        """HTTPRouteGroup matches as the controller reads them (its own ``_http_match``): per match
        ``(index, name, verdict, reason)``, the verdict True (kept), False (ignored: ``reason`` says
        why) or UNKNOWN (a value in it is not known yet). UNKNOWN when the match list is."""
        if self.matches is UNKNOWN:
            return UNKNOWN
        out = []
        for i, raw in enumerate(as_list(self.matches)):
            name = dig(raw, "name")
            if has_unknown(raw):
                out.append((i, name, UNKNOWN, None))
                continue
            errors = ControllerErrors()
            try:
                parsed = controller_http_match(raw, ("", ""), i, errors)
            except Exception as exc:  # noqa: BLE001 - the controller reports such a match as an internal error
                parsed, reason = None, f"it cannot be read ({type(exc).__name__})"
            else:
                reason = errors.items[0].message if errors.items else "it cannot be read"
            out.append((i, name if isinstance(name, str) else "", parsed is not None,
                        None if parsed is not None else reason.removesuffix("; this match is ignored")))
        return out

    def rule_allows(self, wanted: Any) -> Any:
        """Whether a TrafficTarget rule on this HTTPRouteGroup naming ``wanted`` matches (every match
        when empty) allows any request, as the controller reads it: it keeps the valid matches named
        (by_name: valid matches with a name), or every valid match when none is named. True/False/UNKNOWN."""
        verdicts = self.controller_verdicts()
        if verdicts is UNKNOWN or wanted is UNKNOWN:
            return UNKNOWN
        names = as_list(wanted)
        maybe = False
        if not names:
            for _, _, verdict, _ in verdicts:
                if verdict is True:
                    return True
                maybe = maybe or verdict is UNKNOWN
            return UNKNOWN if maybe else False
        for wanted_name in names:
            if wanted_name is UNKNOWN:
                maybe = True
                continue
            for _, name, verdict, _ in verdicts:
                if name is UNKNOWN or verdict is UNKNOWN:
                    maybe = maybe or name is UNKNOWN or name == wanted_name
                elif verdict is True and name and name == wanted_name:
                    return True
        return UNKNOWN if maybe else False

    def match_names(self) -> Any:
        if self.matches is UNKNOWN:
            return UNKNOWN
        names = set()
        for m in as_list(self.matches):
            n = dig(m, "name")
            if n is UNKNOWN:
                return UNKNOWN
            if isinstance(n, str):
                names.add(n)
        return names


@dataclass
class Backend:
    service: Any
    """The Service name as the controller reads it (a TrafficSplit's ``web-v1.shop`` is ``web-v1``);
    as written when the controller refuses it (see :attr:`problem`) or it is not a string."""
    weight: Any
    written: Any = None
    """``service`` as written (a TrafficSplit backend's ``web-v1.shop.svc.cluster.local``)."""
    problem: str | None = None
    """Why the controller refuses the name (a TrafficSplit backend in another namespace); None if it does not."""
    port: Any = None
    """A Gateway API backendRef's ``port`` as written (None when unset)."""
    index: int | None = None
    """Its position in the list it was written in (``backendRefs[index]``)."""


def split_service_name(value: Any, namespace: Any) -> tuple[Any, str | None]:
    """A TrafficSplit ``service`` (root or backend) as the controller reads it, with its own
    ``topology._split_service_name``: ``name``, ``name.<ns>`` and ``name.<ns>.svc[.<domain>]`` are the
    Service ``name`` when ``<ns>`` is the split's namespace; any other dotted name is refused
    (``(value, why)``: the controller ignores the split, or drops the backend). A value that is not a
    string is returned as is; while the namespace is not known, a dotted name may be ``name``."""
    if not isinstance(value, str):
        return value, None
    if is_unknown(namespace) or not isinstance(namespace, str):
        return value.partition(".")[0], None
    name, problem = controller_split_service_name(value, namespace)
    return (value, problem) if problem else (name, None)


@dataclass
class TrafficSplit:
    namespace: Any
    name: Any
    service: Any
    """The root Service's name as the controller reads it (see :func:`split_service_name`); as written
    when it refuses it (:attr:`service_problem`), or when it is not a string."""
    backends: Any  # list[Backend] or UNKNOWN
    matches: Any  # list of {kind, name} or UNKNOWN
    version: str
    resource: Resource
    written_service: Any = None
    """``spec.service`` as written."""
    service_problem: str | None = None
    """Why the controller refuses the root's name (then it ignores the whole split), or None."""

    def describe(self) -> str:
        return f"TrafficSplit {self.namespace}/{self.name}"


GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_ROUTE_TRAFFIC = {"HTTPRoute": ann.TrafficType.HTTP, "GRPCRoute": ann.TrafficType.HTTP,
                         "TCPRoute": ann.TrafficType.TCP, "UDPRoute": ann.TrafficType.UDP}


@dataclass(frozen=True)
class ParentRef:
    """A ``parentRefs`` entry naming a Service of the route's namespace: its name, and the ``port``
    and ``sectionName`` (a port name) it attaches to, None when unset; any of them may be UNKNOWN."""

    name: Any
    port: Any = None
    section: Any = None

    def attaches_to(self, svc: "Service", traffic: Any) -> Any:
        """Whether the controller attaches this parentRef to ``svc`` (of traffic type ``traffic``), as
        ``topology._mesh_routes`` does: its name is the Service's, and its ``port`` (a port number) and
        ``sectionName``, when set, name one port the controller meshes for that traffic type (both:
        the same port). True/False/UNKNOWN."""
        if is_unknown(self.name):
            return UNKNOWN
        if self.name != svc.name:
            return False
        if self.port is None and self.section is None:
            return True
        if is_unknown(self.port) or is_unknown(self.section):
            return UNKNOWN
        ports = svc.meshed_ports(traffic)
        if not isinstance(ports, list):
            return UNKNOWN  # not known yet, or not declared in this stack (an existing Service patched)
        number = None
        if self.port is not None:
            number = port_number(self.port)
            if number is None or all(p.port != number for p in ports):
                return False  # "is not a port of <Service>; this parent is ignored"
        if self.section is not None:
            named = [p.port for p in ports if p.name == self.section]
            if not named or (number is not None and number != named[0]):
                return False  # no port of that name, or another port than `port`: ignored
        return True


@dataclass
class MeshRoute:
    """A Gateway API route (HTTPRoute, GRPCRoute, TCPRoute, UDPRoute) as the controller reads it for
    the mesh (GAMMA): its parent Services (``parentRefs`` of ``kind: Service``, ``group: ""``, in the
    route's namespace) and, per rule it applies, the weighted Service backends of its namespace."""

    kind: str
    namespace: Any
    name: Any
    parents: Any  # list of ParentRef (a whole entry not known yet: ParentRef(UNKNOWN)), or UNKNOWN
    rules: Any  # list (per rule) of list[Backend] (weights as the controller reads them), or UNKNOWN
    resource: Resource
    kept: Any = field(default_factory=list)
    """Per rule of :attr:`rules`, whether the controller applies it: False when it ignores it (an
    HTTPRoute/GRPCRoute rule with a match its own parser refuses, e.g. ``queryParams``), UNKNOWN when
    a match is not known yet; UNKNOWN as a whole while the rules are."""

    def describe(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"

    @property
    def traffic_type(self) -> ann.TrafficType:
        return GATEWAY_ROUTE_TRAFFIC[self.kind]

    @property
    def parent_names(self) -> list[str]:
        """The known names of its parent Services (whether or not the controller attaches them)."""
        parents = self.parents if isinstance(self.parents, list) else []
        return list(dict.fromkeys(p.name for p in parents if isinstance(p.name, str) and p.name))

    def applies_a_rule(self) -> Any:
        """Whether the controller applies at least one of its rules (a route none of whose rules it
        applies attaches to no parent): True/False/UNKNOWN."""
        if self.kept is UNKNOWN:
            return UNKNOWN
        if any(k is True for k in self.kept):
            return True
        return UNKNOWN if any(is_unknown(k) for k in self.kept) else False

    def may_attach_to(self, svc: "Service", traffic: Any) -> Any:
        """Whether the controller attaches this route to ``svc``, whose traffic type is ``traffic``
        (UNKNOWN: as if it were the route's own type), as ``topology._mesh_routes`` decides: a
        parentRef names it (port and sectionName, when set, one of its meshed ports), it is of the
        route's traffic type, it is not an ExternalName Service (never meshed), and the controller
        applies at least one of the route's rules. True when surely, UNKNOWN when it may, else False."""
        if is_unknown(self.namespace):
            return UNKNOWN
        if self.namespace != svc.namespace or svc.external_name:
            return False
        if is_unknown(traffic):
            traffic = self.traffic_type
        if traffic is not self.traffic_type:
            return False  # "parent service ... is tcp, not http; ignored"
        if self.parents is UNKNOWN:
            parent: Any = UNKNOWN
        else:
            verdicts = [ref.attaches_to(svc, traffic) for ref in self.parents]
            parent = True if True in verdicts else UNKNOWN if any(is_unknown(v) for v in verdicts) else False
        if parent is False:
            return False
        rules = self.applies_a_rule()
        if rules is False:
            return False
        return True if parent is True and rules is True else UNKNOWN


def _gateway_weight(value: Any) -> Any:
    """A backendRef weight as the controller reads it (1 when unset; a whole number 0-1000000), UNKNOWN,
    or None when it ignores the backend."""
    if value is UNKNOWN:
        return UNKNOWN
    if value is None:
        return 1
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # numbers travel as floats
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1_000_000:
        return None
    return value


def _rule_kept(kind: str, rule: Any) -> Any:
    """Whether the controller applies an HTTPRoute/GRPCRoute rule: it ignores a rule one of whose
    matches its own parser (``topology._gw_match``/``_grpc_match``) refuses. True/False/UNKNOWN."""
    if rule is UNKNOWN:
        return UNKNOWN
    matches = dig(rule, "matches")
    if matches is UNKNOWN:
        return UNKNOWN
    parse = controller_grpc_match if kind == "GRPCRoute" else controller_gateway_match
    verdict: Any = True
    for raw in as_list(matches) or [{}]:
        if has_unknown(raw):
            verdict = UNKNOWN  # a match known later may still be refused: keep looking for one refused now
            continue
        try:
            found = parse(whole_numbers(raw))
        except Exception:  # noqa: BLE001 - what the controller would make of it is not known
            verdict = UNKNOWN
            continue
        if isinstance(found, str):
            return False
    return verdict


def mesh_route_from(resource: Resource) -> MeshRoute:
    ns = resource_namespace(resource)
    name, _ = object_name(resource)
    spec = resource.props.get("spec")
    if spec is UNKNOWN:
        return MeshRoute(resource.kind, ns, name, UNKNOWN, UNKNOWN, resource, UNKNOWN)
    spec = as_dict(spec)
    raw_parents = spec.get("parentRefs")
    parents: Any = UNKNOWN if raw_parents is UNKNOWN else []
    for ref in [] if raw_parents is UNKNOWN else as_list(raw_parents):
        kind = dig(ref, "kind")
        group = dig(ref, "group") if isinstance(ref, dict) and "group" in ref else GATEWAY_GROUP  # its default
        if ref is UNKNOWN or kind is UNKNOWN or group is UNKNOWN:
            parents.append(ParentRef(UNKNOWN))
            continue
        if kind != "Service" or group not in ("", "core"):
            continue  # a Gateway (or anything else) is another controller's parent
        pns = dig(ref, "namespace")
        if pns is UNKNOWN:
            parents.append(ParentRef(UNKNOWN))
        elif (pns or ns) == ns:  # consumer routes (a parent in another namespace) are not supported
            parent = dig(ref, "name")
            parents.append(ParentRef(parent if known_or_unknown_text(parent) else "", dig(ref, "port"),
                                     dig(ref, "sectionName")))
    raw_rules = spec.get("rules")
    rules: Any = UNKNOWN if raw_rules is UNKNOWN else []
    kept: Any = UNKNOWN if raw_rules is UNKNOWN else []
    for k, rule in enumerate([] if raw_rules is UNKNOWN else as_list(raw_rules)):
        if GATEWAY_ROUTE_TRAFFIC[resource.kind] is not ann.TrafficType.HTTP:
            if k > 0:
                break  # a TCPRoute/UDPRoute is applied with its first rule only
            kept.append(True)  # L4 rules have no matches
        else:
            kept.append(_rule_kept(resource.kind, rule))
        refs = dig(rule, "backendRefs")
        backends: list[Backend] = []
        for j, ref in enumerate([UNKNOWN] if refs is UNKNOWN else as_list(refs)):
            if ref is UNKNOWN:
                backends.append(Backend(UNKNOWN, UNKNOWN, port=UNKNOWN, index=j))
                continue
            weight = _gateway_weight(dig(ref, "weight"))
            if weight is None:
                continue  # the controller ignores it
            kind, group, bns = dig(ref, "kind"), dig(ref, "group"), dig(ref, "namespace")
            if UNKNOWN in (kind, group, bns):
                backends.append(Backend(UNKNOWN, weight, port=dig(ref, "port"), index=j))
            elif (kind or "Service") == "Service" and (group or "") in ("", "core") and (bns or ns) == ns:
                backends.append(Backend(dig(ref, "name"), weight, dig(ref, "name"), port=dig(ref, "port"), index=j))
        rules.append(backends)
    return MeshRoute(resource.kind, ns, name, parents, rules, resource, kept)


def _spec(resource: Resource) -> Any:
    """SMI v1alpha1 objects keep their fields at the top level; later versions under ``spec``."""
    spec = resource.props.get("spec")
    if spec is UNKNOWN:
        return UNKNOWN
    if isinstance(spec, dict):
        return spec
    return resource.props


def _identity(raw: Any, default_ns: Any) -> Any:
    if raw is UNKNOWN:
        return UNKNOWN
    if not isinstance(raw, dict):
        return None
    ns, name, problems = raw.get("namespace"), raw.get("name"), []
    if ns is None or ns == "":
        ns = default_ns
    elif not known_or_unknown_text(ns):
        problems.append(f"namespace {ns!r} is not a string")
        ns = None
    if name is not None and not known_or_unknown_text(name):
        problems.append(f"name {name!r} is not a string")
        name = None
    return Identity(ns, name, raw.get("kind"), "; ".join(problems) or None)


def traffic_target_from(resource: Resource) -> TrafficTarget:
    ns = resource_namespace(resource)
    name, _ = object_name(resource)
    spec = _spec(resource)
    if spec is UNKNOWN:
        return TrafficTarget(ns, name, UNKNOWN, UNKNOWN, UNKNOWN, resource.group_version[1], resource)
    destination = _identity(spec.get("destination"), ns)
    raw_sources = spec.get("sources")
    sources: Any = UNKNOWN if raw_sources is UNKNOWN else [_identity(s, ns) for s in as_list(raw_sources)]
    raw_rules = spec.get("rules") if "rules" in spec else spec.get("specs")  # v1alpha1 says "specs"
    if raw_rules is UNKNOWN:
        rules: Any = UNKNOWN
    else:
        rules = []
        for r in as_list(raw_rules):
            if r is UNKNOWN:
                rules.append(Rule(UNKNOWN, UNKNOWN, UNKNOWN))
            elif isinstance(r, dict):
                matches = r.get("matches")
                rules.append(Rule(r.get("kind"), r.get("name"),
                                  UNKNOWN if matches is UNKNOWN else [m for m in as_list(matches)]))
    return TrafficTarget(ns, name, destination, sources, rules, resource.group_version[1], resource,
                         UNKNOWN if is_unknown(dig(spec, "destination")) else dig(spec, "destination", "port"))


def route_from(resource: Resource) -> Route:
    spec = _spec(resource)
    matches = UNKNOWN if spec is UNKNOWN else spec.get("matches")
    name, _ = object_name(resource)
    return Route(resource.kind, resource_namespace(resource), name, matches, resource)


def traffic_split_from(resource: Resource) -> TrafficSplit:
    ns = resource_namespace(resource)
    name, _ = object_name(resource)
    spec = _spec(resource)
    if spec is UNKNOWN:
        return TrafficSplit(ns, name, UNKNOWN, UNKNOWN, UNKNOWN, resource.group_version[1], resource)
    raw_backends = spec.get("backends")
    backends: Any = UNKNOWN if raw_backends is UNKNOWN else []
    for i, b in enumerate([] if raw_backends is UNKNOWN else as_list(raw_backends)):
        written = dig(b, "service")
        service, problem = split_service_name(written, ns)
        backends.append(Backend(service, dig(b, "weight"), written, problem, index=i))
    matches = spec.get("matches")
    written = spec.get("service")
    root, problem = split_service_name(written, ns)
    return TrafficSplit(ns, name, root, backends, UNKNOWN if matches is UNKNOWN else as_list(matches),
                        resource.group_version[1], resource, written, problem)


# ------------------------------------------------------------------------------------ the stack view


@dataclass
class Resolution:
    """Which ServiceAccounts run the pods behind a Service, as far as the stack tells."""

    service_accounts: set[Identity]
    workloads: list[Workload]
    """The workloads whose pods are (or, while not known yet, may be) its endpoints."""
    reason: str | None = None
    """Why it could not be resolved (None when resolved, or when it is only unknown for now)."""
    unknown: bool = False
    no_endpoints: bool = False
    """Its selector selects pods of this stack, but none is an endpoint of a port the controller meshes
    (a named targetPort none of them declares): the controller sees no pods behind it."""


class StackView:
    """Everything the mesh rules need, indexed, built once per stack validation."""

    def __init__(self, resources: Iterable[Resource]) -> None:
        self.resources = list(resources)
        self.services: dict[tuple[str, str], Service] = {}
        self.unknown_services: list[Resource] = []
        self.workloads: list[Workload] = []
        self.traffic_targets: list[TrafficTarget] = []
        self.routes: list[Route] = []
        self.splits: list[TrafficSplit] = []
        self.mesh_routes: list[MeshRoute] = []
        self.controllers: list[Workload] = []
        self.proxies: list[Workload] = []
        self.mesh_installs: list[Resource] = []
        # the controllers of the stack's other clusters, for a cluster that declares none (see
        # lightmesh_policies.rules._views): it may well be one of theirs under another provider
        self.other_controllers: list[Workload] = []
        for r in self.resources:
            self._add(r)

    def _add(self, r: Resource) -> None:
        group, _ = r.group_version
        if r.type in (SERVICE, SERVICE_PATCH):
            self._add_service(r)
        elif r.type == MESH_INSTALL_COMPONENT:
            self.mesh_installs.append(r)
        elif group == ACCESS_GROUP and r.kind == "TrafficTarget":
            self.traffic_targets.append(traffic_target_from(r))
        elif group == SPECS_GROUP and r.kind in ROUTE_KINDS:
            self.routes.append(route_from(r))
        elif group == SPLIT_GROUP and r.kind == "TrafficSplit":
            self.splits.append(traffic_split_from(r))
        elif group == GATEWAY_GROUP and r.kind in GATEWAY_ROUTE_TRAFFIC:
            self.mesh_routes.append(mesh_route_from(r))
        elif (w := workload_from(r)) is not None:
            self.workloads.append(w)
            role = _role(w)
            if role == "controller":
                self.controllers.append(w)
            elif role == "proxy":
                self.proxies.append(w)

    def _add_service(self, r: Resource) -> None:
        ns, (name, _) = resource_namespace(r), object_name(r)
        if is_unknown(ns) or is_unknown(name):
            self.unknown_services.append(r)
            return
        svc = self.services.get((ns, name))
        if svc is None:
            svc = self.services[(ns, name)] = Service(ns, name)
        svc.resources.append(r)
        svc.by_mesh_service = svc.by_mesh_service or MESH_SERVICE_COMPONENT in r.parent_types
        annotations = dig(r.props, "metadata", "annotations")
        if annotations is UNKNOWN:
            svc.annotations = UNKNOWN
        elif isinstance(annotations, dict) and isinstance(svc.annotations, dict):
            svc.annotations = {**svc.annotations, **annotations}  # a patch's keys win
        if r.type == SERVICE:
            svc.created = True
            selector = dig(r.props, "spec", "selector")
            svc.selector = selector if selector is UNKNOWN or isinstance(selector, dict) else None
            ports = dig(r.props, "spec", "ports")
            svc.ports = ports if ports is UNKNOWN or isinstance(ports, list) else None
            svc.external_name = dig(r.props, "spec", "type") == "ExternalName"

    # ---- ACL mode

    @property
    def mesh_controllers(self) -> list[Workload]:
        """This cluster's controllers; if it declares none, the stack's other clusters' ones."""
        return self.controllers or self.other_controllers

    def acl_mode(self) -> Any:
        """True/False from the controller(s) in this stack; None if the stack installs no controller."""
        if not self.mesh_controllers:
            return None
        flags = [acl_flag(c) for c in self.mesh_controllers]
        if any(f is True for f in flags):
            return True
        if any(f is UNKNOWN for f in flags):
            return UNKNOWN
        return False

    def ignore_settings(self) -> IgnoreSettings:
        """What the stack's controller never meshes (the controller's defaults without one)."""
        for c in self.mesh_controllers:
            return controller_ignore_settings(c)
        return IgnoreSettings()

    def default_traffic_type(self) -> Any:
        """The controller's default traffic type (http without a controller); UNKNOWN if not known yet."""
        for c in self.mesh_controllers:
            return default_traffic_type_flag(c)
        return ann.TrafficType.HTTP

    # ---- declared objects, as far as names are known

    def service_declared(self, namespace: str, name: str) -> Any:
        """True/False; UNKNOWN while a Service whose name or namespace is not known yet could be it."""
        if (namespace, name) in self.services:
            return True
        return UNKNOWN if self._unknown_service_may_be(namespace, name, (SERVICE, SERVICE_PATCH)) else False

    def _unknown_service_may_be(self, namespace: str, name: str, types: tuple[str, ...]) -> bool:
        for r in self.unknown_services:
            ns, (other, _) = resource_namespace(r), object_name(r)
            if r.type in types and (is_unknown(ns) or ns == namespace) and (is_unknown(other) or other == name):
                return True
        return False

    def find_route(self, kind: str, namespace: Any, name: Any) -> Any:
        """The route object; None when the stack surely declares none; UNKNOWN when one whose name or
        namespace is not known yet could be it (or the name asked for is not known)."""
        if is_unknown(namespace) or is_unknown(name):
            return UNKNOWN
        maybe = False
        for r in self.routes:
            if r.kind != kind:
                continue
            if r.namespace == namespace and r.name == name:
                return r
            if (is_unknown(r.namespace) or r.namespace == namespace) and (is_unknown(r.name) or r.name == name):
                maybe = True
        return UNKNOWN if maybe else None

    def splits_rooted_at(self, svc: Service) -> Any:
        """The TrafficSplits whose root is ``svc``; UNKNOWN when none is known to be but a split whose
        root or namespace is not known yet could be."""
        found, maybe = [], False
        for split in self.splits:
            if split.service_problem:
                continue  # a root the controller refuses (in another namespace): it ignores the split
            if split.namespace == svc.namespace and split.service == svc.name:
                found.append(split)
            elif ((is_unknown(split.namespace) or split.namespace == svc.namespace)
                  and (is_unknown(split.service) or split.service == svc.name)):
                maybe = True
        return UNKNOWN if maybe and not found else found

    def routes_attached_to(self, svc: Service, traffic: Any) -> Any:
        """The Gateway API routes the controller attaches to ``svc`` (of traffic type ``traffic``; when
        that is UNKNOWN, each route is judged as if the Service were of its type): see
        :meth:`MeshRoute.may_attach_to`. UNKNOWN when none is known to be but one could be (its
        parents, namespace, ports or matches are not known yet)."""
        found, maybe = [], False
        for route in self.mesh_routes:
            attached = route.may_attach_to(svc, traffic)
            if attached is True:
                found.append(route)
            elif attached is UNKNOWN:
                maybe = True
        return UNKNOWN if maybe and not found else found

    def route_backend_kept(self, route: MeshRoute, backend: Backend) -> tuple[Any, str | None]:
        """Whether the controller keeps a Gateway API backendRef (a Service of the route's namespace) of
        ``route``, as ``topology._mesh_routes`` decides: its ``port`` must be a port the controller meshes
        for that Service (of the protocol of the Service's own traffic type), else it drops the backend
        ("... is not a mesh Service port; backend ignored"). ``(True, None)``; ``(False, why)`` when it
        surely drops it; ``(UNKNOWN, None)`` when that is not known yet; ``(None, None)`` when the stack
        cannot tell (the Service, or its ports, are not declared in this stack)."""
        if is_unknown(backend.port) or is_unknown(backend.service) or is_unknown(route.namespace):
            return UNKNOWN, None
        number = port_number(backend.port)
        if number is None:
            return False, ("no port is set (the controller sends to a port of the Service, which it must name)"
                           if backend.port is None else f"port {shown(backend.port)} is not a port number")
        if not isinstance(backend.service, str) or not backend.service:
            return None, None
        svc = self.services.get((route.namespace, backend.service))
        if svc is None:
            maybe = self._unknown_service_may_be(route.namespace, backend.service, (SERVICE,))
            return (UNKNOWN if maybe else None), None
        if svc.external_name:
            return False, f"{svc.describe()} is an ExternalName Service, which the controller never meshes"
        traffic = svc.traffic_type(self.default_traffic_type())
        ports = svc.meshed_ports(traffic)
        if ports is UNKNOWN:
            return UNKNOWN, None
        if not isinstance(ports, list):
            return None, None
        if any(p.port == number for p in ports):
            return True, None
        meshed = ", ".join(str(p.port) for p in ports) or "none"
        protocol = "UDP" if traffic is ann.TrafficType.UDP else "TCP"
        return False, (f"port {number} is not a port of {svc.describe()} the controller meshes ({meshed}: its "
                       f"{protocol} ports, by its traffic type {traffic.value})")

    def services_of_account(self, identity: Identity) -> Any:
        """Every declared Service (meshed by annotation or not: the controller meshes every Service)
        whose selected pods run as ``identity``, each with its resolution; UNKNOWN when a Service not
        known yet could be one of them."""
        for r in self.unknown_services:
            ns = resource_namespace(r)
            if is_unknown(ns) or ns == identity.namespace:
                return UNKNOWN
        out = []
        for svc in self.services.values():
            if svc.namespace != identity.namespace or svc.external_name:
                continue
            resolution = self.resolve(svc)
            if identity in resolution.service_accounts:
                out.append((svc, resolution))
            elif resolution.unknown:
                return UNKNOWN
        return out

    # ---- identities

    def resolve(self, svc: Service) -> Resolution:
        if svc.selector is UNKNOWN:
            return Resolution(set(), [], unknown=True)
        if not svc.created and self._unknown_service_may_be(svc.namespace, svc.name, (SERVICE,)):
            return Resolution(set(), [], unknown=True)  # its declaration may be the Service not known yet
        if not svc.selector:
            if svc.created:
                reason = "it has no pod selector"
            else:
                reason = ("it is an existing Service annotated by a ServicePatch and its selector is not declared "
                          "in this stack")
            return Resolution(set(), [], reason=reason)
        selected, unknown = [], False
        uncertain: list[Workload] = []  # workloads it may select (a namespace or label not known yet)
        for w in self.workloads:
            if w.namespace is UNKNOWN:
                unknown = True
                uncertain.append(w)
                continue
            if w.namespace != svc.namespace:
                continue
            verdict = selects(svc.selector, w.pod_labels)
            if verdict is UNKNOWN:
                unknown = True
                uncertain.append(w)
            elif verdict:
                selected.append(w)
        if not selected and not unknown:
            selector = ",".join(f"{k}={v}" for k, v in sorted(svc.selector.items()))
            return Resolution(set(), [], reason=(f"its selector {selector} matches no Deployment, StatefulSet, "
                                                 f"DaemonSet, ReplicaSet, Job, CronJob or Pod declared in this "
                                                 f"stack in namespace {svc.namespace}"))
        # Only the pods Kubernetes makes endpoints of a port the controller meshes are the Service's: a
        # named targetPort takes only the pods declaring that port name (with the port's protocol).
        traffic = svc.traffic_type(self.default_traffic_type())
        found, maybe = [], []
        for w in selected:
            serves = svc.serves(w, traffic)
            if serves is True:
                found.append(w)
            elif serves is UNKNOWN:
                maybe.append(w)
        if maybe or any(is_unknown(w.service_account) for w in found):
            unknown = True
        malformed = [w for w in found if w.service_account_problem]
        if malformed:
            return Resolution(set(), found, reason="; ".join(f"{w.describe()}: {w.service_account_problem}"
                                                             for w in malformed))
        accounts = {Identity(w.namespace, w.service_account) for w in found if not is_unknown(w.service_account)}
        if not found and not unknown:
            # pods selected, but none is an endpoint of the ports the controller meshes: it has no pods to
            # allow traffic to, as the controller sees it (and Kubernetes gives the Service no endpoints)
            return Resolution(set(), [], no_endpoints=True)
        # A workload it may select may run as any ServiceAccount (for the ports its pods lead to): known
        # only after apply.
        maybe += [replace(w, service_account=UNKNOWN) for w in uncertain]
        return Resolution(accounts, found + maybe, unknown=unknown)

    def mesh_services_of_account(self, identity: Identity) -> Any:
        """All mesh Services whose selected pods run as ``identity``; UNKNOWN when a Service that is
        not known yet (its name, annotations or pods) could be one of them."""
        for r in self.unknown_services:
            ns = resource_namespace(r)
            if is_unknown(ns) or ns == identity.namespace:
                return UNKNOWN
        out = []
        for svc in self.services.values():
            meshed = svc.is_meshed
            if meshed is False:
                continue
            resolution = self.resolve(svc)
            if identity not in resolution.service_accounts:
                if resolution.unknown:
                    return UNKNOWN
                continue
            if meshed is UNKNOWN:
                return UNKNOWN
            out.append(svc)
        return out

    def targets_for(self, identity: Identity) -> list[TrafficTarget]:
        """The TrafficTargets known to have ``identity`` as destination (see :meth:`destination_may_be`),
        except those the controller ignores as a whole (:attr:`TrafficTarget.ignored_by_controller`)."""
        return [t for t in self.traffic_targets if isinstance(t.destination, Identity) and t.destination == identity
                and not t.ignored_by_controller]

    def destination_may_be(self, identity: Identity) -> bool:
        """Whether a TrafficTarget whose destination is not known yet could have ``identity`` as destination."""
        for t in self.traffic_targets:
            dest = t.destination
            if dest is UNKNOWN or (isinstance(dest, Identity) and not dest.known and dest.may_be(identity)):
                return True
        return False
