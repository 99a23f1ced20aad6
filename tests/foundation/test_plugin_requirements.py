"""plugin/requirements.txt is all the component provider process gets (``pulumi package add ./plugin``
builds its venv from that file): it must cover every third-party module the components import,
including the ones imported lazily (RE2 for route regexes)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# Import every component module and run the lazily imported checks once, then list the top-level
# third-party modules loaded.
_PROBE = r"""
import json, pkgutil, sys, importlib
at_start = set(sys.modules)  # what site hooks loaded (.pth files), not the components
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/proxy_image"]
import mesh_components
for info in pkgutil.iter_modules(mesh_components.__path__):
    importlib.import_module("mesh_components." + info.name)
from lightmesh.userregex import check_user_regex
from lightmesh import cbexpr
check_user_regex("/api/.*")
cbexpr.parse("NetworkErrorRatio() > 0.5")
own = {"mesh_components", "lightmesh", "__main__"}
loaded = {name.split(".")[0] for name in set(sys.modules) - at_start}
print(json.dumps(sorted(loaded - set(sys.stdlib_module_names) - own)))
"""


def _requirement_name(line: str) -> str:
    return re.split(r"[\s=<>!~\[;]", line.strip(), maxsplit=1)[0]


def _closure(names: list[str]) -> set[str]:
    """The distributions ``names`` install, with everything they require (as installed here)."""
    seen: set[str] = set()
    todo = [n.lower().replace("_", "-") for n in names]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        for req in requires:
            if "extra ==" in req:
                continue
            todo.append(_requirement_name(req).lower().replace("_", "-"))
    return seen


def test_plugin_requirements_cover_every_module_the_components_import():
    lines = (REPO / "plugin" / "requirements.txt").read_text().splitlines()
    wanted = [_requirement_name(line) for line in lines if line.strip() and not line.lstrip().startswith("#")]
    installed = _closure(wanted)
    out = subprocess.run([sys.executable, "-c", _PROBE, str(REPO)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    modules = json.loads(out.stdout.strip().splitlines()[-1])
    assert "re2" in modules and "pulumi" in modules  # the probe did reach the lazy imports
    owners = metadata.packages_distributions()
    missing = {}
    for module in modules:
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [])}
        if dists and not dists & installed:
            missing[module] = sorted(dists)
    assert not missing, f"plugin/requirements.txt does not install what these modules come from: {missing}"


def test_plugin_pins_are_the_packages_pins():
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {_requirement_name(d).lower(): d.replace(" ", "") for d in project["dependencies"]}
    for line in (REPO / "plugin" / "requirements.txt").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name = _requirement_name(line).lower()
            assert name in pins and pins[name].split(";")[0] == line.strip().replace(" ", ""), line
