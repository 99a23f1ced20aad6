"""Each rule on hand-built Kubernetes props (engine shape, wrapped in the SDK's unknown-checking proxy):
passing and failing inputs, every SMI version shape, config defaults and overrides, unknown values."""

import pytest
from pulumi_policy.proxy import UNKNOWN_ARRAY_VALUE, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE

from lightmesh_policies import ALL_POLICIES
from lightmesh_policies.rules import (acl_service_has_traffic_target, images_pinned, install_resources,
                                      require_acl, service_annotations_valid, traffic_split_valid,
                                      traffic_target_valid)
from policykit import (R, controller, deployment, http_route_group, messages, port_route, proxy, run_policy,
                       service, service_patch, traffic_split, traffic_target, whoami_acl_stack)


def without(stack, name):
    return [r for r in stack if r.name != name]


# ------------------------------------------------------------------------------------ all rules


def test_every_rule_has_id_description_schema_with_defaults_and_a_level():
    names = [p.name for p in ALL_POLICIES]
    assert len(set(names)) == len(names) == 7
    for p in ALL_POLICIES:
        assert p.name.startswith("lightmesh-") and p.description and p.enforcement_level is not None
        assert p.config_schema.properties, p.name
        assert all("default" in prop and prop.get("description") for prop in p.config_schema.properties.values())


def test_the_seed_acl_setup_passes_every_rule():
    stack = whoami_acl_stack()
    for policy in ALL_POLICIES:
        assert run_policy(policy, stack) == [], policy.name


# ---------------------------------------------------------------------------- 1. ACL coverage


def test_service_without_traffic_target_is_reported_with_an_access_policy_hint():
    stack = without(whoami_acl_stack(), "client-to-server-tt")
    [(msg_http, urn_http), (msg_tcp, _)] = run_policy(acl_service_has_traffic_target, stack)
    assert "Service whoami/whoami (http) is not the destination of any TrafficTarget" in msg_http
    assert "ServiceAccount whoami/whoami-server" in msg_http
    assert ('AccessPolicy("whoami-server-access", AccessPolicyArgs(namespace="whoami", '
            'destination_service_account="whoami-server"') in msg_http
    assert 'http_matches=[{"name": "all", "path_regex": "/.*"}]' in msg_http
    assert urn_http.endswith("::whoami-svc")
    assert "whoami/whoami-tcp (tcp)" in msg_tcp and "tcp={}" in msg_tcp


def test_target_without_a_rule_for_the_traffic_type_is_reported():
    stack = without(whoami_acl_stack(), "client-to-server-tt") + [
        traffic_target("whoami", "http-only", "whoami-server", ["whoami-client"],
                       [{"kind": "HTTPRouteGroup", "name": "app-routes"}])]
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert "Service whoami/whoami-tcp is tcp but no TrafficTarget for ServiceAccount whoami/whoami-server has a " \
           "TCPRoute rule" in msg
    assert "TrafficTarget whoami/http-only" in msg


def test_not_acl_mode_means_nothing_to_check():
    stack = without(whoami_acl_stack(), "client-to-server-tt")
    stack = [controller(acl=False) if r.name == "lightmesh-controller" else r for r in stack]
    assert run_policy(acl_service_has_traffic_target, stack) == []


def test_without_a_controller_assume_acl_config_decides():
    stack = [r for r in whoami_acl_stack() if r.name not in ("lightmesh-controller", "client-to-server-tt")]
    assert run_policy(acl_service_has_traffic_target, stack) == []  # default: assume_acl false
    assert len(run_policy(acl_service_has_traffic_target, stack, {"assume_acl": True})) == 2


def test_default_service_account_and_traefik_prefixes_count():
    stack = [controller(),
             deployment("shop", "web", {"app": "web"}),  # no serviceAccountName → "default"
             service("shop", "web", {"mesh.traefik.io/traffic-type": "http"}, {"app": "web"})]
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert "ServiceAccount shop/default" in msg
    stack.append(http_route_group("shop", "all", [{"name": "all", "pathRegex": "/.*"}]))
    stack.append(traffic_target("shop", "web", "default", ["frontend"], [{"kind": "HTTPRouteGroup", "name": "all"}]))
    assert run_policy(acl_service_has_traffic_target, stack) == []


def test_unannotated_services_are_not_mesh_services_unless_made_by_mesh_service():
    plain = service("shop", "db", None, {"app": "db"})
    stack = [controller(), deployment("shop", "db", {"app": "db"}, "db"), plain]
    assert run_policy(acl_service_has_traffic_target, stack) == []
    by_component = R(plain.type, plain.name, plain.props, ("lightmesh:index:MeshService",))
    [msg] = messages(run_policy(acl_service_has_traffic_target, [*stack[:2], by_component]))
    assert "Service shop/db (http) is not the destination" in msg


def test_patched_existing_service_is_resolved_through_the_declared_service():
    stack = [r for r in whoami_acl_stack() if r.name != "whoami-svc"]
    stack += [service("whoami", "whoami", None, {"app": "whoami"}),
              service_patch("whoami", "whoami", {"lightmesh.io/traffic-type": "http"})]
    assert run_policy(acl_service_has_traffic_target, stack) == []


def test_unresolvable_service_says_so_and_config_can_accept_it():
    stack = [controller(), service_patch("legacy", "billing", {"lightmesh.io/traffic-type": "http"})]
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert "Service legacy/billing (existing Service annotated by a ServicePatch)" in msg
    assert "cannot be resolved from this stack" in msg and "selector is not declared in this stack" in msg
    assert run_policy(acl_service_has_traffic_target, stack, {"allow_unresolved_services": True}) == []
    assert run_policy(acl_service_has_traffic_target, stack, {"ignore_services": ["legacy/billing"]}) == []
    orphan = [controller(), service("shop", "web", {"lightmesh.io/traffic-type": "http"}, {"app": "nope"})]
    [msg] = messages(run_policy(acl_service_has_traffic_target, orphan))
    assert "its selector app=nope matches no Deployment" in msg


def test_unknown_values_skip_only_what_is_unknown():
    stack = without(whoami_acl_stack(), "client-to-server-tt")
    unknown_selector = service("whoami", "whoami", {"lightmesh.io/traffic-type": "http"}, UNKNOWN_OBJECT_VALUE)
    stack = [unknown_selector if r.name == "whoami-svc" else r for r in stack]
    # whoami's selector is unknown → skipped; whoami-tcp is still judged
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert "whoami/whoami-tcp" in msg
    acl_unknown = controller()
    acl_unknown.props["spec"]["template"]["spec"]["containers"][0]["args"] = UNKNOWN_ARRAY_VALUE
    stack = [acl_unknown if r.name == "lightmesh-controller" else r for r in stack]
    assert run_policy(acl_service_has_traffic_target, stack) == []  # ACL mode unknown: nothing asserted


# ------------------------------------------------------------------------ 2. TrafficTargets


def test_v1alpha1_shapes_are_read():
    stack = [controller(),
             deployment("a", "web", {"app": "web"}, "web"),
             service("a", "web", {"maesh.containo.us/traffic-type": "http"}, {"app": "web"}),
             http_route_group("a", "routes", [{"name": "all", "pathRegex": "/.*"}], version="v1alpha1"),
             traffic_target("a", "t", "web", ["client"], [{"kind": "HTTPRouteGroup", "name": "routes",
                                                           "matches": ["all"]}], version="v1alpha1")]
    assert run_policy(traffic_target_valid, stack) == []
    assert run_policy(acl_service_has_traffic_target, stack) == []


def test_target_without_sources_or_rules_is_reported():
    stack = [traffic_target("a", "empty", "web", [], [])]
    msgs = messages(run_policy(traffic_target_valid, stack))
    assert any("TrafficTarget a/empty has no sources" in m for m in msgs)
    assert any("TrafficTarget a/empty has no rules" in m and "allows nothing" in m for m in msgs)


def test_missing_route_and_match_names_are_reported():
    stack = [http_route_group("a", "routes", [{"name": "api", "pathRegex": "/api"}]),
             traffic_target("a", "t", "web", ["c"], [{"kind": "HTTPRouteGroup", "name": "routes",
                                                      "matches": ["api", "admin"]},
                                                     {"kind": "TCPRoute", "name": "missing"}])]
    msgs = messages(run_policy(traffic_target_valid, stack))
    assert any("names match 'admin', but HTTPRouteGroup a/routes has only ['api']" in m for m in msgs)
    assert any("references TCPRoute a/missing, which is not declared in this stack" in m for m in msgs)
    assert len(msgs) == 2
    assert len(run_policy(traffic_target_valid, stack, {"allow_external_routes": True})) == 1


def test_rule_kind_must_fit_the_destination_services_traffic_type():
    stack = [deployment("a", "db", {"app": "db"}, "db"),
             service("a", "db", {"lightmesh.io/traffic-type": "tcp"}, {"app": "db"}),
             http_route_group("a", "routes", [{"name": "all", "pathRegex": "/.*"}]),
             traffic_target("a", "t", "db", ["c"], [{"kind": "HTTPRouteGroup", "name": "routes"}])]
    [msg] = messages(run_policy(traffic_target_valid, stack))
    assert "rules[0] is a HTTPRouteGroup (http), but ServiceAccount a/db only backs tcp mesh Services" in msg
    assert "use TCPRoute instead" in msg


def test_path_and_header_regexes_must_compile():
    stack = [http_route_group("a", "routes", [{"name": "bad", "pathRegex": "/api/(unclosed"},
                                              {"name": "hdr", "headers": {"x-user": "[a-"}},
                                              {"name": "bad"}])]
    msgs = messages(run_policy(traffic_target_valid, stack))
    assert any("HTTPRouteGroup a/routes match 'bad': pathRegex '/api/(unclosed' does not compile" in m
               for m in msgs)
    assert any("header 'x-user' regex '[a-' does not compile" in m for m in msgs)
    assert any("two matches named 'bad'" in m for m in msgs)


def test_unknown_rules_and_sources_do_not_crash():
    t = traffic_target("a", "t", "web", ["c"], [])
    t.props["spec"]["rules"] = UNKNOWN_ARRAY_VALUE
    t.props["spec"]["sources"] = [{"kind": "ServiceAccount", "name": UNKNOWN_STRING_VALUE}]
    assert run_policy(traffic_target_valid, [t]) == []
    whole = traffic_target("a", "t2", "web", ["c"], [])
    whole.props["spec"] = UNKNOWN_OBJECT_VALUE
    assert run_policy(traffic_target_valid, [whole]) == []


# ------------------------------------------------------------------------------ 3. TrafficSplits


def split_stack(*splits, acl=False):
    stack = [controller(acl=acl)]
    for name in ("web", "web-v1", "web-v2", "web-v3"):
        stack += [deployment("shop", name, {"app": name}, f"{name}-sa"),
                  service("shop", name, {"lightmesh.io/traffic-type": "http"}, {"app": name})]
    return stack + list(splits)


def test_good_split_passes_in_every_version():
    for version in ("v1alpha2", "v1alpha3", "v1alpha4"):
        assert run_policy(traffic_split_valid,
                          split_stack(traffic_split("shop", "canary", "web", [("web-v1", 90), ("web-v2", 10)],
                                                    version))) == []
    assert run_policy(traffic_split_valid,
                      split_stack(traffic_split("shop", "c", "web", [("web-v1", "1"), ("web-v2", 0)], "v1alpha1"))) \
        == []


@pytest.mark.parametrize("backends, expected", [
    ([("web-v9", 50)], "backend Service shop/web-v9 is not declared in this stack"),
    ([("web", 50), ("web-v1", 50)], "backends[0] is the root Service 'web' itself"),
    ([("web-v1", 12.5)], "weight 12.5 is not a whole number"),
    ([("web-v1", "500m")], "weight '500m' is not a whole number"),
    ([("web-v1", -1)], "weight -1 is not a whole number >= 0"),
    ([("web-v1", 0), ("web-v2", 0)], "backend weights sum to 0"),
    ([("web-v1", 1), ("web-v1", 1)], "lists backend 'web-v1' twice"),
    ([("other.ns", 1)], "'other.ns' is not a Service name"),
    ([], "has no backends"),
])
def test_bad_split_is_reported(backends, expected):
    msgs = messages(run_policy(traffic_split_valid, split_stack(traffic_split("shop", "s", "web", backends))))
    assert any(expected in m for m in msgs), msgs


def test_nested_and_looping_splits_are_reported():
    nested = split_stack(traffic_split("shop", "outer", "web", [("web-v1", 50), ("web-v2", 50)]),
                         traffic_split("shop", "inner", "web-v2", [("web-v3", 1)]))
    [msg] = messages(run_policy(traffic_split_valid, nested))
    assert "TrafficSplit shop/outer backend 'web-v2' is itself the root of another TrafficSplit" in msg
    loop = split_stack(traffic_split("shop", "a", "web-v1", [("web-v2", 1)]),
                       traffic_split("shop", "b", "web-v2", [("web-v1", 1)]))
    msgs = messages(run_policy(traffic_split_valid, loop))
    assert sorted(m.split(" is part")[0] for m in msgs if "loop" in m) == ["TrafficSplit shop/a",
                                                                          "TrafficSplit shop/b"]
    assert any("web-v1 -> web-v2 -> web-v1" in m for m in msgs)


def test_split_matches_must_exist_and_root_once():
    stack = split_stack(traffic_split("shop", "s", "web", [("web-v1", 1)], matches=[{"kind": "HTTPRouteGroup",
                                                                                      "name": "beta"}]),
                        traffic_split("shop", "s2", "web", [("web-v2", 1)]))
    msgs = messages(run_policy(traffic_split_valid, stack))
    assert any("match references HTTPRouteGroup shop/beta, which is not declared" in m for m in msgs)
    assert any("TrafficSplit shop/s2 splits Service shop/web, which TrafficSplit shop/s already splits" in m
               for m in msgs)


def test_acl_every_backend_reachable_by_the_callers():
    routes = http_route_group("shop", "all", [{"name": "all", "pathRegex": "/.*"}])
    rule = [{"kind": "HTTPRouteGroup", "name": "all"}]
    split = traffic_split("shop", "canary", "web", [("web-v1", 90), ("web-v2", 10)])
    good = split_stack(split, routes, acl=True) + [
        traffic_target("shop", "to-v1", "web-v1-sa", ["frontend"], rule),
        traffic_target("shop", "to-v2", "web-v2-sa", ["frontend"], rule)]
    assert run_policy(traffic_split_valid, good) == []
    bad = split_stack(split, routes, acl=True) + [
        traffic_target("shop", "to-v1", "web-v1-sa", ["frontend", "admin"], rule),
        traffic_target("shop", "to-v2", "web-v2-sa", ["frontend"], rule)]
    [msg] = messages(run_policy(traffic_split_valid, bad))
    assert "TrafficSplit shop/canary backend 'web-v2' (ServiceAccount shop/web-v2-sa) is not reachable by " \
           "shop/admin" in msg
    assert 'destination_service_account="web-v2-sa", sources=[{"service_account": "admin", "namespace": "shop"}]' \
        in msg
    # outside ACL mode reachability is not a concern
    not_acl = [controller(acl=False) if r.name == "lightmesh-controller" else r for r in bad]
    assert run_policy(traffic_split_valid, not_acl) == []


def test_split_unknown_weights_are_not_judged():
    split = traffic_split("shop", "s", "web", [("web-v1", 0)])
    split.props["spec"]["backends"].append({"service": "web-v2", "weight": "3eeb2bf0-c639-47a8-9e75-3b44932eb421"})
    assert run_policy(traffic_split_valid, split_stack(split)) == []


# ------------------------------------------------------------------------------ 4. annotations


def test_valid_annotations_under_every_prefix_pass():
    stack = [service("a", "x", {"lightmesh.io/traffic-type": "http", "mesh.traefik.io/retry-attempts": "3",
                                "maesh.containo.us/circuit-breaker-expression": "NetworkErrorRatio() > 0.5",
                                "lightmesh.io/ratelimit-average": "100", "lightmesh.io/ratelimit-burst": "200",
                                "lightmesh.io/request-timeout": "1m30s", "other.io/anything": "x"})]
    assert run_policy(service_annotations_valid, stack) == []


@pytest.mark.parametrize("annotations, expected", [
    ({"lightmesh.io/traffic-type": "grpc"}, "annotation lightmesh.io/traffic-type='grpc': must be one of http"),
    ({"mesh.traefik.io/scheme": "ftp"}, "mesh.traefik.io/scheme='ftp': must be one of http, https, h2c"),
    ({"lightmesh.io/retry-attempts": "two"}, "must be a whole number. The controller ignores"),
    ({"lightmesh.io/circuit-breaker-expression": "NetworkErrorRatio( > 0.5"}, "invalid circuit-breaker expression"),
    ({"lightmesh.io/ratelimit-average": "10"}, "needs lightmesh.io/ratelimit-burst too"),
    ({"lightmesh.io/request-timeout": "5"}, "a unit is required"),
    ({"lightmesh.io/retry-attempt": "2"}, "did you mean lightmesh.io/retry-attempts?"),
])
def test_invalid_annotations_are_reported_with_the_field(annotations, expected):
    for resource in (service("a", "x", annotations), service_patch("a", "x", annotations)):
        [msg] = messages(run_policy(service_annotations_valid, [resource]))
        assert msg.startswith("Service a/x: ") and expected in msg, msg


def test_annotation_config_and_unknown_values():
    typo = service("a", "x", {"lightmesh.io/retry-attempt": "2"})
    assert run_policy(service_annotations_valid, [typo], {"report_unknown_keys": False}) == []
    unknown = service("a", "x", {"lightmesh.io/retry-attempts": UNKNOWN_STRING_VALUE,
                                 "lightmesh.io/scheme": "ftp"})
    [msg] = messages(run_policy(service_annotations_valid, [unknown]))
    assert "scheme" in msg
    whole = service("a", "x")
    whole.props["metadata"]["annotations"] = UNKNOWN_OBJECT_VALUE
    assert run_policy(service_annotations_valid, [whole]) == []


# -------------------------------------------------------------------------- 5. install hygiene


@pytest.mark.parametrize("image, pinned", [
    ("ghcr.io/lightmesh/lightmesh:0.1.0", True),
    ("ghcr.io/lightmesh/lightmesh@sha256:" + "a" * 64, True),
    ("localhost:5000/lightmesh:0.1.0", True),
    ("ghcr.io/lightmesh/lightmesh:latest", False),
    ("ghcr.io/lightmesh/lightmesh", False),
    ("localhost:5000/lightmesh", False),
])
def test_images_must_be_pinned(image, pinned):
    violations = run_policy(images_pinned, [controller(image=image), proxy(image=image)])
    assert (violations == []) is pinned
    if not pinned:
        assert "Lightmesh controller Deployment lightmesh/lightmesh-controller container" in violations[0][0]
        assert "Lightmesh proxy DaemonSet lightmesh/lightmesh-proxy" in violations[1][0]


def test_image_digest_can_be_required_and_other_workloads_are_ignored():
    assert len(run_policy(images_pinned, [controller()], {"require_digest": True})) == 1
    assert run_policy(images_pinned, [deployment("a", "app", {"app": "a"}, image="nginx")]) == []
    hand_installed = deployment("mesh", "ctl", {"x": "y"}, image="registry/lightmesh:latest",
                                args=["controller", "--acl"])
    assert len(run_policy(images_pinned, [hand_installed])) == 1


def test_mesh_containers_need_requests_and_limits():
    [msg] = messages(run_policy(install_resources, [controller(resources={"requests": {"cpu": "10m"}})]))
    assert "has no requests.memory, limits.cpu, limits.memory" in msg
    assert run_policy(install_resources, [controller(resources={"requests": {"cpu": "1", "memory": "1Gi"}})],
                      {"limits": []}) == []
    [msg] = messages(run_policy(install_resources, [controller(resources={"requests": {"cpu": "1", "memory": "1"},
                                                                           "limits": {"memory": "1Gi"}})]))
    assert "has no limits.cpu" in msg and "controller_resources cpu_limit" in msg
    assert run_policy(install_resources, [controller(resources={"requests": {"cpu": "1", "memory": "1"},
                                                                "limits": {"memory": "1Gi"}})],
                      {"limits": ["memory"]}) == []
    assert len(run_policy(install_resources, [proxy(resources=None)])) == 1
    assert run_policy(install_resources, [controller(), proxy()]) == []


def test_require_acl_default_true_and_configurable():
    [msg] = messages(run_policy(require_acl, [controller(acl=False), proxy()]))
    assert "runs without --acl" in msg and "MeshInstallArgs acl=True" in msg
    assert run_policy(require_acl, [controller(acl=True)]) == []
    assert run_policy(require_acl, [controller(acl=False)], {"require_acl": False}) == []
    unknown = controller(acl=False)
    unknown.props["spec"]["template"]["spec"]["containers"][0]["args"] = UNKNOWN_ARRAY_VALUE
    assert run_policy(require_acl, [unknown]) == []
