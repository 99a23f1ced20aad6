"""Steering a reuseport group by client IP: real sockets on loopback, connections from several
127.0.9.x sources; which socket accepted each one is what the program decided."""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket

import pytest

from lightmesh.proxy import steering

WORKERS = 3


@contextlib.contextmanager
def reuseport_group(family: int, address: str, n: int = WORKERS):
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((address, socks[0].getsockname()[1] if len(socks) > 1 else 0))
            sock.listen(64)
            sock.setblocking(False)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def accepted_by(socks, source: str, port: int, target: str = "127.0.0.1") -> int:
    """Index of the socket that accepts one connection from ``source``."""
    with socket.socket(socket.AF_INET) as client:
        client.bind((source, 0))
        client.connect((target, port))
        ready, _, _ = select.select(socks, [], [], 2.0)
        assert len(ready) == 1, ready
        conn, _ = ready[0].accept()
        conn.close()
        return socks.index(ready[0])


SOURCES = [f"127.0.9.{i}" for i in range(1, 13)]


@pytest.mark.parametrize("family, address", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::")])
def test_every_connection_from_one_client_ip_reaches_the_same_worker(family, address):
    # "::" is dual stack: IPv4 clients arrive with an IPv4 header, which the program reads as such.
    with reuseport_group(family, address) as socks:
        port = socks[0].getsockname()[1]
        assert steering.steer_by_source_ip(socks[1], WORKERS)  # any member sets the group's program
        chosen = {src: {accepted_by(socks, src, port) for _ in range(5)} for src in SOURCES}
        assert all(len(workers) == 1 for workers in chosen.values()), chosen
        assert {src: workers.pop() for src, workers in chosen.items()} == {
            src: int(ipaddress.IPv4Address(src)) % WORKERS for src in SOURCES}


def test_spread_by_hash_puts_the_kernels_choice_back():
    with reuseport_group(socket.AF_INET, "127.0.0.1") as socks:
        port = socks[0].getsockname()[1]
        steering.steer_by_source_ip(socks[0], WORKERS)
        steering.spread_by_hash(socks[0])
        # by 4-tuple again: 30 connections from one client all on one of 3 sockets has odds 3⁻²⁹
        assert len({accepted_by(socks, "127.0.9.1", port) for _ in range(30)}) > 1


def test_the_program_is_classic_bpf_of_whole_instructions():
    code = steering.source_ip_program(4)
    assert len(code) % 8 == 0 and len(code) // 8 == 8
    with pytest.raises(ValueError):
        steering.source_ip_program(0)
