"""The controller against a real Kubernetes API: shadow Service written, mesh DNS answers with it.

Runs only with ``KUBECONFIG`` pointing at a cluster the caller may change (it creates two throwaway
namespaces and deletes them). The controller runs on this machine, watching just the test namespace,
so nothing else in the cluster is touched. Skipped where no cluster exists (CI, local dev).
"""

import os
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import lightmesh_cmd, lightmesh_env
from lightmesh import wire

KUBECONFIG = os.environ.get("KUBECONFIG", "")
pytestmark = [pytest.mark.cluster,
              pytest.mark.skipif(not KUBECONFIG or not Path(KUBECONFIG.split(os.pathsep)[0]).is_file(),
                                 reason="needs KUBECONFIG pointing at a real cluster")]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_controller_writes_shadow_service_and_answers_dns():
    from dnslib import DNSRecord
    from lightkube import Client, KubeConfig
    from lightkube.models.core_v1 import ServicePort, ServiceSpec
    from lightkube.models.meta_v1 import ObjectMeta
    from lightkube.resources.core_v1 import Namespace, Service

    client = Client(config=KubeConfig.from_file(KUBECONFIG.split(os.pathsep)[0]))
    suffix = uuid.uuid4().hex[:6]
    app_ns, mesh_ns = f"lm-test-app-{suffix}", f"lm-test-mesh-{suffix}"
    api_port, dns_port = _free_port(), _free_port()
    controller = None
    try:
        for ns in (app_ns, mesh_ns):
            client.create(Namespace(metadata=ObjectMeta(name=ns)))
        client.create(Service(
            metadata=ObjectMeta(name="whoami", namespace=app_ns,
                                annotations={"mesh.traefik.io/traffic-type": "http"}),
            spec=ServiceSpec(selector={"app": "whoami"}, ports=[ServicePort(name="web", port=80)])))
        controller = subprocess.Popen(
            lightmesh_cmd("controller", "--kubeconfig", KUBECONFIG.split(os.pathsep)[0], "--namespace", mesh_ns,
                          "--watch-namespaces", app_ns, "--api-address", "127.0.0.1", "--api-port", str(api_port),
                          "--dns-address", "127.0.0.1", "--dns-port", str(dns_port), "--leader-election"),
            env=lightmesh_env(), start_new_session=True)

        def ready():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api_port}{wire.READINESS_PATH}", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        _wait(ready, 60, "controller readiness")
        shadows = _wait(lambda: [s for s in client.list(Service, namespace=mesh_ns,
                                                        labels={wire.LABEL_SHADOW_SERVICE_NAME: "whoami"})
                                 if s.spec.clusterIP], 60, "the shadow Service with a ClusterIP")
        [shadow] = shadows
        assert shadow.spec.internalTrafficPolicy == "Local"
        assert shadow.metadata.labels[wire.LABEL_SHADOW_SERVICE_NAMESPACE] == app_ns
        assert len(shadow.metadata.name) <= 63

        def answer():
            reply = DNSRecord.parse(DNSRecord.question(f"whoami.{app_ns}.traefik.mesh").send(
                "127.0.0.1", dns_port, timeout=2))
            return [str(rr.rdata) for rr in reply.rr]

        assert _wait(answer, 30, "mesh DNS answer") == [shadow.spec.clusterIP]
    finally:
        if controller is not None:
            controller.terminate()
            try:
                controller.wait(15)
            except subprocess.TimeoutExpired:
                controller.kill()
                controller.wait(5)
        for ns in (app_ns, mesh_ns):
            try:
                client.delete(Namespace, ns)
            except Exception:  # cleanup of what may not have been created
                pass
