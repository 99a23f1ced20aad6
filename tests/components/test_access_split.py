"""AccessPolicy and TrafficSplit: wiring under mocks, objects valid against the installed CRDs, errors."""

import pulumi
import pytest

from components.conftest import MOCKS, MONITOR, fails_when_resolved, settled
from components.manifests import validate_all
from mesh_components import AccessPolicy, ComponentArgsError, TrafficSplit
from mesh_components.access import render_access_policy, render_traffic_split

POLICY = {
    "namespace": "whoami",
    "destination_service_account": "whoami-server",
    "sources": [{"service_account": "whoami-client"}, {"service_account": "probe", "namespace": "monitoring"}],
    "http_matches": [{"name": "api", "path_regex": "/api/.*", "methods": ["GET", "post"],
                      "headers": {"X-Canary": "^(yes|true)$"}},
                     {"name": "health", "path_regex": "/health"}],
    "tcp": {"ports": [8080]},
    "udp": {},
}


@pulumi.runtime.test
def test_access_policy_registers_routes_then_target_with_valid_objects():
    policy = AccessPolicy("ap-full", POLICY)

    def check(values):
        target_name, routes = values
        assert target_name == "ap-full"
        assert routes == ["ap-full-http", "ap-full-tcp", "ap-full-udp"]
        records = {r.name: r for r in MOCKS.by_prefix("ap-full")}
        target = records["ap-full-traffictarget"].inputs
        assert target["apiVersion"] == "access.smi-spec.io/v1alpha3"
        assert target["spec"]["destination"] == {"kind": "ServiceAccount", "name": "whoami-server",
                                                 "namespace": "whoami"}
        assert target["spec"]["sources"] == [
            {"kind": "ServiceAccount", "name": "whoami-client", "namespace": "whoami"},
            {"kind": "ServiceAccount", "name": "probe", "namespace": "monitoring"}]
        assert target["spec"]["rules"] == [
            {"kind": "HTTPRouteGroup", "name": "ap-full-http", "matches": ["api", "health"]},
            {"kind": "TCPRoute", "name": "ap-full-tcp"}, {"kind": "UDPRoute", "name": "ap-full-udp"}]
        group = records["ap-full-httproutegroup"].inputs["spec"]["matches"][0]
        assert group == {"name": "api", "pathRegex": "/api/.*", "methods": ["GET", "POST"],
                         "headers": {"X-Canary": "^(yes|true)$"}}
        assert records["ap-full-tcproute"].inputs["spec"]["matches"]["ports"] == [8080]
        assert records["ap-full-udproute"].inputs["spec"]["matches"]["ports"] == []
        # the TrafficTarget waits for its routes; every child is parented to the component
        assert {d.rsplit("::", 1)[1] for d in MONITOR.dependencies_of("ap-full-traffictarget")} == {
            "ap-full-httproutegroup", "ap-full-tcproute", "ap-full-udproute"}
        for child in records:
            if child != "ap-full":
                assert MONITOR.parent_of(child).endswith("lightmesh:index:AccessPolicy::ap-full"), child
        assert validate_all(list(records.values())) == 4

    return pulumi.Output.all(policy.traffic_target_name, policy.route_names).apply(check)


@pulumi.runtime.test
def test_traffic_split_with_matches_references_its_route_group():
    split = TrafficSplit("ts-ab", {"namespace": "shop", "service": "web",
                                   "backends": [{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}],
                                   "matches": [{"name": "beta", "headers": {"cookie": ".*beta=1.*"}}]})

    def check(values):
        name, total = values
        assert (name, total) == ("ts-ab", 100)
        records = {r.name: r for r in MOCKS.by_prefix("ts-ab")}
        spec = records["ts-ab-trafficsplit"].inputs["spec"]
        assert spec["service"] == "web"
        assert [(b["service"], b["weight"]) for b in spec["backends"]] == [("web-v1", 90), ("web-v2", 10)]
        assert spec["matches"] == [{"kind": "HTTPRouteGroup", "name": "ts-ab-matches"}]
        assert records["ts-ab-httproutegroup"].inputs["metadata"]["name"] == "ts-ab-matches"
        assert validate_all(list(records.values())) == 2

    return pulumi.Output.all(split.traffic_split_name, split.total_weight).apply(check)


@pytest.mark.parametrize("policy_name, split_name", [("api", "api"), ("api", "ap"), ("api-x", "api"),
                                                     ("api-matches", "api"), ("api", "api-http")])
def test_access_policy_and_traffic_split_never_write_the_same_object(policy_name, split_name):
    """Same namespace, names alike: no Kubernetes object (kind, namespace, name) is written by both."""
    policy = render_access_policy(policy_name, {**POLICY, "namespace": "shop"})
    split = render_traffic_split(split_name, {"namespace": "shop", "service": "api",
                                              "backends": [{"service": "api-v1", "weight": 1}],
                                              "matches": [{"name": "canary", "headers": {"x-canary": "1"}}]})

    def identities(objects):
        return {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects}

    assert identities(policy) & identities(split) == set()
    assert ("HTTPRouteGroup", "shop", f"{split_name}-matches") in identities(split)


@pulumi.runtime.test
def test_depends_on_given_to_the_component_reaches_its_children():
    anchor = pulumi.CustomResource("test:index:Anchor", "dep-anchor", {})
    split = TrafficSplit("ts-dep", {"namespace": "n", "service": "web", "backends": [{"service": "a", "weight": 1}]},
                         opts=pulumi.ResourceOptions(depends_on=[anchor]))

    def check(_):
        assert any(d.endswith("::dep-anchor") for d in MONITOR.dependencies_of("ts-dep-trafficsplit"))

    return split.traffic_split_name.apply(check)


def _bad_policy(**changes):
    args = {k: v for k, v in POLICY.items()}
    args.update(changes)
    return {k: v for k, v in args.items() if v is not None}


@pytest.mark.parametrize("changes, message", [
    ({"sources": []}, "AccessPolicy 'ap': sources must be a non-empty list"),
    ({"sources": [{"namespace": "x"}]}, r"sources\[0\].service_account is required"),
    ({"destination_service_account": "Bad_SA"}, "destination_service_account must be a DNS subdomain"),
    ({"http_matches": None, "tcp": None, "udp": None}, "at least one of http_matches, tcp or udp is required"),
    ({"http_matches": [{"name": "x", "path_regex": "/api/(unclosed"}]},
     r"http_matches\[0\].path_regex is not a valid regular expression"),
    ({"http_matches": [{"name": "x", "methods": ["FETCH"]}]}, r"http_matches\[0\].methods\[0\] must be one of"),
    ({"http_matches": [{"name": "x", "headers": {"bad header": "x"}}]}, "invalid header name 'bad header'"),
    ({"http_matches": [{"name": "x", "headers": {1: "a"}}]}, r"headers has an invalid header name 1$"),
    ({"http_matches": [{"name": "x", "headers": {"x-a": "(["}}]}, r"headers\['x-a'\] is not a valid regular"),
    ({"http_matches": [{"name": "x"}, {"name": "x"}]}, r"http_matches\[\].name has a duplicate entry 'x'"),
    ({"tcp": {"ports": [0]}}, r"tcp.ports\[0\] must be between 1 and 65535, got 0"),
    ({"udp": {"ports": [53, 53]}}, "udp.ports has a duplicate entry 53"),
    # the repr of an int past 4,300 digits raises ValueError: still an error naming the field
    ({"tcp": {"ports": [10 ** 5000]}}, r"tcp.ports\[0\] must be between 1 and 65535, got a whole number of about "
                                       r"5001 digits"),
    ({"namespace": None}, "namespace is required"),
    ({"namespace": pulumi.Output.from_input("x")}, "namespace must be a plain value, not an Output"),
    ({"sources": pulumi.Output.from_input([{"service_account": "c"}])}, "sources must be a plain value, not an Output"),
    ({"sources": [pulumi.Output.from_input({"service_account": "c"})]}, r"sources\[0\] must be a plain value"),
    # a route's port or method is written into its spec at preview: an Output crashed int() or was quoted by repr
    ({"tcp": {"ports": [pulumi.Output.from_input(80)]}},
     r"AccessPolicy 'ap': tcp.ports\[0\] must be a plain value, not an Output \(it is validated at preview\)$"),
    ({"udp": {"ports": [53, pulumi.Output.from_input(54)]}}, r"udp.ports\[1\] must be a plain value, not an Output"),
    ({"http_matches": [{"name": "x", "methods": [pulumi.Output.from_input("GET")]}]},
     r"http_matches\[0\].methods\[0\] must be a plain value, not an Output"),
    # a misspelt field is an error, not a rule silently left out (in ACL mode: traffic denied)
    ({"http_match": [{"name": "x"}]}, r"args has unknown field\(s\) http_match"),
    ({"sources": [{"service_account": "c", "ns": "other"}]}, r"sources\[0\] has unknown field\(s\) ns"),
    ({"tcp": {"port": [80]}}, r"tcp has unknown field\(s\) port; known: ports"),
    ({"tcp": {"ports": 80}}, r"tcp.ports must be a list, got 80"),
    ({"http_matches": [{"name": "x", "path": "/api"}]}, r"http_matches\[0\] has unknown field\(s\) path"),
    ({"http_matches": [{"name": "x", "methods": "GET"}]}, r"http_matches\[0\].methods must be a list"),
])
def test_access_policy_bad_args_name_the_field(changes, message):
    with pytest.raises(ComponentArgsError, match=message):
        render_access_policy("ap", _bad_policy(**changes))


def test_access_policy_name_must_be_usable_as_an_object_name():
    with pytest.raises(ComponentArgsError, match="AccessPolicy 'Bad Name': name must be a DNS subdomain"):
        render_access_policy("Bad Name", POLICY)


@pytest.mark.parametrize("args, message", [
    ({"backends": []}, "backends must be a non-empty list"),
    ({"backends": [{"service": "a", "weight": 0}, {"service": "b", "weight": 0}]}, "weights sum to 0"),
    ({"backends": [{"service": "a", "weight": -5}]}, r"backends\[0\].weight must be between 0 and 1000000, got -5"),
    ({"backends": [{"service": "a", "weight": 1.5}]}, r"backends\[0\].weight must be a whole number, got 1.5"),
    ({"backends": [{"service": "a", "weight": True}]}, r"backends\[0\].weight must be a whole number"),
    ({"backends": [{"service": "a", "weight": 10 ** 5000}]},
     r"backends\[0\].weight must be between 0 and 1000000, got a whole number of about 5001 digits"),
    ({"backends": [{"service": "a"}]}, r"backends\[0\].weight is required"),
    ({"backends": [{"service": "a", "weight": 1}, {"service": "a", "weight": 2}]}, "duplicate entry 'a'"),
    ({"service": "Web"}, "service must be a DNS label"),
    ({"matches": [{"name": "m", "path_regex": "*"}]}, r"matches\[0\].path_regex is not a valid regular expression"),
    ({"backends": [{"service": "web", "weight": 1}]}, r"backends\[0\].service is the root Service 'web' itself"),
    ({"backends": [{"service": "a", "weight": pulumi.Output.from_input(1)}]}, r"backends\[0\].weight must be a plain"),
    ({"backends": [{"service": "a", "weight": 1, "port": 80}]}, r"backends\[0\] has unknown field\(s\) port"),
    ({"match": []}, r"args has unknown field\(s\) match"),
])
def test_traffic_split_bad_args_name_the_field(args, message):
    full = {"namespace": "n", "service": "web", "backends": [{"service": "a", "weight": 1}], **args}
    with pytest.raises(ComponentArgsError, match="TrafficSplit 'ts': .*" + message):
        render_traffic_split("ts", full)


def test_bad_args_raise_before_anything_is_registered():
    before = len(MOCKS.created)
    with pytest.raises(ComponentArgsError):
        TrafficSplit("ts-never", {"namespace": "n", "service": "web", "backends": []})
    assert not [r for r in MOCKS.created[before:] if r.name.startswith("ts-never")]


def test_whole_float_weights_from_other_languages_are_accepted():
    objects = render_traffic_split("ts", {"namespace": "n", "service": "web",
                                          "backends": [{"service": "a", "weight": 75.0}, {"service": "b", "weight": 25}]})
    assert [b["weight"] for b in objects[-1]["spec"]["backends"]] == [75, 25]


@pulumi.runtime.test
def test_depends_on_given_as_an_output_also_reaches_the_children():
    anchor = pulumi.CustomResource("test:index:Anchor", "dep-anchor-out", {})
    split = TrafficSplit("ts-dep-out", {"namespace": "n", "service": "web", "backends": [{"service": "a", "weight": 1}]},
                         opts=pulumi.ResourceOptions(depends_on=pulumi.Output.from_input([anchor])))

    def check(_):
        assert any(d.endswith("::dep-anchor-out") for d in MONITOR.dependencies_of("ts-dep-out-trafficsplit"))

    return split.traffic_split_name.apply(check)


@pytest.mark.parametrize("render, name, args, message", [
    # the name is a DNS subdomain (253), but <name>-http would be longer: refused by the API server at `pulumi up`
    (render_access_policy, "a" * 249, {"http_matches": [{"name": "all"}]},
     r"the HTTPRouteGroup 'a{59}\.\.\. \(254 characters\) would exceed Kubernetes' 253-character limit on object "
     r"names; use a name of at most 248 characters$"),
    (render_access_policy, "a" * 250, {"udp": {}}, r"the UDPRoute .* use a name of at most 249 characters$"),
    (render_traffic_split, "t" * 246, {"matches": [{"name": "beta", "path_regex": "/beta"}]},
     r"the HTTPRouteGroup 't{59}\.\.\. \(254 characters\) would exceed .* at most 245 characters$"),
])
def test_a_name_too_long_for_a_derived_object_fails_at_preview(render, name, args, message):
    base = ({"namespace": "n", "destination_service_account": "sa", "sources": [{"service_account": "c"}]}
            if render is render_access_policy else
            {"namespace": "n", "service": "web", "backends": [{"service": "a", "weight": 1}]})
    kind = "AccessPolicy" if render is render_access_policy else "TrafficSplit"
    with pytest.raises(ComponentArgsError, match=rf"^{kind} '{name[0]}+': name is too long: " + message):
        render(name, {**base, **args})


def test_the_longest_names_that_fit_pass():
    objects = render_access_policy("a" * 248, {"namespace": "n", "destination_service_account": "sa",
                                               "sources": [{"service_account": "c"}], "http_matches": [{"name": "all"}],
                                               "tcp": {}})
    assert max(len(o["metadata"]["name"]) for o in objects) == 253
    # without matches a TrafficSplit writes only <name>: a 253-character name fits
    split = render_traffic_split("t" * 253, {"namespace": "n", "service": "web",
                                             "backends": [{"service": "a", "weight": 1}]})
    assert [len(o["metadata"]["name"]) for o in split] == [253]


def test_a_header_regex_output_is_checked_when_it_resolves():
    @pulumi.runtime.test
    def program():
        policy = AccessPolicy("ap-hdr-late", {**POLICY, "http_matches": [
            {"name": "api", "headers": {"X-Canary": pulumi.Output.from_input("([")}}]})
        return settled(policy.children.values())  # every child settles within this test

    fails_when_resolved(program, r"AccessPolicy 'ap-hdr-late': http_matches\[0\].headers\['X-Canary'\] is not a "
                                 r"valid regular expression")


@pulumi.runtime.test
def test_a_valid_header_regex_output_is_written():
    policy = AccessPolicy("ap-hdr-ok", {**POLICY, "http_matches": [
        {"name": "api", "headers": {"X-Canary": pulumi.Output.from_input("^yes$")}}]})

    def check(_):
        group = next(r for r in MOCKS.created if r.name == "ap-hdr-ok-httproutegroup").inputs
        assert group["spec"]["matches"] == [{"name": "api", "headers": {"X-Canary": "^yes$"}}]

    return policy.children["HTTPRouteGroup"].urn.apply(check)
