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


def test_sigkill_takes_the_controller_and_proxy_down_too(manifests):
    proc, children, _ = started(manifests)
    try:
        assert len(children) >= 3, children  # the controller, the proxy, its worker
        proc.kill()
        proc.wait()
        assert still_running(children, timeout=10) == []
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
