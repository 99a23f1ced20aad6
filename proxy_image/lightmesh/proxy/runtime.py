"""One worker's data plane: the config in force, its listeners, and how a new config replaces it.

This module owns :class:`Runtime`. ``await runtime.apply(config)``:

1. validates (a ``ProxyConfig``, a dict or JSON text; :class:`~lightmesh.config.ConfigError` on bad
   input, nothing changed), compiles the HTTP part (``routing.compile_http`` with the previous plane,
   so breakers, buckets and pools of unchanged elements carry over) and every L4 route — any error
   here and the running config stays as it was;
2. diffs listeners by ``(kind, address, port)`` with kind ``http``, ``tcp`` or ``udp``: a socket
   whose key stays is kept (its route or entry-point name is updated in place; the HTTP connections
   of a renamed entry point route by its new name), removed ones stop accepting (established TCP
   connections and HTTP requests in flight run to their end; idle keep-alive HTTP connections of a
   removed entry point close, busy ones after the requests they have read), new
   ones are opened with ``SO_REUSEPORT`` so every worker process shares the
   port. A listener that cannot be opened (EADDRINUSE, EACCES...) is reported in
   :attr:`ApplyResult.listener_errors` and retried by :meth:`Runtime.retry_failed`; the others serve;
3. with several workers, steers each HTTP port that carries a rate-limited route by client IP
   (:mod:`lightmesh.proxy.steering`) and puts the others back to the kernel's spread;
4. swaps the HTTP plane with one assignment (``self.http``); the HTTP protocols read it once per
   request head, so a request in flight finishes on the plane it started with, then the old plane's
   :meth:`close` releases what the new one does not use.

:meth:`Runtime.drain` is the SIGTERM path: stop accepting, close idle keep-alive connections, wait
for in-flight HTTP requests and TCP connections up to a grace period, then cut what is left.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import time
from typing import Any

from lightmesh.config import ConfigError, ProxyConfig, load_config_dict, load_config_json
from lightmesh.netutil import LISTEN_BACKLOG, listening_socket
from lightmesh.proxy import steering
from lightmesh.proxy.metrics import ProxyMetrics, config_names
from lightmesh.proxy.tcp import SPLICE_AVAILABLE, TCPListener, TCPRouteState
from lightmesh.proxy.udp import UDPListener, UDPRouteState

log = logging.getLogger("lightmesh.proxy.runtime")

ListenerKey = tuple[str, str, int]  # (kind, address, port)
BACKLOG = LISTEN_BACKLOG


@dataclasses.dataclass
class RuntimeOptions:
    http: Any = None  # lightmesh.proxy.http.HTTPOptions; None = its defaults
    max_connections: int = 0  # per TCP listener; 0 = unlimited
    use_splice: bool = SPLICE_AVAILABLE
    workers: int = 1  # processes sharing each port: >1 steers rate-limited ports by client IP


@dataclasses.dataclass
class ApplyResult:
    version: int
    hash: str
    listener_errors: dict[str, str]  # "kind address:port" → message


def open_listener_socket(kind: str, address: str, port: int) -> socket.socket:
    """A bound, non-blocking socket with SO_REUSEPORT (every worker opens its own). ``::`` is dual
    stack (IPv4 clients arrive as ``::ffff:a.b.c.d``, which the allow-lists and ``X-Forwarded-For``
    read as IPv4) and falls back to ``0.0.0.0`` without IPv6 (:mod:`lightmesh.netutil`), so the
    controller can ask for ``::`` everywhere."""
    return listening_socket(address, port, socket.SOCK_DGRAM if kind == "udp" else socket.SOCK_STREAM,
                            reuse_port=True, backlog=BACKLOG)


def describe_key(key: ListenerKey) -> str:
    kind, address, port = key
    return f"{kind} {'[' + address + ']' if ':' in address else address}:{port}"


def _owner(key: ListenerKey, target: Any) -> str:
    """The config element a listener serves: ``entry point 'web'``, ``tcp route 'shop/db:5432'``."""
    if key[0] == "http":
        return f"entry point {target!r}"
    return f"{key[0]} route {getattr(target, 'name', '?')!r}"


class _HTTPListener:
    """An HTTP entry point's socket. The entry-point name is looked up per connection, so a rename
    keeps the socket."""

    def __init__(self, runtime: Runtime, key: ListenerKey, name: str) -> None:
        self.runtime = runtime
        self.key = key
        self.name = name
        self.factory = None
        self.server: asyncio.AbstractServer | None = None
        self.sock: socket.socket | None = None
        self.steered = False
        self.cannot_steer = False

    async def start(self, sock: socket.socket) -> None:
        self.update(self.name)
        self.sock = sock
        # backlog again: uvloop listens anew with its default of 100 otherwise
        self.server = await self.runtime.loop.create_server(lambda: self.factory(), sock=sock, backlog=BACKLOG)

    def steer(self, by_source_ip: bool, workers: int) -> None:
        """Keep one client IP on one worker while a rate-limited route is on this port (see steering).
        Turned on, the connections already open (placed by the kernel's hash, on any worker) are
        recycled, so that a client's next connections all reach its one worker and bucket."""
        if by_source_ip == self.steered or self.sock is None:
            return
        if by_source_ip:
            if self.cannot_steer:
                return  # the kernel refused once (logged then): not again on every config
            self.steered = steering.steer_by_source_ip(self.sock, workers)
            self.cannot_steer = not self.steered
            if self.steered:
                recycled = self.recycle()
                if recycled:
                    log.info("entry point %s: a rate limit came: %d client connections end after their "
                             "current request, so each client IP reconnects to its one worker",
                             self.name, recycled)
        else:
            steering.spread_by_hash(self.sock)
            self.steered = False

    def recycle(self) -> int:
        """End the keep-alive of this entry point's client connections (ConnectionSet.recycle)."""
        connections = self.runtime.connections
        return connections.recycle(self.name) if connections is not None else 0

    def update(self, name: str) -> None:
        if name == self.name and self.factory is not None:
            return
        from lightmesh.proxy import http as http_mod
        self.name = name
        rt = self.runtime
        self.factory = http_mod.protocol_factory(rt, name, rt.http_options, rt.metrics)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def wait_idle(self, timeout: float) -> bool:
        return True  # HTTP connections are drained through the ConnectionSet

    def close(self) -> None:
        self.stop_accepting()


class Runtime:
    """One worker's config and listeners. ``self.http`` is the holder attribute the HTTP
    protocols read; ``self.connections`` the HTTP ConnectionSet drained on shutdown."""

    def __init__(self, metrics: ProxyMetrics | None = None, options: RuntimeOptions | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.metrics = metrics or ProxyMetrics()
        self.options = options or RuntimeOptions()
        self.loop = loop or asyncio.get_running_loop()
        self.http = None  # the HTTPPlane in force
        self.config: ProxyConfig | None = None
        self.listeners: dict[ListenerKey, Any] = {}
        self.listener_errors: dict[ListenerKey, str] = {}
        self._wanted: dict[ListenerKey, Any] = {}  # key → EntryPoint name or route state
        self._lock = asyncio.Lock()
        self._retired: set[TCPListener] = set()  # removed TCP listeners with connections still open
        self._http_options = None
        self.draining = False

    # ------------------------------------------------------------------ HTTP plumbing (lazy import)

    @property
    def http_options(self):
        if self._http_options is None:
            if self.options.http is not None:
                self._http_options = self.options.http
            else:
                from lightmesh.proxy import http as http_mod
                self._http_options = http_mod.HTTPOptions()
        return self._http_options

    @property
    def connections(self):
        """The HTTP ConnectionSet (shared by every entry point through ``HTTPOptions``), or None."""
        options = self._http_options
        return getattr(options, "connections", None) if options is not None else None

    # ------------------------------------------------------------------ apply

    async def apply(self, config: ProxyConfig | dict | str | bytes) -> ApplyResult:
        """Validate, compile, diff listeners, swap. Raises ConfigError (nothing changed) on a bad
        config; listener failures do not raise (see :attr:`ApplyResult.listener_errors`)."""
        try:
            if isinstance(config, (str, bytes)):
                config = load_config_json(config)
            elif isinstance(config, dict):
                config = load_config_dict(config)
            elif not isinstance(config, ProxyConfig):
                raise ConfigError(f"configuration must be a ProxyConfig, dict or JSON, not {type(config).__name__}")
        except ConfigError:
            self.metrics.config_failed()
            raise
        if self.draining:
            raise ConfigError(f"configuration version {config.version}: refused, the worker is draining")
        async with self._lock:
            try:
                plane, wanted = self._compile(config)
            except ConfigError:
                self.metrics.config_failed()
                raise
            except Exception as exc:  # a compile bug must not take the running config down
                self.metrics.config_failed()
                log.exception("compiling configuration version %d failed", config.version)
                raise ConfigError(f"configuration version {config.version}: cannot be compiled: "
                                  f"{type(exc).__name__}: {exc}") from exc
            removed_entry_points: set[str] = set()
            for key in [k for k in self.listeners if k not in wanted]:
                listener = self.listeners.pop(key)
                if isinstance(listener, _HTTPListener):
                    removed_entry_points.add(listener.name)
                if isinstance(listener, TCPListener) and listener.active:
                    # like HTTP requests in flight: established connections of a removed route
                    # run to their end (or to the drain on shutdown); only accepting stops
                    listener.stop_accepting()
                    self._retired.add(listener)
                else:
                    listener.close()
                log.info("closed listener %s", describe_key(key))
            self._retired = {r for r in self._retired if r.active}
            for key in [k for k in self.listener_errors if k not in wanted]:
                del self.listener_errors[key]
            renamed_entry_points = {listener.name: wanted[key] for key, listener in self.listeners.items()
                                    if isinstance(listener, _HTTPListener) and listener.name != wanted[key]}
            old, self.http = self.http, plane  # the swap: one assignment
            self._wanted = wanted
            for key, target in wanted.items():
                listener = self.listeners.get(key)
                if listener is not None:
                    listener.update(target)
            if (renamed_entry_points or removed_entry_points) and self.connections is not None:
                # else a kept-alive connection would look its old name up in the new plane: 404
                self.connections.entry_points_changed(renamed_entry_points, removed_entry_points)
            await self._open_missing()
            self._steer(config)
            if old is not None and old is not plane:
                try:
                    old.close()
                except Exception:
                    log.exception("closing the previous HTTP plane failed")
            self.config = config
            self.metrics.config_applied(config.version)
            self.retain_metrics()
            return ApplyResult(config.version, config.hash,
                               {describe_key(k): v for k, v in self.listener_errors.items()})

    def recycle_steered(self) -> int:
        """Recycle the connections of every port steered by client IP (a worker restart moved the
        clients' worker); returns how many end."""
        return sum(listener.recycle() for listener in self.listeners.values()
                   if isinstance(listener, _HTTPListener) and listener.steered)

    def _steer(self, config: ProxyConfig) -> None:
        """Every worker makes the same choice from the same config, so the group agrees."""
        if self.options.workers <= 1:
            return
        limited = {m.name for m in config.http.middlewares if m.type == "rate_limit"}
        steered = {ep for r in config.http.routers if limited.intersection(r.middlewares) for ep in r.entry_points}
        for ep in config.http.entry_points:
            listener = self.listeners.get(("http", ep.address, ep.port))
            if isinstance(listener, _HTTPListener):
                listener.steer(ep.name in steered, self.options.workers)

    def _compile(self, config: ProxyConfig):
        from lightmesh.proxy import routing
        try:
            options = self.http_options
        except ImportError:  # no HTTP proxy module: L4 still works, HTTP listeners report the error
            options = None
        plane = routing.compile_http(config, self.http, self.metrics, options)
        wanted: dict[ListenerKey, Any] = {}
        for ep in config.http.entry_points:
            wanted[("http", ep.address, ep.port)] = ep.name
        for route in config.tcp:
            key = ("tcp", route.address, route.port)
            prev = self._wanted.get(key)
            wanted[key] = TCPRouteState(route, prev if isinstance(prev, TCPRouteState) else None)
        for route in config.udp:
            key = ("udp", route.address, route.port)
            prev = self._wanted.get(key)
            wanted[key] = UDPRouteState(route, prev if isinstance(prev, UDPRouteState) else None)
        return plane, wanted

    async def _open_missing(self) -> None:
        for key, target in self._wanted.items():
            if key in self.listeners:
                continue
            kind, address, port = key
            try:
                sock = open_listener_socket(kind, address, port)
            except OSError as exc:
                message = f"cannot listen on {describe_key(key)} ({_owner(key, target)}): {exc.strerror or exc}"
                if self.listener_errors.get(key) != message:
                    log.error("%s (the other listeners serve; retrying)", message)
                self.listener_errors[key] = message
                continue
            try:
                if kind == "http":
                    listener = _HTTPListener(self, key, target)
                    await listener.start(sock)
                elif kind == "tcp":
                    listener = TCPListener(self.loop, sock, target, self.metrics, use_splice=self.options.use_splice,
                                           max_connections=self.options.max_connections)
                else:
                    listener = await UDPListener(self.loop, target, self.metrics).start(sock)
            except Exception as exc:
                sock.close()
                self.listener_errors[key] = f"cannot serve {describe_key(key)} ({_owner(key, target)}): {exc}"
                log.exception("starting listener %s failed", describe_key(key))
                continue
            self.listeners[key] = listener
            self.listener_errors.pop(key, None)
            log.info("listening on %s", describe_key(key))

    async def retry_failed(self) -> bool:
        """Try the listeners that could not be opened again; True when something changed."""
        if not self.listener_errors or self.draining:
            return False
        async with self._lock:
            before = len(self.listeners)
            await self._open_missing()
            if self.config is not None:
                self._steer(self.config)
            return len(self.listeners) != before

    def retain_metrics(self) -> None:
        """Forget the metric series of names the config in force does not have (see
        ProxyMetrics.retain). Called on each swap and every few seconds by the worker: an HTTP
        request in flight at the swap counts under its old service when it ends, which would bring
        that series back for good."""
        if self.config is None:
            return
        # a TCP connection still open on a route no longer configured keeps counting under its
        # route's name: its series stay until it ends (else they would come back from zero)
        relaying = {relay.route_name for listener in (*self.listeners.values(), *self._retired)
                    for relay in getattr(listener, "relays", ())}
        self.metrics.retain(config_names(self.config) | relaying)

    def close_stale_upstreams(self) -> int:
        """Close pooled upstream connections idle for longer than ``upstream_idle_timeout`` (the
        worker calls this every few seconds); returns how many were closed."""
        plane = self.http
        if plane is None:
            return 0
        before = time.monotonic() - self.http_options.upstream_idle_timeout
        return sum(server.close_stale(before) for service in plane.services.values() for server in service.servers)

    # ------------------------------------------------------------------ shutdown

    async def drain(self, timeout: float) -> None:
        """Stop accepting, close idle connections, wait for in-flight work up to ``timeout``, then
        close everything."""
        self.draining = True
        deadline = self.loop.time() + max(0.0, timeout)
        for listener in self.listeners.values():
            listener.stop_accepting()
        waits = [listener.wait_idle(timeout) for listener in (*self.listeners.values(), *self._retired)]
        if self.connections is not None:
            # says Connection: close from now on, closes idle keep-alive connections, waits, aborts
            waits.append(self.connections.drain(timeout))
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True),
                                       max(0.0, deadline - self.loop.time()) + 0.5)
            except asyncio.TimeoutError:
                pass
        await self.close()

    async def close(self) -> None:
        for listener in (*self.listeners.values(), *self._retired):
            listener.close()
        self.listeners.clear()
        self._retired.clear()
        if self.http is not None:
            try:
                self.http.close()
            except Exception:
                log.exception("closing the HTTP plane failed")

    # ------------------------------------------------------------------ inspection

    def status(self) -> dict:
        return {
            "applied_version": self.config.version if self.config else 0,
            "applied_hash": self.config.hash if self.config else None,
            "listeners": sorted(describe_key(k) for k in self.listeners),
            "listener_errors": {describe_key(k): v for k, v in self.listener_errors.items()},
        }
