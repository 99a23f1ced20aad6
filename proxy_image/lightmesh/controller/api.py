"""The controller's HTTP API (aiohttp): config long poll, topology, readiness, nodes, metrics.

:class:`ConfigStore` holds what the reconcile loop published (the current ``ProxyConfig``, its
serialized body, the build result) and wakes long polls when the hash changes. The protocol is
:mod:`lightmesh.wire`'s:

``GET /api/configuration/current``
    503 until a config exists. 200 (``ETag`` = ``config.etag()``, ``X-Lightmesh-Config-Version``,
    JSON body) as soon as the current hash differs from ``If-None-Match`` (``*`` matches any);
    otherwise the request is held up to ``wire.LONG_POLL_SECONDS`` (``?wait=N`` shortens it,
    ``?wait=0`` answers at once) and answered 304 if nothing changed by then. Every request with
    ``X-Lightmesh-Proxy`` records that proxy's applied version for ``/api/status/nodes``.
    At most ``MAX_HELD_POLLS_PER_CLIENT`` polls of one client address are held at a time (each
    holds a connection and, once answered, a ~10 KB body): a poll over that is answered at once as
    ``?wait=0`` would be (200 with the current config if its ETag is stale, else 304), never an
    error, so a proxy behind a shared address still gets every change, only less promptly. A
    proxy holds one poll at a time (its supervisor polls, not its workers).
``GET /api/topology/current``   the build result's topology JSON (with per-object errors); 503 before.
``GET /api/status/readiness``   200 ``true`` once the sources synced and a config exists, else 503
                                (503 again while stopping: ``--shutdown-delay``).
``GET /live``                   200 ``ok`` whenever the event loop runs (liveness probe: syncing,
                                follower, unready or stopping alike); no other work.
``GET /api/status/nodes``       proxy pods (from the Pods cache, DaemonSet labels) joined with what
                                each proxy reported: applied version, last seen, up to date, and
                                ``reported_to`` (the replica it polled). A proxy polls one replica
                                (through the Service): the replica answering also asks its peers
                                (the controller pods of the mesh namespace, but itself) for
                                ``?scope=local`` concurrently, for ``PEER_TIMEOUT_SECONDS`` at most,
                                and per proxy the report seen last wins. A peer that fails or is
                                slow is skipped (logged, a warning at most once a minute per peer).
                                ``?scope=local``: this replica's own reports only, no peer asked
                                (what peers ask each other for, so they never recurse).
``GET /metrics``                the controller's Prometheus registry.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import time
from typing import Any, Callable, Iterable

import aiohttp
from aiohttp import web

from lightmesh import wire
from lightmesh.config import SCHEMA_VERSION
from lightmesh.netutil import HTTP_HEAD_TIMEOUT_SECONDS, LISTEN_BACKLOG, listening_socket

log = logging.getLogger("lightmesh.controller.api")

MAX_TRACKED_PROXIES = 10_000  # a misbehaving client cannot grow the table without bound
MAX_HELD_POLLS_PER_CLIENT = 64  # held config long polls per client address (as DNS over TCP's cap)
LIVENESS_PATH = "/live"
STALE_PROXY_SECONDS = 3 * wire.LONG_POLL_SECONDS
# /api/status/nodes asks the peer replicas for their proxies' reports: all at once, for this long at
# most (a peer slower than that is left out of this answer, which still comes)
PEER_TIMEOUT_SECONDS = 1.0
PEER_WARNING_INTERVAL_SECONDS = 60.0  # a failing peer: one warning per peer per interval, else debug
MAX_PEER_ANSWER_BYTES = 16 * 1024 * 1024  # 10,000 proxies are ~3 MB
SCOPE_LOCAL = "local"
# A ?scope=local answer carries the answering replica's clock (time.time()): the asker moves the
# peer's last_seen onto its own clock, so a replica whose clock runs ahead cannot pin its reports
CLOCK_HEADER = "X-Lightmesh-Clock"


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


class ConfigStore:
    """The published state every API handler reads; written only by the reconcile loop."""

    def __init__(self) -> None:
        self.config = None  # ProxyConfig
        self.body: bytes = b""
        self.result = None  # BuildResult
        self._topology_cache: tuple[object, bytes] | None = None
        self._changed = asyncio.Event()
        self.closing = False
        self.proxies: dict[str, dict[str, Any]] = {}

    def publish(self, config, result=None) -> None:
        changed = self.config is None or config.hash != self.config.hash or config.version != self.config.version
        self.config = config
        self.body = config.to_json().encode()
        if result is not None:
            self.set_result(result)
        if changed:
            self._changed.set()
            self._changed = asyncio.Event()

    def set_result(self, result) -> None:
        # serialized lazily, on the first GET: at 1,000 Services that is tens of ms per rebuild
        # the reconcile loop would otherwise spend on every change
        self.result = result
        self._topology_cache = None

    @property
    def topology_body(self) -> bytes | None:
        result = self.result
        if result is None:
            return None
        if self._topology_cache is not None and self._topology_cache[0] is result:
            return self._topology_cache[1]
        topology = result.topology_json() if hasattr(result, "topology_json") else result
        if isinstance(topology, dict) and self.config is not None and "config_version" in topology:
            # the build numbered it version+1 even when the hash did not change: show what is served
            topology = {**topology, "config_version": self.config.version, "config_hash": self.config.hash}
        if isinstance(topology, (bytes, bytearray)):
            body = bytes(topology)
        elif isinstance(topology, str):
            body = topology.encode()
        else:
            body = json.dumps(topology, default=str).encode()
        self._topology_cache = (result, body)
        return body

    def close(self) -> None:
        """Release every held long poll (shutdown)."""
        self.closing = True
        self._changed.set()

    async def wait_for_change(self, if_none_match: str | None, seconds: float):
        """The current config once it differs from ``if_none_match``, or None after ``seconds``."""
        deadline = time.monotonic() + max(0.0, seconds)
        while not self.closing:
            config = self.config
            if config is not None and not etag_matches(if_none_match, config.etag()):
                return config
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                async with asyncio.timeout(remaining):  # (not wait_for, which may drop a cancel: see reconcile)
                    await self._changed.wait()
            except TimeoutError:
                return None if self.config is None or etag_matches(if_none_match, self.config.etag()) \
                    else self.config
        return None

    def record_proxy(self, name: str, applied: str | None, address: str | None, etag: str | None = None,
                     applied_hash: str | None = None) -> None:
        try:
            version = int(applied) if applied is not None else None
        except ValueError:
            version = None
        # Least recently seen first (a poll moves its proxy to the end): when full, the one that has
        # gone longest without polling makes room. Dropping new names instead let anyone who can
        # reach the API fill the table with made-up ones and keep the real proxies out for good; a
        # real proxy polls at least every 30 s, so it now takes 10,000 new names in that time.
        self.proxies.pop(name, None)
        while len(self.proxies) >= MAX_TRACKED_PROXIES:
            del self.proxies[next(iter(self.proxies))]
        held = etag.strip().removeprefix("W/").strip('"')[:64] if etag else None
        self.proxies[name] = {"applied_version": version, "last_seen": time.time(), "address": address,
                              "config_hash": held, "applied_hash": applied_hash[:64] if applied_hash else None}


def _pod_ready(pod: dict) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _address(text: Any) -> str | None:
    """An IP address as text, normalized; None for anything else (a host name is never fetched)."""
    if not isinstance(text, str):
        return None
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None
    return str(address)


def _api_port(pod: dict) -> int | None:
    """The pod's container port named ``api`` (as MeshInstall names it), if it declares one."""
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in (container.get("ports") or [] if isinstance(container, dict) else []):
            if not isinstance(port, dict) or port.get("name") != "api":
                continue
            number = port.get("containerPort")
            if isinstance(number, int) and not isinstance(number, bool) and 0 < number < 65536:
                return number
    return None


class PeerError(Exception):
    pass


def _finite(value: Any) -> float | None:
    """A JSON number as a finite float; None for anything else (a 400-digit integer included)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _peer_report(entry: Any, peer: str, offset: float, now: float) -> tuple[str, dict] | None:
    """One node of a peer's ``?scope=local`` answer → (proxy name, report), if it holds a report.
    Its ``last_seen`` is moved onto this replica's clock (``offset``: ours minus the peer's) and is
    never later than ``now``: a report cannot be from the future."""
    if not isinstance(entry, dict):
        return None
    name, seen = entry.get("name"), _finite(entry.get("last_seen"))
    if not isinstance(name, str) or not name or len(name) > 253:
        return None
    if seen is None or seen <= 0:
        return None  # a pod the peer has no report of
    seen = min(seen + offset, now)
    version = entry.get("applied_version")
    if not isinstance(version, int) or isinstance(version, bool):
        version = None

    def text(key: str) -> str | None:
        value = entry.get(key)
        return value[:64] if isinstance(value, str) else None

    return name, {"applied_version": version, "last_seen": seen, "address": text("ip"),
                  "config_hash": text("config_hash"), "applied_hash": text("applied_hash"), "reported_to": peer}


class ControllerAPI:
    def __init__(self, store: ConfigStore, metrics=None, ready: Callable[[], bool] = lambda: True,
                 proxy_pods: Callable[[], list[dict]] = lambda: [],
                 controller_pods: Callable[[], list[dict]] = lambda: [], identity: str | None = None,
                 own_addresses: Iterable[str] = ()) -> None:
        self.store = store
        self.metrics = metrics
        self.ready = ready
        self.proxy_pods = proxy_pods
        # the peer replicas for /api/status/nodes: every controller pod but this one (its name,
        # ``identity``, or one of its own addresses)
        self.controller_pods = controller_pods
        self.identity = identity
        self.own_addresses = frozenset(a for a in map(_address, own_addresses) if a)
        self._peer_session: aiohttp.ClientSession | None = None
        self._peer_fanout: asyncio.Future | None = None  # concurrent status requests share one
        self._peer_warned: dict[str, float] = {}  # peer → when it was last warned about
        self.app = web.Application()
        self.app.router.add_get(wire.CONFIG_PATH, self.configuration)
        self.app.router.add_get(wire.TOPOLOGY_PATH, self.topology)
        self.app.router.add_get(wire.READINESS_PATH, self.readiness)
        self.app.router.add_get(wire.NODES_PATH, self.nodes)
        self.app.router.add_get("/metrics", self.metrics_handler)
        self.app.router.add_get(LIVENESS_PATH, self.live)
        self._runner: web.AppRunner | None = None
        self._held: dict[str, int] = {}  # client address → config polls held now
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        # keepalive_timeout: aiohttp closes a connection waiting that long for a complete head (a
        # long poll in progress is not waiting: it is never cut). handler_cancellation: a poll whose
        # client went away (a proxy re-asks on every applied version, or restarted) ends at once,
        # instead of holding its memory and its place under the per-client cap for up to 30 s.
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=1.0,
                                     keepalive_timeout=HTTP_HEAD_TIMEOUT_SECONDS, handler_cancellation=True)
        await self._runner.setup()
        sock = None
        try:
            sock = listening_socket(host, port)  # "::": dual stack (see lightmesh.netutil)
            await web.SockSite(self._runner, sock, backlog=LISTEN_BACKLOG).start()
        except BaseException:
            if sock is not None:
                sock.close()
            await self._runner.cleanup()
            self._runner = None
            raise
        self.port = sock.getsockname()[1]  # the bound port when 0 was asked for (tests)
        log.info("API listening on %s:%s", host, self.port)
        return self.port

    async def stop(self) -> None:
        self.store.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._peer_fanout is not None and not self._peer_fanout.done():
            self._peer_fanout.cancel()
        if self._peer_session is not None:
            await self._peer_session.close()
            self._peer_session = None

    # ------------------------------------------------------------------ handlers

    async def configuration(self, request: web.Request) -> web.StreamResponse:
        proxy = request.headers.get(wire.HEADER_PROXY_NAME)
        if proxy:
            self.store.record_proxy(proxy[:253], request.headers.get(wire.HEADER_APPLIED_VERSION), request.remote,
                                    request.headers.get("If-None-Match"), request.headers.get(wire.HEADER_APPLIED_HASH))
        schemas = request.headers.get(wire.HEADER_CONFIG_SCHEMA)
        if schemas is not None and str(SCHEMA_VERSION) not in (s.strip() for s in schemas.split(",")):
            # An older or newer proxy: the config would be refused there (unknown or missing fields),
            # so say why here; it keeps serving its last config meanwhile.
            return web.Response(status=406, text=(
                f"this controller serves proxy config schema {SCHEMA_VERSION}; proxy {proxy or request.remote} "
                f"reads schema {schemas.strip()[:40]!r}: run proxies and controller of one Lightmesh release"))
        wait = wire.LONG_POLL_SECONDS
        if "wait" in request.query:
            try:
                wait = min(max(float(request.query["wait"]), 0.0), wire.LONG_POLL_SECONDS)
            except ValueError:
                raise web.HTTPBadRequest(text="wait must be a number of seconds")
        if self.store.config is None:
            return web.json_response({"error": "no configuration yet"}, status=503,
                                     headers={"Retry-After": "1"})
        client = request.remote or ""
        held = self._held.get(client, 0)
        if held >= MAX_HELD_POLLS_PER_CLIENT:
            wait = 0.0  # over the cap: answered at once (a change is still sent; no error)
        self._held[client] = held + 1
        try:
            config = await self.store.wait_for_change(request.headers.get("If-None-Match"), wait)
        finally:
            left = self._held.get(client, 1) - 1
            if left > 0:
                self._held[client] = left
            else:
                self._held.pop(client, None)
        if config is None:
            current = self.store.config
            if current is None:
                return web.json_response({"error": "no configuration yet"}, status=503)
            return web.Response(status=304, headers={
                "ETag": current.etag(), wire.HEADER_CONFIG_VERSION: str(current.version)})
        body = self.store.body if self.store.config is config else config.to_json().encode()
        return web.Response(body=body, content_type="application/json", headers={
            "ETag": config.etag(), wire.HEADER_CONFIG_VERSION: str(config.version), "Cache-Control": "no-cache"})

    async def topology(self, request: web.Request) -> web.Response:
        if self.store.topology_body is None:
            return web.json_response({"error": "no topology yet"}, status=503)
        return web.Response(body=self.store.topology_body, content_type="application/json")

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readiness(self, request: web.Request) -> web.Response:
        if self.store.config is not None and self.ready():
            return web.Response(text="true", content_type="application/json")
        return web.Response(text="false", status=503, content_type="application/json")

    async def nodes(self, request: web.Request) -> web.Response:
        scope = request.query.get("scope", "all")
        if scope not in ("all", SCOPE_LOCAL):
            raise web.HTTPBadRequest(text="scope must be local (this replica's reports only) or all (the default)")
        # the peers first: what this replica saw is read after, the freshest
        peers = await self._peer_reports() if scope != SCOPE_LOCAL else []
        current = self.store.config.hash if self.store.config is not None else None
        pods = self.proxy_pods()
        pod_names = {(pod.get("metadata") or {}).get("name", "") for pod in pods}
        now = time.time()
        seen: dict[str, dict] = {}
        for name, report in list(self.store.proxies.items()):
            if name not in pod_names and now - report["last_seen"] > STALE_PROXY_SECONDS:
                # no pod and no poll for three long polls: gone (a rollout replaced it), not lagging
                self.store.proxies.pop(name, None)
                continue
            seen[name] = {**report, "reported_to": self.identity}
        for name, report in peers:  # per proxy, the report seen last (the replica it polls now)
            if name not in pod_names and now - report["last_seen"] > STALE_PROXY_SECONDS:
                continue
            mine = seen.get(name)
            if mine is None or report["last_seen"] > mine["last_seen"]:
                seen[name] = report
        out = []
        for pod in pods:
            meta, status = pod.get("metadata") or {}, pod.get("status") or {}
            name = meta.get("name", "")
            report = seen.pop(name, None) or {}
            out.append({"name": name, "ip": status.get("podIP"), "node": (pod.get("spec") or {}).get("nodeName"),
                        "ready": _pod_ready(pod), **self._report(report, current)})
        for name, report in seen.items():  # proxies that reported but are not (yet) in the Pods cache
            out.append({"name": name, "ip": report.get("address"), "node": None, "ready": None,
                        **self._report(report, current)})
        out.sort(key=lambda n: n["name"])
        return web.json_response(out, headers={CLOCK_HEADER: repr(time.time())})

    # ------------------------------------------------------------------ peers (/api/status/nodes)

    def _peers(self) -> list[tuple[str, str, bool]]:
        """(pod name, ``?scope=local`` URL, whether a failure is worth a warning) per peer replica."""
        out = []
        for pod in self.controller_pods():
            meta, status = pod.get("metadata") or {}, pod.get("status") or {}
            name = meta.get("name")
            if not isinstance(name, str) or not name or name == self.identity:
                continue
            if status.get("phase") in ("Succeeded", "Failed"):
                continue
            address = _address(status.get("podIP"))
            if address is None or address in self.own_addresses:
                continue  # not scheduled yet, or this replica under another name
            port = _api_port(pod) or self.port
            if port is None:
                continue
            host = f"[{address}]" if ":" in address else address
            # a peer that is not ready, or terminating, may well not answer: said at debug only
            loud = _pod_ready(pod) and not meta.get("deletionTimestamp")
            out.append((name, f"http://{host}:{port}{wire.NODES_PATH}?scope={SCOPE_LOCAL}", loud))
        return out

    async def _peer_reports(self) -> list[tuple[str, dict]]:
        peers = self._peers()
        if not peers:
            return []  # one replica, or local mode: as before, no client, no wait
        if self._peer_fanout is None or self._peer_fanout.done():
            self._peer_fanout = asyncio.ensure_future(self._ask_peers(peers))
        # shielded: a status client that goes away (handler cancellation) does not cancel the
        # answer other requests wait for
        return await asyncio.shield(self._peer_fanout)

    async def _ask_peers(self, peers: list[tuple[str, str, bool]]) -> list[tuple[str, dict]]:
        if self._peer_session is None or self._peer_session.closed:
            self._peer_session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(keepalive_timeout=5.0),  # under the peers' idle close (10 s)
                timeout=aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS))
        tasks = {asyncio.ensure_future(self._ask_peer(url)): (name, url, loud) for name, url, loud in peers}
        done, pending = await asyncio.wait(tasks, timeout=PEER_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=0.1)  # (their cancel: at once, aiohttp's requests)
        out: list[tuple[str, dict]] = []
        for task, (name, url, loud) in tasks.items():
            if task in pending or task.cancelled():
                if task.done() and not task.cancelled():
                    task.exception()  # (finished meanwhile: too late for this answer; retrieved)
                self._peer_failed(name, url, f"no answer within {PEER_TIMEOUT_SECONDS:g}s", loud)
                continue
            exc = task.exception()
            if exc is not None:
                self._peer_failed(name, url, f"{type(exc).__name__}: {exc}".rstrip(": "), loud)
                continue
            entries, peer_clock = task.result()
            now = time.time()
            # the peer's clock against ours (the answer's transit, under a second, left in)
            offset = now - peer_clock if peer_clock is not None else 0.0
            for entry in entries[:2 * MAX_TRACKED_PROXIES]:
                report = _peer_report(entry, name, offset, now)
                if report is not None:
                    out.append(report)
        return out

    async def _ask_peer(self, url: str) -> tuple[list, float | None]:
        assert self._peer_session is not None
        async with self._peer_session.get(url, allow_redirects=False) as resp:
            if resp.status != 200:
                raise PeerError(f"answered {resp.status}")
            try:  # (an earlier release sends none: its clock is taken as ours)
                peer_clock = _finite(float(resp.headers.get(CLOCK_HEADER, "")))
            except ValueError:
                peer_clock = None
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_PEER_ANSWER_BYTES:
                    raise PeerError(f"answer over {MAX_PEER_ANSWER_BYTES} bytes")
        try:
            entries = json.loads(body)
        except ValueError:
            raise PeerError("answer is not JSON") from None
        if not isinstance(entries, list):
            raise PeerError("answer is not a JSON list")
        return entries, peer_clock

    def _peer_failed(self, name: str, url: str, reason: str, loud: bool) -> None:
        now = time.monotonic()
        if loud and now - self._peer_warned.get(name, -math.inf) >= PEER_WARNING_INTERVAL_SECONDS:
            if len(self._peer_warned) > 1000:  # replaced pods' names: forget the old ones
                self._peer_warned = {k: t for k, t in self._peer_warned.items()
                                     if now - t < PEER_WARNING_INTERVAL_SECONDS}
            self._peer_warned[name] = now
            log.warning("status/nodes: peer replica %s (%s) skipped: %s; answering without the reports of the "
                        "proxies that poll it (warned once a minute)", name, url, reason)
        else:
            log.debug("status/nodes: peer replica %s (%s) skipped: %s", name, url, reason)

    @staticmethod
    def _report(report: dict, current_hash: str | None) -> dict:
        applied = report.get("applied_version")
        # config_hash: what the proxy holds (its If-None-Match). Each replica numbers versions its own
        # way and a proxy may poll any of them, so "up to date" compares hashes, not versions.
        held = report.get("config_hash")
        # A proxy that reports what its workers applied is up to date when that is the current
        # config: it holds a config it refused too (as If-None-Match), which must not count.
        in_force = report.get("applied_hash") or held
        return {"applied_version": applied, "config_hash": held, "applied_hash": report.get("applied_hash"),
                "last_seen": report.get("last_seen"), "reported_to": report.get("reported_to"),
                "up_to_date": applied is not None and in_force is not None and in_force == current_hash}

    async def metrics_handler(self, request: web.Request) -> web.Response:
        if self.metrics is None:
            return web.Response(text="", content_type="text/plain")
        return web.Response(body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"})
