"""Controller traces: one span per reconcile round, in process and through a real OTLP receiver."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lightmesh.controller.dns import DNSTable, MeshDNS
from lightmesh.controller.model import Settings
from lightmesh.controller.reconcile import Controller
from lightmesh.controller.sources import FileSource, ObjectFilter
from lightmesh.controller.writer import STATE_FILE_NAME, LocalShadowStore
from lightmesh.otel import otlp_traces_url, tracer_provider
from tests.conftest import lightmesh_cmd, lightmesh_env
from proctools import free_dns_port as free_port
from tests.controller.test_controller_files import objects


def test_a_span_per_reconcile_round_with_what_it_published(tmp_path):
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all(objects()))
    exporter = InMemorySpanExporter()
    provider = tracer_provider("unused", "lightmesh-controller", exporter=exporter, batch=False)

    async def scenario():
        settings = Settings(listen_mode="shadow-ip")
        source = FileSource(tmp_path, ObjectFilter.create(settings.mesh_namespace), poll_seconds=0.02)
        controller = Controller(settings, source, dns=MeshDNS(DNSTable(settings.domains)),
                                local_shadows=LocalShadowStore(tmp_path / STATE_FILE_NAME),
                                tracer=provider.get_tracer("test"))
        task = asyncio.create_task(controller.run())
        try:
            deadline = time.monotonic() + 20
            while not controller.ready() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert controller.ready()
            return controller.version, controller.config.hash
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    version, config_hash = asyncio.run(scenario())
    spans = [s for s in exporter.get_finished_spans() if s.name == "reconcile"]
    assert spans, "no reconcile span"
    first = spans[0].attributes
    assert first["lightmesh.published"] is True and first["lightmesh.config_version"] == version
    assert first["lightmesh.config_hash"] == config_hash[:12]
    assert first["lightmesh.services"] == 2 and first["lightmesh.object_errors"] == 0
    assert spans[0].resource.attributes["service.name"] == "lightmesh-controller"
    assert spans[0].end_time >= spans[0].start_time


def test_spans_say_which_pod_and_node_they_came_from():
    from lightmesh.otel import resource_attributes

    assert resource_attributes("lightmesh-proxy", {"POD_NAME": "lightmesh-proxy-x7k2p", "NODE_NAME": "node-3"}) == {
        "service.name": "lightmesh-proxy", "k8s.pod.name": "lightmesh-proxy-x7k2p", "k8s.node.name": "node-3"}
    assert resource_attributes("lightmesh-controller", {}) == {"service.name": "lightmesh-controller"}


def test_otlp_url():
    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    # a base endpoint with a path still gets the signal path (OTEL_EXPORTER_OTLP_ENDPOINT semantics)
    assert otlp_traces_url("https://otlp.vendor.example/otlp") == "https://otlp.vendor.example/otlp/v1/traces"
    assert otlp_traces_url("http://collector:4318/v1/traces") == "http://collector:4318/v1/traces"


def _ready(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status/readiness", timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


def test_controller_process_sends_spans_to_a_real_otlp_receiver(tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "observability"))
    try:
        from otlp_receiver import OTLPReceiver
    finally:
        sys.path.pop(0)
    (tmp_path / "cluster.yaml").write_text(yaml.safe_dump_all(objects()))
    api_port = free_port()
    with OTLPReceiver() as receiver:
        proc = subprocess.Popen(
            lightmesh_cmd("controller", "--manifests", str(tmp_path), "--listen-mode", "shadow-ip",
                          "--api-address", "127.0.0.1", "--api-port", str(api_port),
                          "--dns-address", "127.0.0.1", "--dns-port", str(free_port()),
                          "--otlp-endpoint", receiver.endpoint, "--log-level", "warning"),
            env=lightmesh_env(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not _ready(api_port) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert _ready(api_port), "controller never became ready"
            proc.send_signal(signal.SIGTERM)  # a clean stop flushes the batched spans
            assert proc.wait(20) == 0, proc.stderr.read().decode()
            spans = receiver.wait_for(lambda s: s["name"] == "reconcile", timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    assert spans and spans[0]["resource"]["service.name"] == "lightmesh-controller"
    assert spans[0]["attributes"]["lightmesh.services"] == 2
