"""``lightmesh local`` as a process: however it ends, the controller and proxy it started end with it.

They run in sessions of their own (a Ctrl-C in the terminal reaches only ``lightmesh local``, which
stops them in order), so a signal it does not handle, or cannot (SIGKILL), used to leave them running,
holding the mesh DNS port and the loopback addresses: the next ``lightmesh local`` failed.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import yaml

from localproc import started, still_running, stop_all

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; PR_SET_PDEATHSIG is Linux")


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    (tmp_path / "app.yaml").write_text(yaml.safe_dump_all([
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                  "template": {"metadata": {"labels": {"app": "web"}},
                               "spec": {"containers": [{"name": "web", "image": "traefik/whoami:v1.6.0",
                                                        "ports": [{"containerPort": 8081}]}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
         "spec": {"selector": {"app": "web"}, "ports": [{"port": 8081}]}}]))
    return tmp_path


def test_sigkill_takes_the_controller_and_proxy_down_too(manifests, tmp_path_factory, monkeypatch):
    import tempfile

    from lightmesh.local.harness import LocalMesh

    temp = tmp_path_factory.mktemp("tmp")  # not inside the manifests' directory (it would be read)
    proc, children, _ = started(manifests, env={"TMPDIR": str(temp)})
    try:
        assert len(children) >= 3, children  # the controller, the proxy, its worker
        [work_dir] = temp.glob("lightmesh-local-*")
        proc.kill()
        proc.wait()
        assert still_running(children, timeout=10) == []
        # nothing ran to remove the work directory: the next local mesh does, its owner being gone
        assert (work_dir / "owner.json").is_file() and (work_dir / "logs" / "proxy.log").is_file()
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        LocalMesh(manifests)  # (not started: making the work directory is enough)
        assert not work_dir.exists()
        assert len(list(temp.glob("lightmesh-local-*"))) == 1  # its own
    finally:
        stop_all(proc, children)


def test_sighup_stops_the_mesh_cleanly(manifests):
    proc, children, _ = started(manifests)
    try:
        assert len(children) >= 3, children
        proc.send_signal(signal.SIGHUP)
        assert proc.wait(timeout=60) == 0
        assert proc.stdout.read().strip() == "stopping…"
        assert still_running(children, timeout=5) == []
    finally:
        stop_all(proc, children)


def test_a_proxy_that_dies_while_the_mesh_serves_stops_it_with_the_reason(manifests):
    # It went on looking healthy (no output, still running) while nothing answered any more.
    import os

    proc, children, _ = started(manifests)
    try:
        proxies = [pid for pid in children if b"proxy" in Path(f"/proc/{pid}/cmdline").read_bytes()
                   and b"--controller" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        assert proxies, children
        os.kill(min(proxies), signal.SIGKILL)  # the supervisor (its workers follow it)
        assert proc.wait(timeout=30) == 1
        # not "exited with code -9"
        assert proc.stderr.read().startswith("lightmesh local: the proxy was killed by signal SIGKILL: ")
        assert still_running(children, timeout=10) == []
    finally:
        stop_all(proc, children)


def test_hidden_files_and_an_endpoints_file_inside_the_path_are_not_read_as_manifests(manifests, tmp_path):
    import subprocess

    from conftest import lightmesh_cmd, lightmesh_env

    (manifests / ".lightmesh-shadows.json").write_text('{"shadows": [], "config": {}}')  # the controller's own
    (manifests / ".github").mkdir()
    (manifests / ".github" / "ci.yml").write_text("on: push\n")
    proc, children, _ = started(manifests)
    stop_all(proc, children)
    outside = tmp_path.parent / f"{tmp_path.name}-ep.json"
    (manifests / "link.json").symlink_to(outside)  # a link in PATH is read through, wherever it points
    for endpoints, path in ((manifests / "mesh.json", manifests), (manifests / "link.json", manifests),
                            (manifests / "app.yaml", manifests / "app.yaml")):  # PATH a file: itself
        refused = subprocess.run(lightmesh_cmd("local", str(path), "--endpoints", str(endpoints)),
                                 capture_output=True, text=True, env=lightmesh_env(), timeout=60)
        assert refused.returncode == 2 and "write it elsewhere" in refused.stderr, (endpoints, refused.stderr)
    assert (manifests / "app.yaml").read_text().startswith("apiVersion")  # not overwritten


@pytest.mark.parametrize("sig, sigint_ignored", [(signal.SIGTERM, False), (signal.SIGHUP, False),
                                                 (signal.SIGTERM, True)])  # a background job of a script
def test_the_demo_stops_on_sigterm_and_sighup_as_on_ctrl_c(manifests, tmp_path, sig, sigint_ignored):
    # It died on the spot (exit 143) and left its work directory behind.
    import os
    import subprocess
    import time

    from conftest import lightmesh_cmd, lightmesh_env

    from localproc import descendants, free_dns_port

    work = tmp_path / "tmp"
    work.mkdir()
    proc = subprocess.Popen(lightmesh_cmd("demo", "--dns-port", str(free_dns_port()), "--chart", str(tmp_path / "c.png")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**lightmesh_env(), "TMPDIR": str(work)},
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored else None)
    children: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not list(work.glob("lightmesh-local-*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(0.5)  # the mesh starting or running
        children = descendants(proc.pid)
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=60) == 130
        assert proc.stderr.read() == "lightmesh demo: interrupted; stopped\n"  # was silent
        assert still_running(children, timeout=10) == []
        assert not list(work.glob("lightmesh-local-*"))
    finally:
        stop_all(proc, children)
