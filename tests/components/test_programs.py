"""The root stack and the examples, run as Pulumi programs under mocks (as local mode renders them)."""

import runpy
from pathlib import Path

import pulumi
import pytest

from components.conftest import MOCKS
from components.manifests import validate_against_registered_crds, validate_all
from mesh_components import smi

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config():
    """Set stack config for one program run (project ``lightmesh`` as in the mocks); reset after."""
    values: dict[str, str] = {}

    def set_(key: str, value: str) -> None:
        values[key] = value
        pulumi.runtime.set_config(key, value)

    yield set_
    for key in values:
        pulumi.runtime.config.CONFIG.get().pop(key, None)


def _run(path: Path):
    """Run the program; return (its globals, the records it registered, an Output that waits for it)."""
    start = len(MOCKS.created)
    module = runpy.run_path(str(path), run_name="__main__")
    waits = []
    for value in module.values():
        if isinstance(value, pulumi.Resource):
            waits.append(value.urn)
        if hasattr(value, "children") and isinstance(value.children, dict):
            waits += [c.urn for c in value.children.values()]
        if hasattr(value, "settled"):
            waits.append(value.settled())
    return module, start, pulumi.Output.all(*waits)


def _by_type(records, suffix):
    return [r for r in records if r.custom and r.typ.endswith(suffix)]


def _root_stack_check(start, acl):
    def check(_):
        records = MOCKS.created[start:]
        assert validate_all(records) == (28 if acl else 25)  # mesh 17 + whoami 8 (+ 3 SMI objects)
        deployments = {r.inputs["metadata"]["name"]: r.inputs for r in _by_type(records, "apps/v1:Deployment")}
        assert {n: (d["spec"]["replicas"], d["spec"]["template"]["spec"]["containers"][0]["image"])
                for n, d in deployments.items() if n.startswith("whoami")} == {
            "whoami": (2, "traefik/whoami:v1.6.0"), "whoami-tcp": (2, "traefik/whoamitcp:v0.1.0")}
        for name in ("whoami", "whoami-tcp"):
            pod = deployments[name]["spec"]["template"]["spec"]
            assert pod["serviceAccountName"] == "whoami-server"
        services = {r.inputs["metadata"]["name"]: r.inputs for r in _by_type(records, "core/v1:Service")}
        assert services["whoami"]["metadata"]["annotations"] == {"lightmesh.io/traffic-type": "http",
                                                                 "lightmesh.io/retry-attempts": "2"}
        assert [p["port"] for p in services["whoami"]["spec"]["ports"]] == [80]
        assert services["whoami-tcp"]["metadata"]["annotations"] == {"lightmesh.io/traffic-type": "tcp"}
        assert [p["port"] for p in services["whoami-tcp"]["spec"]["ports"]] == [8080]
        sas = {r.inputs["metadata"]["name"] for r in _by_type(records, "core/v1:ServiceAccount")}
        assert {"whoami-server", "whoami-client"} <= sas
        (pod,) = [r.inputs for r in _by_type(records, "core/v1:Pod")]
        assert pod["spec"]["serviceAccountName"] == "whoami-client"
        assert pod["spec"]["containers"][0]["image"] == "giantswarm/tiny-tools:3.9"
        assert {r.inputs["metadata"]["name"] for r in _by_type(records, "core/v1:Namespace")} == {"lightmesh", "whoami"}
        controller = deployments["lightmesh-controller"]["spec"]["template"]["spec"]["containers"][0]["command"]
        targets = _by_type(records, "TrafficTarget")
        if acl:
            assert "--acl" in controller
            (target,) = targets
            assert target.inputs["spec"]["sources"][0]["name"] == "whoami-client"
            assert target.inputs["spec"]["destination"]["name"] == "whoami-server"
        else:
            assert "--acl" not in controller and not targets
        crds = [r.inputs for r in _by_type(records, "CustomResourceDefinition")]
        assert {c["metadata"]["name"] for c in crds} == {c["metadata"]["name"] for c in smi.CRDS}
        smi_objects = [r.inputs for r in records if r.custom and "smi-spec.io/" in r.typ]
        assert len(smi_objects) == (3 if acl else 0)
        for obj in smi_objects:  # against the schema exactly as this stack installs it
            validate_against_registered_crds(obj, crds)
    return check


@pulumi.runtime.test
def test_root_stack_without_acl(config):
    module, start, settled = _run(REPO / "__main__.py")
    return pulumi.Output.all(settled, module["whoami"].http_service.host_names).apply(
        lambda v: (_root_stack_check(start, acl=False)(v), _hosts(v[1]))[0])


def _hosts(hosts):
    assert hosts == ["whoami.whoami.lightmesh", "whoami.whoami.traefik.mesh", "whoami.whoami.maesh"]


@pulumi.runtime.test
def test_root_stack_with_acl_from_stack_config(config):
    config("lightmesh:acl", "true")
    config("lightmesh:patchCoredns", "false")
    module, start, settled = _run(REPO / "__main__.py")

    def check(v):
        _root_stack_check(start, acl=True)(v)
        assert not _by_type(MOCKS.created[start:], "ClusterDnsPatch")

    return settled.apply(check)


@pulumi.runtime.test
def test_whoami_example():
    module, start, settled = _run(REPO / "examples" / "whoami" / "__main__.py")

    def check(_):
        records = MOCKS.created[start:]
        assert validate_all(records) == 8  # namespace, 2 ServiceAccounts, 2 Deployments, 2 Services, client pod
        assert not _by_type(records, "MeshInstall")

    return settled.apply(check)


@pytest.mark.parametrize("weight", [25, 0])  # 0 rolls back to v1 only; it is not "unset"
@pulumi.runtime.test
def test_canary_example(config, weight):
    config("lightmesh:canaryWeight", str(weight))
    module, start, settled = _run(REPO / "examples" / "canary" / "__main__.py")

    def check(total):
        records = MOCKS.created[start:]
        (split,) = _by_type(records, "TrafficSplit")
        assert [(b["service"], b["weight"]) for b in split.inputs["spec"]["backends"]] == [
            ("web-v1", 100 - weight), ("web-v2", weight)]
        assert total == 100
        validate_all(records)

    return pulumi.Output.all(settled, module["app"].split.total_weight).apply(lambda v: check(v[1]))


@pulumi.runtime.test
def test_acl_example():
    module, start, settled = _run(REPO / "examples" / "acl" / "__main__.py")

    def check(_):
        records = MOCKS.created[start:]
        validate_all(records)
        pods = {r.inputs["metadata"]["name"]: r.inputs["spec"]["serviceAccountName"] for r in _by_type(records, "core/v1:Pod")}
        assert pods == {"whoami-client": "whoami-client", "intruder": "default"}
        assert len(_by_type(records, "TrafficTarget")) == 1
        controller = next(r for r in records if r.name == "lightmesh-controller")
        assert "--acl" in controller.inputs["spec"]["template"]["spec"]["containers"][0]["command"]

    return settled.apply(check)
