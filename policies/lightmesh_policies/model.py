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

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Iterable

from pulumi_policy.proxy import UnknownValueError, _is_unknown  # the SDK's own sentinel test

from lightmesh_policies._runtime import annotations as ann
from lightmesh_policies._runtime import cluster_key, controller_cli, controller_model, wire
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


_SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """``repr(value)`` for a message, cut short: a value thousands of characters long (a number of 5,000
    digits) would bury the message, and the repr of an int past 4,300 digits raises."""
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
                    cluster_of(provider))


def cluster_of(provider: Any) -> str:
    """The :attr:`Resource.cluster` of a resource given ``provider`` (a ``PolicyProviderResource``)."""
    if provider is None:
        return ""
    key = cluster_key(getattr(provider, "resource_type", None), as_dict(materialize(getattr(provider, "props", None))))
    return key if key is not None else str(getattr(provider, "urn", "") or "unknown")


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
    ports: Any = None  # spec.ports list / None (not declared in the stack) / UNKNOWN
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

    def exposed_ports(self) -> Any:
        """Port numbers traffic may be allowed on: each port and its numeric targetPort (the controller
        accepts either in a TCPRoute/UDPRoute). None when the stack does not declare the ports."""
        if self.ports is UNKNOWN:
            return UNKNOWN
        if not isinstance(self.ports, list):
            return None
        numbers: set[int] = set()
        for entry in self.ports:
            for key in ("port", "targetPort"):
                number = port_number(dig(entry, key))
                if number is UNKNOWN:
                    return UNKNOWN
                if number is not None:
                    numbers.add(number)
        return numbers

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
    return Workload(resource.kind, namespace_of(resource.props), name, labels, sa, spec, resource, problem)


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


def _controller_switches() -> frozenset[str]:
    """The controller's flags that take no value (``--acl``, ``--leader-election``), from its own parser."""
    parser = argparse.ArgumentParser(add_help=False)
    controller_cli.configure(parser)
    return frozenset(opt for action in parser._actions if action.nargs == 0 for opt in action.option_strings)


CONTROLLER_SWITCHES = _controller_switches()
ACL_WORDS = ("--acl", "--acl=true")


def _command_lines(pod_spec: Any) -> list:
    """The command line (command + args) of every container, each a list or UNKNOWN; a single UNKNOWN
    stands for a pod spec or container list not known yet (it may hold any container)."""
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
                lines.append(_command_line(container))
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
    for line in _command_lines(workload.pod_spec):
        if line is UNKNOWN:
            verdict = UNKNOWN
            continue
        for i, word in enumerate(line):
            if word in ACL_WORDS:
                return True
            if is_unknown(word) and not _is_option_value(line, i):
                verdict = UNKNOWN
    return verdict


_DEFAULT_TYPE_FLAGS = ("--default-mode",)  # the controller's flag (lightmesh controller --help)


def default_traffic_type_flag(workload: Workload) -> Any:
    """The controller's default traffic type (``--default-mode X`` or ``=X``), http if unset; UNKNOWN
    when the flag's value, or a word that could be the flag, is not known yet."""
    unknown = False
    for line in _command_lines(workload.pod_spec):
        if line is UNKNOWN:
            unknown = True
            continue
        for i, word in enumerate(line):
            if is_unknown(word):
                unknown = unknown or not _is_option_value(line, i)
                continue
            if not isinstance(word, str):
                continue
            value: Any = None
            if word in _DEFAULT_TYPE_FLAGS and i + 1 < len(line):
                value = line[i + 1]
            elif word.startswith(tuple(f + "=" for f in _DEFAULT_TYPE_FLAGS)):
                value = word.split("=", 1)[1]
            if is_unknown(value):
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

    def ignores(self, namespace: str, name: str) -> Any:
        """True/False for the Service ``namespace/name``; UNKNOWN when it depends on a value not known yet."""
        if namespace in controller_model.ALWAYS_IGNORED_NAMESPACES \
                or (namespace, name) in controller_model.ALWAYS_IGNORED_SERVICES:
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


def controller_ignore_settings(workload: Workload) -> IgnoreSettings:
    """The namespaces a controller workload ignores, read from its command line with the controller's
    own flag parser (``--namespace``, ``--watch-namespaces``, ``--ignore-namespaces``). A value not
    known yet makes that setting UNKNOWN; a free-standing word not known yet could be any of them."""
    words: Any = None
    for line in _command_lines(workload.pod_spec):
        if line is UNKNOWN:
            return IgnoreSettings(UNKNOWN, UNKNOWN, UNKNOWN)
        if "controller" in line:
            words = line[line.index("controller") + 1:]
            break
    unknown_options: set[str] = set()
    known: list[str] = []
    for i, word in enumerate(words or []):
        if is_unknown(word):
            if not _is_option_value(words, i):
                return IgnoreSettings(UNKNOWN, UNKNOWN, UNKNOWN)
            unknown_options.add(known.pop())  # the option whose value it is, left out of the parse
        elif isinstance(word, str):
            known.append(word)
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    controller_cli.configure(parser)
    try:
        flags, _ = parser.parse_known_args(known)
    except (argparse.ArgumentError, SystemExit):  # a controller that would not start: judge by the defaults
        return IgnoreSettings()

    def value(option: str, parsed: Any) -> Any:
        if option in unknown_options:
            return UNKNOWN
        return tuple(parsed) if isinstance(parsed, list) else parsed
    return IgnoreSettings(value("--namespace", flags.namespace), value("--watch-namespaces", flags.watch_namespaces),
                          value("--ignore-namespaces", flags.ignore_namespaces))


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

    def describe(self) -> str:
        return f"TrafficTarget {self.namespace}/{self.name}"


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
            ports = dig(r.props, "spec", "ports")
            svc.ports = ports if ports is UNKNOWN or isinstance(ports, list) else None

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
            ns, (other, _) = namespace_of(r.props), object_name(r)
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
            if split.namespace == svc.namespace and split.service == svc.name:
                found.append(split)
            elif ((is_unknown(split.namespace) or split.namespace == svc.namespace)
                  and (is_unknown(split.service) or split.service == svc.name)):
                maybe = True
        return UNKNOWN if maybe and not found else found

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
        malformed = [w for w in found if w.service_account_problem]
        if malformed:
            return Resolution(set(), found, reason="; ".join(f"{w.describe()}: {w.service_account_problem}"
                                                             for w in malformed))
        accounts = {Identity(w.namespace, w.service_account) for w in found if not is_unknown(w.service_account)}
        if not found and not unknown:
            selector = ",".join(f"{k}={v}" for k, v in sorted(svc.selector.items()))
            return Resolution(set(), [], reason=(f"its selector {selector} matches no Deployment, StatefulSet, "
                                                 f"DaemonSet, ReplicaSet, Job, CronJob or Pod declared in this "
                                                 f"stack in namespace {svc.namespace}"))
        return Resolution(accounts, found, unknown=unknown)

    def mesh_services_of_account(self, identity: Identity) -> Any:
        """All mesh Services whose selected pods run as ``identity``; UNKNOWN when a Service that is
        not known yet (its name, annotations or pods) could be one of them."""
        for r in self.unknown_services:
            ns = namespace_of(r.props)
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
        """The TrafficTargets known to have ``identity`` as destination (see :meth:`destination_may_be`)."""
        return [t for t in self.traffic_targets if isinstance(t.destination, Identity) and t.destination == identity]

    def destination_may_be(self, identity: Identity) -> bool:
        """Whether a TrafficTarget whose destination is not known yet could have ``identity`` as destination."""
        for t in self.traffic_targets:
            dest = t.destination
            if dest is UNKNOWN or (isinstance(dest, Identity) and not dest.known and dest.may_be(identity)):
                return True
        return False
