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
* the **mesh install**: the controller Deployment (ACL mode is read from its ``--acl`` argument, i.e.
  from what ``MeshInstall`` rendered) and the proxy DaemonSet.

Unknown values (computed outputs during ``pulumi preview``) are the reason this layer exists: the
engine's props raise ``UnknownValueError`` when an unknown is touched, which would abort a whole
stack rule. :func:`materialize` copies the props once, replacing every unknown with :data:`UNKNOWN`;
rules then skip exactly the facts they cannot know yet and still judge everything else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Iterable

from pulumi_policy.proxy import UnknownValueError, _is_unknown  # the SDK's own sentinel test

from lightmesh_policies._runtime import annotations as ann
from lightmesh_policies._runtime import wire


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


def as_list(value: Any) -> list:
    """A list field: [] when missing or malformed; callers check :func:`is_unknown` first if it matters."""
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


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
                         parent: Any = None) -> Resource:
    """Build a :class:`Resource` from what the policy SDK gives (``PolicyResource`` or validation args)."""
    parents: list[str] = []
    while parent is not None:
        parents.insert(0, parent.resource_type)
        parent = getattr(parent, "parent", None)
    parent_types = tuple(p for p in parents if p != "pulumi:pulumi:Stack") or parent_types_from_urn(urn)
    return Resource(resource_type, name, urn, as_dict(materialize(props)), parent_types)


# ------------------------------------------------------------------------------------------- names


def namespace_of(props: dict) -> Any:
    """The object's namespace; the provider's default namespace ("default") when unset."""
    ns = dig(props, "metadata", "namespace")
    if ns is UNKNOWN:
        return UNKNOWN
    return ns if isinstance(ns, str) and ns else "default"


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
    created: bool = False  # a Service object is declared (not only patched)
    by_mesh_service: bool = False
    resources: list[Resource] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def urn(self) -> str:
        return self.resources[0].urn

    @property
    def known_annotations(self) -> dict:
        """The annotations whose values are known (unknown ones are judged once they are)."""
        if not isinstance(self.annotations, dict):
            return {}
        return {k: v for k, v in self.annotations.items() if not is_unknown(v)}

    @property
    def is_meshed(self) -> bool:
        return self.by_mesh_service or ann.is_meshed(self.known_annotations)

    def traffic_type(self, default: ann.TrafficType = ann.TrafficType.HTTP) -> ann.TrafficType:
        settings, _ = ann.parse_annotations_lenient(self.known_annotations, default)
        return settings.traffic_type

    def describe(self) -> str:
        how = "" if self.created else " (existing Service annotated by a ServicePatch)"
        return f"Service {self.key}{how}"


# --------------------------------------------------------------------------------------- workloads

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "Pod"}


@dataclass
class Workload:
    kind: str
    namespace: Any
    name: Any
    pod_labels: Any  # dict or UNKNOWN
    service_account: Any  # str or UNKNOWN
    pod_spec: Any
    resource: Resource

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
    if spec is UNKNOWN:
        sa: Any = UNKNOWN
    else:
        sa = dig(spec, "serviceAccountName")
        if sa is None:
            sa = dig(spec, "serviceAccount")  # deprecated alias
        if sa is None or sa == "":
            sa = "default"  # what the API server assigns
    name, _ = object_name(resource)
    return Workload(resource.kind, namespace_of(resource.props), name, labels, sa, spec, resource)


def selects(selector: dict, labels: Any) -> Any:
    """Does a Service selector select pods with ``labels``? UNKNOWN when labels are not known yet."""
    if labels is UNKNOWN or any(is_unknown(v) for v in selector.values()):
        return UNKNOWN
    return all(labels.get(k) == v for k, v in selector.items())


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
    """"controller" / "proxy" when the workload is a Lightmesh control- or data-plane workload."""
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
        words = [w for w in line if isinstance(w, str)]
        mentions_mesh = any("lightmesh" in w for w in words) or (isinstance(image, str) and "lightmesh" in image)
        if not mentions_mesh:
            continue
        for role in ("controller", "proxy"):
            if role in words:
                return role
    return None


def workload_role(resource: Resource) -> str | None:
    workload = workload_from(resource)
    return _role(workload) if workload else None


def acl_flag(workload: Workload) -> Any:
    """True/False from the controller's ``--acl`` argument; UNKNOWN when its args are not known."""
    verdict: Any = False
    for container in containers_of(workload.pod_spec):
        line = _command_line(container)
        if line is UNKNOWN:
            verdict = UNKNOWN
            continue
        for word in line:
            if is_unknown(word):
                verdict = UNKNOWN if verdict is False else verdict
            elif word == "--acl" or word == "--acl=true":
                return True
    return verdict


def default_traffic_type_flag(workload: Workload) -> ann.TrafficType:
    """The controller's default traffic type (``--default-traffic-type X`` or ``=X``), http if unset."""
    for container in containers_of(workload.pod_spec):
        line = _command_line(container)
        if not isinstance(line, list):
            continue
        words = [w if isinstance(w, str) else "" for w in line]
        for i, word in enumerate(words):
            value = None
            if word in ("--default-traffic-type", "--default-mode") and i + 1 < len(words):
                value = words[i + 1]
            elif word.startswith(("--default-traffic-type=", "--default-mode=")):
                value = word.split("=", 1)[1]
            if value:
                try:
                    return ann.TrafficType(value.lower())
                except ValueError:
                    pass
    return ann.TrafficType.HTTP


# --------------------------------------------------------------------------------------------- SMI

ACCESS_GROUP = "access.smi-spec.io"
SPECS_GROUP = "specs.smi-spec.io"
SPLIT_GROUP = "split.smi-spec.io"
ROUTE_KINDS = ("HTTPRouteGroup", "TCPRoute", "UDPRoute")


@dataclass(frozen=True)
class Identity:
    namespace: Any
    name: Any
    kind: Any = field(default="ServiceAccount", compare=False)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


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

    def describe(self) -> str:
        return f"TrafficTarget {self.namespace}/{self.name}"


@dataclass
class Route:
    kind: str
    namespace: Any
    name: Any
    matches: Any  # HTTPRouteGroup: list of match dicts; TCP/UDP: raw; or UNKNOWN
    resource: Resource

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
    weight: Any


@dataclass
class TrafficSplit:
    namespace: Any
    name: Any
    service: Any
    backends: Any  # list[Backend] or UNKNOWN
    matches: Any  # list of {kind, name} or UNKNOWN
    version: str
    resource: Resource

    def describe(self) -> str:
        return f"TrafficSplit {self.namespace}/{self.name}"


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
    ns = raw.get("namespace")
    return Identity(default_ns if ns in (None, "") else ns, raw.get("name"), raw.get("kind"))


def traffic_target_from(resource: Resource) -> TrafficTarget:
    ns = namespace_of(resource.props)
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
    return TrafficTarget(ns, name, destination, sources, rules, resource.group_version[1], resource)


def route_from(resource: Resource) -> Route:
    spec = _spec(resource)
    matches = UNKNOWN if spec is UNKNOWN else spec.get("matches")
    name, _ = object_name(resource)
    return Route(resource.kind, namespace_of(resource.props), name, matches, resource)


def traffic_split_from(resource: Resource) -> TrafficSplit:
    ns = namespace_of(resource.props)
    name, _ = object_name(resource)
    spec = _spec(resource)
    if spec is UNKNOWN:
        return TrafficSplit(ns, name, UNKNOWN, UNKNOWN, UNKNOWN, resource.group_version[1], resource)
    raw_backends = spec.get("backends")
    backends: Any = UNKNOWN if raw_backends is UNKNOWN else [
        Backend(dig(b, "service"), dig(b, "weight")) for b in as_list(raw_backends)]
    matches = spec.get("matches")
    return TrafficSplit(ns, name, spec.get("service"), backends,
                        UNKNOWN if matches is UNKNOWN else as_list(matches), resource.group_version[1], resource)


# ------------------------------------------------------------------------------------ the stack view


@dataclass
class Resolution:
    """Which ServiceAccounts run the pods behind a Service, as far as the stack tells."""

    service_accounts: set[Identity]
    workloads: list[Workload]
    reason: str | None = None
    """Why it could not be resolved (None when resolved, or when it is only unknown for now)."""
    unknown: bool = False


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
        self.controllers: list[Workload] = []
        self.proxies: list[Workload] = []
        self.mesh_installs: list[Resource] = []
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
        elif (w := workload_from(r)) is not None:
            self.workloads.append(w)
            role = _role(w)
            if role == "controller":
                self.controllers.append(w)
            elif role == "proxy":
                self.proxies.append(w)

    def _add_service(self, r: Resource) -> None:
        ns, (name, _) = namespace_of(r.props), object_name(r)
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

    # ---- ACL mode

    def acl_mode(self) -> Any:
        """True/False from the controller(s) in this stack; None if the stack installs no controller."""
        if not self.controllers:
            return None
        flags = [acl_flag(c) for c in self.controllers]
        if any(f is True for f in flags):
            return True
        if any(f is UNKNOWN for f in flags):
            return UNKNOWN
        return False

    def default_traffic_type(self) -> ann.TrafficType:
        for c in self.controllers:
            return default_traffic_type_flag(c)
        return ann.TrafficType.HTTP

    # ---- identities

    def resolve(self, svc: Service) -> Resolution:
        if svc.selector is UNKNOWN:
            return Resolution(set(), [], unknown=True)
        if not svc.selector:
            if svc.created:
                reason = "it has no pod selector"
            else:
                reason = ("it is an existing Service annotated by a ServicePatch and its selector is not declared "
                          "in this stack")
            return Resolution(set(), [], reason=reason)
        found, unknown = [], False
        for w in self.workloads:
            if w.namespace is UNKNOWN:
                unknown = True
                continue
            if w.namespace != svc.namespace:
                continue
            verdict = selects(svc.selector, w.pod_labels)
            if verdict is UNKNOWN:
                unknown = True
            elif verdict:
                found.append(w)
        if any(is_unknown(w.service_account) for w in found):
            unknown = True
        accounts = {Identity(w.namespace, w.service_account) for w in found if not is_unknown(w.service_account)}
        if not found and not unknown:
            selector = ",".join(f"{k}={v}" for k, v in sorted(svc.selector.items()))
            return Resolution(set(), [], reason=(f"its selector {selector} matches no Deployment, StatefulSet, "
                                                 f"DaemonSet, ReplicaSet, Job, CronJob or Pod declared in this "
                                                 f"stack in namespace {svc.namespace}"))
        return Resolution(accounts, found, unknown=unknown)

    def services_of_account(self, identity: Identity) -> list[Service]:
        """Mesh Services whose selected pods run as ``identity`` (as far as known)."""
        out = []
        for svc in self.services.values():
            if svc.is_meshed and identity in self.resolve(svc).service_accounts:
                out.append(svc)
        return out

    def targets_for(self, identity: Identity) -> list[TrafficTarget]:
        return [t for t in self.traffic_targets if isinstance(t.destination, Identity) and t.destination == identity]

    def route(self, kind: str, namespace: Any, name: Any) -> Route | None:
        for r in self.routes:
            if r.kind == kind and r.namespace == namespace and r.name == name:
                return r
        return None
