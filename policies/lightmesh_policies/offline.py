"""Run the whole pack over a Pulumi program without the Pulumi CLI (CI without a CLI, tests).

Two steps, each usable alone:

1. :func:`render_registrations` runs the program under the SDK mock engine in a fresh subprocess
   (``lightmesh.local.render``; the mock engine is process-global state) and returns every resource
   it registered — components, ``*Patch`` resources and Kubernetes objects, with camelCase props and
   URNs carrying the component ancestry.
2. :func:`analyze` feeds them to the same gRPC servicer the Pulumi CLI talks to
   (``pulumi_policy``'s analyzer, called in-process): ``Configure`` with the resolved enforcement
   levels and config, ``Analyze`` per resource, ``AnalyzeStack`` once. Config uses the CLI's
   ``--policy-pack-config`` file format, and the schema defaults are filled in as the CLI does.

Differences from ``pulumi preview --policy-pack``: props are the program's *inputs* before the
Kubernetes provider's Check (no auto-names, no defaults) and nothing is unknown (the mock engine
resolves every output). Objects that only the Kubernetes provider itself produces are not seen:
remote components (``kubernetes:yaml/v2:ConfigGroup``/``ConfigFile``, ``kubernetes:helm.sh/v4:Chart``,
``kubernetes:kustomize/v2:Directory``) and the charts/kustomizations rendered by a provider call
(``helm.v3.Chart``, ``kustomize.Directory``) register no objects under the mock engine, so
:func:`offline_notes` names each such resource (the CLI prints the notes on stderr); a
``helm.v3.Release`` is one resource whose objects no policy pack ever sees, not even under the CLI.
The analyzer servicer is a private API of pulumi-policy; its version is pinned in ``pyproject.toml``.

CLI: ``python -m lightmesh_policies.offline PROGRAM_DIR [-s STACK] [-c key=value]
[--policy-pack-config FILE]`` prints violations like the Pulumi CLI (and the notes on stderr) and
exits 1 when a mandatory policy is violated.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from google.protobuf import json_format, struct_pb2
from pulumi.runtime import proto
from pulumi_policy import EnforcementLevel
from pulumi_policy.policy import _PolicyAnalyzerServicer

from lightmesh_policies import ALL_POLICIES, PACK_NAME
from lightmesh_policies._runtime import load_stack_config

PACK_DIR = Path(__file__).resolve().parent.parent
REPO = PACK_DIR.parent
RENDER_TIMEOUT_SECONDS = 180.0

_LEVELS = {"advisory": EnforcementLevel.ADVISORY, "mandatory": EnforcementLevel.MANDATORY,
           "remediate": EnforcementLevel.REMEDIATE, "disabled": EnforcementLevel.DISABLED}
_PROTO_LEVELS = {EnforcementLevel.ADVISORY: proto.ADVISORY, EnforcementLevel.MANDATORY: proto.MANDATORY,
                 EnforcementLevel.REMEDIATE: proto.REMEDIATE, EnforcementLevel.DISABLED: proto.DISABLED}
_LEVEL_NAMES = {proto.ADVISORY: "advisory", proto.MANDATORY: "mandatory", proto.REMEDIATE: "remediate",
                proto.DISABLED: "disabled"}


class OfflineCheckError(RuntimeError):
    pass


@dataclass(frozen=True)
class Violation:
    policy: str
    level: str  # "advisory" / "mandatory"
    message: str
    urn: str

    def __str__(self) -> str:
        return f"[{self.level}] {self.policy}: {self.message}" + (f" ({self.urn})" if self.urn else "")


@dataclass
class PackReport:
    violations: list[Violation] = field(default_factory=list)
    not_applicable: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What was not judged offline, and why (see :func:`offline_notes`)."""

    @property
    def mandatory(self) -> list[Violation]:
        return [v for v in self.violations if v.level == "mandatory"]

    def by_policy(self) -> dict[str, list[Violation]]:
        out: dict[str, list[Violation]] = {}
        for v in self.violations:
            out.setdefault(v.policy, []).append(v)
        return out


# ------------------------------------------------------------------------------------- rendering


def render_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(PACK_DIR), str(REPO / "proxy_image"), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def render_registrations(program_dir: str | Path, stack: str = "dev", config: Iterable[str] = ()) -> list[dict]:
    """Every resource ``program_dir`` registers under the mock engine: dicts with type, name, urn,
    parent (URN or None), provider (URN or None), custom and props (engine camelCase); with the
    default Kubernetes provider the stack config makes (:func:`with_default_provider`)."""
    config = list(config)
    with tempfile.TemporaryDirectory(prefix="lightmesh-policy-render-") as tmp:
        out = Path(tmp) / "registrations.json"
        cmd = [sys.executable, "-m", "lightmesh_policies._render_worker", str(program_dir), stack, str(out),
               *config]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=render_env(),
                                  timeout=RENDER_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            raise OfflineCheckError(f"{program_dir}: rendering took longer than {RENDER_TIMEOUT_SECONDS:.0f}s") \
                from exc
        if proc.returncode != 0 or not out.exists():
            raise OfflineCheckError(f"{program_dir}: rendering failed:\n{proc.stderr.strip()}")
        registrations = json.loads(out.read_text())
    project, stack_config = load_stack_config(Path(program_dir).resolve(), stack, config)  # it rendered: valid
    return with_default_provider(registrations, stack_config, stack, project)


KUBERNETES_PROVIDER = "pulumi:providers:kubernetes"


def with_default_provider(resources: list[dict], stack_config: Mapping[str, str], stack: str,
                          project: str) -> list[dict]:
    """``resources`` with the default Kubernetes provider that the stack config makes, as ``pulumi``
    creates it and sends it with every resource that names no provider: its ``namespace`` is the
    stack config ``kubernetes:namespace`` (``Pulumi.<stack>.yaml``, or ``-c kubernetes:namespace=...``),
    the namespace of every namespaced object without metadata.namespace and without an explicit
    provider. The mock engine makes no default provider, so without this those objects would be
    judged as in ``default``. Unchanged when the config sets no ``kubernetes:namespace``."""
    namespace = stack_config.get("kubernetes:namespace")
    if not isinstance(namespace, str) or not namespace:
        return resources
    urn = f"urn:pulumi:{stack}::{project}::{KUBERNETES_PROVIDER}::default"
    provider = {"type": KUBERNETES_PROVIDER, "name": "default", "urn": urn, "parent": None, "provider": None,
                "custom": True, "props": {"namespace": namespace}}
    out = [provider]
    for r in resources:
        if r.get("custom", True) and r["type"].startswith("kubernetes:") and not r.get("provider"):
            r = {**r, "provider": urn}
        out.append(r)
    return out


# Resources whose Kubernetes objects the Kubernetes provider itself produces. Remote (multi-language)
# components: under `pulumi preview` the provider registers their objects, which the pack then judges;
# the mock engine runs no provider, so offline they have none.
PROVIDER_RENDERED = {
    "kubernetes:yaml/v2:ConfigGroup": "it parses the YAML",
    "kubernetes:yaml/v2:ConfigFile": "it parses the YAML",
    "kubernetes:helm.sh/v4:Chart": "it renders the chart",
    "kubernetes:kustomize/v2:Directory": "it builds the kustomization",
    # client-side components whose manifests come from a provider call (helm template, kustomize
    # build), which the mock engine answers with nothing
    "kubernetes:helm.sh/v3:Chart": "helm template, a provider call",
    "kubernetes:kustomize:Directory": "it builds the kustomization",
}
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"


def offline_notes(resources: list[dict]) -> list[str]:
    """One note per resource whose Kubernetes objects were not judged: a component of
    :data:`PROVIDER_RENDERED` that registered no objects under the mock engine, and every Helm release
    (``helm.v3.Release`` is one resource; the objects its chart installs are never sent to a policy
    pack, offline or under ``pulumi preview``)."""
    parents = {r.get("parent") for r in resources if r.get("parent")}
    notes = []
    for r in resources:
        where = f"resource {r['name']!r} ({r['type']})"
        if r["type"] in PROVIDER_RENDERED and r["urn"] not in parents:
            notes.append(f"{where}: its objects are made by the Kubernetes provider ({PROVIDER_RENDERED[r['type']]}), "
                         f"which the offline runner does not run, so they were not judged offline. Judge them with `pulumi preview --policy-pack "
                         f"policies`, or declare those objects in the program (kubernetes.yaml.ConfigGroup v1 parses "
                         f"YAML in the program and is judged offline).")
        elif r["type"] == HELM_RELEASE:
            notes.append(f"{where}: a Helm release is one resource; the objects its chart installs are never seen by "
                         f"the policy pack (offline or under `pulumi preview`), so its Services, workloads and SMI "
                         f"objects were not judged. Use kubernetes.helm.v4.Chart (judged by `pulumi preview "
                         f"--policy-pack policies`) for charts the mesh rules must see.")
    return notes


# -------------------------------------------------------------------------------------- analyzing


def resolve_policy_config(policy_config: Mapping[str, Any] | None) -> dict[str, tuple[EnforcementLevel, dict]]:
    """``--policy-pack-config`` contents → per policy (enforcement level, config with schema defaults).

    Format (the Pulumi CLI's): ``{"all": "mandatory", "<policy>": "advisory",
    "<policy>": {"enforcementLevel": "disabled", "<property>": value}}``. Checked as the CLI checks it:
    known rule ids, known properties, each property's type against the rule's config schema.
    """
    if policy_config is None:
        policy_config = {}
    if not isinstance(policy_config, Mapping):
        raise OfflineCheckError(f"policy config: expected a JSON object of rule ids ({{\"<rule id>\": \"advisory\"}} "
                                f"or {{\"<rule id>\": {{\"<property>\": ...}}}}), got {_json_type(policy_config)}")
    policy_config = dict(policy_config)
    known = {p.name: p for p in ALL_POLICIES}
    for key in policy_config:
        if key != "all" and key not in known:
            raise OfflineCheckError(f"policy config: unknown policy {key!r} (known: {', '.join(sorted(known))})")
    all_level = policy_config.get("all")
    resolved = {}
    for name, policy in known.items():
        level = policy.enforcement_level or EnforcementLevel.ADVISORY
        if all_level is not None:
            level = _level(all_level, "all")
        schema = policy.config_schema.properties if policy.config_schema else {}
        props = {k: v["default"] for k, v in schema.items() if "default" in v}
        entry = policy_config.get(name)
        if isinstance(entry, str):
            level = _level(entry, name)
        elif isinstance(entry, Mapping):
            for key, value in entry.items():
                if key == "enforcementLevel":
                    level = _level(value, name)
                elif key not in schema:
                    raise OfflineCheckError(f"policy config: {name} has no property {key!r} "
                                            f"(known: {', '.join(sorted(schema)) or 'none'})")
                else:
                    _check_property(name, key, value, schema[key])
                    props[key] = value
        elif entry is not None:
            raise OfflineCheckError(f"policy config: {name} must be a level string or an object, got {entry!r}")
        resolved[name] = (level, props)
    return resolved


# What the Pulumi CLI's JSON-schema validation of --policy-pack-config checks, for the schema shapes the
# rules use (``type`` a name or a list of names, ``items`` for arrays): the offline runner refuses the same.
_JSON_TYPES = {"boolean": lambda v: isinstance(v, bool), "string": lambda v: isinstance(v, str),
               "array": lambda v: isinstance(v, list), "object": lambda v: isinstance(v, Mapping),
               "null": lambda v: v is None, "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
               "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)}
_EXPECTED = {"boolean": "true or false", "string": "a string", "array": "a list", "object": "an object",
             "null": "null", "integer": "a whole number", "number": "a number"}


def _json_type(value: Any) -> str:
    """How JSON would call ``value``'s type, with the value: ``a string ('false')``."""
    for name, fits in (("null", _JSON_TYPES["null"]), ("a boolean", _JSON_TYPES["boolean"]),
                       ("a number", _JSON_TYPES["number"]), ("a string", _JSON_TYPES["string"]),
                       ("a list", _JSON_TYPES["array"]), ("an object", _JSON_TYPES["object"])):
        if fits(value):
            return name if name == "null" else f"{name} ({json.dumps(value, default=str)})"
    return type(value).__name__


def _check_property(policy: str, key: str, value: Any, schema: Mapping[str, Any]) -> None:
    """``value`` against the rule's config schema property: a clear error naming the rule, the property
    and the expected type (``"false"`` for a boolean would otherwise turn the setting on)."""
    types = schema.get("type")
    types = [types] if isinstance(types, str) else list(types or [])
    if types and not any(_JSON_TYPES[t](value) for t in types if t in _JSON_TYPES):
        items = (schema.get("items") or {}).get("type")
        expected = [f"a list of {items}s" if t == "array" and isinstance(items, str) else _EXPECTED.get(t, t)
                    for t in types]
        wanted = " or ".join(expected).replace("true or false or null", "true, false or null")
        raise OfflineCheckError(f"policy config: {policy}: property {key} must be {wanted}, got {_json_type(value)}")
    choices = schema.get("enum")
    if isinstance(choices, list) and value not in choices:  # as the Pulumi CLI refuses it
        raise OfflineCheckError(f"policy config: {policy}: property {key} must be one of "
                                f"{', '.join(map(json.dumps, choices))}, got {json.dumps(value)}")
    item_schema = schema.get("items")
    if isinstance(value, list) and isinstance(item_schema, Mapping):
        for i, item in enumerate(value):
            _check_property(policy, f"{key}[{i}]", item, item_schema)


def load_policy_config(path: str | Path) -> Any:
    """A ``--policy-pack-config`` file's JSON; errors name the file (and line and column)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise OfflineCheckError(f"--policy-pack-config {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") \
            from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise OfflineCheckError(f"--policy-pack-config {path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") \
            from None


def _level(value: Any, where: str) -> EnforcementLevel:
    if not isinstance(value, str) or value.lower() not in _LEVELS:
        raise OfflineCheckError(f"policy config: {where}: enforcement level must be one of "
                                f"{', '.join(_LEVELS)}, got {value!r}")
    return _LEVELS[value.lower()]


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    return json_format.ParseDict(json.loads(json.dumps(value, default=str)), struct_pb2.Struct())


def make_servicer(policy_config: Mapping[str, Any] | None = None) -> _PolicyAnalyzerServicer:
    """The pack's analyzer servicer, configured as the Pulumi CLI would configure it."""
    servicer = _PolicyAnalyzerServicer(PACK_NAME, "0.1.0", ALL_POLICIES, EnforcementLevel.ADVISORY)
    request = proto.ConfigureAnalyzerRequest()
    for name, (level, props) in resolve_policy_config(policy_config).items():
        # The engine always sends a resolved level: a PolicyConfig without one means ADVISORY.
        request.policyConfig[name].CopyFrom(proto.PolicyConfig(enforcementLevel=_PROTO_LEVELS[level],
                                                               properties=_struct(props)))
    servicer.Configure(request, None)
    return servicer


def analyze(resources: list[dict], policy_config: Mapping[str, Any] | None = None) -> PackReport:
    """Run every policy of the pack over ``resources`` (as :func:`render_registrations` returns)."""
    servicer = make_servicer(policy_config)
    report = PackReport(notes=offline_notes(resources))

    def collect(response: Any, resource_urn: str = "") -> None:
        for d in response.diagnostics:
            # The servicer prefixes the policy description: keep only the violation's own message.
            message = d.message.removeprefix(d.description + "\n") if d.description else d.message
            report.violations.append(Violation(d.policyName, _LEVEL_NAMES.get(d.enforcementLevel, "advisory"),
                                               message, d.urn or resource_urn))
        for n in response.not_applicable:
            report.not_applicable.append((n.policy_name, n.reason))

    stack = proto.AnalyzeStackRequest()
    by_urn = {r["urn"]: r for r in resources}
    for r in resources:
        if r["type"] == "pulumi:pulumi:Stack":
            continue
        props = _struct(r.get("props") or {})
        # the explicit provider, as the CLI sends it (the rules tell clusters apart by it)
        given = by_urn.get(r.get("provider") or "")
        provider = (proto.AnalyzerProviderResource(type=given["type"], name=given["name"], urn=given["urn"],
                                                   properties=_struct(given.get("props") or {}))
                    if given is not None else None)
        collect(servicer.Analyze(proto.AnalyzeRequest(type=r["type"], name=r["name"], urn=r["urn"],
                                                      properties=props, provider=provider), None), r["urn"])
        stack.resources.append(proto.AnalyzerResource(type=r["type"], name=r["name"], urn=r["urn"],
                                                      properties=props, parent=r.get("parent") or "",
                                                      provider=provider))
    collect(servicer.AnalyzeStack(stack, None))
    return report


def check_program(program_dir: str | Path, stack: str = "dev", config: Iterable[str] = (),
                  policy_config: Mapping[str, Any] | None = None) -> PackReport:
    return analyze(render_registrations(program_dir, stack, config), policy_config)


# -------------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightmesh_policies.offline",
                                     description="Run the lightmesh-policies pack over a Pulumi program offline "
                                                 "(SDK mock engine; no Pulumi CLI, no cluster).")
    parser.add_argument("program_dir")
    parser.add_argument("-s", "--stack", default="dev",
                        help="the stack to judge as (default: dev, a development stack, so lightmesh-require-acl "
                             "does not apply; in CI pass the name of the stack you deploy) and whose "
                             "Pulumi.<stack>.yaml config is read")
    parser.add_argument("-c", "--config", action="append", default=[], metavar="KEY=VALUE",
                        help="stack config override (repeatable)")
    parser.add_argument("--policy-pack-config", metavar="FILE",
                        help="JSON file in the format of pulumi's --policy-pack-config")
    args = parser.parse_args(argv)
    try:
        policy_config = load_policy_config(args.policy_pack_config) if args.policy_pack_config else None
        resolve_policy_config(policy_config)  # a bad config is reported before the program runs
        report = check_program(args.program_dir, args.stack, args.config, policy_config)
    except (OfflineCheckError, OSError) as exc:
        print(f"lightmesh-policies: {exc}", file=sys.stderr)
        return 2
    for note in report.notes:
        print(f"lightmesh-policies: note: {note}", file=sys.stderr)
    for v in report.violations:
        print(v)
    print(f"{len(report.violations)} violation(s), {len(report.mandatory)} mandatory")
    return 1 if report.mandatory else 0


if __name__ == "__main__":
    sys.exit(main())
