"""The whole pack over what the real components register: each Pulumi program runs under the SDK
mock engine in a fresh subprocess (``lightmesh.local.render``), every registration (components,
``ServicePatch``es, SMI objects) goes through the analyzer servicer the CLI uses.

* the repository's examples: the ACL example passes; a copy with its AccessPolicy removed fails on
  exactly the ACL-coverage rule; the root stack fails ``require_acl`` unless ``acl=true``;
* ``programs/whoami_acl``: whoami in ACL mode built with MeshInstall/MeshService/AccessPolicy/
  TrafficSplit, where one stack-config switch introduces one defect — each rule is seen passing and
  failing on component output, not on hand-written dicts.
"""

import re
import shutil
from pathlib import Path

import pytest

from lightmesh_policies.offline import check_program

REPO = Path(__file__).resolve().parents[2]
PROGRAM = Path(__file__).resolve().parent / "programs" / "whoami_acl"
NO_CPU_LIMIT_OK: dict = {}  # MeshInstall's defaults now carry CPU and memory limits: no allowance needed


def summary(report):
    return sorted({(v.policy, v.level) for v in report.violations})


def test_acl_example_passes():
    report = check_program(REPO / "examples" / "acl")
    assert report.mandatory == []
    # MeshInstall's defaults carry CPU and memory requests and limits: not even an advisory note
    assert report.violations == []


def test_acl_example_without_its_access_policy_fails_on_exactly_that_rule(tmp_path):
    examples = tmp_path / "examples"
    shutil.copytree(REPO / "examples" / "acl", examples / "acl")
    shutil.copy(REPO / "examples" / "_bootstrap.py", examples / "_bootstrap.py")
    main = examples / "acl" / "__main__.py"
    source = main.read_text()
    assert "deploy_whoami(acl=True" in source
    # the mesh stays in ACL mode; only the whoami AccessPolicy is left out
    main.write_text(source.replace("deploy_whoami(acl=True", "deploy_whoami(acl=False"))
    report = check_program(examples / "acl", policy_config=NO_CPU_LIMIT_OK)
    assert summary(report) == [("lightmesh-acl-service-has-traffic-target", "mandatory")]
    named = sorted(re.match(r"Service (\S+) \((\w+)\)", v.message).groups() for v in report.violations)
    assert named == [("whoami/whoami", "http"), ("whoami/whoami-tcp", "tcp")]
    assert all("AccessPolicy(" in v.message and 'destination_service_account="whoami-server"' in v.message
               for v in report.violations)


def test_root_stack_requires_acl_on_production_stacks_unless_configured():
    # the root stack defaults to acl=false: fine on a development stack, not on a production one
    assert check_program(REPO, stack="dev", policy_config=NO_CPU_LIMIT_OK).violations == []
    report = check_program(REPO, stack="prod", policy_config=NO_CPU_LIMIT_OK)
    assert summary(report) == [("lightmesh-require-acl", "mandatory")]
    assert "(stack 'prod' is a production stack)" in report.violations[0].message
    assert check_program(REPO, stack="prod", config=["acl=true"], policy_config=NO_CPU_LIMIT_OK).violations == []
    off = {**NO_CPU_LIMIT_OK, "lightmesh-require-acl": {"require_acl": False}}
    assert check_program(REPO, stack="prod", policy_config=off).violations == []
    on = {**NO_CPU_LIMIT_OK, "lightmesh-require-acl": {"require_acl": True}}
    assert summary(check_program(REPO, stack="dev", policy_config=on)) == [("lightmesh-require-acl", "mandatory")]


def test_other_examples_pass():
    for example in ("whoami", "canary"):
        assert check_program(REPO / "examples" / example, policy_config=NO_CPU_LIMIT_OK).violations == [], example


@pytest.mark.parametrize("config, expected, fragment", [
    ([], [], None),
    (["split=ok"], [], None),
    (["split=apex"], [], None),  # an apex root without pods is judged through its backends
    (["acl=false"], [], None),  # the default stack, "dev", is not a production stack
    (["acl=false", "stack=production"], [("lightmesh-require-acl", "mandatory")], "runs without --acl"),
    (["drop_access=tcp"], [("lightmesh-acl-service-has-traffic-target", "mandatory")],
     "Service whoami/whoami-tcp is tcp but no TrafficTarget for ServiceAccount whoami/whoami-server has a TCPRoute"),
    (["drop_access=http"], [("lightmesh-acl-service-has-traffic-target", "mandatory")],
     "Service whoami/whoami is http but no TrafficTarget for ServiceAccount whoami/whoami-server has a HTTPRouteGroup"),
    (["udp_access=true"], [("lightmesh-traffic-target-valid", "mandatory")],
     "TrafficTarget whoami/client-to-whoami-udp rules[0] is a UDPRoute (udp), but ServiceAccount "
     "whoami/whoami-server only backs http, tcp mesh Services"),
    (["image=ghcr.io/lightmesh/lightmesh:latest"], [("lightmesh-images-pinned", "mandatory")],
     "uses the floating tag :latest"),
    (["cpu_limit="], [("lightmesh-install-resources", "advisory")], "has no limits.cpu"),
    (["split=missing-backend"], [("lightmesh-traffic-split-valid", "mandatory")],
     "TrafficSplit whoami/canary backend Service whoami/whoami-v3 is not declared in this stack"),
    (["split=root-backend"], [("lightmesh-traffic-split-valid", "mandatory")],
     "TrafficSplit whoami/canary backends[1] is the root Service 'whoami' itself"),
    (["split=unreachable"], [("lightmesh-traffic-split-valid", "mandatory")],
     "backend 'whoami-v2' (ServiceAccount whoami/whoami-v2) is not reachable by whoami/whoami-client"),
    (["hand_annotation=lots"], [("lightmesh-service-annotations-valid", "mandatory")],
     "Service whoami/legacy: annotation mesh.traefik.io/retry-attempts='lots': must be a whole number"),
    # an AccessPolicy and a TrafficSplit of one name, both with HTTP matches: each has its own HTTPRouteGroup
    (["split=ok", "split_name=client-to-whoami"], [], None),
    (["second_mesh_service=3"], [("lightmesh-unique-objects", "mandatory")],
     "Service whoami/whoami is patched by two resources that set annotation lightmesh.io/retry-attempts to different "
     "values: '3' by resource 'whoami-again-annotations' of lightmesh:index:MeshService, '2' by resource "
     "'whoami-annotations' of lightmesh:index:MeshService"),
    # (the Service it was for is denied on its only port too: see the next test)
    (["tcp_port=3306"], [("lightmesh-acl-service-has-traffic-target", "mandatory"),
                         ("lightmesh-traffic-target-valid", "mandatory")],
     "TrafficTarget whoami/client-to-whoami-tcp rules[0] allows TCPRoute whoami/client-to-whoami-tcp-tcp on port(s) "
     "3306 only, but the tcp mesh Services of ServiceAccount whoami/whoami-server expose none of them "
     "(Service whoami/whoami-tcp: 8080)"),
])
def test_each_rule_on_component_output(config, expected, fragment):
    stack = next((c.split("=", 1)[1] for c in config if c.startswith("stack=")), "dev")
    config = [c for c in config if not c.startswith("stack=")]
    report = check_program(PROGRAM, stack=stack, config=config)
    assert summary(report) == expected, [str(v) for v in report.violations]
    if fragment:
        assert any(fragment in v.message for v in report.violations), [v.message for v in report.violations]
        assert all(v.urn.startswith("urn:pulumi:") for v in report.violations)


def test_a_tcp_access_policy_on_another_port_leaves_the_service_denied():
    """The controller lets a TCPRoute rule in only on the ports it lists (a Service port or its numeric
    targetPort): an AccessPolicy with tcp ports [3306] for a Service on 8080 covered it for the pack."""
    report = check_program(PROGRAM, stack="dev", config=["tcp_port=3306"])
    [msg] = [v.message for v in report.violations if v.policy == "lightmesh-acl-service-has-traffic-target"]
    assert msg.startswith("Service whoami/whoami-tcp (tcp) is not allowed on any of its ports: the TCPRoute rules of "
                          "the TrafficTargets for ServiceAccount whoami/whoami-server are limited to ports it does not "
                          "serve (TrafficTarget whoami/client-to-whoami-tcp rules[0] (TCPRoute "
                          "whoami/client-to-whoami-tcp-tcp: port(s) 3306))"), msg
    assert "(8080)" in msg and 'Fix: add its port to the route (AccessPolicy tcp={"ports": [8080]})' in msg


CLUSTERS = Path(__file__).resolve().parent / "programs" / "clusters"


def test_each_cluster_of_a_stack_is_judged_on_its_own():
    # One cluster's AccessPolicy used to count for another's Service, and one name in two clusters
    # was reported as one object declared twice.
    report = check_program(CLUSTERS, config=["case=acl"])
    [violation] = report.violations
    assert violation.policy == "lightmesh-acl-service-has-traffic-target" and violation.level == "mandatory"
    assert "shop/api" in violation.message and "mesh-us-api" in violation.urn
    assert check_program(CLUSTERS, config=["case=acl-both"]).violations == []


def test_two_mesh_installs_in_one_cluster_are_one_violation_that_says_so():
    report = check_program(CLUSTERS, config=["case=two-meshes"])
    unique = [v for v in report.violations if v.policy == "lightmesh-unique-objects"]
    assert len(unique) == 1, unique
    assert "one mesh per cluster" in unique[0].message
    assert "MeshInstall 'mesh-a'" in unique[0].message and "MeshInstall 'mesh-b'" in unique[0].message


def test_a_cluster_without_a_controller_of_its_own_is_judged_by_the_stacks_controller():
    # MeshInstall on an explicit provider, the app on the default one: perhaps one cluster. The
    # app's view had no controller, so the ACL rule stayed silent on its uncovered Service.
    report = check_program(CLUSTERS, config=["case=mixed"])
    assert [(v.policy, "shop/api" in v.message) for v in report.violations] == [
        ("lightmesh-acl-service-has-traffic-target", True)]


def test_a_cluster_surely_not_the_meshs_follows_assume_acl_not_the_other_clusters_controller():
    # Two explicit providers with different kubeconfigs are two clusters: the app cluster's mesh is
    # another stack's, so assume_acl decides (false: nothing to report; true: the Service is uncovered).
    rule = "lightmesh-acl-service-has-traffic-target"
    assert check_program(CLUSTERS, config=["case=apps"]).violations == []
    report = check_program(CLUSTERS, config=["case=apps"], policy_config={rule: {"assume_acl": True}})
    assert [(v.policy, "shop/api" in v.message) for v in report.violations] == [(rule, True)]
