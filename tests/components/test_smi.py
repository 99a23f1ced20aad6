"""The SMI CRDs MeshInstall installs, and the objects AccessPolicy/TrafficSplit render against them."""

import copy

import jsonschema
import kubernetes_validate
import pytest

from manifests import KUBERNETES_VERSION
from mesh_components import smi

EXPECTED_VERSIONS = {
    "traffictargets.access.smi-spec.io": ["v1alpha1", "v1alpha2", "v1alpha3"],
    "httproutegroups.specs.smi-spec.io": ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    "tcproutes.specs.smi-spec.io": ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
    "udproutes.specs.smi-spec.io": ["v1alpha4"],
    "trafficsplits.split.smi-spec.io": ["v1alpha1", "v1alpha2", "v1alpha3", "v1alpha4"],
}


def test_crds_serve_every_version_with_newest_as_storage():
    assert {c["metadata"]["name"]: [v["name"] for v in c["spec"]["versions"]] for c in smi.CRDS} == EXPECTED_VERSIONS
    for crd in smi.CRDS:
        versions = crd["spec"]["versions"]
        assert all(v["served"] for v in versions)
        assert [v["name"] for v in versions if v["storage"]] == [versions[-1]["name"]]


@pytest.mark.parametrize("crd", smi.CRDS, ids=lambda c: c["metadata"]["name"])
def test_crd_manifest_passes_kubernetes_validate_strict(crd):
    kubernetes_validate.validate(crd, KUBERNETES_VERSION, strict=True)


def _assert_structural(schema, path):
    """apiextensions/v1 requires a structural schema: a type on every node (or int-or-string)."""
    if schema.get("x-kubernetes-int-or-string"):
        return
    assert "type" in schema, f"no type at {path}"
    for name, sub in schema.get("properties", {}).items():
        _assert_structural(sub, f"{path}.{name}")
    if "items" in schema:
        _assert_structural(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        _assert_structural(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("crd", smi.CRDS, ids=lambda c: c["metadata"]["name"])
def test_every_version_schema_is_structural(crd):
    for version in crd["spec"]["versions"]:
        _assert_structural(version["schema"]["openAPIV3Schema"], f"{crd['metadata']['name']}/{version['name']}")


def test_object_schema_for_unknown_kind_or_version_is_an_error():
    with pytest.raises(KeyError):
        smi.object_schema("specs.smi-spec.io/v1alpha3", "UDPRoute")  # UDPRoute only exists from v1alpha4
    with pytest.raises(KeyError):
        smi.object_schema("split.smi-spec.io/v1beta1", "TrafficSplit")


# Objects as users wrote them for each version (from the SMI specification examples).
VALID_OBJECTS = [
    {"apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget", "metadata": {"name": "t"},
     "destination": {"kind": "ServiceAccount", "name": "api", "namespace": "default", "port": 8080},
     "specs": [{"kind": "HTTPRouteGroup", "name": "routes", "matches": ["metrics"]}],
     "sources": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "default"}]},
    {"apiVersion": "access.smi-spec.io/v1alpha2", "kind": "TrafficTarget", "metadata": {"name": "t"},
     "spec": {"destination": {"kind": "ServiceAccount", "name": "api", "namespace": "default", "port": 8080},
              "rules": [{"kind": "TCPRoute", "name": "tcp"}],
              "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": "default"}]}},
    {"apiVersion": "specs.smi-spec.io/v1alpha1", "kind": "HTTPRouteGroup", "metadata": {"name": "r"},
     "matches": [{"name": "metrics", "pathRegex": "/metrics", "methods": ["GET"]}]},
    {"apiVersion": "specs.smi-spec.io/v1alpha3", "kind": "HTTPRouteGroup", "metadata": {"name": "r"},
     "spec": {"matches": [{"name": "firefox", "headers": {"user-agent": ".*Firefox.*"}}]}},
    {"apiVersion": "specs.smi-spec.io/v1alpha2", "kind": "TCPRoute", "metadata": {"name": "r"}, "spec": {}},
    {"apiVersion": "split.smi-spec.io/v1alpha1", "kind": "TrafficSplit", "metadata": {"name": "s"},
     "spec": {"service": "web", "backends": [{"service": "v1", "weight": "500m"}, {"service": "v2", "weight": 1}]}},
    {"apiVersion": "split.smi-spec.io/v1alpha3", "kind": "TrafficSplit", "metadata": {"name": "s"},
     "spec": {"service": "web", "backends": [{"service": "v1", "weight": 50}],
              "matches": [{"kind": "HTTPRouteGroup", "name": "ab"}]}},
]


@pytest.mark.parametrize("obj", VALID_OBJECTS, ids=lambda o: o["apiVersion"] + "/" + o["kind"])
def test_spec_examples_validate(obj):
    smi.validate_object(obj)


def _split():
    return smi.render_traffic_split("s", "ns", "web", [{"service": "v1", "weight": 90}, {"service": "v2", "weight": 10}])


@pytest.mark.parametrize("mutate, message", [
    (lambda o: o["spec"].pop("service"), "'service' is a required property"),
    (lambda o: o["spec"]["backends"][0].__setitem__("weight", "ninety"), "is not of type 'integer'"),
    (lambda o: o["spec"]["backends"][0].__setitem__("weight", -1), "less than the minimum"),
    (lambda o: o["spec"].__setitem__("matches", [{"kind": "TCPRoute", "name": "x"}]), "is not one of"),
    (lambda o: o["spec"].__setitem__("servcie", "typo"), "Additional properties are not allowed"),
])
def test_schema_rejects_bad_objects(mutate, message):
    obj = copy.deepcopy(_split())
    mutate(obj)
    with pytest.raises(jsonschema.ValidationError, match=message):
        smi.validate_object(obj)


def test_renderers_produce_valid_newest_version_objects():
    objects = [
        smi.render_http_route_group("r", "ns", [{"name": "api", "path_regex": "/api/.*", "methods": ["get"],
                                                 "headers": {"x-canary": "^yes$"}}]),
        smi.render_port_route("TCPRoute", "t", "ns", [8080]),
        smi.render_port_route("UDPRoute", "u", "ns", []),
        smi.render_traffic_target("tt", "ns", "server", [{"service_account": "client"}],
                                  [{"kind": "HTTPRouteGroup", "name": "r", "matches": ["api"]}]),
        _split(),
    ]
    for obj in objects:
        smi.validate_object(obj)
    assert objects[0]["spec"]["matches"][0]["methods"] == ["GET"]
    assert objects[3]["spec"]["sources"] == [{"kind": "ServiceAccount", "name": "client", "namespace": "ns"}]
    assert {o["apiVersion"] for o in objects} == {smi.SPECS_VERSION, smi.ACCESS_VERSION, smi.SPLIT_VERSION}


def test_crd_manifests_returns_independent_copies():
    first = smi.crd_manifests()
    first[0]["spec"]["group"] = "mutated"
    assert smi.CRDS[0]["spec"]["group"] == smi.ACCESS_GROUP
