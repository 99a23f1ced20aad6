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


def test_module_entry_point_runs():
    result = subprocess.run(lightmesh_cmd("version"), capture_output=True, text=True,
                            check=True, timeout=60, env=lightmesh_env())
    assert result.stdout.startswith("lightmesh ")
