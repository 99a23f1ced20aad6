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
    assert set(docs) == {"Namespace/demo", "Deployment/web", "Service/web", "ConfigMap/from-v1",
                         "ConfigMap/settings-" + docs_key_suffix(docs, "ConfigMap/settings-")}
    deployment = docs["Deployment/web"]
    assert deployment["apiVersion"] == "apps/v1"
    assert deployment["spec"]["replicas"] == 2  # Pulumi.yaml default
    assert deployment["spec"]["template"]["metadata"]["labels"]["from"] == "from-stack-file"
    assert deployment["metadata"]["namespace"] == "demo"
    assert "not written (patches an existing cluster object): kubernetes:core/v1:ConfigMapPatch" in result.stdout
    # its objects are the provider's to make: said, not dropped without a word
    assert ("not written (its objects are made by the Kubernetes provider at pulumi up, from YAML, a Helm chart "
            "or kustomize; write them as Kubernetes resources, or render them with kubectl/helm, to see them "
            "here): kubernetes:yaml/v2:ConfigGroup extra") in result.stdout
    assert "v1-group" not in result.stdout  # yaml v1: expanded by the SDK, its ConfigMap written
    # helm v3 and kustomize v1: the SDK asks the provider to render them, which a render cannot
    assert "): kubernetes:helm.sh/v3:Chart h3" in result.stdout
    assert "): kubernetes:kustomize:Directory k1" in result.stdout
    assert len(list(tmp_path.glob("*.yaml"))) == 5


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
    assert render("basic", tmp_path).returncode == 0
    # a file an earlier render wrote (listed in the record, with render's header) is replaced ...
    stale = tmp_path / "999-stale-object.yaml"
    stale.write_text("# Written by lightmesh render from basic; the next render into this directory replaces it.\n"
                     "kind: Stale\n")
    with (tmp_path / ".lightmesh-render").open("a") as record:
        record.write("999-stale-object.yaml\n")
    assert render("basic", tmp_path).returncode == 0
    assert not stale.exists()
    assert len(list(tmp_path.glob("*.yaml"))) == 5


def test_rerender_keeps_files_it_did_not_write(tmp_path):
    """The user's own files in the output directory survive, even with render's file-name pattern."""
    mine = {"999-stale-object.yaml": "kind: Mine\n", "010-extra.yaml": "kind: Mine\n", "notes.txt": "x"}
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    result = render("basic", tmp_path)
    assert result.returncode == 0, result.stderr
    assert "also holds 2 file(s) lightmesh render did not write, kept as they are" in result.stdout
    assert render("basic", tmp_path).returncode == 0
    assert {name: (tmp_path / name).read_text() for name in mine} == mine
    # a listed file the user rewrote (render's header gone) is theirs now: kept
    [namespace] = tmp_path.glob("001-*.yaml")
    namespace.write_text("kind: Edited\n")
    result = render("basic", tmp_path)
    assert result.returncode == 1
    assert result.stderr == (f"lightmesh render: -o {tmp_path}: {namespace.name} exists and lightmesh render did not "
                             f"write it (it is not listed in .lightmesh-render or lost its header); nothing written. "
                             f"Move it away or choose another output directory\n")
    assert namespace.read_text() == "kind: Edited\n"


def test_written_files_start_with_a_header_and_the_record_lists_them(tmp_path):
    assert render("basic", tmp_path).returncode == 0
    written = sorted(p.name for p in tmp_path.glob("*.yaml"))
    for name in written:
        assert (tmp_path / name).read_text().startswith("# Written by lightmesh render from basic; ")
    record = (tmp_path / ".lightmesh-render").read_text().splitlines()
    assert record[0].startswith("#") and sorted(record[1:]) == written
    help_text = subprocess.run(lightmesh_cmd("render", "--help"), capture_output=True, text=True, timeout=60,
                               env=lightmesh_env()).stdout
    assert "removes the files the previous render wrote there" in " ".join(help_text.split())


def test_two_resources_declaring_one_object_stop_the_render(tmp_path):
    result = render("duplicate", tmp_path / "out", "--config", "case=services")
    assert result.returncode == 1
    assert result.stderr == ("lightmesh render: duplicate: Service shop/api is declared twice, by resource 'api-a' "
                             "and by resource 'api-b': in a cluster they are one object and each apply overwrites "
                             "the other; nothing written. Fix: give one of them another name (for a component, "
                             "another instance name), or declare the object once\n")
    assert not (tmp_path / "out").exists()


def test_an_access_policy_and_a_traffic_split_of_one_name_write_different_objects(tmp_path):
    result = render("duplicate", tmp_path, "--config", "case=split")
    assert result.returncode == 0, result.stderr
    assert sorted(load(tmp_path)) == ["HTTPRouteGroup/api-http", "HTTPRouteGroup/api-matches", "TrafficSplit/api",
                                      "TrafficTarget/api"]


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
    ("name: [\n", None, "Pulumi.yaml:2: not valid YAML: expected the node content, but found '<stream end>' "
                        "(column 1)"),
    ("- a\n- b\n", None, "Pulumi.yaml: expected a mapping (name: ..., config: ...), got a list"),
    ("name: 5\n", None, "Pulumi.yaml: 'name' must be the project name (a non-empty string); got a number (5)"),
    ("runtime: python\n", None, "Pulumi.yaml: 'name' must be the project name (a non-empty string); it is missing"),
    ("name: p\nconfig: 5\n", None, "Pulumi.yaml: 'config' must be a mapping of key: value, got a number (5)"),
    ("name: p\n", "config: [\n", "Pulumi.dev.yaml:2: not valid YAML: expected the node content, but found "
                                 "'<stream end>' (column 1)"),
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


def test_missing_required_config_is_one_line_naming_where_to_set_it(tmp_path, capsys):
    program = tmp_path / "req"
    program.mkdir()
    (program / "Pulumi.yaml").write_text("name: req\nruntime: python\n")
    (program / "__main__.py").write_text('import pulumi\npulumi.Config().require("size")\n')
    result = subprocess.run(lightmesh_cmd("render", str(program), "-o", str(tmp_path / "out")), capture_output=True,
                            text=True, timeout=120, env=lightmesh_env())
    message = ("req: missing required configuration `req:size`; set it in Pulumi.dev.yaml or with "
               "`lightmesh render -c req:size=VALUE`")
    assert (result.returncode, result.stderr) == (1, f"lightmesh render: {message}\n")
    # local mode renders first and shows the same, on one line (it showed a tab and `pulumi config set`)
    from lightmesh.cli import main

    assert main(["local", str(program), "--dns-port", "15399"]) == 1
    assert capsys.readouterr().err == f"lightmesh local: rendering {program} failed: {message}\n"


def test_one_name_in_two_clusters_is_two_objects_each_in_its_own_directory(tmp_path):
    result = render("clusters", tmp_path, "--config", "case=two")
    assert result.returncode == 0, result.stderr
    # no ambient objects: the first provider's cluster is at the top, the other in a directory of its name
    assert [d["spec"]["ports"][0]["port"] for d in load(tmp_path).values()] == [80]
    assert [d["spec"]["ports"][0]["port"] for d in load(tmp_path / "k8s-us").values()] == [81]
    assert f"wrote 1 manifests to {tmp_path / 'k8s-us'} (the cluster of provider 'k8s-us')" in result.stdout
    # the ambient cluster takes the top when it has objects
    result = render("clusters", tmp_path, "--config", "case=mixed")
    assert result.returncode == 0, result.stderr
    assert [d["spec"]["ports"][0]["port"] for d in load(tmp_path).values()] == [81]
    assert [d["spec"]["ports"][0]["port"] for d in load(tmp_path / "k8s-eu").values()] == [80]
    assert not (tmp_path / "k8s-us").exists()  # the previous render's directory for a cluster now gone


def test_two_providers_for_one_cluster_are_one_cluster(tmp_path):
    result = render("clusters", tmp_path / "out", "--config", "case=same")
    assert result.returncode == 1
    assert "Service shop/api is declared twice, by resource 'api-0' and by resource 'api-1'" in result.stderr


def test_reading_a_rendered_directory_skips_the_other_clusters(tmp_path):
    # `lightmesh local OUT` after `lightmesh render PROG -o OUT`: the first cluster only, as when
    # local mode renders the program itself; a directory of one's own is still read recursively
    from lightmesh.local.cluster import load_manifests

    assert render("clusters", tmp_path / "out", "--config", "case=two").returncode == 0
    (tmp_path / "out" / "extra").mkdir()
    (tmp_path / "out" / "extra" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mine, namespace: shop}\n")
    notes: list[str] = []
    objects = load_manifests(tmp_path / "out", notes)
    assert sorted((o["kind"], o["spec"]["ports"][0]["port"] if o["kind"] == "Service" else 0) for o in objects) == [
        ("ConfigMap", 0), ("Service", 80)]
    assert notes == []
