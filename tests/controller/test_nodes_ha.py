"""``/api/status/nodes`` across controller replicas, as real processes on loopback.

A proxy long-polls one replica (through the Service), so each replica saw only the reports of the
proxies that poll it: through the Service about half of the healthy proxies showed ``applied_version:
null, up_to_date: false``. The replica answering now asks its peers (the controller pods of the mesh
namespace) for ``?scope=local`` and merges, the report seen last winning.

In local mode the manifests are the cluster: controller pods with ``status.podIP`` 127.0.98.x, each
controller's API bound to its own 127.0.98.x address, all on one port (as replicas of one Deployment).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from lightmesh import wire
from lightmesh.controller.api import PEER_TIMEOUT_SECONDS, ConfigStore, ControllerAPI
from lightmesh.controller.sources import ObjectFilter, classify
from tests.conftest import lightmesh_cmd, lightmesh_env

MESH = wire.DEFAULT_MESH_NAMESPACE


def controller_pod(name: str, ip: str, ready: bool = True, labels: dict | None = None, namespace: str = MESH) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {**wire.CONTROLLER_POD_LABELS, "pod-template-hash": "6f9c"} if labels is None
                         else labels},
            "spec": {"nodeName": f"node-{name}", "containers": [{"name": "controller", "image": "x"}]},
            "status": {"podIP": ip, "phase": "Running",
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def proxy_pod(name: str, ip: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": MESH, "labels": dict(wire.PROXY_POD_LABELS)},
            "spec": {"nodeName": f"node-{name}", "containers": [{"name": "proxy", "image": "x"}]},
            "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def free_port(*addresses: str, udp: bool = False) -> int:
    """A port free on every one of ``addresses`` (TCP, and UDP too with ``udp``)."""
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        sockets = []
        try:
            for address in addresses:
                for kind in kinds:
                    s = socket.socket(socket.AF_INET, kind)
                    sockets.append(s)
                    s.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no port free on {addresses}")


class Replica:
    """``lightmesh controller --manifests DIR`` as pod ``name``, its API on ``address:port``."""

    def __init__(self, tmp_path: Path, name: str, address: str, port: int, objects: list[dict]) -> None:
        self.name, self.address, self.port = name, address, port
        self.directory = tmp_path / name
        self.directory.mkdir()
        (self.directory / "cluster.yaml").write_text(yaml.safe_dump_all(objects))
        self.log = tmp_path / f"{name}.log"
        self.dns_port = free_port(address, udp=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Replica:
        args = lightmesh_cmd("controller", "--manifests", str(self.directory), "--namespace", MESH,
                             "--api-address", self.address, "--api-port", str(self.port),
                             "--dns-address", self.address, "--dns-port", str(self.dns_port), "--log-level", "debug")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                         env=lightmesh_env({wire.ENV_POD_NAME: self.name}))
        return self

    def wait_ready(self, timeout: float = 30.0) -> Replica:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url(wire.READINESS_PATH), timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready:\n{self.log.read_text()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def url(self, path: str) -> str:
        return f"http://{self.address}:{self.port}{path}"

    def config(self) -> dict:
        with urllib.request.urlopen(self.url(wire.CONFIG_PATH + "?wait=0"), timeout=5) as resp:
            return json.loads(resp.read())

    def nodes(self, query: str = "") -> dict[str, dict]:
        with urllib.request.urlopen(self.url(wire.NODES_PATH + query), timeout=10) as resp:
            assert resp.status == 200
            return {n["name"]: n for n in json.loads(resp.read())}

    def poll_as(self, proxy: str, config: dict) -> None:
        """A fake proxy's long poll (answered at once): it holds and applied ``config``."""
        request = urllib.request.Request(self.url(wire.CONFIG_PATH + "?wait=0"), headers={
            wire.HEADER_PROXY_NAME: proxy, wire.HEADER_APPLIED_VERSION: str(config["version"]),
            wire.HEADER_APPLIED_HASH: config["hash"], "If-None-Match": f'"{config["hash"]}"'})
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert status in (200, 304), status


def start_all(*replicas: Replica) -> None:
    for r in replicas:
        r.start()
    for r in replicas:
        r.wait_ready()


def test_each_replica_shows_the_proxies_that_poll_its_peer_up_to_date(tmp_path):
    a_ip, b_ip = "127.0.98.1", "127.0.98.2"
    port = free_port(a_ip, b_ip)
    objects = [controller_pod("ctl-a", a_ip), controller_pod("ctl-b", b_ip),
               proxy_pod("proxy-a", "127.0.98.11"), proxy_pod("proxy-b", "127.0.98.12")]
    a = Replica(tmp_path, "ctl-a", a_ip, port, objects)
    b = Replica(tmp_path, "ctl-b", b_ip, port, objects)
    try:
        start_all(a, b)
        config_a, config_b = a.config(), b.config()
        assert config_a["hash"] == config_b["hash"]  # every replica serves the same config
        # proxy-a polled ctl-b first, then moved to ctl-a (its connection went elsewhere)
        b.poll_as("proxy-a", config_b)
        time.sleep(0.05)
        a.poll_as("proxy-a", config_a)
        b.poll_as("proxy-b", config_b)
        for replica in (a, b):
            nodes = replica.nodes()
            assert set(nodes) == {"proxy-a", "proxy-b"}, (replica.name, nodes)
            assert {name: node["up_to_date"] for name, node in nodes.items()} == \
                {"proxy-a": True, "proxy-b": True}, (replica.name, nodes)
            for proxy, polled, config in (("proxy-a", "ctl-a", config_a), ("proxy-b", "ctl-b", config_b)):
                node = nodes[proxy]
                assert node["up_to_date"] is True, (replica.name, node)
                assert node["applied_version"] == config["version"] and node["applied_hash"] == config["hash"]
                assert node.get("reported_to") == polled, (replica.name, node)  # the report seen last
                assert node["ready"] is True and node["node"] == f"node-{proxy}"  # the pod's fields as before
                assert isinstance(node["last_seen"], float)
        # ?scope=local: this replica's reports only (what the peers ask each other for)
        local = a.nodes("?scope=local")
        assert local["proxy-a"]["up_to_date"] is True and local["proxy-a"]["reported_to"] == "ctl-a"
        assert local["proxy-b"]["applied_version"] is None and local["proxy-b"]["up_to_date"] is False
        assert local["proxy-b"]["reported_to"] is None
        with urllib.request.urlopen(a.url(wire.NODES_PATH + "?scope=all"), timeout=10) as resp:
            assert {n["name"]: n for n in json.loads(resp.read())}["proxy-b"]["up_to_date"] is True
        try:
            urllib.request.urlopen(a.url(wire.NODES_PATH + "?scope=cluster"), timeout=10)
            raise AssertionError("an unknown scope was accepted")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400
    finally:
        a.stop()
        b.stop()


def test_a_dead_or_silent_peer_is_skipped_within_the_timeout_and_named_in_the_log(tmp_path):
    own, dead, silent = "127.0.98.3", "127.0.98.4", "127.0.98.5"
    port = free_port(own, dead, silent)
    hung = socket.socket()  # accepts connections (the kernel's backlog) and never answers
    hung.bind((silent, port))
    hung.listen(16)
    objects = [controller_pod("ctl-c", own), controller_pod("ctl-dead", dead), controller_pod("ctl-silent", silent),
               proxy_pod("proxy-c", "127.0.98.13")]
    c = Replica(tmp_path, "ctl-c", own, port, objects)
    try:
        start_all(c)
        c.poll_as("proxy-c", c.config())
        for _ in range(2):
            started = time.monotonic()
            nodes = c.nodes()
            took = time.monotonic() - started
            assert took < PEER_TIMEOUT_SECONDS + 1.0, took
            assert nodes["proxy-c"]["up_to_date"] is True and nodes["proxy-c"].get("reported_to") == "ctl-c"
        log = c.log.read_text()
        assert "peer replica ctl-dead" in log and "peer replica ctl-silent" in log, log
        # warned once a minute per peer (the second answer's failures at debug)
        warnings = [line for line in log.splitlines() if "WARNING" in line and "peer replica" in line]
        assert len(warnings) == 2, warnings
    finally:
        c.stop()
        hung.close()


class RecordingPeer:
    """A stand-in peer replica: records the requests it gets, answers with one proxy's report."""

    def __init__(self, address: str, port: int, answer: list, headers: dict | None = None) -> None:
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.requests.append(self.path)
                body = json.dumps(answer).encode()
                self.send_response(200)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer((address, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_scope_local_asks_no_peer_and_a_peer_is_asked_for_scope_local_only(tmp_path):
    own, peer_ip = "127.0.98.6", "127.0.98.7"
    port = free_port(own, peer_ip)
    objects = [controller_pod("ctl-d", own), controller_pod("ctl-peer", peer_ip),
               # not peers: another namespace, the proxies' labels, no address yet
               controller_pod("ctl-elsewhere", "127.0.98.8", namespace="shop"),
               proxy_pod("proxy-d", "127.0.98.14"), proxy_pod("proxy-far", "127.0.98.15")]
    d = Replica(tmp_path, "ctl-d", own, port, objects)
    peer = None
    try:
        start_all(d)
        config = d.config()
        d.poll_as("proxy-d", config)
        now = time.time()
        answer = [{"name": "proxy-far", "ip": "127.0.98.15", "node": "node-proxy-far", "ready": True,
                   "applied_version": 41, "config_hash": config["hash"], "applied_hash": config["hash"],
                   "last_seen": now, "reported_to": "ctl-peer", "up_to_date": True},
                  # an older report of proxy-d than ctl-d's own: ctl-d's wins
                  {"name": "proxy-d", "ip": "127.0.98.14", "applied_version": 1, "config_hash": "old",
                   "applied_hash": "old", "last_seen": now - 600, "up_to_date": False},
                  # a pod the peer has no report of; junk
                  {"name": "proxy-d", "applied_version": None, "last_seen": None}, "junk", {"last_seen": now}]
        peer = RecordingPeer(peer_ip, port, answer)
        local = d.nodes("?scope=local")
        assert peer.requests == []  # no fan-out
        assert local["proxy-far"]["applied_version"] is None and not local["proxy-far"]["up_to_date"]
        merged = d.nodes()
        assert peer.requests == [wire.NODES_PATH + "?scope=local"]  # so the peer never asks back
        assert merged["proxy-far"]["up_to_date"] is True and merged["proxy-far"]["applied_version"] == 41
        assert merged["proxy-far"]["reported_to"] == "ctl-peer"
        assert merged["proxy-d"]["reported_to"] == "ctl-d" and merged["proxy-d"]["up_to_date"] is True
        assert set(merged) == {"proxy-d", "proxy-far"}
    finally:
        d.stop()
        if peer is not None:
            peer.close()


def test_a_peer_clock_ahead_or_a_number_out_of_range_neither_pins_nor_breaks_the_answer(tmp_path):
    # A peer whose clock runs 1,000 s ahead kept winning with its last report of a proxy that had
    # moved to this replica; a 400-digit last_seen made every /api/status/nodes a 500.
    own, peer_ip = "127.0.98.9", "127.0.98.10"
    port = free_port(own, peer_ip)
    objects = [controller_pod("ctl-e", own), controller_pod("ctl-skewed", peer_ip),
               proxy_pod("proxy-moved", "127.0.98.16"), proxy_pod("proxy-odd", "127.0.98.17")]
    e = Replica(tmp_path, "ctl-e", own, port, objects)
    peer = None
    try:
        start_all(e)
        config = e.config()
        e.poll_as("proxy-moved", config)  # now polls ctl-e
        ahead = time.time() + 1000
        answer = [{"name": "proxy-moved", "applied_version": 1, "config_hash": "old", "applied_hash": "old",
                   "last_seen": ahead - 10},  # 10 s before ctl-e's poll, on the peer's clock
                  {"name": "proxy-odd", "applied_version": 1, "config_hash": "old", "last_seen": 10 ** 400}]
        peer = RecordingPeer(peer_ip, port, answer, headers={"X-Lightmesh-Clock": repr(ahead)})
        merged = e.nodes()
        assert merged["proxy-moved"]["reported_to"] == "ctl-e" and merged["proxy-moved"]["up_to_date"] is True
        assert merged["proxy-odd"]["reported_to"] is None  # the out-of-range report is skipped
        assert peer.requests == [wire.NODES_PATH + "?scope=local"]
    finally:
        e.stop()
        if peer is not None:
            peer.close()


# ---------------------------------------------------------------------------- in process


def test_controller_pods_are_the_mesh_namespaces_pods_with_the_controllers_labels():
    objects = [controller_pod("ctl-1", "10.0.0.1"), controller_pod("ctl-2", "10.0.0.2", namespace="shop"),
               controller_pod("other", "10.0.0.3", labels={"app.kubernetes.io/name": wire.CONTROLLER_NAME}),
               proxy_pod("proxy-1", "10.0.0.4")]
    groups = classify(objects, ObjectFilter.create(MESH))
    assert [p["metadata"]["name"] for p in groups["controller_pods"]] == ["ctl-1"]
    assert [p["metadata"]["name"] for p in groups["proxy_pods"]] == ["proxy-1"]
    assert [p["metadata"]["name"] for p in groups["pods"]] == ["ctl-2"]  # a user's pod, as before


def test_peer_urls_bracket_ipv6_use_the_api_port_and_leave_this_replica_out():
    pods = [controller_pod("me", "10.0.0.1"), controller_pod("me-by-address", "10.0.0.9"),
            controller_pod("v6", "fd00::5"), controller_pod("v4", "10.0.0.2", ready=False),
            controller_pod("pending", ""), controller_pod("named-host", "evil.example")]
    pods[2]["spec"]["containers"][0]["ports"] = [{"name": "api", "containerPort": 9100}]
    api = ControllerAPI(ConfigStore(), controller_pods=lambda: pods, identity="me", own_addresses=["10.0.0.9"])
    api.port = 9000
    assert api._peers() == [("v6", "http://[fd00::5]:9100/api/status/nodes?scope=local", True),
                            ("v4", "http://10.0.0.2:9000/api/status/nodes?scope=local", False)]


def test_mesh_pods_is_the_snapshots_pod_groups_read_from_the_pods_cache_only(tmp_path):
    from types import SimpleNamespace

    from lightmesh.controller.sources import FileSource, KubeSource

    objects = [controller_pod("ctl-1", "10.0.0.1"), controller_pod("ctl-2", "10.0.0.2", namespace="shop"),
               proxy_pod("proxy-1", "10.0.0.4")]
    kube = KubeSource(None, ObjectFilter.create(MESH))
    kube.informers = {"pods": SimpleNamespace(cache={(o["metadata"]["namespace"], o["metadata"]["name"]): o
                                                     for o in objects})}
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump_all(objects))
    files = FileSource(tmp_path, ObjectFilter.create(MESH))
    files.load()
    for source in (kube, files):
        for group in ("proxy_pods", "controller_pods"):
            assert source.mesh_pods(group) == source.snapshot()[group] and len(source.mesh_pods(group)) == 1
