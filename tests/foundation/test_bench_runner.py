"""``make bench BENCH=name`` (bench/run.py): a name that is no benchmark is an error, not a silent no-op."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_an_unknown_benchmark_name_fails_and_lists_the_known_ones():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "proxy", "nosuch"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""  # nothing ran, not even the known one
    assert "nosuch" in out.stderr and "hotpath" in out.stderr and "proxy" in out.stderr
