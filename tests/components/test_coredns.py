"""Cluster DNS patching: golden files on real-world configurations, properties, and the dynamic
resource's create/update/delete logic against an in-memory cluster.

Goldens live in ``dns_goldens/``: ``<name>.Corefile`` is what the distribution ships, ``<name>.patched``
what Lightmesh writes. Regenerate with ``UPDATE_GOLDENS=1`` and review the diff.
"""

import json
import os
import uuid
from pathlib import Path
from typing import Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightmesh import wire
from mesh_components import cluster_dns, coredns
from mesh_components.cluster_dns import DnsStyle
from mesh_components.coredns import CorefileError

GOLDENS = Path(__file__).parent / "dns_goldens"
DOMAINS = list(wire.DEFAULT_DOMAINS)
IP = "10.96.0.10"
COREFILES = ["kubeadm", "eks", "k3s", "aks", "already-patched"]


def _read(name: str) -> str:
    return (GOLDENS / name).read_bytes().decode()


def _golden(name: str, actual: str) -> None:
    path = GOLDENS / name
    if os.environ.get("UPDATE_GOLDENS"):
        path.write_bytes(actual.encode())
    assert actual == path.read_bytes().decode(), f"{name} differs from the golden file"


@pytest.mark.parametrize("name", COREFILES)
def test_corefile_patch_matches_golden_and_keeps_every_other_byte(name):
    original = _read(f"{name}.Corefile")
    patched = coredns.patch_corefile(original, DOMAINS, IP)
    _golden(f"{name}.patched", patched)
    base = coredns.restore_corefile(original)  # == original unless it already carried our block
    assert patched.startswith(base)
    assert patched.count(coredns.BEGIN_MARKER) == 1 and f"forward . {IP}\n" in patched


@pytest.mark.parametrize("name", COREFILES)
def test_patch_is_idempotent_and_restore_is_byte_exact(name):
    original = _read(f"{name}.Corefile")
    once = coredns.patch_corefile(original, DOMAINS, IP)
    assert coredns.patch_corefile(once, DOMAINS, IP) == once
    clean = coredns.restore_corefile(original)
    assert coredns.restore_corefile(once) == clean
    if name != "already-patched":
        assert clean == original  # nothing of ours was there: byte for byte the distribution's file
    assert coredns.restore_corefile(clean) == clean


def test_already_patched_corefile_gets_its_block_updated_in_place():
    original = _read("already-patched.Corefile")
    patched = coredns.patch_corefile(original, ["lightmesh"], "10.96.0.7")
    assert "10.96.0.99" not in patched and "lightmesh:53 {\n" in patched
    assert "# an operator's own server block, above ours; it must survive\n" in patched
    assert coredns.restore_corefile(patched) == coredns.restore_corefile(original)
    assert coredns.restore_corefile(original).endswith("example.internal:53 {\n    forward . 10.0.0.2\n}\n")


def test_crlf_corefile_keeps_its_line_endings():
    original = _read("aks.Corefile")
    assert "\r\n" in original
    patched = coredns.patch_corefile(original, DOMAINS, IP)
    assert patched[:len(original)] == original
    assert coredns.restore_corefile(patched) == original


def test_traefik_mesh_leftover_block_is_refused_with_a_hint():
    text = _read("traefik-mesh-leftover.Corefile")
    with pytest.raises(CorefileError, match=r"already serves zone 'traefik.mesh' \(line 11\).*Traefik Mesh"):
        coredns.patch_corefile(text, DOMAINS, IP)
    # without the conflicting domain it is fine
    assert coredns.BEGIN_MARKER in coredns.patch_corefile(text, ["lightmesh"], IP)


@pytest.mark.parametrize("header", ["maesh {", "maesh.:53 {", "dns://maesh:53 {", "example.org maesh:53 {"])
def test_conflicting_zone_spellings_are_detected(header):
    with pytest.raises(CorefileError, match="already serves zone 'maesh'"):
        coredns.patch_corefile(f".:53 {{\n    forward . /etc/resolv.conf\n}}\n{header}\n    whoami\n}}\n", DOMAINS, IP)


def test_nested_blocks_and_comments_are_not_mistaken_for_zones():
    text = ".:53 {\n    # maesh {\n    kubernetes cluster.local {\n        pods insecure\n    }\n}\n"
    assert coredns.server_zones(text) == [(1, ".", 53)]
    coredns.patch_corefile(text, DOMAINS, IP)


def test_a_mesh_zone_served_on_another_port_is_no_conflict():
    # CoreDNS refuses a zone twice on the same port only; ours is on 53.
    text = ".:53 {\n    forward . /etc/resolv.conf\n}\ntraefik.mesh:5353 {\n    forward . 10.0.0.9\n}\n"
    assert coredns.server_zones(text) == [(1, ".", 53), (4, "traefik.mesh", 5353)]
    assert coredns.restore_corefile(coredns.patch_corefile(text, DOMAINS, IP)) == text


def test_a_server_block_port_no_port_could_be_is_neither_a_crash_nor_port_53():
    # int() of thousands of digits raises; '\u0665\u0663' (Arabic-Indic 53) is no port to CoreDNS (ASCII digits)
    text = f".:53 {{\n}}\ntraefik.mesh:{'5' * 5000} {{\n}}\nmaesh:\u0665\u0663 {{\n}}\n"
    assert coredns.server_zones(text) == [(1, ".", 53), (3, "traefik.mesh", -1), (5, "maesh:\u0665\u0663", 53)]
    assert coredns.restore_corefile(coredns.patch_corefile(text, DOMAINS, IP)) == text


@pytest.mark.parametrize("text, message", [
    (f".:53 {{\n}}\n{coredns.BEGIN_MARKER}\nlightmesh:53 {{\n}}\n", "no '# END lightmesh' line"),
    (f".:53 {{\n}}\n{coredns.END_MARKER}\n", "without its begin marker"),
    (f"{coredns.BEGIN_MARKER}\n{coredns.END_MARKER}\n{coredns.BEGIN_MARKER}\n{coredns.END_MARKER}\n", "more than one"),
])
def test_damaged_markers_are_reported_not_guessed(text, message):
    with pytest.raises(CorefileError, match=message):
        coredns.patch_corefile(text, DOMAINS, IP)
    with pytest.raises(CorefileError, match=message):
        coredns.restore_corefile(text)


@pytest.mark.parametrize("domains, ip, message", [
    ([], IP, "at least one mesh domain"),
    (DOMAINS, "lightmesh-controller.lightmesh", "must be an IP address"),
    (DOMAINS, "", "must be an IP address"),
    (DOMAINS, "....", "must be an IP address"),
    (DOMAINS, "10.96.0.300", "must be an IP address"),
])
def test_block_arguments_are_checked(domains, ip, message):
    with pytest.raises(CorefileError, match=message):
        coredns.render_server_block(domains, ip)


_text = st.text(alphabet=st.sampled_from(list("abc .:{}#\n\r\t53")), max_size=200)


@settings(max_examples=200, deadline=None)
@given(_text)
def test_restore_inverts_patch_for_any_text_without_our_markers(text):
    try:
        patched = coredns.patch_corefile(text, ["lightmesh"], IP)
    except CorefileError:
        return  # text already serves the zone: refusing is the correct outcome
    assert coredns.restore_corefile(patched) == text
    assert coredns.patch_corefile(patched, ["lightmesh"], IP) == patched


# ------------------------------------------------------------------------------ coredns-custom, kube-dns
def test_custom_server_block_golden_matches_the_import_globs():
    _golden("coredns-custom.server", coredns.render_server_block(DOMAINS, IP))
    assert coredns.CUSTOM_SERVER_KEY.endswith(".server")  # k3s imports custom/*.server, as does AKS
    assert "import /etc/coredns/custom/*.server" in _read("k3s.Corefile")
    assert "import custom/*.server" in _read("aks.Corefile")


def test_kube_dns_stub_domains_golden_and_restore():
    data = json.loads(_read("gke-kube-dns.json"))
    patched = coredns.patch_stub_domains(data["stubDomains"], DOMAINS, IP)
    _golden("gke-kube-dns.stubDomains", patched)
    assert json.loads(patched) == {"acme.local": ["1.2.3.4"], "lightmesh": [IP], "traefik.mesh": [IP], "maesh": [IP]}
    assert json.loads(coredns.restore_stub_domains(patched, DOMAINS)) == {"acme.local": ["1.2.3.4"]}
    assert coredns.restore_stub_domains(coredns.patch_stub_domains(None, DOMAINS, IP), DOMAINS) is None
    with pytest.raises(CorefileError, match="not valid JSON"):
        coredns.patch_stub_domains("{nope", DOMAINS, IP)


# ------------------------------------------------------------------------------ dynamic resource logic
class FakeCluster:
    """In-memory :class:`cluster_dns.DnsClient`: Deployments (their ConfigMap volumes) and ConfigMaps.
    Every instance is another cluster (its own kube-system Namespace UID) unless ``uid`` is given."""

    def __init__(self, deployments: dict[str, list[str]], configmaps: dict[str, dict[str, str]],
                 uid: Optional[str] = None) -> None:
        self.deployments = deployments
        self.configmaps = configmaps
        self.rolls: list[tuple[str, str]] = []
        self.uid = uid or str(uuid.uuid4())
        self.writes = 0  # ConfigMap writes and deletes

    def cluster_id(self):
        return self.uid

    def deployment_configmaps(self, namespace, name):
        assert namespace == "kube-system"
        return self.deployments.get(name)

    def get_configmap(self, namespace, name):
        return None if name not in self.configmaps else dict(self.configmaps[name])

    def set_configmap_key(self, namespace, name, key, value):
        self.writes += 1
        data = self.configmaps.setdefault(name, {})
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value

    def delete_configmap(self, namespace, name):
        self.writes += 1
        del self.configmaps[name]

    def roll_deployment(self, namespace, name, value):
        self.rolls.append((name, value))


def test_kubeadm_create_update_delete_restores_the_corefile_byte_for_byte():
    original = _read("kubeadm.Corefile")
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": original, "other": "x"}})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    assert state["style"] == "corefile" and state["original"] == original
    assert cluster.configmaps["coredns"]["Corefile"] == _read("kubeadm.patched")
    assert cluster.rolls == [("coredns", coredns.block_hash(_read("kubeadm.patched")))]

    state = cluster_dns.update(cluster, state, DOMAINS, "10.96.0.11")
    assert "forward . 10.96.0.11" in cluster.configmaps["coredns"]["Corefile"]
    assert len(cluster.rolls) == 2 and cluster.rolls[0] != cluster.rolls[1]
    state = cluster_dns.update(cluster, state, DOMAINS, "10.96.0.11")  # no change: no write, no roll
    assert len(cluster.rolls) == 2

    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns"] == {"Corefile": original, "other": "x"}
    assert len(cluster.rolls) == 3


def test_delete_keeps_edits_made_after_the_patch():
    original = _read("eks.Corefile")
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": original}})
    state = cluster_dns.create(cluster, "kube-system", "corefile", DOMAINS, IP)
    cluster.configmaps["coredns"]["Corefile"] += "\nexample.org:53 {\n    forward . 10.0.0.3\n}\n"
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns"]["Corefile"] == original + "\nexample.org:53 {\n    forward . 10.0.0.3\n}\n"


def test_recreate_after_lost_state_remembers_the_clean_original():
    original = _read("kubeadm.Corefile")
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": original}})
    cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)  # e.g. after `pulumi state delete`
    assert state["original"] == original
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns"]["Corefile"] == original


def test_k3s_without_coredns_custom_configmap_creates_and_removes_it():
    corefile = _read("k3s.Corefile")
    cluster = FakeCluster({"coredns": ["coredns", "coredns-custom"]}, {"coredns": {"Corefile": corefile}})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    assert state["style"] == "coredns-custom" and state["created_configmap"]
    assert cluster.configmaps["coredns-custom"] == {"lightmesh.server": _read("coredns-custom.server")}
    assert cluster.configmaps["coredns"]["Corefile"] == corefile  # the Corefile is never touched
    cluster_dns.delete(cluster, state)
    assert "coredns-custom" not in cluster.configmaps
    assert [name for name, _ in cluster.rolls] == ["coredns", "coredns"]


def test_aks_coredns_custom_keeps_the_users_own_keys():
    user = {"acme.server": "acme.com:53 {\n    forward . 10.1.0.1\n}\n"}
    cluster = FakeCluster({"coredns": ["coredns", "coredns-custom"]},
                          {"coredns": {"Corefile": _read("aks.Corefile")}, "coredns-custom": dict(user)})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    assert set(cluster.configmaps["coredns-custom"]) == {"acme.server", "lightmesh.server"}
    state = cluster_dns.update(cluster, state, ["lightmesh"], IP)
    assert "traefik.mesh" not in cluster.configmaps["coredns-custom"]["lightmesh.server"]
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns-custom"] == user


def test_coredns_custom_refuses_a_mesh_zone_another_key_or_the_corefile_serves():
    # AKS with Traefik Mesh's leftover traefik.mesh.server: CoreDNS would refuse the whole config
    leftover = {"traefik.mesh.server": "traefik.mesh:53 {\n    forward . 10.0.0.9\n}\n"}
    cluster = FakeCluster({"coredns": ["coredns", "coredns-custom"]},
                          {"coredns": {"Corefile": _read("aks.Corefile")}, "coredns-custom": dict(leftover)})
    with pytest.raises(coredns.CorefileError,
                       match=r"ConfigMap kube-system/coredns-custom key 'traefik.mesh.server' already serves zone "
                             r"'traefik.mesh'.*uninstall Traefik Mesh"):
        cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    assert cluster.writes == 0 and cluster.rolls == []
    # the same zone in the distribution's own Corefile
    corefile = _read("k3s.Corefile") + "\nmaesh:53 {\n    forward . 10.0.0.9\n}\n"
    cluster = FakeCluster({"coredns": ["coredns", "coredns-custom"]}, {"coredns": {"Corefile": corefile}})
    with pytest.raises(coredns.CorefileError, match=r"the Corefile of ConfigMap kube-system/coredns already serves "
                                                    r"zone 'maesh'"):
        cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    assert cluster.writes == 0 and cluster.rolls == []
    # dropping that domain is the way out the message gives
    state = cluster_dns.create(cluster, "kube-system", "auto", ["lightmesh", "traefik.mesh"], IP)
    assert state["style"] == "coredns-custom"


def test_the_mesh_block_listens_on_the_port_of_the_root_block():
    # a CoreDNS serving on 1053 (non-root images): a block on :53 would never see a query
    corefile = ".:1053 {\n    errors\n    forward . /etc/resolv.conf\n}\n"
    patched = coredns.patch_corefile(corefile, DOMAINS, IP)
    assert "lightmesh:1053 traefik.mesh:1053 maesh:1053 {" in patched
    assert coredns.restore_corefile(patched) == corefile
    assert coredns.patch_corefile(patched, DOMAINS, IP) == patched
    with pytest.raises(coredns.CorefileError, match="already serves zone 'maesh'"):
        coredns.patch_corefile(corefile + "maesh:1053 {\n}\n", DOMAINS, IP)
    coredns.patch_corefile(corefile + "maesh:53 {\n}\n", DOMAINS, IP)  # another port: no clash
    # only a plain-DNS root counts, and 53 wins when a plain root is there
    for first in ("tls://.:853 {\n    tls a b\n}\n", ".:9153 {\n    prometheus\n}\n", "dns://.:5353 {\n}\n"):
        text = first + ".:53 {\n    forward . /etc/resolv.conf\n}\n"
        assert "lightmesh:53 traefik.mesh:53 maesh:53 {" in coredns.patch_corefile(text, DOMAINS, IP), first
    assert "lightmesh:1053 " in coredns.patch_corefile("https://.:443 {\n}\ndns://.:1053 {\n}\n", DOMAINS, IP)
    # an update is checked too: our block moving to a port where the Corefile already serves a mesh zone
    patched = coredns.patch_corefile(".:53 {\n}\n", DOMAINS, IP)
    moved = patched.replace(".:53 {", ".:1053 {") + "traefik.mesh:1053 {\n}\n"
    with pytest.raises(coredns.CorefileError, match="already serves zone 'traefik.mesh'"):
        coredns.patch_corefile(moved, DOMAINS, IP)


def test_gke_kube_dns_stub_domains_are_restored_byte_for_byte():
    data = json.loads(_read("gke-kube-dns.json"))
    cluster = FakeCluster({"kube-dns": ["kube-dns"]}, {"kube-dns": dict(data)})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    assert state["style"] == "kube-dns"
    assert cluster.configmaps["kube-dns"]["stubDomains"] == _read("gke-kube-dns.stubDomains")
    state = cluster_dns.update(cluster, state, ["lightmesh"], IP)
    assert set(json.loads(cluster.configmaps["kube-dns"]["stubDomains"])) == {"acme.local", "lightmesh"}
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["kube-dns"] == data
    assert cluster.rolls and cluster.rolls[-1][0] == "kube-dns"


def test_explicit_style_and_missing_dns_are_reported():
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}})
    assert cluster_dns.detect_target(cluster, "kube-system", DnsStyle.COREDNS_CUSTOM).configmap == "coredns-custom"
    with pytest.raises(CorefileError, match="no CoreDNS Deployment found in namespace 'kube-system'"):
        cluster_dns.detect_target(FakeCluster({"kube-dns": ["kube-dns"]}, {}), "kube-system", DnsStyle.COREFILE)
    with pytest.raises(CorefileError, match="patch_coredns"):
        cluster_dns.create(FakeCluster({}, {}), "kube-system", "auto", DOMAINS, IP)
    with pytest.raises(CorefileError, match="does not exist"):
        cluster_dns.create(FakeCluster({"coredns": ["coredns"]}, {}), "kube-system", "corefile", DOMAINS, IP)


def test_rke2_deployment_name_is_found():
    cluster = FakeCluster({"rke2-coredns-rke2-coredns": ["rke2-coredns-rke2-coredns"]},
                          {"rke2-coredns-rke2-coredns": {"Corefile": _read("kubeadm.Corefile")}})
    target = cluster_dns.detect_target(cluster, "kube-system", DnsStyle.AUTO)
    assert (target.style, target.deployment, target.configmap) == (
        DnsStyle.COREFILE, "rke2-coredns-rke2-coredns", "rke2-coredns-rke2-coredns")


def test_provider_diff_replaces_on_style_or_namespace_change():
    provider = cluster_dns._Provider()
    olds = {"style": "auto", "dns_namespace": "kube-system", "domains": DOMAINS, "dns_ip": IP}
    assert not provider.diff("id", olds, dict(olds)).changes
    ip_change = provider.diff("id", olds, {**olds, "dns_ip": "10.96.0.2"})
    assert ip_change.changes and not ip_change.replaces
    assert provider.diff("id", olds, {**olds, "style": "kube-dns"}).replaces == ["style"]


# ------------------------------------------------------------------------------ drift: a reset drops our block
# A kubeadm upgrade or an EKS add-on update rewrites the Corefile without our block. `pulumi refresh`
# (read) must show it, and `pulumi up` (diff → update) must put the block back.
UPGRADED = _read("kubeadm.Corefile").replace("cache 30", "cache 60")  # what the upgrade writes: the new baseline


def _connect_to(cluster):
    return lambda kubeconfig: cluster


def _unreachable(kubeconfig):
    raise ConnectionError("connection refused")


def _outputs(state):
    """The resource's recorded outputs, as the provider's create/update return them."""
    return {"style": state["style"], "dns_namespace": state["namespace"], "domains": state["domains"],
            "dns_ip": state["dns_ip"], "kubeconfig": None, "state": state,
            "block_hash": cluster_dns.written_hash(state)}


def _inputs(outputs):
    return {k: outputs[k] for k in ("style", "dns_namespace", "domains", "dns_ip", "kubeconfig")}


def test_corefile_reset_is_drift_and_update_puts_the_block_back_with_the_reset_value_as_original():
    original = _read("kubeadm.Corefile")
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": original, "other": "x"}})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    olds = _outputs(state)
    assert cluster_dns.drift(cluster, state) is None
    assert cluster_dns.diff_props(olds, _inputs(olds), _connect_to(cluster)) == ([], [])

    cluster.configmaps["coredns"]["Corefile"] = UPGRADED  # the reset
    assert cluster_dns.drift(cluster, state) == "missing"
    assert cluster_dns.live_hash(cluster, state) is None
    assert cluster_dns.diff_props(olds, _inputs(olds), _connect_to(cluster)) == (["state"], [])

    rolls = len(cluster.rolls)
    state = cluster_dns.update(cluster, state, DOMAINS, IP)
    assert cluster.configmaps["coredns"]["Corefile"] == coredns.patch_corefile(UPGRADED, DOMAINS, IP)
    assert cluster.configmaps["coredns"]["other"] == "x"
    assert len(cluster.rolls) == rolls + 1  # CoreDNS reloads the repaired Corefile
    # the reset value is the new baseline: destroy must not undo the upgrade by writing the old Corefile
    assert state["original"] == UPGRADED
    assert cluster_dns.drift(cluster, state) is None
    assert cluster_dns.diff_props(_outputs(state), _inputs(olds), _connect_to(cluster)) == ([], [])

    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns"] == {"Corefile": UPGRADED, "other": "x"}


def test_an_edited_block_is_drift_and_is_rewritten_while_edits_elsewhere_are_not():
    original = _read("eks.Corefile")
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": original}})
    state = cluster_dns.create(cluster, "kube-system", "corefile", DOMAINS, IP)
    theirs = "\nexample.org:53 {\n    forward . 10.0.0.3\n}\n"

    cluster.configmaps["coredns"]["Corefile"] += theirs  # someone else's block: not drift, no write
    assert cluster_dns.drift(cluster, state) is None
    assert cluster_dns.diff_props(_outputs(state), _inputs(_outputs(state)), _connect_to(cluster)) == ([], [])

    edited = cluster.configmaps["coredns"]["Corefile"].replace(f"forward . {IP}", "forward . 10.9.9.9")
    cluster.configmaps["coredns"]["Corefile"] = edited  # our block hand-edited
    assert cluster_dns.drift(cluster, state) == "changed"
    assert cluster_dns.live_hash(cluster, state) not in (None, cluster_dns.written_hash(state))
    assert cluster_dns.diff_props(_outputs(state), _inputs(_outputs(state)), _connect_to(cluster)) == (["state"], [])

    state = cluster_dns.update(cluster, state, DOMAINS, IP)
    assert cluster.configmaps["coredns"]["Corefile"] == coredns.patch_corefile(original, DOMAINS, IP) + theirs
    assert state["original"] == original + theirs  # their block stays after destroy
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns"]["Corefile"] == original + theirs


def test_input_update_after_someone_edited_keeps_their_edit_on_delete():
    original = _read("kubeadm.Corefile")
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": original}})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    cluster.configmaps["coredns"]["Corefile"] = cluster.configmaps["coredns"]["Corefile"].replace("cache 30", "cache 9")
    state = cluster_dns.update(cluster, state, DOMAINS, "10.96.0.11")  # new mesh DNS IP
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns"]["Corefile"] == original.replace("cache 30", "cache 9")


def test_damaged_markers_are_drift_and_update_says_what_to_fix():
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    cluster.configmaps["coredns"]["Corefile"] = cluster.configmaps["coredns"]["Corefile"].replace(
        coredns.END_MARKER, "# the end")
    assert cluster_dns.live_hash(cluster, state) == cluster_dns.DAMAGED
    assert cluster_dns.drift(cluster, state) == "changed"  # reported, not raised: preview and refresh work
    with pytest.raises(CorefileError, match="no '# END lightmesh' line"):
        cluster_dns.update(cluster, state, DOMAINS, IP)


def test_coredns_custom_key_or_configmap_removed_is_drift_and_repaired():
    cluster = FakeCluster({"coredns": ["coredns", "coredns-custom"]},
                          {"coredns": {"Corefile": _read("aks.Corefile")}, "coredns-custom": {"acme.server": "a"}})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    assert not state["created_configmap"] and cluster_dns.drift(cluster, state) is None

    del cluster.configmaps["coredns-custom"]["lightmesh.server"]  # key dropped
    assert cluster_dns.drift(cluster, state) == "missing"
    state = cluster_dns.update(cluster, state, DOMAINS, IP)
    assert cluster.configmaps["coredns-custom"]["lightmesh.server"] == _read("coredns-custom.server")
    assert state["original"] is None and not state["created_configmap"]

    del cluster.configmaps["coredns-custom"]  # whole ConfigMap deleted: we create it again, so we remove it
    assert cluster_dns.drift(cluster, state) == "missing"
    state = cluster_dns.update(cluster, state, DOMAINS, IP)
    assert cluster.configmaps["coredns-custom"] == {"lightmesh.server": _read("coredns-custom.server")}
    assert state["created_configmap"]
    cluster_dns.delete(cluster, state)
    assert "coredns-custom" not in cluster.configmaps

    # our own key edited by hand: rewritten, and destroy removes it (it never was anyone else's value)
    cluster = FakeCluster({"coredns": ["coredns", "coredns-custom"]}, {"coredns": {"Corefile": "x"}})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    cluster.configmaps["coredns-custom"]["lightmesh.server"] = "lightmesh:53 {\n    forward . 10.0.0.1\n}\n"
    cluster.configmaps["coredns-custom"]["acme.server"] = "a"
    assert cluster_dns.drift(cluster, state) == "changed"
    state = cluster_dns.update(cluster, state, DOMAINS, IP)
    assert state["original"] is None
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns-custom"] == {"acme.server": "a"}


def test_coredns_custom_recreate_after_lost_state_removes_our_key_on_delete():
    cluster = FakeCluster({"coredns": ["coredns", "coredns-custom"]},
                          {"coredns": {"Corefile": "x"}, "coredns-custom": {"acme.server": "a"}})
    cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)  # e.g. after `pulumi state delete`
    assert state["original"] is None
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["coredns-custom"] == {"acme.server": "a"}


def test_kube_dns_stub_domains_reset_is_drift_reformatting_is_not():
    data = json.loads(_read("gke-kube-dns.json"))
    cluster = FakeCluster({"kube-dns": ["kube-dns"]}, {"kube-dns": dict(data)})
    state = cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP)
    live = json.loads(cluster.configmaps["kube-dns"]["stubDomains"])
    cluster.configmaps["kube-dns"]["stubDomains"] = json.dumps(live, separators=(",", ":"))  # reformatted by a tool
    assert cluster_dns.drift(cluster, state) is None

    reset = '{"acme.local": ["1.2.3.5"]}'
    cluster.configmaps["kube-dns"]["stubDomains"] = reset
    assert cluster_dns.drift(cluster, state) == "missing"
    cluster.configmaps["kube-dns"]["stubDomains"] = json.dumps({**live, "maesh": ["10.0.0.1"]})
    assert cluster_dns.drift(cluster, state) == "changed"  # one of our entries points elsewhere

    cluster.configmaps["kube-dns"]["stubDomains"] = reset
    state = cluster_dns.update(cluster, state, DOMAINS, IP)
    assert json.loads(cluster.configmaps["kube-dns"]["stubDomains"]) == {
        "acme.local": ["1.2.3.5"], "lightmesh": [IP], "traefik.mesh": [IP], "maesh": [IP]}
    assert state["original"] == reset and cluster_dns.drift(cluster, state) is None
    cluster_dns.delete(cluster, state)
    assert cluster.configmaps["kube-dns"]["stubDomains"] == reset


def test_unreachable_cluster_does_not_fail_the_diff_it_falls_back_to_the_recorded_state():
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}})
    olds = _outputs(cluster_dns.create(cluster, "kube-system", "auto", DOMAINS, IP))
    news = _inputs(olds)
    assert cluster_dns.diff_props(olds, news, _unreachable) == ([], [])
    assert cluster_dns.diff_props(olds, {**news, "dns_ip": "10.96.0.2"}, _unreachable) == (["dns_ip"], [])
    # a `pulumi refresh` recorded the block missing: that still asks for the repairing update
    assert cluster_dns.diff_props({**olds, "block_hash": None}, news, _unreachable) == (["state"], [])
    # states written before drift detection have no block_hash: no drift claimed
    legacy = {k: v for k, v in olds.items() if k != "block_hash"}
    assert cluster_dns.diff_props(legacy, news, _unreachable) == ([], [])

    def must_not_connect(kubeconfig):
        raise AssertionError("connected with an unknown kubeconfig")

    class Unknown:  # stands for pulumi's unknown value during a preview
        pass

    # an input not known yet may change (shown as an update), and is never connected with
    assert cluster_dns.diff_props(olds, {**news, "kubeconfig": Unknown()}, must_not_connect) == (["kubeconfig"], [])


def test_provider_refresh_then_up_repairs_a_reset(monkeypatch):
    """The Pulumi-facing provider, end to end over the in-memory cluster: create, reset, read
    (`pulumi refresh`), diff and update (`pulumi up`), delete (`pulumi destroy`)."""
    cluster = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}})
    connected = []
    monkeypatch.setattr(cluster_dns, "LightkubeDnsClient",
                        lambda kubeconfig=None: connected.append(kubeconfig) or cluster)
    provider = cluster_dns._Provider()
    inputs = {"style": "auto", "dns_namespace": "kube-system", "domains": DOMAINS, "dns_ip": IP,
              "kubeconfig": "kc", "state": None}
    created = provider.create(inputs)
    outs = created.outs
    assert outs["block_hash"] == cluster_dns.written_hash(outs["state"])
    assert provider.read(created.id, outs).outs == outs  # intact: refresh shows no change
    assert not provider.diff(created.id, outs, inputs).changes

    cluster.configmaps["coredns"]["Corefile"] = UPGRADED
    refreshed = provider.read(created.id, outs)
    assert refreshed.id == created.id and refreshed.outs["block_hash"] is None  # refresh shows the drift
    assert refreshed.outs["state"] == outs["state"]  # the restoring delete's state is untouched
    diff = provider.diff(created.id, refreshed.outs, inputs)
    assert diff.changes and not diff.replaces
    outs = provider.update(created.id, refreshed.outs, inputs).outs
    assert cluster.configmaps["coredns"]["Corefile"] == coredns.patch_corefile(UPGRADED, DOMAINS, IP)
    assert outs["block_hash"] == cluster_dns.written_hash(outs["state"])
    assert not provider.diff(created.id, outs, inputs).changes
    assert set(connected) == {"kc"}

    provider.delete(created.id, outs)
    assert cluster.configmaps["coredns"]["Corefile"] == UPGRADED

    # unreachable cluster: the preview's diff does not fail
    def refuse(kubeconfig=None):
        raise ConnectionError("connection refused")
    monkeypatch.setattr(cluster_dns, "LightkubeDnsClient", refuse)
    assert not provider.diff(created.id, outs, inputs).changes


# ------------------------------------------------------------------------------ which cluster: a context switch
# The patcher reaches the cluster through `kubeconfig` or the ambient kubeconfig's current context. After
# `kubectx prod`, a no-change `pulumi up` of the dev stack must neither take prod's DNS config for drift nor
# write to prod: the state records the cluster it patched (the kube-system Namespace's UID).
def _dev_and_prod():
    dev = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="dev-uid")
    prod = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="prod-uid")
    dev_state = cluster_dns.create(dev, "kube-system", "auto", DOMAINS, IP)
    cluster_dns.create(prod, "kube-system", "auto", DOMAINS, "10.100.7.7")  # prod's own mesh
    prod.writes, prod.rolls = 0, []
    return dev, prod, dev_state


def test_create_records_the_cluster_identity():
    dev, _, state = _dev_and_prod()
    assert state["cluster_id"] == "dev-uid"
    state = cluster_dns.update(dev, state, DOMAINS, "10.96.0.11")
    assert state["cluster_id"] == "dev-uid"


def test_a_context_switch_is_no_drift_and_update_and_delete_refuse_to_write_to_the_other_cluster():
    _, prod, dev_state = _dev_and_prod()
    prod_corefile = prod.configmaps["coredns"]["Corefile"]
    olds = _outputs(dev_state)
    # prod's block forwards to another IP: compared with dev's, that would be "changed" drift
    assert cluster_dns.drift(prod, dev_state) == "changed"
    assert cluster_dns.diff_props(olds, _inputs(olds), _connect_to(prod)) == ([], [])
    # prod without any block: would be "missing" drift
    prod.configmaps["coredns"]["Corefile"] = _read("kubeadm.Corefile")
    assert cluster_dns.diff_props(olds, _inputs(olds), _connect_to(prod)) == ([], [])
    # a changed input still asks for the update (the inputs decide), which then refuses
    assert cluster_dns.diff_props(olds, {**_inputs(olds), "dns_ip": "10.96.0.2"}, _connect_to(prod)) == (["dns_ip"], [])
    prod.configmaps["coredns"]["Corefile"] = prod_corefile

    with pytest.raises(cluster_dns.WrongClusterError) as err:
        cluster_dns.update(prod, dev_state, DOMAINS, IP)
    message = str(err.value)
    assert "dev-uid" in message and "prod-uid" in message
    assert "now points at another cluster than the one this stack patched" in message
    assert "Switch the kubeconfig context back" in message and "kubeconfig in the kubeconfig input" in message
    with pytest.raises(cluster_dns.WrongClusterError, match="refusing to delete .*dev-uid.*prod-uid"):
        cluster_dns.delete(prod, dev_state)
    assert prod.configmaps["coredns"]["Corefile"] == prod_corefile
    assert prod.writes == 0 and prod.rolls == []


def test_same_cluster_drift_is_still_repaired_with_the_identity_recorded():
    dev, _, state = _dev_and_prod()
    olds = _outputs(state)
    dev.configmaps["coredns"]["Corefile"] = UPGRADED
    assert cluster_dns.diff_props(olds, _inputs(olds), _connect_to(dev)) == (["state"], [])
    state = cluster_dns.update(dev, state, DOMAINS, IP)
    assert dev.configmaps["coredns"]["Corefile"] == coredns.patch_corefile(UPGRADED, DOMAINS, IP)
    assert state["cluster_id"] == "dev-uid"
    assert cluster_dns.diff_props(_outputs(state), _inputs(olds), _connect_to(dev)) == ([], [])
    cluster_dns.delete(dev, state)
    assert dev.configmaps["coredns"]["Corefile"] == UPGRADED


def test_a_state_without_cluster_identity_is_not_checked_live_and_update_records_the_identity():
    """States written before the identity was recorded cannot be verified: no live drift check (the
    recorded block_hash decides, as for an unreachable cluster); update and delete proceed as before."""
    dev, _, state = _dev_and_prod()
    legacy = {k: v for k, v in state.items() if k != "cluster_id"}
    olds = _outputs(legacy)

    def must_not_connect(kubeconfig):
        raise AssertionError("checked a cluster a state without identity cannot be verified against")

    dev.configmaps["coredns"]["Corefile"] = UPGRADED  # would be drift, but cannot be verified as this stack's
    assert cluster_dns.diff_props(olds, _inputs(olds), _connect_to(dev)) == ([], [])
    assert cluster_dns.diff_props(olds, _inputs(olds), must_not_connect) == ([], [])
    assert cluster_dns.diff_props({**olds, "block_hash": None}, _inputs(olds), must_not_connect) == (["state"], [])
    legacy_no_hash = {k: v for k, v in olds.items() if k != "block_hash"}
    assert cluster_dns.diff_props(legacy_no_hash, _inputs(olds), must_not_connect) == ([], [])

    state = cluster_dns.update(dev, legacy, DOMAINS, "10.96.0.11")  # an input change: proceeds as before
    assert state["cluster_id"] == "dev-uid"
    assert dev.configmaps["coredns"]["Corefile"] == coredns.patch_corefile(UPGRADED, DOMAINS, "10.96.0.11")
    # from now on it is checked: a drift is seen again in this cluster, and only in this one
    dev.configmaps["coredns"]["Corefile"] = UPGRADED
    assert cluster_dns.diff_props(_outputs(state), _inputs(_outputs(state)), _connect_to(dev)) == (["state"], [])

    # delete of a state without identity proceeds as before
    dev.configmaps["coredns"]["Corefile"] = coredns.patch_corefile(UPGRADED, DOMAINS, "10.96.0.11")
    cluster_dns.delete(dev, {k: v for k, v in state.items() if k != "cluster_id"})
    assert dev.configmaps["coredns"]["Corefile"] == UPGRADED


def test_provider_after_a_context_switch_reads_diffs_and_writes_nothing_in_the_other_cluster(monkeypatch):
    """The Pulumi-facing provider, ambient kubeconfig (no `kubeconfig` input): created in dev, then the
    current context is switched to prod."""
    dev = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="dev-uid")
    prod = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="prod-uid")
    ambient = {"cluster": dev}
    monkeypatch.setattr(cluster_dns, "LightkubeDnsClient", lambda kubeconfig=None: ambient["cluster"])
    provider = cluster_dns._Provider()
    inputs = {"style": "auto", "dns_namespace": "kube-system", "domains": DOMAINS, "dns_ip": IP,
              "kubeconfig": None, "state": None}
    created = provider.create(inputs)
    outs = created.outs
    assert outs["state"]["cluster_id"] == "dev-uid"

    ambient["cluster"] = prod  # `kubectx prod`
    refreshed = provider.read(created.id, outs)
    assert refreshed.outs == outs  # prod has no block of ours: not reported as this stack's block
    assert not provider.diff(created.id, refreshed.outs, inputs).changes
    with pytest.raises(cluster_dns.WrongClusterError):
        provider.update(created.id, outs, {**inputs, "dns_ip": "10.96.0.2"})
    with pytest.raises(cluster_dns.WrongClusterError):
        provider.delete(created.id, outs)
    assert prod.configmaps["coredns"]["Corefile"] == _read("kubeadm.Corefile")
    assert prod.writes == 0 and prod.rolls == []

    ambient["cluster"] = dev  # switched back: drift in dev is seen and repaired again
    dev.configmaps["coredns"]["Corefile"] = UPGRADED
    refreshed = provider.read(created.id, outs)
    assert refreshed.outs["block_hash"] is None
    assert provider.diff(created.id, refreshed.outs, inputs).changes
    outs = provider.update(created.id, refreshed.outs, inputs).outs
    assert dev.configmaps["coredns"]["Corefile"] == coredns.patch_corefile(UPGRADED, DOMAINS, IP)
    assert outs["state"]["cluster_id"] == "dev-uid"

    # a state without identity: refresh does not report a live block it cannot verify as this stack's
    legacy = {**outs, "state": {k: v for k, v in outs["state"].items() if k != "cluster_id"}}
    dev.configmaps["coredns"]["Corefile"] = UPGRADED
    assert provider.read(created.id, legacy).outs == legacy


def test_a_kubeconfig_given_later_is_recorded_and_destroy_then_uses_it(monkeypatch):
    """The upgrade path: a state from before the identity was recorded, `kubeconfig` added. It used to
    be no change at all, so destroy kept using the ambient context (another cluster, maybe)."""
    dev = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="dev-uid")
    prod = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="prod-uid")
    by_kubeconfig = {"kc-dev": dev, None: prod}  # the ambient context is prod by now
    monkeypatch.setattr(cluster_dns, "LightkubeDnsClient", lambda kubeconfig=None: by_kubeconfig[kubeconfig])
    provider = cluster_dns._Provider()
    inputs = {"style": "auto", "dns_namespace": "kube-system", "domains": DOMAINS, "dns_ip": IP,
              "kubeconfig": None, "state": None}
    by_kubeconfig[None] = dev
    outs = provider.create(inputs).outs
    legacy = {**outs, "state": {k: v for k, v in outs["state"].items() if k != "cluster_id"}}
    by_kubeconfig[None] = prod
    news = {**inputs, "kubeconfig": "kc-dev"}
    assert provider.diff("id", legacy, news).changes
    outs = provider.update("id", legacy, news).outs
    assert outs["kubeconfig"] == "kc-dev" and outs["state"]["cluster_id"] == "dev-uid" and prod.writes == 0
    provider.delete("id", outs)
    assert dev.configmaps["coredns"]["Corefile"] == _read("kubeadm.Corefile") and prod.writes == 0


def test_a_changed_kubeconfig_to_another_cluster_moves_the_patch(monkeypatch):
    """The stack's cluster was replaced (its kubeconfig output changed): patch the new one, give the old
    one its DNS back when it can still be reached, warn when it cannot."""
    old = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="old-uid")
    new = FakeCluster({"coredns": ["coredns"]}, {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="new-uid")
    clusters = {"kc-old": old, "kc-new": new}

    def connect(kubeconfig=None):
        if kubeconfig not in clusters:
            raise ConnectionError(f"cannot reach {kubeconfig}")
        return clusters[kubeconfig]

    monkeypatch.setattr(cluster_dns, "LightkubeDnsClient", connect)
    warnings: list[str] = []
    monkeypatch.setattr(cluster_dns.pulumi.log, "warn", lambda message, *a, **k: warnings.append(message))
    provider = cluster_dns._Provider()
    inputs = {"style": "auto", "dns_namespace": "kube-system", "domains": DOMAINS, "dns_ip": IP,
              "kubeconfig": "kc-old", "state": None}
    outs = provider.create(inputs).outs
    news = {**inputs, "kubeconfig": "kc-new", "dns_ip": "10.96.0.2"}
    assert provider.diff("id", outs, news).changes
    moved = provider.update("id", outs, news).outs
    assert moved["state"]["cluster_id"] == "new-uid"
    assert new.configmaps["coredns"]["Corefile"] == coredns.patch_corefile(_read("kubeadm.Corefile"), DOMAINS,
                                                                           "10.96.0.2")
    assert old.configmaps["coredns"]["Corefile"] == _read("kubeadm.Corefile") and warnings == []
    # and once more, the old cluster gone for good: the new one is patched, the old one only warned about
    del clusters["kc-new"]
    clusters["kc-third"] = third = FakeCluster({"coredns": ["coredns"]},
                                               {"coredns": {"Corefile": _read("kubeadm.Corefile")}}, uid="third")
    moved_again = provider.update("id", moved, {**news, "kubeconfig": "kc-third"}).outs
    assert moved_again["state"]["cluster_id"] == "third" and "new-uid" in warnings[0]
    assert coredns.find_block(third.configmaps["coredns"]["Corefile"]) is not None
