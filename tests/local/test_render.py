"""``lightmesh render``: a real Pulumi program under the SDK's mock engine, written as manifests."""

import subprocess

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
