"""``lightmesh controller``: flags, logging, and wiring the shell's parts together.

Two ways to run:

* in a cluster (default): Kubernetes watches (``--kubeconfig`` or in-cluster credentials), the
  leader (``--leader-election``) writes shadow Services and Events;
* local mode (``--manifests DIR``): the files in DIR are the cluster, shadow Services live in
  memory (ClusterIPs from 127.1.0.0/16) and in ``DIR/.lightmesh-shadows.json``.

Either way the API (config long poll, topology, readiness, nodes, metrics) and the mesh DNS are
served from this process's own caches. SIGTERM/SIGINT/SIGHUP stop everything and exit 0.

``--shutdown-delay SECONDS`` (default 0): on the first signal the controller releases the leader
Lease at once (another replica takes over writing) and turns unready (readiness 503), but keeps
answering DNS and the API (its caches still follow the cluster) for that long, then stops as without
it: a terminating pod stays in the Service's endpoints for a moment (EndpointSlice and kube-proxy
propagation), and the DNS queries sent to it meanwhile would otherwise be lost. A second signal
during the delay stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from pathlib import Path

from lightmesh import wire
from lightmesh.cliargs import http_url, namespace_list, namespace_name, port_number
from lightmesh.netutil import raise_fd_limit

log = logging.getLogger("lightmesh.controller")
# On SIGTERM the controller's tasks get this long to end after their cancel; the pod's grace period
# (30 s by default) must still leave time for the DNS and API servers to close and the Lease to go.
STOP_TIMEOUT_SECONDS = 10.0
MAX_SHUTDOWN_DELAY_SECONDS = 60.0
# at most this long of the delay goes to releasing the Lease (the rest of the delay runs anyway)
RESIGN_TIMEOUT_SECONDS = 5.0


def shutdown_delay(text: str) -> float:
    """``--shutdown-delay``: seconds, 0-60; argparse names the flag in the error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds (0-60)") from None
    if not 0.0 <= value <= MAX_SHUTDOWN_DELAY_SECONDS:  # NaN fails this too
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 60 seconds")
    return value


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def configure(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("cluster state")
    src.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster service account, else ~/.kube/config)")
    src.add_argument("--manifests", metavar="DIR",
                     help="local mode: read the cluster from the *.yaml/*.yml/*.json files in DIR (no Kubernetes)")
    src.add_argument("--namespace", type=namespace_name, default=wire.DEFAULT_MESH_NAMESPACE,
                     help="the mesh namespace (shadow Services, Lease; default: %(default)s)")
    src.add_argument("--watch-namespaces", type=namespace_list, default="",
                     help="comma list: mesh only these namespaces (default: all)")
    src.add_argument("--ignore-namespaces", type=namespace_list, default="",
                     help="comma list: never mesh these namespaces, besides kube-system and the mesh namespace")
    mesh = parser.add_argument_group("mesh")
    mesh.add_argument("--acl", action="store_true", help="ACL mode: deny unless an SMI TrafficTarget allows")
    mesh.add_argument("--default-mode", choices=("http", "tcp", "udp"), default="http",
                      help="traffic type of Services without the traffic-type annotation (default: %(default)s)")
    mesh.add_argument("--domains", type=_csv, default=",".join(wire.DEFAULT_DOMAINS),
                      help="comma list of mesh DNS domains (default: %(default)s)")
    for proto, base, limit in (("http", wire.HTTP_PORT_BASE, wire.DEFAULT_HTTP_PORT_LIMIT),
                               ("tcp", wire.TCP_PORT_BASE, wire.DEFAULT_TCP_PORT_LIMIT),
                               ("udp", wire.UDP_PORT_BASE, wire.DEFAULT_UDP_PORT_LIMIT)):
        mesh.add_argument(f"--{proto}-port-base", type=int, default=base,
                          help=f"first {proto.upper()} mesh port (default: %(default)s)")
        mesh.add_argument(f"--{proto}-port-limit", type=int, default=limit,
                          help=f"number of {proto.upper()} mesh ports (default: %(default)s)")
    mesh.add_argument("--listen-mode", choices=("node", "shadow-ip"), default="node",
                      help="node: proxies listen on [::] (dual stack) at the mesh ports; shadow-ip: on each shadow "
                           "ClusterIP at the Service's own ports (local mode; default: %(default)s)")
    serve = parser.add_argument_group("serving")
    serve.add_argument("--api-address", default="::",
                       help="address of the API (default: %(default)s, every IPv4 and IPv6 address)")
    serve.add_argument("--api-port", type=port_number, default=wire.DEFAULT_CONTROLLER_API_PORT,
                       help="port of the API: proxy config, topology, status, metrics (default: %(default)s)")
    serve.add_argument("--dns-address", default="::",
                       help="address of the mesh DNS (default: %(default)s, every IPv4 and IPv6 address)")
    serve.add_argument("--dns-port", type=port_number, default=wire.DEFAULT_DNS_PORT,
                       help="port of the mesh DNS, UDP and TCP (default: %(default)s)")
    serve.add_argument("--leader-election", action="store_true",
                       help=f"only the holder of the Lease {wire.LEASE_NAME} writes shadow Services and Events")
    serve.add_argument("--shutdown-delay", type=shutdown_delay, default=0.0, metavar="SECONDS",
                       help="on SIGTERM: release the Lease and turn unready at once, but keep answering DNS and "
                            "the API this long (0-60; default: %(default)s)")
    serve.add_argument("--otlp-endpoint", type=http_url, help="OpenTelemetry OTLP/HTTP endpoint: one span per reconcile round "
                                               "(e.g. http://collector:4318)")
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                       help="(default: %(default)s)")
    serve.add_argument("--log-format", choices=("text", "json"), default="text", help="(default: %(default)s)")


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                "logger": record.name, "message": record.getMessage()}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JSONFormatter() if fmt == "json"
                         else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "httpx", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # the Kubernetes client's (lightkube 1.x on httpx2): one INFO line per API request, watches and
    # Lease renewals included; shown with --log-level debug only
    logging.getLogger("httpx2").setLevel(logging.NOTSET if root.level <= logging.DEBUG else logging.WARNING)


def settings_from_args(args: argparse.Namespace):
    from lightmesh.controller.model import Settings

    return Settings(
        mesh_namespace=args.namespace, acl=args.acl, default_mode=args.default_mode, domains=tuple(args.domains),
        watch_namespaces=tuple(args.watch_namespaces), ignore_namespaces=tuple(args.ignore_namespaces),
        http_port_base=args.http_port_base, http_port_limit=args.http_port_limit,
        tcp_port_base=args.tcp_port_base, tcp_port_limit=args.tcp_port_limit,
        udp_port_base=args.udp_port_base, udp_port_limit=args.udp_port_limit, listen_mode=args.listen_mode)


async def serve(args: argparse.Namespace, stop: asyncio.Event, stop_now: asyncio.Event | None = None) -> int:
    """Run until ``stop`` is set (then for ``--shutdown-delay`` more, unless ``stop_now`` is set);
    returns the exit code."""
    from lightmesh.controller.api import ConfigStore, ControllerAPI
    from lightmesh.controller.dns import DNSTable, MeshDNS
    from lightmesh.controller.leader import default_identity
    from lightmesh.controller.metrics import ControllerMetrics
    from lightmesh.controller.reconcile import Controller
    from lightmesh.controller.sources import ACL_REQUIRED, FileSource, KubeAPI, KubeSource, ObjectFilter

    settings = settings_from_args(args)
    metrics = ControllerMetrics()
    object_filter = ObjectFilter.create(args.namespace, args.watch_namespaces, args.ignore_namespaces)
    store = ConfigStore()
    dns = MeshDNS(DNSTable(settings.domains))
    kube: KubeAPI | None = None
    parts: dict = {}
    if args.manifests:
        from lightmesh.controller.writer import STATE_FILE_NAME, LocalShadowStore

        directory = Path(args.manifests)
        if not directory.is_dir():
            log.error("--manifests %s is not a directory", directory)
            return 2
        source = FileSource(directory, object_filter)
        parts["local_shadows"] = LocalShadowStore(directory / STATE_FILE_NAME, args.namespace)
        if args.leader_election:
            log.warning("--leader-election has no effect with --manifests (no cluster)")
        metrics["is_leader"].set(1)  # the only writer of its shadow Services
    else:
        from lightmesh.controller.events import EventRecorder
        from lightmesh.controller.leader import LeaderElector
        from lightmesh.controller.writer import KubeShadowWriter

        try:
            kube = KubeAPI.from_kubeconfig(args.kubeconfig)
        except Exception as exc:  # noqa: BLE001 - no credentials: say so and exit
            log.error("cannot configure the Kubernetes client: %s", exc)
            return 1
        source = KubeSource(kube, object_filter, metrics=metrics, required=ACL_REQUIRED if args.acl else ())

        parts["kube_writer"] = KubeShadowWriter(kube, args.namespace, metrics)
        # nothing is persisted here: versions grow across restarts by starting from the clock
        parts["first_version"] = int(time.time() * 1000)
        parts["events"] = EventRecorder(kube, uids=source.uid, api_versions=source.api_versions)
        if args.leader_election:
            # the leader records its config-shaping settings on the Lease; followers build with them
            parts["elector"] = LeaderElector(kube, args.namespace, metrics=metrics,
                                             settings_record=settings.shaping_record())
        else:
            metrics["is_leader"].set(1)  # a single replica writes
    provider = None
    if args.otlp_endpoint:
        from lightmesh.otel import tracer_provider

        provider = tracer_provider(args.otlp_endpoint, "lightmesh-controller")
        parts["tracer"] = provider.get_tracer("lightmesh.controller")
    controller = Controller(settings, source, store=store, metrics=metrics, dns=dns, freeze_gc_after_sync=True,
                            **parts)
    if "elector" in parts:
        parts["elector"].on_change = controller.leadership_changed
        parts["elector"].on_leader_settings = controller.leader_settings_changed

    # /api/status/nodes asks the other replicas (controller pods of the mesh namespace) for the
    # reports of the proxies that poll them; this one is told apart by its pod name (the name the
    # Lease identity starts with) and, when the API is bound to one, by its address
    own = [] if args.api_address in ("", "::", "0.0.0.0") else [args.api_address]
    api = ControllerAPI(store, metrics, ready=controller.ready,
                        proxy_pods=lambda: source.mesh_pods("proxy_pods"),
                        controller_pods=lambda: source.mesh_pods("controller_pods"),
                        identity=default_identity(), own_addresses=own)
    try:
        try:
            await api.start(args.api_address, args.api_port)
        except OSError as exc:
            log.error("cannot serve the API on %s:%s: %s", args.api_address, args.api_port, exc)
            return 1
        try:
            await dns.start(args.dns_address, args.dns_port)
        except OSError as exc:
            log.error("cannot serve DNS on %s:%s: %s", args.dns_address, args.dns_port, exc)
            return 1
        runner = asyncio.create_task(controller.run(), name="controller")
        stopper = asyncio.create_task(stop.wait(), name="stop")
        done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        delay = float(getattr(args, "shutdown_delay", 0.0) or 0.0)
        if runner not in done and delay > 0:
            await _drain(controller, runner, delay, stop_now)
        if runner.done() and not runner.cancelled():
            exc = runner.exception()
            log.error("controller stopped unexpectedly: %r", exc)
            code = 1
        for task in (runner, stopper):
            task.cancel()
        # bounded: a task that swallowed its cancel must not keep the pod from exiting (the DNS and
        # API servers, the Lease release and the exporters are stopped below either way)
        _, stuck = await asyncio.wait({runner, stopper}, timeout=STOP_TIMEOUT_SECONDS)
        if stuck:
            log.error("the controller did not stop within %gs of its cancel; exiting anyway", STOP_TIMEOUT_SECONDS)
            code = code or 1
        log.info("controller stopped")
        return code
    finally:
        await dns.stop()
        await api.stop()
        if provider is not None:
            from lightmesh.otel import shutdown_within
            await asyncio.to_thread(shutdown_within, provider)  # the last spans, for a bounded time
        if kube is not None:
            await kube.close()


async def _drain(controller, runner: asyncio.Task, delay: float, stop_now: asyncio.Event | None) -> None:
    """``--shutdown-delay``: unready and no longer leader at once; DNS and the API answer for ``delay``
    seconds more (or until ``stop_now``, or the controller ends by itself)."""
    log.info("stopping in %gs (--shutdown-delay): releasing the Lease; DNS and the API answer meanwhile", delay)
    controller.draining = True  # readiness 503 from now on
    resign = asyncio.create_task(asyncio.wait_for(controller.resign(), RESIGN_TIMEOUT_SECONDS), name="resign")
    now = asyncio.create_task(stop_now.wait(), name="stop-now") if stop_now is not None else None
    try:
        done, _ = await asyncio.wait({runner} | ({now} if now else set()), timeout=delay,
                                     return_when=asyncio.FIRST_COMPLETED)
        if now is not None and now in done:
            log.info("a second signal: stopping at once")
    finally:
        for task in (resign, now):
            if task is not None and not task.done():
                task.cancel()
        await asyncio.gather(*(t for t in (resign, now) if t is not None), return_exceptions=True)


async def _main(args: argparse.Namespace) -> int:
    stop, stop_now = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:  # the second one cuts --shutdown-delay short
        (stop_now if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: the terminal went away
        loop.add_signal_handler(sig, on_signal)
    return await serve(args, stop, stop_now)


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    try:
        settings_from_args(args)  # flags are checked before anything starts
    except ValueError as exc:
        log.error("invalid settings: %s", exc)
        return 2
    raise_fd_limit()  # one per proxy's long poll, per DNS-over-TCP client, per watch
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return asyncio.run(_main(args))
    # uvloop, as the proxy: the stdlib loop's accept, out of descriptors, logs and re-schedules
    # itself once per backlog slot on every pass (CPython 3.11), flooding the log and the CPU
    return uvloop.run(_main(args))
