"""Each rule on hand-built Kubernetes props (engine shape, wrapped in the SDK's unknown-checking proxy):
passing and failing inputs, every SMI version shape, config defaults and overrides, unknown values."""

import pytest
from pulumi_policy.proxy import UNKNOWN_ARRAY_VALUE, UNKNOWN_OBJECT_VALUE, UNKNOWN_STRING_VALUE

from lightmesh_policies import ALL_POLICIES, model
from lightmesh_policies.model import UNKNOWN, acl_flag, selects
from lightmesh_policies.rules import (acl_required, acl_service_has_traffic_target, current_stack_name,
                                      image_pin_problem, images_pinned, install_resources, is_production_stack,
                                      require_acl,
                                      service_annotations_valid, traffic_split_valid, traffic_target_valid,
                                      unique_objects)
from mesh_components.install import image_reference_problem
from policykit import (R, controller, deployment, http_route_group, messages, on_stack, port_route, proxy,
                       run_policy, service, service_patch, traffic_split, traffic_target, whoami_acl_stack)


def without(stack, name):
    return [r for r in stack if r.name != name]


# ------------------------------------------------------------------------------------ all rules


def test_every_rule_has_id_description_schema_with_defaults_and_a_level():
    names = [p.name for p in ALL_POLICIES]
    assert len(set(names)) == len(names) == 8
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


@pytest.mark.parametrize("extra_args, namespace, name, reported", [
    ([], "lightmesh", "stray", False),  # the mesh namespace (default) is never meshed
    ([], "kube-system", "dns", False),
    ([], "default", "kubernetes", False),
    ([], "default", "web", True),
    (["--namespace", "meshsys"], "meshsys", "stray", False),  # MeshInstall namespace: meshsys
    (["--namespace", "meshsys"], "lightmesh", "stray", True),  # no longer the mesh namespace
    (["--namespace=meshsys"], "meshsys", "stray", False),
    (["--ignore-namespaces", "legacy,batch"], "batch", "job", False),
    (["--watch-namespaces", "shop"], "other", "web", False),
    (["--watch-namespaces", "shop"], "shop", "web", True),
    (["--namespace", UNKNOWN_STRING_VALUE], "meshsys", "stray", False),  # may be the mesh namespace: not judged
])
def test_services_the_controller_never_meshes_need_no_traffic_target(extra_args, namespace, name, reported):
    stack = [controller(extra_args=extra_args), deployment(namespace, name, {"app": name}, "sa"),
             service(namespace, name, {"lightmesh.io/traffic-type": "http"}, {"app": name})]
    violations = messages(run_policy(acl_service_has_traffic_target, stack))
    assert len(violations) == (1 if reported else 0), violations
    if reported:
        assert violations[0].startswith(f"Service {namespace}/{name} (http) is not the destination of any TrafficTarget")


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
    assert any("HTTPRouteGroup a/routes match 'bad' (spec.matches[0]): pathRegex '/api/(unclosed' does not compile"
               in m for m in msgs)
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
    ([("other.ns", 1)], "backends[0] service 'other.ns' is not a Service of namespace shop"),
    ([("other/web", 1)], "'other/web' is not a Service name"),
    # as the controller reads a weight string: ASCII digits, at most nine (int() of 5,000 digits raised;
    # '٣' and '+5' were taken, the controller refuses them)
    ([("web-v1", "9" * 5000)], "weight '" + "9" * 59 + "... (5000 characters) is not a whole number >= 0"),
    ([("web-v1", "\u0663")], "weight '\u0663' is not a whole number >= 0"),
    ([("web-v1", "+5")], "weight '+5' is not a whole number >= 0"),
    ([("web-v1", "1234567890")], "weight '1234567890' is not a whole number >= 0"),
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
    ({"lightmesh.io/retry-attempts": "two"}, "must be a whole number. The controller leaves this Service out of the mesh"),
    ({"lightmesh.io/circuit-breaker-expression": "NetworkErrorRatio( > 0.5"}, "invalid circuit-breaker expression"),
    # the value once, quoted
    ({"lightmesh.io/circuit-breaker-expression": "Foo() > 1"},
     "Service a/x: annotation lightmesh.io/circuit-breaker-expression='Foo() > 1': invalid circuit-breaker expression: "
     "unknown function 'Foo' "),
    ({"lightmesh.io/ratelimit-average": "10"},
     "needs lightmesh.io/ratelimit-burst too. The controller keeps this Service, but no rate limit is applied, "
     "until it is fixed"),
    ({"lightmesh.io/retry-attempts": "200"},
     "must be between 1 and 100. The controller keeps this Service, but 100 is used, until it is fixed"),
    ({"lightmesh.io/request-timeout": "5"}, "a unit is required"),
    ({"lightmesh.io/retry-attempt": "2"}, "did you mean lightmesh.io/retry-attempts?"),
    # a number of 5,000 digits: reported (it crashed the pack), its value cut short
    ({"lightmesh.io/retry-attempts": "9" * 5000},
     "annotation lightmesh.io/retry-attempts='" + "9" * 59 + "... (5000 characters): must be between 1 and 100. "),
    ({"lightmesh.io/retry-attempts": "\u0663"}, "annotation lightmesh.io/retry-attempts='\u0663': must be a whole number"),
])
def test_invalid_annotations_are_reported_with_the_field(annotations, expected):
    for resource in (service("a", "x", annotations), service_patch("a", "x", annotations)):
        [msg] = messages(run_policy(service_annotations_valid, [resource]))
        assert msg.startswith("Service a/x: ") and expected in msg, msg


@pytest.mark.parametrize("expression", ["Foo() > 1", "NetworkErrorRatio() >", "NetworkErrorRatio() > 0.5 &&"])
def test_a_bad_circuit_breaker_expression_is_quoted_once(expression):
    [msg] = messages(run_policy(service_annotations_valid, [service("a", "x", {
        "lightmesh.io/circuit-breaker-expression": expression})]))
    assert msg.startswith(f"Service a/x: annotation lightmesh.io/circuit-breaker-expression={expression!r}: invalid "
                          "circuit-breaker expression: ")
    assert msg.count(expression) == 1, msg


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


IGNORED = "The controller keeps this Service in the mesh and ignores this annotation"


@pytest.mark.parametrize("traffic", ["tcp", "udp", "TCP"])
def test_valid_http_only_annotations_on_a_tcp_or_udp_service_are_reported_as_ignored(traffic):
    """The controller reports each HTTP-only key of a tcp/udp Service as an object error ("applies to HTTP
    traffic only; ... ignored") and keeps the Service: the pack said nothing."""
    annotations = {"lightmesh.io/traffic-type": traffic, "lightmesh.io/retry-attempts": "3",
                   "mesh.traefik.io/scheme": "https", "lightmesh.io/ratelimit-average": "5",
                   "lightmesh.io/ratelimit-burst": "10", "lightmesh.io/request-timeout": "5s",
                   "maesh.containo.us/circuit-breaker-expression": "NetworkErrorRatio() > 0.5"}
    for resource in (service("a", "x", annotations), service_patch("a", "x", annotations)):
        found = messages(run_policy(service_annotations_valid, [resource]))
        assert len(found) == 6, found
        for key in ("mesh.traefik.io/scheme", "lightmesh.io/retry-attempts", "maesh.containo.us/circuit-breaker-expression",
                    "lightmesh.io/ratelimit-average", "lightmesh.io/ratelimit-burst", "lightmesh.io/request-timeout"):
            [msg] = [m for m in found if f"annotation {key} " in m]
            assert msg == (f"Service a/x: annotation {key} applies to HTTP traffic only; traffic type "
                           f"{traffic.lower()} does not use it. {IGNORED}. Fix: remove the annotation (or set traffic "
                           f"type http if the Service carries HTTP).")
    # an http Service (named, or by default) uses them
    assert run_policy(service_annotations_valid, [service("a", "x", {**annotations, "lightmesh.io/traffic-type": "http"})]) == []
    assert run_policy(service_annotations_valid, [service("a", "x", {k: v for k, v in annotations.items()
                                                                     if "traffic-type" not in k})]) == []


@pytest.mark.parametrize("annotations", [
    {"lightmesh.io/traffic-type": "tcp", "lightmesh.io/retry-attempts": "abc"},
    {"lightmesh.io/traffic-type": "udp", "lightmesh.io/scheme": "ftp"},
    {"lightmesh.io/traffic-type": "tcp", "lightmesh.io/circuit-breaker-expression": "Foo() > 1"},
    {"lightmesh.io/traffic-type": "tcp", "lightmesh.io/request-timeout": "5"},
    {"lightmesh.io/traffic-type": "tcp", "lightmesh.io/retry-attempts": "200"},  # not fatal on http either
    {"lightmesh.io/traffic-type": "udp", "lightmesh.io/ratelimit-average": "10"},  # half a pair
])
def test_a_bad_http_only_annotation_on_a_tcp_or_udp_service_is_ignored_not_a_service_left_out(annotations):
    """The controller only ignores such a key (valid or not) and keeps the Service meshed; the pack said it left
    the Service out of the mesh."""
    traffic = annotations["lightmesh.io/traffic-type"]
    [msg] = messages(run_policy(service_annotations_valid, [service("a", "x", annotations)]))
    [(key, value)] = [(k, v) for k, v in annotations.items() if "traffic-type" not in k]
    assert msg.startswith(f"Service a/x: annotation {key}={value!r}: "), msg
    assert (f". {IGNORED}: it applies to HTTP traffic only, and traffic type {traffic} does not use it. Fix: remove "
            f"the annotation (or set traffic type http if the Service carries HTTP, and correct it).") in msg, msg
    assert "out of the mesh" not in msg


def test_http_only_annotations_when_the_traffic_type_is_not_known_yet():
    # a bad value: what the controller does depends on the traffic type, so both are said
    bad = service("a", "x", {"lightmesh.io/traffic-type": UNKNOWN_STRING_VALUE, "lightmesh.io/retry-attempts": "abc"})
    [msg] = messages(run_policy(service_annotations_valid, [bad]))
    assert ("must be a whole number. If the Service's traffic type (not known yet) is http: the controller leaves "
            "this Service out of the mesh (its mesh names do not resolve) until it is fixed; if it is tcp or udp, the "
            "controller ignores this annotation (it applies to HTTP traffic only). Fix: correct the annotation, or "
            "MeshService arg retry_attempts.") in msg, msg
    # a valid value: nothing to say until the traffic type is known
    good = service("a", "x", {"lightmesh.io/traffic-type": UNKNOWN_STRING_VALUE, "lightmesh.io/retry-attempts": "2"})
    assert run_policy(service_annotations_valid, [good]) == []
    # a tcp Service's HTTP-only key whose value is not known yet is ignored whatever it turns out to be
    unknown_value = service("a", "x", {"lightmesh.io/traffic-type": "tcp",
                                       "lightmesh.io/retry-attempts": UNKNOWN_STRING_VALUE})
    [msg] = messages(run_policy(service_annotations_valid, [unknown_value]))
    assert msg.startswith("Service a/x: annotation lightmesh.io/retry-attempts applies to HTTP traffic only")


# -------------------------------------------------------------------------- 5. install hygiene


@pytest.mark.parametrize("image, pinned", [
    ("ghcr.io/lightmesh/lightmesh:0.1.0", True),
    ("ghcr.io/lightmesh/lightmesh@sha256:" + "a" * 64, True),
    ("ghcr.io/lightmesh/lightmesh@sha512:" + "a" * 128, True),  # MeshInstall accepts it: the pack refused it
    ("ghcr.io/lightmesh/lightmesh@sha256:zz", False),  # MeshInstall refuses it: the pack let it pass
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
    [msg] = messages(run_policy(images_pinned, [controller()], {"require_digest": True}))
    # the hint asks for what is required: a digest (it suggested "a version tag or digest")
    assert msg.endswith("has no digest (require_digest is on): nodes could run different mesh versions. Fix: pin the "
                        "image by digest, which require_digest demands: a tag is not enough (MeshInstallArgs image, "
                        "e.g. ghcr.io/lightmesh/lightmesh@sha256:<digest of the version to run>).")
    assert run_policy(images_pinned, [deployment("a", "app", {"app": "a"}, image="nginx")]) == []
    hand_installed = deployment("mesh", "ctl", {"x": "y"}, image="registry/lightmesh:latest",
                                args=["controller", "--acl"])
    assert len(run_policy(images_pinned, [hand_installed])) == 1


@pytest.mark.parametrize("digest, valid", [
    ("sha256:" + "0123456789abcdef" * 4, True),
    ("sha384:" + "a" * 96, True),
    ("sha512:" + "f" * 128, True),
    ("sha256:" + "a" * 63, False), ("sha256:" + "a" * 65, False),  # wrong lengths
    ("sha384:" + "a" * 64, False), ("sha512:" + "a" * 96, False), ("sha512:" + "a" * 127, False),
    ("sha256:" + "g" * 64, False), ("sha256:zz", False), ("sha256:", False),  # not hex
    ("sha256:" + "A" * 64, False), ("sha512:" + "aB" * 64, False),  # upper-case hex
    ("SHA256:" + "a" * 64, False),  # the algorithm in upper case
    ("md5:" + "a" * 32, False), ("blake3:" + "a" * 64, False), ("sha1:" + "a" * 40, False),  # unknown algorithms
    ("sha256" + "a" * 64, False), ("a" * 64, False),  # no algorithm
    ("sha256:" + "a" * 64 + "@sha256:" + "a" * 64, False), ("sha256:" + "a" * 64 + " ", False),
])
def test_the_pack_and_mesh_install_agree_on_what_a_digest_is(digest, valid):
    """One definition of a valid digest: MeshInstall's (``image_reference_problem``) and the pack's
    (``image_pin_problem``, which cannot import it) must give every reference the same verdict."""
    for repository in ("ghcr.io/lightmesh/lightmesh", "localhost:5000/lightmesh:0.1.0"):
        image = f"{repository}@{digest}"
        assert (image_reference_problem(image) is None) is valid, image
        problem = image_pin_problem(image, require_digest=True, disallowed=["latest"])
        assert (problem is None) is valid, (image, problem)
        if not valid:
            assert problem == ("has a malformed digest (expected sha256:, sha384: or sha512: and 64, 96 or 128 "
                               "lowercase hex digits)")


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


def test_require_acl_on_production_stacks_unless_configured():
    [msg] = messages(run_policy(require_acl, on_stack([controller(acl=False), proxy()], "prod")))
    assert "runs without --acl (stack 'prod' is a production stack)" in msg and "MeshInstallArgs acl=True" in msg
    assert run_policy(require_acl, on_stack([controller(acl=True)], "prod")) == []
    assert run_policy(require_acl, on_stack([controller(acl=False)], "prod"), {"require_acl": False}) == []
    # a development stack may run without ACLs, unless the config says otherwise
    assert run_policy(require_acl, on_stack([controller(acl=False)], "dev")) == []
    [msg] = messages(run_policy(require_acl, on_stack([controller(acl=False)], "dev"), {"require_acl": True}))
    assert "(require_acl is true in the policy config)" in msg
    # null is what the CLI sends when the config leaves the schema default
    assert run_policy(require_acl, on_stack([controller(acl=False)], "dev"), {"require_acl": None}) == []
    unknown = controller(acl=False)
    unknown.props["spec"]["template"]["spec"]["containers"][0]["args"] = UNKNOWN_ARRAY_VALUE
    assert run_policy(require_acl, on_stack([unknown], "prod")) == []


@pytest.mark.parametrize("stack, production", [
    ("prod", True), ("production", True), ("Prod", True), ("prod-eu", True), ("eu-prod", True),
    ("eu-prod-1", True), ("app_production", True), ("shop.prod", True),
    ("dev", False), ("test", False), ("staging", False), ("product-catalog", False), ("preprod", False),
])
def test_production_stack_names(stack, production):
    assert is_production_stack(stack) is production


def test_stack_name_comes_from_the_urn_else_pulumi_stack(monkeypatch):
    assert current_stack_name("urn:pulumi:prod-eu::lightmesh::kubernetes:apps/v1:Deployment::c") == "prod-eu"
    monkeypatch.setenv("PULUMI_STACK", "acme/lightmesh/production")
    assert current_stack_name("not-a-urn") == "production"
    monkeypatch.delenv("PULUMI_STACK")
    assert current_stack_name("not-a-urn") is None
    assert acl_required(None, "not-a-urn") == (True, "the stack name is not known, so it is treated as a production "
                                                     "stack")


# ------------------------------------------------------------- unknown values during preview


def with_template_labels(resource, labels):
    resource.props["spec"]["template"]["metadata"]["labels"] = labels
    return resource


def test_unknown_source_entry_is_skipped_not_a_crash():
    stack = whoami_acl_stack()
    target = next(r for r in stack if r.name == "client-to-server-tt")
    target.props["spec"]["sources"] = [UNKNOWN_OBJECT_VALUE, {"kind": "Group", "name": "admins"}]
    [msg] = messages(run_policy(traffic_target_valid, stack))  # the known source is still judged
    assert "sources[1] kind is 'Group'" in msg


def test_selector_against_unknown_label_values():
    assert selects({"app": "web"}, {"app": UNKNOWN}) is UNKNOWN
    assert selects({"app": "web", "tier": "front"}, {"app": UNKNOWN, "tier": "db"}) is False  # surely differs
    assert selects({"app": "web", "tier": "front"}, {"app": UNKNOWN}) is False  # a label is missing
    assert selects({"app": UNKNOWN}, {"app": "web"}) is UNKNOWN
    assert selects({"app": "web"}, {"app": "web", "x": UNKNOWN}) is True


def test_unknown_pod_label_value_is_not_a_selector_mismatch():
    stack = whoami_acl_stack()
    for r in stack:
        if r.name == "whoami":
            with_template_labels(r, {"app": UNKNOWN_STRING_VALUE})
    # was: "selector app=whoami matches no Deployment" and "ServiceAccount ... only backs tcp mesh Services"
    assert run_policy(acl_service_has_traffic_target, stack) == []
    assert run_policy(traffic_target_valid, stack) == []


def test_unknown_names_do_not_make_objects_undeclared():
    routes = http_route_group("shop", "all", [{"name": "all", "pathRegex": "/.*"}])
    stack = split_stack(traffic_split("shop", "canary", "web", [("web-v1", 90), ("web-v2", 10)],
                                      matches=[{"kind": "HTTPRouteGroup", "name": "all"}]), routes,
                        traffic_target("shop", "t", "web-v1-sa", ["frontend"], [{"kind": "HTTPRouteGroup",
                                                                                  "name": "all"}]))
    assert run_policy(traffic_split_valid, stack) == [] and run_policy(traffic_target_valid, stack) == []
    for r in stack:
        if r.name in ("web-svc", "web-v2-svc"):
            r.props["metadata"]["name"] = UNKNOWN_STRING_VALUE
        if r.name == "all-hrg":
            r.props["metadata"]["namespace"] = UNKNOWN_STRING_VALUE
    # was: "root Service shop/web is not declared", "backend Service shop/web-v2 is not declared",
    # "references HTTPRouteGroup shop/all, which is not declared" (split match and TrafficTarget rule)
    assert run_policy(traffic_split_valid, stack) == []
    assert run_policy(traffic_target_valid, stack) == []
    # Services whose names are unknown, in another namespace, cannot be the missing ones
    stack.append(traffic_split("elsewhere", "other", "web", [("web-v9", 1)]))
    assert [m.split(" Fix:")[0] for m in messages(run_policy(traffic_split_valid, stack))] == [
        "TrafficSplit elsewhere/other root Service elsewhere/web is not declared in this stack.",
        "TrafficSplit elsewhere/other backend Service elsewhere/web-v9 is not declared in this stack (backends must "
        "exist in the split's namespace elsewhere)."]


def test_unknown_destination_may_be_the_missing_traffic_target():
    stack = whoami_acl_stack()
    target = next(r for r in stack if r.name == "client-to-server-tt")
    target.props["spec"]["destination"]["name"] = UNKNOWN_STRING_VALUE
    assert run_policy(acl_service_has_traffic_target, stack) == []  # was: "not the destination of any"
    target.props["spec"]["destination"] = {"kind": "ServiceAccount", "name": "someone-else", "namespace": "whoami"}
    assert len(run_policy(acl_service_has_traffic_target, stack)) == 2


def test_unknown_traffic_type_is_not_judged_but_a_missing_target_still_is():
    stack = without(whoami_acl_stack(), "client-to-server-tt")
    for r in stack:
        if r.name == "whoami-tcp-svc":
            r.props["metadata"]["annotations"]["lightmesh.io/traffic-type"] = UNKNOWN_STRING_VALUE
    msgs = messages(run_policy(acl_service_has_traffic_target, stack))
    assert any("Service whoami/whoami-tcp (traffic type not known yet) is not the destination" in m
               and "by the Service's traffic type" in m for m in msgs), msgs


def controller_with(acl, *extra_args):
    return on_stack([controller(acl=acl, extra_args=list(extra_args))], "prod")


def test_acl_flag_with_unknown_containers_or_words():
    def flag(pod_spec):  # pod_spec as the model holds it: unknowns already materialized to UNKNOWN
        return acl_flag(model.Workload("Deployment", "lightmesh", "lightmesh-controller", {}, "sa", pod_spec, None))

    assert flag(UNKNOWN) is UNKNOWN
    assert flag({"containers": UNKNOWN}) is UNKNOWN
    assert flag({"containers": [{"name": "c", "args": ["controller", "--acl"]}], "initContainers": UNKNOWN}) is True
    assert flag({"containers": [UNKNOWN, {"name": "c", "args": ["controller", UNKNOWN, "--acl"]}]}) is True
    assert flag({"containers": [{"name": "c", "args": ["controller", UNKNOWN]}]}) is UNKNOWN  # could be --acl
    # an unknown word that is an option's value is not --acl
    assert flag({"containers": [{"name": "c", "args": ["controller", "--otlp-endpoint", UNKNOWN]}]}) is False
    # ... unless the option before it takes no value
    assert flag({"containers": [{"name": "c", "args": ["controller", "--leader-election", UNKNOWN]}]}) is UNKNOWN


def test_require_acl_with_unknowns():
    for r in controller_with(False):  # was: "runs without --acl" for an unknown pod spec or container list
        for spec in (UNKNOWN_OBJECT_VALUE, {"containers": UNKNOWN_ARRAY_VALUE}):
            r.props["spec"]["template"]["spec"] = spec
            assert run_policy(require_acl, [r]) == []
    # MeshInstall renders a computed OTLP endpoint as the word after --otlp-endpoint: acl=false is still known
    [msg] = messages(run_policy(require_acl, controller_with(False, "--otlp-endpoint", UNKNOWN_STRING_VALUE)))
    assert "runs without --acl" in msg
    assert run_policy(require_acl, controller_with(False, UNKNOWN_STRING_VALUE)) == []
    assert run_policy(require_acl, controller_with(True, "--otlp-endpoint", UNKNOWN_STRING_VALUE)) == []


def test_unknown_annotation_value_completes_a_rate_limit_pair():
    svc = service("a", "x", {"lightmesh.io/ratelimit-average": "10", "lightmesh.io/ratelimit-burst": UNKNOWN_STRING_VALUE,
                             "lightmesh.io/retry-attempts": UNKNOWN_STRING_VALUE, "mesh.traefik.io/retry-attempts": "x"})
    # the unknown lightmesh.io/ value wins over the bad mesh.traefik.io/ one, as it will in the cluster
    assert run_policy(service_annotations_valid, [svc]) == []


# ------------------------------------------------------------------- v1alpha1 split weights


@pytest.mark.parametrize("weights", [("900m", "100m"), ("1", "0"), (1, 0), ("0.9", "0.1"), ("1.5", "500m")])
def test_v1alpha1_weights_are_quantities(weights):
    split = traffic_split("shop", "s", "web", list(zip(("web-v1", "web-v2"), weights)), version="v1alpha1")
    assert run_policy(traffic_split_valid, split_stack(split)) == []


@pytest.mark.parametrize("weight, expected", [
    ("lots", "weight 'lots' is not a Kubernetes quantity >= 0"),
    ("50%", "weight '50%' is not a Kubernetes quantity"),
    (-1, "weight -1 is not a Kubernetes quantity >= 0"),
    # the controller's round(weight * 1000) raises OverflowError on these
    (1e308, "weight 1e+308 is not a Kubernetes quantity >= 0"),
    (float("inf"), "weight inf is not a Kubernetes quantity >= 0"),
    ("9" * 5000, "weight '" + "9" * 59 + "... (5000 characters) is not a Kubernetes quantity >= 0"),
])
def test_bad_v1alpha1_weights_are_reported(weight, expected):
    split = traffic_split("shop", "s", "web", [("web-v1", weight)], version="v1alpha1")
    [msg] = messages(run_policy(traffic_split_valid, split_stack(split)))
    assert expected in msg and 'Fix: use quantities such as "900m"' in msg
    zero = traffic_split("shop", "s", "web", [("web-v1", "0m"), ("web-v2", "0")], version="v1alpha1")
    assert any("weights sum to 0" in m for m in messages(run_policy(traffic_split_valid, split_stack(zero))))


def test_quantities_are_still_rejected_after_v1alpha1():
    for version in ("v1alpha2", "v1alpha3", "v1alpha4"):
        split = traffic_split("shop", "s", "web", [("web-v1", "900m"), ("web-v2", 1)], version=version)
        [msg] = messages(run_policy(traffic_split_valid, split_stack(split)))
        assert "weight '900m' is not a whole number >= 0" in msg and "split.smi-spec.io/v1alpha1 only" in msg


# -------------------------------------------------------------- apex Services of TrafficSplits


def apex_stack(root_selector, *, cover_v2=True, meshed_backends=True):
    annotations = {"lightmesh.io/traffic-type": "http"} if meshed_backends else None
    rule = [{"kind": "HTTPRouteGroup", "name": "all"}]
    stack = [controller(), service("shop", "web", {"lightmesh.io/traffic-type": "http"}, root_selector),
             http_route_group("shop", "all", [{"name": "all", "pathRegex": "/.*"}]),
             traffic_split("shop", "canary", "web", [("web-v1", 90), ("web-v2", 10)]),
             traffic_target("shop", "to-v1", "web-v1-sa", ["frontend"], rule)]
    for name in ("web-v1", "web-v2"):
        stack += [deployment("shop", name, {"app": name}, f"{name}-sa"), service("shop", name, annotations, {"app": name})]
    if cover_v2:
        stack.append(traffic_target("shop", "to-v2", "web-v2-sa", ["frontend"], rule))
    return stack


@pytest.mark.parametrize("root_selector", [None, {"app": "web-apex"}], ids=["no-selector", "selects-nothing"])
def test_split_apex_without_pods_is_judged_through_its_backends(root_selector):
    for meshed in (True, False):
        stack = apex_stack(root_selector, meshed_backends=meshed)
        assert run_policy(acl_service_has_traffic_target, stack) == []  # was: "cannot be resolved" on shop/web
        assert run_policy(traffic_split_valid, stack) == []
    # an uncovered mesh backend is reported on itself, a non-mesh one (the controller meshes every
    # Service) on the apex
    [msg] = messages(run_policy(acl_service_has_traffic_target, apex_stack(root_selector, cover_v2=False)))
    assert msg.startswith("Service shop/web-v2 (http) is not the destination of any TrafficTarget")
    [msg] = messages(run_policy(acl_service_has_traffic_target,
                                apex_stack(root_selector, cover_v2=False, meshed_backends=False)))
    assert msg.startswith("Service shop/web (root of TrafficSplit shop/canary, no pods of its own) through its "
                          "backend Service shop/web-v2 (http) is not the destination of any TrafficTarget")
    # without a split the same Service is unresolvable, as before
    lone = [r for r in apex_stack(root_selector) if r.name != "canary-ts"]
    [msg] = messages(run_policy(acl_service_has_traffic_target, lone))
    assert "Service shop/web is a mesh Service, but the ServiceAccount of its pods cannot be resolved" in msg


# ------------------------------------------------------------------- TCP/UDP rules and ports


def port_stack(kind, service_ports, route_ports):
    traffic = "tcp" if kind == "TCPRoute" else "udp"
    if kind == "UDPRoute":  # a udp Service's ports are UDP ports (the controller meshes no other for it)
        service_ports = [{"protocol": "UDP", **p} for p in service_ports]
    return [deployment("data", "db", {"app": "db"}, "db"),
            service("data", "db", {"lightmesh.io/traffic-type": traffic}, {"app": "db"}, ports=service_ports),
            port_route(kind, "data", "db-ports", ports=route_ports),
            traffic_target("data", "to-db", "db", ["app"], [{"kind": kind, "name": "db-ports"}])]


@pytest.mark.parametrize("kind", ["TCPRoute", "UDPRoute"])
def test_port_route_allowing_no_port_of_the_destination_is_reported(kind):
    field = "tcp" if kind == "TCPRoute" else "udp"
    [msg] = messages(run_policy(traffic_target_valid, port_stack(kind, [{"port": 5432}], [3306])))
    assert (f"TrafficTarget data/to-db rules[0] allows {kind} data/db-ports on port(s) 3306 only, but the {field} "
            f"mesh Services of ServiceAccount data/db expose none of them (Service data/db: 5432)") in msg
    assert f'Fix: use the Services\' ports (AccessPolicy {field}={{"ports": [5432]}})' in msg
    assert run_policy(traffic_target_valid, port_stack(kind, [{"port": 5432}], [5432, 3306])) == []
    assert run_policy(traffic_target_valid, port_stack(kind, [{"port": 5432}], [])) == []  # every port
    # the controller also accepts the numeric targetPort
    assert run_policy(traffic_target_valid, port_stack(kind, [{"port": 80, "targetPort": 3306}], [3306])) == []
    assert run_policy(traffic_target_valid, port_stack(kind, [{"port": 80.0, "targetPort": "3306"}], [3306.0])) == []
    unknown = port_stack(kind, [{"port": UNKNOWN_STRING_VALUE}], [3306])
    assert run_policy(traffic_target_valid, unknown) == []


@pytest.mark.parametrize("kind", ["TCPRoute", "UDPRoute"])
@pytest.mark.parametrize("port", ["9" * 5000, "\u00b2", "\u0663", "5432 ", "0", 70000, 5432.5, True, "db"])
def test_route_ports_that_are_not_port_numbers_are_reported_not_a_crash(kind, port):
    """int() of 5,000 digits raised, so did int('\u00b2') ('\u00b2'.isdigit() is true), and '\u0663' was read as
    port 3. The controller takes 1-65535, as a number or ASCII digits, ignores anything else, and a route
    whose every port is ignored allows every port: a typo would open the Service."""
    field = "tcp" if kind == "TCPRoute" else "udp"
    [msg] = messages(run_policy(traffic_target_valid, port_stack(kind, [{"port": 5432}], [port])))
    assert msg.startswith(f"{kind} data/db-ports spec.matches.ports[0] {model.shown(port)} is not a port number "
                          f"(1-65535): the controller ignores it, and a route left with no port allows every port. "
                          f'Fix: use port numbers (AccessPolicy {field}={{"ports": [...]}})'), msg
    assert len(msg) < 400


@pytest.mark.parametrize("target_port", ["\u00b2", "\u0663", "9" * 5000])
def test_a_target_port_of_other_digits_is_no_port_number_as_the_controller_reads_it(target_port):
    """The controller takes a targetPort of up to five ASCII digits as a number and anything else as a port
    name: '\u0663' is not port 3 (the pack said so), and int() of '\u00b2' or of 5,000 digits raised. All
    digits but more than five is no port at all: the controller does not mesh that port."""
    stack = port_stack("TCPRoute", [{"port": 5432, "targetPort": target_port}], [3])
    # the pods declare that name (Kubernetes makes endpoints of a named targetPort only of pods that do)
    stack[0].props["spec"]["template"]["spec"]["containers"][0]["ports"] = [{"name": target_port, "containerPort": 3}]
    if target_port == "9" * 5000:
        assert run_policy(traffic_target_valid, stack) == []  # no port is meshed: nothing to allow on
        return
    [msg] = messages(run_policy(traffic_target_valid, stack))
    assert "allows TCPRoute data/db-ports on port(s) 3 only" in msg and "(Service data/db: 5432)" in msg


# ---------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("account", [["web"], {"name": "web"}], ids=["list", "object"])
def test_malformed_service_account_name_is_reported_not_a_crash(account):
    stack = [controller(), deployment("a", "web", {"app": "web"}), http_route_group("a", "r", [{"name": "all"}]),
             service("a", "web", {"lightmesh.io/traffic-type": "http"}, {"app": "web"}),
             traffic_target("a", "t", "web", ["c"], [{"kind": "HTTPRouteGroup", "name": "r"}]),
             traffic_split("a", "s", "web", [("web-v2", 1)])]
    stack[1].props["spec"]["template"]["spec"]["serviceAccountName"] = account
    [msg] = messages(run_policy(acl_service_has_traffic_target, stack))
    assert f"Service a/web is a mesh Service, but the ServiceAccount of its pods cannot be resolved from this " \
           f"stack: Deployment a/web: its pod spec's serviceAccountName {account!r} is not a string" in msg
    assert run_policy(traffic_target_valid, stack) == []
    [msg] = messages(run_policy(traffic_split_valid, stack))  # web has pods, so it is no apex: judged itself
    assert "backend Service a/web-v2 is not declared" in msg


def test_malformed_identity_names_are_reported():
    target = traffic_target("a", "t", "web", ["c"], [{"kind": "HTTPRouteGroup", "name": "r"}])
    target.props["spec"]["destination"]["name"] = ["web"]
    target.props["spec"]["sources"][0]["namespace"] = {"ns": "a"}
    msgs = messages(run_policy(traffic_target_valid, [http_route_group("a", "r", [{"name": "all"}]), target]))
    assert msgs == ["TrafficTarget a/t spec.destination: name ['web'] is not a string. Fix: set "
                    "destination_service_account on the AccessPolicy to the ServiceAccount name (spec.destination "
                    "{kind: ServiceAccount, name}).",
                    "TrafficTarget a/t sources[0]: namespace {'ns': 'a'} is not a string. Fix: set "
                    "sources[0].service_account (and namespace) to plain names."]


# ---------------------------------------------------------------------------------- hints


def test_messages_that_lacked_a_fix_now_have_one():
    target = traffic_target("a", "t", "web", ["c"], [{"kind": "HTTPRoute", "name": "r"}])
    target.props["spec"]["sources"][0]["kind"] = "Group"
    msgs = messages(run_policy(traffic_target_valid, [target]))
    assert [m.split(" Fix: ")[0] for m in msgs] == [
        "TrafficTarget a/t sources[0] kind is 'Group'; only ServiceAccount is supported, so the controller ignores "
        "this source.",
        "TrafficTarget a/t rules[0] kind 'HTTPRoute' is not one of HTTPRouteGroup, TCPRoute, UDPRoute: the "
        "controller ignores this rule."]
    split = traffic_split("shop", "s", "web", [("web-v1", 1)], matches=[{"kind": "Foo", "name": "x"}])
    [msg] = messages(run_policy(traffic_split_valid, split_stack(split)))
    assert msg.startswith("TrafficSplit shop/s matches[0] ('x') has kind 'Foo'") and " Fix: use kind HTTPRouteGroup" in msg


def test_split_matches_may_name_port_routes_as_the_controller_accepts():
    split = traffic_split("shop", "s", "web", [("web-v1", 1)], matches=[{"kind": "TCPRoute", "name": "db"}])
    [msg] = messages(run_policy(traffic_split_valid, split_stack(split)))
    assert "match references TCPRoute shop/db, which is not declared in this stack" in msg
    tcp = split_stack(split, port_route("TCPRoute", "shop", "db"))
    for r in tcp:
        if r.type == "kubernetes:core/v1:Service":
            r.props["metadata"]["annotations"]["lightmesh.io/traffic-type"] = "tcp"
    assert run_policy(traffic_split_valid, tcp) == []
    # the split of an http root applies to the requests of the HTTP matches it names: with only a TCPRoute,
    # none, and the controller ignores it ("the referenced HTTPRouteGroups have no valid match")
    [msg] = messages(run_policy(traffic_split_valid, split_stack(split, port_route("TCPRoute", "shop", "db"))))
    assert msg.startswith("TrafficSplit shop/s matches name no HTTP match the controller accepts (only "
                          "TCPRoutes/UDPRoutes): the split of an http root applies to the requests of the valid "
                          "HTTPRouteGroup matches it names, so with none the controller ignores the TrafficSplit")
    # so does a group whose every match the controller ignores
    beta = http_route_group("shop", "beta", [{"name": "b", "methods": ["GET,POST"]}])
    split = traffic_split("shop", "s", "web", [("web-v1", 1)], matches=[{"kind": "HTTPRouteGroup", "name": "beta"}])
    [msg] = messages(run_policy(traffic_split_valid, split_stack(split, beta)))
    assert msg.startswith("TrafficSplit shop/s matches name no HTTP match the controller accepts (HTTPRouteGroup "
                          "shop/beta)")
    beta.props["spec"]["matches"].append({"name": "a", "methods": ["GET"]})
    assert run_policy(traffic_split_valid, split_stack(split, beta)) == []


# ---------------------------------------------------------------------------- 8. one object, one resource


def test_two_resources_declaring_one_object_are_reported():
    # What an AccessPolicy "api" and a TrafficSplit "api" with matches used to register: one shop/api-http.
    access = http_route_group("shop", "api-http", [{"name": "reads", "methods": ["GET"]}])
    split = http_route_group("shop", "api-http", [{"name": "canary", "headers": {"x-canary": "1"}}])
    stack = [R(access.type, "api-httproutegroup", access.props, ("lightmesh:index:AccessPolicy",)),
             R(split.type, "api-httproutegroup", split.props, ("lightmesh:index:TrafficSplit",))]
    [(msg, urn)] = run_policy(unique_objects, stack)
    assert msg.startswith("HTTPRouteGroup.specs.smi-spec.io shop/api-http is declared by two resources, resource "
                          "'api-httproutegroup' of lightmesh:index:AccessPolicy and resource 'api-httproutegroup' of "
                          "lightmesh:index:TrafficSplit: in the cluster they are one object")
    assert " Fix: give one of them another metadata.name (for a component, another instance name)" in msg
    assert urn.endswith("lightmesh:index:TrafficSplit$kubernetes:specs.smi-spec.io/v1alpha4:HTTPRouteGroup"
                        "::api-httproutegroup")
    # another version of the same group and kind is the same object; the namespace "default" is the unset one
    other_version = http_route_group("shop", "api-http", [{"name": "all"}], version="v1alpha3")
    assert len(run_policy(unique_objects, [access, other_version])) == 1
    unset = service("default", "web", res="a")
    del unset.props["metadata"]["namespace"]
    assert len(run_policy(unique_objects, [unset, service("default", "web", res="b")])) == 1
    # cluster-scoped kinds have no namespace
    namespaces = [R("kubernetes:core/v1:Namespace", res, {"apiVersion": "v1", "kind": "Namespace",
                                                          "metadata": {"name": "shop", **extra}})
                  for res, extra in (("ns-a", {}), ("ns-b", {"namespace": "elsewhere"}))]
    [msg] = messages(run_policy(unique_objects, namespaces))
    assert msg.startswith("Namespace shop is declared by two resources, resource 'ns-a' and resource 'ns-b'")
    assert run_policy(unique_objects, stack, {"ignore_objects": ["HTTPRouteGroup.specs.smi-spec.io shop/api-http"]}) \
        == []


def test_different_objects_and_generated_names_are_not_reported():
    stack = [service("shop", "api", res="a"), service("other", "api", res="b"),  # another namespace
             http_route_group("shop", "api", []),  # another kind
             R("kubernetes:mygroup.io/v1:Service", "custom", {"apiVersion": "mygroup.io/v1", "kind": "Service",
                                                            "metadata": {"name": "api", "namespace": "shop"}}),
             service("shop", "", res="auto-1"), service("shop", "", res="auto-2"),  # the provider names them
             service("shop", UNKNOWN_STRING_VALUE, res="later-1"), service("shop", UNKNOWN_STRING_VALUE, res="later-2"),
             R("lightmesh:index:MeshService", "api", {"service_name": "api", "namespace": "shop"})]
    assert run_policy(unique_objects, stack) == []
    # a Service and the patch that annotates it are the documented way to mesh an existing Service
    assert run_policy(unique_objects, [service("shop", "api"), service_patch("shop", "api", {
        "lightmesh.io/traffic-type": "tcp"})]) == []


def test_two_mesh_services_fighting_over_one_service_are_reported():
    def mesh_service(name, annotations):
        patch = service_patch("shop", "api", {**annotations, "pulumi.com/patchFieldManager": f"lightmesh-{name}",
                                              "pulumi.com/patchForce": "true"}, res=f"{name}-annotations")
        return R(patch.type, patch.name, patch.props, ("lightmesh:index:MeshService",))

    a = mesh_service("api-a", {"lightmesh.io/traffic-type": "http", "lightmesh.io/retry-attempts": "2"})
    b = mesh_service("api-b", {"lightmesh.io/traffic-type": "tcp"})
    [msg] = messages(run_policy(unique_objects, [a, b]))
    assert msg == ("Service shop/api is patched by two resources that set annotation lightmesh.io/traffic-type to "
                   "different values: 'http' by resource 'api-a-annotations' of lightmesh:index:MeshService, 'tcp' by "
                   "resource 'api-b-annotations' of lightmesh:index:MeshService; each apply takes it back from the "
                   "other, so the object flips between them. Fix: declare one MeshService per Service, with the "
                   "settings of both.")
    # the same values, other keys, or the patches' own pulumi.com/ keys (their field managers) do not fight
    same = mesh_service("api-c", {"lightmesh.io/traffic-type": "http", "lightmesh.io/scheme": "h2c"})
    assert run_policy(unique_objects, [a, same]) == []
    by_hand = service_patch("shop", "api", {"lightmesh.io/traffic-type": "udp"}, res="by-hand")
    [msg] = messages(run_policy(unique_objects, [a, by_hand]))
    assert msg.endswith("Fix: set annotation lightmesh.io/traffic-type in one place only.")


def test_a_traffic_target_for_another_namespaces_destination_is_reported():
    # The controller ignores it (any tenant could otherwise let itself into every namespace).
    target = traffic_target("attacker", "steal", "bank-api", ["attacker"], [{"kind": "HTTPRouteGroup", "name": "r"}])
    target.props["spec"]["destination"]["namespace"] = "bank"
    msgs = messages(run_policy(traffic_target_valid, [http_route_group("attacker", "r", [{"name": "all"}]), target]))
    assert [m.split(" Fix:")[0] for m in msgs] == [
        "TrafficTarget attacker/steal names destination bank/bank-api, in another namespace: a TrafficTarget grants "
        "access to its own namespace's ServiceAccounts only, and the controller ignores this one."]


def test_the_cluster_of_a_resource_comes_from_its_kubernetes_provider():
    from pulumi_policy.policy import PolicyProviderResource
    from pulumi_policy.proxy import unknown_checking_proxy

    def provider(props, urn="urn:pulumi:s::p::pulumi:providers:kubernetes::k8s-eu", kind="pulumi:providers:kubernetes"):
        return PolicyProviderResource(kind, unknown_checking_proxy(props), urn, urn.rsplit("::", 1)[-1])

    eu = model.cluster_of(provider({"kubeconfig": "kc-eu"}))
    assert eu and eu == model.cluster_of(provider({"kubeconfig": "kc-eu"}, urn="urn:...::k8s-eu-2"))
    assert eu != model.cluster_of(provider({"kubeconfig": "kc-eu", "context": "other"}))
    # the ambient cluster: no provider, or one that names no kubeconfig/context/cluster (a namespace override)
    assert model.cluster_of(None) == model.cluster_of(provider({"namespace": "x"})) == ""
    assert model.cluster_of(provider({"kubeconfig": "x"}, kind="pulumi:providers:aws")) == ""
    # not known during preview: the provider itself stands for its cluster
    unknown = provider({"kubeconfig": UNKNOWN_STRING_VALUE}, urn="urn:pulumi:s::p::pulumi:providers:kubernetes::k")
    assert model.cluster_of(unknown) == "urn:pulumi:s::p::pulumi:providers:kubernetes::k"
