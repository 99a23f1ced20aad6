"""End to end on loopback: stand-ins, the real controller (file source), mesh DNS and proxy.

These use the same harness as ``lightmesh demo`` (not its printout) and real sockets only.
"""

import asyncio
import re
import socket
import threading
import time

import pytest
import yaml

from lightmesh.local.cluster import synthesize
from lightmesh.local.demo import check_tcp
from lightmesh.local.harness import LocalMesh, LocalModeError, _http_json
from lightmesh.local.main import describe
from lightmesh.local.traffic import HTTPClient, hostnames, http_burst, tcp_exchange, udp_exchange

import manifests
from proctools import free_dns_port
from conftest import REPO

HOST = "whoami.whoami.traefik.mesh"


def run(coro, timeout=120):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def started(mesh, scenario):
    """Start the mesh, run the scenario, stop everything on this same event loop."""
    async with mesh:
        await scenario()


def write(tmp_path, objects) -> str:
    path = tmp_path / "manifests"
    path.mkdir(exist_ok=True)
    (path / "app.yaml").write_text(yaml.safe_dump_all(objects))
    return str(path)


def service(mesh, name):
    [svc] = [s for s in mesh.services() if s.name == name]
    return svc


@pytest.fixture
def mesh_factory(tmp_path):
    meshes = []

    def make(objects, **kwargs):
        mesh = LocalMesh(write(tmp_path, objects), dns_port=free_dns_port(), work_dir=tmp_path / f"w{len(meshes)}",
                         **kwargs)
        meshes.append(mesh)
        return mesh

    yield make
    for mesh in meshes:  # scenarios stop their mesh themselves; this only catches leaked processes
        mesh.terminate_processes()


def test_http_tcp_udp_and_dns_through_the_mesh(mesh_factory):
    mesh = mesh_factory(manifests.whoami(acl_policy=False))

    async def scenario():
        addresses = mesh.resolve(HOST)
        assert len(addresses) == 1 and addresses[0].startswith("127.1.")
        assert mesh.resolve("whoami.whoami.maesh") == addresses == mesh.resolve("whoami.whoami.lightmesh")
        assert mesh.resolve("nope.whoami.traefik.mesh") == []
        http = await asyncio.to_thread(http_burst, addresses[0], mesh.local_port(80), HOST, 10)
        assert [r.status for r in http] == [200] * 10
        names = [r.hostname for r in http]
        assert len(set(names)) == 2 and all(a != b for a, b in zip(names, names[1:])), names  # round robin
        tcp = service(mesh, "whoami-tcp")
        assert await asyncio.to_thread(tcp_exchange, tcp.address, 8080, b"my data") == b"Received: my data"
        udp = service(mesh, "whoami-udp")
        assert await asyncio.to_thread(udp_exchange, udp.address, 8080, b"hello") == b"Received: hello"
        # the request arrived with the client's own address preserved in X-Forwarded-For
        assert "X-Forwarded-For: 127.0.0.1" in http[0].body.decode()
        # the demo's TCP check records its latencies for the chart (issue 8: per service, TCP too)
        samples = {}
        assert (await check_tcp(mesh, samples)).passed
        assert len(samples["whoami-tcp (TCP connect + echo)"]) == 50

    run(started(mesh, scenario))


def test_replica_crash_is_absorbed_by_retries(mesh_factory):
    mesh = mesh_factory(manifests.whoami(acl_policy=False))

    async def scenario():
        svc = service(mesh, "whoami")
        results = []

        def traffic():
            with HTTPClient(svc.address, mesh.local_port(80), HOST) as client:
                for _ in range(150):
                    results.append(client.get("/"))

        task = asyncio.create_task(asyncio.to_thread(traffic))
        while len(results) < 30 and not task.done():
            await asyncio.sleep(0.005)
        victim = sorted(p for p in mesh.standins if p.startswith("whoami/whoami-") and "tcp" not in p
                        and "udp" not in p)[0]
        await mesh.kill_pod(*victim.split("/"))
        await task
        assert [r.error for r in results if r.status != 200] == []
        assert len(results) == 150
        assert victim.split("/")[1] not in hostnames(results[-30:])

    run(started(mesh, scenario))


def test_acl_mode_identity_is_the_source_address(mesh_factory):
    mesh = mesh_factory(manifests.whoami(acl_policy=True), acl=True)

    async def scenario():
        svc = service(mesh, "whoami")
        client_ip = mesh.cluster.pods_of("whoami", "whoami-client")[0]["status"]["podIP"]
        server_ip = mesh.cluster.pods_of("whoami", "whoami-server")[0]["status"]["podIP"]
        with HTTPClient(svc.address, mesh.local_port(80), HOST, source=client_ip) as c:
            assert (await asyncio.to_thread(c.get, "/")).status == 200
        with HTTPClient(svc.address, mesh.local_port(80), HOST, source=server_ip) as c:
            assert (await asyncio.to_thread(c.get, "/")).status == 403
        # a spoofed header changes nothing
        with HTTPClient(svc.address, mesh.local_port(80), HOST, source=client_ip) as c:
            assert (await asyncio.to_thread(c.get, "/", {"X-Forwarded-For": client_ip})).status == 200
        with HTTPClient(svc.address, mesh.local_port(80), HOST, source=server_ip) as c:
            assert (await asyncio.to_thread(c.get, "/", {"X-Forwarded-For": client_ip})).status == 403
        tcp = service(mesh, "whoami-tcp")
        assert await asyncio.to_thread(tcp_exchange, tcp.address, 8080, b"hi", client_ip) == b"Received: hi"
        assert await asyncio.to_thread(tcp_exchange, tcp.address, 8080, b"hi", server_ip) == b""  # closed at once

    run(started(mesh, scenario))


@pytest.mark.parametrize("acl", [True, False])
def test_readiness_is_not_counted_as_client_traffic(mesh_factory, acl):
    # The harness used to open a connection to every TCP route to see it listen: before any client,
    # ACL mode showed acl_denied_total{service="whoami/whoami-tcp:8080",protocol="tcp"} 1, and without
    # ACL l4_connections_total 1. It now reads the listeners the proxy's workers report.
    import urllib.request

    from lightmesh import telemetry

    mesh = mesh_factory(manifests.whoami(acl_policy=True), acl=acl)

    def l4_and_denied() -> dict:
        with urllib.request.urlopen(mesh.admin_url + "/metrics", timeout=5) as resp:
            scrape = telemetry.parse(resp.read().decode())
        return {name: sum(scrape.get(f"lightmesh_proxy_{name}").values())
                for name in ("acl_denied_total", "l4_connections_total", "requests_total")}

    async def scenario():
        tcp = service(mesh, "whoami-tcp")
        assert tcp.address and tcp.traffic_type == "tcp"
        assert await asyncio.to_thread(l4_and_denied) == {"acl_denied_total": 0, "l4_connections_total": 0,
                                                         "requests_total": 0}
        # a change waits for the new config's listeners the same way
        await mesh.apply([manifests._service("whoami-tcp2", {"app": "whoami-tcp"}, 8082,
                                             {"mesh.traefik.io/traffic-type": "tcp"})])
        assert service(mesh, "whoami-tcp2").address
        assert await asyncio.to_thread(l4_and_denied) == {"acl_denied_total": 0, "l4_connections_total": 0,
                                                         "requests_total": 0}
        # ... and the listeners do answer once the harness says ready
        client_ip = mesh.cluster.pods_of("whoami", "whoami-client")[0]["status"]["podIP"]
        assert await asyncio.to_thread(tcp_exchange, tcp.address, 8080, b"hi", client_ip) == b"Received: hi"
        assert (await asyncio.to_thread(l4_and_denied))["l4_connections_total"] == 1

    run(started(mesh, scenario))


def test_config_change_while_traffic_flows_and_bad_annotation_is_isolated(mesh_factory):
    mesh = mesh_factory(manifests.whoami(acl_policy=False))

    async def scenario():
        svc = service(mesh, "whoami")
        results, stop = [], threading.Event()

        def traffic():
            deadline = time.monotonic() + 60
            with HTTPClient(svc.address, mesh.local_port(80), HOST) as client:
                while not stop.is_set() and time.monotonic() < deadline and len(results) < 20000:
                    results.append(client.get("/"))

        task = asyncio.create_task(asyncio.to_thread(traffic))
        await mesh.apply([
            manifests.extra_service("limited", {"lightmesh.io/ratelimit-average": "5",
                                                "lightmesh.io/ratelimit-burst": "10"}),
            manifests.extra_service("broken", {"lightmesh.io/retry-attempts": "many"}),
        ])
        stop.set()
        await task
        assert len(results) > 10
        assert [r.error for r in results if r.status != 200] == []  # zero failed requests during the change
        limited = service(mesh, "limited")
        burst = await asyncio.to_thread(http_burst, limited.address, mesh.local_port(80),
                                        "limited.whoami.traefik.mesh", 25)
        statuses = [r.status for r in burst]
        assert statuses.count(429) > 0 and statuses.count(200) >= 10
        assert all("retry-after" in r.headers for r in burst if r.status == 429)
        # the malformed annotation leaves that one Service out and reports it; the rest is served
        broken = service(mesh, "broken")
        assert broken.excluded == "annotation lightmesh.io/retry-attempts='many': must be a whole number"
        assert broken.traffic_type is None and broken.address is None
        answered = []
        for ip in mesh.resolve("broken.whoami.traefik.mesh"):  # a kept shadow address must not serve it either
            answered += await asyncio.to_thread(http_burst, ip, mesh.local_port(80), "broken.whoami.traefik.mesh", 1)
        assert [r for r in answered if r.status == 200] == []
        topology = _http_json(mesh.api_url + "/api/topology/current")
        assert "retry-attempts" in str(topology) and "many" in str(topology)
        again = await asyncio.to_thread(http_burst, svc.address, mesh.local_port(80), HOST, 5)
        assert [r.status for r in again] == [200] * 5

    run(started(mesh, scenario))


def test_controller_restart_keeps_ports_and_traffic(mesh_factory):
    mesh = mesh_factory(manifests.whoami(acl_policy=False))

    async def scenario():
        before = {s.name: s.address for s in mesh.services()}
        await mesh.restart_controller()
        after = {s.name: s.address for s in mesh.services()}
        assert before == after and all(after.values())
        tcp = service(mesh, "whoami-tcp")
        assert await asyncio.to_thread(tcp_exchange, tcp.address, 8080, b"again") == b"Received: again"
        results = await asyncio.to_thread(http_burst, after["whoami"], mesh.local_port(80), HOST, 4)
        assert [r.status for r in results] == [200] * 4

    run(started(mesh, scenario))


def test_gateway_api_http_route_steers_traffic_by_header_and_path(mesh_factory):
    mesh = mesh_factory(manifests.gateway_canary())

    async def scenario():
        svc = service(mesh, "whoami")

        def traffic():
            with HTTPClient(svc.address, mesh.local_port(80), HOST) as client:
                plain = [client.get("/") for _ in range(6)]
                canary = [client.get("/", headers={"X-Canary": "1"}) for _ in range(6)]
                by_path = [client.get("/v2/page") for _ in range(3)]
                sibling = [client.get("/v2x") for _ in range(3)]  # not under /v2: a path-element prefix
            return plain, canary, by_path, sibling

        plain, canary, by_path, sibling = await asyncio.to_thread(traffic)
        for results in (plain, canary, by_path, sibling):
            assert [r.status for r in results] == [200] * len(results)
        assert all(h.startswith("whoami-v2-") for h in hostnames(canary + by_path)), hostnames(canary + by_path)
        assert all(b"X-Route: canary" in r.body for r in canary)  # the rule's RequestHeaderModifier
        assert not any(b"X-Route" in r.body for r in plain)
        assert not any(h.startswith("whoami-v2-") for h in hostnames(plain + sibling)), hostnames(plain + sibling)
        topology = _http_json(mesh.api_url + "/api/topology/current")
        assert "whoami/whoami-canary" in str(topology) and "HTTPRoute" not in str(topology.get("errors", ""))

    run(started(mesh, scenario))


def test_traffic_split_80_20_over_1000_requests_on_high_ports(mesh_factory):
    """The split within ±5 points, with every port below 1024 moved up (what a user who may not bind
    port 80 gets): Service, pod and split backend ports stay consistent."""
    mesh = mesh_factory(manifests.canary_split(80, 20), high_ports=True)

    async def scenario():
        assert mesh.cluster.remapped == {80: 8080} and mesh.local_port(80) == 8080
        canary = service(mesh, "whoami-canary")
        assert canary.ports == [{"name": "main", "port": 8080, "service_port": 80, "protocol": "TCP"}]
        assert {st.port for sts in mesh.standins.values() for st in sts if st.kind == "http"} == {8080}
        results = await asyncio.to_thread(http_burst, canary.address, 8080, "whoami-canary.whoami.traefik.mesh",
                                          1000, max_seconds=60)
        assert len(results) == 1000 and [r for r in results if r.status != 200] == []
        v2 = sum(1 for r in results if (r.hostname or "").startswith("whoami-v2-"))
        assert abs(100.0 * v2 / len(results) - 20.0) <= 5.0, f"{v2} of 1000 went to v2"

    run(started(mesh, scenario))


def test_printout_says_why_a_service_is_out_and_digs_the_first_meshed_one(mesh_factory):
    mesh = mesh_factory([
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lightmesh-controller", "namespace": "lightmesh"},
         "spec": {"selector": {"app": "controller"}, "ports": [{"port": 9000}]}},
        manifests._service("aaa-badtype", {"app": "web"}, 80, {"lightmesh.io/traffic-type": "quic"}),
        manifests._deployment("web", "traefik/whoami:v1.6.0", 1, "web", {"app": "web"}, 80),
        manifests._service("web", {"app": "web"}, 80),
    ])

    async def scenario():
        text = describe(mesh)
        assert f"dig @127.0.0.1 -p {mesh.dns_port} web.whoami.traefik.mesh +short" in text
        assert "lightmesh/lightmesh-controller: not in the mesh (mesh namespace, ignored)" in text
        reason = "annotation lightmesh.io/traffic-type='quic': must be one of http, tcp, udp"
        assert f"whoami/aaa-badtype: not in the mesh ({reason})" in text
        web = service(mesh, "web")
        port = mesh.local_port(80)
        assert f"curl --resolve web.whoami.traefik.mesh:{port}:{web.address} http://web.whoami.traefik.mesh" in text
        [bad] = [s for s in mesh.endpoints()["services"] if s["name"] == "aaa-badtype"]
        assert bad["traffic_type"] is None and bad["excluded"] == reason and bad["address"] is None

    run(started(mesh, scenario))


def test_a_pod_address_already_held_is_a_one_line_error(mesh_factory):
    objects = [manifests._deployment("web", "traefik/whoami:v1.6.0", 1, "web", {"app": "web"}, 8081),
               manifests._service("web", {"app": "web"}, 8081)]
    mesh = mesh_factory(objects)
    pod_ip = synthesize(objects).pods[0]["status"]["podIP"]
    with socket.socket() as holder:  # what a second `lightmesh local` (or any server) does
        holder.bind((pod_ip, 8081))
        holder.listen()
        with pytest.raises(LocalModeError) as failure:
            run(started(mesh, lambda: asyncio.sleep(0)))
    message = str(failure.value)
    assert "\n" not in message
    assert re.fullmatch(rf"pod whoami/web-\S+: cannot serve {re.escape(pod_ip)}:8081/tcp: address already in use; "
                        r"another 'lightmesh local' or another program holds it: stop it first", message), message


def test_dashboard_recording_includes_an_acl_denied_caller(tmp_path, monkeypatch):
    """``python -m lightmesh.local.dashboard`` (the README picture) shows every panel's series,
    the ACL-denied one included."""
    from lightmesh.local import dashboard

    captured = {}
    monkeypatch.setattr(dashboard, "render", lambda proxy, controller, out: captured.update(proxy=proxy) or out)
    run(dashboard.record(REPO / "examples" / "whoami", tmp_path / "board.png", 1.0, free_dns_port()))
    data = dashboard.panel_data(captured["proxy"], [])
    denied = data["Rate-limited and ACL-denied"]
    assert any(legend.endswith(" denied") and max(values) > 0 for legend, (_, values) in denied.items()), denied
    connections = data["TCP/UDP connections/s"]
    assert max(connections["whoami/whoami-tcp:8080 tcp"][1]) > 0, connections
    relayed = data["TCP/UDP bytes/s by direction"]
    assert max(relayed["whoami/whoami-tcp:8080 downstream"][1]) > 0, relayed
