"""The ``lightmesh`` command line: a table of subcommands, each imported only when it runs.

A subcommand module provides ``configure(parser: argparse.ArgumentParser) -> None`` and
``run(args: argparse.Namespace) -> int``. Keeping imports lazy lets ``lightmesh proxy`` start without
loading Pulumi or the Kubernetes client, and keeps ``lightmesh --help`` instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name → (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "proxy": ("lightmesh.proxy.main", "Run the per-node data-plane proxy (HTTP/TCP/UDP)"),
    "controller": ("lightmesh.controller.main", "Run the controller: watch the cluster, serve proxy config and mesh DNS"),
    "config-schema": ("lightmesh.cli_schema", "Print the JSON schema of the proxy configuration"),
    "version": ("lightmesh.cli_schema", "Print the Lightmesh version"),
    "local": ("lightmesh.local.main", "Run the whole mesh on loopback from manifests or a Pulumi program"),
    "demo": ("lightmesh.local.demo", "Local mode on examples/whoami with a scripted tour of real traffic"),
    "render": ("lightmesh.local.render", "Render a Pulumi program's Kubernetes manifests offline (preview of pulumi up)"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: lightmesh COMMAND [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'lightmesh COMMAND --help' for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"lightmesh: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"lightmesh {name}", description=help_)
    module.configure(parser) if name != "version" else None
    args = parser.parse_args(rest)
    args.command = name
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
