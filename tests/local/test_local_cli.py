"""``lightmesh local`` and ``lightmesh demo``: bad input is a one-line usage error (exit 2) before
anything starts — no traceback, no mesh started and torn down."""

import pytest

from conftest import REPO
from lightmesh.cli import main

EXAMPLE = str(REPO / "examples" / "whoami")


@pytest.mark.parametrize("argv, message", [
    (["local", EXAMPLE, "--dns-port", "70000"], "argument --dns-port: 70000 is not a port number (1-65535)"),
    (["local", EXAMPLE, "--dns-port", "dns"], "argument --dns-port: 'dns' is not a port number (1-65535)"),
    (["local", EXAMPLE, "--proxy-workers", "0"], "argument --proxy-workers: must be at least 1, got 0"),
    (["local", EXAMPLE, "--proxy-workers", "257"], "argument --proxy-workers: must be at most 256, got 257"),
    (["local", EXAMPLE, "--interval", "0"], "argument --interval: must be a positive number of seconds, got 0"),
    (["demo", "--dns-port", "0"], "argument --dns-port: 0 is not a port number (1-65535)"),
])
def test_flag_values_are_checked_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"lightmesh {argv[0]}: error: {message}"


def test_paths_are_checked_before_the_mesh_starts(tmp_path, capsys):
    assert main(["local", EXAMPLE, "--endpoints", "/nonexistent-dir/ep.json"]) == 2
    assert capsys.readouterr().err == ("lightmesh local: --endpoints /nonexistent-dir/ep.json: directory "
                                       "/nonexistent-dir does not exist; create it or choose another path\n")
    assert main(["local", EXAMPLE, "--endpoints", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"lightmesh local: --endpoints {tmp_path}: is a directory; give a file name\n"
    assert main(["local", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"lightmesh local: {tmp_path}/nope: no such file or directory\n"
    assert main(["demo", "--chart", "/nonexistent-dir/x.png"]) == 2
    assert capsys.readouterr().err == ("lightmesh demo: --chart /nonexistent-dir/x.png: directory /nonexistent-dir "
                                       "does not exist; create it or choose another path\n")
    assert main(["demo", "--example", "/nonexistent"]) == 2
    assert capsys.readouterr().err == "lightmesh demo: --example /nonexistent: no such directory\n"


def test_nothing_to_mesh_is_said_plainly(tmp_path):
    from lightmesh.local.harness import LocalMesh
    from lightmesh.local.main import manifest_warnings

    mesh = LocalMesh(tmp_path, work_dir=tmp_path / "work")
    assert manifest_warnings(mesh) == [f"warning: no Kubernetes objects found in {tmp_path}: nothing to run "
                                       "(expected YAML manifests or a Pulumi program; a program's yaml/v2 "
                                       "ConfigGroup, Helm v4 Chart or kustomize v2 Directory are expanded by the "
                                       "Kubernetes provider at pulumi up, not here: `lightmesh render` lists them)"]
    mesh.manifests = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}]
    assert manifest_warnings(mesh) == [f"warning: no Services found in {tmp_path}: nothing to mesh"]


def test_a_service_with_no_ready_endpoints_gets_a_note_under_its_lines(tmp_path):
    from types import SimpleNamespace

    from lightmesh.local.harness import LocalMesh, ServiceAccess
    from lightmesh.local.main import access_lines, manifest_warnings

    def access(traffic_type, ready):
        return ServiceAccess("shop", "web", traffic_type, ["web.shop.lightmesh", "web.shop.traefik.mesh"], "127.1.0.9",
                             [{"name": "", "port": 8081, "service_port": 8081, "protocol": "TCP"}],
                             ready_endpoints=ready)

    mesh = SimpleNamespace(acl=False)
    assert access_lines(mesh, access("http", 2)) == [
        "  curl --resolve web.shop.traefik.mesh:8081:127.1.0.9 http://web.shop.traefik.mesh:8081/"]
    assert access_lines(mesh, access("tcp", 0)) == [
        "  echo 'my data' | nc -q 1 127.1.0.9 8081   # web.shop.traefik.mesh:8081",
        "    (no ready endpoints behind shop/web: no running pod is selected or serves its targetPort, so HTTP answers "
        "503 and TCP/UDP connections are closed)"]
    # notes from loading the manifests (an object declared twice) are printed with the others
    local = LocalMesh(tmp_path, work_dir=tmp_path / "work")
    local.manifests = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}}]
    local.manifest_notes = ["Service default/web is declared twice (a.yaml document 1; a.yaml document 2): the later "
                            "one is used, as kubectl apply would leave it"]
    assert manifest_warnings(local) == ["note: Service default/web is declared twice (a.yaml document 1; a.yaml "
                                        "document 2): the later one is used, as kubectl apply would leave it"]


def test_a_split_root_without_pods_of_its_own_gets_no_no_endpoints_note(tmp_path, monkeypatch):
    # a TrafficSplit's root with no selector answers from its backends: "HTTP answers 503" was wrong
    from lightmesh.local import harness
    from lightmesh.local import cluster as local_cluster
    from lightmesh.local.harness import LocalMesh

    mesh = LocalMesh(tmp_path, work_dir=tmp_path / "work")
    root = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "apex", "namespace": "shop"},
            "spec": {"ports": [{"port": 80}]}}
    mesh.manifests = [root]
    mesh.cluster = local_cluster.synthesize([root])
    topology = {"services": [{"namespace": "shop", "name": "apex", "traffic_type": "http",
                              "traffic_split": "shop/apex-split"}]}
    monkeypatch.setattr(harness, "_http_json", lambda url: topology)
    monkeypatch.setattr(mesh, "resolve", lambda host: ["127.1.0.9"])
    [apex] = mesh.services()
    assert apex.ready_endpoints is None and apex.traffic_type == "http"
    topology["services"][0]["traffic_split"] = None
    [apex] = mesh.services()
    assert apex.ready_endpoints == 0  # a plain Service with no pods keeps its note
