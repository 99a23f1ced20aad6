"""MeshService: annotate-existing and create modes, host names, validation through lightmesh.annotations."""

import pulumi
import pytest

from components.conftest import MOCKS, MONITOR, fails_when_resolved
from components.manifests import validate_all
from lightmesh.annotations import Scheme, TrafficType, parse_annotations
from mesh_components import ComponentArgsError, MeshService
from mesh_components.service import render_annotations


@pulumi.runtime.test
def test_existing_service_is_annotated_with_a_server_side_apply_patch():
    svc = MeshService("ms-patch", {"service_name": "whoami", "namespace": "whoami",
                                   "traffic_type": TrafficType.HTTP, "retry_attempts": 2,
                                   "circuit_breaker_expression": "NetworkErrorRatio() > 0.5",
                                   "rate_limit_average": 100, "rate_limit_burst": 200, "request_timeout": "5s",
                                   "scheme": "h2c"})

    def check(values):
        hosts, annotations = values
        assert hosts == ["whoami.whoami.lightmesh", "whoami.whoami.traefik.mesh", "whoami.whoami.maesh"]
        record = next(r for r in MOCKS.created if r.name == "ms-patch-annotations")
        assert record.typ == "kubernetes:core/v1:ServicePatch"
        meta = record.inputs["metadata"]
        assert (meta["name"], meta["namespace"]) == ("whoami", "whoami")
        assert meta["annotations"]["pulumi.com/patchFieldManager"] == "lightmesh-ms-patch"
        assert "spec" not in record.inputs  # owns annotations only: destroy leaves the Service intact
        mesh = {k: v for k, v in meta["annotations"].items() if k.startswith("lightmesh.io/")}
        assert mesh == annotations == {
            "lightmesh.io/traffic-type": "http", "lightmesh.io/scheme": "h2c", "lightmesh.io/retry-attempts": "2",
            "lightmesh.io/circuit-breaker-expression": "NetworkErrorRatio() > 0.5",
            "lightmesh.io/ratelimit-average": "100", "lightmesh.io/ratelimit-burst": "200",
            "lightmesh.io/request-timeout": "5s"}
        settings = parse_annotations(mesh)  # what the controller will read
        assert settings.scheme is Scheme.H2C and settings.rate_limit.burst == 200
        assert MONITOR.parent_of("ms-patch-annotations").endswith("lightmesh:index:MeshService::ms-patch")

    return pulumi.Output.all(svc.host_names, svc.annotations).apply(check)


@pulumi.runtime.test
def test_service_is_created_when_ports_are_given():
    svc = MeshService("ms-create", {"service_name": "whoami-tcp", "namespace": "whoami", "traffic_type": "tcp",
                                    "ports": [{"port": 8080, "name": "tcp"}],
                                    "selector": {"app": "whoami-tcp"}, "domains": ["traefik.mesh"]})

    def check(hosts):
        assert hosts == ["whoami-tcp.whoami.traefik.mesh"]
        records = MOCKS.by_prefix("ms-create")
        service = next(r for r in records if r.name == "ms-create-service").inputs
        assert service["spec"]["selector"] == {"app": "whoami-tcp"}
        assert service["spec"]["ports"] == [{"name": "tcp", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]
        assert service["metadata"]["annotations"] == {"lightmesh.io/traffic-type": "tcp"}
        assert validate_all(records) == 1

    return svc.host_names.apply(check)


@pulumi.runtime.test
def test_a_created_udp_service_gets_udp_ports():
    # A TCP port on a udp Service would be left out of the mesh by the controller.
    svc = MeshService("ms-udp", {"service_name": "dns", "namespace": "infra", "traffic_type": "udp",
                                 "ports": [{"port": 53, "name": "dns"}, {"port": 5353, "name": "mdns", "protocol": "udp"}],
                                 "selector": {"app": "dns"}})

    def check(_):
        service = next(r for r in MOCKS.by_prefix("ms-udp") if r.name == "ms-udp-service").inputs
        assert [p["protocol"] for p in service["spec"]["ports"]] == ["UDP", "UDP"]
        assert validate_all(MOCKS.by_prefix("ms-udp")) == 1

    return svc.host_names.apply(check)


@pulumi.runtime.test
def test_domains_from_an_output_and_a_bad_one_fails_naming_the_field():
    ok = MeshService("ms-outdomains", {"service_name": "a", "namespace": "b",
                                       "domains": pulumi.Output.from_input(["mesh.example"])})
    return ok.host_names.apply(lambda h: _assert_equal(h, ["a.b.mesh.example"]))


def _assert_equal(actual, expected):
    assert actual == expected


@pytest.mark.parametrize("args, message", [
    ({"retry_attempts": 0}, "retry_attempts must be between 1 and 100, got 0"),
    ({"retry_attempts": "2"}, "retry_attempts must be a whole number, got '2'"),
    ({"retry_attempts": True}, "retry_attempts must be a whole number"),
    ({"traffic_type": "grpc"}, "traffic_type must be one of http, tcp, udp, got 'grpc'"),
    ({"scheme": "ftp"}, "scheme must be one of http, https, h2c, got 'ftp'"),
    # the value once, quoted (it was repeated, the second time unquoted)
    ({"circuit_breaker_expression": "NetworkErrorRatio() >"},
     r"circuit_breaker_expression 'NetworkErrorRatio\(\) >' is not a valid circuit-breaker expression: [^']*number"
     r"[^']* at position 22$"),
    ({"circuit_breaker_expression": "Foo() > 1"},
     r"circuit_breaker_expression 'Foo\(\) > 1' is not a valid circuit-breaker expression: unknown function 'Foo' "
     r"[^']* at position 1$"),
    ({"request_timeout": "soon"}, "request_timeout must be a duration.*, got 'soon'$"),
    ({"rate_limit_average": 10}, "rate_limit_average needs rate_limit_burst too"),
    ({"rate_limit_burst": 10}, "rate_limit_burst needs rate_limit_average too"),
    ({"rate_limit_average": 0, "rate_limit_burst": 5}, "rate_limit_average must be between 1 and 1000000, got 0"),
    ({"request_timeout": "5"}, "request_timeout must be a duration"),
    ({"request_timeout": "48h"}, "request_timeout must be more than 0 and at most 24h"),
    ({"service_name": "Who_Ami"}, "service_name must be a DNS label"),
    ({"namespace": None}, "namespace is required"),
    ({"ports": []}, "ports must be a non-empty list"),
    ({"ports": [{"port": 70000}], "selector": {"a": "b"}}, r"ports\[0\].port must be between 1 and 65535, got 70000"),
    ({"ports": [{"port": 80}]}, "selector is required when ports is set"),
    ({"selector": {"a": "b"}}, "selector only applies when ports is set"),
    ({"ports": [{"port": 80}, {"port": 81}], "selector": {"a": "b"}}, "ports need a name each"),
    ({"domains": []}, "domains must be a non-empty list"),
    ({"domains": ["Bad Domain"]}, "domains must be a DNS name"),
    ({"domains": ["a." + "b" * 64]}, "domains must be a DNS name"),
    ({"retry_attempts": -1}, "retry_attempts must be between 1 and 100, got -1"),
    # str() of an int past 4,300 digits raises ValueError: still an error naming the field
    ({"retry_attempts": 10 ** 5000}, "retry_attempts must be between 1 and 100, got a whole number of about 5001 "
                                     "digits$"),
    ({"rate_limit_average": 5, "rate_limit_burst": -10 ** 5000},
     "rate_limit_burst must be between 1 and 1000000, got a negative whole number of about 5001 digits$"),
    ({"retry_attempts": "9" * 5000}, r"retry_attempts must be a whole number, got '9{59}\.\.\. \(5000 characters\)$"),
    ({"ports": [{"port": 10 ** 5000}], "selector": {"a": "b"}},
     r"ports\[0\].port must be between 1 and 65535, got a whole number of about 5001 digits$"),
    # the created Service's selector: label names and values as Kubernetes checks them
    ({"ports": [{"port": 80}], "selector": {"app!": "web"}}, "selector key 'app!' is not a label name"),
    ({"ports": [{"port": 80}], "selector": {"app": "web server"}},
     r"selector\['app'\] value 'web server' is not a label value"),
    # misspelt fields would be dropped without a word, and what they meant would never happen
    ({"retries": 2}, r"args has unknown field\(s\) retries; known: service_name"),
    ({"ports": [{"port": 80, "targetPort": 8080}], "selector": {"a": "b"}}, r"ports\[0\] has unknown field\(s\) targetPort"),
    # the controller meshes only ports whose protocol fits the traffic type
    ({"traffic_type": "udp", "ports": [{"port": 53, "protocol": "TCP"}], "selector": {"a": "b"}},
     r"ports\[0\].protocol TCP does not fit traffic_type udp"),
    ({"traffic_type": "tcp", "ports": [{"port": 53, "protocol": "UDP"}], "selector": {"a": "b"}},
     r"ports\[0\].protocol UDP does not fit traffic_type tcp: .* use traffic_type udp"),
    ({"ports": [{"port": 53, "protocol": "SCTP"}], "selector": {"a": "b"}}, r"ports\[0\].protocol must be TCP or UDP"),
    # the proxy applies these to HTTP requests only: on a TCP/UDP Service they would do nothing
    ({"traffic_type": "tcp", "retry_attempts": 3},
     r"retry_attempts applies to HTTP traffic only; traffic_type tcp does not use it: leave it out or use "
     r"traffic_type http$"),
    ({"traffic_type": "udp", "scheme": "h2c", "rate_limit_average": 5, "rate_limit_burst": 10, "request_timeout": "5s"},
     r"scheme, rate_limit_average, rate_limit_burst, request_timeout apply to HTTP traffic only; traffic_type udp "
     r"does not use them"),
    ({"traffic_type": "tcp", "circuit_breaker_expression": "NetworkErrorRatio() > 0.5"},
     r"circuit_breaker_expression applies to HTTP traffic only"),
    # Services the controller never meshes, whatever their annotations: host_names that never resolve
    ({"namespace": "kube-system"}, r"namespace must not be 'kube-system': the controller never meshes the Services "
                                   r"of kube-system, so this Service would stay out of the mesh and its host_names "
                                   r"would never resolve$"),
    ({"namespace": "kube-system", "ports": [{"port": 53}], "selector": {"a": "b"}},
     r"namespace must not be 'kube-system'"),
    ({"service_name": "kubernetes", "namespace": "default"},
     r"service_name must not be 'kubernetes' in namespace 'default': the controller never meshes default/kubernetes "
     r"\(the API server's own Service\), so its host_names would never resolve$"),
])
def test_bad_args_fail_synchronously_naming_the_field(args, message):
    full = {"service_name": "whoami", "namespace": "whoami", **args}
    full = {k: v for k, v in full.items() if v is not None}
    with pytest.raises(ComponentArgsError, match=r"^MeshService 'whoami': .*" + message):
        MeshService("whoami", full)


@pytest.mark.parametrize("expression", ["Foo() > 1", "NetworkErrorRatio() >", "NetworkErrorRatio() > 0.5 &&"])
def test_a_bad_circuit_breaker_expression_is_named_once_and_quoted(expression):
    with pytest.raises(ComponentArgsError) as failure:
        MeshService("cb", {"service_name": "web", "namespace": "shop", "circuit_breaker_expression": expression})
    message = str(failure.value)
    assert message.startswith(f"MeshService 'cb': circuit_breaker_expression {expression!r} is not a valid "
                              "circuit-breaker expression: ")
    assert message.count(expression) == 1 and message.count("circuit-breaker expression") == 1, message


def test_several_bad_annotation_fields_are_reported_together():
    with pytest.raises(ComponentArgsError) as info:
        render_annotations("svc", {"retry_attempts": 500, "request_timeout": "soon"})
    assert "retry_attempts must be between 1 and 100, got 500" in str(info.value)
    assert "request_timeout must be a duration" in str(info.value)


def test_output_values_are_validated_when_they_resolve():
    # A value only known at deploy time cannot fail at construction; it fails the deployment
    # (the resource using it), still naming the component and the field.
    @pulumi.runtime.test
    def program():
        svc = MeshService("ms-late", {"service_name": "a", "namespace": "b",
                                      "retry_attempts": pulumi.Output.from_input(0)})
        return svc.annotations

    with pytest.raises(ValueError, match="MeshService 'ms-late': retry_attempts must be between 1 and 100, got 0"):
        program()


@pytest.mark.parametrize("ports, message", [
    # Kubernetes validates a Service port name as a DNS label and refuses duplicates: at `pulumi up`, not at preview
    ([{"port": 80, "name": "HTTP_Port"}], r"ports\[0\].name must be a DNS label .*, got 'HTTP_Port'$"),
    ([{"port": 80, "name": "http"}, {"port": 81, "name": "-admin"}], r"ports\[1\].name must be a DNS label"),
    ([{"port": 80, "name": "a" * 64}], r"ports\[0\].name must be a DNS label"),
    ([{"port": 80, "name": 5}], r"ports\[0\].name must be a DNS label .*, got 5$"),
    ([{"port": 80, "name": ["http"]}], r"ports\[0\].name must be a DNS label"),
    ([{"port": 80, "name": "web"}, {"port": 81, "name": "web"}], r"ports\[\].name has a duplicate entry 'web'$"),
])
def test_port_names_kubernetes_would_refuse_fail_at_preview(ports, message):
    with pytest.raises(ComponentArgsError, match=r"^MeshService 'whoami': " + message):
        MeshService("whoami", {"service_name": "whoami", "namespace": "whoami", "ports": ports, "selector": {"a": "b"}})


@pulumi.runtime.test
def test_port_names_kubernetes_accepts_pass():
    svc = MeshService("ms-port-names", {"service_name": "web", "namespace": "shop", "selector": {"app": "web"},
                                        "ports": [{"port": 80, "name": "http"}, {"port": 81, "name": "8081"},
                                                  {"port": 82, "name": "a-port-name-longer-than-fifteen"}]})

    def check(_):
        spec = next(r for r in MOCKS.created if r.name == "ms-port-names-service").inputs["spec"]
        assert [p["name"] for p in spec["ports"]] == ["http", "8081", "a-port-name-longer-than-fifteen"]

    return svc.service_name.apply(check)


@pulumi.runtime.test
def test_a_named_target_port_is_passed_on_for_kubernetes_to_resolve_per_pod():
    svc = MeshService("ms-named-target", {
        "service_name": "web", "namespace": "shop", "selector": {"app": "web"},
        "ports": [{"port": 80, "name": "http", "target_port_name": "http-alt"},
                  {"port": 81, "name": "admin", "target_port": "admin"},  # IntOrString, from Python
                  {"port": 82, "name": "metrics", "target_port": "9102"},  # digits: the number
                  {"port": 83, "name": "grpc", "target_port_name": pulumi.Output.from_input("grpc")},
                  {"port": 84, "name": "web", "target_port": pulumi.Output.from_input("web")}]})

    def check(_):
        records = MOCKS.by_prefix("ms-named-target")
        spec = next(r for r in records if r.name == "ms-named-target-service").inputs["spec"]
        assert [p["targetPort"] for p in spec["ports"]] == ["http-alt", "admin", 9102, "grpc", "web"]
        assert validate_all(records) == 1

    return svc.service_name.apply(check)


@pytest.mark.parametrize("port, message", [
    ({"port": 80, "target_port": "HTTP"}, r"ports\[0\].target_port must be a container port name .*, got 'HTTP'$"),
    ({"port": 80, "target_port_name": "a-name-over-fifteen"}, r"ports\[0\].target_port_name must be a container port"),
    ({"port": 80, "target_port_name": "web--ui"}, r"ports\[0\].target_port_name must be a container port"),
    ({"port": 80, "target_port_name": "1234"}, r"ports\[0\].target_port_name must be a container port .*'1234'$"),
    ({"port": 80, "target_port_name": 8080}, r"ports\[0\].target_port_name must be a container port .*, got 8080$"),
    ({"port": 80, "target_port": "70000"}, r"ports\[0\].target_port must be between 1 and 65535, got 70000$"),
    ({"port": 80, "target_port": 8080, "target_port_name": "http"},
     r"ports\[0\] has both target_port and target_port_name: give one$"),
])
def test_target_port_names_kubernetes_would_refuse_fail_at_preview(port, message):
    with pytest.raises(ComponentArgsError, match=r"^MeshService 'whoami': " + message):
        MeshService("whoami", {"service_name": "whoami", "namespace": "whoami", "ports": [port], "selector": {"a": "b"}})


def test_an_instance_name_too_long_for_the_field_manager_fails_at_preview():
    """An existing Service is annotated with the field manager ``lightmesh-<name>``; the API server refuses one
    of more than 128 bytes."""
    args = {"service_name": "whoami", "namespace": "whoami"}
    with pytest.raises(ComponentArgsError, match=r"^MeshService 'a+': name is too long: the annotations are applied "
                                                 r"with the field manager 'lightmesh-<name>', here 129 bytes, over "
                                                 r"Kubernetes' limit of 128; use a name of at most 118 bytes$"):
        MeshService("a" * 119, args)
    with pytest.raises(ComponentArgsError, match=r"^MeshService 'web\\nsvc': name must have printable characters only"):
        MeshService("web\nsvc", args)


@pulumi.runtime.test
def test_the_longest_instance_name_that_fits_the_field_manager_passes():
    svc = MeshService("é" * 59, {"service_name": "whoami", "namespace": "whoami"})  # 118 bytes

    def check(_):
        record = next(r for r in MOCKS.created if r.name == "é" * 59 + "-annotations")
        manager = record.inputs["metadata"]["annotations"]["pulumi.com/patchFieldManager"]
        assert manager == "lightmesh-" + "é" * 59 and len(manager.encode()) == 128

    return svc.service_name.apply(check)


@pulumi.runtime.test
def test_none_means_the_default_for_the_optional_fields():
    """As in every component: None (``config.get()`` of an unset key) is the field's default."""
    svc = MeshService("ms-none", {"service_name": "dns", "namespace": "shop", "traffic_type": "udp", "domains": None,
                                  "scheme": None, "retry_attempts": None, "selector": {"app": "dns"},
                                  "ports": [{"port": 53, "name": None, "target_port": None, "protocol": None}]})

    def check(hosts):
        assert hosts == [f"dns.shop.{d}" for d in ("lightmesh", "traefik.mesh", "maesh")]
        spec = next(r for r in MOCKS.created if r.name == "ms-none-service").inputs["spec"]
        assert spec["ports"] == [{"port": 53, "protocol": "UDP", "targetPort": 53}]  # protocol from traffic_type

    return svc.host_names.apply(check)


def test_http_fields_are_accepted_for_http_and_the_default_traffic_type():
    # the controller's --default-mode decides an unset traffic_type: nothing to refuse at preview
    for traffic_type in ("http", None):
        args = {"service_name": "web", "namespace": "shop", "retry_attempts": 2, "request_timeout": "5s"}
        if traffic_type:
            args["traffic_type"] = traffic_type
        assert MeshService(f"web-{traffic_type}", args).children["service"] is not None


# ------------------------------------------------------------------ Outputs: which fields may be, and when they are checked
O = pulumi.Output.from_input


@pytest.mark.parametrize("args, message", [
    # traffic_type decides the ports' default protocol and which fields apply: an Output skipped both checks
    ({"traffic_type": O("udp"), "ports": [{"port": 53}], "selector": {"a": "b"}},
     r"traffic_type must be a plain value, not an Output \(it is validated at preview\)$"),
    ({"traffic_type": O("tcp"), "retry_attempts": 3}, "traffic_type must be a plain value, not an Output"),
    # ports as a whole decides the created Service's ports: it crashed with "'Output' object is not iterable"
    ({"ports": O([{"port": 80}]), "selector": {"a": "b"}}, r"ports must be a plain value, not an Output"),
    ({"ports": [O({"port": 80})], "selector": {"a": "b"}}, r"ports\[0\] must be a plain value, not an Output"),
    # the plain annotation fields are checked at preview even when another one is an Output
    ({"request_timeout": O("5s"), "retry_attempts": 0}, "retry_attempts must be between 1 and 100, got 0$"),
    ({"request_timeout": O("5s"), "rate_limit_average": 5}, "rate_limit_average needs rate_limit_burst too"),
    ({"retry_attempts": O(2), "circuit_breaker_expression": "Foo() > 1"},
     "circuit_breaker_expression 'Foo\\(\\) > 1' is not a valid circuit-breaker expression"),
    ({"scheme": O("https"), "request_timeout": "48h"}, "request_timeout must be more than 0 and at most 24h"),
])
def test_outputs_where_a_plain_value_is_needed_and_plain_fields_next_to_outputs_fail_at_preview(args, message):
    with pytest.raises(ComponentArgsError, match=r"^MeshService 'whoami': " + message):
        MeshService("whoami", {"service_name": "whoami", "namespace": "whoami", **args})


@pulumi.runtime.test
def test_an_output_annotation_field_makes_a_pair_given_and_is_written_when_it_resolves():
    # rate_limit_average as an Output is given: its plain burst is not "without rate_limit_average"
    svc = MeshService("ms-out-pair", {"service_name": "web", "namespace": "shop", "rate_limit_average": O(5),
                                      "rate_limit_burst": 10, "scheme": O("HTTPS")})
    return svc.annotations.apply(lambda a: _assert_equal(a, {"lightmesh.io/ratelimit-average": "5",
                                                              "lightmesh.io/ratelimit-burst": "10",
                                                              "lightmesh.io/scheme": "https"}))


@pytest.mark.parametrize("name, protocol, traffic_type, message", [
    ("ms-proto-sctp", O("SCTP"), None, r"ports\[0\].protocol must be TCP or UDP, got 'SCTP'"),
    ("ms-proto-tcp-on-udp", O("TCP"), "udp", r"ports\[0\].protocol TCP does not fit traffic_type udp"),
    ("ms-proto-number", O(5), None, r"ports\[0\].protocol must be TCP or UDP, got 5"),
])
def test_a_port_protocol_output_is_checked_when_it_resolves(name, protocol, traffic_type, message):
    # it was registered as given: an SCTP port, or a TCP port the mesh leaves out of a udp Service
    @pulumi.runtime.test
    def program():
        args = {"service_name": "web", "namespace": "shop", "selector": {"a": "b"},
                "ports": [{"port": 53, "protocol": protocol}]}
        if traffic_type:
            args["traffic_type"] = traffic_type
        return MeshService(name, args).children["service"].urn

    fails_when_resolved(program, rf"MeshService '{name}': " + message)


@pulumi.runtime.test
def test_a_port_protocol_output_that_fits_is_upper_cased_and_none_is_the_default():
    svc = MeshService("ms-proto-ok", {"service_name": "dns", "namespace": "shop", "traffic_type": "udp",
                                      "selector": {"app": "dns"},
                                      "ports": [{"port": 53, "name": "dns", "protocol": O("udp")},
                                                {"port": 54, "name": "alt", "protocol": O(None)}]})

    def check(_):
        spec = next(r for r in MOCKS.created if r.name == "ms-proto-ok-service").inputs["spec"]
        assert [p["protocol"] for p in spec["ports"]] == ["UDP", "UDP"]

    return svc.children["service"].urn.apply(check)


def test_a_selector_value_output_is_checked_as_a_label_value_when_it_resolves():
    # it was never checked ("for the API server to judge"): the Service failed only at `pulumi up`
    @pulumi.runtime.test
    def program():
        svc = MeshService("ms-sel-late", {"service_name": "web", "namespace": "shop", "ports": [{"port": 80}],
                                          "selector": {"app": O("not valid!")}})
        return svc.children["service"].urn

    fails_when_resolved(program, r"MeshService 'ms-sel-late': selector\['app'\] value 'not valid!' is not a label value")


@pulumi.runtime.test
def test_a_valid_selector_value_output_is_written():
    svc = MeshService("ms-sel-ok", {"service_name": "web", "namespace": "shop", "ports": [{"port": 80}],
                                    "selector": {"app": O("web"), "tier": "front"}})

    def check(_):
        spec = next(r for r in MOCKS.created if r.name == "ms-sel-ok-service").inputs["spec"]
        assert spec["selector"] == {"app": "web", "tier": "front"}

    return svc.children["service"].urn.apply(check)


@pytest.mark.parametrize("args", [{"service_name": "kubernetes", "namespace": "shop"},
                                  {"service_name": "web", "namespace": "default"},
                                  {"service_name": "kube-dns", "namespace": "kube-public"}])
def test_services_the_controller_meshes_are_accepted_next_to_the_ones_it_never_does(args):
    MeshService(f"ms-near-{args['namespace']}", args)


@pytest.mark.parametrize("name, args, message", [
    ("ms-late-kube-system", {"service_name": "a", "namespace": O("kube-system")},
     r"namespace must not be 'kube-system': the controller never meshes"),
    ("ms-late-kubernetes", {"service_name": O("kubernetes"), "namespace": "default"},
     r"service_name must not be 'kubernetes' in namespace 'default'"),
    ("ms-late-default", {"service_name": "kubernetes", "namespace": O("default")},
     r"service_name must not be 'kubernetes' in namespace 'default'"),
    ("ms-late-both", {"service_name": O("kubernetes"), "namespace": O("default")},
     r"service_name must not be 'kubernetes' in namespace 'default'"),
])
def test_a_service_the_controller_never_meshes_given_as_outputs_fails_when_they_resolve(name, args, message):
    @pulumi.runtime.test
    def program():
        return MeshService(name, args).host_names

    fails_when_resolved(program, rf"MeshService '{name}': " + message)


@pulumi.runtime.test
def test_a_plain_name_stays_plain_when_only_the_namespace_is_an_output():
    # Before: "kubernetes" with a namespace Output became an Output itself, so at preview the child's
    # name was unknown (policies could not judge it) and a secret namespace made the name secret.
    from mesh_components._common import Checker
    from mesh_components.service import _check_meshable

    name, namespace = _check_meshable(Checker("MeshService", "ms-plain"), "kubernetes", O("shop"))
    assert name == "kubernetes"
    return namespace.apply(lambda ns: _assert_equal(ns, "shop"))


@pulumi.runtime.test
def test_outputs_naming_a_service_the_controller_meshes_are_written():
    svc = MeshService("ms-late-fine", {"service_name": O("kubernetes"), "namespace": O("shop")})
    return svc.host_names.apply(lambda h: _assert_equal(h, ["kubernetes.shop.lightmesh", "kubernetes.shop.traefik.mesh",
                                                            "kubernetes.shop.maesh"]))
