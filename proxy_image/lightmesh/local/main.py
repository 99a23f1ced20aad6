"""``lightmesh local PATH``: the mesh on loopback until Ctrl-C, with the commands to reach it."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

from lightmesh import wire
from lightmesh.local.cluster import ManifestError
from lightmesh.local.harness import LocalMesh, LocalModeError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the whole mesh on loopback: PATH is a directory of Kubernetes manifests or a Pulumi "
                          "program (rendered offline first). Every pod gets its own 127.x address, the example "
                          "images get stand-ins, and the real controller, mesh DNS and proxy run around them.")
    parser.add_argument("path", help="directory of manifests, a manifest file, or a Pulumi program directory")
    parser.add_argument("--acl", action="store_true", help="ACL mode: deny by default, allow by TrafficTarget")
    parser.add_argument("--dns-port", type=int, default=wire.DEFAULT_LOCAL_DNS_PORT,
                        help="port of the mesh DNS on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--endpoints", metavar="FILE", help="write services, pods, DNS and admin URLs as JSON")
    parser.add_argument("--proxy-workers", type=int, default=1, help="proxy worker processes (default 1)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--telemetry", action="store_true",
                        help="print a live table (req/s by code class, errors, p50/p99, retries, 429s, 403s per "
                             "service) from the proxy's /metrics, refreshed every --interval seconds")
    parser.add_argument("--interval", type=float, default=2.0, help="telemetry refresh interval (default 2 s)")


def describe(mesh: LocalMesh) -> str:
    lines = [f"Lightmesh is running on loopback (mesh DNS 127.0.0.1:{mesh.dns_port}, "
             f"controller {mesh.api_url}, proxy admin {mesh.admin_url}).", ""]
    for svc in mesh.services():
        if not svc.address:
            lines.append(f"  {svc.namespace}/{svc.name}: not in the mesh (see {mesh.api_url}{wire.TOPOLOGY_PATH})")
            continue
        host = svc.mesh_names[1] if len(svc.mesh_names) > 1 else svc.mesh_names[0]
        for port in svc.ports:
            p = port["port"]
            if svc.traffic_type == "http":
                suffix = "" if p == 80 else f":{p}"
                lines.append(f"  curl --resolve {host}:{p}:{svc.address} http://{host}{suffix}/")
            elif svc.traffic_type == "tcp":
                lines.append(f"  echo 'my data' | nc -q 1 {svc.address} {p}        # {host}:{p}")
            else:
                lines.append(f"  echo 'my data' | nc -u -w 1 {svc.address} {p}    # {host}:{p}")
    lines += ["", f"  dig @127.0.0.1 -p {mesh.dns_port} whoami.whoami.traefik.mesh   # names resolve through the mesh DNS",
              "", "Press Ctrl-C to stop."]
    return "\n".join(lines)


async def _scrape(url: str):
    import time
    import urllib.request

    from lightmesh import telemetry

    def fetch() -> str:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.read().decode()

    text = await asyncio.to_thread(fetch)
    return telemetry.parse(text, at=time.monotonic())


async def _telemetry(mesh: LocalMesh, stop: asyncio.Event, interval: float) -> None:
    """Refresh a summary table until stopped; on a terminal, redraw in place."""
    from lightmesh import telemetry

    redraw = sys.stdout.isatty()
    previous = await _scrape(mesh.admin_url + "/metrics")
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
            break
        except asyncio.TimeoutError:
            pass
        try:
            current = await _scrape(mesh.admin_url + "/metrics")
        except OSError as exc:
            print(f"telemetry: proxy metrics unavailable ({exc})", flush=True)
            continue
        table = telemetry.summary_table(telemetry.service_stats(previous, current),
                                        f"Lightmesh telemetry — last {current.at - previous.at:.1f} s")
        previous = current
        print(("\033[H\033[J" if redraw else "\n") + table, flush=True)


async def _run(args: argparse.Namespace) -> int:
    mesh = LocalMesh(args.path, acl=args.acl, dns_port=args.dns_port, proxy_workers=args.proxy_workers,
                     log_level=args.log_level)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await mesh.start()
        if args.endpoints:
            Path(args.endpoints).write_text(json.dumps(mesh.endpoints(), indent=2) + "\n")
        for warning in mesh.cluster.warnings:
            print(f"note: {warning}")
        print(describe(mesh), flush=True)
        if args.telemetry:
            await _telemetry(mesh, stop, args.interval)
        await stop.wait()
        print("stopping…", flush=True)
        return 0
    except (LocalModeError, ManifestError) as exc:
        print(f"lightmesh local: {exc}", file=sys.stderr)
        return 1
    finally:
        await mesh.stop()


def run(args: argparse.Namespace) -> int:
    if not Path(args.path).exists():
        print(f"lightmesh local: {args.path}: no such file or directory", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))
