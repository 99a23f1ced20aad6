"""Helpers for tests that run ``lightmesh local`` as a process: start it, find the processes it started,
see them gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import lightmesh_cmd, lightmesh_env


def free_dns_port() -> int:
    """A port free for both UDP and TCP (the mesh DNS serves both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
        with socket.socket() as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free DNS port")


def descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
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


def still_running(pids: set[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := sorted(p for p in pids if running(p))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def started(path: Path, *extra: str) -> tuple[subprocess.Popen, set[int], str]:
    """``lightmesh local PATH`` up: the process, the processes it started, what it printed."""
    proc = subprocess.Popen(lightmesh_cmd("local", str(path), "--dns-port", str(free_dns_port()), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lightmesh_env())
    deadline, printed = time.monotonic() + 120, []
    for line in proc.stdout:
        printed.append(line)
        if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
            break
    else:
        stop_all(proc, set())
        pytest.fail(f"lightmesh local exited early (code {proc.returncode}): {proc.stderr.read()}")
    return proc, descendants(proc.pid), "".join(printed)


def stop_all(proc: subprocess.Popen, children: set[int]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid in children:
        if running(pid):
            os.kill(pid, signal.SIGKILL)
