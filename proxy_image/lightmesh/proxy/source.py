"""Where the proxy's configurations come from: the controller's long poll, or a static file.

This module owns fetching and validating configurations; it never applies them. A source calls
``on_config(config)`` with every new, valid :class:`~lightmesh.config.ProxyConfig` and
``on_error(message, refused=...)`` with every failure (``refused=True``: an invalid config was
received and refused); the caller (the supervisor in
:mod:`lightmesh.proxy.main`) keeps serving its last good config whatever happens here.

:class:`ControllerSource` implements :mod:`lightmesh.wire` exactly::

    GET {url}/api/configuration/current
        If-None-Match: "<hash>"            (absent until a config is known)
        X-Lightmesh-Proxy: <name>
        X-Lightmesh-Applied-Version: <n>   (what the workers applied; 0 before the first)
    200 → validate, hand over, ask again at once with the new ETag
    304 → ask again at once
    503, other statuses, connection errors, timeouts → keep the last good config, retry after an
          exponential backoff from RETRY_MIN_SECONDS to RETRY_MAX_SECONDS (reset by any 200/304)

"At once" has a floor for answers that bring nothing new (a 304, the config already held, a
refused body): the next poll starts no sooner than ``MIN_POLL_SECONDS`` after the previous one
started. A controller holds such polls for up to 30 s, so the floor never delays it; a server that
does not hold them (a static file server, an intermediary that drops If-None-Match) would
otherwise be polled thousands of times a second. A new valid config is followed by a poll at once.

A refused (invalid) config's ETag becomes the next If-None-Match: the controller then holds the poll
until its config changes, and the next config is asked for at once. A server that sends the same
bad body again anyway is polled after an exponential backoff (reset by the next valid config).

:class:`FileSource` polls a file's (mtime, ctime, size, inode) every ``interval`` seconds and reloads
it on change (a new version with the same content is handed over too: the version in force is what
the file says; ctime: a file made readable by ``chmod`` is read again); a file that vanishes, cannot
be read or is half-written is reported and the last good config kept, and ``on_recovered`` is
called when the file holds the config in force again (a bad edit reverted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from typing import Callable
from urllib.parse import urlsplit

import aiohttp

from lightmesh import wire
from lightmesh.config import READABLE_SCHEMAS, ConfigError, ProxyConfig, content_hash, load_config_json

log = logging.getLogger("lightmesh.proxy.source")

#: The shortest time between the starts of two polls when the first brought nothing new.
MIN_POLL_SECONDS = 1.0

OnConfig = Callable[[ProxyConfig], None]
OnError = Callable[..., None]  # on_error(message, refused=False): refused = an invalid config was received


def parse_config(text: str | bytes, what: str) -> ProxyConfig:
    """Validate a config body; :class:`ConfigError` names ``what`` (the file or URL) and the element."""
    try:
        config = load_config_json(text)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None
    if not config.hash:
        # A hand-written file may omit the hash: stamp it, so ETags and /api/rawdata stay meaningful.
        config = config.model_copy(update={"hash": content_hash(config)})
    return config


class Backoff:
    """Exponential backoff with ±20 % jitter (proxies on every node must not retry in lockstep)."""

    def __init__(self, low: float = wire.RETRY_MIN_SECONDS, high: float = wire.RETRY_MAX_SECONDS,
                 jitter: float = 0.2) -> None:
        self.low, self.high, self.jitter = low, high, jitter
        self.current = low

    def reset(self) -> None:
        self.current = self.low

    def next(self) -> float:
        delay = self.current
        self.current = min(self.high, self.current * 2)
        spread = delay * self.jitter
        return min(self.high, max(self.low, delay + random.uniform(-spread, spread)))


class ControllerSource:
    """Long-polls the controller. ``applied_version()`` is what the workers have applied."""

    def __init__(self, url: str, name: str, on_config: OnConfig, on_error: OnError,
                 applied_version: Callable[[], int] = lambda: 0, *,
                 applied_hash: Callable[[], str | None] = lambda: None,
                 poll_timeout: float = wire.LONG_POLL_SECONDS + 15.0, backoff: Backoff | None = None,
                 wait_seconds: float | None = None, on_recovered: Callable[[], None] | None = None,
                 min_poll_seconds: float = MIN_POLL_SECONDS) -> None:
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - raises for a port that is no number or out of range
        except ValueError:
            raise ValueError(f"--controller {url!r}: its port must be a number from 1 to 65535") from None
        if parts.scheme.lower() not in ("http", "https") or not parts.hostname or url != url.strip():
            raise ValueError(f"--controller {url!r}: must be an http:// or https:// URL with a host")
        if "?" in url or "#" in url:
            raise ValueError(f"--controller {url!r}: must be the controller's base URL, without a query or fragment "
                             f"(the proxy asks for {wire.CONFIG_PATH} under it)")
        self.url = url.rstrip("/") + wire.CONFIG_PATH
        self._bare_url = self.url
        if wait_seconds is not None:
            self.url += f"?wait={wait_seconds:g}"
        self.name = name
        self.on_config = on_config
        self.on_error = on_error
        self.on_recovered = on_recovered
        self.applied_version = applied_version
        self.applied_hash = applied_hash
        self.poll_timeout = poll_timeout
        self.backoff = backoff or Backoff()
        # Refused configs in a row: a controller that ignores If-None-Match and sends the same bad
        # body again is asked less and less often (and the error is logged that often), not 20×/s.
        self.refused_backoff = Backoff(low=self.backoff.low, high=self.backoff.high)
        self.min_poll_seconds = min_poll_seconds
        self._held_hash: str | None = None  # hash of the last valid config handed over
        self._refused_body: int | None = None  # hash() of the last refused body
        self.etag: str | None = None  # what we send as If-None-Match
        self.connected = False  # last exchange with the controller succeeded
        self.polls = 0
        self._sent_applied: int | None = None  # applied version of the poll in flight
        self._applied_changed = asyncio.Event()

    def describe(self) -> dict:
        return {"kind": "controller", "url": self.url, "connected": self.connected, "etag": self.etag}

    def notify_applied(self) -> None:
        """The workers applied a new version: re-issue a held poll that still carries the old one,
        so the controller's view of this proxy (``/api/status/nodes``) is current."""
        if self._sent_applied is not None and self._sent_applied != int(self.applied_version()):
            self._applied_changed.set()

    async def run(self) -> None:
        """Poll until cancelled."""
        timeout = aiohttp.ClientTimeout(total=self.poll_timeout, connect=5.0)
        loop = asyncio.get_running_loop()
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=True) as session:
            while True:
                started = loop.time()
                self._applied_changed.clear()
                poll = asyncio.ensure_future(self.poll_once(session))
                changed = asyncio.ensure_future(self._applied_changed.wait())
                try:
                    await asyncio.wait((poll, changed), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    changed.cancel()
                    if not poll.done():
                        poll.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await poll
                if poll.cancelled():
                    continue  # superseded by notify_applied: ask again at once
                delay = poll.result()
                if delay is None:  # nothing new: a poll the server did not hold is paced
                    delay = self.min_poll_seconds - (loop.time() - started)
                if delay > 0:
                    await asyncio.sleep(delay)

    async def poll_once(self, session: aiohttp.ClientSession) -> float | None:
        """One request; returns how long to wait before the next one (0 = at once), or None when
        it brought nothing new (the caller then paces the next poll, see MIN_POLL_SECONDS)."""
        self._sent_applied = int(self.applied_version())
        headers = {wire.HEADER_PROXY_NAME: self.name, wire.HEADER_APPLIED_VERSION: str(self._sent_applied),
                   wire.HEADER_CONFIG_SCHEMA: ",".join(map(str, READABLE_SCHEMAS))}
        applied_hash = self.applied_hash()
        if applied_hash:
            headers[wire.HEADER_APPLIED_HASH] = applied_hash
        if self.etag:
            headers["If-None-Match"] = self.etag
        self.polls += 1
        # After an error, ask to be answered at once (?wait=0): a controller that restarted with
        # the config we hold would hold the poll (up to LONG_POLL_SECONDS) before we could say
        # we are connected again; the next poll is held as usual.
        reconnecting = not self.connected and self.etag
        try:
            async with session.get(self._bare_url + "?wait=0" if reconnecting else self.url, headers=headers) as resp:
                if resp.status == 304:
                    self._up()
                    return None
                if resp.status == 200:
                    body = await resp.read()
                    self._up()
                    return self._received(body, resp.headers.get("ETag"))
                text = (await resp.text(errors="replace"))[:200].strip()
                return self._down(f"controller {self.url} answered {resp.status}" + (f": {text}" if text else ""),
                                  quiet=resp.status == 503)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return self._down(f"controller {self.url} unreachable: {type(exc).__name__}: {exc}".rstrip(": "))

    def _up(self) -> None:
        if not self.connected:
            log.info("connected to controller %s", self.url)
            if self.on_recovered is not None:
                self.on_recovered()
        self.connected = True
        self.backoff.reset()

    def _down(self, message: str, quiet: bool = False) -> float:
        delay = self.backoff.next()
        if self.connected or not quiet:
            log.warning("%s; keeping the last good config, retrying in %.1fs", message, delay)
        self.connected = False
        self.on_error(message)
        return delay

    def _received(self, body: bytes, etag: str | None) -> float | None:
        """Validate and hand over a config; the delay before the next poll (see poll_once)."""
        try:
            config = parse_config(body, f"config from {self.url}")
        except ConfigError as exc:
            # Wait for the next change instead of fetching the same bad body again at once.
            self.etag = etag or self.etag
            log.error("refused: %s", exc)
            self.on_error(str(exc), refused=True)
            again, self._refused_body = hash(body) == self._refused_body, hash(body)
            if again:  # the server ignored If-None-Match: ask less and less often
                return self.refused_backoff.next()
            self.refused_backoff.reset()
            return None
        # The controller's own ETag is what it compares If-None-Match with; the hash-based one is
        # only a fallback for a server that sends none.
        self.etag = etag or config.etag()
        self._refused_body = None
        self.refused_backoff.reset()
        held, self._held_hash = self._held_hash == config.hash, config.hash
        self.on_config(config)
        return None if held else 0.0


class FileSource:
    """A static config file, reloaded when its (mtime, ctime, size, inode) changes."""

    def __init__(self, path: str, on_config: OnConfig, on_error: OnError, *, interval: float = 0.5,
                 on_recovered: Callable[[], None] | None = None) -> None:
        self.path = os.fspath(path)
        self.on_config = on_config
        self.on_error = on_error
        self.on_recovered = on_recovered
        self.failing = False  # the last look at the file found an error
        self.interval = interval
        self._seen: tuple | None = None
        self.loaded_hash: str | None = None
        self.loaded_version: int | None = None

    def describe(self) -> dict:
        return {"kind": "file", "path": self.path, "hash": self.loaded_hash, "version": self.loaded_version}

    async def run(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(self.interval)

    def check(self) -> bool:
        """Reload if the file changed; True when a new config was handed over."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            stamp = ("missing", exc.errno)
            if stamp != self._seen:
                self._seen = stamp
                message = f"config file {self.path}: {exc.strerror or exc}"
                log.error("%s; keeping the last good config", message)
                self._failed(message)
            return False
        stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
        if stamp == self._seen:
            return False
        self._seen = stamp
        try:
            with open(self.path, "rb") as fh:
                text = fh.read()
            config = parse_config(text, f"config file {self.path}")
        except OSError as exc:
            message = f"config file {self.path}: {exc.strerror or exc}"
            log.error("%s; keeping the last good config", message)
            self._failed(message)
            return False
        except ConfigError as exc:
            log.error("refused: %s; keeping the last good config", exc)
            self._failed(str(exc), refused=True)
            return False
        failing, self.failing = self.failing, False
        if (config.hash, config.version) == (self.loaded_hash, self.loaded_version):
            # touched or rewritten, same config: if it had been broken, it is the config in force again
            if failing and self.on_recovered is not None:
                log.info("config file %s: holds the config in force again", self.path)
                self.on_recovered()
            return False
        self.loaded_hash, self.loaded_version = config.hash, config.version
        self.on_config(config)
        return True

    def _failed(self, message: str, refused: bool = False) -> None:
        self.failing = True
        self.on_error(message, refused=refused)
