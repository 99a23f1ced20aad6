"""The Lightmesh policy rules: ACL coverage, SMI object sanity, annotations, install hygiene.

Each rule is a ``pulumi_policy`` policy with a stable id (its ``name``), a description, an
enforcement level that ``--policy-pack-config`` can change, a ``config_schema`` whose defaults are
*also* applied here (the SDK does not apply JSON-schema defaults; the CLI does, unit tests and the
offline runner do not), and messages that name the offending object and say how to fix it.

Rules that need more than one resource (which ServiceAccount runs behind a Service, which
TrafficTargets exist) are stack policies over a :class:`~lightmesh_policies.model.StackView`; rules
about one object are resource policies. Every rule reads the props through
:func:`~lightmesh_policies.model.materialize`, so an unknown value during ``pulumi preview`` only
skips the facts that depend on it — the rest of the stack is still judged.

Kubernetes shapes, not component shapes: the rules look at Services, workloads, SMI objects and
Gateway API mesh routes as the cluster will see them, so they hold for Services annotated by hand
(Traefik Mesh prefixes included), for every SMI version the controller accepts, and for the objects
of charts and YAML that the stack declares object by object (``helm.v4.Chart``, ``yaml.v2.ConfigGroup``
under ``pulumi preview``; each object is a resource the pack sees). A ``helm.v3.Release`` is one
resource: the objects its chart installs are never sent to a policy pack, so none of them is judged.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from typing import Any, Mapping

from pulumi_policy import (EnforcementLevel, PolicyConfigSchema, ReportViolation, ResourceValidationArgs,
                           ResourceValidationPolicy, Severity, StackValidationArgs, StackValidationPolicy)

from lightmesh_policies import model
from lightmesh_policies._runtime import annotations as ann
from lightmesh_policies._runtime import (check_user_regex, describe_identity, object_identity, parse_weight,
                                         resource_description)
from lightmesh_policies.model import UNKNOWN, Identity, StackView, is_unknown

# ------------------------------------------------------------------------------------------ helpers


def _config(config: Mapping[str, Any] | None, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Policy config with the schema defaults filled in (the SDK passes only what the engine sent)."""
    given = dict(config or {})
    return {key: given.get(key, default) for key, default in defaults.items()}


def _schema(defaults: Mapping[str, Any], descriptions: Mapping[str, str],
            choices: Mapping[str, list[str]] | None = None) -> PolicyConfigSchema:
    """The config schema of ``defaults``; ``choices``: the only values a string property takes (an enum)."""
    properties = {}
    for key, default in defaults.items():
        if isinstance(default, bool):
            prop: dict = {"type": "boolean"}
        elif default is None:
            prop = {"type": ["boolean", "null"]}  # null: the rule decides (see the description)
        elif isinstance(default, list):
            prop = {"type": "array", "items": {"type": "string"}}
        else:
            prop = {"type": "string"}
        if key in (choices or {}):
            prop["enum"] = list(choices[key])
        properties[key] = {**prop, "default": default, "description": descriptions[key]}
    return PolicyConfigSchema(properties=properties)


def _views(args: StackValidationArgs) -> list[StackView]:
    """One view per cluster the stack deploys to: its resources grouped by their Kubernetes provider's
    cluster (a stack for one cluster has one view). One cluster's AccessPolicy says nothing about
    another's Services, and one object name in two clusters is two objects."""
    by_cluster: dict[str, list[model.Resource]] = {}
    for r in args.resources:
        resource = model.resource_from_policy(r.resource_type, r.name, r.urn, r.props, getattr(r, "parent", None),
                                              getattr(r, "provider", None))
        by_cluster.setdefault(resource.cluster, []).append(resource)
    keys = sorted(by_cluster)
    views = [StackView(by_cluster[c]) for c in keys] or [StackView([])]
    # The ambient cluster (default provider) and an explicit provider's may be one cluster named two
    # ways (the apps on the default provider, their MeshInstall on an explicit one), and so may a
    # provider known only by its URN; two providers with known, different settings are not. A
    # cluster that declares no controller is judged by the controllers of those it may be.
    for key, view in zip(keys, views):
        if not view.controllers:
            view.other_controllers = [c for other_key, other in zip(keys, views) if other is not view
                                      and _may_be_one_cluster(key, other_key) for c in other.controllers]
    return views


def _may_be_one_cluster(a: str, b: str) -> bool:
    """Whether two cluster keys (``model.cluster_of``) may name one cluster: unless both are digests
    of known provider settings (``cluster-...``), which differ."""
    return not (a.startswith("cluster-") and b.startswith("cluster-"))


def _per_cluster(check, defaults: Mapping[str, Any]):
    """A stack policy's ``validate``: ``check(view, cfg, report)`` once per cluster (see :func:`_views`)."""
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        cfg = _config(args.get_config(), defaults)
        for view in _views(args):
            check(view, cfg, report)
    validate.__name__ = validate.__qualname__ = f"validate{check.__name__}"
    return validate


def _resource(args: ResourceValidationArgs) -> model.Resource:
    return model.resource_from_policy(args.resource_type, args.name, args.urn, args.props,
                                      provider=getattr(args, "provider", None))


def _acl_active(view: StackView, assume_acl: bool) -> Any:
    """True/False/UNKNOWN: the stack's own controller decides; without one, the ``assume_acl`` config."""
    if assume_acl and not view.controllers:
        return True  # said so for a stack whose mesh another stack installed: a borrowed mode does not undo it
    mode = view.acl_mode()
    if mode is None:
        return bool(assume_acl)
    return mode


_HINT_RULES = {ann.TrafficType.HTTP: 'http_matches=[{"name": "all", "path_regex": "/.*"}]',
               ann.TrafficType.TCP: "tcp={}", ann.TrafficType.UDP: "udp={}"}


def _access_policy_hint(identity: Identity, traffic: Any, sources: str | None = None) -> str:
    """An AccessPolicy call that would fix it; ``traffic`` may be UNKNOWN (then every rule kind is offered)."""
    rule = _HINT_RULES.get(traffic) or " or ".join(_HINT_RULES.values()) + " (by the Service's traffic type)"
    sources = sources or '{"service_account": "<client ServiceAccount>"}'
    return (f'AccessPolicy("{identity.name}-access", AccessPolicyArgs(namespace="{identity.namespace}", '
            f'destination_service_account="{identity.name}", sources=[{sources}], {rule}))')


def _protocol(traffic: Any) -> str:
    """The port protocol the controller meshes for a traffic type (``topology._service_ports``)."""
    return "UDP" if traffic is ann.TrafficType.UDP else "TCP"


def _traffic_label(traffic: Any) -> str:
    return "traffic type not known yet" if is_unknown(traffic) else traffic.value


_ACL_DEFAULTS_DESCRIPTIONS = {
    "assume_acl": ("Treat the stack as ACL mode even though it installs no Lightmesh controller (an application "
                   "stack deployed into a mesh that another stack installed with acl=true)."),
}

# ------------------------------------------------------------------------- 1. ACL coverage per Service

ACL_COVERAGE_DEFAULTS = {"assume_acl": False, "allow_unresolved_services": False, "ignore_services": []}


def _acl_coverage(view: StackView, cfg: dict, report: ReportViolation) -> None:
    if _acl_active(view, cfg["assume_acl"]) is not True:
        return
    ignored = set(cfg["ignore_services"] or [])
    default_type = view.default_traffic_type()
    controller_ignores = view.ignore_settings()
    for svc in sorted(view.services.values(), key=lambda s: s.key):
        if svc.is_meshed is not True or svc.key in ignored or svc.external_name:
            continue  # (the controller never meshes an ExternalName Service: nothing to route to)
        if controller_ignores.ignores(svc.namespace, svc.name) is not False:
            continue  # the controller never meshes it (its own namespace, kube-system, ...): nothing is denied
        traffic = svc.traffic_type(default_type)
        resolution = view.resolve(svc)
        if resolution.reason or resolution.no_endpoints:
            # No pods of its own (or none declared here): an apex if it is a TrafficSplit's root or a
            # Gateway API route's parent Service (GAMMA). Pods that are no endpoints of its meshed ports
            # are not its own: nothing of it to cover.
            fronts = _fronts(view, svc, traffic) if not resolution.workloads else []
            if fronts:
                _check_apex_coverage(view, svc, fronts, traffic, cfg, report)
            elif fronts == [] and resolution.reason and not cfg["allow_unresolved_services"]:
                _report_unresolved(f"{svc.describe()} is a mesh Service, but the ServiceAccount of its pods",
                                   svc.key, resolution.reason, svc.urn, report)
            continue
        for identity in sorted(resolution.service_accounts, key=str):
            _check_identity_covered(view, svc.describe(), identity, traffic, svc.urn, report, svc,
                                    resolution.workloads)


def _report_unresolved(lead: str, ignore_key: str, reason: str, urn: str, report: ReportViolation) -> None:
    report(f"{lead} cannot be resolved from this stack: "
           f"{reason}. In ACL mode it needs a TrafficTarget for that ServiceAccount. Fix: declare its workload in "
           f"this stack, or check by hand that an AccessPolicy names the pods' ServiceAccount and then list "
           f"\"{ignore_key}\" in this rule's ignore_services (or set allow_unresolved_services: true).", urn)


def _check_identity_covered(view: StackView, subject: str, identity: Identity, traffic: Any, urn: str,
                            report: ReportViolation, svc: model.Service | None = None,
                            workloads: list[model.Workload] | None = None) -> None:
    """``subject``'s pods run as ``identity``: some TrafficTarget must allow its traffic type to it —
    on one of ``svc``'s pod ports when it names a ``destination.port``, with a rule that allows
    something as the controller reads it (an HTTPRouteGroup rule whose matches it all ignores does not,
    nor a TCPRoute/UDPRoute limited to ports none of which is one the controller meshes for ``svc``)."""
    if view.destination_may_be(identity):
        return  # a TrafficTarget whose destination is known only after apply may be the one
    targets = view.targets_for(identity)
    elsewhere = []
    if svc is not None:
        svc_traffic = svc.traffic_type(view.default_traffic_type())  # a backend's own, for its ports
        elsewhere = [t for t in targets if t.allows_on(svc, workloads or [], svc_traffic) is False]
        targets = [t for t in targets if t not in elsewhere]
    if not targets:
        if elsewhere:
            ports = svc.target_ports(workloads or [], svc_traffic, identity)
            names = ", ".join(f"{t.describe()} (spec.destination.port {model.shown(t.destination_port)})"
                              for t in elsewhere)
            report(f"{subject} ({_traffic_label(traffic)}) is not the destination of any TrafficTarget on its ports: "
                   f"its pods run as ServiceAccount {identity}, but {names} only allow a port its pods do not listen "
                   f"on for it ({', '.join(map(str, sorted(ports))) or 'none'}: the targetPorts of its ports the "
                   f"controller meshes, those of protocol {_protocol(svc_traffic)}), so the controller attaches none "
                   f"of them to it and ACL mode denies all traffic to it. Fix: set destination.port to one of those "
                   f"ports, or leave it out to allow every port.", urn)
            return
        report(f"{subject} ({_traffic_label(traffic)}) is not the destination of any TrafficTarget: its pods run "
               f"as ServiceAccount {identity} and ACL mode denies all traffic to them. Fix: add "
               f"{_access_policy_hint(identity, traffic)} with the clients that may call it.", urn)
        return
    if is_unknown(traffic) or any(is_unknown(t.rules) or any(is_unknown(r.kind) for r in t.rules) for t in targets):
        return  # which rule kind it needs, or has, is known only after apply
    kind = model.TRAFFIC_TYPE_ROUTE_KIND[traffic]
    kinds: set = set()
    hollow: list[str] = []
    off_ports: list[tuple[str, str]] = []  # (kind, rule): TCPRoute/UDPRoute rules allowing no port of svc
    for t in targets:
        for i, rule in enumerate(t.rules):
            if not isinstance(rule.kind, str):
                continue
            allows = _rule_allows(view, t, rule, svc, workloads or [])
            if allows is False and rule.kind in ("TCPRoute", "UDPRoute"):
                route = view.find_route(rule.kind, t.namespace, rule.name)
                off_ports.append((rule.kind, f"{t.describe()} rules[{i}] ({rule.kind} {t.namespace}/{rule.name}: "
                                             f"port(s) {', '.join(map(str, route.ports()))})"))
            elif allows is False:
                hollow.append(f"{t.describe()} rules[{i}]")
            else:
                kinds.add(rule.kind)
    off_kind = [text for rule_kind, text in off_ports if rule_kind == kind]
    if kind not in kinds and off_kind and svc is not None:
        # (svc is set whenever a TCPRoute/UDPRoute rule is judged on ports)
        svc_traffic = svc.traffic_type(view.default_traffic_type())
        meshed = svc.meshed_ports(svc_traffic)
        numbers = sorted({p.port for p in meshed}) if isinstance(meshed, list) else []
        exposed = sorted(svc.exposed_ports(svc_traffic) or ())
        field = "tcp" if kind == "TCPRoute" else "udp"
        report(f"{subject} ({traffic.value}) is not allowed on any of its ports: the {kind} rules of the "
               f"TrafficTargets for ServiceAccount {identity} are limited to ports it does not serve "
               f"({'; '.join(off_kind)}); a {kind} rule allows only the ports it lists, and the controller compares "
               f"them with Service {svc.key}'s {_protocol(svc_traffic)} ports and their numeric targetPorts "
               f"({', '.join(map(str, exposed)) or 'none'}), so ACL mode denies all its {traffic.value} traffic. Fix: "
               f"add its port to the route (AccessPolicy {field}={{\"ports\": {numbers}}}), or no ports to allow "
               f"every port, or give it an AccessPolicy of its own ({_access_policy_hint(identity, traffic)}).", urn)
        return
    if kind not in kinds:
        names = ", ".join(t.describe() for t in targets)
        note = (f"; {', '.join(hollow)} allow{'s' if len(hollow) == 1 else ''} no request the controller accepts"
                if hollow else "")
        report(f"{subject} is {traffic.value} but no TrafficTarget for ServiceAccount {identity} has a {kind} rule "
               f"({names} only allow {', '.join(sorted(kinds)) or 'nothing'}{note}): its {traffic.value} traffic is "
               f"denied in ACL mode. Fix: add {_access_policy_hint(identity, traffic)}, or add the {kind} rule to "
               f"the existing AccessPolicy.", urn)


def _rule_allows(view: StackView, target: model.TrafficTarget, rule: model.Rule, svc: model.Service | None = None,
                 workloads: list[model.Workload] | None = None) -> Any:
    """Whether a rule of ``target`` allows anything to ``svc`` as the controller reads it. An
    HTTPRouteGroup rule: False when its group has no match, or the controller ignores every match it
    names. A TCPRoute/UDPRoute rule limited to ports: False when none of them is a port the controller
    meshes for ``svc`` (its port or numeric targetPort, among those ``target`` attaches to: see
    :meth:`model.Service.l4_rule_allows`). True for other kinds, for a route object not in this stack
    (the TrafficTarget rule reports that) and when ``svc``'s ports are not declared; UNKNOWN when not
    known yet."""
    if is_unknown(rule.name):
        return UNKNOWN
    if rule.kind not in model.ROUTE_KINDS:
        return True
    route = view.find_route(rule.kind, target.namespace, rule.name)
    if not isinstance(route, model.Route):
        return UNKNOWN if is_unknown(route) else True
    if rule.kind == "HTTPRouteGroup":
        return route.rule_allows(rule.matches)
    ports = route.ports()
    if is_unknown(ports):
        return UNKNOWN
    if not ports or svc is None:
        return True  # no ports: every port
    traffic = svc.traffic_type(view.default_traffic_type())
    if is_unknown(traffic) or is_unknown(target.port):
        return UNKNOWN
    if model.ROUTE_KIND_TRAFFIC_TYPE[rule.kind] is not traffic:
        return True  # a rule for another traffic type: not this Service's (the kind check judges it)
    return svc.l4_rule_allows(workloads or [], traffic, target.port, ports, target.destination)


def _fronts(view: StackView, svc: model.Service, traffic: Any) -> Any:
    """What sends ``svc``'s traffic elsewhere when it has no pods of its own, as ``(what, backend
    names)`` pairs: the Gateway API routes whose parent it is (GAMMA; the controller then ignores a
    TrafficSplit on it), else the TrafficSplits whose root it is. UNKNOWN when none is known to be but
    one not known yet could be."""
    routes = view.routes_attached_to(svc, traffic)  # as the controller attaches them (type, ports, rules)
    if routes:
        return [(f"parent of {r.describe()}", _route_backend_names(view, r, svc.name)) for r in routes]
    splits = view.splits_rooted_at(svc)
    if splits:
        return [(f"root of {split.describe()}", _backend_names(view, split)) for split in splits]
    return UNKNOWN if is_unknown(routes) or is_unknown(splits) else []


def _applied_rules(route: model.MeshRoute) -> list[tuple[int, list[model.Backend]]]:
    """``(index, backends)`` of the rules the controller surely applies (not those it ignores, nor
    those whose matches are not known yet)."""
    rules = route.rules if isinstance(route.rules, list) else []
    kept = route.kept if isinstance(route.kept, list) else []
    return [(k, backends) for k, (backends, applied) in enumerate(zip(rules, kept)) if applied is True]


def _route_backend_names(view: StackView, route: model.MeshRoute, parent: Any = None) -> list[str]:
    """The Service backends a route's applied rules send traffic to (known names, weight above 0), bar
    the parent itself and those the controller drops (a ``port`` that is not one of the Service's
    meshed ports: see :meth:`StackView.route_backend_kept`)."""
    return list(dict.fromkeys(b.service for _, backends in _applied_rules(route) for b in backends
                              if isinstance(b.service, str) and b.service and b.service != parent
                              and isinstance(b.weight, int) and b.weight > 0
                              and view.route_backend_kept(route, b)[0] is not False))


def _check_apex_coverage(view: StackView, apex: model.Service, fronts: list[tuple[str, list[str]]], traffic: Any,
                         cfg: Mapping[str, Any], report: ReportViolation) -> None:
    """An apex Service (a TrafficSplit's root, or a Gateway API route's parent Service) need not have
    pods of its own: its traffic goes to the backends, so it is covered when they are. Backends that
    are mesh Services are judged on their own; the others (the controller meshes every Service) are
    judged here, on the apex's behalf. Whether every backend allows the callers is the TrafficSplit
    rule's reachability check."""
    for what, backend_names in fronts:
        for backend_name in backend_names:
            backend = view.services.get((apex.namespace, backend_name))
            if backend is None or backend.is_meshed is not False:
                continue  # undeclared (the split rule says so), a mesh Service, or not known yet
            subject = f"{apex.describe()} ({what}, no pods of its own) through its backend Service {backend.key}"
            resolution = view.resolve(backend)
            if resolution.no_endpoints:
                continue  # its pods are no endpoints of its meshed ports: nothing to cover
            if resolution.reason:
                if not cfg["allow_unresolved_services"]:
                    _report_unresolved(f"{apex.describe()} is the {what} and has no pods of its own; the ServiceAccount "
                                       f"of the pods of its backend Service {backend.key}",
                                       apex.key, resolution.reason, apex.urn, report)
                continue
            for identity in sorted(resolution.service_accounts, key=str):
                _check_identity_covered(view, subject, identity, traffic, apex.urn, report, backend,
                                        resolution.workloads)


def _backend_names(view: StackView, split: model.TrafficSplit) -> list[str]:
    """The split's backend Service names that are known, well-formed, not the root itself, and not
    dropped by the controller (a name in another namespace, another traffic type or missing ports than
    the root's: see :func:`_split_backend_mismatch`)."""
    backends = split.backends if isinstance(split.backends, list) else []
    root = view.services.get((split.namespace, split.service))
    return list(dict.fromkeys(b.service for b in backends
                              if isinstance(b.service, str) and b.service and b.service != split.service
                              and not b.problem
                              and not _split_backend_mismatch(view, root, view.services.get((split.namespace,
                                                                                            b.service)))))


acl_service_has_traffic_target = StackValidationPolicy(
    name="lightmesh-acl-service-has-traffic-target",
    description=("In ACL mode every mesh Service (annotated, or created by MeshService) is the destination of at "
                 "least one TrafficTarget with a rule for its traffic type that allows something (on one of its "
                 "pods' ports when the TrafficTarget names a destination port; a TCPRoute/UDPRoute on one of its "
                 "ports or numeric targetPorts when it lists ports); otherwise all traffic to it is "
                 "denied. A TrafficSplit root or Gateway API route parent without pods of its own is judged through "
                 "the backends. Services the controller never meshes (ExternalName, its own namespace, kube-system, "
                 "default/kubernetes, namespaces it ignores or does not watch) are skipped."),
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=_schema(ACL_COVERAGE_DEFAULTS, {
        **_ACL_DEFAULTS_DESCRIPTIONS,
        "allow_unresolved_services": ("Do not report mesh Services whose pods (and so ServiceAccount) are not "
                                      "declared in this stack."),
        "ignore_services": "Mesh Services (\"namespace/name\") this rule skips.",
    }),
    remediation_steps=("Add an AccessPolicy whose destination_service_account is the ServiceAccount of the "
                       "Service's pods, with the client ServiceAccounts as sources and a rule for the Service's "
                       "traffic type (http_matches, tcp or udp)."),
    validate=_per_cluster(_acl_coverage, ACL_COVERAGE_DEFAULTS),
)

# ------------------------------------------------------------------------ 2. TrafficTargets and routes

TRAFFIC_TARGET_DEFAULTS = {"allow_external_routes": False}


def _check_regex(pattern: Any) -> str | None:
    if is_unknown(pattern) or pattern is None:
        return None
    if not isinstance(pattern, str):
        return f"must be a string, got {pattern!r}"
    problem = check_user_regex(pattern)  # RE2, as the proxy runs it
    return f"does not compile ({problem})" if problem is not None else None


def _validate_routes(view: StackView, report: ReportViolation) -> None:
    controller_ignores = view.ignore_settings()
    for route in view.routes:
        if controller_ignores.ignores_namespace(route.namespace) is not False:
            continue  # the controller reads no route of that namespace (or may not: not known yet)
        if route.kind in ("TCPRoute", "UDPRoute"):
            for i, entry in route.bad_ports():
                field = "tcp" if route.kind == "TCPRoute" else "udp"
                report(f"{route.kind} {route.namespace}/{route.name} spec.matches.ports[{i}] {model.shown(entry)} is "
                       f"not a port number (1-65535): the controller ignores it, and a route left with no port "
                       f"allows every port. Fix: use port numbers (AccessPolicy {field}={{\"ports\": [...]}}), or "
                       f"no ports to allow every port.", route.resource.urn)
        if route.kind != "HTTPRouteGroup" or is_unknown(route.matches):
            continue
        where = f"HTTPRouteGroup {route.namespace}/{route.name}"
        seen: set[str] = set()
        verdicts = {i: (verdict, reason) for i, _, verdict, reason in route.controller_verdicts()}
        for i, match in enumerate(model.as_list(route.matches)):
            if is_unknown(match) or not isinstance(match, dict):
                continue
            name = match.get("name")
            if not is_unknown(name):
                if not isinstance(name, str) or not name:
                    report(f"{where} matches[{i}] has no name: TrafficTarget rules and TrafficSplit matches refer "
                           f"to matches by name. Fix: give it a unique name.", route.resource.urn)
                elif name in seen:
                    report(f"{where} has two matches named {name!r}. Fix: make match names unique.",
                           route.resource.urn)
                else:
                    seen.add(name)
            # the match by name (when it has one) and where it is written: spec.matches[i]
            at = f"{route.matches_field}[{i}]"
            label = f"{where} match {name!r} ({at})" if isinstance(name, str) and name else f"{where} {at}"
            reported = False
            if error := _check_regex(match.get("pathRegex")):
                report(f"{label}: pathRegex {match.get('pathRegex')!r} {error}; the controller ignores this match. "
                       f"Fix: correct the regular expression (AccessPolicy/TrafficSplit http_matches[].path_regex).",
                       route.resource.urn)
                reported = True
            headers = match.get("headers")
            # v1alpha3+: {name: regex}; v1alpha2: [{name: regex}, ...], as the controller reads both
            for part in [headers] if isinstance(headers, dict) else model.as_list(headers):
                for header, value in model.as_dict(part).items():
                    if error := _check_regex(value):
                        report(f"{label}: header {header!r} regex {value!r} {error}; the controller ignores this "
                               f"match. Fix: correct the regular expression (http_matches[].headers).",
                               route.resource.urn)
                        reported = True
            verdict, reason = verdicts.get(i, (True, None))
            if verdict is False and not reported:
                # what else the controller's own parser refuses: methods, header names, shapes
                report(f"{label}: {reason}; the controller ignores this match, so "
                       f"TrafficTarget rules naming it allow nothing by it. Fix: correct the match (methods are "
                       f"single HTTP method names such as GET, or *; header names are HTTP tokens; regexes RE2), in "
                       f"AccessPolicy/TrafficSplit http_matches.", route.resource.urn)


def _traffic_targets(view: StackView, cfg: dict, report: ReportViolation) -> None:
    _validate_routes(view, report)
    default_type = view.default_traffic_type()
    controller_ignores = view.ignore_settings()
    for target in view.traffic_targets:
        if controller_ignores.ignores_namespace(target.namespace) is not False:
            continue  # the controller reads no TrafficTarget of that namespace (or may not: not known yet)
        where, urn = target.describe(), target.resource.urn
        dest = target.destination
        if isinstance(dest, Identity) and dest.problem:
            report(f"{where} spec.destination: {dest.problem}. Fix: set destination_service_account on the "
                   f"AccessPolicy to the ServiceAccount name (spec.destination {{kind: ServiceAccount, name}}).", urn)
        elif dest is None or (isinstance(dest, Identity) and not is_unknown(dest.name) and not dest.name):
            report(f"{where} has no destination ServiceAccount. Fix: set destination_service_account on the "
                   f"AccessPolicy (spec.destination {{kind: ServiceAccount, name}}).", urn)
        elif isinstance(dest, Identity) and dest.kind not in (None, "ServiceAccount") and not is_unknown(dest.kind):
            report(f"{where} destination kind is {dest.kind!r}; only ServiceAccount is supported. Fix: name the "
                   f"ServiceAccount of the destination pods.", urn)
        elif (isinstance(dest, Identity) and isinstance(dest.namespace, str) and isinstance(target.namespace, str)
              and dest.namespace != target.namespace):
            # the controller ignores it: a namespace's pods are that namespace's to open
            report(f"{where} names destination {dest}, in another namespace: a TrafficTarget grants access to its "
                   f"own namespace's ServiceAccounts only, and the controller ignores this one. Fix: create it in "
                   f"namespace {dest.namespace!r} (the destination's owner decides who gets in).", urn)
        _check_destination_port(view, target, report)
        _check_sources(target, report)
        if is_unknown(target.rules):
            continue
        if not target.rules:
            report(f"{where} has no rules: in Lightmesh a TrafficTarget without rules allows nothing (unlike "
                   f"Traefik Mesh). Fix: give the AccessPolicy http_matches, tcp or udp.", urn)
        dest_services: Any = UNKNOWN
        if isinstance(dest, Identity) and dest.known and dest.name and not dest.problem:
            dest_services = view.mesh_services_of_account(dest)
        for i, rule in enumerate(target.rules):
            if is_unknown(rule.kind) or is_unknown(rule.name):
                continue
            if rule.kind not in model.ROUTE_KINDS:
                report(f"{where} rules[{i}] kind {rule.kind!r} is not one of {', '.join(model.ROUTE_KINDS)}: the "
                       f"controller ignores this rule. Fix: use HTTPRouteGroup (AccessPolicy http_matches), TCPRoute "
                       f"(tcp) or UDPRoute (udp).", urn)
                continue
            route = view.find_route(rule.kind, target.namespace, rule.name)
            if route is None:
                if not cfg["allow_external_routes"]:
                    report(f"{where} rules[{i}] references {rule.kind} {target.namespace}/{rule.name}, which is "
                           f"not declared in this stack (rules name route objects in the TrafficTarget's own "
                           f"namespace). Fix: create it (AccessPolicy creates its routes), or correct the name.", urn)
            elif rule.kind == "HTTPRouteGroup" and isinstance(route, model.Route):
                _check_rule_matches(where, i, rule, route, urn, report)
            if is_unknown(dest_services):
                continue
            served = {s.traffic_type(default_type) for s in dest_services}
            if any(is_unknown(t) for t in served):
                continue
            fits = model.ROUTE_KIND_TRAFFIC_TYPE[rule.kind]
            if served and fits not in served:
                kinds = ", ".join(sorted(model.TRAFFIC_TYPE_ROUTE_KIND[t] for t in served))
                types = ", ".join(sorted(t.value for t in served))
                report(f"{where} rules[{i}] is a {rule.kind} ({fits.value}), but ServiceAccount {dest} only backs "
                       f"{types} mesh Services, so this rule never applies. Fix: use {kinds} instead "
                       f"(AccessPolicy {'http_matches' if 'http' in types else 'tcp/udp'}), or fix the Service's "
                       f"traffic-type annotation.", urn)
            elif fits is not ann.TrafficType.HTTP and isinstance(route, model.Route):
                same_type = [s for s in dest_services if s.traffic_type(default_type) is fits]
                _check_route_ports(where, i, route, dest, same_type, urn, report)


def _check_sources(target: model.TrafficTarget, report: ReportViolation) -> None:
    where, urn = target.describe(), target.resource.urn
    if is_unknown(target.sources):
        return
    if not target.sources:
        report(f"{where} has no sources: it allows nobody. Fix: list the client ServiceAccounts in "
               f"AccessPolicyArgs sources=[{{\"service_account\": ...}}].", urn)
    for i, source in enumerate(target.sources):
        if is_unknown(source):
            continue  # the whole entry is known only after apply
        if isinstance(source, Identity) and source.problem:
            report(f"{where} sources[{i}]: {source.problem}. Fix: set sources[{i}].service_account (and "
                   f"namespace) to plain names.", urn)
        elif source is None or (not is_unknown(source.name) and not source.name):
            report(f"{where} sources[{i}] has no ServiceAccount name. Fix: set sources[{i}].service_account.", urn)
        elif not is_unknown(source.kind) and source.kind not in (None, "ServiceAccount"):
            report(f"{where} sources[{i}] kind is {source.kind!r}; only ServiceAccount is supported, so the "
                   f"controller ignores this source. Fix: name the client pods' ServiceAccount (kind: "
                   f"ServiceAccount).", urn)


def _check_destination_port(view: StackView, target: model.TrafficTarget, report: ReportViolation) -> None:
    """``spec.destination.port`` as the controller reads it: not a port number → it ignores the whole
    TrafficTarget; a port none of the destination's Services' pods listen on → it allows nothing."""
    where, urn, dest, port = target.describe(), target.resource.urn, target.destination, target.port
    if port is model.BAD_PORT:
        report(f"{where} spec.destination.port {model.shown(target.destination_port)} is not a port number "
               f"(1-65535): the controller ignores this TrafficTarget, so it allows nothing. Fix: set it to the "
               f"destination pods' port number (a Service's targetPort), or leave it out to allow every port.", urn)
        return
    if port is None or is_unknown(port) or not isinstance(dest, Identity) or not dest.known or not dest.name \
            or dest.problem or target.ignored_by_controller:
        return
    found = view.services_of_account(dest)
    if is_unknown(found) or not found:
        return  # not known yet, or the destination's Services are not declared in this stack
    default_type = view.default_traffic_type()
    verdicts = [(svc, target.allows_on(svc, res.workloads, svc.traffic_type(default_type))) for svc, res in found]
    if any(v is not False for _, v in verdicts):
        return
    listing = "; ".join(f"{svc.describe()}: "
                        f"{', '.join(map(str, sorted(svc.target_ports(res.workloads, traffic, dest)))) or 'none'}"
                        for svc, res in found for traffic in [svc.traffic_type(default_type)])
    report(f"{where} spec.destination.port {port} is not a port the pods of ServiceAccount {dest} listen on for any "
           f"of its Services ({listing}): the controller attaches it to none of them (it compares it with the "
           f"targetPorts of the ports it meshes, those of the protocol of the Service's traffic type: UDP for udp, "
           f"TCP otherwise), so it allows nothing. Fix: set destination.port to one of those ports (the pods' port, a "
           f"Service's targetPort), or leave it out to allow every port.", urn)


def _check_rule_matches(where: str, i: int, rule: model.Rule, route: model.Route, urn: str,
                        report: ReportViolation) -> None:
    names = route.match_names()
    missing = (isinstance(rule.matches, list) and not is_unknown(names)
               and any(isinstance(m, str) and m not in names or not isinstance(m, str) and not is_unknown(m)
                       for m in rule.matches))
    if not missing and route.rule_allows(rule.matches) is False:
        # every match it names exists, yet the controller keeps none of them (or the group has none)
        verdicts = route.controller_verdicts()
        if not verdicts:
            why = f"HTTPRouteGroup {route.namespace}/{route.name} has no matches"
        elif rule.matches:
            why = (f"the controller ignores the match{'es' if len(rule.matches) > 1 else ''} it names "
                   f"({', '.join(map(repr, rule.matches))}; see HTTPRouteGroup {route.namespace}/{route.name}'s own "
                   f"violations)")
        else:
            why = (f"the controller ignores every match of HTTPRouteGroup {route.namespace}/{route.name} (see its "
                   f"own violations)")
        report(f"{where} rules[{i}] allows no request: {why}, and an HTTPRouteGroup rule allows only the matches the "
               f"controller accepts. Fix: correct the matches (AccessPolicy http_matches), or give the HTTPRouteGroup "
               f"at least one valid match (a rule without matches allows all of them).", urn)
    if not isinstance(rule.matches, list) or not rule.matches:
        return
    if is_unknown(names):
        return
    for match in rule.matches:
        if is_unknown(match):
            continue
        if not isinstance(match, str):
            report(f"{where} rules[{i}] matches entry {match!r} is not a match name. Fix: list the names of "
                   f"HTTPRouteGroup {route.namespace}/{route.name}'s matches (strings).", urn)
        elif match not in names:
            report(f"{where} rules[{i}] names match {match!r}, but HTTPRouteGroup {route.namespace}/{route.name} "
                   f"has only {sorted(names) or 'no matches'}. Fix: use one of those names or add the match.", urn)


def _check_route_ports(where: str, i: int, route: model.Route, dest: Identity, services: list[model.Service],
                       urn: str, report: ReportViolation) -> None:
    """A TCPRoute/UDPRoute limited to ports that none of the destination's Services of that traffic type
    exposes allows nothing: those Services' traffic from these sources stays denied."""
    ports = route.ports()
    if is_unknown(ports) or not ports or not services:
        return  # no ports = every port
    traffic = model.ROUTE_KIND_TRAFFIC_TYPE[route.kind]  # the Services' own (the caller picked them by it)
    exposed = [(svc, svc.exposed_ports(traffic)) for svc in services]
    if any(p is None or is_unknown(p) for _, p in exposed):
        return  # a Service's ports are not declared in this stack, or not known yet
    if any(set(ports) & p for _, p in exposed) or not any(exposed_ports for _, exposed_ports in exposed):
        return  # (no port of the protocol at all: the controller meshes none of those Services, nothing to allow)
    field = "tcp" if route.kind == "TCPRoute" else "udp"
    listing = "; ".join(f"{svc.describe()}: {', '.join(map(str, sorted(p))) or 'none'}" for svc, p in exposed)
    suggestion = sorted(set().union(*(p for _, p in exposed)))
    report(f"{where} rules[{i}] allows {route.kind} {route.namespace}/{route.name} on port(s) "
           f"{', '.join(map(str, ports))} only, but the {field} mesh Services of ServiceAccount {dest} expose none of "
           f"them ({listing}): this rule allows nothing and their {field} traffic stays denied. Fix: use the "
           f"Services' ports (AccessPolicy {field}={{\"ports\": {suggestion}}}), or no ports to allow every port.", urn)


traffic_target_valid = StackValidationPolicy(
    name="lightmesh-traffic-target-valid",
    description=("TrafficTargets have a destination, sources and rules; a destination port is a port number one "
                 "of the destination's Services' pods listen on; each rule's kind fits the destination "
                 "Services' traffic type (HTTPRouteGroup for http, TCPRoute for tcp, UDPRoute for udp); a TCPRoute or "
                 "UDPRoute allows at least one port the destination's Services expose; an HTTPRouteGroup rule allows "
                 "at least one match; referenced route objects and match names exist in the stack; HTTPRouteGroup "
                 "matches are ones the controller accepts (methods, header names, path and header regexes). Objects in "
                 "namespaces the controller ignores are skipped."),
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=_schema(TRAFFIC_TARGET_DEFAULTS, {
        "allow_external_routes": "Do not report rules naming route objects that this stack does not declare.",
    }),
    remediation_steps="Declare TrafficTargets through AccessPolicy, which creates matching route objects.",
    validate=_per_cluster(_traffic_targets, TRAFFIC_TARGET_DEFAULTS),
)

# ---------------------------------------------------------------------------------- 3. TrafficSplits

TRAFFIC_SPLIT_DEFAULTS = {"assume_acl": False, "allow_external_services": False}


def split_weight(weight: Any, version: str) -> int | None:
    """A backend weight as the controller reads it, or None if it rejects it (negative included).

    split.smi-spec.io/v1alpha1 weights are Kubernetes quantities ("900m", "100m", "1"): the controller's
    own parser (milli-units) decides. Later versions take whole numbers."""
    if version == "v1alpha1":
        if isinstance(weight, float) and not math.isfinite(weight * 1000):
            return None  # 1e308 or inf: the controller's round(weight * 1000) would raise OverflowError
        milli = parse_weight(weight, quantity=True)
        return milli if milli is not None and milli >= 0 else None
    whole = _whole_number(weight)
    return whole if whole is not None and whole >= 0 else None


def _whole_number(weight: Any) -> int | None:
    """A whole-number weight: an int, an integral float (numbers travel as floats), or a string the
    controller's own parser takes (ASCII digits, at most nine: '٣', '+5' and a number of thousands of
    digits are refused — ``int()`` of the last one would raise)."""
    if isinstance(weight, bool):
        return None
    if isinstance(weight, int):
        return weight
    if isinstance(weight, float) and weight.is_integer():
        return int(weight)
    if isinstance(weight, str):
        return parse_weight(weight, quantity=False)
    return None


def _split_loops(view: StackView) -> dict[int, list[str]]:
    """For each split (by index) that is on a cycle of splits, the cycle as service names."""
    roots: dict[tuple, int] = {}
    for i, s in enumerate(view.splits):
        if not is_unknown(s.namespace) and isinstance(s.service, str) and not s.service_problem:
            roots.setdefault((s.namespace, s.service), i)

    def next_splits(i: int) -> list[int]:
        s = view.splits[i]
        backends = s.backends if isinstance(s.backends, list) else []
        return [roots[(s.namespace, b.service)] for b in backends
                if isinstance(b.service, str) and not b.problem and (s.namespace, b.service) in roots
                and b.service != s.service]

    loops: dict[int, list[str]] = {}
    for start in range(len(view.splits)):
        stack = [(start, [start])]
        while stack:
            node, path = stack.pop()
            for nxt in next_splits(node):
                if nxt == start:
                    loops[start] = [view.splits[p].service for p in path] + [view.splits[start].service]
                    stack.clear()
                    break
                if nxt not in path:
                    stack.append((nxt, path + [nxt]))
    return loops


def _traffic_splits(view: StackView, cfg: dict, report: ReportViolation) -> None:
    acl = _acl_active(view, cfg["assume_acl"])
    loops = _split_loops(view)
    controller_ignores = view.ignore_settings()
    roots_seen: dict[tuple, str] = {}

    def undeclared(ns: str, service: str) -> bool:
        return not cfg["allow_external_services"] and view.service_declared(ns, service) is False

    for index, split in enumerate(view.splits):
        where, urn, ns = split.describe(), split.resource.urn, split.namespace
        if is_unknown(ns) or is_unknown(split.service):
            continue
        if controller_ignores.ignores_namespace(ns) is not False:
            continue  # the controller reads no object of that namespace (or may not: a flag not known yet)
        if not isinstance(split.service, str) or not split.service:
            report(f"{where} has no root service (spec.service). Fix: set TrafficSplitArgs service to the Service "
                   f"clients call.", urn)
            continue
        if split.service_problem:
            report(f"{where} spec.service {split.service_problem}: the controller ignores this TrafficSplit. Fix: "
                   f"{_split_name_fix(split.written_service, ns, 'the root')}.", urn)
            continue
        root = split.service
        root_svc = view.services.get((ns, root))
        if (ns, root) in roots_seen:
            report(f"{where} splits Service {ns}/{root}, which {roots_seen[(ns, root)]} already splits: only one "
                   f"TrafficSplit per root Service is applied. Fix: merge them into one TrafficSplit.", urn)
        roots_seen.setdefault((ns, root), where)
        if undeclared(ns, root):
            report(f"{where} root Service {ns}/{root} is not declared in this stack. Fix: create the root Service "
                   f"(the name clients call) in namespace {ns}.", urn)
        if index in loops:
            report(f"{where} is part of a loop of TrafficSplits: {' -> '.join(loops[index])}. Fix: point the "
                   f"backends at Services that are not split roots.", urn)
        _check_split_matches(view, split, report)
        if is_unknown(split.backends):
            continue
        if not split.backends:
            report(f"{where} has no backends. Fix: list at least one backend Service with a weight.", urn)
            continue
        total, whole, seen = 0, True, set()
        usable = False  # a backend of weight above 0 the controller may keep
        dropped: list[str] = []  # backends it surely drops for their Service (name, traffic type, ports)
        for i, backend in enumerate(split.backends):
            service = backend.service
            if is_unknown(service):
                whole, usable = False, True
                continue
            if not isinstance(service, str) or not service:
                report(f"{where} backends[{i}] has no service. Fix: set backends[{i}].service.", urn)
                continue
            mismatch = None
            # a weight the controller refuses drops the backend first (reported below): its Service is not read
            weight_bad = not is_unknown(backend.weight) and split_weight(backend.weight, split.version) is None
            if backend.problem:
                report(f"{where} backends[{i}] service {backend.problem}: the controller drops this backend, so it "
                       f"gets none of the split's traffic. Fix: {_split_name_fix(backend.written, ns, 'a backend')}.",
                       urn)
                dropped.append(f"backends[{i}] {backend.written!r}")
            elif "/" in service:
                report(f"{where} backends[{i}] {service!r} is not a Service name: backends are Services in the "
                       f"split's own namespace {ns}. Fix: use the bare Service name.", urn)
                dropped.append(f"backends[{i}] {service!r}")
            elif service == root:
                report(f"{where} backends[{i}] is the root Service {root!r} itself: traffic would loop. Fix: point "
                       f"the backend at a version-specific Service (e.g. {root}-v1).", urn)
            elif undeclared(ns, service):
                report(f"{where} backend Service {ns}/{service} is not declared in this stack (backends must exist "
                       f"in the split's namespace {ns}). Fix: create it, or correct the name.", urn)
            elif not weight_bad and (mismatch := _split_backend_mismatch(view, root_svc,
                                                                         view.services.get((ns, service)))):
                what, fix = mismatch
                report(f"{where} backends[{i}] ({service}): {what}: the controller drops this backend (\"backend "
                       f"ignored\"), so it gets none of the split's traffic. Fix: {fix}.", urn)
                dropped.append(f"backends[{i}] {service!r}")
            if service in seen:
                report(f"{where} lists backend {service!r} twice. Fix: give each backend one entry.", urn)
            seen.add(service)
            if (ns, service) in {(s.namespace, s.service) for s in view.splits if s is not split} and service != root \
                    and index not in loops:
                report(f"{where} backend {service!r} is itself the root of another TrafficSplit: splits do not nest "
                       f"(Lightmesh resolves a split in one hop). Fix: list that split's backends here directly.",
                       urn)
            kept = not backend.problem and "/" not in service and not mismatch
            if is_unknown(backend.weight):
                whole, usable = False, usable or kept
                continue
            weight = split_weight(backend.weight, split.version)
            usable = usable or (kept and weight is not None and weight > 0)
            if weight is None:
                if split.version == "v1alpha1":
                    report(f"{where} backends[{i}] ({service}) weight {model.shown(backend.weight)} is not a "
                           f"Kubernetes quantity >= 0. Fix: use quantities such as \"900m\" and \"100m\", or "
                           f"whole numbers (split.smi-spec.io/v1alpha1).", urn)
                else:
                    report(f"{where} backends[{i}] ({service}) weight {model.shown(backend.weight)} is not a "
                           f"whole number >= 0. Fix: use integers such as 90 and 10 (quantities like \"900m\" are "
                           f"for split.smi-spec.io/v1alpha1 only).", urn)
                whole = False
                continue
            total += weight
        if whole and total <= 0:
            report(f"{where} backend weights sum to {total}: no traffic could be routed. Fix: give at least one "
                   f"backend a positive weight.", urn)
        elif dropped and not usable:
            report(f"{where} has no backend the controller can use with a weight above 0 (it drops "
                   f"{', '.join(dropped)}): it ignores the whole TrafficSplit (\"no usable backend with a weight above "
                   f"0\"), so the root's traffic is not split. Fix: correct those backends (see the other messages), "
                   f"or give a backend the controller keeps a weight above 0.", urn)
        if acl is True:
            _check_split_reachability(view, split, report)
        _check_split_under_routes(view, split, report)
    for route in view.mesh_routes:
        if controller_ignores.ignores_namespace(route.namespace) is not False:
            continue  # the controller reads no route of that namespace (or may not, or its namespace is unknown)
        _check_route_backends(view, route, report)
        if acl is True:
            _check_route_reachability(view, route, report)


def _split_name_fix(written: str, ns: str, what: str) -> str:
    """How to write a TrafficSplit service name the controller refuses (``written``, in a split of ``ns``)."""
    name, _, rest = written.partition(".")
    other = rest.partition(".")[0]
    if other != ns:
        return (f"name a Service of namespace {ns} (its name alone, e.g. {name!r}), or, for {what} in namespace "
                f"{other!r}, create the TrafficSplit in that namespace, next to its Services")
    return f"write {name!r} (or {name}.{ns}.svc.<cluster domain>)"


def _split_backend_mismatch(view: StackView, root: model.Service | None, backend: model.Service | None
                            ) -> tuple[str, str] | None:
    """Why the controller drops a TrafficSplit backend Service although it exists, as ``topology._splits``
    does: another traffic type than the root's, or not every port of the root (the split sends each root
    port's traffic to the same port of each backend). ``(what, fix)``, or None when it keeps it, or
    the stack does not tell (a Service or its ports not declared here, or not known yet)."""
    if root is None or backend is None or root.external_name or backend.external_name:
        return None
    default = view.default_traffic_type()
    root_traffic, traffic = root.traffic_type(default), backend.traffic_type(default)
    if is_unknown(root_traffic) or is_unknown(traffic):
        return None
    if traffic is not root_traffic:
        return (f"Service {backend.key} is {traffic.value}, the root {root.key} is {root_traffic.value}",
                f"give Service {backend.key} the root's traffic type (annotation lightmesh.io/traffic-type: "
                f"{root_traffic.value}, MeshService traffic_type), or split {root.key} between Services of its own "
                f"traffic type")
    root_ports, ports = root.meshed_ports(root_traffic), backend.meshed_ports(traffic)
    if not isinstance(root_ports, list) or not isinstance(ports, list):
        return None
    have = {p.port for p in ports}
    missing = [p.port for p in root_ports if p.port not in have]
    if not missing:
        return None
    listed = ", ".join(map(str, missing))
    return (f"Service {backend.key} does not expose port(s) {listed} of the root {root.key} (it has "
            f"{', '.join(map(str, sorted(have))) or 'no ' + _protocol(traffic) + ' port'}; a split sends each root "
            f"port's traffic to the same port of its backends)",
            f"add port(s) {listed} to Service {backend.key} (spec.ports[].port; its targetPort may differ), or "
            f"remove it from the split")


def _check_split_under_routes(view: StackView, split: model.TrafficSplit, report: ReportViolation) -> None:
    """The controller ignores a TrafficSplit whose root is the parent of a Gateway API route (of the
    root's traffic type): the routes decide that Service's traffic."""
    root = view.services.get((split.namespace, split.service))
    if root is None:
        return
    traffic = root.traffic_type(view.default_traffic_type())
    if is_unknown(traffic):
        return
    routes = view.routes_attached_to(root, traffic)  # only a route the controller attaches decides
    if isinstance(routes, list) and routes:
        report(f"{split.describe()} splits Service {root.key}, which is the parent of "
               f"{', '.join(r.describe() for r in routes)}: Gateway API routes decide that Service's traffic, so the "
               f"controller ignores this TrafficSplit. Fix: write the split as the route's weighted backendRefs "
               f"(and delete the TrafficSplit), or remove the Service from the route's parentRefs.", split.resource.urn)


def _check_split_matches(view: StackView, split: model.TrafficSplit, report: ReportViolation) -> None:
    """``matches`` name route objects of the split's namespace; the controller takes HTTPRouteGroups
    (which requests are split) and TCPRoutes/UDPRoutes (which apply to every port), each with its
    ``kind`` written: it ignores the whole split for a match of any other kind, or of none. An http
    root's split applies to the requests of the valid HTTPRouteGroup matches named: with none (only
    TCPRoutes/UDPRoutes, or groups whose every match it ignores) it ignores the split too."""
    where, urn, ns = split.describe(), split.resource.urn, split.namespace
    groups: list = []  # the HTTPRouteGroups named
    whole = True  # every match known, of a kind the controller takes, naming a route of the stack
    for i, match in enumerate(split.matches if isinstance(split.matches, list) else []):
        kind, name = model.dig(match, "kind"), model.dig(match, "name")
        if is_unknown(kind) or is_unknown(name):
            whole = False
            continue
        route = view.find_route(kind, ns, name) if kind in model.ROUTE_KINDS else None
        whole = whole and isinstance(route, model.Route)
        if kind == "HTTPRouteGroup":
            groups.append(route)
        if kind is None:
            report(f"{where} matches[{i}] ({name!r}) has no kind: the controller reads a match only with its kind "
                   f"(HTTPRouteGroup, TCPRoute or UDPRoute) and ignores a TrafficSplit with any other match. Fix: set "
                   f"matches[{i}].kind to HTTPRouteGroup (TrafficSplitArgs matches= creates one with its kind).", urn)
        elif kind not in model.ROUTE_KINDS:
            report(f"{where} matches[{i}] ({name!r}) has kind {kind!r}; the controller ignores a TrafficSplit "
                   f"with such a match. Fix: use kind HTTPRouteGroup (TrafficSplitArgs matches= creates one).", urn)
        elif view.find_route(kind, ns, name) is None:
            report(f"{where} match references {kind} {ns}/{name}, which is not declared in this stack. "
                   f"Fix: create it (TrafficSplit matches= creates one) or correct the name.", urn)
    root = view.services.get((ns, split.service)) if isinstance(split.service, str) else None
    if not split.matches or not isinstance(split.matches, list) or root is None \
            or root.traffic_type(view.default_traffic_type()) is not ann.TrafficType.HTTP:
        return
    if not whole:
        return  # a match not known yet, or one the controller ignores the split for anyway (reported above)
    verdicts = [v for g in groups for _, _, v, _ in (g.controller_verdicts() if isinstance(g.matches, list) else [])]
    if any(g.matches is UNKNOWN for g in groups) or any(v is not False for v in verdicts):
        return
    named = ", ".join(f"{g.kind} {g.namespace}/{g.name}" for g in groups) or "only TCPRoutes/UDPRoutes"
    report(f"{where} matches name no HTTP match the controller accepts ({named}): the split of an http root applies "
           f"to the requests of the valid HTTPRouteGroup matches it names, so with none the controller ignores the "
           f"TrafficSplit (\"the referenced HTTPRouteGroups have no valid match\"). Fix: name an HTTPRouteGroup with a "
           f"valid match (see its own violations), or leave matches out to split every request.", urn)


def _allowed_sources(view: StackView, identities: set[Identity]) -> tuple[set[Identity], bool]:
    """The sources TrafficTargets allow to any of ``identities``, and whether that set is complete
    (False while a destination or a source is known only after apply)."""
    out: set[Identity] = set()
    complete = True
    for identity in identities:
        complete = complete and not view.destination_may_be(identity)
        for target in view.targets_for(identity):
            if not isinstance(target.sources, list):
                complete = complete and not is_unknown(target.sources)
                continue
            for source in target.sources:
                if not isinstance(source, Identity):
                    complete = complete and not is_unknown(source)
                elif not source.known:
                    complete = False
                elif source.name and not source.problem:
                    out.add(source)
    return out, complete


def _check_split_reachability(view: StackView, split: model.TrafficSplit, report: ReportViolation) -> None:
    """In ACL mode whoever may call the root must be allowed to every backend: a caller allowed to v1
    but not to v2 gets denied for exactly the share of requests routed to v2."""
    _check_reachability(view, split.namespace, split.service, _backend_names(view, split), ann.TrafficType.HTTP,
                        lambda backend, ids, who: (
                            f"{split.describe()} backend {backend!r} (ServiceAccount {ids}) is not reachable by {who}, "
                            f"who may call the split: in ACL mode their requests routed to {backend!r} are denied"),
                        split.resource.urn, report)


def _check_route_reachability(view: StackView, route: model.MeshRoute, report: ReportViolation) -> None:
    """A Gateway API route on a mesh Service (GAMMA), in ACL mode: the controller passes a rule's
    requests only from the sources that every weighted backend's TrafficTargets allow, so one backend
    that does not allow a caller denies that caller the whole rule (not only its share)."""
    if not isinstance(route.parents, list) or not isinstance(route.rules, list) or is_unknown(route.namespace):
        return
    for parent in route.parent_names:
        svc = view.services.get((route.namespace, parent))
        if svc is None:
            continue  # the controller reports the route's parent as not in the mesh
        traffic = svc.traffic_type(view.default_traffic_type())
        if is_unknown(traffic) or route.may_attach_to(svc, traffic) is not True:
            continue  # a parent the controller ignores (ExternalName, another type, no such port), or not known
        for k, backends in _applied_rules(route):
            kept = [(b, view.route_backend_kept(route, b)[0]) for b in backends]
            if any(is_unknown(b.service) or is_unknown(b.weight) or is_unknown(verdict) for b, verdict in kept):
                continue  # who the backends are is known only after apply
            names = list(dict.fromkeys(b.service for b, verdict in kept
                                       if isinstance(b.service, str) and b.service and b.weight > 0
                                       and verdict is not False))  # (the controller drops the others)
            _check_reachability(
                view, route.namespace, parent, names, route.traffic_type,
                lambda backend, ids, who, k=k: (
                    f"{route.describe()} spec.rules[{k}] backend {backend!r} (ServiceAccount {ids}) is not reachable "
                    f"by {who}, who may call Service {svc.key}: in ACL mode the controller passes a rule's requests "
                    f"only from sources every weighted backend allows, so all their requests matching this rule are "
                    f"denied, not only the share sent to {backend!r}"),
                route.resource.urn, report)


def _check_route_backends(view: StackView, route: model.MeshRoute, report: ReportViolation) -> None:
    """A Gateway API mesh route's backendRef whose ``port`` is not a port the controller meshes for the
    backend Service (or is missing) is dropped by the controller ("... is not a mesh Service port;
    backend ignored"); a rule left with no backend of weight above 0 answers 500 (GRPCRoute: 503;
    TCPRoute/UDPRoute: connections are closed). Judged for routes the controller attaches to a Service
    of this stack, on the rules it applies."""
    if is_unknown(route.namespace):
        return
    attached = False
    for parent in route.parent_names:
        svc = view.services.get((route.namespace, parent))
        if svc is not None and route.may_attach_to(svc, svc.traffic_type(view.default_traffic_type())) is True:
            attached = True
    if not attached:
        return
    answer = ("connections to it are closed" if route.traffic_type is not ann.TrafficType.HTTP
              else "requests matching it are refused (503)" if route.kind == "GRPCRoute"
              else "requests matching it answer 500")
    for k, backends in _applied_rules(route):
        verdicts = [(b, *view.route_backend_kept(route, b)) for b in backends]
        live = any(verdict is not False and (is_unknown(b.weight) or (isinstance(b.weight, int) and b.weight > 0))
                   for b, verdict, _ in verdicts)
        for b, verdict, why in verdicts:
            if verdict is not False:
                continue
            at = f"spec.rules[{k}].backendRefs[{b.index}]"
            effect = (f"so the rule is left with no backend and {answer}" if not live
                      else "and its share goes to the rule's other backends")
            target = view.services.get((route.namespace, b.service))
            fix = ("point it at a Service with pods (an ExternalName Service has none the mesh could send to)"
                   if target is not None and target.external_name
                   else f"set {at}.port to a port of the Service (its spec.ports[].port, not the targetPort)")
            report(f"{route.describe()} {at} (Service {route.namespace}/{b.service}): {why}; the controller drops "
                   f"this backend (\"not a mesh Service port; backend ignored\"), {effect}. Fix: {fix}.",
                   route.resource.urn)


def _check_reachability(view: StackView, ns: str, root: str, backends: list[str], traffic: Any, lead,
                        urn: str, report: ReportViolation) -> None:
    """Whoever may call ``root`` must be allowed to every backend; ``lead(backend, accounts, who)``
    words the violation."""

    def accounts(service: str) -> set[Identity] | None:
        svc = view.services.get((ns, service))
        if svc is None:
            return None
        res = view.resolve(svc)
        return None if res.reason or res.unknown else res.service_accounts

    backend_accounts = {b: accounts(b) for b in backends}
    # The callers are whoever may call the root. An SMI root ("apex") Service often selects no pods of
    # its own; then whoever may call any backend counts, so every backend must allow the same clients.
    # Callers not known yet are left out: that can only hide a violation, never invent one.
    callers, _ = _allowed_sources(view, accounts(root) or set())
    if not callers:
        for ids in backend_accounts.values():
            callers |= _allowed_sources(view, ids or set())[0]
    for backend, ids in backend_accounts.items():
        if not ids:
            continue  # not resolvable from the stack: the coverage rule reports the Service itself
        allowed, complete = _allowed_sources(view, ids)
        missing = callers - allowed
        if not missing or not complete:
            continue
        who = ", ".join(sorted(map(str, missing)))
        identity = sorted(ids, key=str)[0]
        sources = ", ".join(f'{{"service_account": "{m.name}", "namespace": "{m.namespace}"}}'
                            for m in sorted(missing, key=str))
        report(f"{lead(backend, ', '.join(sorted(map(str, ids))), who)}. Fix: add "
               f"{_access_policy_hint(identity, traffic, sources)} (or those sources to the AccessPolicy for "
               f"{identity}).", urn)


traffic_split_valid = StackValidationPolicy(
    name="lightmesh-traffic-split-valid",
    description=("TrafficSplits, their service names read as the controller reads them (name, name.<ns>, "
                 "name.<ns>.svc.<domain>; another namespace is refused): backends exist in the split's namespace, are "
                 "not the root, have the root's traffic type and every port of the root, weights are whole "
                 "numbers (split.smi-spec.io/v1alpha1: Kubernetes quantities) with a positive sum, splits do not nest "
                 "or loop, one split per root, matches have a kind (and an http root at least one valid HTTP match), "
                 "no Gateway API route the controller attaches to the root (it then ignores the split); Gateway API "
                 "mesh route backendRefs name a port of their Service; in ACL mode every backend of a split, or of a "
                 "Gateway API mesh route's rule, is reachable by everyone allowed to call the root. Objects in "
                 "namespaces the controller ignores are skipped."),
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=_schema(TRAFFIC_SPLIT_DEFAULTS, {
        **_ACL_DEFAULTS_DESCRIPTIONS,
        "allow_external_services": "Do not report root or backend Services that this stack does not declare.",
    }),
    remediation_steps="Fix the TrafficSplit's backends/weights; in ACL mode give every backend the same sources.",
    validate=_per_cluster(_traffic_splits, TRAFFIC_SPLIT_DEFAULTS),
)

# ----------------------------------------------------------------------------- 4. mesh annotations

ANNOTATIONS_DEFAULTS = {"report_unknown_keys": True, "default_traffic_type": "http"}
_TRAFFIC_TYPES = [t.value for t in ann.TrafficType]  # http, tcp, udp: the controller's --default-mode choices

# annotation key → the MeshService argument that renders it (for the hint)
_MESH_SERVICE_FIELD = {
    ann.TRAFFIC_TYPE: "traffic_type", ann.SCHEME: "scheme", ann.RETRY_ATTEMPTS: "retry_attempts",
    ann.CIRCUIT_BREAKER_EXPRESSION: "circuit_breaker_expression", ann.RATELIMIT_AVERAGE: "rate_limit_average",
    ann.RATELIMIT_BURST: "rate_limit_burst", ann.REQUEST_TIMEOUT: "request_timeout",
}


# A valid value per mesh key, standing in for one not known yet: the key still counts (it wins over
# the same key under a later prefix, it completes a rate-limit pair) and is itself not judged.
_PLACEHOLDERS = {
    ann.TRAFFIC_TYPE: "http", ann.SCHEME: "http", ann.RETRY_ATTEMPTS: "1",
    ann.CIRCUIT_BREAKER_EXPRESSION: "NetworkErrorRatio() > 0.5", ann.RATELIMIT_AVERAGE: "1",
    ann.RATELIMIT_BURST: "1", ann.REQUEST_TIMEOUT: "1s",
}


def _with_placeholders(annotations: dict) -> dict:
    return {key: _PLACEHOLDERS.get(key.rsplit("/", 1)[-1], "") if is_unknown(value) else value
            for key, value in annotations.items()}


def _validate_annotations(args: StackValidationArgs, report: ReportViolation) -> None:
    cfg = _config(args.get_config(), ANNOTATIONS_DEFAULTS)
    default = cfg["default_traffic_type"]
    if not isinstance(default, str) or default not in _TRAFFIC_TYPES:
        # (the Pulumi CLI refuses it by the schema's enum before any rule runs; a direct or offline run does not)
        report(f"policy config of lightmesh-service-annotations-valid: property default_traffic_type is "
               f"{model.shown(default)}, not one of {', '.join(_TRAFFIC_TYPES)}; no Service is judged. Fix: set it "
               f"to the controller's --default-mode (MeshInstall default_traffic_type) of the mesh this stack's "
               f"Services join: http, tcp or udp.")
        return
    for view in _views(args):
        _annotations(view, cfg, report)


# Without a controller in the stack, what every controller skips whatever its flags: kube-system and
# default/kubernetes (its own namespace and its --watch/--ignore-namespaces are not known).
_ALWAYS_IGNORED = model.IgnoreSettings(mesh_namespace=None)


def _annotations(view: StackView, cfg: dict, report: ReportViolation) -> None:
    """Every Service / ServicePatch of one cluster, judged as the controller reads it: with its default
    traffic type (``--default-mode``; without a controller in the stack, the rule's ``default_traffic_type``)
    and not at all where it never reads Services (``topology.build_topology``: kube-system,
    default/kubernetes, its own namespace, its --ignore-namespaces, and with --watch-namespaces every other)."""
    if view.mesh_controllers:
        default, origin, ignores = (view.default_traffic_type(), "the controller's --default-mode",
                                    view.ignore_settings())
    else:
        default, origin, ignores = (ann.TrafficType(cfg["default_traffic_type"]),
                                    "this rule's default_traffic_type", _ALWAYS_IGNORED)
    for resource in view.resources:
        if resource.type not in (model.SERVICE, model.SERVICE_PATCH):
            continue
        name, auto_named = model.object_name(resource)
        # (an auto-named object's name only starts with its resource name: it is no ALWAYS_IGNORED_SERVICES one)
        if ignores.ignores(model.resource_namespace(resource), None if auto_named else name) is not False:
            continue  # the controller never reads it (or may not: a value not known yet), so reports nothing
        _judge_annotations(resource, cfg, default, origin, report)


def _judge_annotations(resource: model.Resource, cfg: dict, default: Any, origin: str,
                       report: ReportViolation) -> None:
    """One Service / ServicePatch's mesh annotations; ``default``: the controller's default traffic type
    (UNKNOWN while not known yet), ``origin`` where it comes from (for messages)."""
    annotations = model.dig(resource.props, "metadata", "annotations")
    if not isinstance(annotations, dict):
        return
    service_type = model.dig(resource.props, "spec", "type")
    if service_type == "ExternalName" or is_unknown(service_type):
        return  # the controller skips an ExternalName Service before reading its annotations (or may: not known yet)
    urn = resource.urn
    known = {k: v for k, v in annotations.items() if not is_unknown(v)}
    name, _ = model.object_name(resource)
    where = f"Service {model.resource_namespace(resource)}/{name}"
    unknown_keys = {k for k, v in annotations.items() if is_unknown(v)}
    # The traffic type as the controller reads it (topology._service): the annotation's, else (none, or
    # one it refuses) the controller's default. One not known yet stands in as http (its placeholder).
    chosen = ann.lookup(annotations, ann.TRAFFIC_TYPE)
    default_unknown = is_unknown(default)
    settings, errors = ann.parse_annotations_lenient(_with_placeholders(annotations),
                                                     ann.TrafficType.HTTP if default_unknown else default)
    # As the controller (topology._annotation_errors, _unused_http_keys): on a tcp or udp Service an
    # HTTP-only key is ignored, valid or not, and never takes the Service out of the mesh. A traffic type
    # not known yet: both outcomes are said.
    traffic = settings.traffic_type.value
    http = settings.traffic_type is ann.TrafficType.HTTP
    from_default = chosen is None or any(e.annotation == chosen[0] for e in errors)
    if chosen is not None and is_unknown(chosen[1]):
        traffic_unknown = "not known yet"
    elif chosen is None and default_unknown:
        traffic_unknown = "the controller's --default-mode, not known yet"
    else:
        traffic_unknown = None
    if from_default and not http:
        traffic = f"{traffic} ({origin})"  # a Service that names none: why it is not http
    # left out of the mesh by a fatal error the controller does not ignore: on a tcp/udp Service, that of
    # the traffic-type annotation itself (refused: the default stands in, and the Service is left out)
    left_out = any(e.fatal and (http or e.annotation.rsplit("/", 1)[-1] not in ann.HTTP_ONLY_KEYS) for e in errors)
    ignored = (f"The controller keeps this Service in the mesh and ignores this annotation: it applies to HTTP "
               f"traffic only, and traffic type {traffic} does not use it" if not left_out else
               f"The controller ignores this annotation (it applies to HTTP traffic only, and traffic type {traffic} "
               f"does not use it), and leaves this Service out of the mesh for its traffic-type annotation until "
               f"that is fixed")
    for error in errors:
        key = error.annotation.rsplit("/", 1)[-1]
        http_only = key in ann.HTTP_ONLY_KEYS
        if error.annotation in unknown_keys:
            continue
        # "...: invalid circuit-breaker expression: ... at position 1 in 'Foo() > 1'": the value is already there
        text = (f"annotation {error.annotation}={model.shown(error.value)}: "
                f"{error.reason.removesuffix(f' in {error.value!r}')}")
        if http_only and not http:
            report(f"{where}: {text}. {ignored}. Fix: remove the annotation (or set traffic type http if the "
                   f"Service carries HTTP, and correct it).", urn)
            continue
        effect = ("The controller leaves this Service out of the mesh (its mesh names do not resolve) until it "
                  "is fixed" if error.fatal
                  else f"The controller keeps this Service, but {error.effect}, until it is fixed")
        if http_only and traffic_unknown:
            effect = (f"If the Service's traffic type ({traffic_unknown}) is http: {effect[0].lower()}{effect[1:]}; "
                      f"if it is tcp or udp, the controller ignores this annotation (it applies to HTTP traffic only)")
        report(f"{where}: {text}. {effect}. Fix: "
               f"correct the annotation, or MeshService arg {_MESH_SERVICE_FIELD.get(key, key)}.", urn)
    if not http and not left_out:
        # valid HTTP-only keys on a tcp/udp Service: the controller says it ignores each (an object error)
        reported = {error.annotation for error in errors}
        for key in ann.HTTP_ONLY_KEYS:
            full = settings.sources.get(key)
            if full is not None and full not in reported:
                report(f"{where}: annotation {full} applies to HTTP traffic only; traffic type {traffic} does not "
                       f"use it. The controller keeps this Service in the mesh and ignores this annotation. Fix: "
                       f"remove the annotation (or set traffic type http if the Service carries HTTP).", urn)
    if cfg["report_unknown_keys"]:
        for full in sorted(known):
            prefix = next((p for p in ann.PREFIXES if full.startswith(p)), None)
            if prefix is None or full[len(prefix):] in ann.KEYS:
                continue
            guess = difflib.get_close_matches(full[len(prefix):], ann.KEYS, n=1)
            hint = f"did you mean {prefix}{guess[0]}?" if guess else f"known keys: {', '.join(ann.KEYS)}"
            fix = f"rename it to {prefix}{guess[0]}" if guess else "use one of the known keys"
            report(f"{where}: annotation {full} is not a mesh setting and is ignored ({hint}). Fix: {fix}, or "
                   f"remove it (or set report_unknown_keys: false for this rule if it is meant for another tool).", urn)


service_annotations_valid = StackValidationPolicy(
    name="lightmesh-service-annotations-valid",
    description=("Mesh annotations on any Service but an ExternalName one (lightmesh.io/, mesh.traefik.io/, "
                 "maesh.containo.us/) are valid by the controller's own parser: traffic type, scheme, whole numbers "
                 "in range, rate limit pairs, durations, a parsable circuit-breaker expression; no misspelled keys; "
                 "no HTTP-only keys on a tcp or udp Service (the controller ignores them), a Service without a "
                 "traffic-type annotation having the controller's --default-mode. Services the controller never "
                 "reads (kube-system, default/kubernetes, its own, ignored or unwatched namespaces) are skipped."),
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
    config_schema=_schema(ANNOTATIONS_DEFAULTS, {
        "report_unknown_keys": "Report keys under a mesh prefix that are not mesh settings (typos).",
        "default_traffic_type": ("The traffic type of a Service without a traffic-type annotation when the stack "
                                 "does not declare the Lightmesh controller (its --default-mode, MeshInstall "
                                 "default_traffic_type, of the mesh the Services join); a stack that declares it "
                                 "is judged by its own flag."),
    }, choices={"default_traffic_type": _TRAFFIC_TYPES}),
    remediation_steps="Correct the annotation value (or the MeshService argument that renders it).",
    validate=_validate_annotations,
)

# ------------------------------------------------------------------------------ 5. install hygiene


def _mesh_workload(args: ResourceValidationArgs) -> tuple[model.Workload, str] | None:
    resource = _resource(args)
    workload = model.workload_from(resource)
    if workload is None:
        return None
    role = model.workload_role(resource)
    return (workload, role) if role else None


IMAGES_DEFAULTS = {"require_digest": False, "disallowed_tags": ["latest"]}


# A valid image digest: sha256, sha384 or sha512 and exactly 64, 96 or 128 lowercase hex digits. The same
# definition as MeshInstall's (``mesh_components.install._IMAGE_DIGEST``), which the pack does not import:
# ``_runtime`` brings in the ``lightmesh`` package only (``mesh_components`` would bring the Kubernetes
# provider SDK, and is not on the path of a pack run from a checkout); tests/policies/test_policy_rules.py
# holds the two to one verdict.
IMAGE_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")


def image_pin_problem(image: str, require_digest: bool, disallowed: list[str]) -> str | None:
    """Why ``image`` is not pinned, or None. A digest always pins; a tag pins unless disallowed."""
    if "@" in image:
        if IMAGE_DIGEST.fullmatch(image.split("@", 1)[1]):
            return None
        return ("has a malformed digest (expected sha256:, sha384: or sha512: and 64, 96 or 128 lowercase hex "
                "digits)")
    if require_digest:
        return "has no digest (require_digest is on)"
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag (it means :latest)"
    tag = last.split(":", 1)[1]
    if tag in disallowed:
        return f"uses the floating tag :{tag}"
    return None


def _validate_images(args: ResourceValidationArgs, report: ReportViolation) -> None:
    found = _mesh_workload(args)
    if not found:
        return
    workload, role = found
    cfg = _config(args.get_config(), IMAGES_DEFAULTS)
    for container in model.containers_of(workload.pod_spec):
        image = container.get("image")
        if not isinstance(image, str):
            continue  # unknown during preview, or missing (the API server rejects that on its own)
        if problem := image_pin_problem(image, bool(cfg["require_digest"]), list(cfg["disallowed_tags"] or [])):
            if "@" not in image and cfg["require_digest"]:
                repository = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
                fix = (f"pin the image by digest, which require_digest demands: a tag is not enough "
                       f"(MeshInstallArgs image, e.g. {repository}@sha256:<digest of the version to run>)")
            else:
                fix = ("pin a version tag or digest (MeshInstallArgs image/tag, e.g. "
                       "ghcr.io/lightmesh/lightmesh:0.1.0)")
            report(f"Lightmesh {role} {workload.describe()} container {container.get('name')!r} image {image!r} "
                   f"{problem}: nodes could run different mesh versions. Fix: {fix}.")


images_pinned = ResourceValidationPolicy(
    name="lightmesh-images-pinned",
    description="The Lightmesh controller and proxy images are pinned: a tag other than latest, or a digest.",
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.MEDIUM,
    config_schema=_schema(IMAGES_DEFAULTS, {
        "require_digest": "Require a digest (@sha256:, @sha384: or @sha512:), not just a tag.",
        "disallowed_tags": "Tags that float and so do not count as pinned.",
    }),
    remediation_steps="Set MeshInstallArgs image to a versioned tag or a digest.",
    validate=_validate_images,
)

RESOURCES_DEFAULTS = {"requests": ["cpu", "memory"], "limits": ["cpu", "memory"]}


def _validate_resources(args: ResourceValidationArgs, report: ReportViolation) -> None:
    found = _mesh_workload(args)
    if not found:
        return
    workload, role = found
    cfg = _config(args.get_config(), RESOURCES_DEFAULTS)
    for container in model.containers_of(workload.pod_spec):
        resources = container.get("resources")
        if is_unknown(resources):
            continue
        missing = []
        for section in ("requests", "limits"):
            values = model.dig(resources, section)
            if is_unknown(values):
                continue
            missing += [f"{section}.{r}" for r in cfg[section] or [] if model.dig(values, r) in (None, "")]
        if missing:
            fields = ", ".join(f"{r}_{'request' if s == 'requests' else 'limit'}"
                               for s, r in (m.split(".") for m in missing))
            report(f"Lightmesh {role} {workload.describe()} container {container.get('name')!r} has no "
                   f"{', '.join(missing)}: without them the scheduler cannot reserve room for the mesh and a leak "
                   f"can starve the node. Fix: set MeshInstallArgs {role}_resources {fields}, or drop the "
                   f"resource from this rule's requests/limits config if that is a deliberate choice.")


install_resources = ResourceValidationPolicy(
    name="lightmesh-install-resources",
    description="The Lightmesh controller and proxy containers declare CPU and memory requests and limits.",
    enforcement_level=EnforcementLevel.ADVISORY,
    severity=Severity.LOW,
    config_schema=_schema(RESOURCES_DEFAULTS, {
        "requests": "Resources (cpu, memory) every mesh container must request.",
        "limits": "Resources (cpu, memory) every mesh container must limit (e.g. [\"memory\"] to allow no CPU limit).",
    }),
    remediation_steps="Set requests and limits for the controller and proxy in MeshInstallArgs.",
    validate=_validate_resources,
)

# require_acl's schema default is null, not true: the CLI fills in schema defaults before the pack
# sees its config, so a boolean default would be indistinguishable from an explicit setting.
REQUIRE_ACL_DEFAULTS = {"require_acl": None}
PRODUCTION_STACK_WORDS = ("prod", "production")


def stack_name_from_urn(urn: str) -> str | None:
    """The stack a resource belongs to: ``urn:pulumi:<stack>::<project>::<type>::<name>``."""
    if not isinstance(urn, str) or not urn.startswith("urn:pulumi:"):
        return None
    stack = urn[len("urn:pulumi:"):].split("::", 1)[0]
    return stack or None


def current_stack_name(urn: str) -> str | None:
    """The stack being previewed: from the resource's URN (every engine request carries one), else from
    the ``PULUMI_STACK`` environment variable (pulumi-policy configures ``pulumi.get_stack()`` from it)."""
    name = stack_name_from_urn(urn) or os.environ.get("PULUMI_STACK") or None
    return name.rsplit("/", 1)[-1] if name else None  # "org/project/stack" → "stack"


def is_production_stack(stack: str) -> bool:
    """``prod``/``production`` as a whole word of the stack name: prod, production, prod-eu, eu-prod-1,
    app_production; not product-catalog."""
    return any(word in PRODUCTION_STACK_WORDS for word in re.split(r"[-_.]", stack.lower()))


def acl_required(configured: Any, urn: str) -> tuple[bool, str]:
    """(whether ACL mode is required, why — for the message). An explicit ``require_acl`` wins; else
    production stacks require it; a stack whose name cannot be known is treated as production."""
    if isinstance(configured, bool):
        return configured, f"require_acl is {str(configured).lower()} in the policy config"
    stack = current_stack_name(urn)
    if stack is None:
        return True, "the stack name is not known, so it is treated as a production stack"
    if is_production_stack(stack):
        return True, f"stack {stack!r} is a production stack"
    return False, f"stack {stack!r} is not a production stack"


def _validate_require_acl(args: ResourceValidationArgs, report: ReportViolation) -> None:
    found = _mesh_workload(args)
    if not found or found[1] != "controller":
        return
    workload = found[0]
    bad = model.bad_acl_args(workload)
    for container, key, index, word in bad:
        # on every stack: a controller that does not start is no mesh at all
        report(f"Lightmesh controller {workload.describe()} container {container!r} {key}[{index}] is {word!r}: "
               f"--acl is a switch and takes no value, so the controller refuses this argument (\"ignored explicit "
               f"argument\") and exits at start, over and over (crash loop). Fix: write --acl alone for ACL mode "
               f"(MeshInstallArgs acl=True), or leave it out.")
    parsed = model.controller_parser_problem(workload)
    if parsed and not bad:  # (--acl=<value> is reported above, in its own words)
        container = model.controller_container_name(workload)
        report(f"Lightmesh controller {workload.describe()} container {container!r} command/args: the controller's "
               f"flag parser refuses them at start ({parsed}), so it exits (code 2), over and over (crash loop), "
               f"and there is no mesh at all. Fix: correct that flag (lightmesh controller --help lists them).")
    if problem := model.controller_settings_problem(workload):
        # on every stack too: the controller checks its flags before anything starts
        container = model.controller_container_name(workload)
        report(f"Lightmesh controller {workload.describe()} container {container!r} command/args: the controller "
               f"refuses these flags at start: {problem}. It logs \"invalid settings\" and exits (code 2), over and "
               f"over (crash loop), so there is no mesh at all. Fix: {_settings_fix(problem)}.")
    cfg = _config(args.get_config(), REQUIRE_ACL_DEFAULTS)
    required, why = acl_required(cfg["require_acl"], args.urn)
    if not required or bad:
        return
    if model.acl_flag(workload) is False:
        report(f"Lightmesh controller {workload.describe()} runs without --acl ({why}): every pod can reach every "
               f"mesh Service. Fix: MeshInstallArgs acl=True (stack config acl: true) plus an AccessPolicy for every "
               f"mesh Service; for a development stack set require_acl: false for lightmesh-require-acl in "
               f"--policy-pack-config.")


def _settings_fix(problem: str) -> str:
    """How to correct the controller flags ``model.controller_settings_problem`` found wrong."""
    if problem.startswith("--watch-namespaces names"):
        return ("remove those namespaces from --watch-namespaces (MeshInstallArgs watch_namespaces): the controller "
                "never meshes kube-system nor its own namespace")
    if problem.startswith("--watch-namespaces and --ignore-namespaces"):
        return ("name each namespace in one of the two lists only (MeshInstallArgs watch_namespaces, "
                "ignore_namespaces): with --watch-namespaces, a namespace it does not list is not meshed anyway")
    return ("correct that flag in the controller's args (MeshInstallArgs domains, http/tcp/udp_port_base and "
            "_port_limit, namespace)")


require_acl = ResourceValidationPolicy(
    name="lightmesh-require-acl",
    description="On production stacks (or wherever require_acl is true) the mesh is installed in ACL mode "
                "(MeshInstall acl: true, i.e. the controller runs with --acl); on every stack, --acl is written "
                "as the controller takes it (--acl=true stops it from starting), and the controller's flags make "
                "settings it accepts (no --watch-namespaces naming kube-system or the mesh namespace, no namespace "
                "both watched and ignored, port ranges and domains it takes: otherwise it exits at start).",
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=_schema(REQUIRE_ACL_DEFAULTS, {
        "require_acl": ("Demand ACL mode: true or false; null (default) demands it on production stacks, i.e. "
                        "stacks whose name has the word prod or production (prod, production, prod-eu, eu-prod-1), "
                        "and on stacks whose name is not known."),
    }),
    remediation_steps="Set acl=True on MeshInstall and declare AccessPolicies for every mesh Service.",
    validate=_validate_require_acl,
)

# ---------------------------------------------------------------------- 8. one resource per object

UNIQUE_OBJECTS_DEFAULTS = {"ignore_objects": []}


def object_identity_of(resource: model.Resource) -> tuple[str, str, str, str] | None:
    """(API group, kind, namespace, name) of a Kubernetes object or patch; None for what is not one
    (components, Helm releases), for a generated name, or while the name or namespace is unknown."""
    if not resource.type.startswith("kubernetes:"):
        return None
    api_version, kind = resource.props.get("apiVersion"), resource.props.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        return None
    name, auto_named = model.object_name(resource)
    # scope first: a cluster-scoped kind has no namespace, whatever its provider's (even one not known yet)
    namespace = model.resource_namespace(resource)
    if auto_named or not isinstance(name, str) or is_unknown(namespace):
        return None
    return object_identity(api_version, kind, namespace, name)


def _unique_objects(view: StackView, cfg: dict, report: ReportViolation) -> None:
    ignored = set(cfg["ignore_objects"] or [])
    objects: dict[tuple, list[model.Resource]] = {}
    patches: dict[tuple, list[model.Resource]] = {}
    for r in view.resources:
        identity = object_identity_of(r)
        if identity is not None and describe_identity(identity) not in ignored:
            (patches if r.kind.endswith("Patch") else objects).setdefault(identity, []).append(r)
    installs_reported: set[tuple[str, str]] = set()
    for identity, resources in objects.items():
        first, *others = sorted(resources, key=lambda r: r.urn)
        for other in others:
            if all(model.MESH_INSTALL_COMPONENT in r.parent_types for r in (first, other)):
                # the SMI CRDs have fixed names: another instance name cannot help
                pair = (_install_of(first), _install_of(other))
                if pair not in installs_reported:
                    installs_reported.add(pair)
                    report(f"Two MeshInstalls deploy to one cluster ({pair[0]} and {pair[1]}; both declare "
                           f"{describe_identity(identity)}, among others): Lightmesh runs one mesh per cluster (one "
                           f"set of SMI CRDs, one cluster DNS patch). Fix: keep one MeshInstall per cluster (its "
                           f"watch_namespaces/ignore_namespaces choose what it meshes), or give each its own "
                           f"cluster (a Kubernetes provider per cluster).", other.urn)
                continue
            report(f"{describe_identity(identity)} is declared by two resources, {_who(first)} and {_who(other)}: "
                   f"in the cluster they are one object, so each apply overwrites the other and deleting either "
                   f"deletes it. Fix: give one of them another metadata.name (for a component, another instance "
                   f"name), or declare the object once.", other.urn)
    for identity, resources in patches.items():
        resources = sorted(resources, key=lambda r: r.urn)
        for i, a in enumerate(resources):
            for b in resources[i + 1:]:
                _check_patch_conflicts(identity, a, b, report)


def _install_of(resource: model.Resource) -> str:
    """The MeshInstall a resource belongs to, by name when the parent chain tells it."""
    types, names = resource.parent_types, resource.parent_names
    for i in range(len(types) - 1, -1, -1):
        if types[i] == model.MESH_INSTALL_COMPONENT and len(names) == len(types) and names[i]:
            return f"MeshInstall {names[i]!r}"
    return _who(resource)


def _who(resource: model.Resource) -> str:
    return resource_description(resource.urn, resource.name)


def _check_patch_conflicts(identity: tuple, a: model.Resource, b: model.Resource, report: ReportViolation) -> None:
    """Two patches of one object setting one annotation or label to different values fight: each apply
    (each with its own field manager, forced) takes the key back. ``pulumi.com/`` keys steer the patch
    itself (field manager) and differ on purpose."""
    for section, what in (("annotations", "annotation"), ("labels", "label")):
        mine, theirs = model.dig(a.props, "metadata", section), model.dig(b.props, "metadata", section)
        if not isinstance(mine, dict) or not isinstance(theirs, dict):
            continue
        for key in sorted(set(mine) & set(theirs)):
            if key.startswith("pulumi.com/") or is_unknown(mine[key]) or is_unknown(theirs[key]):
                continue
            if mine[key] != theirs[key]:
                both_mesh_services = all(model.MESH_SERVICE_COMPONENT in r.parent_types for r in (a, b))
                fix = ("declare one MeshService per Service, with the settings of both" if both_mesh_services
                       else f"set {what} {key} in one place only")
                report(f"{describe_identity(identity)} is patched by two resources that set {what} {key} to different "
                       f"values: {mine[key]!r} by {_who(a)}, {theirs[key]!r} by {_who(b)}; each apply takes it back "
                       f"from the other, so the object flips between them. Fix: {fix}.", b.urn)


unique_objects = StackValidationPolicy(
    name="lightmesh-unique-objects",
    description=("No two resources of the stack declare the same Kubernetes object in one cluster (same API group, "
                 "kind, namespace and name; e.g. an AccessPolicy's and another component's HTTPRouteGroup), and no two patches of one "
                 "object set an annotation or label to different values (e.g. two MeshServices for one Service)."),
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=_schema(UNIQUE_OBJECTS_DEFAULTS, {
        "ignore_objects": ("Objects this rule skips, as the messages name them: \"Kind namespace/name\" "
                           "(\"Kind.group namespace/name\" outside the core API group, e.g. "
                           "\"HTTPRouteGroup.specs.smi-spec.io shop/api-http\")."),
    }),
    remediation_steps="Give each object its own name (components: distinct instance names), or declare it once.",
    validate=_per_cluster(_unique_objects, UNIQUE_OBJECTS_DEFAULTS),
)

ALL_POLICIES = [
    acl_service_has_traffic_target,
    traffic_target_valid,
    traffic_split_valid,
    service_annotations_valid,
    images_pinned,
    install_resources,
    require_acl,
    unique_objects,
]

POLICIES_BY_NAME: dict[str, Any] = {p.name: p for p in ALL_POLICIES}

