"""The pack as the Pulumi CLI drives it: the analyzer servicer with engine-style config (enforcement
levels, properties, schema defaults), unknown values arriving over the wire, and ``__main__.py``
really building and serving ``lightmesh-policies``."""

import subprocess
import sys
from pathlib import Path

import pytest
from pulumi_policy.proxy import UNKNOWN_ARRAY_VALUE, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE

from lightmesh_policies import ALL_POLICIES, PACK_NAME
from lightmesh_policies.offline import OfflineCheckError, analyze, render_env, resolve_policy_config
from pulumi_policy import EnforcementLevel
from policykit import controller, on_stack, service, whoami_acl_stack

PACK_DIR = Path(__file__).resolve().parents[2] / "policies"


def as_registrations(stack):
    return [{"type": r.type, "name": r.name, "urn": r.urn, "parent": None, "props": r.props} for r in stack]


def insecure_stack(stack="prod"):
    """Seed ACL setup on a production stack, but the controller runs without --acl."""
    return on_stack([controller(acl=False) if r.name == "lightmesh-controller" else r for r in whoami_acl_stack()],
                    stack)


def test_default_levels_and_clean_stack():
    assert analyze(as_registrations(on_stack(whoami_acl_stack(), "prod"))).violations == []
    report = analyze(as_registrations(insecure_stack()))
    [v] = report.violations
    assert (v.policy, v.level) == ("lightmesh-require-acl", "mandatory")
    assert v.message.startswith("Lightmesh controller Deployment lightmesh/lightmesh-controller runs without --acl "
                                "(stack 'prod' is a production stack)")
    assert v.urn.endswith("::lightmesh-controller")
    # the schema default (null) lets the stack name decide: a development stack may run without ACLs
    assert analyze(as_registrations(insecure_stack("dev"))).violations == []


@pytest.mark.parametrize("config, level", [
    ({"lightmesh-require-acl": "advisory"}, "advisory"),
    ({"all": "advisory"}, "advisory"),
    ({"all": "advisory", "lightmesh-require-acl": "mandatory"}, "mandatory"),
    ({"lightmesh-require-acl": {"enforcementLevel": "advisory"}}, "advisory"),
    ({"lightmesh-require-acl": "disabled"}, None),
    ({"lightmesh-require-acl": {"require_acl": False}}, None),
])
def test_policy_pack_config_changes_enforcement_and_properties(config, level):
    violations = analyze(as_registrations(insecure_stack()), config).violations
    assert [v.level for v in violations] == ([level] if level else [])


def test_explicit_require_acl_wins_over_the_stack_name():
    on_dev = analyze(as_registrations(insecure_stack("dev")), {"lightmesh-require-acl": {"require_acl": True}})
    [v] = on_dev.violations
    assert "runs without --acl (require_acl is true in the policy config)" in v.message


def test_schema_defaults_are_filled_in_like_the_cli_does():
    resolved = resolve_policy_config({"lightmesh-install-resources": {"limits": ["memory"]}})
    level, props = resolved["lightmesh-install-resources"]
    assert level == EnforcementLevel.ADVISORY and props == {"requests": ["cpu", "memory"], "limits": ["memory"]}
    assert resolved["lightmesh-require-acl"] == (EnforcementLevel.MANDATORY, {"require_acl": None})
    assert set(resolved) == {p.name for p in ALL_POLICIES}


@pytest.mark.parametrize("config, error", [
    ({"lightmesh-no-such-rule": "advisory"}, "unknown policy 'lightmesh-no-such-rule'"),
    ({"lightmesh-require-acl": {"requireAcl": False}}, "has no property 'requireAcl'"),
    ({"all": "strict"}, "enforcement level must be one of"),
    # property values are checked against the rule's config schema, as the Pulumi CLI checks them
    ({"lightmesh-images-pinned": {"require_digest": "false"}},  # a truthy string: it turned the requirement on
     'lightmesh-images-pinned: property require_digest must be true or false, got a string \\("false"\\)'),
    ({"lightmesh-images-pinned": {"disallowed_tags": "dev"}},  # split into letters before
     'lightmesh-images-pinned: property disallowed_tags must be a list of strings, got a string \\("dev"\\)'),
    ({"lightmesh-images-pinned": {"disallowed_tags": ["dev", 1]}},
     r"lightmesh-images-pinned: property disallowed_tags\[1\] must be a string, got a number \(1\)"),
    ({"lightmesh-acl-service-has-traffic-target": {"ignore_services": "shop/web"}},  # silently ignored before
     "lightmesh-acl-service-has-traffic-target: property ignore_services must be a list of strings"),
    ({"lightmesh-require-acl": {"require_acl": "yes"}},
     "lightmesh-require-acl: property require_acl must be true, false or null, got a string"),
    ({"lightmesh-service-annotations-valid": {"default_traffic_type": "grpc"}},  # the Pulumi CLI refuses it
     'lightmesh-service-annotations-valid: property default_traffic_type must be one of "http", "tcp", "udp", '
     'got "grpc"'),
    ([], r"expected a JSON object of rule ids .*, got a list \(\[\]\)"),
    ("mandatory", "expected a JSON object of rule ids"),
])
def test_bad_policy_config_is_a_clear_error(config, error):
    with pytest.raises(OfflineCheckError, match=error):
        resolve_policy_config(config)


def test_good_policy_config_values_pass_the_schema_check():
    resolved = resolve_policy_config({"lightmesh-require-acl": {"require_acl": None},
                                      "lightmesh-images-pinned": {"require_digest": True, "disallowed_tags": []},
                                      "lightmesh-unique-objects": {"ignore_objects": ["Service shop/api"]}})
    assert resolved["lightmesh-images-pinned"][1] == {"require_digest": True, "disallowed_tags": []}


def test_offline_cli_names_the_config_file_and_refuses_bad_values(tmp_path, capsys):
    from lightmesh_policies.offline import main

    bad_json = tmp_path / "policy-config.json"
    bad_json.write_text('{"lightmesh-require-acl":\n  {"require_acl": fals}}\n')
    assert main([str(PACK_DIR.parent / "examples" / "whoami"), "--policy-pack-config", str(bad_json)]) == 2
    assert capsys.readouterr().err == (f"lightmesh-policies: --policy-pack-config {bad_json}:2:19: not valid JSON: "
                                       "Expecting value\n")
    bad_value = tmp_path / "strings.json"
    bad_value.write_text('{"lightmesh-images-pinned": {"require_digest": "false"}}')
    assert main([str(PACK_DIR.parent / "examples" / "whoami"), "--policy-pack-config", str(bad_value)]) == 2
    assert capsys.readouterr().err == ("lightmesh-policies: policy config: lightmesh-images-pinned: property "
                                       "require_digest must be true or false, got a string (\"false\")\n")


BAD_NUMBERS_PROGRAM = """
import pulumi_kubernetes as k8s

big = "9" * 5000
k8s.core.v1.Service("big", metadata={"name": "big", "namespace": "app",
                                     "annotations": {"lightmesh.io/retry-attempts": big}},
                    spec={"selector": {"a": "b"}, "ports": [{"port": 80}]})
k8s.core.v1.Service("db", metadata={"name": "db", "namespace": "app", "annotations": {"lightmesh.io/traffic-type": "tcp"}},
                    spec={"selector": {"a": "db"}, "ports": [{"port": 5432, "targetPort": "\u00b2"}]})
for backend in ("big-v1", "db-v1"):
    k8s.core.v1.Service(backend, metadata={"name": backend, "namespace": "app"},
                        spec={"selector": {"a": backend}, "ports": [{"port": 80}]})
k8s.apiextensions.CustomResource("db-route", api_version="specs.smi-spec.io/v1alpha4", kind="TCPRoute",
                                 metadata={"name": "db", "namespace": "app"},
                                 spec={"matches": {"name": "db", "ports": [big, "\u00b2", "\u0663"]}})
k8s.apps.v1.Deployment("db", metadata={"name": "db", "namespace": "app"},
                       spec={"selector": {"matchLabels": {"a": "db"}}, "template": {
                           "metadata": {"labels": {"a": "db"}},
                           "spec": {"serviceAccountName": "db", "containers": [{"name": "db", "image": "db:1"}]}}})
k8s.apiextensions.CustomResource("db-target", api_version="access.smi-spec.io/v1alpha3", kind="TrafficTarget",
                                 metadata={"name": "db", "namespace": "app"},
                                 spec={"destination": {"kind": "ServiceAccount", "name": "db", "namespace": "app"},
                                       "sources": [{"kind": "ServiceAccount", "name": "api", "namespace": "app"}],
                                       "rules": [{"kind": "TCPRoute", "name": "db"}]})
k8s.apiextensions.CustomResource("split", api_version="split.smi-spec.io/v1alpha4", kind="TrafficSplit",
                                 metadata={"name": "split", "namespace": "app"},
                                 spec={"service": "big", "backends": [{"service": "big-v1", "weight": big}]})
k8s.apiextensions.CustomResource("old-split", api_version="split.smi-spec.io/v1alpha1", kind="TrafficSplit",
                                 metadata={"name": "old-split", "namespace": "app"},
                                 spec={"service": "db", "backends": [{"service": "db-v1", "weight": 1e308}]})
"""


def test_numbers_of_thousands_of_digits_are_violations_not_a_traceback(tmp_path, capsys):
    """The offline runner over the auditor's kind of program: a number of 5,000 digits (int() of it
    raises), digits that are not ASCII ('\u00b2' made int() raise, '\u0663' was read as 3) and a weight
    of 1e308 (round(1e308 * 1000) raises) are each a violation naming the object and the field."""
    from lightmesh_policies.offline import main

    (tmp_path / "Pulumi.yaml").write_text("name: bad-numbers\nruntime: python\n")
    (tmp_path / "__main__.py").write_text(BAD_NUMBERS_PROGRAM)
    assert main([str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "6 violation(s), 6 mandatory", lines
    expected = [
        "Service app/big: annotation lightmesh.io/retry-attempts='" + "9" * 59 + "... (5000 characters): must be "
        "between 1 and 100",
        "TCPRoute app/db spec.matches.ports[0] '" + "9" * 59 + "... (5000 characters) is not a port number (1-65535)",
        "TCPRoute app/db spec.matches.ports[1] '\u00b2' is not a port number",
        "TCPRoute app/db spec.matches.ports[2] '\u0663' is not a port number",
        "TrafficSplit app/split backends[0] (big-v1) weight '" + "9" * 59 + "... (5000 characters) is not a whole number",
        "TrafficSplit app/old-split backends[0] (db-v1) weight 1e+308 is not a Kubernetes quantity >= 0",
    ]
    for text in expected:
        assert sum(text in line for line in lines) == 1, (text, lines)
    assert all(len(line) < 600 for line in lines)


def test_unknown_values_over_the_wire_skip_only_what_is_unknown():
    stack = whoami_acl_stack()
    # a Service whose annotations are computed, a TrafficTarget whose rules are, a controller whose args are
    for r in stack:
        if r.name == "whoami-svc":
            r.props["metadata"]["annotations"] = UNKNOWN_OBJECT_VALUE
        if r.name == "client-to-server-tt":
            r.props["spec"]["rules"] = UNKNOWN_ARRAY_VALUE
    stack.append(service("whoami", "broken", {"lightmesh.io/scheme": "ftp",
                                              "lightmesh.io/retry-attempts": UNKNOWN_STRING_VALUE},
                         {"app": "whoami"}))
    report = analyze(as_registrations(stack))
    # no "can't run policy ... during preview" diagnostics: every rule ran and judged the known parts
    assert not any("during preview" in v.message for v in report.violations)
    assert [(v.policy, "scheme" in v.message) for v in report.violations] == \
        [("lightmesh-service-annotations-valid", True)]
    controller_unknown = controller()
    controller_unknown.props["spec"]["template"]["spec"]["containers"][0]["args"] = UNKNOWN_ARRAY_VALUE
    assert analyze(as_registrations([controller_unknown])).violations == []


def test_main_builds_and_serves_the_pack():
    """``policies/__main__.py`` is what the CLI runs: it must start the analyzer (it prints its port)."""
    proc = subprocess.Popen([sys.executable, str(PACK_DIR / "__main__.py")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=PACK_DIR,
                            env=render_env())
    try:
        port = proc.stdout.readline().strip()
        assert port.isdigit() and int(port) > 0, proc.stderr.read() if proc.poll() is not None else port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stdout.close()
        proc.stderr.close()
    source = (PACK_DIR / "__main__.py").read_text()
    assert "PolicyPack(name=PACK_NAME" in source and PACK_NAME == "lightmesh-policies"
    assert "version: 0.1.0" in (PACK_DIR / "PulumiPolicy.yaml").read_text()
