"""Why ``lightmesh local`` says a Service is not in the mesh: the controller's own object errors for it
(field and message, as ``/api/topology/current`` reports them), in the printout and the ``--endpoints``
JSON; the vague "the mesh DNS has no address for it" only when the controller says nothing."""

from __future__ import annotations

import json

from lightmesh.controller.build import build
from lightmesh.controller.model import ClusterState, Settings
from lightmesh.local import cluster as local_cluster
from lightmesh.local import harness
from lightmesh.local.harness import LocalMesh
from lightmesh.local.main import access_lines, describe

LONG = "n" * 64  # longer than a DNS label: the controller leaves it out of its topology with an error


def service(name, ports, annotations=None):
    meta = {"name": name, "namespace": "a", **({"annotations": annotations} if annotations else {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": {"ports": ports}}


MANIFESTS = [
    service("udp53", [{"port": 53, "protocol": "TCP"}], {"lightmesh.io/traffic-type": "udp"}),  # no UDP port
    service("bigport", [{"port": 99999}]),  # no valid port
    service(LONG, [{"port": 80}]),
    service("ok", [{"port": 8081}]),
]


def local_mesh(tmp_path, monkeypatch, manifests=MANIFESTS, topology=None):
    """A LocalMesh over ``manifests`` whose controller answers with the real controller's topology
    for them (built in process), and whose mesh DNS knows only the Services given a shadow."""
    mesh = LocalMesh(tmp_path, work_dir=tmp_path / "work")
    mesh.manifests = manifests
    mesh.cluster = local_cluster.synthesize(manifests)
    if topology is None:
        topology = build(ClusterState.from_objects(mesh.cluster.objects), Settings(), 1).topology_json()
    shadowed = {f"{s['name']}.{s['namespace']}.traefik.mesh" for s in topology["services"] if s["shadow_service"]}
    monkeypatch.setattr(harness, "_http_json", lambda url: topology)
    monkeypatch.setattr(mesh, "resolve", lambda host, qtype="A": ["127.1.0.9"] if host in shadowed else [])
    return mesh, topology


def test_a_service_kept_with_no_meshed_port_or_left_out_gets_the_controllers_reason(tmp_path, monkeypatch):
    mesh, topology = local_mesh(tmp_path, monkeypatch)
    services = {s.name: s for s in mesh.services()}
    udp = "metadata.annotations[lightmesh.io/traffic-type]: traffic type udp needs a UDP port and the Service " \
          "has none; it is not meshed"
    big = "spec.ports[0]: port 99999/'TCP' is not a valid port; that port is not meshed"
    long = "metadata.name: a Service name has at most 63 characters (a DNS label, as the API server requires); " \
           "not meshed"
    # the controller kept the first two in its topology (with their traffic type) and meshed no port of them
    assert (services["udp53"].traffic_type, services["udp53"].excluded, services["udp53"].address) == ("udp", udp, None)
    assert (services["bigport"].traffic_type, services["bigport"].excluded) == ("http", big)
    assert (services[LONG].traffic_type, services[LONG].excluded) == (None, long)
    assert (services["ok"].traffic_type, services["ok"].excluded, services["ok"].errors) == ("http", None, [])
    assert services["udp53"].errors == [{"field": "metadata.annotations[lightmesh.io/traffic-type]",
                                         "message": "traffic type udp needs a UDP port and the Service has none; it "
                                                    "is not meshed"}]

    mesh.acl = False
    assert access_lines(mesh, services["udp53"]) == [f"  a/udp53: not in the mesh ({udp})"]
    assert access_lines(mesh, services["bigport"]) == [f"  a/bigport: not in the mesh ({big})"]
    assert access_lines(mesh, services[LONG]) == [f"  a/{LONG}: not in the mesh ({long})"]
    text = describe(mesh, list(services.values()))
    assert "the mesh DNS has no address for it" not in text
    assert "  curl --resolve ok.a.traefik.mesh:8081:127.1.0.9 http://ok.a.traefik.mesh:8081/" in text

    # --endpoints: the same keys as before, the reason in "excluded", the errors as they are
    written = json.loads(json.dumps(mesh.endpoints(list(services.values()))))
    by_name = {s["name"]: s for s in written["services"]}
    assert set(by_name["ok"]) == {"namespace", "name", "traffic_type", "mesh_names", "address", "ports", "excluded",
                                  "allowed_sources", "ready_endpoints", "errors"}
    assert (by_name["udp53"]["excluded"], by_name["udp53"]["address"]) == (udp, None)
    assert by_name["bigport"]["errors"] == [{"field": "spec.ports[0]",
                                             "message": "port 99999/'TCP' is not a valid port; that port is not meshed"}]
    assert (by_name["ok"]["excluded"], by_name["ok"]["errors"]) == (None, [])


def test_without_an_error_from_the_controller_the_old_words_remain(tmp_path, monkeypatch):
    manifests = [service("udp53", [{"port": 53, "protocol": "TCP"}], {"lightmesh.io/traffic-type": "udp"})]
    topology = build(ClusterState.from_objects(local_cluster.synthesize(manifests).objects), Settings(), 1
                     ).topology_json()
    topology["errors"] = []
    mesh, _ = local_mesh(tmp_path, monkeypatch, manifests, topology)
    [svc] = mesh.services()
    mesh.acl = False
    assert (svc.excluded, svc.errors) == (None, [])
    assert access_lines(mesh, svc) == ["  a/udp53: not in the mesh (the mesh DNS has no address for it)"]
    topology["services"] = []
    [svc] = mesh.services()
    assert svc.excluded == "not in the controller's topology"
