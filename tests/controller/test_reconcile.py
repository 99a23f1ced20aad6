"""The reconcile loop in process: versions only on hash changes, a failing round keeps the last config."""

from __future__ import annotations

import asyncio
import time

import yaml

from lightmesh.controller.build import build
from lightmesh.controller.dns import DNSTable, MeshDNS
from lightmesh.controller.metrics import ControllerMetrics
from lightmesh.controller.model import Settings
from lightmesh.controller.reconcile import Controller
from lightmesh.controller.sources import FileSource, ObjectFilter
from lightmesh.controller.writer import STATE_FILE_NAME, LocalShadowStore


def service(name, port=80):
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "shop"},
            "spec": {"selector": {"app": name}, "ports": [{"name": "main", "port": port, "protocol": "TCP"}]}}


async def until(check, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def test_versions_follow_the_hash_and_a_broken_round_keeps_the_last_config(tmp_path):
    calls = {"fail": False}

    def flaky_build(*args, **kwargs):
        if calls["fail"]:
            raise RuntimeError("a bug in the core")
        return build(*args, **kwargs)

    async def scenario():
        (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([service("web")]))
        settings = Settings(listen_mode="shadow-ip")
        metrics = ControllerMetrics()
        source = FileSource(tmp_path, ObjectFilter.create(settings.mesh_namespace), poll_seconds=0.02)
        controller = Controller(settings, source, metrics=metrics, dns=MeshDNS(DNSTable(settings.domains)),
                                local_shadows=LocalShadowStore(tmp_path / STATE_FILE_NAME), build_fn=flaky_build)
        task = asyncio.create_task(controller.run())
        try:
            await until(controller.ready, "first config")
            first = controller.config
            assert first.version == 1
            # shadow-ip: the config listens on the shadow's ClusterIP, allocated in the same round
            [entry] = first.http.entry_points
            assert entry.address.startswith("127.1.") and entry.port == 80
            assert controller.dns.table.lookup("web.shop.lightmesh") == ("found", (entry.address,))
            # a change that does not change the config: a rebuild, no new version
            rounds = controller.rounds
            (tmp_path / "b.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "ConfigMap",
                                                             "metadata": {"name": "x", "namespace": "shop"}}))
            (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([service("web")]) + "\n# touched\n")
            await until(lambda: controller.rounds > rounds, "a rebuild")
            assert controller.config is first and controller.version == 1
            # a round that raises keeps serving the last config
            calls["fail"] = True
            (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([service("web"), service("api", 81)]))
            await asyncio.sleep(0.3)
            assert controller.config is first and not task.done()
            # once the bug is gone the same state is retried without another change
            calls["fail"] = False
            await until(lambda: controller.version == 2, "the retried round published")
            assert len(controller.config.http.entry_points) == 2
            assert metrics.registry.get_sample_value("lightmesh_controller_config_version") == 2
            assert metrics.registry.get_sample_value("lightmesh_controller_objects", {"kind": "Service"}) == 2
            assert metrics.registry.get_sample_value("lightmesh_controller_reconcile_duration_seconds_count") >= 3
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_every_watched_kind_has_its_own_metric_label():
    # SMI and the Gateway API both have TCPRoute and UDPRoute: one label for both made the later
    # count overwrite the other's.
    from lightmesh.controller.reconcile import KIND_OF_FIELD

    assert len(set(KIND_OF_FIELD.values())) == len(KIND_OF_FIELD)
    assert KIND_OF_FIELD["tcp_routes"] == "TCPRoute"
    assert KIND_OF_FIELD["mesh_tcp_routes"] == "TCPRoute.gateway.networking.k8s.io"


def test_object_errors_are_logged_once_when_they_appear(tmp_path, caplog):
    bad = service("broken")
    bad["metadata"]["annotations"] = {"mesh.traefik.io/retry-attempts": "two"}
    settings = Settings()
    source = FileSource(tmp_path, ObjectFilter.create(settings.mesh_namespace))
    controller = Controller(settings, source)

    def round_with(objects):
        (tmp_path / "a.yaml").write_text(yaml.safe_dump_all(objects))
        source.load()
        caplog.clear()
        controller.reconcile_once()
        return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "object error" in r.getMessage()]

    caplog.set_level("WARNING", logger="lightmesh.controller")
    [line] = round_with([bad, service("web")])
    assert "Service shop/broken" in line and "retry-attempts" in line and "'two'" in line
    assert round_with([bad, service("web"), service("api")]) == []  # still there: not logged again
    assert round_with([service("web")]) == []
    assert len(round_with([bad])) == 1  # back again: logged again
