"""``lightmesh render``: a real Pulumi program under the SDK's mock engine, written as manifests."""

import signal
import subprocess

import pytest
import yaml

from conftest import REPO, lightmesh_cmd, lightmesh_env

PROGRAMS = REPO / "tests" / "local" / "programs"


def render(program: str, out, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(lightmesh_cmd("render", str(PROGRAMS / program), "-o", str(out), *extra),
                          capture_output=True, text=True, timeout=120, env=lightmesh_env())


def load(out) -> dict[str, dict]:
    docs = {}
    for path in sorted(out.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


def test_renders_one_file_per_object_with_stack_config(tmp_path):
    result = render("basic", tmp_path)
    assert result.returncode == 0, result.stderr
    docs = load(tmp_path)
    assert set(docs) == {"Namespace/demo", "Deployment/web", "Service/web",
                         "ConfigMap/settings-" + docs_key_suffix(docs, "ConfigMap/settings-")}
    deployment = docs["Deployment/web"]
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 2  # Pulumi.yaml default
    assert deployment["spec"]["template"]["metadata"]["labels"]["from"] == "from-stack-file"
    assert deployment["metadata"]["namespace"] == "demo"
    assert "not written (patches an existing cluster object): kubernetes:core/v1:ConfigMapPatch" in result.stdout
    assert len(list(tmp_path.glob("*.yaml"))) == 4


def docs_key_suffix(docs: dict, prefix: str) -> str:
    [key] = [k for k in docs if k.startswith(prefix)]
    return key.removeprefix(prefix)


def test_auto_names_are_stable_and_overrides_win(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    assert render("basic", first, "--config", "replicas=5").returncode == 0
    assert render("basic", second).returncode == 0
    names_first = sorted(p.name for p in first.glob("*.yaml"))
    assert names_first == sorted(p.name for p in second.glob("*.yaml"))
    assert load(first)["Deployment/web"]["spec"]["replicas"] == 5


def test_rerender_replaces_old_files(tmp_path):
    (tmp_path / "999-stale-object.yaml").write_text("kind: Stale\n")
    assert render("basic", tmp_path).returncode == 0
    assert not (tmp_path / "999-stale-object.yaml").exists()


def test_program_errors_are_reported_with_the_program(tmp_path):
    result = render("broken", tmp_path)
    assert result.returncode == 1
    assert "broken: the program failed: ValueError: MeshService 'x': retry_attempts" in result.stderr


def test_not_a_program_is_a_clear_error(tmp_path):
    result = subprocess.run(lightmesh_cmd("render", str(tmp_path), "-o", str(tmp_path / "o")),
                            capture_output=True, text=True, timeout=60, env=lightmesh_env())
    assert result.returncode == 1 and "Pulumi.yaml is missing" in result.stderr


def test_registrations_include_components_and_patches():
    import subprocess as sp
    code = ("import sys, json; sys.path[:0]=[sys.argv[1]]; from lightmesh.local.render import render_program; "
            "r = render_program(sys.argv[2]); print(json.dumps(sorted({x.typ for x in r.registrations})))")
    out = sp.run([__import__("sys").executable, "-c", code, str(REPO / "proxy_image"), str(PROGRAMS / "basic")],
                 capture_output=True, text=True, timeout=120, env=lightmesh_env(), check=True)
    types = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert "kubernetes:core/v1:ConfigMapPatch" in types and "kubernetes:apps/v1:Deployment" in types


def test_integral_numbers_stay_integers(tmp_path):
    assert render("basic", tmp_path).returncode == 0
    deployment = load(tmp_path)["Deployment/web"]
    assert type(deployment["spec"]["replicas"]) is int
    assert type(deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]) is int


def test_non_kubernetes_custom_resources_are_listed_as_not_written(tmp_path):
    """MeshInstall's CoreDNS patch is a dynamic-provider resource: listed with its type, not dropped."""
    result = subprocess.run(lightmesh_cmd("render", str(REPO / "examples" / "acl"), "-o", str(tmp_path)),
                            capture_output=True, text=True, timeout=120, env=lightmesh_env())
    assert result.returncode == 0, result.stderr
    assert ("  not written (not a Kubernetes object; runs against the cluster at pulumi up): "
            "pulumi-python:dynamic/lightmesh:ClusterDnsPatch lightmesh-cluster-dns") in result.stdout.splitlines()


def test_a_program_that_calls_sys_exit_is_reported(tmp_path):
    result = render("exits", tmp_path / "out")
    assert (result.returncode, result.stderr) == (1, "lightmesh render: exits: the program called sys.exit(3); "
                                                     "nothing written\n")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_during_render_stops_cleanly(tmp_path):
    proc = subprocess.Popen(lightmesh_cmd("render", str(PROGRAMS / "slow"), "-o", str(tmp_path)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=lightmesh_env())
    try:
        assert proc.stderr.readline() == "program started\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert (proc.returncode, out, err) == (130, "", "lightmesh render: interrupted; nothing more written\n")


@pytest.mark.parametrize("project, stack, message", [
    ("name: [\n", None, "Pulumi.yaml: not valid YAML: expected the node content, but found '<stream end>' at line 2, "
                        "column 1"),
    ("- a\n- b\n", None, "Pulumi.yaml: expected a mapping (name: ..., config: ...), got a list"),
    ("name: 5\n", None, "Pulumi.yaml: 'name' must be the project name (a non-empty string); got a number (5)"),
    ("runtime: python\n", None, "Pulumi.yaml: 'name' must be the project name (a non-empty string); it is missing"),
    ("name: p\nconfig: 5\n", None, "Pulumi.yaml: 'config' must be a mapping of key: value, got a number (5)"),
    ("name: p\n", "config: [\n", "Pulumi.dev.yaml: not valid YAML: expected the node content, but found "
                                 "'<stream end>' at line 2, column 1"),
    ("name: p\n", "config: 5\n", "Pulumi.dev.yaml: 'config' must be a mapping of key: value, got a number (5)"),
])
def test_bad_project_files_are_one_line_errors(tmp_path, project, stack, message):
    from lightmesh.local.render import RenderError, load_stack_config

    (tmp_path / "Pulumi.yaml").write_text(project)
    if stack is not None:
        (tmp_path / "Pulumi.dev.yaml").write_text(stack)
    with pytest.raises(RenderError) as failure:
        load_stack_config(tmp_path, "dev", [])
    assert str(failure.value) == f"{tmp_path}/{message}"


def test_bad_paths_are_usage_errors(tmp_path, capsys):
    from lightmesh.cli import main

    (tmp_path / "file").write_text("")
    assert main(["render", str(tmp_path / "nope"), "-o", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"lightmesh render: {tmp_path}/nope: no such directory (expected a Pulumi "
                                       "program directory)\n")
    assert main(["render", str(PROGRAMS / "basic"), "-o", str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == (f"lightmesh render: -o {tmp_path}/file: exists and is not a directory; "
                                       "choose a directory\n")
