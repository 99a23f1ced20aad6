"""``python -m lightmesh`` — same as the ``lightmesh`` console script."""

import sys

from lightmesh.cli import main

sys.exit(main())
