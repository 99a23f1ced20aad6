"""The cluster-DNS Kubernetes adapter (lightkube) against kmock's HTTP Kubernetes emulator.

The create/update/delete logic is covered with an in-memory client in test_coredns.py; this checks
the thin adapter speaks the API correctly: reads Deployments and ConfigMaps, merge-patches one key
(others untouched, ``None`` removes it), creates and deletes ``coredns-custom``, rolls the Deployment.
"""

import asyncio
from pathlib import Path

import pytest
import yaml

from mesh_components import cluster_dns, coredns

GOLDENS = Path(__file__).parent / "dns_goldens"
KUBEADM = (GOLDENS / "kubeadm.Corefile").read_text()
DOMAINS = ["lightmesh", "traefik.mesh", "maesh"]


def _deployment(name, configmaps):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"selector": {"matchLabels": {"k8s-app": "kube-dns"}},
                     "template": {"metadata": {"labels": {"k8s-app": "kube-dns"}},
                                  "spec": {"containers": [{"name": "coredns", "image": "coredns/coredns:1.11.1"}],
                                           "volumes": [{"name": f"v{i}", "configMap": {"name": cm}}
                                                       for i, cm in enumerate(configmaps)]}}}}


def _configmap(name, data):
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "kube-system"}, "data": data}


KUBE_SYSTEM_UID = "5f0c6c0e-3c1b-4a39-9d1e-6a1f2b7e9c01"


def _client(kmock) -> cluster_dns.LightkubeDnsClient:
    # every cluster has a kube-system Namespace; its UID is the cluster's identity (kmock's object store
    # takes /api/v1/namespaces/<name> for a namespace prefix, so the Namespace is served as a response)
    kmock["get /api/v1/namespaces/kube-system"] << {
        "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system", "uid": KUBE_SYSTEM_UID}}
    kubeconfig = {"apiVersion": "v1", "kind": "Config", "current-context": "kmock",
                  "clusters": [{"name": "kmock", "cluster": {"server": str(kmock.url).rstrip("/")}}],
                  "users": [{"name": "kmock", "user": {}}],
                  "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}]}
    return cluster_dns.LightkubeDnsClient(yaml.safe_dump(kubeconfig))


def _latest(kmock, resource, name):
    obj = kmock.objects[resource, "kube-system", name]
    return dict(obj)


@pytest.mark.asyncio
async def test_corefile_patch_and_restore_through_the_kubernetes_api(kmock):
    kmock.objects["apps/v1/deployments", "kube-system", "coredns"] = _deployment("coredns", ["coredns"])
    kmock.objects["v1/configmaps", "kube-system", "coredns"] = _configmap("coredns", {"Corefile": KUBEADM, "x": "1"})
    client = _client(kmock)

    state = await asyncio.wait_for(
        asyncio.to_thread(cluster_dns.create, client, "kube-system", "auto", DOMAINS, "10.96.0.10"), 10)
    assert state["style"] == "corefile" and state["cluster_id"] == KUBE_SYSTEM_UID
    data = _latest(kmock, "v1/configmaps", "coredns")["data"]
    assert data["Corefile"] == (GOLDENS / "kubeadm.patched").read_text() and data["x"] == "1"
    template = _latest(kmock, "apps/v1/deployments", "coredns")["spec"]["template"]
    assert template["metadata"]["annotations"] == {cluster_dns.ROLL_ANNOTATION: coredns.block_hash(state["written"])}
    assert template["spec"]["containers"][0]["name"] == "coredns"  # merge patch left the rest alone

    await asyncio.wait_for(asyncio.to_thread(cluster_dns.delete, client, state), 10)
    assert _latest(kmock, "v1/configmaps", "coredns")["data"] == {"Corefile": KUBEADM, "x": "1"}


@pytest.mark.asyncio
async def test_coredns_custom_is_created_and_removed_through_the_kubernetes_api(kmock):
    kmock.objects["apps/v1/deployments", "kube-system", "coredns"] = _deployment("coredns", ["coredns", "coredns-custom"])
    kmock.objects["v1/configmaps", "kube-system", "coredns"] = _configmap("coredns", {"Corefile": KUBEADM})
    client = _client(kmock)

    state = await asyncio.wait_for(
        asyncio.to_thread(cluster_dns.create, client, "kube-system", "auto", DOMAINS, "10.96.0.10"), 10)
    assert state["style"] == "coredns-custom" and state["created_configmap"]
    assert _latest(kmock, "v1/configmaps", "coredns-custom")["data"] == {
        "lightmesh.server": (GOLDENS / "coredns-custom.server").read_text()}

    await asyncio.wait_for(asyncio.to_thread(cluster_dns.delete, client, state), 10)
    assert ("v1/configmaps", "kube-system", "coredns-custom") not in kmock.objects
    assert _latest(kmock, "v1/configmaps", "coredns")["data"] == {"Corefile": KUBEADM}


@pytest.mark.asyncio
async def test_missing_deployment_is_a_clear_error(kmock):
    client = _client(kmock)
    with pytest.raises(Exception, match="no CoreDNS or kube-dns Deployment found"):
        await asyncio.wait_for(
            asyncio.to_thread(cluster_dns.create, client, "kube-system", "auto", DOMAINS, "10.96.0.10"), 10)


@pytest.mark.asyncio
async def test_the_cluster_identity_is_the_kube_system_uid_and_another_cluster_is_refused(kmock):
    kmock.objects["apps/v1/deployments", "kube-system", "coredns"] = _deployment("coredns", ["coredns"])
    kmock.objects["v1/configmaps", "kube-system", "coredns"] = _configmap("coredns", {"Corefile": KUBEADM})
    client = _client(kmock)
    assert await asyncio.wait_for(asyncio.to_thread(client.cluster_id), 10) == KUBE_SYSTEM_UID
    state = await asyncio.wait_for(
        asyncio.to_thread(cluster_dns.create, client, "kube-system", "auto", DOMAINS, "10.96.0.10"), 10)
    patched = _latest(kmock, "v1/configmaps", "coredns")["data"]

    # the state of a stack that patched another cluster: this one is refused, nothing is written
    elsewhere = {**state, "cluster_id": "0d9e8f7a-0000-4000-8000-000000000002"}
    with pytest.raises(cluster_dns.WrongClusterError, match="another cluster than the one this stack patched"):
        await asyncio.wait_for(asyncio.to_thread(cluster_dns.update, client, elsewhere, DOMAINS, "10.96.0.11"), 10)
    with pytest.raises(cluster_dns.WrongClusterError):
        await asyncio.wait_for(asyncio.to_thread(cluster_dns.delete, client, elsewhere), 10)
    assert _latest(kmock, "v1/configmaps", "coredns")["data"] == patched


@pytest.mark.parametrize("kubeconfig, message", [
    # PyYAML's own message quotes the offending line, which may hold a token
    ("apiVersion: v1\nusers:\n- name: u\n  user: {token: s3cr3t-TOKEN: x}\n",
     r"^the kubeconfig is not valid YAML \(line 4, column \d+\)$"),
    ("token: s3cr3t-TOKEN: x\n", r"^the kubeconfig is not valid YAML \(line 1, column 20\)$"),
    # a plain string: "'str' object has no attribute 'get'"
    ("just-a-s3cr3t-TOKEN", r"^the kubeconfig must be a YAML mapping \(a kubeconfig file's contents\), got a YAML "
                            r"value of type str$"),
    ("- s3cr3t-TOKEN\n", r"^the kubeconfig must be a YAML mapping .* got a YAML value of type list$"),
    ("users: [{name: u, user: {token: s3cr3t-TOKEN}}]\ncontexts: []\n", r"^the kubeconfig has no 'clusters' section$"),
    ("clusters: s3cr3t-TOKEN\ncontexts: []\n",
     r"^the kubeconfig is not a valid kubeconfig \(\w+ while reading it; its contents are not shown"),
])
def test_a_malformed_kubeconfig_is_reported_without_its_contents(kubeconfig, message):
    import traceback

    with pytest.raises(ValueError, match=message) as failure:
        cluster_dns.LightkubeDnsClient(kubeconfig)
    # what the dynamic provider sends to the engine: the formatted traceback, causes included
    reported = "".join(traceback.format_exception(failure.value))
    assert "s3cr3t" not in reported, reported
