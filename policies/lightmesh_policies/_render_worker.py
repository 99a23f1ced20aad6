"""Subprocess body: run one Pulumi program under the SDK mock engine, dump its registrations as JSON.

``lightmesh.local.render.render_program`` mutates process-global Pulumi runtime state, so each
program runs in a fresh interpreter (:func:`lightmesh_policies.offline.render_registrations` starts
this module with ``sys.executable``). On top of what ``render_program`` records, this worker notes
the real URN and parent URN the mock monitor assigns (the URN encodes the component ancestry, e.g.
``lightmesh:index:MeshService$kubernetes:core/v1:Service``), so the rules see the same parent chain
as under the Pulumi CLI.

Usage: ``python -m lightmesh_policies._render_worker PROGRAM_DIR STACK OUT_JSON [key=value ...]``
"""

import json
import sys
import threading


def main(argv: list[str]) -> int:
    program_dir, stack, out_path, *overrides = argv
    from pulumi.runtime import mocks

    from lightmesh_policies import _runtime  # noqa: F401  (makes `lightmesh` importable from a checkout)
    from lightmesh.local.render import RenderError, render_program

    lock = threading.Lock()
    seen: dict[tuple[str, str], tuple[str, str]] = {}
    original = mocks.MockMonitor.RegisterResource

    def recording(self, request):  # the monitor runs registrations on a thread pool
        response = original(self, request)
        with lock:
            seen[(request.type, request.name)] = (response.urn, request.parent)
        return response

    mocks.MockMonitor.RegisterResource = recording
    try:
        result = render_program(program_dir, stack, overrides)
    except RenderError as exc:
        print(f"render failed: {exc}", file=sys.stderr)
        return 1
    finally:
        mocks.MockMonitor.RegisterResource = original
    out = []
    for reg in result.registrations:
        urn, parent = seen.get((reg.typ, reg.name), (reg.urn, ""))
        out.append({"type": reg.typ, "name": reg.name, "urn": urn, "parent": parent or None,
                    "custom": reg.custom, "props": reg.inputs})
    with open(out_path, "w") as fh:
        json.dump(out, fh, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
