"""``lightmesh local`` runs its controller as the program's MeshInstall sets it up: domains, default
traffic type, mesh namespace (ignored, as the real controller ignores it) — not with built-in defaults."""

from __future__ import annotations

import json
import signal
import socket
import sys

import pytest
from dnslib import DNSRecord

from conftest import REPO
from localproc import started, still_running, stop_all

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

PROGRAM = REPO / "tests" / "local" / "programs" / "settings"


def resolve(name: str, port: int) -> list[str]:
    reply = DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", port, timeout=2))
    return [str(rr.rdata) for rr in reply.rr]


def test_local_mode_takes_the_mesh_settings_of_the_programs_mesh_install(tmp_path):
    endpoints = tmp_path / "mesh.json"
    proc, children, printed = started(PROGRAM, "--endpoints", str(endpoints))
    try:
        data = json.loads(endpoints.read_text())
        services = {f"{s['namespace']}/{s['name']}": s for s in data["services"]}
        echo = services["shop/echo"]
        assert (echo["traffic_type"], echo["mesh_names"], echo["excluded"]) == ("tcp", ["echo.shop.corp.mesh"], None)
        assert services["meshsys/stray"]["excluded"] == "mesh namespace, ignored"
        assert ("Mesh settings of Deployment meshsys/lightmesh-controller (MeshInstall): domains corp.mesh; default "
                "traffic type tcp; mesh namespace meshsys (ignored, as in a cluster).") in printed
        assert f"echo 'my data' | nc -q 1 {echo['address']} 8080   # echo.shop.corp.mesh:8080" in printed
        assert "meshsys/stray: not in the mesh (mesh namespace, ignored)" in printed
        dns = data["dns"]["port"]
        assert resolve("echo.shop.corp.mesh", dns) == [echo["address"]]
        assert resolve("echo.shop.traefik.mesh", dns) == []  # not a domain of this mesh
        with socket.create_connection((echo["address"], 8080), timeout=5) as conn:  # TCP, not HTTP
            conn.sendall(b"my data")
            assert conn.recv(100) == b"Received: my data"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert still_running(children, timeout=5) == []
    finally:
        stop_all(proc, children)


def controller_deployment(container: dict) -> dict:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ctl", "namespace": "mesh"},
            "spec": {"template": {"spec": {"containers": [{"name": "c", **container}]}}}}


def test_the_controller_is_read_with_its_own_flags():
    from lightmesh.local.harness import LocalModeError, declared_acl, declared_controller

    by_hand = controller_deployment({"image": "registry/lightmesh:1", "args": [
        "controller", "--namespace=mesh", "--acl", "--default-mode", "udp", "--domains", "a.mesh,b.mesh",
        "--ignore-namespaces", "legacy", "--leader-election", "--otlp-endpoint", "http://otel:4318"]})
    declared = declared_controller([by_hand])
    assert (declared.where, declared.acl, declared.namespace, declared.default_mode, declared.domains,
            declared.ignore_namespaces) == ("Deployment mesh/ctl", True, "mesh", "udp", ("a.mesh", "b.mesh"),
                                            ("legacy",))
    assert declared.args[:8] == ("--namespace", "mesh", "--default-mode", "udp", "--domains", "a.mesh,b.mesh",
                                 "--ignore-namespaces", "legacy")
    assert "--otlp-endpoint" not in declared.args and "--leader-election" not in declared.args
    assert declared_acl([by_hand]) == "Deployment mesh/ctl runs the controller with --acl"
    # another program's "controller" is not the mesh's
    other = controller_deployment({"image": "example/app:1", "command": ["app", "controller", "--acl"]})
    assert declared_controller([other]) is None and declared_acl([other]) is None
    unreadable = controller_deployment({"command": ["lightmesh", "controller", "--default-mode", "grpc"]})
    with pytest.raises(LocalModeError, match=r"^Deployment mesh/ctl runs the controller with flags local mode cannot "
                                             r"read \(argument --default-mode: invalid choice: 'grpc'"):
        declared_controller([unreadable])


def test_a_program_for_several_clusters_runs_its_first_cluster_only(tmp_path):
    # render writes each other cluster into a subdirectory; local mode read those too, merged the
    # clusters, and the later one's Service shop/api (port 81) replaced the first's (port 80).
    endpoints = tmp_path / "mesh.json"
    proc, children, printed = started(REPO / "tests" / "local" / "programs" / "clusters", "--endpoints", str(endpoints))
    try:
        data = json.loads(endpoints.read_text())
        [api] = [s for s in data["services"] if (s["namespace"], s["name"]) == ("shop", "api")]
        assert "declared twice" not in printed and "api-1" not in printed
        assert [p["port"] for p in api["ports"]] == [80], api
    finally:
        stop_all(proc, children)
