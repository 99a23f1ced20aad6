"""Listening sockets for the servers of the controller and the proxy (API, DNS, admin port).

``::`` means every address of both families: one IPv6 socket with ``IPV6_V6ONLY`` off, which also
takes IPv4 clients (as ``::ffff:a.b.c.d``). asyncio and aiohttp given ``::`` set ``IPV6_V6ONLY`` on,
so in an IPv4 or dual-stack cluster the kubelet's probes on the pod's IPv4 address would find
nothing; hence these sockets are made here and handed to them. Where the host or pod has no IPv6,
``::`` falls back to ``0.0.0.0``.

Whoever serves one of these sockets passes :data:`LISTEN_BACKLOG` again: asyncio, uvloop and
aiohttp call ``listen()`` once more with their own default (100, 128), which a burst of connects
(every proxy polling a restarted controller) overflows, costing each dropped SYN a 1 s retransmit.
HTTP servers built on aiohttp (the controller API, the proxy's admin port) close a connection that
has not sent a complete request head within :data:`HTTP_HEAD_TIMEOUT_SECONDS` (slowloris).
"""

from __future__ import annotations

import errno
import logging
import socket

log = logging.getLogger("lightmesh.netutil")

ANY = "::"
LISTEN_BACKLOG = 1024
HTTP_HEAD_TIMEOUT_SECONDS = 10.0  # also closes a keep-alive connection idle that long
_NO_IPV6 = (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL, errno.EPROTONOSUPPORT)


_LOCAL_LIMITS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))


def connect_failure_reason(exc: BaseException) -> str:
    """The ``upstream_errors_total`` reason of a failed upstream connect: ``connect_timeout``,
    ``local_limit`` when this process ran out of file descriptors or kernel buffers (the server
    is not at fault: no ejection, no circuit-breaker sample), else ``connect``."""
    if isinstance(exc, TimeoutError):  # asyncio.TimeoutError is TimeoutError from Python 3.11
        return "connect_timeout"
    if isinstance(exc, OSError) and exc.errno in _LOCAL_LIMITS:
        return LOCAL_LIMIT
    return "connect"


LOCAL_LIMIT = "local_limit"


def raise_fd_limit(ceiling: int = 1 << 20) -> tuple[int, int]:
    """Raise this process's soft ``RLIMIT_NOFILE`` to its hard limit (at most ``ceiling``), as nginx
    (``worker_rlimit_nofile``) and Go programs do: the soft limit is often 1,024 while a proxy holds
    two descriptors per HTTP connection and up to six per spliced TCP relay. Returns (soft, hard)
    as they are afterwards; a refusal leaves the limit as it was."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = ceiling if hard == resource.RLIM_INFINITY else min(hard, ceiling)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.debug("could not raise the open-files limit from %d to %d: %s", soft, target, exc)
    return soft, hard


def listening_socket(host: str, port: int, kind: int = socket.SOCK_STREAM, *, reuse_port: bool = False,
                     backlog: int = LISTEN_BACKLOG) -> socket.socket:
    """A bound socket (listening for TCP), non-blocking, ``SO_REUSEADDR`` set (and ``SO_REUSEPORT``
    with ``reuse_port``: the proxy's workers share each port). ``host`` ``::``: dual stack, or
    ``0.0.0.0`` without IPv6; any other host as given (a name is resolved)."""
    if host == ANY:
        try:
            return _bind(socket.AF_INET6, ("::", port), kind, reuse_port, backlog, dual_stack=True)
        except OSError as exc:
            if exc.errno not in _NO_IPV6:
                raise
            log.info("no IPv6 here (%s): listening on 0.0.0.0:%d", exc.strerror, port)
            return _bind(socket.AF_INET, ("0.0.0.0", port), kind, reuse_port, backlog)
    family, _, _, _, address = socket.getaddrinfo(host, port, type=kind)[0]
    return _bind(family, address, kind, reuse_port, backlog)


def _bind(family: int, address: tuple, kind: int, reuse_port: bool, backlog: int,
          dual_stack: bool = False) -> socket.socket:
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if dual_stack:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock
