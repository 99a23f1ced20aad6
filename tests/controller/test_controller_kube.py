"""The controller against a Kubernetes API (kmock + tests/controller/kube.py), in process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest

from lightmesh import wire
from lightmesh.controller.api import ConfigStore
from lightmesh.controller.dns import DNSTable, MeshDNS
from lightmesh.controller.events import EventRecorder
from lightmesh.controller.metrics import ControllerMetrics
from lightmesh.controller.model import Settings
from lightmesh.controller.reconcile import Controller
from lightmesh.controller.retry import RetryBackoff
from lightmesh.controller.shadow import shadow_name
from lightmesh.controller.sources import KubeAPI, KubeSource, ObjectFilter
from lightmesh.controller.writer import KubeShadowWriter

from .kube import cluster

MESH = "lightmesh"
NS = "shop"


def service(name, port=80, traffic="http", ns=NS, annotations=None, protocol="TCP"):
    ann = {"mesh.traefik.io/traffic-type": traffic, **(annotations or {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "annotations": ann},
            "spec": {"selector": {"app": name}, "clusterIP": "10.96.0.10",
                     "ports": [{"name": "main", "port": port, "protocol": protocol, "targetPort": port}]}}


def shadow_of(ns, name, target_port, port=5432, extra_labels=None):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": shadow_name(ns, name), "namespace": MESH,
                         "labels": {wire.LABEL_SHADOW_SERVICE_NAME: name, wire.LABEL_SHADOW_SERVICE_NAMESPACE: ns,
                                    wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER, **(extra_labels or {})}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.5.5", "selector": dict(wire.PROXY_POD_LABELS),
                     "internalTrafficPolicy": "Local",
                     "ports": [{"name": "main", "port": port, "protocol": "TCP", "targetPort": target_port}]}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 90))


async def until(check, what, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running(kube, *, events=True, identity="test", backoff=None):
    """A controller (no election: it writes) against ``kube``; stopped and cleaned up on exit.
    ``backoff``: a () → RetryBackoff for the writer and the Events (faster than the defaults)."""
    api = KubeAPI.from_kubeconfig(server=str(kube.url))
    metrics = ControllerMetrics()
    settings = Settings(mesh_namespace=MESH)
    source = KubeSource(api, ObjectFilter.create(MESH), metrics=metrics)
    recorder = EventRecorder(api, identity, uids=source.uid, api_versions=source.api_versions) if events else None
    if recorder is not None and backoff is not None:
        recorder.backoff = backoff()
    controller = Controller(settings, source, store=ConfigStore(), metrics=metrics,
                            dns=MeshDNS(DNSTable(settings.domains)),
                            kube_writer=KubeShadowWriter(api, MESH, metrics, backoff=backoff() if backoff else None),
                            events=recorder)
    task = asyncio.create_task(controller.run())
    try:
        await until(lambda: controller.ready() or task.done(), "controller ready")
        if task.done():
            task.result()
        yield controller
    finally:
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=10)
        if not done:  # a task that swallowed its cancel: fail now, with the stacks, not at the 90 s bound
            stuck = [t for t in asyncio.all_tasks() if t.cancelling() and not t.done()]
            for t in stuck:
                t.print_stack()
            raise AssertionError(f"the controller did not stop within 10 s of its cancel: {stuck}")
        await api.close()


def shadows(kube):
    return {s["metadata"]["name"]: s for s in kube.list_objects("v1", "services", MESH)}


def metric(controller, name, **labels):
    value = controller.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


def test_shadows_created_orphans_removed_ports_recovered_user_objects_untouched():
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            kube.put_object(service("db", 5432, "tcp"))
            # state a previous controller left: db's shadow with its TCP mesh port, an orphan, a user's Service
            kube.put_object(shadow_of(NS, "db", 10007))
            kube.put_object(shadow_of(NS, "gone", 10003, port=9999))
            user = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "lightmesh-controller",
                                                                         "namespace": MESH},
                    "spec": {"ports": [{"port": 9000}]}}
            user = kube.put_object(user)
            async with running(kube) as controller:
                want = {shadow_name(NS, "web"), shadow_name(NS, "db")}
                await until(lambda: set(shadows(kube)) == want | {"lightmesh-controller"}, "shadows reconciled")
                db = shadows(kube)[shadow_name(NS, "db")]
                assert db["spec"]["ports"][0]["targetPort"] == 10007  # recovered, not re-allocated
                web = shadows(kube)[shadow_name(NS, "web")]
                assert web["spec"]["internalTrafficPolicy"] == "Local"
                assert web["spec"]["ipFamilyPolicy"] == "PreferDualStack"
                assert web["metadata"]["labels"][wire.LABEL_MANAGED_BY] == wire.MANAGED_BY_CONTROLLER
                assert [r.port for r in controller.config.tcp] == [10007]
                # the user's Service in the mesh namespace and the user Services were never written
                writes = kube.writes()
                assert all(path.startswith(f"/api/v1/namespaces/{MESH}/services") for method, path in writes
                           if "/events" not in path), writes
                assert not any(path.endswith("/lightmesh-controller") for _, path in writes)
                assert kube.get_object("v1", "services", MESH, "lightmesh-controller") == user
                # DNS answers from the shadows' ClusterIPs as they come back through the watch
                await until(lambda: controller.dns.table.lookup("db.shop.traefik.mesh")[0] == "found", "dns")
                assert metric(controller, "lightmesh_controller_shadow_service_writes_total", action="create") == 1
                assert metric(controller, "lightmesh_controller_shadow_service_writes_total", action="delete") == 1

                # a Service deleted: its shadow goes; a Service added: a shadow comes
                await kube_delete(kube, "web")
                kube.put_object(service("api", 8080, "tcp"))
                want = {shadow_name(NS, "api"), shadow_name(NS, "db")}
                await until(lambda: set(shadows(kube)) == want | {"lightmesh-controller"}, "second reconcile")
                assert shadows(kube)[shadow_name(NS, "api")]["spec"]["ports"][0]["targetPort"] != 10007

    run(scenario())


async def kube_delete(kube, name, ns=NS):
    api = KubeAPI.from_kubeconfig(server=str(kube.url))
    try:
        await api.request("DELETE", f"/api/v1/namespaces/{ns}/services/{name}")
    finally:
        await api.close()


def test_resumes_after_410_gone_with_a_relist():
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            async with running(kube, events=False) as controller:
                informer = controller.source.informers["services"]
                lists = informer.lists
                version = controller.version
                # the API server forgets old versions and ends the watches: resuming gets 410
                kube.compact()
                kube.put_object(service("late", 81), notify=False)  # an event the watch never delivered
                kube.close_watches()
                await until(lambda: informer.lists > lists, "re-list after 410")
                await until(lambda: (NS, "late") in informer.cache, "the object missed during the gap")
                await until(lambda: controller.version > version, "a new config with it")
                assert metric(controller, "lightmesh_controller_watch_restarts_total", kind="Service",
                              reason="gone") >= 1
                # and the watch works again afterwards (resumed from the list's version)
                kube.put_object(service("later", 82))
                await until(lambda: (NS, "later") in informer.cache, "events after the re-list")
                resumed = [p for p in kube.watch_requests if p.get("resourceVersion")]
                assert resumed, "watches resume from a resourceVersion"

    run(scenario())


def test_events_created_once_per_object_and_message():
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            kube.put_object(service("broken", annotations={"lightmesh.io/retry-attempts": "many"}))
            async with running(kube) as controller:
                await until(lambda: kube.list_objects("v1", "events", NS), "an Event")
                [event] = kube.list_objects("v1", "events", NS)
                assert event["involvedObject"]["name"] == "broken" and event["involvedObject"]["kind"] == "Service"
                assert event["involvedObject"].get("uid")
                assert event["reason"] == "InvalidAnnotation" and event["type"] == "Warning"
                assert "retry-attempts" in event["message"] and "many" in event["message"]
                # more rebuilds with the same error: no new Event
                rounds = controller.rounds
                for port in (90, 91, 92):
                    kube.put_object(service(f"other-{port}", port))
                await until(lambda: controller.rounds > rounds and controller.source.informers["services"]
                            .cache.get((NS, "other-92")), "rebuilds")
                await asyncio.sleep(0.2)
                assert len(kube.list_objects("v1", "events", NS)) == 1
            posts = sum(1 for m, p in kube.writes() if m == "POST" and p.endswith("/events"))
            # a restarted controller does not duplicate it either (the API says it exists)
            async with running(kube) as controller:
                await until(lambda: sum(1 for m, p in kube.writes() if m == "POST" and p.endswith("/events"))
                            > posts, "the restarted controller tried")
                await asyncio.sleep(0.1)
                assert len(kube.list_objects("v1", "events", NS)) == 1

    run(scenario())


def test_events_past_one_rounds_cap_follow_without_another_change(monkeypatch):
    from lightmesh.controller import events, reconcile

    monkeypatch.setattr(events, "MAX_EVENTS_PER_ROUND", 2)
    monkeypatch.setattr(reconcile, "EVENT_BACKLOG_SECONDS", 0.05)

    async def scenario():
        async with cluster() as kube:
            for i in range(5):
                kube.put_object(service(f"broken-{i}", 80 + i, annotations={"lightmesh.io/retry-attempts": "many"}))
            async with running(kube):
                # a quiet cluster: nothing changes after start, yet all five get their Event
                await until(lambda: len(kube.list_objects("v1", "events", NS)) == 5, "five Events in batches of two")

    run(scenario())


def test_shadow_update_retries_conflicts_and_rewrites_drift():
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            async with running(kube, events=False) as controller:
                name = shadow_name(NS, "web")
                await until(lambda: name in shadows(kube), "shadow created")
                # someone edits our shadow: the leader puts it back (after a scripted conflict)
                kube.fail_next("PATCH", f"/services/{name}", 409, "Conflict")
                kube.patch_object("v1", "services", MESH, name, {"spec": {"internalTrafficPolicy": "Cluster"}})
                await until(lambda: shadows(kube)[name]["spec"]["internalTrafficPolicy"] == "Local",
                            "drift corrected")
                # counted once the write's answer is back, a moment after the fake API server applied it
                await until(lambda: metric(controller, "lightmesh_controller_shadow_service_writes_total",
                                           action="update") >= 1, "the update counted")
                patches = [p for m, p in kube.writes() if m == "PATCH" and p.endswith(name)]
                assert len(patches) >= 2  # the scripted 409, then the retry that succeeded

    run(scenario())


@pytest.mark.parametrize("acl", [False, True])
def test_cli_in_cluster_mode_with_leader_election(tmp_path, acl):
    """``lightmesh controller --kubeconfig F --leader-election`` as a subprocess against the fake API.
    With ``--acl``, a 403 on TrafficTargets (its ClusterRoleBinding not in effect yet) keeps it unready."""
    import signal

    import aiohttp
    import yaml

    from tests.conftest import lightmesh_cmd, lightmesh_env

    from proctools import free_dns_port as free_port

    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            kubeconfig = tmp_path / "kubeconfig"
            kubeconfig.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "c",
                "clusters": [{"name": "c", "cluster": {"server": str(kube.url)}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
            api_port, dns_port = free_port(), free_port()
            started_ms = int(time.time() * 1000)
            if acl:
                kube.fail_next("GET", "/traffictargets", 403, "Forbidden", count=1_000_000)
            log = open(tmp_path / "controller.log", "wb")
            proc = await asyncio.create_subprocess_exec(
                *lightmesh_cmd("controller", "--kubeconfig", str(kubeconfig), "--namespace", MESH,
                               "--leader-election", "--api-address", "127.0.0.1", "--api-port", str(api_port),
                               "--dns-address", "127.0.0.1", "--dns-port", str(dns_port),
                               "--log-format", "json", "--log-level", "info", *(["--acl"] if acl else [])),
                stdout=log, stderr=asyncio.subprocess.STDOUT, env=lightmesh_env({wire.ENV_POD_NAME: "controller-0"}))
            try:
                url = f"http://127.0.0.1:{api_port}"
                async with aiohttp.ClientSession() as http:
                    async def status(path):
                        try:
                            async with http.get(url + path) as resp:
                                return resp.status, await resp.text()
                        except aiohttp.ClientError:
                            return None, ""

                    if acl:
                        for _ in range(40):  # listening, and not ready while TrafficTargets are forbidden
                            code = (await status(wire.READINESS_PATH))[0]
                            assert code in (None, 503) and proc.returncode is None, code
                            await asyncio.sleep(0.05)
                        kube.failures.clear()  # the RBAC took effect
                    for _ in range(1000):
                        if (await status(wire.READINESS_PATH))[0] == 200 or proc.returncode is not None:
                            break
                        await asyncio.sleep(0.05)
                    assert (await status(wire.READINESS_PATH))[0] == 200, (tmp_path / "controller.log").read_text()
                    await until(lambda: shadow_name(NS, "web") in shadows(kube), "the shadow written by the CLI")
                    lease = kube.get_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME)
                    # the pod name and a suffix of this process's own (a restarted process is another candidate)
                    assert lease["spec"]["holderIdentity"].startswith("controller-0_")
                    _, metrics = await status("/metrics")
                    assert "lightmesh_controller_is_leader 1.0" in metrics
                    # nothing is persisted in a cluster: versions start from the clock, so they grow
                    # across restarts
                    config = json.loads((await status(wire.CONFIG_PATH + "?wait=0"))[1])
                    assert config["version"] > started_ms, config["version"]
            finally:
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                code = await asyncio.wait_for(proc.wait(), 20)
                log.close()
            assert code == 0
            lease = kube.get_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME)
            assert not lease["spec"].get("holderIdentity")  # released on the way out
            lines = (tmp_path / "controller.log").read_text().splitlines()
            assert lines and all(line.startswith("{") for line in lines)  # --log-format json

    run(scenario())


def test_rounds_that_change_no_shadow_write_nothing_and_a_deleted_shadow_comes_back():
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            kube.put_object({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                             "metadata": {"name": "web-1", "namespace": NS,
                                          "labels": {"kubernetes.io/service-name": "web"}},
                             "addressType": "IPv4", "ports": [{"name": "main", "port": 80, "protocol": "TCP"}],
                             "endpoints": [{"addresses": ["10.1.0.1"], "conditions": {"ready": True}}]})
            async with running(kube, events=False) as controller:
                name = shadow_name(NS, "web")
                await until(lambda: name in shadows(kube), "shadow created")
                await until(lambda: controller._applied is not None, "a clean write")
                writes = len(kube.writes())
                version = controller.version
                kube.patch_object("discovery.k8s.io/v1", "endpointslices", NS, "web-1",
                                  {"endpoints": [{"addresses": ["10.1.0.2"], "conditions": {"ready": True}}]})
                await until(lambda: controller.version > version, "new config for the endpoint change")
                await asyncio.sleep(0.2)
                assert len(kube.writes()) == writes  # the desired shadows did not change: nothing written
                # a user deletes our shadow: the watch shows it gone and the leader creates it again
                api = KubeAPI.from_kubeconfig(server=str(kube.url))
                try:
                    await api.request("DELETE", f"/api/v1/namespaces/{MESH}/services/{name}")
                finally:
                    await api.close()
                await until(lambda: name in shadows(kube) and len(kube.writes()) > writes + 1, "shadow recreated")

    run(scenario())


def test_gateway_api_http_routes_are_watched_applied_and_reported():
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "canary", "namespace": NS},
             "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web"}],
                      "rules": [{"matches": [{"headers": [{"name": "X-Canary", "value": "1"}]}],
                                 "backendRefs": [{"name": "web-v2", "port": 80}]},
                                {"matches": [{"path": {"value": "/old"}}],
                                 "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}],
                                 "backendRefs": [{"name": "web", "port": 80}]}]}}

    def route_routers(controller):
        config = controller.store.config
        return sorted(r.name for r in config.http.routers if "/route/" in r.name) if config else []

    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            kube.put_object(service("web-v2"))
            kube.put_object(route)
            async with running(kube) as controller:
                # the redirect rule is not skipped: its requests answer 500 (the Gateway API's rule)
                await until(lambda: route_routers(controller) == [f"{NS}/web:80/route/{NS}/canary/0/0",
                                                                  f"{NS}/web:80/route/{NS}/canary/1/0"],
                            "the HTTPRoute's routers")
                await until(lambda: kube.list_objects("v1", "events", NS), "an Event on the HTTPRoute")
                [event] = kube.list_objects("v1", "events", NS)
                assert event["involvedObject"]["kind"] == "HTTPRoute" and event["involvedObject"]["name"] == "canary"
                assert event["involvedObject"]["apiVersion"] == "gateway.networking.k8s.io/v1"
                assert "RequestRedirect" in event["message"]
                # the route changes: the config follows; the route goes: the Service is plain again
                kube.patch_object("gateway.networking.k8s.io/v1", "httproutes", NS, "canary",
                                  {"spec": {"rules": route["spec"]["rules"][:1] * 2}})
                await until(lambda: len(route_routers(controller)) == 2, "the changed route")
                api = KubeAPI.from_kubeconfig(server=str(kube.url))
                try:
                    await api.request("DELETE", f"/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/canary")
                finally:
                    await api.close()
                await until(lambda: route_routers(controller) == [], "the route gone")

    run(scenario())


def test_a_gateway_tcp_route_is_told_apart_from_an_smi_tcp_route_of_the_same_name():
    gw = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute", "metadata": {"name": "db", "namespace": NS},
          "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "db"}],
                   "rules": [{"backendRefs": [{"name": "db", "port": 5432}]}, {"backendRefs": []}]}}
    smi = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute", "metadata": {"name": "db", "namespace": NS},
           "spec": {"matches": {"ports": [5432]}}}

    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("db", 5432, traffic="tcp"))
            stored_gw = kube.put_object(gw)
            stored_smi = kube.put_object(smi)
            async with running(kube) as controller:
                await until(lambda: kube.list_objects("v1", "events", NS), "an Event on the Gateway TCPRoute")
                [event] = kube.list_objects("v1", "events", NS)
                involved = event["involvedObject"]
                assert involved["kind"] == "TCPRoute" and involved["apiVersion"] == "gateway.networking.k8s.io/v1"
                assert involved["uid"] == stored_gw["metadata"]["uid"] != stored_smi["metadata"]["uid"]
                assert "first rule only" in event["message"]
                versions = controller.source.api_versions()
                assert versions["TCPRoute"] == "specs.smi-spec.io/v1alpha4"  # the bare kind stays SMI's
                assert versions["TCPRoute.gateway.networking.k8s.io"] == "gateway.networking.k8s.io/v1"
                await until(lambda: controller.store.config is not None and controller.store.config.tcp,
                            "the TCP route")
                [route] = controller.store.config.tcp
                assert route.name == f"{NS}/db:5432" and route.servers == []  # no EndpointSlice in this cluster

    run(scenario())


def test_a_selector_key_added_to_a_shadow_is_removed():
    # An extra selector key matches no proxy pod: the Service's mesh traffic went nowhere, and the
    # writer, which only checked that our keys were present, never put it back.
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            async with running(kube, events=False):
                name = shadow_name(NS, "web")
                await until(lambda: name in shadows(kube), "shadow created")
                wanted = dict(shadows(kube)[name]["spec"]["selector"])
                kube.patch_object("v1", "services", MESH, name, {"spec": {"selector": {"extra": "x"}}})
                assert shadows(kube)[name]["spec"]["selector"] == {**wanted, "extra": "x"}
                await until(lambda: shadows(kube)[name]["spec"]["selector"] == wanted, "selector restored")

    run(scenario())


def _shadow_name_taken(kube) -> str:
    """The Service web, and a user's Service in the mesh namespace holding its shadow's name."""
    kube.put_object(service("web"))
    name = shadow_name(NS, "web")
    kube.put_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": MESH},
                     "spec": {"ports": [{"port": 1}]}})
    return name


def _shadow_errors(controller) -> list:
    result = controller.result
    return [] if result is None else [e for e in result.errors if e.field == "shadow Service"]


def test_a_shadow_that_cannot_be_written_is_reported_on_its_service():
    # A user's Service holding the shadow's name: the controller leaves it alone (as before), but
    # that used to show only in its log, every 5 s; the Service's mesh name just did not resolve.
    async def scenario():
        async with cluster() as kube:
            name = _shadow_name_taken(kube)
            async with running(kube, events=False) as controller:
                await until(lambda: _shadow_errors(controller), "the failed write reported")
                [error] = _shadow_errors(controller)
                assert (error.kind, error.namespace, error.name) == ("Service", NS, "web")
                assert f"{MESH}/{name}" in error.message and "not" in error.message
                assert metric(controller, "lightmesh_controller_object_errors", kind="Service") == 1
                assert metric(controller, "lightmesh_controller_shadow_service_writes_total", action="error") >= 1
                await kube_delete(kube, name, MESH)  # the name is free: the shadow is written, the error goes
                await until(lambda: name in shadows(kube) and controller.result is not None
                            and not _shadow_errors(controller), "the error cleared", timeout=30)

    run(scenario())


def test_a_replica_that_loses_the_lease_stops_reporting_its_failed_shadow_writes():
    import types

    async def scenario():
        async with cluster() as kube:
            _shadow_name_taken(kube)
            async with running(kube, events=False) as controller:
                await until(lambda: _shadow_errors(controller), "the failed write reported")
                controller.elector = types.SimpleNamespace(is_leader=False)  # the lease went to another replica
                controller._write_wanted.set()
                await until(lambda: not _shadow_errors(controller), "the error left to the leader")

    run(scenario())


def test_a_cancel_that_comes_right_after_a_round_stops_the_controller():
    # Every round sets the write loop's Event. With a retry or an Event refresh pending, the loop
    # waited with asyncio.wait_for, which on Python 3.11 drops a cancel arriving just after the
    # Event was set: the TaskGroup cancels its children once, so Controller.run() (and a real
    # controller on SIGTERM) never returned. Here the two come in the same loop iteration.
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("broken", annotations={"lightmesh.io/retry-attempts": "many"}))
            api = KubeAPI.from_kubeconfig(server=str(kube.url))
            metrics = ControllerMetrics()
            settings = Settings(mesh_namespace=MESH)
            source = KubeSource(api, ObjectFilter.create(MESH), metrics=metrics)
            controller = Controller(settings, source, store=ConfigStore(), metrics=metrics,
                                    dns=MeshDNS(DNSTable(settings.domains)),
                                    kube_writer=KubeShadowWriter(api, MESH, metrics),
                                    events=EventRecorder(api, "test", uids=source.uid, api_versions=source.api_versions))
            task = asyncio.create_task(controller.run())
            try:
                await until(lambda: kube.list_objects("v1", "events", NS), "an Event (its refresh is then due)")
                await asyncio.sleep(0.3)  # the write loop waits for the next round or the refresh
                controller._write_wanted.set()  # a round ends
                task.cancel()  # the shutdown, in the same iteration
                done, _ = await asyncio.wait({task}, timeout=5)
                assert done, "the controller did not stop after its cancel"
            finally:
                for t in asyncio.all_tasks():
                    if "_write_loop" in repr(t):
                        t.cancel()  # (unstick a failure so the test ends)
                await asyncio.wait({task}, timeout=3)
                await api.close()

    for _ in range(3):
        run(scenario())


def _slice(name, service_name, address):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NS, "labels": {"kubernetes.io/service-name": service_name}},
            "addressType": "IPv4", "ports": [{"name": "main", "port": 80, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "conditions": {"ready": True}}]}


async def _churn(kube, seconds, since=None):
    """Endpoint changes every 0.05 s: a reconcile round each, nothing for the writer to do. Lasts
    ``seconds`` of clock time from ``since`` (a time.monotonic(), default now), not a number of
    sleeps: on a slow host those add up to more time, and more retries than the test counts."""
    deadline = (time.monotonic() if since is None else since) + seconds
    k = 0
    while time.monotonic() < deadline:
        kube.patch_object("discovery.k8s.io/v1", "endpointslices", NS, "web-a",
                          {"endpoints": [{"addresses": [f"10.1.0.{k % 200 + 2}"], "conditions": {"ready": True}}]})
        k += 1
        await asyncio.sleep(0.05)


class _NotedBackoff(RetryBackoff):
    """A RetryBackoff that notes its first failure: the time its schedule counts from."""
    first_failure = None

    def failed(self, key, reason, content=None):
        if self.first_failure is None:
            self.first_failure = self.clock()
        return super().failed(key, reason, content)


def test_an_orphan_that_cannot_be_deleted_keeps_its_port_leaves_the_mesh_dns_and_is_reported():
    # a (tcp) is deleted, the DELETE of its shadow is refused: the orphan still sends a's clients to
    # mesh port 10000. That port must not go to b, a's mesh name must not resolve, and the failure
    # must be visible (it was only a log line: not counted, not in the topology, no Event).
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("a", 5432, "tcp"))
            async with running(kube) as controller:
                sa = shadow_name(NS, "a")
                await until(lambda: sa in shadows(kube), "a's shadow")
                assert shadows(kube)[sa]["spec"]["ports"][0]["targetPort"] == 10000
                kube.patch_object("v1", "services", MESH, sa, {"spec": {"clusterIP": "10.96.7.7"}})  # as allocated
                await until(lambda: controller.dns.table.lookup("a.shop.traefik.mesh")[0] == "found", "a resolves")
                kube.fail_next("DELETE", f"/services/{sa}", 403, "Forbidden", count=10**6)
                await kube_delete(kube, "a")
                kube.put_object(service("b", 6379, "tcp"))
                sb = shadow_name(NS, "b")
                await until(lambda: sb in shadows(kube), "b's shadow")
                assert shadows(kube)[sb]["spec"]["ports"][0]["targetPort"] == 10001  # not a's 10000
                assert [(r.name, r.port) for r in controller.config.tcp] == [(f"{NS}/b:6379", 10001)]
                assert controller.dns.table.lookup("a.shop.traefik.mesh")[0] == "nxdomain"
                await until(lambda: _shadow_errors(controller), "the failed delete reported")
                [error] = _shadow_errors(controller)
                assert (error.kind, error.namespace, error.name) == ("Service", MESH, sa)
                assert "could not be deleted" in error.message and "10000" in error.message
                assert metric(controller, "lightmesh_controller_shadow_service_writes_total", action="error") >= 1
                await until(lambda: [e for e in kube.list_objects("v1", "events", MESH)
                                     if e["involvedObject"]["name"] == sa], "an Event on the orphan")
                # the API lets us delete it: the orphan goes, the error with it
                kube.failures.clear()
                await until(lambda: sa not in shadows(kube) and not _shadow_errors(controller),
                            "the orphan deleted", timeout=15)

    run(scenario())


def test_failed_shadow_writes_back_off_log_little_and_recover_quickly(caplog):
    # A 403 on every shadow create: each object is retried with its own growing pause (it was every
    # 5 s, each with an ERROR line); once the API takes writes, every shadow follows promptly.
    n = 15

    async def scenario():
        async with cluster() as kube:
            kube.put_object(_slice("web-a", "web", "10.1.0.1"))
            for i in range(n):
                kube.put_object(service(f"s{i}", 80))
            kube.fail_next("POST", f"/namespaces/{MESH}/services", 403, "Forbidden", count=10**6)
            # the defaults (5 s → 5 min, a probe every 5 s) scaled down for a quick test
            quick = lambda: RetryBackoff(first_seconds=0.5, max_seconds=30, probe_seconds=0.5)  # noqa: E731
            async with running(kube, events=False, backoff=quick) as controller:
                await _churn(kube, 4.0)
                posts = sum(1 for m, p in kube.writes() if m == "POST" and f"/namespaces/{MESH}/services" in p)
                # at 0, 0.5, 1.5 and 3.5 s (a fixed pause: 8 times), plus a probe or two
                assert posts <= n * 4 + 4, posts
                assert len(_shadow_errors(controller)) == n
                kube.failures.clear()
                started = time.monotonic()
                await until(lambda: len(shadows(kube)) == n, "all shadows written", timeout=10)
                # the next probe (0.5 s here, 5 s by default) finds the API back and the rest follow at
                # once, not each after its own pause (next due at 7.5 s)
                assert time.monotonic() - started < 2.0
                await until(lambda: not _shadow_errors(controller), "errors cleared")
        lines = [r for r in caplog.records if r.name == "lightmesh.controller.writer" and r.levelname == "ERROR"]
        assert len(lines) <= 11, [r.getMessage() for r in lines]  # 10 objects, then one summary

    with caplog.at_level("INFO"):
        run(scenario())


def test_failed_event_posts_back_off_while_rounds_keep_coming(caplog):
    # 403 on Events (RBAC without them): it was one POST and one warning per error on every round.
    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("web"))
            kube.put_object(_slice("web-a", "web", "10.1.0.1"))
            for i in range(3):
                kube.put_object(service(f"bad{i}", 81 + i, annotations={"lightmesh.io/retry-attempts": "many"}))
            kube.fail_next("POST", "/events", 403, "Forbidden", count=10**6)
            quick = lambda: _NotedBackoff(first_seconds=0.5, max_seconds=30, probe_seconds=0.5)  # noqa: E731
            async with running(kube, backoff=quick) as controller:
                rounds = controller.rounds
                backoff = controller.events.backoff
                await until(lambda: backoff.first_failure is not None, "the first failed POST")
                # counted from the first failure, midway between two steps (2.5 s and 3 s): a late
                # round or a stalled host can only make a step later, never add one
                await _churn(kube, 2.75, since=backoff.first_failure)
                assert controller.rounds - rounds >= 10
                posts = sum(1 for m, p in kube.writes() if p.endswith("/events"))
                # each at 0, 0.5 and 1.5 s (then 3.5 s), and one probe per 0.5 s while none is due (at
                # 1, 2, 2.5 s; the one at 1 s stands for its 1.5 s try): 11, not once a round, nor 18
                # (every 0.5 s)
                assert posts <= 3 * 3 + 2, posts
                kube.failures.clear()
                await until(lambda: len(kube.list_objects("v1", "events", NS)) == 3, "Events once allowed", 10)
        warnings = [r for r in caplog.records if r.name == "lightmesh.controller.events" and r.levelno >= 30]
        assert len(warnings) == 3, [r.getMessage() for r in warnings]  # one per error, when it started

    run(scenario())


def test_an_object_created_again_gets_its_own_event_and_a_lasting_error_stays_recorded(monkeypatch):
    # Events were named by (object name, field, message) and remembered for the process's life: a
    # Service deleted and created again (a new uid) never got one, and once the API server expired
    # the Event (--event-ttl, 1 h) an error still present never got one again.
    from lightmesh.controller import events

    monkeypatch.setattr(events, "REFRESH_SECONDS", 0.5)
    bad = {"lightmesh.io/retry-attempts": "many"}

    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("broken", annotations=bad))
            async with running(kube) as controller:
                await until(lambda: kube.list_objects("v1", "events", NS), "an Event")
                [first] = kube.list_objects("v1", "events", NS)
                await kube_delete(kube, "broken")
                informer = controller.source.informers["services"]
                await until(lambda: (NS, "broken") not in informer.cache, "deleted")
                recreated = kube.put_object(service("broken", annotations=bad))
                uid = recreated["metadata"]["uid"]
                await until(lambda: any(e["involvedObject"].get("uid") == uid
                                        for e in kube.list_objects("v1", "events", NS)), "an Event for the new uid")
                # still present: refreshed (its TTL starts again) rather than left to expire
                patches = lambda: [p for m, p in kube.writes() if m == "PATCH" and "/events/" in p]  # noqa: E731
                await until(lambda: patches(), "the Event refreshed", timeout=5)
                # expired anyway (the API server's TTL): recorded again while the error lasts
                for e in kube.list_objects("v1", "events", NS):
                    api = KubeAPI.from_kubeconfig(server=str(kube.url))
                    try:
                        await api.request("DELETE", f"/api/v1/namespaces/{NS}/events/{e['metadata']['name']}")
                    finally:
                        await api.close()
                await until(lambda: any(e["involvedObject"].get("uid") == uid
                                        for e in kube.list_objects("v1", "events", NS)), "recorded again", 5)
                assert first["involvedObject"]["uid"] != uid

    run(scenario())


def test_a_lasting_error_counts_up_on_its_event_also_across_a_restart(monkeypatch):
    # A refresh moved lastTimestamp only: kubectl showed a lasting error as seen once. Each refresh
    # now counts it again (x2, x3 ...), and a controller started anew continues from the Event's count.
    from lightmesh.controller import events

    monkeypatch.setattr(events, "REFRESH_SECONDS", 0.3)

    def counts(kube):
        return sorted(e.get("count") for e in kube.list_objects("v1", "events", NS))

    async def scenario():
        async with cluster() as kube:
            kube.put_object(service("broken", annotations={"lightmesh.io/retry-attempts": "many"}))
            async with running(kube):
                await until(lambda: counts(kube) and counts(kube)[0] >= 3, "the Event counted up", timeout=10)
            [before] = counts(kube)
            async with running(kube, identity="restarted"):  # AlreadyExists: the count is read, not reset
                await until(lambda: counts(kube)[0] > before, "counted on after the restart", timeout=10)
            assert len(counts(kube)) == 1
            # one failed read (a 500) after a restart: the count is read again at the next refresh
            kube.fail_next("GET", "/events/", 500, "InternalError", count=1)
            [before] = counts(kube)
            async with running(kube, identity="after-a-failed-read"):
                await until(lambda: counts(kube)[0] > before + 1, "counted on after a failed read", timeout=10)
            # an install from before this release grants no `get` on events: still refreshed, uncounted
            kube.fail_next("GET", "/events/", 403, "Forbidden", count=10**6)
            [before] = counts(kube)
            refreshed = len([p for m, p in kube.writes() if m == "PATCH" and "/events/" in p])
            async with running(kube, identity="older-rbac"):
                await until(lambda: len([p for m, p in kube.writes() if m == "PATCH" and "/events/" in p])
                            >= refreshed + 2, "refreshed without get", timeout=10)
            assert counts(kube) == [before]

    run(scenario())
