"""Which worker accepts a connection: the kernel's ``SO_REUSEPORT`` choice, steered by client IP.

Every worker opens its own socket on each port (``SO_REUSEPORT``). By default the kernel picks the
socket by a hash of the connection's 4-tuple, so one client's connections spread over all workers.
State kept per client IP, the rate limit's token buckets, would then be per worker as well, and a
client could get N times its limit from N workers.

For a port that carries a rate-limited route, :func:`steer_by_source_ip` attaches a classic BPF
program to the port's reuseport group (``SO_ATTACH_REUSEPORT_CBPF``). It returns the index of the
socket as *client IPv4 address* (or the last 32 bits of an IPv6 one) modulo the number of workers,
so every connection from one client reaches the same worker and its bucket. The cost: one client
IP's traffic on such a port is served by one worker (one core). Ports without a rate limit keep
the kernel's spread; :func:`spread_by_hash` puts a port back to it. Steering places new
connections only: when it turns on, the runtime recycles the port's open ones (ConnectionSet.recycle).

The kernel falls back to its hash when the program returns an index past the group's size (while a
worker restarts, say), so a wrong count degrades to the default behaviour, never to a refusal.

A worker restart moves clients between workers, and buckets are per worker and in memory. When a
worker exits, the kernel moves the group's last socket into its slot, so that socket's worker gets
the exited worker's clients (a full bucket each: one extra burst), and the clients of the last
index, now past the group's size, are spread by hash over the remaining workers until the
restarted worker's socket joins at the end and takes them (a fresh bucket on each worker they
meet: up to N-1 extra bursts with N workers). Other clients stay where they were.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct

log = logging.getLogger("lightmesh.proxy.steering")

SO_ATTACH_REUSEPORT_CBPF = 51  # <asm-generic/socket.h>; not exported by the socket module
SKF_NET_OFF = -0x100000  # classic BPF: loads relative to the network (IP) header

# classic BPF opcodes (<linux/filter.h>)
_LD_W_ABS, _LD_B_ABS = 0x00 | 0x00 | 0x20, 0x00 | 0x10 | 0x20
_ALU_RSH_K, _ALU_MOD_K = 0x04 | 0x70, 0x04 | 0x90
_JMP_JEQ_K, _JMP_JA = 0x05 | 0x10, 0x05 | 0x00
_RET_A, _RET_K = 0x06 | 0x10, 0x06 | 0x00

_OUT_OF_RANGE = 0xFFFFFFFF  # an index past any group: the kernel uses its hash


def _insn(code: int, jt: int = 0, jf: int = 0, k: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def source_ip_program(workers: int) -> bytes:
    """``index = source address mod workers``. The IP version is read from the packet, so a dual-stack
    socket steers IPv4 clients by their IPv4 address."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    return b"".join((
        _insn(_LD_B_ABS, k=SKF_NET_OFF),            # A = first byte of the IP header
        _insn(_ALU_RSH_K, k=4),                     # A = IP version
        _insn(_JMP_JEQ_K, jt=0, jf=2, k=4),         # IPv4? next : IPv6 load
        _insn(_LD_W_ABS, k=SKF_NET_OFF + 12),       # IPv4 source address
        _insn(_JMP_JA, k=1),
        _insn(_LD_W_ABS, k=SKF_NET_OFF + 8 + 12),   # IPv6 source address, last 32 bits
        _insn(_ALU_MOD_K, k=workers),
        _insn(_RET_A),
    ))


def hash_program() -> bytes:
    return _insn(_RET_K, k=_OUT_OF_RANGE)


def _attach(sock: socket.socket, code: bytes) -> None:
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the kernel copies the
    # instructions during the call, so the buffer only has to outlive it.
    buffer = ctypes.create_string_buffer(code, len(code))
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def steer_by_source_ip(sock: socket.socket, workers: int) -> bool:
    """Steer the reuseport group of ``sock`` by client IP; False (logged) where the kernel cannot."""
    try:
        _attach(sock, source_ip_program(workers))
        return True
    except OSError as exc:
        log.warning("cannot steer connections by client IP on %s (%s): rate limits are per worker there",
                    sock.getsockname(), exc.strerror or exc)
        return False


def spread_by_hash(sock: socket.socket) -> None:
    """Back to the kernel's 4-tuple hash (after the port's last rate-limited route went away)."""
    try:
        _attach(sock, hash_program())
    except OSError:  # never steered on this kernel either
        pass
