"""Make ``mesh_components`` importable when an example runs from a clone that is not pip-installed
(``pulumi up`` puts only the example's own directory on ``sys.path``)."""

import sys
from pathlib import Path

try:
    import mesh_components  # noqa: F401
except ImportError:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
