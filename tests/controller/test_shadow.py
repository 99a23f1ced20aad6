"""Shadow Service names and shape."""

from __future__ import annotations

import re

from hypothesis import given, strategies as st

from lightmesh import wire
from lightmesh.controller.model import ClusterState, Settings
from lightmesh.controller.ports import allocate_ports
from lightmesh.controller.shadow import desired_shadow_services, shadow_index, shadow_name
from lightmesh.controller.topology import build_topology

DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
K8S_NAMES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)


@given(K8S_NAMES, K8S_NAMES)
def test_names_are_short_valid_dns_labels(namespace, name):
    shadow = shadow_name(namespace, name)
    assert len(shadow) <= 63 and DNS_1035.match(shadow), shadow
    assert shadow == shadow_name(namespace, name)


@given(K8S_NAMES, K8S_NAMES, K8S_NAMES, K8S_NAMES)
def test_different_services_get_different_names(ns1, n1, ns2, n2):
    if (ns1, n1) != (ns2, n2):
        assert shadow_name(ns1, n1) != shadow_name(ns2, n2)


def test_longest_names_that_broke_traefik_mesh():
    name = shadow_name("a" * 63, "b" * 63)
    assert len(name) <= 63 and name.startswith("lm-bbb")
    assert shadow_name("ns", "-odd-") != shadow_name("ns", "odd")


def test_desired_shape():
    settings = Settings(mesh_namespace="mesh")
    state = ClusterState(services=[{"metadata": {"name": "web", "namespace": "app"},
                                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080},
                                                       {"name": "admin", "port": 81},
                                                       {"name": "dns", "port": 53, "protocol": "UDP"}]}},
                                   {"metadata": {"name": "udp-only", "namespace": "app"},
                                    "spec": {"ports": [{"port": 53, "protocol": "UDP"}]}}])
    topology = build_topology(state, settings)
    [shadow] = desired_shadow_services(topology, allocate_ports(topology, [], settings), settings)
    assert shadow == {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": shadow_name("app", "web"), "namespace": "mesh",
                     "labels": {wire.LABEL_SHADOW_SERVICE_NAME: "web", wire.LABEL_SHADOW_SERVICE_NAMESPACE: "app",
                                wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER}},
        "spec": {"type": "ClusterIP", "selector": wire.PROXY_POD_LABELS, "internalTrafficPolicy": "Local",
                 "ipFamilyPolicy": "PreferDualStack",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 5000},
                           {"name": "admin", "port": 81, "protocol": "TCP", "targetPort": 5001}]},
    }
    assert shadow_index([shadow]) == {"app/web": shadow}
    # a ClusterState built from them recognises them as shadow Services
    assert ClusterState.from_objects([shadow], "mesh").shadow_services == (shadow,)


def test_a_service_left_out_keeps_its_existing_shadow():
    settings = Settings()
    broken = {"metadata": {"name": "web", "namespace": "app", "annotations": {"lightmesh.io/traffic-type": "bogus"}},
              "spec": {"ports": [{"port": 80}]}}
    existing = {"metadata": {"name": "lm-web-x", "namespace": "lightmesh",
                             "labels": {wire.LABEL_SHADOW_SERVICE_NAME: "web", wire.LABEL_SHADOW_SERVICE_NAMESPACE: "app"}},
                "spec": {"clusterIP": "10.96.0.9", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 5000}]}}
    topology = build_topology(ClusterState(services=[broken]), settings)
    ports = allocate_ports(topology, [existing], settings)
    [kept] = desired_shadow_services(topology, ports, settings, [existing])
    assert kept["metadata"]["name"] == "lm-web-x"
    assert kept["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 5000}]
    assert desired_shadow_services(topology, ports, settings, []) == []
