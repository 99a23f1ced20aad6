"""Argument types shared by the ``lightmesh`` subcommands (argparse ``type=`` callables)."""

from __future__ import annotations

import argparse
import re


def http_url(text: str) -> str:
    """An ``http://`` or ``https://`` URL with a host (``--otlp-endpoint``, ``--controller``)."""
    if not text.startswith(("http://", "https://")) or len(text.split("://", 1)[1].strip("/")) == 0:
        raise argparse.ArgumentTypeError(f"must be an http:// or https:// URL, got {text!r}")
    return text


def port_number(text: str) -> int:
    """A TCP/UDP port, 1-65535 (``--api-port``, ``--dns-port`` of every command); argparse turns
    the error into ``argument --api-port: 70000 is not a port number (1-65535)``."""
    digits = text.strip().lstrip("-")
    if not (digits.isascii() and digits.isdigit() and len(digits) <= 6):
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    value = int(text)
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (1-65535)")
    return value


_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def namespace_name(text: str) -> str:
    """A Kubernetes namespace name (an RFC 1123 label: lower-case letters, digits and '-', at most
    63 characters, starting and ending with a letter or digit)."""
    if not _DNS_LABEL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a namespace name (lower-case letters, digits and '-', "
                                         "at most 63, starting and ending with a letter or digit)")
    return text


def namespace_list(text: str) -> list[str]:
    """A comma list of namespace names (empty parts skipped)."""
    return [namespace_name(part.strip()) for part in text.split(",") if part.strip()]
