"""``lightmesh demo``: local mode on ``examples/whoami`` and a scripted tour with real traffic.

Every check sends real requests through the real controller, mesh DNS and proxy on loopback and
judges what came back. The tour prints a table of check and result and exits 0 only if every check
passed. Phase one runs without ACLs (routing, TCP, split, rate limit, a crashed replica); phase two
restarts the mesh in ACL mode (identity = the client pod's source address).

The latency chart is a by-product: its directory is checked before the tour, and if drawing it
still fails afterwards (e.g. matplotlib missing) a warning says so and the exit code stays the
checks' verdict. Ports are the mesh's real ones (:meth:`LocalMesh.local_port`), so the tour passes
under high ports too (a user who may not bind port 80).
"""

from __future__ import annotations

import _thread
import argparse
import asyncio
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from lightmesh import wire
from lightmesh.local.cluster import ManifestError
from lightmesh.local.harness import Interrupted, LocalMesh, LocalModeError
from lightmesh.local.main import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, port_number, writable_file_problem
from lightmesh.local.traffic import HTTPClient, hostnames, http_burst, timed_tcp_exchanges

NAMESPACE = "whoami"
SPLIT_REQUESTS = 1000
SPLIT_TOLERANCE_POINTS = 5.0
HTTP_PORT, TCP_PORT = 80, 8080  # as the example declares them
TCP_EXCHANGES = 50


Samples = dict[str, list[float]]


def _record(samples: Samples, service: str, results) -> None:
    samples.setdefault(service, []).extend(r.seconds for r in results if r.status is not None)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def default_example() -> Path:
    """``examples/whoami`` next to the package in a checkout (editable install), else in the cwd."""
    for base in (Path(__file__).resolve().parents[3], Path.cwd()):
        candidate = base / "examples" / "whoami"
        if (candidate / "Pulumi.yaml").is_file() or candidate.is_dir():
            return candidate
    return Path("examples/whoami")


def _service(mesh: LocalMesh, name: str):
    for svc in mesh.services():
        if svc.namespace == NAMESPACE and svc.name == name:
            return svc
    raise LocalModeError(f"Service {NAMESPACE}/{name} is not in the example")


def _host(name: str) -> str:
    return f"{name}.{NAMESPACE}.traefik.mesh"


def _overlay(mesh: LocalMesh) -> list[dict]:
    """Objects the tour adds while the mesh runs: a canary split and a rate-limited Service."""
    whoami = next(o for o in mesh.manifests if o.get("kind") == "Service"
                  and o["metadata"]["name"] == "whoami" and o["metadata"].get("namespace") == NAMESPACE)
    selector = whoami["spec"]["selector"]

    def service(name: str, sel: dict, annotations: dict | None = None) -> dict:
        meta = {"name": name, "namespace": NAMESPACE}
        if annotations:
            meta["annotations"] = annotations
        return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
                "spec": {"selector": sel, "ports": [{"name": "web", "port": 80, "targetPort": 80}]}}

    v2_labels = {"app": "whoami-v2"}
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "whoami-v2", "namespace": NAMESPACE},
         "spec": {"replicas": 1, "selector": {"matchLabels": v2_labels},
                  "template": {"metadata": {"labels": v2_labels},
                               "spec": {"serviceAccountName": "whoami-server",
                                        "containers": [{"name": "whoami", "image": "traefik/whoami:v1.6.0",
                                                        "ports": [{"containerPort": 80}]}]}}}},
        service("whoami-canary", selector),
        service("whoami-v1", selector),
        service("whoami-v2", v2_labels),
        {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
         "metadata": {"name": "whoami-canary", "namespace": NAMESPACE},
         "spec": {"service": "whoami-canary",
                  "backends": [{"service": "whoami-v1", "weight": 80}, {"service": "whoami-v2", "weight": 20}]}},
        service("whoami-limited", selector, {"lightmesh.io/ratelimit-average": "5",
                                             "lightmesh.io/ratelimit-burst": "10"}),
    ]


async def check_round_robin(mesh: LocalMesh, samples: Samples) -> Check:
    svc = _service(mesh, "whoami")
    results = await asyncio.to_thread(http_burst, svc.address, mesh.local_port(HTTP_PORT), _host("whoami"), 10)
    _record(samples, "whoami", results)
    names = [r.hostname for r in results]
    ok = all(r.status == 200 for r in results) and len(set(names)) == 2 and all(
        a != b for a, b in zip(names, names[1:]))
    return Check("HTTP whoami.whoami.traefik.mesh answered by both replicas in turn", ok,
                 " → ".join(n or "?" for n in names[:4]) + " …")


async def check_tcp(mesh: LocalMesh, samples: Samples) -> Check:
    svc = _service(mesh, "whoami-tcp")
    expected = b"Received: my data"
    results = await asyncio.to_thread(timed_tcp_exchanges, svc.address, mesh.local_port(TCP_PORT), b"my data",
                                      expected, TCP_EXCHANGES)
    samples.setdefault("whoami-tcp (TCP connect + echo)", []).extend(s for a, s in results if a == expected)
    wrong = [a for a, _ in results if a != expected]
    answer = results[0][0] if results else b""
    return Check(f"TCP whoami-tcp.whoami.traefik.mesh:{TCP_PORT} 'my data'",
                 len(results) == TCP_EXCHANGES and not wrong,
                 f"{answer.decode(errors='replace')!r} ×{len(results) - len(wrong)}"
                 + (f", {len(wrong)} wrong: {wrong[0]!r}" if wrong else ""))


async def check_split(mesh: LocalMesh, samples: Samples) -> Check:
    svc = _service(mesh, "whoami-canary")
    results = await asyncio.to_thread(http_burst, svc.address, mesh.local_port(HTTP_PORT), _host("whoami-canary"),
                                      SPLIT_REQUESTS)
    _record(samples, "whoami-canary (split 80/20)", results)
    counts = Counter("v2" if (r.hostname or "").startswith("whoami-v2-") else "v1"
                     for r in results if r.status == 200)
    failed = sum(1 for r in results if r.status != 200)
    share = 100.0 * counts["v2"] / max(1, sum(counts.values()))
    ok = failed == 0 and len(results) == SPLIT_REQUESTS and abs(share - 20.0) <= SPLIT_TOLERANCE_POINTS
    return Check(f"TrafficSplit 80/20 over {SPLIT_REQUESTS} requests (±{SPLIT_TOLERANCE_POINTS:g} points)", ok,
                 f"v1 {counts['v1']}, v2 {counts['v2']} ({share:.1f}% v2), failed {failed}")


async def check_rate_limit(mesh: LocalMesh, samples: Samples) -> Check:
    svc = _service(mesh, "whoami-limited")
    results = await asyncio.to_thread(http_burst, svc.address, mesh.local_port(HTTP_PORT), _host("whoami-limited"), 30)
    _record(samples, "whoami-limited (rate limit)", results)
    statuses = Counter(r.status for r in results)
    limited = [r for r in results if r.status == 429]
    ok = statuses[200] >= 10 and len(limited) > 0 and all("retry-after" in r.headers for r in limited) \
        and statuses[200] + statuses[429] == len(results)
    return Check("rate limit (average 5/s, burst 10) answers 429 past the burst", ok,
                 f"{statuses[200]}×200, {statuses[429]}×429 of {len(results)}")


async def check_replica_crash(mesh: LocalMesh, samples: Samples) -> Check:
    svc = _service(mesh, "whoami")
    victim = sorted(p for p in mesh.standins if p.startswith(f"{NAMESPACE}/whoami-")
                    and not p.startswith(f"{NAMESPACE}/whoami-tcp") and not p.startswith(f"{NAMESPACE}/whoami-v2"))[0]
    results = []

    def traffic() -> None:
        with HTTPClient(svc.address, mesh.local_port(HTTP_PORT), _host("whoami")) as client:
            for _ in range(200):
                results.append(client.get("/"))
                time.sleep(0.002)

    task = asyncio.create_task(asyncio.to_thread(traffic))
    while len(results) < 50 and not task.done():
        await asyncio.sleep(0.01)
    await mesh.kill_pod(*victim.split("/"))
    await task
    _record(samples, "whoami (replica killed)", results)
    failed = [r for r in results if r.status != 200]
    survivors = hostnames(results[-50:])
    ok = not failed and len(results) == 200 and victim.split("/")[1] not in survivors
    return Check("replica killed mid-run: no failed request (retry-attempts 2)", ok,
                 f"{len(results) - len(failed)}/{len(results)} ok after killing {victim.split('/')[1]}")


async def check_acl(mesh: LocalMesh, samples: Samples) -> list[Check]:
    svc = _service(mesh, "whoami")
    clients = mesh.cluster.pods_of(NAMESPACE, "whoami-client")
    others = mesh.cluster.pods_of(NAMESPACE, "whoami-server")
    if not clients or not others:
        return [Check("ACL mode", False, "the example needs pods running as whoami-client and whoami-server")]
    allowed_ip, denied_ip = clients[0]["status"]["podIP"], others[0]["status"]["podIP"]
    port = mesh.local_port(HTTP_PORT)
    with HTTPClient(svc.address, port, _host("whoami"), source=allowed_ip) as c:
        allowed = await asyncio.to_thread(c.get, "/")
    with HTTPClient(svc.address, port, _host("whoami"), source=denied_ip) as c:
        denied = await asyncio.to_thread(c.get, "/")
    return [Check("ACL: whoami-client identity gets 200", allowed.status == 200,
                  f"from {allowed_ip}: {allowed.status}"),
            Check("ACL: another identity (whoami-server) gets 403", denied.status == 403,
                  f"from {denied_ip}: {denied.status}")]


def print_table(checks: list[Check], out=sys.stdout) -> None:
    width = max(len(c.name) for c in checks)
    out.write(f"\n{'check':<{width}}  result  detail\n{'-' * width}  ------  {'-' * 40}\n")
    for c in checks:
        out.write(f"{c.name:<{width}}  {'PASS' if c.passed else 'FAIL':<6}  {c.detail}\n")
    passed = sum(c.passed for c in checks)
    out.write(f"\n{passed} passed, {len(checks) - passed} failed\n")
    out.flush()


async def tour(example: Path, dns_port: int, log_level: str, samples: Samples,
               high_ports: bool | None = None) -> list[Check]:
    checks: list[Check] = []
    print(f"starting the mesh on loopback from {example} …", flush=True)
    async with LocalMesh(example, acl=False, dns_port=dns_port, log_level=log_level, high_ports=high_ports) as mesh:
        if mesh.cluster.remapped:
            moved = ", ".join(f"{old} → {new}" for old, new in sorted(mesh.cluster.remapped.items()))
            print(f"high ports: ports below {mesh.high_ports.below} answer at port + {mesh.high_ports.offset} "
                  f"({moved})", flush=True)
        checks.append(await check_round_robin(mesh, samples))
        checks.append(await check_tcp(mesh, samples))
        print("adding a canary TrafficSplit and a rate-limited Service while the mesh runs …", flush=True)
        await mesh.apply(_overlay(mesh))
        checks.append(await check_split(mesh, samples))
        checks.append(await check_rate_limit(mesh, samples))
        checks.append(await check_replica_crash(mesh, samples))
    print("restarting in ACL mode …", flush=True)
    async with LocalMesh(example, acl=True, dns_port=dns_port, log_level=log_level, high_ports=high_ports) as mesh:
        checks.extend(await check_acl(mesh, samples))
    return checks


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__.splitlines()[0]
    parser.add_argument("--example", type=Path, default=None,
                        help="the whoami example: a Pulumi program or manifests directory (default: examples/whoami)")
    parser.add_argument("--dns-port", type=port_number, default=wire.DEFAULT_LOCAL_DNS_PORT,
                        help="port of the mesh DNS on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--high-ports", action=argparse.BooleanOptionalAction, default=None,
                        help="serve ports below 1024 at port + 8000 (default: only when they cannot be bound)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="log level of the controller and proxy (default %(default)s)")
    parser.add_argument("--chart", type=Path, default=Path("lightmesh-demo-latency.png"),
                        help="where to write the latency chart (default: %(default)s in the working directory)")


def _as_ctrl_c(signum, frame) -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # started with SIGINT ignored (a background job of a script): asyncio.run installed no
        # handler of its own, and interrupt_main would do nothing
        raise KeyboardInterrupt
    _thread.interrupt_main()  # what Ctrl-C does (asyncio.run cancels the tour, which cleans up)


def run(args: argparse.Namespace) -> int:
    example = args.example or default_example()
    if not example.is_dir():
        print(f"lightmesh demo: --example {example}: no such directory", file=sys.stderr)
        return EXIT_USAGE
    problem = writable_file_problem(args.chart, "--chart")
    if problem:
        print(f"lightmesh demo: {problem}", file=sys.stderr)
        return EXIT_USAGE
    samples: Samples = {}
    # SIGTERM and SIGHUP stop the demo as Ctrl-C does (the tour's mesh stops, its work directory
    # goes); by default they ended the process on the spot and left the directory behind
    previous = {sig: signal.signal(sig, _as_ctrl_c) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        checks = asyncio.run(tour(example, args.dns_port, args.log_level, samples, args.high_ports))
    except KeyboardInterrupt:  # Ctrl-C, SIGTERM or SIGHUP: the tour's mesh has stopped (asyncio.run waited)
        print("lightmesh demo: interrupted; stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Interrupted as exc:  # the render saw the Ctrl-C first
        print(f"lightmesh demo: {exc}; stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (LocalModeError, ManifestError) as exc:
        print(f"lightmesh demo: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print_table(checks)
    try:
        from lightmesh.local.chart import latency_chart

        path = latency_chart(samples, args.chart, "Latency through the mesh (lightmesh demo)")
        print(f"latency distribution per service: {path.resolve()}")
    except (ImportError, ValueError, OSError) as exc:  # matplotlib is in the dev/bench extras, not the image
        print(f"warning: latency chart not written ({exc}); the checks' result stands", file=sys.stderr)
    return 0 if checks and all(c.passed for c in checks) else EXIT_RUNTIME
