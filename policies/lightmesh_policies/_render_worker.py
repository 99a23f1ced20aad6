"""Subprocess body: run one Pulumi program under the SDK mock engine, dump its registrations as JSON.

``lightmesh.local.render.render_program`` mutates process-global Pulumi runtime state, so each
program runs in a fresh interpreter (:func:`lightmesh_policies.offline.render_registrations` starts
this module with ``sys.executable``). ``render_program`` records the URN and parent URN the mock
monitor assigns to each registration (the URN encodes the component ancestry, e.g.
``lightmesh:index:MeshService$kubernetes:core/v1:Service``), so the rules see the same parent chain
as under the Pulumi CLI — also for two resources of one type and name under different parents.

Usage: ``python -m lightmesh_policies._render_worker PROGRAM_DIR STACK OUT_JSON [key=value ...]``
"""

import json
import sys


def main(argv: list[str]) -> int:
    program_dir, stack, out_path, *overrides = argv
    from lightmesh_policies import _runtime  # noqa: F401  (makes `lightmesh` importable from a checkout)
    from lightmesh.local.render import RenderError, render_program

    try:
        result = render_program(program_dir, stack, overrides, refuse_duplicates=False)
    except RenderError as exc:
        print(f"render failed: {exc}", file=sys.stderr)
        return 1
    out = [{"type": reg.typ, "name": reg.name, "urn": reg.urn, "parent": reg.parent or None,
            "provider": reg.provider or None, "custom": reg.custom, "props": reg.inputs}
           for reg in result.registrations]
    with open(out_path, "w") as fh:
        json.dump(out, fh, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
