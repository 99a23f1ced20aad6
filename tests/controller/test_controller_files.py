"""``lightmesh controller --manifests DIR`` as a real subprocess: what local mode relies on."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from dnslib import RCODE, DNSRecord

from lightmesh import wire
from proctools import free_dns_port
from tests.conftest import lightmesh_cmd, lightmesh_env

NS = "shop"


def service(name, port=80, traffic="http", protocol="TCP", annotations=None):
    ann = {"mesh.traefik.io/traffic-type": traffic, **(annotations or {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS, "annotations": ann},
            "spec": {"selector": {"app": name}, "ports": [{"name": "main", "port": port, "protocol": protocol,
                                                           "targetPort": port}]}}


def pod(name, app, ip, port=80):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": {"app": app}},
            "spec": {"containers": [{"name": "c", "image": "x", "ports": [{"containerPort": port}]}]},
            "status": {"podIP": ip, "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}}


def endpoint_slice(service_name, pods, port=80, protocol="TCP"):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": f"{service_name}-abc", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "main", "port": port, "protocol": protocol}],
            "endpoints": [{"addresses": [p["status"]["podIP"]], "conditions": {"ready": True},
                           "targetRef": {"kind": "Pod", "name": p["metadata"]["name"], "namespace": NS}}
                          for p in pods]}


def objects(with_extra=False):
    web = [pod("web-1", "web", "127.2.0.1"), pod("web-2", "web", "127.2.0.2")]
    db = [pod("db-1", "db", "127.2.0.3", 5432)]
    out = [service("web"), *web, endpoint_slice("web", web),
           service("db", 5432, "tcp"), *db, endpoint_slice("db", db, 5432)]
    if with_extra:
        api = [pod("api-1", "api", "127.2.0.4", 8080)]
        out += [service("api", 8080, "tcp"), *api, endpoint_slice("api", api, 8080)]
    return out


def write_atomically(directory: Path, objs) -> None:
    """As the local harness does: write a dot-file, then rename over cluster.yaml."""
    tmp = directory / ".cluster.yaml.tmp"
    tmp.write_text(yaml.safe_dump_all(objs))
    os.replace(tmp, directory / "cluster.yaml")


class Controller:
    def __init__(self, directory: Path, log: Path, preexec_fn=None) -> None:
        self.directory, self.log = directory, log
        self.api_port, self.dns_port = free_dns_port(), free_dns_port()
        self.proc: subprocess.Popen | None = None
        self.preexec_fn = preexec_fn

    def start(self) -> Controller:
        args = lightmesh_cmd("controller", "--manifests", str(self.directory), "--listen-mode", "shadow-ip",
                             "--api-address", "127.0.0.1", "--api-port", str(self.api_port),
                             "--dns-address", "127.0.0.1", "--dns-port", str(self.dns_port), "--log-level", "info")
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=lightmesh_env(),
                                         preexec_fn=self.preexec_fn)
        self.wait_for(lambda: self.status(wire.READINESS_PATH) == 200, "ready")
        return self

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"

    def status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(self.url(path), timeout=2) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code
        except OSError:
            return None

    def json(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=5) as resp:
            return json.loads(resp.read())

    def config(self) -> dict:
        return self.json(wire.CONFIG_PATH + "?wait=0")

    def resolve(self, name: str) -> tuple[int, list[str]]:
        reply = DNSRecord.parse(DNSRecord.question(name).send("127.0.0.1", self.dns_port, timeout=2))
        return reply.header.rcode, [str(r.rdata) for r in reply.rr]

    def wait_for(self, check, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"controller exited ({self.proc.returncode}):\n{self.log.read_text()}")
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()}")


@pytest.fixture
def controllers(tmp_path):
    started: list[Controller] = []

    def make(directory: Path) -> Controller:
        controller = Controller(directory, tmp_path / f"controller-{len(started)}.log")
        started.append(controller)
        return controller.start()

    yield make
    for controller in started:
        controller.stop()


def listeners(config: dict) -> dict[str, tuple[str, int]]:
    out = {e["name"]: (e["address"], e["port"]) for e in config["http"]["entry_points"]}
    out.update({r["name"]: (r["address"], r["port"]) for r in config["tcp"] + config["udp"]})
    return out


def test_serves_config_dns_and_picks_up_changes_then_restarts_with_the_same_addresses(tmp_path, controllers):
    directory = tmp_path / "state"
    directory.mkdir()
    write_atomically(directory, objects())
    first = controllers(directory)

    config = first.config()
    assert config["version"] >= 1 and config["hash"]
    web_rcode, web_ips = first.resolve("web.shop.traefik.mesh")
    db_rcode, db_ips = first.resolve("DB.Shop.lightmesh")
    assert web_rcode == db_rcode == RCODE.NOERROR
    assert len(web_ips) == len(db_ips) == 1 and web_ips[0].startswith("127.1.") and db_ips != web_ips
    assert first.resolve("api.shop.maesh")[0] == RCODE.NXDOMAIN
    # the proxy listens on the shadow ClusterIPs at the Services' own ports
    assert set(listeners(config).values()) >= {(web_ips[0], 80), (db_ips[0], 5432)}
    topology = first.json(wire.TOPOLOGY_PATH)
    assert {s["name"] for s in topology["services"]} == {"web", "db"}

    # a long poll with the current ETag is held, then 304
    request = urllib.request.Request(first.url(wire.CONFIG_PATH + "?wait=0.3"),
                                     headers={"If-None-Match": f'"{config["hash"]}"'})
    with pytest.raises(urllib.error.HTTPError) as not_modified:
        urllib.request.urlopen(request, timeout=5)
    assert not_modified.value.code == 304

    # a change in the directory: new version, new Service resolvable, old addresses unchanged
    write_atomically(directory, objects(with_extra=True))
    first.wait_for(lambda: first.config()["hash"] != config["hash"], "the change to be published")
    changed = first.config()
    assert changed["version"] == config["version"] + 1
    api_rcode, api_ips = first.resolve("api.shop.maesh")
    assert api_rcode == RCODE.NOERROR and api_ips[0].startswith("127.1.")
    assert first.resolve("web.shop.traefik.mesh")[1] == web_ips

    # a broken file is ignored; the last good state stays served
    (directory / "broken.yaml").write_text("kind: [unclosed\n")
    time.sleep(0.6)  # several polls
    assert first.config()["hash"] == changed["hash"]
    assert first.status(wire.READINESS_PATH) == 200
    (directory / "broken.yaml").unlink()

    # SIGTERM: clean exit 0
    assert first.stop() == 0
    assert (directory / ".lightmesh-shadows.json").is_file()

    # restart: same ClusterIPs, same ports, and (same content) the same version and hash
    second = controllers(directory)
    again = second.config()
    assert again["hash"] == changed["hash"] and again["version"] == changed["version"]
    assert listeners(again) == listeners(changed)
    assert second.resolve("web.shop.traefik.mesh")[1] == web_ips
    assert second.resolve("api.shop.maesh")[1] == api_ips

    # restart after content changed while stopped: versions keep increasing, addresses kept
    assert second.stop() == 0
    write_atomically(directory, objects())
    third = controllers(directory)
    final = third.config()
    assert final["version"] > changed["version"] and final["hash"] == config["hash"]
    assert third.resolve("web.shop.traefik.mesh")[1] == web_ips
    assert third.resolve("api.shop.maesh")[0] == RCODE.NXDOMAIN
    assert third.stop() == 0


def test_bad_annotation_is_reported_not_fatal(tmp_path, controllers):
    directory = tmp_path / "state"
    directory.mkdir()
    objs = objects() + [service("broken", annotations={"lightmesh.io/retry-attempts": "many"})]
    (directory / "app.yml").write_text(yaml.safe_dump_all(objs))
    controller = controllers(directory)
    topology = controller.json(wire.TOPOLOGY_PATH)
    assert any("retry-attempts" in json.dumps(e) and "many" in json.dumps(e) for e in topology["errors"])
    assert controller.resolve("web.shop.lightmesh")[0] == RCODE.NOERROR
    metrics = urllib.request.urlopen(controller.url("/metrics"), timeout=5).read().decode()
    assert 'lightmesh_controller_object_errors{kind="Service"} 1.0' in metrics
    assert 'lightmesh_controller_objects{kind="Service"} 3.0' in metrics


def _with_open_files_limit(tmp_path: Path, soft: int, hard: int) -> Controller:
    """A controller (not started) over the test manifests, run with RLIMIT_NOFILE (soft, hard)."""
    import resource

    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "app.yml").write_text(yaml.safe_dump_all(objects()))
    return Controller(directory, tmp_path / "controller.log",
                      preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))


def test_the_controller_raises_its_open_files_limit_to_the_hard_limit(tmp_path):
    # a long poll per proxy, a connection per DNS-over-TCP client: 1,024 runs out on a big cluster
    controller = _with_open_files_limit(tmp_path, 256, 4096)
    try:
        controller.start()
        limits = [line for line in open(f"/proc/{controller.proc.pid}/limits") if line.startswith("Max open files")]
        assert int(limits[0].split()[3]) == 4096, limits
    finally:
        controller.stop()


def test_out_of_descriptors_the_controller_neither_floods_its_log_nor_spins(tmp_path):
    # on the stdlib loop each accept that failed with EMFILE logged a traceback and re-armed itself
    # once per backlog slot: 220,000 lines (16 MB) and 2 s of CPU in 6 s, until the clients left
    controller = _with_open_files_limit(tmp_path, 64, 64)
    held = []
    try:
        controller.start()
        cpu_before = _cpu_seconds(controller.proc.pid)
        for _ in range(80):  # more than the descriptors left: heads never finished
            sock = socket.socket()
            sock.settimeout(2)
            try:
                sock.connect(("127.0.0.1", controller.api_port))
                sock.sendall(b"GET /api/status/readiness HTTP/1.1\r\nHost: x\r\n")
                held.append(sock)
            except OSError:
                sock.close()
        time.sleep(3)
        assert _cpu_seconds(controller.proc.pid) - cpu_before < 1.0
        assert controller.log.read_text().count("\n") < 500
        for sock in held:
            sock.close()
        held = []
        controller.wait_for(lambda: controller.status(wire.READINESS_PATH) == 200, "the API back")
    finally:
        for sock in held:
            sock.close()
        controller.stop()


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_json_manifests_and_missing_directory(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    (directory / "list.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": objects()}))
    controller = Controller(directory, tmp_path / "c.log").start()
    try:
        assert controller.resolve("web.shop.lightmesh")[0] == RCODE.NOERROR
    finally:
        assert controller.stop() == 0
    result = subprocess.run(lightmesh_cmd("controller", "--manifests", str(tmp_path / "nope"), "--api-port", "19999",
                                          "--dns-port", "19998", "--api-address", "127.0.0.1",
                                          "--dns-address", "127.0.0.1"),
                            env=lightmesh_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "not a directory" in result.stderr


def test_port_in_use_is_a_clear_error(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for flag, what in (("--api-port", "the API"), ("--dns-port", "DNS")):
            other = "--dns-port" if flag == "--api-port" else "--api-port"
            result = subprocess.run(lightmesh_cmd("controller", "--manifests", str(directory),
                                                  "--api-address", "127.0.0.1", "--dns-address", "127.0.0.1",
                                                  flag, str(port), other, str(free_dns_port())),
                                    env=lightmesh_env(), capture_output=True, text=True, timeout=60)
            assert result.returncode == 1 and f"cannot serve {what}" in result.stderr, result.stderr


def test_the_install_command_line_parses():
    """MeshInstall's controller command (mesh_components.install) is accepted by this CLI as is."""
    import argparse

    pytest.importorskip("pulumi")
    from mesh_components.install import controller_command

    from lightmesh.controller import main

    settings = {"namespace": "mesh", "acl": True, "default_traffic_type": "tcp", "domains": ["lightmesh", "maesh"],
                "http_port_base": 5000, "http_port_limit": 4, "tcp_port_base": 10000, "tcp_port_limit": 5,
                "udp_port_base": 15000, "udp_port_limit": 6, "api_port": 9000, "log_level": "info",
                "log_format": "json", "otlp_endpoint": "http://otel:4318", "watch_namespaces": ["a", "b"],
                "ignore_namespaces": ["c"]}
    command = controller_command(settings)
    assert command[:2] == ["lightmesh", "controller"]
    parser = argparse.ArgumentParser()
    main.configure(parser)
    args = parser.parse_args(command[2:])
    assert (args.namespace, args.acl, args.default_mode, args.domains) == ("mesh", True, "tcp", ["lightmesh", "maesh"])
    assert args.leader_election and args.dns_port == 5353 and args.log_format == "json"
    assert (args.watch_namespaces, args.ignore_namespaces) == (["a", "b"], ["c"])
    s = main.settings_from_args(args)
    assert (s.tcp_port_limit, s.udp_port_limit, s.http_port_limit, s.listen_mode) == (5, 6, 4, "node")
