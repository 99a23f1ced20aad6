"""The proxy's admin port (default 8080), served by the supervisor process with aiohttp.

This module owns the HTTP surface only; what it reports comes from an :class:`AdminState` (the
supervisor, or a stub in tests):

``/ping``        200 ``OK`` once at least one live worker has applied a valid config (any version, 0
                 included; the others may still be starting or applying it, and a later config
                 being applied does not turn it back to 503); 503 before that, when no worker is
                 alive with a config, and while draining (the DaemonSet's readiness probe).
``/live``        200 while the process runs (liveness probe).
``/metrics``     Prometheus text 0.0.4: the workers' snapshots merged and rendered.
``/api/rawdata`` JSON: ``version``, ``hash``, ``config`` (the config in force), ``last_error``,
                 ``workers`` (``pid``, ``applied_version``, ``alive``...), ``source`` and more
                 (``lightmesh local`` waits on ``config.hash`` and the workers' ``applied_version``).
"""

from __future__ import annotations

import json
import logging
from typing import Protocol

from aiohttp import web

from lightmesh.netutil import HTTP_HEAD_TIMEOUT_SECONDS, LISTEN_BACKLOG, listening_socket

log = logging.getLogger("lightmesh.proxy.admin")

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AdminState(Protocol):
    def ready(self) -> bool:
        """At least one live worker has applied a valid config (any version), and not draining."""

    async def metrics_text(self) -> str:
        """Prometheus exposition of the merged worker metrics."""

    def rawdata(self) -> dict:
        """JSON-able state for ``/api/rawdata``."""


def make_app(state: AdminState) -> web.Application:
    async def ping(_: web.Request) -> web.Response:
        if state.ready():
            return web.Response(text="OK")
        return web.Response(status=503, text="no configuration applied yet")

    async def live(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def metrics(_: web.Request) -> web.Response:
        body = await state.metrics_text()
        return web.Response(body=body.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    async def rawdata(_: web.Request) -> web.Response:
        return web.Response(text=json.dumps(state.rawdata(), indent=1, default=str),
                            content_type="application/json")

    app = web.Application()
    app.router.add_get("/ping", ping)
    app.router.add_get("/live", live)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/rawdata", rawdata)
    return app


class AdminServer:
    """Start/stop wrapper; ``port`` is the bound port (useful with port 0 in tests)."""

    def __init__(self, state: AdminState, address: str, port: int) -> None:
        self.app = make_app(state)
        self.address, self.port = address, port
        self._runner: web.AppRunner | None = None

    async def start(self) -> AdminServer:
        # keepalive_timeout: aiohttp closes a connection waiting that long for a complete head
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False,
                                     keepalive_timeout=HTTP_HEAD_TIMEOUT_SECONDS)
        await self._runner.setup()
        sock = None
        try:
            sock = listening_socket(self.address, self.port)  # "::": dual stack (see lightmesh.netutil)
            await web.SockSite(self._runner, sock, backlog=LISTEN_BACKLOG).start()
        except BaseException as exc:
            if sock is not None:
                sock.close()
            await self._runner.cleanup()
            self._runner = None
            if isinstance(exc, OSError):
                raise OSError(exc.errno, f"admin port {self.address}:{self.port}: {exc.strerror or exc}") from None
            raise
        self.port = sock.getsockname()[1]
        log.info("admin listening on %s:%d", self.address, self.port)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
