"""``lightmesh local`` and ``lightmesh demo`` as a user runs them: real processes, real signals.

Where possible these run as a user who may not bind ports below 1024 — under ``setpriv`` without
CAP_NET_BIND_SERVICE when we are root, as ourselves when we are not — so the high-ports path
(80 → 8080) is what is tested; as root without ``setpriv`` they force it with ``--high-ports``.
"""

from __future__ import annotations

import functools
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import yaml

from conftest import REPO, lightmesh_cmd, lightmesh_env
from lightmesh.local.harness import can_bind_privileged_ports
from lightmesh.local.traffic import HTTPClient

from proctools import descendants, free_dns_port, running, stop_all

DROP_BIND_CAPABILITY = ["setpriv", "--bounding-set", "-net_bind_service", "--inh-caps", "-net_bind_service"]


@functools.cache
def can_drop_bind_capability() -> bool:
    """Root with a working ``setpriv`` (a container may refuse to change the bounding set)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    return subprocess.run([*DROP_BIND_CAPABILITY, "true"], capture_output=True, timeout=30).returncode == 0


def unprivileged(*args: str) -> list[str]:
    """A ``lightmesh`` command line that runs without the right to bind ports below 1024, or that
    forces the same port layout (``--high-ports``) when that cannot be arranged."""
    if can_drop_bind_capability():
        return [*DROP_BIND_CAPABILITY, *lightmesh_cmd(*args)]
    if not can_bind_privileged_ports():
        return lightmesh_cmd(*args)
    return lightmesh_cmd(*args, "--high-ports")


def read_until(proc: subprocess.Popen, marker: str, timeout: float = 90.0) -> list[str]:
    """stdout lines up to and including ``marker`` (bounded in time; fails if the process ends)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"lightmesh exited early (code {proc.wait()}): {proc.stderr.read()}\n{''.join(seen)}")
        seen.append(line)
        if marker in line:
            return seen
    pytest.fail(f"no {marker!r} within {timeout} s:\n{''.join(seen)}")


def test_local_cli_on_the_acl_example(tmp_path):
    """examples/acl declares MeshInstall(acl=True): ACL mode without --acl, the curl line sends as
    the allowed client pod, the --endpoints JSON matches the printout, Ctrl-C ends it all with 0."""
    endpoints = tmp_path / "mesh.json"
    cmd = unprivileged("local", str(REPO / "examples" / "acl"), "--dns-port", str(free_dns_port()),
                       "--endpoints", str(endpoints))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lightmesh_env())
    children: set[int] = set()
    try:
        text = "".join(read_until(proc, "Press Ctrl-C to stop."))
        children = descendants(proc.pid)
        data = json.loads(endpoints.read_text())
        assert data["acl"] == {"enabled": True,
                               "why": "Deployment lightmesh/lightmesh-controller runs the controller with --acl"}
        assert "ACL mode: on (Deployment lightmesh/lightmesh-controller runs the controller with --acl" in text
        assert data["high_ports"]["offset"] == 8000 and data["high_ports"]["remapped"]["80"] == 8080
        assert re.search(r"so ports below \d+ answer at port \+ 8000 \(.*80 → 8080", text)

        [whoami] = [s for s in data["services"] if s["name"] == "whoami"]
        assert whoami["traffic_type"] == "http" and whoami["excluded"] is None
        assert whoami["ports"] == [{"name": "web", "port": 8080, "service_port": 80, "protocol": "TCP"}]
        pods = {p["name"]: p["address"] for p in data["pods"]}
        client, intruder = pods["whoami-client"], pods["intruder"]
        assert whoami["allowed_sources"] == [{"pod": "whoami/whoami-client", "address": client}]
        host, address = "whoami.whoami.traefik.mesh", whoami["address"]
        assert (f"curl --interface {client} --resolve {host}:8080:{address} http://{host}:8080/   "
                "# as whoami/whoami-client") in text
        assert f"dig @127.0.0.1 -p {data['dns']['port']} {host} +short" in text
        [controller] = [s for s in data["services"] if s["name"] == "lightmesh-controller"]
        assert controller["excluded"] == "mesh namespace, ignored"
        assert "lightmesh/lightmesh-controller: not in the mesh (mesh namespace, ignored)" in text

        # what the example's docstring promises
        statuses = {}
        for name, source in (("client", client), ("intruder", intruder), ("loopback", "127.0.0.1")):
            with HTTPClient(address, 8080, host, source=source) as http:
                statuses[name] = http.get("/").status
        assert statuses == {"client": 200, "intruder": 403, "loopback": 403}

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert [pid for pid in children if running(pid)] == []
    finally:
        stop_all(proc, children)


def test_demo_passes_every_check_on_high_ports(tmp_path):
    chart = tmp_path / "latency.png"
    result = subprocess.run(unprivileged("demo", "--dns-port", str(free_dns_port()), "--chart", str(chart)),
                            capture_output=True, text=True, timeout=180, env=lightmesh_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed, 0 failed" in result.stdout
    assert re.search(r"TCP whoami-tcp\.whoami\.traefik\.mesh:8080 'my data' +PASS", result.stdout)
    assert re.search(r"high ports: ports below \d+ answer at port \+ 8000 \(80 → 8080\)", result.stdout)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not can_drop_bind_capability() and can_bind_privileged_ports(),
                    reason="needs a user without CAP_NET_BIND_SERVICE (root with setpriv, or not root)")
def test_a_proxy_that_cannot_listen_ends_startup_at_once(tmp_path):
    """Stand-ins on a high port, the Service on 80, high ports refused: the proxy's listener error
    ends startup with that error (before, a 60 s wait and 'timed out waiting for')."""
    (tmp_path / "app.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "web", "image": "traefik/whoami",
                                                        "ports": [{"containerPort": 8081}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8081}]}}]))
    cmd = lightmesh_cmd("local", str(tmp_path), "--no-high-ports", "--dns-port", str(free_dns_port()))
    if can_drop_bind_capability():
        cmd = [*DROP_BIND_CAPABILITY, *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=lightmesh_env())
    assert result.returncode == 1
    assert re.fullmatch(r"lightmesh local: the proxy cannot listen on http 127\.1\.\d+\.\d+:80 \(entry point "
                        r"'http-127\.1\.\d+\.\d+:80'\): Permission denied; "
                        r"ports below \d+ need CAP_NET_BIND_SERVICE: run with --high-ports\n", result.stderr), \
        result.stderr


def test_mesh_dns_port_taken_names_the_flag(tmp_path):
    (tmp_path / "app.yaml").write_text("")
    with socket.socket() as holder:  # TCP: the mesh DNS serves both, a second mesh on one port clashes here
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = subprocess.run(lightmesh_cmd("local", str(tmp_path), "--dns-port", str(port)),
                                capture_output=True, text=True, timeout=120, env=lightmesh_env())
    assert result.returncode == 1
    assert result.stderr == (f"lightmesh local: the controller exited with code 1: cannot serve DNS on "
                             f"127.0.0.1:{port}: Address already in use (tcp 127.0.0.1:{port}); choose another "
                             "port with --dns-port\n")
