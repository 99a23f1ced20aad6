"""``lightmesh config-schema`` and ``lightmesh version``."""

from __future__ import annotations

import argparse
import json
import sys

from lightmesh import __version__, config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-o", "--output", help="write the schema to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    if args.command == "version":
        print(f"lightmesh {__version__}")
        return 0
    text = json.dumps(config.json_schema(), indent=2, sort_keys=True) + "\n"
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as fh:
                fh.write(text)
        except OSError as exc:
            print(f"lightmesh config-schema: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0
