"""Entry point of the Lightmesh Pulumi plugin: host the components from this checkout."""

import sys
from pathlib import Path

_REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(_REPO), str(_REPO / "proxy_image")]

from mesh_components.__main__ import main  # noqa: E402

if __name__ == "__main__":
    main()
