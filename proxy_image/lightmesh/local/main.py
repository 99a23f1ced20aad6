"""``lightmesh local PATH``: the mesh on loopback until Ctrl-C, with the commands to reach it.

Owns the command line (validated before anything starts: a bad flag is a usage error, exit 2),
what is printed to reach each Service, the ``--endpoints`` file and the ``--telemetry`` table.
Runtime failures are one line on stderr and exit 1; Ctrl-C before the mesh is up exits 130. Ctrl-C,
SIGTERM and SIGHUP stop the mesh and exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

from lightmesh import wire
from lightmesh.cliargs import port_number
from lightmesh.local.cluster import ManifestError
from lightmesh.local.harness import Interrupted, LocalMesh, LocalModeError, ServiceAccess

EXIT_USAGE, EXIT_RUNTIME, EXIT_INTERRUPTED = 2, 1, 130
WATCH_SECONDS = 1.0  # how often a serving mesh checks that its controller and proxy still run


# ---------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def proxy_workers(text: str) -> int:
    """--proxy-workers: what ``lightmesh proxy --workers`` takes (checked here, not by a proxy that
    would exit at start)."""
    from lightmesh.proxy.main import MAX_WORKERS

    value = positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WORKERS}, got {value}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def writable_file_problem(path: Path, flag: str) -> str | None:
    """Why ``path`` cannot be written as a file (checked before the mesh starts), or None."""
    parent = path.parent
    if path.is_dir():
        return f"{flag} {path}: is a directory; give a file name"
    if not parent.is_dir():
        return f"{flag} {path}: directory {parent} does not exist; create it or choose another path"
    if not os.access(parent, os.W_OK):
        return f"{flag} {path}: directory {parent} is not writable; choose another path"
    return None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the whole mesh on loopback: PATH is a directory of Kubernetes manifests or a Pulumi "
                          "program (rendered offline first). Every pod gets its own 127.x address, the example "
                          "images get stand-ins, and the real controller, mesh DNS and proxy run around them, the "
                          "controller with the mesh settings the manifests' controller Deployment (MeshInstall) "
                          "declares. Ctrl-C, SIGTERM or SIGHUP stop everything; after a SIGKILL the processes it "
                          "started stop by themselves (Linux).")
    parser.add_argument("path", help="directory of manifests (*.yaml, *.yml and *.json, recursively; an object "
                                     "declared twice: the later one is used), a manifest file, or a Pulumi program "
                                     "directory")
    parser.add_argument("--acl", action=argparse.BooleanOptionalAction, default=None,
                        help="ACL mode: deny by default, allow by TrafficTarget (default: as the manifests declare, "
                             "i.e. on when they run the controller with --acl, as MeshInstall(acl=True) does)")
    parser.add_argument("--dns-port", type=port_number, default=wire.DEFAULT_LOCAL_DNS_PORT,
                        help="port of the mesh DNS on 127.0.0.1 (default %(default)s)")
    parser.add_argument("--endpoints", metavar="FILE", type=Path,
                        help="write services, pods, DNS and admin URLs as JSON")
    parser.add_argument("--proxy-workers", type=proxy_workers, default=1,
                        help="proxy worker processes, 1 to 256 (default 1)")
    parser.add_argument("--high-ports", action=argparse.BooleanOptionalAction, default=None,
                        help="serve Service and pod ports below 1024 at port + 8000 (80 → 8080; a larger offset "
                             "if that collides). Default: only when this user may not bind them (neither root nor "
                             "CAP_NET_BIND_SERVICE)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                        help="log level of the controller and proxy (their logs are in the work directory printed "
                             "at start, removed at exit; default %(default)s)")
    parser.add_argument("--telemetry", action="store_true",
                        help="print a live table (per HTTP service: req/s by code class, errors, p50/p99, retries, "
                             "429s, 403s; per TCP/UDP route: connections/s, bytes/s, errors, denied) from the "
                             "proxy's /metrics, refreshed every --interval seconds")
    parser.add_argument("--interval", type=positive_seconds, default=2.0,
                        help="telemetry refresh interval in seconds (default 2)")


# ---------------------------------------------------------------------------- what users see


def access_lines(mesh: LocalMesh, svc: ServiceAccess) -> list[str]:
    """The commands that reach one Service (in ACL mode: sent as a pod that is let in)."""
    if svc.excluded or not svc.address:
        reason = svc.excluded or "the mesh DNS has no address for it"
        return [f"  {svc.namespace}/{svc.name}: not in the mesh ({reason})"]
    client = (svc.allowed_sources or [None])[0] if mesh.acl else None
    note = ""
    if mesh.acl:
        note = (f"as {client['pod']} (ACL mode: identity = source address)" if client
                else "ACL mode: no TrafficTarget lets any pod in, so this is refused")
    lines = []
    for port in svc.ports:
        p = port["port"]
        if (svc.traffic_type == "udp") != (str(port.get("protocol", "TCP")).upper() == "UDP"):
            continue  # a udp Service meshes its UDP ports only, http/tcp ones their TCP ports
        if svc.traffic_type == "http":
            interface = f"--interface {client['address']} " if client else ""
            suffix = "" if p == 80 else f":{p}"
            lines.append(f"  curl {interface}--resolve {svc.host}:{p}:{svc.address} http://{svc.host}{suffix}/"
                         + (f"   # {note}" if note else ""))
        else:
            source = f"-s {client['address']} " if client else ""
            flags = "-u -w 1" if svc.traffic_type == "udp" else "-q 1"
            lines.append(f"  echo 'my data' | nc {flags} {source}{svc.address} {p}   # {svc.host}:{p}"
                         + (f", {note}" if note else ""))
    if lines and svc.ready_endpoints == 0:
        lines.append(f"    (no ready endpoints behind {svc.namespace}/{svc.name}: no running pod is selected or serves "
                     f"its targetPort, so HTTP answers 503 and TCP/UDP connections are closed)")
    return lines


def describe(mesh: LocalMesh, services: list[ServiceAccess] | None = None) -> str:
    services = mesh.services() if services is None else services
    lines = [f"Lightmesh is running on loopback (mesh DNS 127.0.0.1:{mesh.dns_port}, "
             f"controller {mesh.api_url}, proxy admin {mesh.admin_url}; logs in {mesh.log_dir})."]
    if mesh.acl:
        why = mesh.acl_reason if mesh.acl_requested else f"{mesh.acl_reason}; --no-acl turns it off"
        lines.append(f"ACL mode: on ({why}): a client's identity is its source address, so curl --interface / "
                     "nc -s send as a pod TrafficTargets let in.")
    if mesh.declared is not None and mesh.declared.differences():
        lines.append(f"Mesh settings of {mesh.declared.where} (MeshInstall): {'; '.join(mesh.declared.differences())}.")
    if mesh.cluster.remapped:
        moved = ", ".join(f"{old} → {new}" for old, new in sorted(mesh.cluster.remapped.items()))
        why = ("--high-ports" if mesh.high_ports_requested else
               f"this user may not bind ports below {mesh.high_ports.below} (no CAP_NET_BIND_SERVICE)")
        lines.append(f"High ports: {why}, so ports below {mesh.high_ports.below} answer at port + "
                     f"{mesh.high_ports.offset} ({moved}).")
    lines.append("")
    for svc in sorted(services, key=lambda s: s.excluded is not None):
        lines += access_lines(mesh, svc)
    if not services:
        lines.append("  (no Services to reach)")
    first = next((s for s in services if s.address and not s.excluded), None)
    if first is not None:
        lines += ["", f"  dig @127.0.0.1 -p {mesh.dns_port} {first.host} +short   # names resolve through the mesh DNS"]
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)


def manifest_warnings(mesh: LocalMesh) -> list[str]:
    """What the user should know before trusting the printout: nothing to mesh, pods that serve nothing."""
    if not mesh.manifests:
        return [f"warning: no Kubernetes objects found in {mesh.source}: nothing to run (expected YAML manifests "
                "or a Pulumi program; a program's yaml/v2 ConfigGroup, Helm v4 Chart or kustomize v2 Directory "
                "are expanded by the Kubernetes provider at pulumi up, not here: `lightmesh render` lists them)"]
    warnings = []
    if not any(o.get("kind") == "Service" for o in mesh.manifests):
        warnings.append(f"warning: no Services found in {mesh.source}: nothing to mesh")
    return warnings + [f"note: {note}" for note in mesh.manifest_notes + mesh.cluster.warnings]


# ---------------------------------------------------------------------------- telemetry


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
        title = f"Lightmesh telemetry — last {current.at - previous.at:.1f} s"
        table = telemetry.full_table(previous, current, title)
        previous = current
        print(("\033[H\033[J" if redraw else "\n") + table, flush=True)


# ---------------------------------------------------------------------------- run


async def _run(args: argparse.Namespace) -> int:
    mesh = LocalMesh(args.path, acl=args.acl, dns_port=args.dns_port, proxy_workers=args.proxy_workers,
                     log_level=args.log_level, high_ports=args.high_ports)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # SIGHUP (the terminal went away) stops the mesh like Ctrl-C and SIGTERM: its processes are in their
    # own sessions and would not get it. After a SIGKILL they stop by themselves (harness.die_with_parent).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(mesh.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # Ctrl-C while starting: stop cleanly, like an interrupted command
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            print("lightmesh local: interrupted while starting; stopped", file=sys.stderr)
            return EXIT_INTERRUPTED
        stopping.cancel()
        starting.result()
        services = mesh.services()
        if args.endpoints:
            args.endpoints.write_text(json.dumps(mesh.endpoints(services), indent=2) + "\n")
        for warning in manifest_warnings(mesh):
            print(warning)
        print(describe(mesh, services), flush=True)
        died: list[LocalModeError] = []
        watcher = asyncio.create_task(_watch(mesh, stop, died))
        try:
            if args.telemetry:
                await _telemetry(mesh, stop, args.interval)
            await stop.wait()
        finally:
            watcher.cancel()
        if died:
            raise died[0]
        print("stopping…", flush=True)
        return 0
    except Interrupted as exc:
        print(f"lightmesh local: {exc}; stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (LocalModeError, ManifestError) as exc:
        print(f"lightmesh local: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    except OSError as exc:  # e.g. --endpoints became unwritable meanwhile
        print(f"lightmesh local: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    finally:
        await mesh.stop()


async def _watch(mesh: LocalMesh, stop: asyncio.Event, died: list) -> None:
    """A controller or proxy that exits while the mesh serves stops it with its reason: the mesh is
    down then, and a command that goes on looking healthy would hide it."""
    while not stop.is_set():
        await asyncio.sleep(WATCH_SECONDS)
        try:
            mesh.check_alive()
        except LocalModeError as exc:
            died.append(exc)
            stop.set()


def _inside(file: Path, path: Path) -> bool:
    """``file`` is PATH (a manifest file) or under it (a directory), as written or with links
    resolved (a link in PATH is read through, wherever it points)."""
    roots = {Path(os.path.abspath(path)), path.resolve()}
    for candidate in {Path(os.path.abspath(file)), file.resolve()}:
        for root in roots:
            if candidate == root or (root.is_dir() and candidate.is_relative_to(root)):
                return True
    return False


def run(args: argparse.Namespace) -> int:
    if not Path(args.path).exists():
        print(f"lightmesh local: {args.path}: no such file or directory", file=sys.stderr)
        return EXIT_USAGE
    if args.endpoints is not None and _inside(args.endpoints, Path(args.path)):
        # it would overwrite a manifest, or be read as one the next time (a .json file in PATH)
        print(f"lightmesh local: --endpoints {args.endpoints}: inside {args.path}, whose files are read as "
              f"manifests; write it elsewhere", file=sys.stderr)
        return EXIT_USAGE
    if args.endpoints is not None:
        problem = writable_file_problem(args.endpoints, "--endpoints")
        if problem:
            print(f"lightmesh local: {problem}", file=sys.stderr)
            return EXIT_USAGE
    return asyncio.run(_run(args))
