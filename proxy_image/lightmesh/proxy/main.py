"""``lightmesh proxy``: flags, the supervisor process and its worker processes.

This module owns the process model::

    supervisor (this process)                         worker × --workers (python -m lightmesh.proxy.main)
      config source (controller long poll | file)       uvloop, Runtime: every listener (SO_REUSEPORT)
      admin port (/ping /live /metrics /api/rawdata)    applies each config it is sent, reports back
      ── socketpair per worker: length-prefixed JSON ──►

Control channel (4-byte big-endian length, then UTF-8 JSON; one message per frame):

supervisor → worker
    ``{"type": "init", "options": {...}}`` first, then ``{"type": "config", "config": {...}}`` for
    every config (the worker validates again: ``Runtime.apply``), ``{"type": "snapshot", "id": n}``,
    ``{"type": "drain"}``.
worker → supervisor
    ``{"type": "hello", "pid": n}``, ``{"type": "applied", "version", "hash", "listener_errors"}``,
    ``{"type": "refused", "version", "error"}``, ``{"type": "snapshot", "id", "metrics", "status"}``,
    ``{"type": "status", ...}`` (a listener came up on retry), ``{"type": "draining", "timeout"}``
    (a SIGTERM of its own: it drains, still answering snapshot requests, then exits), and last, as
    it exits after a drain, an unrequested snapshot (``"id": null``): its final counts.

A worker whose channel closes has died: it is restarted and given the current config, 0.5 s
later, doubling (up to 10 s) with each exit in a row that came within 30 s of its start, each
delay plus up to ``RESTART_JITTER`` (a quarter) at random, so workers that died together do not
restart in step. Every ``HEARTBEAT_INTERVAL`` (5 s) the supervisor asks each live worker for a
snapshot, one request outstanding at a time; a worker that leaves one unanswered for
``HEARTBEAT_TIMEOUT`` (30 s), counted from when the request was sent, is stuck (the kernel would
keep giving it its share of new connections): it is killed with SIGKILL, logged as an error, and
restarted the same way. A starting worker is not asked until its first message ("hello": imports
done, runtime built), and has ``WORKER_START_TIMEOUT`` (120 s, at least the heartbeat timeout)
from its start to send it. When the supervisor's own heartbeat loop ran late (more than
``HEARTBEAT_OVERSLEEP`` intervals since its previous round: the supervisor was stopped, its pod
frozen, its event loop stalled), the answers may be waiting unread in the channels: that round
kills nobody and every worker's clock starts again. A worker whose supervisor vanished (EOF)
drains and exits. SIGTERM, SIGINT or SIGHUP on the supervisor: it turns not ready (``/ping`` 503)
and, for ``--shutdown-delay`` seconds (default 0), workers go on serving and accepting as before,
so that clients still sent here while the pod leaves the Service's endpoints (kube-proxy takes a
moment) are served, not refused; a second signal ends the delay. Then workers drain (stop
accepting, close idle keep-alive connections, let in-flight requests finish up to
``--drain-timeout``), and everything exits 0. A worker that gets a SIGTERM of its own (serving
out ``--shutdown-delay`` first) drains the same way, tells the supervisor, keeps answering its
heartbeats meanwhile, exits and is restarted.

Metrics: ``/metrics`` asks every live worker for a snapshot and merges them with the supervisor's
own recorder, which alone counts ``config_reloads_total`` (once per config, not once per worker)
and reports ``config_version`` (the oldest version a live worker has applied; one that has applied
none yet, just restarted, does not count). Counters never go back: a worker that does not answer in
time is represented by its last snapshot (a scrape's or a heartbeat's), and the counters of a worker
that exited stay in the totals as of its last snapshot, so a crash loses at most what it counted in
the last heartbeat interval (a worker that drains sends a final one as it exits: nothing lost). Each
scrape counts each worker once: the live ones' last snapshots and the retired totals are taken in
one step, after the waits.

Access log (``--access-log``): every worker writes to the same stdout, one JSON object per line, each
line at most ``ACCESS_LOG_LINE_MAX`` (4096, PIPE_BUF) bytes in one ``write``, so lines of several
workers never interleave on a pipe; a longer record has its longest strings cut and
``"truncated": true``. Traffic never waits for stdout: a worker queues its lines (at most
``ACCESS_LOG_QUEUE_LINES``) for a thread of its own that writes them; a line that finds the queue
full (nobody reads stdout fast enough) is dropped and counted
(``lightmesh_proxy_access_log_dropped_total``; a warning on stderr once stdout flows again, at most
once a minute). A worker that exits writes what is queued first, for up to
``ACCESS_LOG_FLUSH_SECONDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import queue
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from lightmesh import wire
from lightmesh.cliargs import http_url
from lightmesh.config import ConfigError, ProxyConfig
from lightmesh.netutil import raise_fd_limit
from lightmesh.proxy import metrics as metrics_mod

log = logging.getLogger("lightmesh.proxy")

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct("!I")
SNAPSHOT_TIMEOUT = 2.0
# A worker that exits sends a last snapshot (what it counted while draining) and waits at most this
# long (seconds) for the supervisor to take it in (a stopped supervisor does not).
FINAL_SNAPSHOT_SECONDS = 2.0
RESTART_MIN, RESTART_MAX = 0.5, 10.0
RESTART_RESET_SECONDS = 30.0  # a worker that lived longer restarts after RESTART_MIN again
# Each restart delay is lengthened by up to this fraction, at random: workers that died together
# (a shared cause, a supervisor-wide event) do not go on starting, and competing for the CPU, in step.
RESTART_JITTER = 0.25
LISTENER_RETRY_SECONDS = 2.0
DEFAULT_DRAIN_TIMEOUT = 15.0  # the DaemonSet's terminationGracePeriodSeconds is 30
DEFAULT_MAX_CONNECTIONS = 10000  # per worker and TCP listener (HTTP: HTTPOptions' own default)
UNLIMITED = 1 << 62
# --workers: each worker is a whole Python process (~47 MB resident with uvloop and the proxy
# loaded), so 256 is already ~12 GB; the default (CPU count) is capped to it as well.
MAX_WORKERS = 256
MAX_SHUTDOWN_DELAY = 60.0
# The supervisor asks every worker for a metrics snapshot this often (seconds): a worker that dies
# loses at most the counts of one interval, and the answers are its heartbeat.
HEARTBEAT_INTERVAL = 5.0
# A worker that has left a heartbeat request unanswered this long (seconds, from when the request was
# sent) is stuck (a busy loop, SIGSTOP, a deadlock): the kernel would go on giving it its share of
# new connections, so it is killed (SIGKILL) and restarted like a worker that crashed.
HEARTBEAT_TIMEOUT = 30.0
# A heartbeat round that comes more than this many intervals after the previous one means the
# supervisor itself did not run (SIGSTOP, a frozen pod, a stalled event loop): the workers' answers
# may be waiting unread in the channels, so that round kills nobody and re-arms every clock.
HEARTBEAT_OVERSLEEP = 2.0
# A starting worker has this long (seconds; at least the heartbeat timeout) from its start to its
# first message: Python start-up and imports of many workers at once on few cores (24 workers on 2
# cores: tens of seconds) must not count as a stuck worker.
WORKER_START_TIMEOUT = 120.0


# ---------------------------------------------------------------------------------------- CLI


def _whole_number(low: int, high: int | None = None, what: str = "a whole number"):
    """An argparse ``type=`` for a whole number in [low, high] (no upper bound when ``high`` is None).
    Every failure is an ``ArgumentTypeError``, so argparse prints ``argument --workers: must be a
    whole number from 1 to 256, got 'abc'``, never this helper's name."""
    bounds = f"from {low} to {high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        digits = text.strip()
        unsigned = digits[1:] if digits[:1] in "+-" else digits
        # ASCII digits only (int() also takes '1_000' and other scripts' digits)
        valid = unsigned.isascii() and unsigned.isdigit()
        try:
            value = int(digits) if valid else None
        except ValueError:  # more digits than int() converts (4300)
            value = None
        if value is None or value < low or (high is not None and value > high):
            shown = text if len(text) <= 40 else text[:40] + "..."
            raise argparse.ArgumentTypeError(f"must be {what} {bounds}, got {shown!r}")
        return value
    return parse


_workers = _whole_number(1, MAX_WORKERS)
_positive_int = _whole_number(1)
_non_negative_int = _whole_number(0)
_port = _whole_number(0, 65535, what="a port number")


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:  # NaN and inf fail too
        raise argparse.ArgumentTypeError(f"must be seconds in (0, 86400], got {text!r}")
    return value


def _seconds_or_off(text: str) -> float:
    """Like _seconds, and 0 for "none"."""
    return 0.0 if text.strip() in ("0", "0.0") else _seconds(text)


def _shutdown_delay(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= MAX_SHUTDOWN_DELAY:  # NaN and inf fail too
        raise argparse.ArgumentTypeError(f"must be seconds from 0 to {MAX_SHUTDOWN_DELAY:g}, got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--controller", metavar="URL", help="controller API base URL (long-polled for config)")
    source.add_argument("--config", metavar="FILE", help="static ProxyConfig JSON file, reloaded on change")
    parser.add_argument("--admin-address", default="::",
                        help="admin port address (default ::, every IPv4 and IPv6 address)")
    parser.add_argument("--admin-port", type=_port, default=wire.DEFAULT_PROXY_ADMIN_PORT,
                        help=f"/ping /live /metrics /api/rawdata (default {wire.DEFAULT_PROXY_ADMIN_PORT})")
    parser.add_argument("--workers", type=_workers, default=min(os.cpu_count() or 1, MAX_WORKERS),
                        help=f"worker processes sharing every port with SO_REUSEPORT, 1 to {MAX_WORKERS} "
                             f"(default: CPU count, at most {MAX_WORKERS})")
    parser.add_argument("--name", default=os.environ.get(wire.ENV_POD_NAME) or socket.gethostname(),
                        help="proxy name reported to the controller (default: $POD_NAME, else hostname)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                        help="(default: %(default)s)")
    parser.add_argument("--log-format", choices=("json", "text"), default="text", help="(default: %(default)s)")
    parser.add_argument("--access-log", action="store_true", help="one JSON object per HTTP request and line, on stdout")
    parser.add_argument("--otlp-endpoint", metavar="URL", type=http_url,
                        help="OTLP/HTTP traces endpoint, e.g. http://collector:4318 (tracing off when unset)")
    parser.add_argument("--trace-sample-ratio", type=_ratio, default=None,
                        help="fraction of new traces sampled, 0 to 1 (default 1; a parent's decision is kept)")
    parser.add_argument("--max-connections", type=_non_negative_int, default=None,
                        help=f"client connections per worker: HTTP (all entry points) and each TCP route "
                             f"(default {DEFAULT_MAX_CONNECTIONS}; 0 = unlimited)")
    parser.add_argument("--header-timeout", type=_seconds, default=None,
                        help="seconds to receive a request head (default 10; then 408)")
    parser.add_argument("--idle-timeout", type=_seconds, default=None,
                        help="seconds a keep-alive connection may stay idle (default 180)")
    parser.add_argument("--body-timeout", type=_seconds, default=None,
                        help="seconds allowed between two reads of a request body (default 60)")
    parser.add_argument("--tunnel-idle-timeout", type=_seconds_or_off, default=None,
                        help="seconds an Upgrade (WebSocket) tunnel may carry nothing either way before it "
                             "is closed (default 0: never)")
    parser.add_argument("--response-timeout", type=_seconds_or_off, default=None,
                        help="seconds from a whole request to its response head when the route has no "
                             "request-timeout (default 0: none)")
    parser.add_argument("--max-header-bytes", type=_positive_int, default=None,
                        help="largest request head in bytes, blank line included, and largest trailer section "
                             "(default 65536; then 431)")
    parser.add_argument("--drain-timeout", type=_seconds, default=DEFAULT_DRAIN_TIMEOUT,
                        help=f"seconds in-flight requests get on shutdown (default {DEFAULT_DRAIN_TIMEOUT:g})")
    parser.add_argument("--shutdown-delay", type=_shutdown_delay, default=0.0,
                        help="seconds to go on serving and accepting, not ready, after SIGTERM and before the "
                             f"drain (0 to {MAX_SHUTDOWN_DELAY:g}; default 0; MeshInstall sets "
                             f"{wire.SHUTDOWN_DELAY_SECONDS:g}: the time kube-proxy takes to stop sending here)")
    # Not for operators (hidden): the tests shorten the heartbeat to see a stuck worker replaced.
    parser.add_argument("--heartbeat-interval", type=_seconds, default=HEARTBEAT_INTERVAL, help=argparse.SUPPRESS)
    parser.add_argument("--heartbeat-timeout", type=_seconds, default=HEARTBEAT_TIMEOUT, help=argparse.SUPPRESS)
    parser.add_argument("--worker-start-timeout", type=_seconds, default=WORKER_START_TIMEOUT, help=argparse.SUPPRESS)
    # Hidden too: a short access-log queue lets a test see lines dropped without thousands of requests.
    parser.add_argument("--access-log-queue", type=_whole_number(1, 1_000_000), default=ACCESS_LOG_QUEUE_LINES,
                        help=argparse.SUPPRESS)


def worker_options(args: argparse.Namespace) -> dict:
    """What a worker needs from the flags (JSON-able; sent in the ``init`` message)."""
    limit = args.max_connections
    http = {"access_log": bool(args.access_log),
            "max_connections": None if limit is None else (limit or UNLIMITED),
            "header_timeout": args.header_timeout, "idle_timeout": args.idle_timeout,
            "body_timeout": args.body_timeout, "response_timeout": args.response_timeout,
            "tunnel_idle_timeout": args.tunnel_idle_timeout,
            "max_header_bytes": args.max_header_bytes}
    return {"name": args.name, "log_level": args.log_level, "log_format": args.log_format, "workers": args.workers,
            "drain_timeout": args.drain_timeout,
            "shutdown_delay": getattr(args, "shutdown_delay", 0.0),
            "access_log_queue": getattr(args, "access_log_queue", ACCESS_LOG_QUEUE_LINES),
            "max_connections": DEFAULT_MAX_CONNECTIONS if limit is None else limit,  # TCP, per listener; 0 = none
            "otlp_endpoint": args.otlp_endpoint,
            "trace_sample_ratio": 1.0 if args.trace_sample_ratio is None else args.trace_sample_ratio,
            "http": {k: v for k, v in http.items() if v is not None}}


def run(args: argparse.Namespace) -> int:
    setup_logging(args.log_level, args.log_format)
    raise_fd_limit()  # before the workers start: they inherit it
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency; keep working without it
        return asyncio.run(Supervisor(args).run())
    return uvloop.run(Supervisor(args).run())


# ---------------------------------------------------------------------------------------- logging


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                       + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "pid": record.process,
               "message": record.getMessage()}
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# Every worker writes its access log to the same stdout. A write(2) of at most PIPE_BUF (4096 on
# Linux) bytes to a pipe is atomic; a longer one may be split and interleaved with another worker's.
ACCESS_LOG_LINE_MAX = 4096  # bytes, the newline included


def bound_access_line(message: str, limit: int = ACCESS_LOG_LINE_MAX - 1) -> str:
    """``message`` (one access record, a JSON object) if it fits in ``limit`` bytes of UTF-8, else the
    same object re-encoded with its longest string fields cut (path, host: what the client chose)
    and ``"truncated": true`` added, so the line stays one valid JSON object."""
    if len(message) <= limit and message.isascii():
        return message
    if len(message.encode("utf-8", "backslashreplace")) <= limit:
        return message
    try:
        record = json.loads(message)
    except ValueError:
        record = None
    if not isinstance(record, dict):  # not from http.access_log; still one JSON object per line
        record = {"message": message}
    record["truncated"] = True
    # json.dumps escapes non-ASCII (ensure_ascii): characters and bytes count the same from here
    for _ in range(len(record) + 1):  # each pass fits, or empties one string
        line = json.dumps(record, default=str)
        over = len(line) - limit
        if over <= 0:
            return line
        sizes = [(len(json.dumps(v)), k) for k, v in record.items() if isinstance(v, str) and v]
        if not sizes:
            break
        size, key = max(sizes)
        value, room = record[key], size - over  # what the field's encoding may keep, quotes included
        low, high = 0, len(value)  # the longest prefix that fits
        while low < high:
            mid = (low + high + 1) // 2
            if len(json.dumps(value[:mid])) <= room:
                low = mid
            else:
                high = mid - 1
        record[key] = value[:low]
    time_ = record.get("time")  # a record too wide even without its strings (not one http.py writes)
    return json.dumps({"time": time_ if isinstance(time_, (int, float)) else None, "truncated": True})


class AccessLogFormatter(logging.Formatter):
    """The message alone, bounded by :func:`bound_access_line`."""

    def format(self, record: logging.LogRecord) -> str:
        return bound_access_line(record.getMessage())


# Lines a worker keeps for stdout (each at most ACCESS_LOG_LINE_MAX bytes: at most 16 MiB, ~1 MiB of
# typical 250-byte lines); a line that finds the queue full is dropped and counted.
ACCESS_LOG_QUEUE_LINES = 4096
ACCESS_LOG_FLUSH_SECONDS = 2.0  # what a worker that exits waits for its queued lines to be written
ACCESS_LOG_WARN_SECONDS = 60.0  # at most one "lines dropped" warning on stderr this often


class AccessLogHandler(logging.Handler):
    """Access lines never make traffic wait: :meth:`emit` (on the worker's event loop) formats the
    record and queues the line, at most ``queue_lines`` of them; a thread of its own writes each
    line with one ``os.write`` on ``fd`` (stdout), the newline included. With the line bounded to
    :data:`ACCESS_LOG_LINE_MAX`, no other worker's line can land inside it on a pipe.

    When nobody reads stdout fast enough (a stalled log shipper), the writer thread blocks and the
    queue fills: further lines are dropped and counted in :attr:`dropped` (the worker's
    ``lightmesh_proxy_access_log_dropped_total``, as are lines a write error lost), with a warning
    on stderr, from the writer thread once stdout takes lines again, at most once every
    :data:`ACCESS_LOG_WARN_SECONDS`. :meth:`drain` waits (bounded) for the queued lines at exit."""

    def __init__(self, fd: int, queue_lines: int = ACCESS_LOG_QUEUE_LINES) -> None:
        super().__init__()
        self.fd = fd
        self._queue: queue.Queue = queue.Queue(queue_lines)
        self._full = 0  # lines dropped on a full queue (counted on the event loop's thread)
        self._failed = 0  # lines a write error lost (counted on the writer thread)
        self._reported = 0  # dropped lines a warning has told of
        self._reported_at: float | None = None
        self._thread = threading.Thread(target=self._write_lines, name="access-log", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Lines that never reached ``fd``: the queue was full, or the write failed."""
        return self._full + self._failed

    def emit(self, record: logging.LogRecord) -> None:
        try:
            data = (self.format(record) + "\n").encode("utf-8", "backslashreplace")
        except Exception:
            self.handleError(record)
            return
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self._full += 1

    def _write_lines(self) -> None:
        while True:
            data = self._queue.get()
            try:
                if data is None:  # close()
                    return
                self._write(data)
            except Exception as exc:  # EPIPE (nobody will ever read), EBADF...: the line is lost
                self._failed += 1
                self._warn_dropped(f"{type(exc).__name__}: {exc}")
            else:
                if self.dropped != self._reported:
                    self._warn_dropped()
            finally:
                self._queue.task_done()

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # one pass unless the descriptor is non-blocking or a file system splits it
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:  # O_NONBLOCK set by whoever shares the pipe: wait as a blocking write would
                select.select([], [self.fd], [], 1.0)
                continue
            view = view[written:]

    def _warn_dropped(self, why: str = "stdout was not read fast enough") -> None:
        now = time.monotonic()
        if self._reported_at is not None and now - self._reported_at < ACCESS_LOG_WARN_SECONDS:
            return
        dropped = self.dropped
        self._reported_at, self._reported = now, dropped
        logging.getLogger("lightmesh.proxy").warning(
            "access log: %d lines dropped so far (%s); see lightmesh_proxy_access_log_dropped_total",
            dropped, why)

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every queued line to be written (or lost); True when
        none is left."""
        deadline = time.monotonic() + timeout
        done = self._queue.all_tasks_done
        with done:
            while self._queue.unfinished_tasks:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                done.wait(remaining)
        return True

    def close(self) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # the writer thread ends after what is queued (a daemon anyway)
        super().close()


def setup_access_log(queue_lines: int = ACCESS_LOG_QUEUE_LINES) -> AccessLogHandler | None:
    """Access records go to stdout, one JSON object per line and nothing else on it (whatever
    ``--log-format`` and ``--log-level`` say), so a log shipper parses them as they are; the
    diagnostic log stays on stderr. Lines are at most :data:`ACCESS_LOG_LINE_MAX` bytes, each one
    write, from a queue and a thread of their own (see :class:`AccessLogHandler`, returned; None
    without a real stdout)."""
    handler: logging.Handler
    try:
        sys.stdout.flush()
        handler = AccessLogHandler(sys.stdout.fileno(), queue_lines)
    except (AttributeError, OSError, ValueError):  # no real stdout (embedded): best effort
        handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(AccessLogFormatter())
    access = logging.getLogger("lightmesh.access")
    access.handlers[:] = [handler]
    access.propagate = False
    access.setLevel(logging.INFO)
    return handler if isinstance(handler, AccessLogHandler) else None


def flush_access_log(handler: AccessLogHandler | None, timeout: float = ACCESS_LOG_FLUSH_SECONDS) -> None:
    """At a worker's exit: the queued lines, for up to ``timeout`` seconds; then the dropped count
    on stderr if no warning told it yet."""
    if handler is None:
        return
    if handler.drain(timeout):
        if handler.dropped != handler._reported:
            handler._reported_at = None
            handler._warn_dropped()
    else:
        log.warning("access log: %d lines still queued at exit were not written within %gs (%d dropped before)",
                    handler._queue.qsize(), timeout, handler.dropped)
    handler.close()


# ---------------------------------------------------------------------------------------- framing


async def read_message(reader: asyncio.StreamReader) -> dict | None:
    """One frame, or None at EOF (the other process is gone)."""
    try:
        header = await reader.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > MAX_FRAME:
            raise ValueError(f"control frame of {size} bytes exceeds {MAX_FRAME}")
        return json.loads(await reader.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def write_message(writer: asyncio.StreamWriter, message: dict) -> None:
    body = json.dumps(message, separators=(",", ":")).encode()
    writer.write(_HEADER.pack(len(body)) + body)


# ---------------------------------------------------------------------------------------- supervisor


@dataclasses.dataclass
class WorkerHandle:
    index: int
    proc: subprocess.Popen | None = None
    writer: asyncio.StreamWriter | None = None
    pid: int | None = None
    alive: bool = False
    applied_version: int = 0
    applied_hash: str | None = None
    listener_errors: dict = dataclasses.field(default_factory=dict)
    listeners: list = dataclasses.field(default_factory=list)
    last_error: str | None = None
    restarts: int = 0
    quick_exits: int = 0  # exits in a row, each within RESTART_RESET_SECONDS of its start (back-off)
    started_at: float = 0.0
    pending: dict = dataclasses.field(default_factory=dict)  # snapshot id → Future
    task: asyncio.Task | None = None
    last_metrics: dict | None = None  # its last metrics snapshot (stands in when a scrape times out)
    last_heard: float = 0.0  # time.monotonic() of its last message (or of its start)
    heartbeat_id: int | None = None  # the periodic snapshot request it has not answered yet
    heard: bool = False  # it sent a message since its start (until then: WORKER_START_TIMEOUT applies)
    # time.monotonic() its silence counts from: its start until its first message, then the sending of
    # the heartbeat request it has not answered (None: nothing outstanding)
    silent_since: float | None = None
    draining: bool = False  # it said it drains (a SIGTERM of its own) and will exit
    rejoining: bool = False  # restarted: its first applied config makes the others recycle (see steering)

    def describe(self) -> dict:
        return {"index": self.index, "pid": self.pid, "alive": self.alive, "applied_version": self.applied_version,
                "applied_hash": self.applied_hash, "listeners": self.listeners,
                "listener_errors": self.listener_errors,
                "last_error": self.last_error, "restarts": self.restarts, "draining": self.draining}


def _child_env() -> dict[str, str]:
    """The worker imports this very package, wherever it was imported from."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[2])  # the directory holding the lightmesh package
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH", "")) if p)
    return env


class Supervisor:
    """Config source, admin port, workers. Also the :class:`~lightmesh.proxy.admin.AdminState`."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.options = worker_options(args)
        self.metrics = metrics_mod.ProxyMetrics()
        self.config: ProxyConfig | None = None
        self.config_json: dict | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self._error_origin = "worker"
        self.workers = [WorkerHandle(i) for i in range(args.workers)]
        self._last_config_version = 0  # the gauge while no serving worker has a config (see config_version)
        self.started_at = time.time()
        self.stopping = False  # a shutdown signal came: not ready from then on
        self.draining = False  # the workers were told to drain: none is restarted or judged any more
        self._stop = asyncio.Event()
        self._hurry = asyncio.Event()  # a second signal: no more shutdown delay
        self._snapshot_ids = 0
        self._last_round_at: float | None = None  # time.monotonic() of the last heartbeat round
        self.retired_metrics: dict = {}  # counters of workers that exited
        self._refused_versions: set = set()
        self._tasks: set[asyncio.Task] = set()
        self.source = None
        self.admin = None

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):  # HUP: the terminal went away
            loop.add_signal_handler(sig, self.stop)
        from lightmesh.proxy.admin import AdminServer
        from lightmesh.proxy.source import ControllerSource, FileSource

        self.admin = AdminServer(self, self.args.admin_address, self.args.admin_port)
        try:
            await self.admin.start()
        except OSError as exc:
            log.error("%s", exc)
            return 1
        if self.args.controller:
            try:
                self.source = ControllerSource(self.args.controller, self.args.name, self._on_config,
                                               self._on_error, self.applied_version,
                                               applied_hash=self.applied_hash,
                                               on_recovered=self._on_source_recovered)
            except ValueError as exc:
                log.error("%s", exc)
                await self.admin.stop()
                return 2
        else:
            self.source = FileSource(self.args.config, self._on_config, self._on_error,
                                     on_recovered=self._on_source_recovered)
        log.info("lightmesh proxy %s: %d workers, config from %s", self.args.name, len(self.workers),
                 self.args.controller or self.args.config)
        for worker in self.workers:
            await self._spawn(worker)
        source_task = loop.create_task(self.source.run())
        heartbeat_task = loop.create_task(self._heartbeat())
        await self._stop.wait()  # (stop() set self.stopping: not ready from then on)
        delay = getattr(self.args, "shutdown_delay", 0.0)
        if delay > 0 and not self._hurry.is_set():
            log.info("shutting down: not ready; serving on for %gs before draining (a second signal: at once)", delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._hurry.wait()
        log.info("shutting down: draining workers (up to %.0fs)", self.args.drain_timeout)
        self.draining = True
        for task in (source_task, heartbeat_task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._stop_workers()
        await self.admin.stop()
        log.info("stopped")
        return 0

    def stop(self) -> None:
        # Set at once (not after the wait returns): workers exiting on the same group signal
        # must not be restarted.
        self.stopping = True
        if self._stop.is_set():
            self._hurry.set()
        self._stop.set()

    async def _spawn(self, worker: WorkerHandle) -> None:
        parent, child = socket.socketpair()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "lightmesh.proxy.main", "--worker-fd", str(child.fileno())],
                                    pass_fds=(child.fileno(),), env=_child_env())
        except OSError as exc:
            parent.close()
            child.close()
            log.error("worker %d: cannot start: %s", worker.index, exc)
            self._schedule_restart(worker)
            return
        finally:
            child.close()  # the worker has its own copy
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        worker.proc, worker.writer, worker.pid = proc, writer, proc.pid
        worker.alive, worker.applied_version, worker.applied_hash = True, 0, None
        worker.rejoining = worker.restarts > 0
        worker.listener_errors, worker.listeners, worker.started_at = {}, [], time.monotonic()
        worker.last_heard, worker.heartbeat_id = worker.started_at, None
        worker.heard, worker.silent_since, worker.draining = False, worker.started_at, False
        write_message(writer, {"type": "init", "index": worker.index, "options": self.options})
        if self.config_json is not None:
            write_message(writer, {"type": "config", "config": self.config_json})
        worker.task = asyncio.get_running_loop().create_task(self._read_worker(worker, reader))

    async def _read_worker(self, worker: WorkerHandle, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                msg = await read_message(reader)
            except ValueError as exc:
                log.error("worker %d: bad control message (%s): killing it", worker.index, exc)
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                msg = None
            if msg is None:
                break
            self._handle(worker, msg)
        await self._worker_exited(worker)

    def _handle(self, worker: WorkerHandle, msg: dict) -> None:
        kind = msg.get("type")
        worker.last_heard = time.monotonic()  # any message: its event loop runs
        if not worker.heard:  # started: the heartbeat takes over from the start-up allowance
            worker.heard = True
            if worker.heartbeat_id is None:
                worker.silent_since = None
        if kind == "hello":
            worker.pid = msg.get("pid", worker.pid)
        elif kind == "applied":
            worker.applied_version, worker.applied_hash = msg["version"], msg.get("hash")
            self.config_version()  # the value the gauge keeps should this worker be the only one and restart
            worker.listener_errors = msg.get("listener_errors") or {}
            worker.listeners = msg.get("listeners") or []
            worker.last_error = None
            for error in worker.listener_errors.values():
                self._record_error(error, origin="listener")
            notify = getattr(self.source, "notify_applied", None)
            if notify is not None:
                notify()
            if worker.rejoining:
                # A restart reorders every port's SO_REUSEPORT group: clients steered by IP now map to
                # other workers, but their open keep-alive connections stay where they were, each
                # worker with its own buckets. The others end theirs on rate-limited ports, so each
                # client reconnects to its one worker (the restarted one has none yet).
                worker.rejoining = False
                for other in self.workers:
                    if other is not worker and other.alive and other.writer is not None:
                        with contextlib.suppress(Exception):
                            write_message(other.writer, {"type": "recycle"})
        elif kind == "status":
            worker.listener_errors = msg.get("listener_errors") or {}
            worker.listeners = msg.get("listeners") or worker.listeners
            if self._error_origin == "listener" and not any(w.listener_errors for w in self.workers if w.alive):
                self.last_error = None  # every listener that could not open is open now
        elif kind == "refused":
            worker.last_error = msg.get("error")
            self._record_error(f"worker {worker.index}: {msg.get('error')}")
            if msg.get("version") not in self._refused_versions:  # once per config, not per worker
                self._refused_versions.add(msg.get("version"))
                self.metrics.config_failed()
        elif kind == "snapshot":
            # kept whoever asked (a scrape or the heartbeat): what stays of the worker if it dies
            worker.last_metrics = _worker_counts(msg.get("metrics") or {})
            ident = msg.get("id")
            # a worker answers in order: an answer to this request or a later one (a scrape's)
            if worker.heartbeat_id is not None and isinstance(ident, int) and ident >= worker.heartbeat_id:
                worker.heartbeat_id, worker.silent_since = None, None
            fut = worker.pending.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif kind == "draining":  # it keeps answering heartbeats until it exits (then: restarted)
            worker.draining = True

            def report(pid=worker.pid, timeout=msg.get("timeout") or self.args.drain_timeout) -> None:
                # a signal to the whole group reaches the workers too, and their message may come
                # before the supervisor's own handler runs: said only if the proxy is not stopping
                if not self.stopping:
                    log.warning("worker %d (pid %s) got a SIGTERM: draining (up to %gs), then it exits and is "
                                "restarted", worker.index, pid, timeout)
            asyncio.get_running_loop().call_later(0.5, report)
        else:
            log.warning("worker %d: unknown control message %r", worker.index, kind)

    async def _worker_exited(self, worker: WorkerHandle) -> None:
        worker.alive = False
        for fut in worker.pending.values():
            if not fut.done():
                fut.set_result(None)
        worker.pending.clear()
        if worker.writer is not None:
            worker.writer.close()
        if worker.last_metrics is not None:
            # Its counters stay in the totals (a counter that drops is a reset to Prometheus, and
            # rate() would count the worker's whole life again); its gauges end with it.
            self.retired_metrics = metrics_mod.merge([self.retired_metrics,
                                                      metrics_mod.counters_only(worker.last_metrics)])
            worker.last_metrics = None
        code = await asyncio.to_thread(_reap, worker.proc)
        # Shutting down, a worker that drained (a signal to the whole group reaches the workers
        # too) is not restarted; one that died otherwise during the --shutdown-delay is: the proxy
        # still serves then.
        if self.draining or (self.stopping and worker.draining):
            return
        log.error("worker %d (pid %s) exited with code %s; restarting it", worker.index, worker.pid, code)
        self._schedule_restart(worker)

    async def _heartbeat(self) -> None:
        """Every ``--heartbeat-interval`` (:data:`HEARTBEAT_INTERVAL`), ask each live worker for a
        metrics snapshot, at most one such request outstanding per worker (its answer refreshes
        ``last_metrics``: what stays of the worker's counters if it dies). See
        :meth:`_heartbeat_round` for who is killed."""
        interval = getattr(self.args, "heartbeat_interval", HEARTBEAT_INTERVAL)
        # at least two intervals: one answer that comes late is no death
        timeout = max(getattr(self.args, "heartbeat_timeout", HEARTBEAT_TIMEOUT), 2 * interval)
        self._last_round_at = time.monotonic()  # a pause before the first round counts as oversleeping too
        while not self.draining:
            await asyncio.sleep(interval)
            try:
                self._heartbeat_round(timeout)
            except Exception:  # never let supervision stop silently
                log.exception("heartbeat round failed")

    def _heartbeat_round(self, timeout: float) -> None:
        """One round. A worker that has left its heartbeat request unanswered for more than
        ``timeout`` seconds since it was sent, or that started more than ``--worker-start-timeout``
        (:data:`WORKER_START_TIMEOUT`, at least ``timeout``) ago and has sent nothing yet, is stuck:
        SIGKILL, and its reader task restarts it as any worker that exited. A round that comes more
        than :data:`HEARTBEAT_OVERSLEEP` intervals after the previous one kills nobody: this process
        did not run meanwhile (stopped, frozen, its loop stalled), the answers may be unread in the
        channels; every worker's silence counts from now instead."""
        now = time.monotonic()
        interval = getattr(self.args, "heartbeat_interval", HEARTBEAT_INTERVAL)
        start_limit = max(getattr(self.args, "worker_start_timeout", WORKER_START_TIMEOUT), timeout)
        previous, self._last_round_at = self._last_round_at, now
        if previous is not None and now - previous > HEARTBEAT_OVERSLEEP * interval:
            log.warning("heartbeat: the supervisor did not run for %.1fs (interval %gs): no worker is judged "
                        "on that time, every heartbeat clock starts again", now - previous, interval)
            for worker in self.workers:
                if worker.silent_since is not None:
                    worker.silent_since = now
            return
        for worker in self.workers:
            if self.draining or not (worker.alive and worker.writer is not None and worker.proc is not None):
                continue
            if worker.silent_since is not None:
                silent = now - worker.silent_since
                limit = timeout if worker.heard else start_limit
                if silent > limit:
                    if worker.proc.poll() is None:
                        if worker.heard:
                            log.error("worker %d (pid %s) answered no heartbeat for %.1fs (limit %gs): stuck, "
                                      "killing it (SIGKILL) to restart it", worker.index, worker.pid, silent, limit)
                        else:
                            log.error("worker %d (pid %s) sent nothing in the %.1fs since its start (limit %gs): "
                                      "stuck starting, killing it (SIGKILL) to restart it", worker.index,
                                      worker.pid, silent, limit)
                        with contextlib.suppress(ProcessLookupError):
                            worker.proc.kill()
                    continue  # its reader task sees the channel close
            if worker.heard and worker.heartbeat_id is None:  # a starting worker is not asked yet
                self._snapshot_ids += 1
                try:
                    write_message(worker.writer, {"type": "snapshot", "id": self._snapshot_ids})
                except Exception:  # its reader task notices the death
                    continue
                worker.heartbeat_id, worker.silent_since = self._snapshot_ids, now

    def _schedule_restart(self, worker: WorkerHandle) -> None:
        lived = time.monotonic() - worker.started_at if worker.started_at else 0.0
        # Crash loops back off (0.5, 1, 2, 4, 8, 10, 10... s); a worker that ran a while restarts
        # at once-ish, and its next quick death starts the back-off over.
        if lived > RESTART_RESET_SECONDS:
            worker.quick_exits = 0
        delay = min(RESTART_MAX, RESTART_MIN * 2 ** min(worker.quick_exits, 5))
        delay *= 1.0 + random.uniform(0.0, RESTART_JITTER)  # workers that died together restart apart
        worker.quick_exits += 1
        worker.restarts += 1

        async def later() -> None:
            await asyncio.sleep(delay)
            if not self.draining:
                await self._spawn(worker)

        task = asyncio.get_running_loop().create_task(later())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stop_workers(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for worker in self.workers:
            if worker.alive and worker.writer is not None:
                with contextlib.suppress(Exception):
                    write_message(worker.writer, {"type": "drain"})
        deadline = time.monotonic() + self.args.drain_timeout + 5.0
        for worker in self.workers:
            if worker.proc is None:
                continue
            while worker.proc.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            if worker.proc.poll() is None:
                log.error("worker %d (pid %s) did not stop in time: killing it", worker.index, worker.pid)
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.kill()
                await asyncio.to_thread(_reap, worker.proc)
        for worker in self.workers:
            if worker.task is not None:
                with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                    await asyncio.wait_for(worker.task, 2.0)

    # ------------------------------------------------------------------ configs

    def _on_config(self, config: ProxyConfig) -> None:
        previous = self.config
        if previous is not None and (previous.hash, previous.version) == (config.hash, config.version):
            self._on_source_recovered()  # the source answers again; nothing to hand on
            return
        self.config = config
        self.config_json = config.model_dump(mode="json")
        self.last_error = None
        self.metrics.config_applied(config.version)
        # (bounded without scrapes too) The previous config's names are kept until a scrape every
        # worker answers: a worker may still report counts of a removed service from before the
        # reload, in an answer queued before the config reached it.
        self._prune_retired(self._live_metrics(), metrics_mod.config_names(previous) if previous else set())
        log.info("configuration version %d (%s) received%s", config.version, config.hash[:12],
                 f", replacing version {previous.version}" if previous else "")
        for worker in self.workers:
            if worker.alive and worker.writer is not None:
                try:
                    write_message(worker.writer, {"type": "config", "config": self.config_json})
                except Exception as exc:  # its reader task notices the death
                    log.warning("worker %d: cannot send the config: %s", worker.index, exc)

    def _on_error(self, message: str, refused: bool = False) -> None:
        if refused:
            self.metrics.config_failed()
        self._record_error(message, origin="source")

    def _on_source_recovered(self) -> None:
        # "controller unreachable" (or "config file unreadable") is no longer true once it answers
        # (or holds the config in force again); a worker's error stays.
        if self._error_origin == "source":
            self.last_error = None

    def _record_error(self, message: str, origin: str = "worker") -> None:
        self._error_origin = origin  # source, listener or worker: what may clear it
        self.last_error = message
        self.last_error_at = time.time()

    def _serving(self) -> list[WorkerHandle]:
        """Live workers that serve: not one draining after its own SIGTERM (its listeners are
        closed and it applies no new config)."""
        return [w for w in self.workers if w.alive and not w.draining]

    def applied_version(self) -> int:
        """What every serving worker has applied, for the controller (``X-Lightmesh-Applied-Version``
        of each poll): 0 while one has applied nothing yet (just restarted), as
        :meth:`applied_hash` is None then; see :meth:`config_version` for the gauge."""
        serving = [w.applied_version for w in self._serving()]
        return min(serving) if serving else 0

    def config_version(self) -> int:
        """``lightmesh_proxy_config_version``: the oldest version a serving worker has applied. A
        worker that has applied none yet (restarted, its config on the way) has no version and is
        left out, not taken for version 0; when none has one (the only worker restarting), the
        last version shown stays (0 before any config)."""
        applied = [w.applied_version for w in self._serving() if w.applied_hash is not None]
        if applied:
            self._last_config_version = min(applied)
        return self._last_config_version

    def applied_hash(self) -> str | None:
        """The config hash every serving worker applied, or None while they differ (or none has one)."""
        hashes = {w.applied_hash for w in self._serving()}
        return hashes.pop() if len(hashes) == 1 and None not in hashes else None

    # ------------------------------------------------------------------ AdminState

    def ready(self) -> bool:
        # Not ready while draining: the endpoint leaves the Service before connections are cut.
        # Any valid config counts, version 0 included: a worker reports the hash it applied.
        return (not self.stopping and self.config is not None
                and any(w.applied_hash is not None for w in self._serving()))

    async def _ask_for_snapshots(self) -> bool:
        """Ask every live worker for a metrics snapshot and wait for the answers, up to
        ``SNAPSHOT_TIMEOUT`` in all (not one after the other): each answer refreshes that worker's
        ``last_metrics`` (see :meth:`_handle`); one that does not come in time leaves the last.
        True when every worker asked answered."""
        loop = asyncio.get_running_loop()
        waits = []
        for worker in self.workers:
            if not (worker.alive and worker.writer is not None):
                continue
            self._snapshot_ids += 1
            fut = loop.create_future()
            worker.pending[self._snapshot_ids] = fut
            try:
                write_message(worker.writer, {"type": "snapshot", "id": self._snapshot_ids})
            except Exception:
                worker.pending.pop(self._snapshot_ids, None)
                continue
            waits.append((worker, self._snapshot_ids, fut))
        if not waits:
            return True
        await asyncio.wait([fut for _, _, fut in waits], timeout=SNAPSHOT_TIMEOUT)
        answered = True
        for worker, ident, fut in waits:
            if not fut.done():  # (a worker that exited meanwhile had its futures resolved)
                answered = False
                worker.pending.pop(ident, None)
                fut.cancel()
                log.warning("worker %d: no metrics snapshot within %.0fs; its last one stands in",
                            worker.index, SNAPSHOT_TIMEOUT)
        return answered

    def _live_metrics(self) -> list[dict]:
        """The last snapshot of every worker alive now. With :attr:`retired_metrics` read in the
        same step (no ``await`` between), each worker is counted exactly once: ``_worker_exited``
        moves a worker's last snapshot into the retired totals and marks it dead in one step too."""
        return [w.last_metrics for w in self.workers if w.alive and w.last_metrics is not None]

    async def snapshots(self) -> list[dict]:
        await self._ask_for_snapshots()
        return self._live_metrics()

    async def metrics_text(self) -> str:
        # Ask the workers first, then, in one step with no await in it, take the live workers' last
        # snapshots and the retired totals. Deciding who is alive only after all the waits: a worker
        # that answered, then exited while the scrape still waited for another, was taken from its
        # answer and from the retired totals both (counted twice, then a drop: a reset to
        # Prometheus). Reading the retired totals before the wait lost, for that one scrape, a
        # worker that exited meanwhile. Now it is in the retired totals only, as of its last
        # snapshot (its final one, if it drained).
        answered = await self._ask_for_snapshots()
        own = self.metrics.snapshot()
        own[metrics_mod.PREFIX + "config_version"] = [[self.config_version()]]
        live = self._live_metrics()
        if answered:  # (a stand-in snapshot may predate counts a worker has yet to report)
            self._prune_retired(live)
        return metrics_mod.render(metrics_mod.merge([own, self.retired_metrics, *live]))

    def _prune_retired(self, live: list[dict], also: set[str] = frozenset()) -> None:
        """Exited workers' counters: only those of services and routes still configured (as workers
        do), or still shown by a live worker's last snapshot, or in ``also``: one that has not answered
        since a reload still shows a removed service, and pruning its retired part first made that
        counter go down (a reset to Prometheus) before the series went. Run at each config and at
        each scrape that every worker answered."""
        if self.config is None:
            return
        names = metrics_mod.config_names(self.config) | also
        for snapshot in live:
            names |= metrics_mod.snapshot_names(snapshot)
        self.retired_metrics = metrics_mod.retain_snapshot(self.retired_metrics, names)

    def rawdata(self) -> dict:
        config = self.config
        return {
            "name": self.args.name,
            "version": config.version if config else 0,
            "hash": config.hash if config else None,
            "ready": self.ready(),
            "config": self.config_json,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
            "source": self.source.describe() if self.source is not None else None,
            "workers": [w.describe() for w in self.workers],
            "started_at": self.started_at,
        }


def _worker_counts(snapshot: dict) -> dict:
    """A worker's snapshot without what the supervisor reports itself: config reloads (once per
    config, not once per worker) and the config version (what every live worker applied)."""
    snap = dict(snapshot)
    snap.pop(metrics_mod.PREFIX + "config_reloads_total", None)
    snap.pop(metrics_mod.PREFIX + "config_version", None)
    return snap


def _reap(proc: subprocess.Popen | None) -> int | None:
    if proc is None:
        return None
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# ---------------------------------------------------------------------------------------- worker


def _make_tracer(options: dict):
    """One OTLP/HTTP exporting tracer per worker (``--otlp-endpoint``), or None: tracing off."""
    endpoint = options.get("otlp_endpoint")
    if not endpoint:
        return None
    from lightmesh.proxy import tracing
    return tracing.make_tracer(endpoint, service_name="lightmesh-proxy",
                               sample_ratio=float(options.get("trace_sample_ratio", 1.0)))


def _build_runtime_options(options: dict, tracer=None):
    from lightmesh.proxy.runtime import RuntimeOptions
    http_options = None
    try:
        from lightmesh.proxy import http as http_mod
    except ImportError:
        http_mod = None
    if http_mod is not None and hasattr(http_mod, "HTTPOptions"):
        wanted = options.get("http") or {}
        cls = http_mod.HTTPOptions
        if dataclasses.is_dataclass(cls):
            names = {f.name for f in dataclasses.fields(cls)}
        else:
            names = set(getattr(cls, "model_fields", {}) or getattr(cls, "__slots__", ()) or ())
        unknown = sorted(set(wanted) - names)
        if unknown:
            log.debug("HTTPOptions has no %s; ignored", ", ".join(unknown))
        kwargs = {k: v for k, v in wanted.items() if k in names}
        if tracer is not None and "tracer" in names:
            kwargs["tracer"] = tracer
        http_options = cls(**kwargs)
    return RuntimeOptions(http=http_options, max_connections=int(options.get("max_connections") or 0),
                          workers=int(options.get("workers") or 1))


async def _worker(fd: int) -> int:
    from lightmesh.proxy.runtime import Runtime

    loop = asyncio.get_running_loop()
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    init = await read_message(reader)
    if not init or init.get("type") != "init":
        return 2
    options = init.get("options") or {}
    setup_logging(options.get("log_level", "info"), options.get("log_format", "text"))
    access = setup_access_log(int(options.get("access_log_queue") or ACCESS_LOG_QUEUE_LINES)) \
        if (options.get("http") or {}).get("access_log") else None
    wlog = logging.getLogger(f"lightmesh.proxy.worker{init.get('index', '')}")
    metrics = metrics_mod.ProxyMetrics()
    try:
        tracer = _make_tracer(options)
    except Exception as exc:  # tracing is an add-on: a bad endpoint must not stop the data plane
        wlog.error("tracing disabled: %s", exc)
        tracer = None
    runtime = Runtime(metrics, _build_runtime_options(options, tracer), loop)
    stop = asyncio.Event()
    hurry = asyncio.Event()  # a second SIGTERM: no more shutdown delay

    def on_sigterm() -> None:
        if stop.is_set():
            hurry.set()
        stop.set()
    # SIGTERM only: SIGINT and SIGHUP (a terminal's, sent to the whole group) stay ignored (see
    # worker_main); the supervisor decides.
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    write_message(writer, {"type": "hello", "pid": os.getpid()})

    async def retry_listeners() -> None:
        while True:
            await asyncio.sleep(LISTENER_RETRY_SECONDS)
            if await runtime.retry_failed():
                write_message(writer, {"type": "status", **runtime.status()})
            runtime.close_stale_upstreams()  # a server no request goes to would keep them open
            runtime.retain_metrics()  # series a request in flight at a swap brought back

    state = {"draining": False, "applying": False}

    def snapshot_message(ident) -> dict:
        # breaker states as of now: open → recovering happens by the clock, not only on a
        # request, and breakers of a config no longer in force are gone
        try:
            metrics.breaker_state = runtime.http.breaker_states() if runtime.http is not None else {}
            status = runtime.status()
        except Exception:  # an answer matters more (it is the heartbeat): keep the last states
            wlog.exception("worker status for a snapshot failed")
            status = {}
        metrics.access_log_dropped = access.dropped if access is not None else 0
        return {"type": "snapshot", "id": ident, "metrics": metrics.snapshot(), "status": status}

    async def serve() -> None:
        # Also while this worker drains on a SIGTERM of its own: it answers the supervisor's
        # snapshot requests (its heartbeat) until it exits, and ignores configs (Runtime refuses
        # them when draining, which would count as a refused config).
        while True:
            msg = await read_message(reader)
            if msg is None:
                if not state["draining"]:
                    wlog.warning("supervisor gone: draining")
                return
            kind = msg.get("type")
            if kind == "config":
                data = msg.get("config")
                version = data.get("version") if isinstance(data, dict) else None
                if state["draining"]:
                    wlog.info("configuration version %s not applied: draining", version)
                    continue
                state["applying"] = True
                try:
                    result = await runtime.apply(data)
                except ConfigError as exc:
                    wlog.error("configuration version %s refused: %s", version, exc)
                    write_message(writer, {"type": "refused", "version": version, "error": str(exc)})
                    continue
                finally:
                    state["applying"] = False
                wlog.info("applied configuration version %d (%d listeners%s)", result.version,
                          len(runtime.listeners),
                          f", {len(result.listener_errors)} failed" if result.listener_errors else "")
                write_message(writer, {"type": "applied", "version": result.version, "hash": result.hash,
                                       "listener_errors": result.listener_errors,
                                       "listeners": runtime.status()["listeners"]})
            elif kind == "snapshot":
                write_message(writer, snapshot_message(msg.get("id")))
            elif kind == "recycle":  # a worker restarted (see the supervisor's "applied")
                recycled = runtime.recycle_steered()
                if recycled:
                    wlog.info("a worker restarted: %d client connections on rate-limited ports end after their "
                              "current request, so each client IP reconnects to its one worker", recycled)
            elif kind == "drain":
                if not state["draining"]:
                    return
                hurry.set()  # serving out a delay of its own SIGTERM: the supervisor says drain now
            else:
                wlog.warning("unknown control message %r", kind)

    serving = loop.create_task(serve())
    stopped = loop.create_task(stop.wait())
    retrying = loop.create_task(retry_listeners())
    await asyncio.wait((serving, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    retrying.cancel()
    drain_timeout = float(options.get("drain_timeout", DEFAULT_DRAIN_TIMEOUT))
    state["draining"] = True
    if not serving.done():
        # A SIGTERM of this worker's own (the supervisor's would come as "drain" too): the
        # supervisor goes on asking for heartbeats, which must be answered while in-flight
        # requests finish, or it would take this worker for stuck and kill it mid-drain.
        if state["applying"]:  # as before: a config being applied is abandoned, then answer on
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await serving
            serving = loop.create_task(serve())
        with contextlib.suppress(Exception):
            write_message(writer, {"type": "draining", "timeout": drain_timeout})
        # As the supervisor does on its own signal (a signal to the whole group, e.g. systemd's or
        # `kill -TERM -PGID`, reaches both): serve on for the delay, then drain.
        delay = float(options.get("shutdown_delay") or 0.0)
        if delay > 0 and not hurry.is_set():
            wlog.info("SIGTERM: serving on for %gs, then draining (up to %gs) and exiting", delay, drain_timeout)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await hurry.wait()
        else:
            wlog.info("SIGTERM: draining (up to %gs), then exiting", drain_timeout)
    else:
        # The supervisor's drain (the whole proxy stops; or its channel closed): its scrapes and
        # heartbeats go on meanwhile, so requests that finish during the drain show in /metrics.
        serving = loop.create_task(serve())
    await runtime.drain(drain_timeout)
    serving.cancel()
    if tracer is not None:
        # flushes the batch exporter, for at most otel.SHUTDOWN_SECONDS; off the loop
        await asyncio.to_thread(tracer.shutdown)
    if access is not None:  # the lines still queued, for at most ACCESS_LOG_FLUSH_SECONDS; off the loop
        await asyncio.to_thread(flush_access_log, access)
    # A final snapshot (id null: no request's answer), after the drain: requests that finished during
    # it are counted too (the supervisor keeps a worker's last snapshot in its totals when the channel
    # closes). Nobody to take it if the supervisor is gone; bounded if it is stopped.
    with contextlib.suppress(Exception):
        write_message(writer, snapshot_message(None))
        await asyncio.wait_for(writer.drain(), FINAL_SNAPSHOT_SECONDS)
    with contextlib.suppress(Exception):
        writer.close()
    return 0


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lightmesh-proxy-worker")
    parser.add_argument("--worker-fd", type=int, required=True)
    args = parser.parse_args(argv)
    # SIGINT (and SIGHUP) from a terminal reach the whole group; the supervisor decides, not a
    # traceback or a sudden death here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        import uvloop
        return uvloop.run(_worker(args.worker_fd))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(worker_main())
