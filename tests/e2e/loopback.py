"""Loopback helpers shared by the end-to-end tests."""

import socket

from lightmesh.local.harness import free_port


def free_dns_port() -> int:
    """A port free for both UDP and TCP (the mesh DNS serves both)."""
    for _ in range(50):
        port = free_port(kind=socket.SOCK_DGRAM)
        with socket.socket() as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free DNS port")
