"""Shared test helpers: how to start ``lightmesh`` in a subprocess from this checkout."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def lightmesh_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child ``python -m lightmesh`` that imports this checkout's code."""
    env = dict(os.environ)
    paths = [str(REPO / "proxy_image"), str(REPO)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.update(extra or {})
    return env


def lightmesh_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "lightmesh", *args]


@pytest.fixture
def repo_root() -> Path:
    return REPO


def without_ipv6(monkeypatch) -> None:
    """From now on in this test, an IPv6 socket fails as on a host booted with ipv6.disable=1."""
    import errno
    import socket

    real = socket.socket

    def socket_without_ipv6(family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        return real(family, *args, **kwargs)

    monkeypatch.setattr(socket, "socket", socket_without_ipv6)
