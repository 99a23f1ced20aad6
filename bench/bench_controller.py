"""Controller pure core: cluster state → topology → proxy config, at 100 / 1,000 / 5,000 Services.

Each Service has 3 ready pods (EndpointSlice with targetRefs); half the Services are in ACL policy:
a TrafficTarget from a client ServiceAccount with an HTTPRouteGroup of two matches; every tenth
Service is the root of a TrafficSplit over two backend Services. ACL is on (the most work).
Reports the median of 3 builds (``build()``: topology, ports, shadow Services, config validated
and hashed), the time per Service (flat = linear growth) and peak Python memory (tracemalloc, in
a separate run since tracing slows the build). Goal: 5,000 Services in under 1 s (CPU time: wall time
on a shared machine also measures the neighbours; both are recorded). Those are cold builds (what
the controller does at start). Also recorded: the CPU time of a warm rebuild as the controller does
it after one Service changed (``build()`` with the caches it keeps: ``ConfigAssembler``,
``TopologyCache``, ``ProviderCache``).

Then the event → version latency at 1,000 Services (same generator): the real controller shell in
process (``KubeSource`` watches against the kmock API server of tests/controller/kube.py, the
``Controller`` reconcile loop with its debounce, ``ConfigStore``, the HTTP API's long poll on
127.0.0.1), 200 changes one at a time (in turn: an annotation edit on a Service, an address moved in
an EndpointSlice, a pod back with another IP: its Pod status then its EndpointSlice), each timed
from the API write to the new version published in the ``ConfigStore`` and to its arrival at a
long-polling client of ``/api/configuration/current``. Goal: p99 under 100 ms.

Why this set-up: the ``KubeSource`` against kmock is the controller's real cluster path (list, then
watches streamed over HTTP on 127.0.0.1, informer caches, ``on_change``), where the file source
would add its 0.2 s poll to every change. The shadow Services a previous leader wrote are in the
API before the start (steady state: the writer has nothing to do) and the writer and Event
recorder run as in ``main.py``. kmock runs in the same process and event loop, so its own work
for each write counts in the latency (pessimistic). A change is written with kmock's
``patch_object`` (another client's merge patch: stored and its watch event queued at that instant;
the clock starts just before). Changes are 0.15 s apart, so each is a lone change after a quiet
period, as most cluster events are.

``--quick``: 100/1,000 Services and 50 changes. ``--latency-only`` / ``--build-only``.

Writes bench/results/controller.json and controller.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "proxy_image"), str(HERE.parent)]  # tests.controller.kube: the API

from lightmesh.controller.build import build  # noqa: E402
from lightmesh.controller.model import ClusterState, Settings  # noqa: E402

SIZES = (100, 1000, 5000)
GOAL_SECONDS = 1.0


def cluster(n: int) -> ClusterState:
    services, slices, pods, targets, groups, splits = [], [], [], [], [], []
    for i in range(n):
        ns, name, sa = f"ns{i % 50}", f"svc{i}", f"sa{i}"
        services.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
                         "spec": {"clusterIP": f"10.96.{i // 250}.{i % 250 + 1}", "selector": {"app": name},
                                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}})
        endpoints = []
        for j in range(3):
            ip = f"10.{1 + i // 20000}.{(i * 3 + j) // 250 % 250}.{(i * 3 + j) % 250 + 1}"
            pod = f"{name}-{j}"
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "namespace": ns},
                         "spec": {"serviceAccountName": sa}, "status": {"phase": "Running", "podIP": ip}})
            endpoints.append({"addresses": [ip], "conditions": {"ready": True},
                              "targetRef": {"kind": "Pod", "name": pod, "namespace": ns}})
        slices.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                       "metadata": {"name": f"{name}-abcde", "namespace": ns,
                                    "labels": {"kubernetes.io/service-name": name}},
                       "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                       "endpoints": endpoints})
        if i % 2 == 0:
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"client{i}", "namespace": ns},
                         "spec": {"serviceAccountName": f"client{i}"},
                         "status": {"phase": "Running", "podIP": f"10.200.{i // 250 % 250}.{i % 250 + 1}"}})
            groups.append({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                           "metadata": {"name": f"routes{i}", "namespace": ns},
                           "spec": {"matches": [{"name": "api", "pathRegex": "/api", "methods": ["GET", "POST"]},
                                                {"name": "health", "pathRegex": "/health"}]}})
            targets.append({"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
                            "metadata": {"name": f"tt{i}", "namespace": ns},
                            "spec": {"destination": {"kind": "ServiceAccount", "name": sa, "namespace": ns},
                                     "sources": [{"kind": "ServiceAccount", "name": f"client{i}", "namespace": ns}],
                                     "rules": [{"kind": "HTTPRouteGroup", "name": f"routes{i}"}]}})
        if i % 20 == 0 and i + 150 < n:  # backends: same namespace (i % 50), never roots themselves
            splits.append({"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
                           "metadata": {"name": f"split{i}", "namespace": ns},
                           "spec": {"service": name, "backends": [{"service": f"svc{i + 50}", "weight": 90},
                                                                  {"service": f"svc{i + 150}", "weight": 10}]}})
    return ClusterState(services=services, endpoint_slices=slices, pods=pods, traffic_targets=targets,
                        http_route_groups=groups, traffic_splits=splits)


def warm_rebuild_cpu(state: ClusterState, settings: Settings) -> float:
    """Median CPU seconds of the controller's rebuild after one Service changed (caches warm)."""
    import copy

    from lightmesh.controller.reconcile import _build_caches

    caches = _build_caches()  # what the Controller keeps
    result = build(state, settings, 1, **caches)
    cpu = []
    for k in range(5):
        i = (k * 7919) % len(state.services)
        svc = copy.deepcopy(state.services[i])  # the sources replace a changed object
        svc["metadata"].setdefault("annotations", {})["mesh.traefik.io/retry-attempts"] = str(2 + k)
        state.services[i] = svc
        gc.collect()
        start = time.process_time()
        result = build(state, settings, 1, previous_ports=result.ports, **caches)
        cpu.append(time.process_time() - start)
    return statistics.median(cpu)


def measure(n: int, settings: Settings) -> dict:
    state = cluster(n)
    times, cpu = [], []
    result = None
    for _ in range(3):
        gc.collect()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = build(state, settings, 1)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    median, median_cpu = statistics.median(times), statistics.median(cpu)
    gc.collect()
    tracemalloc.start()
    build(state, settings, 1)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"services": n, "pods": len(state.pods), "traffic_targets": len(state.traffic_targets),
            "traffic_splits": len(state.traffic_splits), "routers": len(result.config.http.routers),
            "errors": len(result.errors), "median_seconds": round(median, 4),
            "median_cpu_seconds": round(median_cpu, 4), "runs_seconds": [round(t, 4) for t in times],
            "ms_per_service": round(median * 1000 / n, 4), "cpu_ms_per_service": round(median_cpu * 1000 / n, 4),
            "peak_mib": round(peak / 2**20, 1),
            "warm_rebuild_cpu_ms": round(warm_rebuild_cpu(state, settings) * 1000, 1)}


# =========================================================================== event → version latency

LATENCY_SERVICES = 1000
LATENCY_CHANGES = 200  # nearest-rank p99 of 200 samples is the 198th: one stray pause does not decide it
LATENCY_GOAL_MS = 100.0
LATENCY_BUDGET_SECONDS = 120.0  # the whole latency run (set-up included) stops after this
SETTLE_SECONDS = 1.0  # quiet this long (no publish) before the changes start
GAP_SECONDS = 0.15  # between two changes: each one arrives after a quiet period (> reconcile.QUIET_SECONDS)
MESH = "lightmesh"


def _percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the largest but none)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))] if ordered else float("nan")


async def _latency_run(n: int, changes: int, budget: float) -> dict:
    """The real shell in process: kmock API server (tests/controller/kube.py) → KubeSource watches →
    Controller (debounce, build, publish) → ConfigStore → the API's long poll on 127.0.0.1."""
    import aiohttp

    from lightmesh import wire
    from lightmesh.controller.api import ConfigStore, ControllerAPI
    from lightmesh.controller.dns import DNSTable, MeshDNS
    from lightmesh.controller.events import EventRecorder
    from lightmesh.controller.metrics import ControllerMetrics
    from lightmesh.controller.reconcile import Controller
    from lightmesh.controller.sources import KubeAPI, KubeSource, ObjectFilter
    from lightmesh.controller.writer import KubeShadowWriter
    from tests.controller.kube import cluster as kube_cluster

    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget
    settings = Settings(acl=True, mesh_namespace=MESH)
    state = cluster(n)
    published: list[tuple[int, float]] = []  # (version, monotonic) of every publish
    new_version = asyncio.Event()

    class TimedStore(ConfigStore):
        def publish(self, config, result=None) -> None:
            super().publish(config, result)
            published.append((config.version, time.monotonic()))
            new_version.set()

    async with kube_cluster() as kube:
        for fieldname in ("services", "endpoint_slices", "pods", "traffic_targets", "http_route_groups",
                          "traffic_splits"):
            for obj in getattr(state, fieldname):
                kube.put_object(obj, notify=False)
        # steady state: the shadow Services a previous leader wrote (with ClusterIPs) are there,
        # so the writer has nothing to do and only the changes below move the config
        for i, shadow in enumerate(build(state, settings, 1).shadow_services):
            shadow = json.loads(json.dumps(shadow))
            shadow["spec"]["clusterIP"] = f"10.97.{i // 250}.{i % 250 + 1}"
            kube.put_object(shadow, notify=False)
        api = KubeAPI.from_kubeconfig(server=str(kube.url))
        metrics = ControllerMetrics()
        source = KubeSource(api, ObjectFilter.create(MESH), metrics=metrics)
        store = TimedStore()
        controller = Controller(settings, source, store=store, metrics=metrics,
                                dns=MeshDNS(DNSTable(settings.domains)),
                                kube_writer=KubeShadowWriter(api, MESH, metrics),
                                events=EventRecorder(api, "bench", uids=source.uid, api_versions=source.api_versions),
                                freeze_gc_after_sync=True)  # as main.py
        http_api = ControllerAPI(store, metrics, ready=controller.ready)
        port = await http_api.start("127.0.0.1", 0)
        notified: list[float] = []  # monotonic: the source told the controller (watch event applied)
        rounds_at: list[tuple[float, float, float]] = []  # (start, end, CPU seconds) of every reconcile round
        notify, reconcile_once = controller.notify, controller.reconcile_once

        def timed_notify() -> None:
            notified.append(time.monotonic())
            notify()

        def timed_reconcile():
            start, cpu = time.monotonic(), time.thread_time()
            try:
                return reconcile_once()
            finally:
                rounds_at.append((start, time.monotonic(), time.thread_time() - cpu))

        source.on_change, controller.reconcile_once = timed_notify, timed_reconcile
        task = asyncio.create_task(controller.run())
        served: list[tuple[int, float]] = []  # (version, monotonic) as a long-polling proxy receives them

        async def proxy_poll(session: aiohttp.ClientSession) -> None:
            etag = None
            while True:
                headers = {"If-None-Match": etag} if etag else {}
                async with session.get(f"http://127.0.0.1:{port}{wire.CONFIG_PATH}", headers=headers) as resp:
                    if resp.status == 200:
                        await resp.read()
                        served.append((int(resp.headers[wire.HEADER_CONFIG_VERSION]), time.monotonic()))
                        etag = resp.headers["ETag"]
                    elif resp.status == 503:
                        await asyncio.sleep(0.1)

        session = aiohttp.ClientSession()
        poller = asyncio.create_task(proxy_poll(session))
        samples: list[dict] = []
        timed_out = 0
        try:
            started = loop.time()
            while not controller.ready() and loop.time() < deadline and not task.done():
                await asyncio.sleep(0.05)
            if task.done():
                task.result()
            sync_seconds = loop.time() - started
            # settle: nothing published for SETTLE_SECONDS (first sync, shadow writes coming back)
            while loop.time() < deadline and (not published or time.monotonic() - published[-1][1] < SETTLE_SECONDS):
                await asyncio.sleep(0.1)
            rounds_before = controller.rounds
            first_change = time.monotonic()
            busy_before, ours_before = _machine_busy_seconds(), time.process_time()
            for k in range(changes):
                if loop.time() + 5 > deadline:
                    break
                i = (k * 379) % n  # spread over namespaces and Services
                ns, name = f"ns{i % 50}", f"svc{i}"
                version = controller.version
                new_version.clear()
                if k % 3 == 0:  # annotation edit: a retry middleware appears / changes
                    kind = "annotation"
                    # on a Service with a TrafficTarget (even i): in ACL mode one without has only
                    # its deny router, so its retry setting changes nothing and no version follows
                    i -= i % 2
                    ns, name = f"ns{i % 50}", f"svc{i}"
                    t0 = time.monotonic()
                    kube.patch_object("v1", "services", ns, name, {
                        "metadata": {"annotations": {"mesh.traefik.io/retry-attempts": str(2 + k % 7)}}})
                else:
                    # endpoint: the EndpointSlice alone changes (an address moves); pod: a pod came back
                    # with another IP, as a cluster shows it: the Pod's status, then its EndpointSlice
                    kind = "endpoint" if k % 3 == 1 else "pod"
                    slice_ = kube.get_object("discovery.k8s.io/v1", "endpointslices", ns, f"{name}-abcde")
                    endpoints = slice_["endpoints"]
                    new_ip = f"10.250.{k // 250}.{k % 250 + 1}"
                    endpoints[0]["addresses"] = [new_ip]
                    t0 = time.monotonic()
                    if kind == "pod":
                        kube.patch_object("v1", "pods", ns, endpoints[0]["targetRef"]["name"],
                                          {"status": {"podIP": new_ip, "podIPs": [{"ip": new_ip}]}})
                    kube.patch_object("discovery.k8s.io/v1", "endpointslices", ns, f"{name}-abcde",
                                      {"endpoints": endpoints})
                try:
                    await asyncio.wait_for(_until_version(controller, version, new_version), 5.0)
                except asyncio.TimeoutError:
                    timed_out += 1
                    continue
                at = next(t for v, t in published if v > version)
                for _ in range(100):  # the long poll answers right after the publish
                    got = next((t for v, t in served if v > version), None)
                    if got is not None:
                        break
                    await asyncio.sleep(0.01)
                seen = next((t for t in notified if t >= t0), at)
                start, end, cpu = next(((a, b, c) for a, b, c in rounds_at if a >= seen), (seen, at, 0.0))

                def ms(t: float | None) -> float | None:
                    return None if t is None else round((t - t0) * 1000, 2)

                gc_ms = sum(d for _, t, d in GC_PAUSES if t0 <= t <= (got or at)) * 1000
                samples.append({"change": kind, "service": f"{ns}/{name}", "publish_ms": ms(at), "served_ms": ms(got),
                                "watch_ms": ms(seen), "round_start_ms": ms(start), "round_ms": round((end - start) * 1000, 2),
                                "round_cpu_ms": round(cpu * 1000, 2),
                                "gc_ms": round(gc_ms, 2)})
                await asyncio.sleep(GAP_SECONDS)
            rounds = controller.rounds - rounds_before
            elapsed = time.monotonic() - first_change
            busy_after, ours = _machine_busy_seconds(), time.process_time() - ours_before
            foreign_cores = None if busy_before is None or busy_after is None else \
                round(max(0.0, busy_after - busy_before - ours) / elapsed, 2)
        finally:
            poller.cancel()
            task.cancel()
            await asyncio.gather(poller, task, return_exceptions=True)
            await session.close()
            await http_api.stop()
            await api.close()
    publish = [s["publish_ms"] for s in samples]
    served_ms = [s["served_ms"] for s in samples if s["served_ms"] is not None]
    summary = {"services": n, "changes_asked": changes, "changes_measured": len(samples), "timed_out": timed_out,
               "reconcile_rounds": rounds, "sync_seconds": round(sync_seconds, 2),
               "foreign_cores": foreign_cores, "cores": os.cpu_count(),
               "debounce_ms": controller.debounce_seconds * 1000}
    for label, values in (("publish", publish), ("served", served_ms)):
        summary[label] = {f"p{q}_ms": round(_percentile(values, q), 1) for q in (50, 95, 99)} | {
            "max_ms": round(max(values), 1) if values else None}
    summary["served_by_change"] = {
        kind: {f"p{q}_ms": round(_percentile(values, q), 1) for q in (50, 99)} | {"count": len(values)}
        for kind in ("annotation", "endpoint", "pod")
        if (values := [s["served_ms"] for s in samples if s["change"] == kind and s["served_ms"] is not None])}
    measured = [p for p in GC_PAUSES if p[1] >= first_change] if samples else []
    summary["gc_runs_during_changes"] = {f"gen{g}": sum(1 for p in measured if p[0] == g) for g in range(3)}
    summary["gc_longest_ms"] = round(max((p[2] for p in measured), default=0) * 1000, 1)
    for label in ("watch_ms", "round_start_ms", "round_ms", "round_cpu_ms", "gc_ms"):  # where the time goes (medians)
        values = [s[label] for s in samples if s[label] is not None]
        summary.setdefault("median_breakdown_ms", {})[label] = round(statistics.median(values), 1) if values else None
    cpu = [s["round_cpu_ms"] for s in samples]
    summary["round_cpu"] = {f"p{q}_ms": round(_percentile(cpu, q), 1) for q in (50, 95, 99)}
    summary["samples"] = samples
    return summary


async def _until_version(controller, version: int, event: asyncio.Event) -> None:
    while controller.version <= version:
        await event.wait()
        event.clear()


def measure_latency(n: int = LATENCY_SERVICES, changes: int = LATENCY_CHANGES,
                    budget: float = LATENCY_BUDGET_SECONDS) -> dict | None:
    try:
        import kmock  # noqa: F401 - a dev dependency (tests/controller/kube.py)
    except ImportError:
        print("event → version latency: skipped (kmock is not installed: pip install -e '.[dev]')")
        return None
    logging.getLogger("lightmesh").setLevel(logging.WARNING)
    GC_PAUSES.clear()
    gc.callbacks.append(_on_gc)
    try:
        return asyncio.run(_latency_run(n, changes, budget))
    finally:
        gc.callbacks.remove(_on_gc)
        gc.unfreeze()  # the controller froze what existed after its first round (as in main.py)


def _machine_busy_seconds() -> float | None:
    """CPU seconds every process on the machine has used (from /proc/stat): less ours = the neighbours'."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


GC_PAUSES: list[tuple[int, float, float]] = []  # (generation, monotonic start, seconds) of cyclic GC runs
_gc_started: list[float] = []


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[:] = [time.monotonic()]
    elif _gc_started:
        GC_PAUSES.append((info["generation"], _gc_started[0], time.monotonic() - _gc_started[0]))


def _latency_lines(lat: dict | None) -> list[str]:
    if lat is None:
        return ["", "Event → version latency: not measured (kmock missing)."]
    pub, srv, cpu, br = lat["publish"], lat["served"], lat["round_cpu"], lat["median_breakdown_ms"]
    return ["", f"# Watch event → new config version, {lat['services']} services (ACL on)", "",
            f"{lat['changes_measured']} changes one at a time, in turn an annotation edit on a Service, an address "
            "moved in an EndpointSlice, and a pod back with another IP (its Pod status, then its EndpointSlice) "
            f"({lat['timed_out']} timed out), each timed from the "
            "write in the API server (kmock, in process) through the watch, the debounce and the build to:", "",
            "| until | p50 ms | p95 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|",
            f"| published in the ConfigStore | {pub['p50_ms']} | {pub['p95_ms']} | {pub['p99_ms']} | {pub['max_ms']} |",
            f"| received by a long poll of /api/configuration/current | {srv['p50_ms']} | {srv['p95_ms']} | "
            f"{srv['p99_ms']} | {srv['max_ms']} |",
            f"| (CPU time of the reconcile round alone) | {cpu['p50_ms']} | {cpu['p95_ms']} | {cpu['p99_ms']} | |", "",
            "Received by the long poll, by kind of change: " + ", ".join(
                f"{kind} p50 {v['p50_ms']} / p99 {v['p99_ms']} ms ({v['count']})"
                for kind, v in lat.get("served_by_change", {}).items()) + ".", "",
            f"Medians: the watch event reaches the controller after {br['watch_ms']} ms, the round starts at "
            f"{br['round_start_ms']} ms (debounce after a quiet period), the round takes {br['round_ms']} ms wall / "
            f"{br['round_cpu_ms']} ms CPU, cyclic GC {br['gc_ms']} ms. Cyclic GC runs during the changes: "
            f"{lat['gc_runs_during_changes']}, the longest {lat['gc_longest_ms']} ms.",
            f"Other processes used {lat['foreign_cores']} of the {lat['cores']} cores meanwhile (wall times above include "
            "waiting for a core).", "",
            f"Goal: p99 under {LATENCY_GOAL_MS:g} ms (received by the long poll): "
            f"{'met' if lat['met'] else 'NOT met'}. Initial list + first build: {lat['sync_seconds']} s; "
            f"{lat['reconcile_rounds']} reconcile rounds for the changes."]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100/1,000 services, 50 changes")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--changes", type=int, default=None)
    args = parser.parse_args(argv if argv is not None else [])
    settings = Settings(acl=True)
    rows = []
    sizes = SIZES[:2] if args.quick else SIZES
    for n in () if args.latency_only else sizes:
        row = measure(n, settings)
        rows.append(row)
        print(f"{n:>6} services: {row['median_seconds']:.3f} s median wall, {row['median_cpu_seconds']:.3f} s CPU "
              f"({row['cpu_ms_per_service']:.3f} CPU ms/service), "
              f"peak {row['peak_mib']} MiB, {row['routers']} routers, {row['errors']} errors; warm rebuild after "
              f"one change {row['warm_rebuild_cpu_ms']} ms CPU", flush=True)
    lat = None
    if not args.build_only:
        lat = measure_latency(changes=args.changes or (50 if args.quick else LATENCY_CHANGES))
        if lat is not None:
            lat["met"] = lat["changes_measured"] > 0 and lat["timed_out"] == 0 and \
                lat["served"]["p99_ms"] < LATENCY_GOAL_MS
            print(f"event → version at {lat['services']} services, {lat['changes_measured']} changes: "
                  f"publish p50/p95/p99 {lat['publish']['p50_ms']}/{lat['publish']['p95_ms']}/"
                  f"{lat['publish']['p99_ms']} ms, served p50/p95/p99 {lat['served']['p50_ms']}/"
                  f"{lat['served']['p95_ms']}/{lat['served']['p99_ms']} ms "
                  f"({'met' if lat['met'] else 'NOT met'}; {lat['timed_out']} timed out); medians: watch event in "
                  f"{lat['median_breakdown_ms']['watch_ms']} ms, round starts at {lat['median_breakdown_ms']['round_start_ms']}"
                  f" ms, round takes {lat['median_breakdown_ms']['round_ms']} ms; cyclic GC during the changes "
                  f"{lat['gc_runs_during_changes']}, longest {lat['gc_longest_ms']} ms; round CPU p50/p99 "
                  f"{lat['round_cpu']['p50_ms']}/{lat['round_cpu']['p99_ms']} ms; neighbours used "
                  f"{lat['foreign_cores']} of {lat['cores']} cores meanwhile", flush=True)
    # Judged on CPU time: the machine is shared, wall time also measures the neighbours.
    build_ok = all(r["errors"] == 0 for r in rows) and all(
        r["median_cpu_seconds"] < GOAL_SECONDS for r in rows if r["services"] == 5000)
    ok = build_ok and (lat is None or lat["met"])
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    name = "controller-quick" if args.quick or args.build_only or args.latency_only else "controller"
    (out / f"{name}.json").write_text(json.dumps({
        "goal_seconds_at_5000": GOAL_SECONDS, "latency_goal_p99_ms": LATENCY_GOAL_MS, "met": ok,
        "python": sys.version.split()[0], "commit": _commit(), "rows": rows, "latency": lat}, indent=2) + "\n")
    lines = ["# Controller build (topology + config), ACL on", "",
             "| services | pods | TrafficTargets | splits | routers | median wall s | median CPU s | CPU ms/service "
             "| peak MiB | warm rebuild CPU ms |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['services']} | {r['pods']} | {r['traffic_targets']} | {r['traffic_splits']} | {r['routers']} | "
              f"{r['median_seconds']} | {r['median_cpu_seconds']} | {r['cpu_ms_per_service']} | {r['peak_mib']} | "
              f"{r['warm_rebuild_cpu_ms']} |"
              for r in rows]
    if rows:
        largest = rows[-1]
        lines += ["", f"Goal: 5000 services in under {GOAL_SECONDS} s of CPU: "
                  f"{('met' if build_ok else 'NOT met') if largest['services'] == 5000 else 'not measured (quick)'} "
                  "(wall time on a shared machine includes the neighbours' load).",
                  "Median of 3 cold builds; peak = tracemalloc peak of one more build; warm rebuild = median CPU "
                  "of 5 rebuilds after one Service changed, with the caches the controller keeps."]
    lines += _latency_lines(lat) if not args.build_only else []
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


def _commit() -> str | None:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                              timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
