"""``lightmesh render PROGRAM_DIR -o OUT_DIR``: a Pulumi program's Kubernetes objects, offline.

The program runs under the Pulumi SDK's mock engine (``pulumi.runtime.set_mocks``): no CLI, no
state backend, no cluster. Every Kubernetes object the program declares is written as YAML, one file
per resource — a preview of what ``pulumi up`` would apply. What a mock engine cannot know is
documented rather than guessed:

* auto-named objects get ``<resource name>-<8 hex>`` (a stable hash instead of Pulumi's random
  suffix), so renders are reproducible;
* ``*Patch`` resources modify objects that already exist in a cluster (e.g. the CoreDNS ConfigMap):
  they are listed, not written, because there is nothing to patch offline; so are custom resources
  that are not Kubernetes objects (dynamic providers such as MeshInstall's CoreDNS patch
  ``pulumi-python:dynamic/lightmesh:ClusterDnsPatch``, other providers' resources), with their type;
* reads of existing objects (``ConfigMap.get``) see a stock kubeadm ``kube-system/coredns``
  ConfigMap and nothing else.

Two resources that declare one Kubernetes object (same API group, kind, namespace and name: in a
cluster each apply would overwrite the other) stop the render, naming both — in the same cluster:
a program that deploys to several clusters (a Kubernetes provider each) declares one name once per
cluster. Objects are grouped by cluster (:func:`cluster_key`): the ambient cluster's (default
provider) go to ``OUT_DIR``, or the first cluster's when the program has no ambient objects; each
other cluster's to ``OUT_DIR/<provider name>/``. The output directory
may hold files of one's own: each written file starts with a ``# Written by lightmesh render``
comment and is listed in ``OUT_DIR/.lightmesh-render``; a re-render removes exactly the files listed
there that still carry the comment, and refuses to overwrite any other file.

Stack configuration comes from ``Pulumi.yaml`` (``config:`` defaults), then
``Pulumi.<stack>.yaml``, then ``--config key=value`` (keys without a namespace get the project's).

Errors are one line on stderr: a bad path or flag exits 2, a bad project file or a failing program
(an exception, or ``sys.exit`` with a non-zero code) exits 1, Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import runpy
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STOCK_COREFILE = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""


class RenderError(RuntimeError):
    pass


@dataclass(frozen=True)
class Registration:
    """One resource the program registered, as the engine saw it (inputs in camelCase)."""

    typ: str
    name: str
    inputs: dict
    custom: bool
    urn: str
    """The URN the mock monitor gives it: the parent component's type is in it (``A$B``)."""
    parent: str = ""
    """The parent's URN ("" for a resource of the stack itself)."""
    provider: str = ""
    """The URN of the provider given to it ("" for the default provider)."""


@dataclass
class RenderResult:
    objects: list[dict] = field(default_factory=list)
    """The first cluster's objects (the ambient one's when the program has any), in install order."""
    other_clusters: dict[str, list[dict]] = field(default_factory=dict)
    """Each other cluster's objects, by the name of its (first) Kubernetes provider resource."""
    cluster_name: str = ""
    """The provider resource name of :attr:`objects`' cluster ("" for the ambient cluster)."""
    skipped_patches: list[str] = field(default_factory=list)
    skipped_other: list[str] = field(default_factory=list)
    """Custom resources that are not Kubernetes objects (``<type> <name>``): dynamic providers etc."""
    components: list[str] = field(default_factory=list)
    skipped_provider_components: list[str] = field(default_factory=list)
    """The Kubernetes provider's own components (``yaml/v2:ConfigGroup``, ``helm.sh/v4:Chart``,
    ``kustomize/v2:Directory``): their objects are made by the provider at ``pulumi up``, not by
    the program, so a render under mocks cannot see them."""
    registrations: list[Registration] = field(default_factory=list)
    """Everything registered (components, patches, objects): what a policy pack would be shown."""


#: Components whose objects the Kubernetes provider makes (yaml/v2, helm v4, kustomize v2: remote
#: components) or renders for the SDK (helm v2/v3 Chart, kustomize v1 Directory: calls the render's
#: mocks do not answer) at ``pulumi up``: none of their objects are seen here. yaml v1's ConfigFile
#: and ConfigGroup are expanded by the SDK itself: rendered.
PROVIDER_EXPANDED = ("kubernetes:yaml/v2:", "kubernetes:helm.sh/", "kubernetes:kustomize:", "kubernetes:kustomize/v2:")


#: Built-in kinds that are not namespaced: their ``metadata.namespace`` is ignored by the API server.
CLUSTER_SCOPED_KINDS = frozenset({
    "Namespace", "Node", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "PriorityClass", "StorageClass", "VolumeAttachment", "CSIDriver", "CSINode", "IngressClass", "RuntimeClass",
    "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration", "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding", "APIService", "CertificateSigningRequest", "FlowSchema",
    "PriorityLevelConfiguration", "GatewayClass",
})


def object_identity(api_version: str, kind: str, namespace: str | None, name: str) -> tuple[str, str, str, str]:
    """(API group, kind, namespace, name): what makes two manifests one Kubernetes object. The version
    does not count (``apps/v1`` and ``apps/v1beta1`` Deployments of one name are one object); an unset
    namespace is the provider's default, ``default``; cluster-scoped kinds have none."""
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    ns = "" if kind in CLUSTER_SCOPED_KINDS else (namespace or "default")
    return group, kind, ns, name


KUBERNETES_PROVIDER = "pulumi:providers:kubernetes"


def cluster_key(provider_type: str | None, provider_props: object) -> str | None:
    """Which cluster a resource's objects go to, judged from its provider: "" for the ambient
    cluster (no provider, the default one, or a Kubernetes provider given no kubeconfig, context or
    cluster), else a digest of those three, so two providers for one cluster count as one. None when
    one of them is not a plain value (unknown during preview, secret): the caller falls back to the
    provider's URN."""
    if provider_type != KUBERNETES_PROVIDER or not isinstance(provider_props, dict):
        return ""
    where = [provider_props.get(k) for k in ("kubeconfig", "context", "cluster")]
    if not all(w is None or isinstance(w, (str, dict)) for w in where):
        return None
    if not any(where):
        return ""
    return "cluster-" + hashlib.sha256(json.dumps(where, sort_keys=True).encode()).hexdigest()[:16]


def describe_identity(identity: tuple[str, str, str, str]) -> str:
    """``HTTPRouteGroup.specs.smi-spec.io shop/api-http``, ``Service shop/api``, ``Namespace whoami``."""
    group, kind, ns, name = identity
    return f"{kind}{'.' + group if group else ''} {ns + '/' if ns else ''}{name}"


def _auto_name(resource_name: str) -> str:
    return f"{resource_name}-{hashlib.sha256(resource_name.encode()).hexdigest()[:8]}"


def _rfc1123(name: str) -> str:
    return re.sub(r"[^a-z0-9.-]", "-", name.lower()).strip("-.")[:253] or "x"


def _load_yaml(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        column = f" (column {mark.column + 1})" if mark is not None else ""
        raise RenderError(f"{path}{line}: not valid YAML: {exc.problem or exc.context or 'syntax error'}{column}") \
            from None
    except yaml.YAMLError as exc:
        raise RenderError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RenderError(f"{path}: cannot read: {exc}") from None


def _config_section(path: Path, document: object) -> dict:
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise RenderError(f"{path}: expected a mapping (name: ..., config: ...), got {_kind(document)}")
    config = document.get("config")
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise RenderError(f"{path}: 'config' must be a mapping of key: value, got {_kind(config)}")
    return config


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "a boolean"}.get(
        type(value), type(value).__name__) + (f" ({value!r})" if isinstance(value, (int, float, str)) else "")


def load_stack_config(program_dir: Path, stack: str, overrides: list[str]) -> tuple[str, dict[str, str]]:
    """(project name, flat config map ``project:key`` → string) as the Pulumi CLI would pass it."""
    project_file = program_dir / "Pulumi.yaml"
    if not project_file.is_file():
        raise RenderError(f"{program_dir} is not a Pulumi program: Pulumi.yaml is missing")
    project = _load_yaml(project_file)
    project_config = _config_section(project_file, project)
    name = project.get("name") if isinstance(project, dict) else None
    if not isinstance(name, str) or not name.strip():
        got = "it is missing" if name is None else f"got {_kind(name)}"
        raise RenderError(f"{project_file}: 'name' must be the project name (a non-empty string); {got}")
    config: dict[str, object] = {}
    for key, spec in project_config.items():
        value = spec.get("default") if isinstance(spec, dict) else spec
        if value is not None:
            config[_qualify(name, str(key))] = value
    stack_file = program_dir / f"Pulumi.{stack}.yaml"
    if stack_file.is_file():
        for key, value in _config_section(stack_file, _load_yaml(stack_file)).items():
            config[_qualify(name, str(key))] = value
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RenderError(f"--config {item!r}: expected key=value")
        config[_qualify(name, key)] = value
    return name, {k: _config_string(v) for k, v in config.items()}


def _qualify(project: str, key: str) -> str:
    return key if ":" in key else f"{project}:{key}"


def _config_string(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def render_program(program_dir: str | Path, stack: str = "dev", config_overrides: list[str] | None = None,
                   refuse_duplicates: bool = True) -> RenderResult:
    """Run the program under mocks and return the Kubernetes objects it declares.

    Two resources declaring one Kubernetes object (same API group, kind, namespace and name) are a
    :class:`RenderError` unless ``refuse_duplicates`` is false (the policy pack's offline runner
    reports them as a violation instead).

    Mutates process-global Pulumi runtime state: call it once per process (the CLI does).
    """
    import pulumi
    from pulumi.runtime.mocks import MockMonitor
    from pulumi.runtime.stack import run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    program_dir = Path(program_dir).resolve()
    project, config = load_stack_config(program_dir, stack, config_overrides or [])
    entry = program_dir / "__main__.py"
    if not entry.is_file():
        raise RenderError(f"{program_dir}: __main__.py is missing (only Python programs can be rendered)")

    result = RenderResult()
    records: list = []
    providers: dict[str, tuple[str, str, dict]] = {}  # URN → (type, name, inputs)
    # The monitor registers on a thread pool and calls the mocks synchronously from RegisterResource:
    # a thread-local carries the request's URN and parent to new_resource (MockResourceArgs has neither).
    current = threading.local()

    class RecordingMonitor(MockMonitor):
        def RegisterResource(self, request):
            current.urn, current.parent = self.make_urn(request.parent, request.type, request.name), request.parent
            # "<urn>::<id>" of an explicit provider ("" for the default one)
            current.provider = request.provider.rsplit("::", 1)[0] if request.provider else ""
            try:
                return super().RegisterResource(request)
            finally:
                current.urn = current.parent = current.provider = None

    class RecordingMocks(pulumi.runtime.Mocks):
        def new_resource(self, args: pulumi.runtime.MockResourceArgs):
            state = dict(args.inputs)
            urn = getattr(current, "urn", None) or f"urn:pulumi:{stack}::{project}::{args.typ}::{args.name}"
            provider = getattr(current, "provider", None) or ""
            if not args.resource_id:
                result.registrations.append(Registration(args.typ, args.name, state, bool(args.custom), urn,
                                                         getattr(current, "parent", None) or "", provider))
            if args.typ.startswith("pulumi:providers:"):
                providers[urn] = (args.typ, args.name, dict(args.inputs))
            if args.resource_id:  # Resource.get(...): a read of an existing object
                return [args.resource_id, _read_existing(args.typ, args.resource_id)]
            if args.typ.startswith("kubernetes:") and args.custom:
                metadata = dict(state.get("metadata") or {})
                auto_named = not metadata.get("name")
                if auto_named:
                    metadata["name"] = _rfc1123(_auto_name(args.name))
                state["metadata"] = metadata
                records.append((args.typ, args.name, urn, auto_named, state, provider))
            elif not args.custom:
                result.components.append(f"{args.typ} {args.name}")
                if args.typ.startswith(PROVIDER_EXPANDED):  # a remote component: the provider expands it
                    result.skipped_provider_components.append(f"{args.typ} {args.name}")
            elif not args.typ.startswith("pulumi:providers:"):  # a provider is configuration, not a resource
                result.skipped_other.append(f"{args.typ} {args.name}")
            return [f"{args.name}-id", state]

        def call(self, args: pulumi.runtime.MockCallArgs):
            if args.token == "kubernetes:yaml:decode":
                return {"result": [d for d in yaml.safe_load_all(args.args["text"]) if d]}
            return {}

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = RecordingMocks()
    pulumi.runtime.set_mocks(mocks, project=project, stack=stack, preview=False, monitor=RecordingMonitor(mocks))
    pulumi.runtime.set_all_config(config)

    old_cwd, old_path = os.getcwd(), list(sys.path)
    os.chdir(program_dir)
    sys.path.insert(0, str(program_dir))
    try:
        _sync_await(run_pulumi_func(lambda: _run_program(entry)))
    except _ProgramExit as exit_:
        raise RenderError(f"{program_dir.name}: the program called sys.exit({exit_.code!r}); nothing written") from None
    except pulumi.ConfigMissingError as exc:  # its message suggests `pulumi config set`, on two lines
        raise RenderError(f"{program_dir.name}: missing required configuration `{exc.key}`; set it in "
                          f"Pulumi.{stack}.yaml or with `lightmesh render -c {exc.key}=VALUE`") from None
    except Exception as exc:  # the program's own error: report it with the program's name, on one line
        raise RenderError(f"{program_dir.name}: the program failed: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())}") from exc
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
    # The program ran: the loop is closed here, not by the garbage collector as the interpreter
    # exits, where closing it could print "Exception ignored in BaseEventLoop.__del__" to stderr.
    if not asyncio.all_tasks(loop):
        loop.close()
        asyncio.set_event_loop(None)

    declared: dict[tuple, str] = {}
    clusters: dict[str, list[dict]] = {}
    cluster_names: dict[str, str] = {}
    for typ, name, urn, auto_named, state, provider in records:
        provider_type, provider_name, provider_inputs = providers.get(provider, (None, "", None))
        cluster = cluster_key(provider_type, provider_inputs)
        if cluster is None:
            cluster = provider
        cluster_names.setdefault(cluster, provider_name if cluster else "")
        if typ.rsplit(":", 1)[-1].endswith("Patch"):
            result.skipped_patches.append(f"{typ} {name}")
            continue
        if "apiVersion" not in state or "kind" not in state:  # e.g. a Helm Release: no manifest offline
            result.skipped_other.append(f"{typ} {name}")
            continue
        if not auto_named:  # generated names never collide in a cluster (the provider adds a random suffix)
            identity = object_identity(str(state["apiVersion"]), str(state["kind"]),
                                       state["metadata"].get("namespace"), str(state["metadata"]["name"]))
            who = resource_description(urn, name)
            if (cluster, identity) in declared and refuse_duplicates:
                first, second = sorted((declared[(cluster, identity)], who))
                raise RenderError(f"{program_dir.name}: {describe_identity(identity)} is declared twice, by {first} "
                                  f"and by {second}: in a cluster they are one object and each apply overwrites the "
                                  f"other; nothing written. Fix: give one of them another name (for a component, "
                                  f"another instance name), or declare the object once")
            declared[(cluster, identity)] = who
        clusters.setdefault(cluster, []).append(_clean(state))
    for objects in clusters.values():
        objects.sort(key=_install_order)
    # the ambient cluster first, then by provider name: the first goes to OUT_DIR itself
    order = sorted(clusters, key=lambda c: (c != "", cluster_names[c], c))
    if order:
        result.objects, result.cluster_name = clusters[order[0]], cluster_names[order[0]]
        for cluster in order[1:]:
            label = _rfc1123(cluster_names[cluster]) or "cluster"
            while label in result.other_clusters:
                label += "-x"
            result.other_clusters[label] = clusters[cluster]
    return result


def resource_description(urn: str, name: str) -> str:
    """``resource 'api-httproutegroup' of lightmesh:index:TrafficSplit`` (the parent's type from the URN)."""
    parts = urn.split("::")
    chain = [t for t in (parts[2].split("$") if len(parts) >= 4 else []) if t != "pulumi:pulumi:Stack"]
    parent = chain[-2] if len(chain) > 1 else None
    return f"resource {name!r}" + (f" of {parent}" if parent else "")


class _ProgramExit(Exception):
    """The program called ``sys.exit(code)`` with a failing code (an Exception, so the SDK's
    runner passes it through like any program error instead of tearing the process down)."""

    def __init__(self, code: object) -> None:
        super().__init__(f"sys.exit({code!r})")
        self.code = code


def _run_program(entry: Path) -> None:
    try:
        runpy.run_path(str(entry), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (None, 0):  # sys.exit() / sys.exit(0): the program ended normally
            raise _ProgramExit(exc.code) from None


# Registration order under the mock engine depends on thread scheduling; sort like Helm's install
# order (what must exist first comes first) so renders are reproducible and apply cleanly in order.
_KIND_ORDER = ["Namespace", "CustomResourceDefinition", "PriorityClass", "ServiceAccount", "Secret", "ConfigMap",
               "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Service", "DaemonSet", "Pod",
               "Deployment", "StatefulSet", "Job", "PodDisruptionBudget"]


def _install_order(obj: dict) -> tuple:
    kind = obj.get("kind", "")
    rank = _KIND_ORDER.index(kind) if kind in _KIND_ORDER else len(_KIND_ORDER)
    meta = obj.get("metadata") or {}
    return rank, kind, meta.get("namespace") or "", meta.get("name") or ""


def _read_existing(typ: str, resource_id: str) -> dict:
    if typ == "kubernetes:core/v1:ConfigMap" and resource_id == "kube-system/coredns":
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": STOCK_COREFILE}}
    return {}


def _clean(obj):
    """Drop Pulumi-only keys and empty values, restore ints: YAML that reads like a hand-written manifest."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key.startswith("__") or value is None:
                continue
            out[key] = _clean(value)
        return out
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return int(obj)  # the engine's wire format (protobuf Struct) turns every int into a float
    return obj


def object_filename(index: int, obj: dict) -> str:
    meta = obj.get("metadata") or {}
    parts = [obj.get("kind", "object"), meta.get("namespace") or "", meta.get("name") or ""]
    return f"{index:03d}-" + "-".join(_rfc1123(p) for p in parts if p) + ".yaml"


#: Lists the files the last render wrote into an output directory: the next render removes those, and
#: only those, so files of one's own in the directory are never touched.
RENDER_RECORD = ".lightmesh-render"
#: First line of every file render writes (a YAML comment): a listed file that no longer starts with it
#: was replaced by someone else and is kept.
HEADER_PREFIX = "# Written by lightmesh render"
_WRITTEN_NAME = re.compile(r"[0-9]{3}-[a-z0-9.-]+\.yaml")


def _header(source: str) -> str:
    return f"{HEADER_PREFIX}{f' from {source}' if source else ''}; the next render into this directory replaces it.\n"


def _written_by_render(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(len(HEADER_PREFIX)).decode(errors="replace") == HEADER_PREFIX
    except OSError:
        return False


def previous_render(out: Path) -> list[str]:
    """The files the previous render wrote into ``out`` and that are still its own (listed in
    :data:`RENDER_RECORD` and still starting with its header)."""
    try:
        listed = (out / RENDER_RECORD).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [n for n in listed if _WRITTEN_NAME.fullmatch(n) and _written_by_render(out / n)]


def rendered_cluster_dirs(out: Path) -> list[str]:
    """The subdirectories the last render into ``out`` wrote other clusters into (``name/`` lines of
    its record; none if it did not render there)."""
    try:
        listed = (out / RENDER_RECORD).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    return [n[:-1] for n in listed if n.endswith("/") and _SUBDIR_NAME.fullmatch(n[:-1])]


_SUBDIR_NAME = re.compile(r"[a-z0-9][a-z0-9.-]*")


def write_render(result: RenderResult, out_dir: str | Path, source: str = "") -> list[tuple[Path, list[Path]]]:
    """The first cluster's objects into ``out_dir``, each other cluster's into ``out_dir/<name>/``
    (see :func:`write_objects`); a cluster subdirectory of the previous render that this one has no
    objects for loses the files render wrote there (and goes, if then empty)."""
    out = Path(out_dir)
    stale = [d for d in rendered_cluster_dirs(out) if d not in result.other_clusters]
    written = [(out, write_objects(result.objects, out, source, subdirs=sorted(result.other_clusters)))]
    for name, objects in sorted(result.other_clusters.items()):
        written.append((out / name, write_objects(objects, out / name, source)))
    for name in stale:
        sub = out / name
        for file in previous_render(sub):
            (sub / file).unlink(missing_ok=True)
        (sub / RENDER_RECORD).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            sub.rmdir()  # only when nothing of anyone else's is left in it
    return written


def write_objects(objects: list[dict], out_dir: str | Path, source: str = "", subdirs: list[str] = ()) -> list[Path]:
    """One YAML file per object, ``NNN-<kind>-<namespace>-<name>.yaml``, each starting with a header
    comment. The files the previous render wrote here are removed first (a re-render replaces, never
    mixes); files it did not write are never removed nor overwritten (:class:`RenderError`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = set(previous_render(out))
    names = [object_filename(index, obj) for index, obj in enumerate(objects, start=1)]
    for name in names:
        if (out / name).exists() and name not in previous:
            raise RenderError(f"-o {out}: {name} exists and lightmesh render did not write it (it is not listed in "
                              f"{RENDER_RECORD} or lost its header); nothing written. Move it away or choose another "
                              f"output directory")
    for name in sorted(previous):
        (out / name).unlink(missing_ok=True)
    paths = []
    for name, obj in zip(names, objects):
        path = out / name
        path.write_text(_header(source) + yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))
        paths.append(path)
    (out / RENDER_RECORD).write_text(
        "# The files lightmesh render wrote into this directory: the next render removes these, and only these.\n"
        + "".join(f"{name}\n" for name in names) + "".join(f"{name}/\n" for name in subdirs))
    return paths


def other_manifests(out_dir: str | Path, written: list[Path]) -> list[str]:
    """YAML and JSON files in ``out_dir`` render did not write (they are applied along with its own)."""
    mine = {p.name for p in written}
    return sorted(p.name for p in Path(out_dir).iterdir()
                  if p.is_file() and p.suffix in (".yaml", ".yml", ".json") and p.name not in mine)


# ---------------------------------------------------------------------------- CLI


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run a Pulumi program offline (the SDK's mock engine: no CLI, no cluster) and write "
                          "the Kubernetes manifests it declares, one YAML file per resource: a preview of what "
                          "'pulumi up' would apply. Two resources that declare one Kubernetes object (same API "
                          "group, kind, namespace and name) stop the render, nothing written.")
    parser.add_argument("program_dir", help="directory with Pulumi.yaml and __main__.py")
    parser.add_argument("-o", "--output", required=True,
                        help=f"directory to write the manifests into (created if missing). A re-render first "
                             f"removes the files the previous render wrote there (listed in OUTPUT/{RENDER_RECORD}), "
                             f"and only those: other files are kept, and a file render did not write is never "
                             f"overwritten (the render stops instead)")
    parser.add_argument("-s", "--stack", default="dev", help="stack whose Pulumi.<stack>.yaml config to use (default %(default)s)")
    parser.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE",
                        help="stack config override (repeatable), e.g. --config acl=true")


def run(args: argparse.Namespace) -> int:
    before = _open_loops()
    code = _run(args)
    if code != 130:  # after Ctrl-C the SDK's interrupted task would be reported as never retrieved
        _close_stray_loops(before)
    return code


def _open_loops() -> list[asyncio.AbstractEventLoop]:
    import gc

    return [obj for obj in gc.get_objects()
            if isinstance(obj, asyncio.AbstractEventLoop) and not obj.is_closed()]


def _close_stray_loops(before: list[asyncio.AbstractEventLoop]) -> None:
    """The Pulumi SDK leaves event loops of its own behind, never closed. Closed here, before the
    interpreter exits: at exit their sockets may be finalized first, and closing them then prints
    an "Exception ignored in BaseEventLoop.__del__" traceback to stderr. Only the loops this
    render made: a caller's own (``run`` called in a process that goes on) are not ours to close."""
    kept = {id(loop) for loop in before}
    for obj in _open_loops():
        if id(obj) not in kept and not obj.is_running():
            with contextlib.suppress(Exception):
                obj.close()


def _run(args: argparse.Namespace) -> int:
    program_dir, output = Path(args.program_dir), Path(args.output)
    if not program_dir.is_dir():
        problem = "not a directory" if program_dir.exists() else "no such directory"
        print(f"lightmesh render: {program_dir}: {problem} (expected a Pulumi program directory)", file=sys.stderr)
        return 2
    if output.exists() and not output.is_dir():
        print(f"lightmesh render: -o {output}: exists and is not a directory; choose a directory", file=sys.stderr)
        return 2
    try:
        result = render_program(program_dir, args.stack, args.config)
        written = write_render(result, output, program_dir.resolve().name)
        paths = written[0][1]
    except RenderError as exc:
        print(f"lightmesh render: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lightmesh render: cannot write to {output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("lightmesh render: interrupted; nothing more written", file=sys.stderr)
        return 130
    if len(written) == 1:
        print(f"wrote {len(paths)} manifests to {output}")
    else:  # one directory per cluster (Kubernetes provider)
        first = f"provider {result.cluster_name!r}" if result.cluster_name else "the default provider"
        print(f"wrote {len(paths)} manifests to {output} (the cluster of {first})")
        for where, files in written[1:]:
            print(f"wrote {len(files)} manifests to {where} (the cluster of provider {where.name!r})")
    others = other_manifests(output, paths)
    if others:
        print(f"  note: {output} also holds {len(others)} file(s) lightmesh render did not write, kept as they are "
              f"(kubectl apply -f and lightmesh local read them too): {', '.join(others[:5])}"
              + (", ..." if len(others) > 5 else ""))
    for patch in result.skipped_patches:
        print(f"  not written (patches an existing cluster object): {patch}")
    for other in result.skipped_other:
        print(f"  not written (not a Kubernetes object; runs against the cluster at pulumi up): {other}")
    for component in result.skipped_provider_components:
        print(f"  not written (its objects are made by the Kubernetes provider at pulumi up, from YAML, a Helm "
              f"chart or kustomize; write them as Kubernetes resources, or render them with kubectl/helm, to "
              f"see them here): {component}")
    return 0
