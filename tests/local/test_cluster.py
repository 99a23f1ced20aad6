"""Manifests → local cluster state: pods, addresses, EndpointSlices, stand-ins."""

import json
import re

import pytest
import yaml

from lightmesh.local import cluster as lc
from lightmesh.local.standins import image_kind


def deployment(name, replicas=2, image="traefik/whoami:v1.6.0", ports=None, sa=None, labels=None, args=None):
    labels = labels or {"app": name}
    container = {"name": name, "image": image, "ports": ports or [{"containerPort": 80, "name": "web"}]}
    if args:
        container["args"] = args
    spec = {"containers": [container]}
    if sa:
        spec["serviceAccountName"] = sa
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": "whoami"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels}, "spec": spec}}}


def service(name, selector, ports):
    spec = {"ports": ports}
    if selector is not None:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "whoami"}, "spec": spec}


def test_deployment_replicas_become_running_pods_with_cluster_style_names():
    state = lc.synthesize([deployment("whoami", sa="whoami-server")])
    assert len(state.pods) == 2
    names = [p["metadata"]["name"] for p in state.pods]
    for name in names:
        assert re.fullmatch(r"whoami-[bcdfghjklmnpqrstvwxz2456789]{10}-[bcdfghjklmnpqrstvwxz2456789]{5}", name)
    assert len(set(names)) == 2
    ips = [p["status"]["podIP"] for p in state.pods]
    assert ips == ["127.2.0.1", "127.2.0.2"]
    assert all(p["spec"]["serviceAccountName"] == "whoami-server" for p in state.pods)
    assert lc.synthesize([deployment("whoami", sa="whoami-server")]).pods == state.pods  # stable


def test_endpoint_slices_resolve_named_target_ports_per_pod():
    v1 = deployment("v1", replicas=1, labels={"app": "web", "v": "1"}, ports=[{"containerPort": 8080, "name": "web"}])
    v2 = deployment("v2", replicas=1, labels={"app": "web", "v": "2"}, ports=[{"containerPort": 9090, "name": "web"}])
    svc = service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "web"}])
    state = lc.synthesize([v1, v2, svc])
    slices = [o for o in state.objects if o["kind"] == "EndpointSlice"]
    assert len(slices) == 2
    by_port = {s["ports"][0]["port"]: s for s in slices}
    assert set(by_port) == {8080, 9090}
    assert by_port[8080]["endpoints"][0]["conditions"]["ready"] is True
    assert by_port[8080]["endpoints"][0]["targetRef"]["name"].startswith("v1-")
    assert by_port[8080]["metadata"]["labels"]["kubernetes.io/service-name"] == "web"


def test_service_without_selector_keeps_given_slices():
    given = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "ext-1", "namespace": "whoami", "labels": {"kubernetes.io/service-name": "ext"}},
             "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.9"]}], "ports": [{"port": 8000}]}
    other = dict(given, metadata={"name": "x", "namespace": "whoami", "labels": {"kubernetes.io/service-name": "y"}})
    state = lc.synthesize([service("ext", None, [{"port": 80, "targetPort": 8000}]), given, other])
    assert [o["metadata"]["name"] for o in state.objects if o["kind"] == "EndpointSlice"] == ["ext-1"]


def test_standins_for_known_images_only():
    state = lc.synthesize([
        deployment("whoami", replicas=1),
        deployment("whoami-tcp", replicas=1, image="traefik/whoamitcp:v0.1.0", ports=[{"containerPort": 8080}]),
        deployment("custom", replicas=1, image="traefik/whoami:v1.6.0", args=["--port", "9000"]),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client", "namespace": "whoami"},
         "spec": {"serviceAccountName": "whoami-client",
                  "containers": [{"name": "c", "image": "giantswarm/tiny-tools:3.9"}]}},
    ])
    kinds = sorted((s.kind, s.port) for s in state.standins)
    assert kinds == [("http", 80), ("http", 9000), ("tcp", 8080)]
    assert any("no stand-in for image 'giantswarm/tiny-tools:3.9'" in w for w in state.warnings)
    assert state.pods_of("whoami", "whoami-client")[0]["metadata"]["name"] == "client"


def test_a_whoami_stand_in_takes_its_name_from_the_containers_whoami_name():
    # the canary example tells v1 from v2 by traefik/whoami's "Name:" line (WHOAMI_NAME)
    named = deployment("web-v2", replicas=1)
    named["spec"]["template"]["spec"]["containers"][0]["env"] = [{"name": "WHOAMI_NAME", "value": "web-v2"}]
    state = lc.synthesize([named, deployment("plain", replicas=1)])
    assert sorted(s.name for s in state.standins) == ["", "web-v2"]


@pytest.mark.parametrize("image, kind", [("traefik/whoami:v1.6.0", "http"), ("docker.io/traefik/whoamitcp:v0.1.0", "tcp"),
                                         ("traefik/whoamiudp@sha256:abc", "udp"), ("nginx:1.25", None),
                                         ("registry:5000/traefik/whoami", None)])
def test_image_kind(image, kind):
    assert image_kind(image) == kind


def test_bad_manifests_name_the_object_and_field(tmp_path):
    bad = deployment("whoami")
    bad["spec"]["replicas"] = "two"
    with pytest.raises(lc.ManifestError, match=r"Deployment whoami/whoami: spec.replicas must be a whole number"):
        lc.synthesize([bad])
    (tmp_path / "a.yaml").write_text("kind: Service\n")
    with pytest.raises(lc.ManifestError, match="a.yaml document 1: a Kubernetes object needs apiVersion and kind"):
        lc.load_manifests(tmp_path)
    (tmp_path / "a.yaml").write_text("a: [\n")
    with pytest.raises(lc.ManifestError, match="not valid YAML"):
        lc.load_manifests(tmp_path)


def test_an_object_error_names_the_file_and_document_it_came_from(tmp_path):
    good, bad = deployment("good"), deployment("bad")
    bad["spec"]["replicas"] = -1
    (tmp_path / "apps.yaml").write_text(yaml.safe_dump_all([good, bad]))
    origins: list[str] = []
    objects = lc.load_manifests(tmp_path, origins=origins)
    assert origins == [f"{tmp_path}/apps.yaml document 1", f"{tmp_path}/apps.yaml document 2"]
    with pytest.raises(lc.ManifestError) as failure:
        lc.synthesize(objects, origins=origins)
    assert str(failure.value) == (f"{tmp_path}/apps.yaml document 2: Deployment whoami/bad: spec.replicas must "
                                  "be a whole number >= 0, got -1")


def test_more_replicas_than_pod_addresses_is_an_error_naming_the_deployment():
    huge = deployment("huge", replicas=10 ** 9)  # refused before any pod is made: no minutes of work
    with pytest.raises(lc.ManifestError, match=r"^Deployment whoami/huge: spec.replicas 1000000000 is more pods "
                                               r"than local mode's pod network 127.2.0.0/16 has addresses left"):
        lc.synthesize([huge])
    pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}", "namespace": "x"},
             "spec": {"containers": []}} for i in range(3)]
    with pytest.raises(lc.ManifestError, match=r"^Pod x/p2: no address left in local mode's pod network "
                                               r"127.2.0.0/30"):
        lc.synthesize(pods, pod_network="127.2.0.0/30")  # two usable addresses
    with pytest.raises(lc.ManifestError, match=r"spec.replicas must be a whole number >= 0, got True"):
        lc.synthesize([deployment("flag", replicas=True)])


def test_syntax_errors_are_one_line_with_the_file_and_line(tmp_path):
    (tmp_path / "x.yaml").write_text("kind: Service\nkey: [unclosed\n")
    with pytest.raises(lc.ManifestError) as failure:
        lc.load_manifests(tmp_path)
    assert str(failure.value) == (f"{tmp_path}/x.yaml:3: not valid YAML: expected ',' or ']', but got "
                                  "'<stream end>' (column 1)")
    (tmp_path / "x.yaml").unlink()
    (tmp_path / "y.json").write_text('{"kind": "Service",\n "apiVersion": }')
    with pytest.raises(lc.ManifestError) as failure:
        lc.load_manifests(tmp_path)
    assert str(failure.value) == f"{tmp_path}/y.json:2: not valid JSON: Expecting value (column 16)"


def test_json_manifests_are_read_like_yaml_ones(tmp_path):
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(service("web", {"app": "web"}, [{"port": 80}])))
    (tmp_path / "b.json").write_text(json.dumps(deployment("web")))
    (tmp_path / "c.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "web", "namespace": "whoami"}}]}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    assert [(o["kind"], o["metadata"]["name"]) for o in lc.load_manifests(tmp_path)] == [
        ("Service", "web"), ("Deployment", "web"), ("ServiceAccount", "web")]


def test_an_object_declared_twice_is_kept_once_the_later_one_with_a_note(tmp_path):
    """As ``kubectl apply -f DIR`` leaves it: the later declaration; before, the controller used the
    first and the printout listed both."""
    first, later = service("web", {"app": "web"}, [{"port": 80}]), service("web", {"app": "web"}, [{"port": 81}])
    other_namespace = {**service("web", {"app": "web"}, [{"port": 82}]), "metadata": {"name": "web", "namespace": "b"}}
    (tmp_path / "a.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        deployment("web", replicas=0), first]}) + "---\n" + yaml.safe_dump(later))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(other_namespace))
    notes: list[str] = []
    objects = lc.load_manifests(tmp_path, notes)
    assert [(o["kind"], o["metadata"]["namespace"], o["spec"].get("ports")) for o in objects] == [
        ("Deployment", "whoami", None), ("Service", "whoami", [{"port": 81}]), ("Service", "b", [{"port": 82}])]
    assert notes == [f"Service whoami/web is declared twice ({tmp_path}/a.yaml document 1 item 2; {tmp_path}/a.yaml "
                     "document 2): the later one is used, as kubectl apply would leave it"]
    state = lc.synthesize(objects)
    assert [o["spec"]["ports"] for o in state.objects if o["kind"] == "Service" and o["metadata"]["namespace"] ==
            "whoami"] == [[{"port": 81}]]


# ---------------------------------------------------------------------------- high ports


def test_high_ports_move_every_port_below_the_limit_and_every_reference_with_it():
    """What a user who may not bind port 80 runs: Service, pod and reference ports move together."""
    web = deployment("web", replicas=1, ports=[{"containerPort": 80, "name": "web"}])
    bare = deployment("bare", replicas=1, labels={"app": "bare"}, ports=[])  # stand-in on its default port 80
    bare["spec"]["template"]["spec"]["containers"][0].pop("ports")
    svc = service("web", {"app": "web"}, [{"name": "http", "port": 80, "targetPort": "web"},
                                          {"name": "alt", "port": 8080, "targetPort": 8080}])
    plain = service("bare", {"app": "bare"}, [{"port": 80}])  # targetPort defaults to the port
    ext = service("ext", None, [{"port": 443, "targetPort": 443}])
    given = {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "ext-1", "namespace": "whoami", "labels": {"kubernetes.io/service-name": "ext"}},
             "addressType": "IPv4", "endpoints": [{"addresses": ["127.0.0.9"]}], "ports": [{"port": 443}]}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": "r", "namespace": "whoami"},
             "spec": {"parentRefs": [{"kind": "Service", "name": "web", "port": 80}],
                      "rules": [{"backendRefs": [{"name": "bare", "port": 80}]}]}}
    tcp_route = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
                 "metadata": {"name": "t", "namespace": "whoami"}, "spec": {"matches": {"ports": [80, 8080]}}}
    old_target = {"apiVersion": "access.smi-spec.io/v1alpha1", "kind": "TrafficTarget",  # fields at the top
                  "metadata": {"name": "old", "namespace": "whoami"},
                  "destination": {"kind": "ServiceAccount", "name": "web", "port": 80}}
    manifests = [web, bare, svc, plain, ext, given, route, tcp_route, old_target]

    high = lc.high_ports_for(manifests)
    # 80 → 8080 would land on web's own 8080: the next offset that collides with nothing is taken
    assert high == lc.HighPorts(9000, 1024)
    state = lc.synthesize(manifests, high_ports=high)
    objects = {(o["kind"], o["metadata"]["name"]): o for o in state.objects}
    assert [p["port"] for p in objects["Service", "web"]["spec"]["ports"]] == [9080, 8080]
    assert objects["Service", "bare"]["spec"]["ports"] == [{"port": 9080, "targetPort": 9080}]
    assert objects["Service", "ext"]["spec"]["ports"] == [{"port": 9443, "targetPort": 443}]  # outside backend
    assert objects["EndpointSlice", "ext-1"]["ports"] == [{"port": 443}]
    web_slices = [o for o in state.objects if o["kind"] == "EndpointSlice"
                  and o["metadata"]["labels"]["kubernetes.io/service-name"] == "web"]
    assert [p["port"] for p in web_slices[0]["ports"]] == [9080, 8080]  # the named targetPort moved with the pod
    assert sorted((s.pod.split("/")[1].split("-")[0], s.port) for s in state.standins) == [("bare", 9080),
                                                                                            ("web", 9080)]
    assert objects["HTTPRoute", "r"]["spec"]["parentRefs"][0]["port"] == 9080
    assert objects["HTTPRoute", "r"]["spec"]["rules"][0]["backendRefs"][0]["port"] == 9080
    assert objects["TCPRoute", "t"]["spec"]["matches"]["ports"] == [9080, 8080]
    assert objects["TrafficTarget", "old"]["destination"]["port"] == 9080
    assert state.remapped == {80: 9080, 443: 9443}
    # pod names do not depend on the port layout
    assert [p["metadata"]["name"] for p in state.pods] == [p["metadata"]["name"] for p in lc.synthesize(manifests).pods]
    # and the manifests themselves are left alone
    assert svc["spec"]["ports"][0]["port"] == 80 and "targetPort" not in plain["spec"]["ports"][0]


def test_without_high_ports_nothing_moves():
    svc = service("bare", {"app": "bare"}, [{"port": 80}])
    state = lc.synthesize([svc])
    assert state.objects[0]["spec"]["ports"] == [{"port": 80}] and state.remapped == {}
    assert lc.high_ports_for([svc]) == lc.HighPorts(8000, 1024)


def test_a_bad_stand_in_port_argument_names_the_pod():
    with pytest.raises(lc.ManifestError, match=r"Pod whoami/custom-\S+ container 'custom': args --port 'http' is not "
                                               r"a port number"):
        lc.synthesize([deployment("custom", replicas=1, args=["--port", "http"])])


def test_an_offset_fits_or_not_for_objects_added_later():
    high = lc.HighPorts(8000, 1024)
    fine = service("a", {"app": "a"}, [{"name": "http", "port": 80}, {"name": "other", "port": 9090}])
    clash = service("b", {"app": "b"}, [{"name": "http", "port": 80}, {"name": "alt", "port": 8080}])
    assert lc.high_ports_fit(high, [fine]) and not lc.high_ports_fit(high, [fine, clash])
