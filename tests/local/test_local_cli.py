"""``lightmesh local`` and ``lightmesh demo``: bad input is a one-line usage error (exit 2) before
anything starts — no traceback, no mesh started and torn down."""

import pytest

from conftest import REPO
from lightmesh.cli import main

EXAMPLE = str(REPO / "examples" / "whoami")


@pytest.mark.parametrize("argv, message", [
    (["local", EXAMPLE, "--dns-port", "70000"], "argument --dns-port: 70000 is not a port number (1-65535)"),
    (["local", EXAMPLE, "--dns-port", "dns"], "argument --dns-port: 'dns' is not a port number (1-65535)"),
    (["local", EXAMPLE, "--proxy-workers", "0"], "argument --proxy-workers: must be at least 1, got 0"),
    (["local", EXAMPLE, "--interval", "0"], "argument --interval: must be a positive number of seconds, got 0"),
    (["demo", "--dns-port", "0"], "argument --dns-port: 0 is not a port number (1-65535)"),
])
def test_flag_values_are_checked_by_argparse(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"lightmesh {argv[0]}: error: {message}"


def test_paths_are_checked_before_the_mesh_starts(tmp_path, capsys):
    assert main(["local", EXAMPLE, "--endpoints", "/nonexistent-dir/ep.json"]) == 2
    assert capsys.readouterr().err == ("lightmesh local: --endpoints /nonexistent-dir/ep.json: directory "
                                       "/nonexistent-dir does not exist; create it or choose another path\n")
    assert main(["local", EXAMPLE, "--endpoints", str(tmp_path)]) == 2
    assert capsys.readouterr().err == f"lightmesh local: --endpoints {tmp_path}: is a directory; give a file name\n"
    assert main(["local", str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"lightmesh local: {tmp_path}/nope: no such file or directory\n"
    assert main(["demo", "--chart", "/nonexistent-dir/x.png"]) == 2
    assert capsys.readouterr().err == ("lightmesh demo: --chart /nonexistent-dir/x.png: directory /nonexistent-dir "
                                       "does not exist; create it or choose another path\n")
    assert main(["demo", "--example", "/nonexistent"]) == 2
    assert capsys.readouterr().err == "lightmesh demo: --example /nonexistent: no such directory\n"


def test_nothing_to_mesh_is_said_plainly(tmp_path):
    from lightmesh.local.harness import LocalMesh
    from lightmesh.local.main import manifest_warnings

    mesh = LocalMesh(tmp_path, work_dir=tmp_path / "work")
    assert manifest_warnings(mesh) == [f"warning: no Kubernetes objects found in {tmp_path}: nothing to run "
                                       "(expected YAML manifests or a Pulumi program)"]
    mesh.manifests = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}]
    assert manifest_warnings(mesh) == [f"warning: no Services found in {tmp_path}: nothing to mesh"]
