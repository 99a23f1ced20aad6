"""Helpers shared by tests that start lightmesh processes on loopback: free ports for the mesh DNS,
the process tree a command started (to check it is gone after a stop), a listener's accept queue."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from lightmesh.local.harness import free_port


def listen_backlog(port: int) -> int:
    """The accept queue length the kernel gives the TCP listener on ``port`` (``ss``'s Send-Q)."""
    import shutil

    import pytest

    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is not installed")
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    return int(out.split()[2])


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


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children, their children...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie waits for a reaper that may never come in a container)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_all(proc: subprocess.Popen, children: set[int]) -> None:
    """Kill ``proc`` if it still runs, and any of ``children`` still running (test clean-up)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in children:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
