"""Helpers for tests that run ``lightmesh local`` as a process: start it, find the processes it started,
see them gone."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from conftest import lightmesh_cmd, lightmesh_env
from proctools import descendants, free_dns_port, running, stop_all  # noqa: F401  (re-exported)


def still_running(pids: set[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while (alive := sorted(p for p in pids if running(p))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive


def started(path: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen, set[int], str]:
    """``lightmesh local PATH`` up: the process, the processes it started, what it printed (``env``:
    added to its environment)."""
    proc = subprocess.Popen(lightmesh_cmd("local", str(path), "--dns-port", str(free_dns_port()), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lightmesh_env(env))
    deadline, printed = time.monotonic() + 120, []
    for line in proc.stdout:
        printed.append(line)
        if "Press Ctrl-C to stop." in line or time.monotonic() > deadline:
            break
    else:
        stop_all(proc, set())
        pytest.fail(f"lightmesh local exited early (code {proc.returncode}): {proc.stderr.read()}")
    return proc, descendants(proc.pid), "".join(printed)


