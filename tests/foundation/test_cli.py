"""The console entry point: help, version, config-schema."""

import json
import subprocess

from conftest import lightmesh_cmd, lightmesh_env
from lightmesh import cli


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    assert "config-schema" in capsys.readouterr().out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_config_schema_to_file(tmp_path):
    out = tmp_path / "schema.json"
    assert cli.main(["config-schema", "-o", str(out)]) == 0
    assert json.loads(out.read_text())["title"] == "Lightmesh proxy configuration"


def test_config_schema_to_a_bad_path_is_one_line(tmp_path, capsys):
    for bad in (tmp_path / "missing" / "schema.json", tmp_path):  # no such directory; a directory
        assert cli.main(["config-schema", "-o", str(bad)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"lightmesh config-schema: cannot write {bad}: ") and err.count("\n") == 1


def test_module_entry_point_runs():
    result = subprocess.run(lightmesh_cmd("version"), capture_output=True, text=True,
                            check=True, timeout=60, env=lightmesh_env())
    assert result.stdout.startswith("lightmesh ")


def test_test_modules_outside_packages_have_unique_names():
    # pytest imports a module of a directory without __init__.py by its basename: two test_x.py in
    # such directories make a fresh checkout fail at collection (a warm cache can hide it).
    from collections import defaultdict
    from pathlib import Path

    tests = Path(__file__).resolve().parent.parent
    seen = defaultdict(list)
    for module in tests.rglob("test_*.py"):
        if not (module.parent / "__init__.py").exists():
            seen[module.name].append(str(module.relative_to(tests)))
    assert not {name: paths for name, paths in seen.items() if len(paths) > 1}
