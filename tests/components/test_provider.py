"""Multi-language use: the inferred package schema and the cross-language construct path."""

import json
import os
from pathlib import Path

import pulumi
import pytest
import yaml
from pulumi.provider.experimental.component import ComponentInitError, ComponentProvider

from components.conftest import MOCKS
from mesh_components import COMPONENTS, PACKAGE, VERSION

SNAPSHOT = Path(__file__).parent / "schema_snapshot.json"
REPO = Path(__file__).resolve().parents[2]


def _provider() -> ComponentProvider:
    return ComponentProvider(COMPONENTS, name=PACKAGE, version=VERSION)


def _key_fields(schema: dict) -> dict:
    """The public contract: per resource its inputs, required inputs and outputs; enum values."""
    return {
        "name": schema["name"],
        "resources": {token: {"inputs": sorted(r["inputProperties"]), "required": sorted(r.get("requiredInputs", [])),
                              "outputs": sorted(r["properties"])}
                      for token, r in sorted(schema["resources"].items())},
        "types": {token: sorted(e["value"] for e in t["enum"]) if "enum" in t else sorted(t.get("properties", {}))
                  for token, t in sorted(schema["types"].items())},
    }


def test_schema_has_all_four_components_with_their_contract():
    schema = json.loads(_provider().schema)
    assert set(schema["resources"]) == {f"lightmesh:index:{c}" for c in
                                        ("MeshInstall", "MeshService", "AccessPolicy", "TrafficSplit")}
    service = schema["resources"]["lightmesh:index:MeshService"]
    assert service["inputProperties"]["retryAttempts"]["description"].startswith("Tries in all (1–100)")
    assert service["inputProperties"]["trafficType"]["$ref"] == "#/types/lightmesh:index:TrafficType"
    assert service["properties"]["hostNames"]["type"] == "array"
    install = schema["resources"]["lightmesh:index:MeshInstall"]
    assert install.get("requiredInputs", []) == []  # defaults install a working mesh
    assert {"namespace", "domains", "dnsServiceIp", "controllerApiUrl"} == set(install["properties"])
    fields = _key_fields(schema)
    if os.environ.get("UPDATE_GOLDENS"):
        SNAPSHOT.write_text(json.dumps(fields, indent=2, sort_keys=True) + "\n")
    assert fields == json.loads(SNAPSHOT.read_text()), "public schema changed: review, then UPDATE_GOLDENS=1"


def test_plugin_metadata_matches_the_package():
    plugin = yaml.safe_load((REPO / "plugin" / "PulumiPlugin.yaml").read_text())
    assert plugin["name"] == PACKAGE and plugin["version"] == VERSION and plugin["runtime"]["name"] == "python"
    bench = yaml.safe_load((REPO / "plugin" / "example" / "Pulumi.yaml").read_text())
    schema = json.loads(_provider().schema)
    for resource in bench["resources"].values():  # the YAML bench only uses properties that exist
        token = "lightmesh:index:" + resource["type"].split(":")[1]
        assert set(resource["properties"]) <= set(schema["resources"][token]["inputProperties"]), token


@pulumi.runtime.test
def test_construct_maps_camel_case_floats_and_enum_values():
    provider = _provider()
    split = provider.construct("ctor-split", "lightmesh:index:TrafficSplit",
                               {"namespace": "shop", "service": "web",
                                "backends": [{"service": "web-v1", "weight": 60.0}, {"service": "web-v2", "weight": 40.0}]},
                               pulumi.ResourceOptions())
    service = provider.construct("ctor-svc", "lightmesh:index:MeshService",
                                 {"serviceName": "whoami", "namespace": "whoami", "trafficType": "http",
                                  "retryAttempts": 3.0, "domains": ["traefik.mesh"]}, pulumi.ResourceOptions())

    def check(values):
        total, hosts, annotations, _split_name = values
        assert total == 100
        assert hosts == ["whoami.whoami.traefik.mesh"]
        assert annotations == {"lightmesh.io/traffic-type": "http", "lightmesh.io/retry-attempts": "3"}
        record = next(r for r in MOCKS.created if r.name == "ctor-split-trafficsplit")
        assert [b["weight"] for b in record.inputs["spec"]["backends"]] == [60, 40]

    # trafficSplitName comes from the child TrafficSplit: waiting on it means the child is registered
    return pulumi.Output.all(split.state["totalWeight"], service.state["hostNames"],
                             service.state["annotations"], split.state["trafficSplitName"]).apply(check)


def test_construct_reports_bad_args_with_the_field_name():
    with pytest.raises(ComponentInitError, match="TrafficSplit 'ctor-bad': backends weights sum to 0"):
        _provider().construct("ctor-bad", "lightmesh:index:TrafficSplit",
                              {"namespace": "n", "service": "web", "backends": [{"service": "a", "weight": 0.0}]},
                              pulumi.ResourceOptions())


def test_type_tokens_are_the_package_tokens():
    for component in COMPONENTS:
        provider = _provider()
        provider.validate_resource_type(PACKAGE, f"{PACKAGE}:index:{component.__name__}")
    # analyzer trap: postponed (string) annotations break schema inference in any component module
    for module in (REPO / "mesh_components").glob("*.py"):
        assert "from __future__ import annotations" not in module.read_text(), module.name


def test_the_enums_of_the_typed_args_are_importable_from_the_package():
    from mesh_components import DnsStyle, LogFormat, LogLevel, MeshInstallArgs, MeshServiceArgs, Scheme, TrafficType

    typed = {name: hint.__args__[0] for args in (MeshInstallArgs, MeshServiceArgs)
             for name, hint in args.__annotations__.items() if hasattr(hint, "__args__")}
    assert (typed["traffic_type"], typed["scheme"], typed["log_level"], typed["log_format"], typed["dns_style"]) == (
        TrafficType, Scheme, LogLevel, LogFormat, DnsStyle)
