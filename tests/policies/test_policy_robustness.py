"""Every rule over every field of what the real components register, one field at a time:

* made **unknown** (what ``pulumi preview`` sends for a computed value): no rule crashes, and no rule
  reports more than it does on the known stack — an unknown can only hide a fact, never invent one;
* made **malformed** (a list or an object where Kubernetes wants a string): no rule crashes.

Inputs: ``programs/whoami_acl`` (MeshInstall, MeshService, AccessPolicy, TrafficSplit) rendered under
the SDK mock engine, with no split, a split, and a split whose root has no pods of its own.
"""

import copy
from pathlib import Path

import pytest
from pulumi_policy import StackValidationPolicy
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE

from lightmesh_policies import ALL_POLICIES, model
from lightmesh_policies.offline import render_registrations
from policykit import R, failing_stacks, messages, run_policy

PROGRAM = Path(__file__).resolve().parent / "programs" / "whoami_acl"

# The kinds the rules read; the rest (CRDs, RBAC, ConfigMaps...) would only slow the sweep down.
READ_KINDS = {"Service", "ServicePatch", "Deployment", "DaemonSet", "Pod", "TrafficTarget", "HTTPRouteGroup",
              "TCPRoute", "UDPRoute", "TrafficSplit"}
STACK_POLICIES = [p for p in ALL_POLICIES if isinstance(p, StackValidationPolicy)]
RESOURCE_POLICIES = [p for p in ALL_POLICIES if not isinstance(p, StackValidationPolicy)]


def rendered(config):
    registrations = render_registrations(PROGRAM, config=config)
    return [R(r["type"], r["name"], r["props"] or {}, model.parent_types_from_urn(r["urn"]))
            for r in registrations if r["type"].rsplit(":", 1)[-1] in READ_KINDS]


@pytest.fixture(scope="module", params=[[], ["split=ok"], ["split=apex"]], ids=["no-split", "split", "apex-split"])
def component_stack(request):
    return rendered(request.param)


@pytest.fixture(scope="module")
def split_stack():
    return rendered(["split=ok"])


def field_paths(value, prefix=()):
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return
    for key, item in items:
        yield prefix + (key,)
        yield from field_paths(item, prefix + (key,))


def with_field(resource, path, value):
    props = copy.deepcopy(resource.props)
    target = props
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return R(resource.type, resource.name, props, resource.parent_types)


def counts(stack, resource):
    """Violations per policy: stack policies over the stack, resource policies over ``resource``."""
    out = {p.name: len(run_policy(p, stack)) for p in STACK_POLICIES}
    out.update({p.name: len(run_policy(p, [resource])) for p in RESOURCE_POLICIES})
    return out


def variants(stack, value):
    """(description, changed stack, changed resource) for every field of every resource."""
    for i, resource in enumerate(stack):
        for path in field_paths(resource.props):
            changed = with_field(resource, path, value)
            yield f"{resource.name} {'.'.join(map(str, path))}", stack[:i] + [changed] + stack[i + 1:], changed, i


def test_an_unknown_field_never_crashes_a_rule_nor_adds_a_violation(component_stack):
    known = {i: counts(component_stack, r) for i, r in enumerate(component_stack)}
    added = []
    for where, stack, changed, i in variants(component_stack, UNKNOWN_STRING_VALUE):
        got = counts(stack, changed)
        added += [f"{where} unknown: {name} {known[i][name]} -> {n}" for name, n in got.items() if n > known[i][name]]
    assert added == []


@pytest.mark.parametrize("malformed", [["x"], {"x": "y"}], ids=["list", "object"])
def test_a_malformed_field_never_crashes_a_rule(split_stack, malformed):
    for where, stack, changed, _ in variants(split_stack, malformed):
        try:
            counts(stack, changed)
        except Exception as exc:  # noqa: BLE001 - any crash is the failure being tested
            pytest.fail(f"{where} = {malformed!r}: {type(exc).__name__}: {exc}")


def test_every_message_names_a_fix():
    """Static: every message a rule can report (each ``report(...)`` call in rules.py) says "Fix:"."""
    import ast
    import inspect

    from lightmesh_policies import rules

    tree = ast.parse(inspect.getsource(rules))
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
             and node.func.id in ("report", "_report_unresolved")]
    assert len(calls) > 30
    for call in calls:
        if call.func.id == "_report_unresolved":
            continue  # its own report(...) call is checked like the others
        message = call.args[0]
        literal = "".join(part.value for part in ast.walk(message)
                          if isinstance(part, ast.Constant) and isinstance(part.value, str))
        assert "Fix: " in literal, f"rules.py line {call.lineno}: {literal[:120]!r}"


def test_every_reported_message_has_a_fix():
    """Dynamic: the messages of stacks with every kind of defect, through every rule."""
    seen = 0
    for stack, config in failing_stacks():
        for policy in ALL_POLICIES:
            for msg in messages(run_policy(policy, stack, config)):
                seen += 1
                assert "Fix: " in msg, (policy.name, msg)
    assert seen >= 40


def controller_parity_stack():
    """Fields the rules read as the controller does: a Gateway API mesh route on an apex Service and on a
    Service with pods, a TrafficTarget destination port (a named targetPort), v1alpha2 list-form headers."""
    from policykit import controller, deployment, http_route_group, service, traffic_target

    rule = [{"kind": "HTTPRouteGroup", "name": "all", "matches": ["all"]}]
    stack = [controller(acl=True), http_route_group("shop", "all", [
        {"name": "all", "pathRegex": "/.*", "methods": ["GET"], "headers": [{"x-user": "[a-z]+"}]}], version="v1alpha2"),
        service("shop", "web", {"lightmesh.io/traffic-type": "http"}, None)]
    for name in ("web-v1", "web-v2"):
        stack += [deployment("shop", name, {"app": name}, name),
                  service("shop", name, {"lightmesh.io/traffic-type": "http"}, {"app": name},
                          ports=[{"port": 80, "targetPort": "http"}]),
                  traffic_target("shop", f"to-{name}", name, ["frontend"], rule)]
        stack[-3].props["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080}]
        stack[-1].props["spec"]["destination"]["port"] = 8080
    for name, parent in (("canary", "web"), ("mirror", "web-v1")):
        stack.append(R("kubernetes:gateway.networking.k8s.io/v1:HTTPRoute", f"{name}-hr", {
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": "shop"},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": parent, "port": 80}],
                     "rules": [{"backendRefs": [{"name": "web-v1", "port": 80, "weight": 90},
                                                {"name": "web-v2", "port": 80, "weight": 10}]}]}}))
    return stack


def test_controller_parity_fields_unknown_or_malformed_never_crash_nor_add_violations():
    stack = controller_parity_stack()
    assert all(n == 0 for n in counts(stack, stack[0]).values()), counts(stack, stack[0])
    for where, changed_stack, changed, _ in variants(stack, UNKNOWN_STRING_VALUE):
        got = counts(changed_stack, changed)
        assert all(n == 0 for n in got.values()), (where, got)
    for malformed in (["x"], {"x": "y"}):
        for where, changed_stack, changed, _ in variants(stack, malformed):
            try:
                counts(changed_stack, changed)
            except Exception as exc:  # noqa: BLE001 - any crash is the failure being tested
                pytest.fail(f"{where} = {malformed!r}: {type(exc).__name__}: {exc}")
