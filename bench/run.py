"""``make bench``: run every ``bench/bench_*.py`` in turn and keep their results in bench/results/.

Each benchmark module is a script with a ``main() -> int``; it prints its own table and writes its
own files under ``bench/results/``. Benchmarks talk only to 127.0.0.0/8 and bound every load loop.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    wanted = set(argv)
    known = {p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py")}
    if wanted - known:
        # a misspelt name must not pass as "ran nothing, exit 0" (a CI step would look green)
        print(f"bench/run.py: no benchmark named {', '.join(sorted(wanted - known))}; "
              f"choose from {', '.join(sorted(known))} (none: all)", file=sys.stderr)
        return 2
    failures = 0
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        if wanted and name not in wanted:
            continue
        print(f"\n=== bench {name} ===", flush=True)
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        failures += 1 if module.main() else 0
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path[:0] = [str(HERE.parent / "proxy_image"), str(HERE.parent)]
    sys.exit(main(sys.argv[1:]))
