"""Argument types shared by the ``lightmesh`` subcommands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (``--otlp-endpoint``, ``--controller``)."""
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1].strip("/")) == 0:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text
