"""MeshInstall: every child, its wiring, the command lines, RBAC, and strict validation of all manifests."""

import copy

import kubernetes_validate
import pulumi
import pulumi_kubernetes as k8s
import pytest

from components.conftest import MOCKS, MONITOR, fails_when_resolved, settled
from components.manifests import KUBERNETES_VERSION, validate_all, validate_manifest
from lightmesh import wire
from mesh_components import ComponentArgsError, MeshInstall, MeshInstallArgs, smi
from mesh_components.install import controller_command, proxy_command, resolve_settings


def _records(prefix):
    return {r.name: r for r in MOCKS.by_prefix(prefix)}


def _install(name, args=None):
    """The component and an Output that resolves only after every child was registered (waiting on
    the component's own outputs alone races the children's registrations)."""
    mesh = MeshInstall(name, args or {})
    settled = pulumi.Output.all(*[c.urn for c in mesh.children.values()])
    return mesh, pulumi.Output.all(mesh.namespace, mesh.domains, mesh.dns_service_ip, mesh.controller_api_url,
                                   settled).apply(lambda v: v[:4])


@pulumi.runtime.test
def test_defaults_install_everything_and_every_manifest_is_valid():
    mesh, outputs = _install("mi-default")

    def check(values):
        namespace, domains, dns_ip, api_url = values
        assert namespace == wire.DEFAULT_MESH_NAMESPACE
        assert domains == list(wire.DEFAULT_DOMAINS)
        assert dns_ip.startswith("10.96.")  # the controller Service's ClusterIP (from the mock)
        assert api_url == "http://lightmesh-controller.lightmesh.svc.cluster.local:9000"
        records = _records("mi-default")
        kinds = sorted(r.typ.rsplit(":", 1)[1] for r in records.values() if r.custom)
        assert kinds == sorted(["Namespace", *["CustomResourceDefinition"] * 5, "ServiceAccount", "ServiceAccount",
                                "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding", "Deployment",
                                "PodDisruptionBudget", "Service", "DaemonSet", "ClusterDnsPatch",
                                "ConfigMap"])  # the Grafana dashboard (metrics.dashboard, on by default)
        for name in records:
            if name != "mi-default":
                assert MONITOR.parent_of(name).endswith("lightmesh:index:MeshInstall::mi-default"), name
        # 17 manifests: everything but the component and the DNS patcher
        assert validate_all(list(records.values())) == 17
        crds = [r.inputs for r in records.values() if r.typ.endswith("CustomResourceDefinition")]
        assert sorted(c["metadata"]["name"] for c in crds) == sorted(c["metadata"]["name"] for c in smi.CRDS)
        dns = records["mi-default-cluster-dns"]
        assert dns.typ == "pulumi-python:dynamic/lightmesh:ClusterDnsPatch"
        assert (dns.inputs["dns_ip"], dns.inputs["style"], dns.inputs["dns_namespace"]) == (dns_ip, "auto", "kube-system")
        assert dns.inputs["domains"] == list(wire.DEFAULT_DOMAINS)
        assert any(d.endswith("::mi-default-controller") for d in MONITOR.dependencies_of("mi-default-cluster-dns"))

    return outputs.apply(check)


@pulumi.runtime.test
def test_crds_are_retained_on_delete():
    mesh, outputs = _install("mi-crd")

    def check(_):
        for name, request in MONITOR.requests.items():
            if name.startswith("mi-crd-crd-"):
                assert request.retainOnDelete, name
        assert not MONITOR.requests["mi-crd-controller"].retainOnDelete
        # the namespace too: turning create_namespace off must not delete the mesh with it
        assert MONITOR.requests["mi-crd-namespace"].retainOnDelete
        assert not MONITOR.requests["mi-crd-controller"].deletedWith

    return outputs.apply(check)


@pulumi.runtime.test
def test_controller_deployment_and_service():
    mesh, outputs = _install("mi-ctl", {"acl": True, "otlp_endpoint": "http://otel:4318",
                                        "watch_namespaces": ["shop", "whoami"], "log_format": "json"})

    def check(_):
        records = _records("mi-ctl")
        dep = records["mi-ctl-controller"].inputs
        assert dep["metadata"]["name"] == wire.CONTROLLER_NAME and dep["metadata"]["namespace"] == "lightmesh"
        spec = dep["spec"]
        assert spec["replicas"] == 2
        assert spec["selector"]["matchLabels"] == wire.CONTROLLER_POD_LABELS
        assert spec["template"]["metadata"]["labels"] == wire.CONTROLLER_POD_LABELS
        pod = spec["template"]["spec"]
        assert pod["serviceAccountName"] == wire.CONTROLLER_NAME
        (container,) = pod["containers"]
        assert container["image"] == "ghcr.io/lightmesh/lightmesh:0.1.0"
        assert container["command"] == [
            "lightmesh", "controller", "--namespace", "lightmesh", "--acl", "--default-mode", "http",
            "--domains", "lightmesh,traefik.mesh,maesh", "--http-port-base", "5000", "--http-port-limit", "10",
            "--tcp-port-base", "10000", "--tcp-port-limit", "25", "--udp-port-base", "15000", "--udp-port-limit", "25",
            "--api-port", "9000", "--dns-port", "5353", "--log-level", "info", "--log-format", "json",
            "--shutdown-delay", "5",
            "--otlp-endpoint", "http://otel:4318", "--watch-namespaces", "shop,whoami", "--leader-election"]
        assert container["env"] == [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
        assert container["readinessProbe"]["httpGet"] == {"path": "/api/status/readiness", "port": "api"}
        # HTTP: a TCP probe passes a hung controller (the kernel completes the handshake)
        assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "api"}
        sc = container["securityContext"]
        assert sc["runAsNonRoot"] and sc["capabilities"] == {"drop": ["ALL"]} and not sc["allowPrivilegeEscalation"]
        assert container["resources"]["requests"] == {"cpu": "100m", "memory": "128Mi"}
        service = records["mi-ctl-controller-service"].inputs
        assert service["metadata"]["name"] == wire.CONTROLLER_NAME
        assert [(p["name"], p["port"], p["protocol"], p["targetPort"]) for p in service["spec"]["ports"]] == [
            ("api", 9000, "TCP", "api"), ("dns", 53, "UDP", "dns"), ("dns-tcp", 53, "TCP", "dns-tcp")]
        named = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
        assert named == {"api": (9000, "TCP"), "dns": (5353, "UDP"), "dns-tcp": (5353, "TCP")}
        assert service["spec"]["selector"] == wire.CONTROLLER_POD_LABELS
        pdb = records["mi-ctl-controller-pdb"].inputs["spec"]
        # one eviction at a time; minAvailable 1 would block every drain of a 1-replica controller
        assert pdb == {"maxUnavailable": 1, "selector": {"matchLabels": wire.CONTROLLER_POD_LABELS}}
        # the controller starts once its CRDs and RBAC exist
        deps = {d.rsplit("::", 1)[1] for d in MONITOR.dependencies_of("mi-ctl-controller")}
        assert {"mi-ctl-crd-trafficsplits", "mi-ctl-controller-rolebinding"} <= deps
        # including the cluster-wide RBAC: without it in effect the cluster-wide lists and watches get 403s
        assert {"mi-ctl-controller-clusterrole", "mi-ctl-controller-clusterrolebinding",
                "mi-ctl-controller-role"} <= deps

    return outputs.apply(check)


@pulumi.runtime.test
def test_proxy_daemonset():
    mesh, outputs = _install("mi-proxy", {
        "namespace": "mesh", "proxy_workers": 4, "proxy_max_surge": 2, "proxy_priority_class_name": "system-node-critical",
        "proxy_tolerations": [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}],
        "proxy_node_selector": {"pool": "apps"}, "http_port_limit": 2, "tcp_port_limit": 1, "udp_port_limit": 1,
        "proxy_resources": {"cpu_limit": "1", "memory_limit": "1Gi"}})

    def check(_):
        ds = _records("mi-proxy")["mi-proxy-proxy"].inputs
        assert ds["metadata"]["name"] == wire.PROXY_NAME and ds["metadata"]["namespace"] == "mesh"
        spec = ds["spec"]
        assert spec["updateStrategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 2, "maxUnavailable": 0}}
        assert spec["selector"]["matchLabels"] == wire.PROXY_POD_LABELS
        pod = spec["template"]["spec"]
        assert spec["template"]["metadata"]["labels"] == wire.PROXY_POD_LABELS
        assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == wire.PROXY_NAME
        assert pod["priorityClassName"] == "system-node-critical"
        assert pod["nodeSelector"] == {"pool": "apps"}
        assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "edge", "effect": "NoSchedule"}]
        (container,) = pod["containers"]
        assert container["command"] == [
            "lightmesh", "proxy", "--controller", "http://lightmesh-controller.mesh.svc.cluster.local:9000",
            "--admin-port", "8080", "--workers", "4", "--log-level", "info", "--log-format", "text",
            "--shutdown-delay", "5"]
        env = {e["name"]: e.get("value") or e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
        assert env == {"POD_NAME": "metadata.name", "NODE_NAME": "spec.nodeName",
                       "MALLOC_TRIM_THRESHOLD_": "268435456", "MALLOC_TOP_PAD_": "67108864"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/ping", "port": "admin"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "admin"}
        ports = [(p["name"], p["containerPort"], p["protocol"]) for p in container["ports"]]
        assert ports == [("admin", 8080, "TCP"), ("http-0", 5000, "TCP"), ("http-1", 5001, "TCP"),
                         ("tcp-0", 10000, "TCP"), ("udp-0", 15000, "UDP")]
        assert container["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                                          "limits": {"cpu": "1", "memory": "1Gi"}}

    return outputs.apply(check)


@pulumi.runtime.test
def test_default_proxy_ports_cover_the_mesh_ranges_and_pass_strict_validation():
    mesh, outputs = _install("mi-ports")

    def check(_):
        ds = _records("mi-ports")["mi-ports-proxy"].inputs
        ports = ds["spec"]["template"]["spec"]["containers"][0]["ports"]
        assert len(ports) == 1 + 10 + 25 + 25
        assert all(len(p["name"]) <= 15 for p in ports)  # IANA_SVC_NAME limit
        validate_manifest(ds)

    return outputs.apply(check)


@pulumi.runtime.test
def test_rbac_is_least_privilege():
    mesh, outputs = _install("mi-rbac", {"namespace": "mesh-a"})

    def check(_):
        records = _records("mi-rbac")
        cluster_rules = records["mi-rbac-controller-clusterrole"].inputs["rules"]
        for rule in cluster_rules:  # cluster-wide: read-only, except creating Events
            if rule["resources"] == ["events"]:
                assert set(rule["verbs"]) == {"create", "get", "patch"}
            else:
                assert set(rule["verbs"]) == {"get", "list", "watch"}, rule
        granted = {(g, r) for rule in cluster_rules for g in rule["apiGroups"] for r in rule["resources"]}
        assert {("", "services"), ("", "pods"), ("discovery.k8s.io", "endpointslices"),
                ("access.smi-spec.io", "traffictargets"), ("specs.smi-spec.io", "httproutegroups"),
                ("specs.smi-spec.io", "tcproutes"), ("specs.smi-spec.io", "udproutes"),
                ("split.smi-spec.io", "trafficsplits"), ("gateway.networking.k8s.io", "httproutes"),
                ("gateway.networking.k8s.io", "grpcroutes"), ("gateway.networking.k8s.io", "tcproutes"),
                ("gateway.networking.k8s.io", "udproutes")} <= granted
        assert not any("*" in rule["verbs"] or "*" in rule["resources"] for rule in cluster_rules)
        assert ("", "secrets") not in granted
        role = records["mi-rbac-controller-role"].inputs
        assert role["metadata"]["namespace"] == "mesh-a"
        lease_rules = [r for r in role["rules"] if r["resources"] == ["leases"]]
        # exactly what the controller calls (POST, GET, PATCH, DELETE; never PUT, and no watch on its Lease)
        assert [(r.get("resourceNames"), set(r["verbs"])) for r in lease_rules] == [
            (None, {"create"}), ([wire.LEASE_NAME], {"get", "patch"})]
        services = [r for r in role["rules"] if r["resources"] == ["services"]]
        assert [set(r["verbs"]) for r in services] == [{"get", "list", "watch", "create", "patch", "delete"}]
        assert [r["apiGroups"] for r in cluster_rules if r["resources"] == ["events"]] == [[""]]
        binding = records["mi-rbac-controller-clusterrolebinding"].inputs
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": wire.CONTROLLER_NAME, "namespace": "mesh-a"}]
        assert binding["metadata"]["name"] == "lightmesh-controller-mesh-a"  # unique per mesh namespace
        assert records["mi-rbac-proxy-sa"].inputs["automountServiceAccountToken"] is False

    return outputs.apply(check)


@pulumi.runtime.test
def test_options_turn_off_namespace_and_dns_patch():
    mesh, outputs = _install("mi-min", {"create_namespace": False, "namespace": "existing", "patch_coredns": False})

    def check(values):
        assert values[0] == "existing"
        names = set(_records("mi-min"))
        assert "mi-min-namespace" not in names and "mi-min-cluster-dns" not in names
        assert "mi-min-controller" in names

    return outputs.apply(check)


def test_validator_is_live():
    # The gate above must be able to fail: a typo'd field and a wrong type are both caught.
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                  "spec": {"selector": {"matchLabels": {"a": "b"}},
                           "template": {"metadata": {"labels": {"a": "b"}},
                                        "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    validate_manifest(deployment)
    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["imagee"] = "i"
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_manifest(typo)
    with pytest.raises(AssertionError, match="no schema"):
        validate_manifest({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}})
    assert KUBERNETES_VERSION == "1.31"


def test_command_lines_from_settings():
    s = resolve_settings("t", {"default_traffic_type": "tcp", "ignore_namespaces": ["kube-system"],
                               "domains": ["mesh.internal"], "log_level": "debug"})
    cmd = controller_command(s)
    assert "--acl" not in cmd and cmd[cmd.index("--default-mode") + 1] == "tcp"
    assert cmd[cmd.index("--ignore-namespaces") + 1] == "kube-system" and "--watch-namespaces" not in cmd
    assert cmd[cmd.index("--domains") + 1] == "mesh.internal" and "--otlp-endpoint" not in cmd
    assert proxy_command(s, "ns")[3] == "http://lightmesh-controller.ns.svc.cluster.local:9000"
    assert "--response-timeout" not in proxy_command(s, "ns") and "--body-timeout" not in proxy_command(s, "ns")
    tuned = proxy_command(resolve_settings("t", {"proxy_response_timeout": 30, "proxy_body_timeout": 2.5}), "ns")
    assert tuned[tuned.index("--response-timeout") + 1] == "30.0"
    assert tuned[tuned.index("--body-timeout") + 1] == "2.5"


def test_proxy_timeouts_reach_a_proxy_that_accepts_them():
    import argparse

    from lightmesh.proxy import main as proxy_main

    parser = argparse.ArgumentParser()
    proxy_main.configure(parser)
    cmd = proxy_command(resolve_settings("t", {"proxy_response_timeout": 0.5, "proxy_body_timeout": 120}), "ns")
    options = proxy_main.worker_options(parser.parse_args(cmd[2:]))  # after "lightmesh proxy"
    assert (options["http"]["response_timeout"], options["http"]["body_timeout"]) == (0.5, 120.0)


@pytest.mark.parametrize("args, message", [
    ({"namespace": "Mesh"}, "namespace must be a DNS label"),
    ({"acl": "yes"}, "acl must be true or false, got 'yes'"),
    ({"default_traffic_type": "grpc"}, "default_traffic_type must be one of http, tcp, udp"),
    ({"log_level": "loud"}, "log_level must be one of debug, info, warning, error"),
    ({"log_format": "xml"}, "log_format must be one of text, json"),
    ({"dns_style": "bind"}, "dns_style must be one of auto, corefile, coredns-custom, kube-dns"),
    ({"domains": []}, "domains must list at least one domain"),
    ({"domains": ["ok", "ok"]}, "domains has a duplicate entry 'ok'"),
    ({"domains": ["cluster.local"]}, r"domains\[0\] 'cluster.local' would take the cluster domain 'cluster.local'"),
    ({"domains": ["lightmesh", "svc.cluster.local"]}, r"domains\[1\] 'svc.cluster.local' would take the cluster domain"),
    ({"domains": ["local"]}, r"domains\[0\] 'local' would take the cluster domain 'cluster.local' \(or part of it\)"),
    ({"domains": ["in-addr.arpa"]}, r"domains\[0\] 'in-addr.arpa' would take reverse lookups"),
    ({"domains": ["mesh"], "cluster_domain": "corp.mesh"}, r"domains\[0\] 'mesh' would take the cluster domain"),
    ({"domains": ["bad_domain"]}, r"domains\[0\] must be a DNS name"),
    # a DNS label has at most 63 characters: the controller refused such a domain at start
    ({"domains": ["b" * 64]}, r"domains\[0\] must be a DNS name .*labels of at most 63 characters"),
    ({"cluster_domain": "c" * 64 + ".local"}, r"cluster_domain must be a DNS name"),
    ({"http_port_base": 80}, "http_port_base must be between 1024 and 65535, got 80"),
    ({"tcp_port_limit": 0}, "tcp_port_limit must be between 1 and 1000, got 0"),
    ({"udp_port_base": 65530, "udp_port_limit": 10}, "udp_port_base \\+ udp_port_limit goes past port 65535"),
    ({"tcp_port_base": 5005}, "http port range 5000-5009 overlaps the tcp port range 5005-5029"),
    ({"http_port_base": 8075}, "http port range 8075-8084 includes the proxy admin port 8080"),
    ({"tcp_port_base": 8990, "tcp_port_limit": 20}, "tcp port range 8990-9009 includes the controller API port 9000"),
    ({"controller_replicas": 0}, "controller_replicas must be between 1 and 64, got 0"),
    ({"proxy_workers": 2.5}, "proxy_workers must be a whole number, got 2.5"),
    ({"proxy_response_timeout": -1}, "proxy_response_timeout must be between 0 and 86400 seconds, got -1"),
    ({"proxy_body_timeout": 0}, "proxy_body_timeout must be more than 0 and at most 86400 seconds, got 0"),
    ({"proxy_body_timeout": "60s"}, "proxy_body_timeout must be a number of seconds, got '60s'"),
    ({"controller_resources": {"memory_limit": "lots"}}, "controller_resources.memory_limit must be a Kubernetes quantity"),
    ({"proxy_resources": {"gpu": "1"}}, "proxy_resources.gpu is not a known field"),
    ({"proxy_tolerations": [{"operator": "Maybe"}]}, r"proxy_tolerations\[0\].operator must be Equal or Exists"),
    ({"proxy_tolerations": [{"effect": "NoRun"}]}, r"proxy_tolerations\[0\].effect must be"),
    ({"otlp_endpoint": "otel:4318"}, "otlp_endpoint must be an http:// or https:// URL"),
    ({"watch_namespaces": ["a"], "ignore_namespaces": ["a"]}, "namespaces both watched and ignored: a"),
    ({"image_pull_policy": "Sometimes"}, "image_pull_policy must be one of IfNotPresent, Always, Never"),
    ({"namespace": pulumi.Output.from_input("x")}, "namespace must be a plain value, not an Output"),
    ({"domains": pulumi.Output.from_input(["a"])}, "domains must be a plain value, not an Output"),
    # an Output inside a list or an object is refused too, naming its path (it crashed with a TypeError, or was
    # quoted by its repr, "<pulumi.output.Output object at 0x…>")
    ({"domains": ["mesh", pulumi.Output.from_input("mesh.example")]},
     r"domains\[1\] must be a plain value, not an Output \(it is validated at preview\)$"),
    ({"watch_namespaces": [pulumi.Output.from_input("shop")]}, r"watch_namespaces\[0\] must be a plain value"),
    ({"ignore_namespaces": [pulumi.Output.from_input("shop")]}, r"ignore_namespaces\[0\] must be a plain value"),
    ({"controller_resources": {"cpu_limit": pulumi.Output.from_input("2")}},
     r"controller_resources.cpu_limit must be a plain value"),
    ({"proxy_resources": {"memory_request": pulumi.Output.from_input("64Mi")}},
     r"proxy_resources.memory_request must be a plain value"),
    ({"proxy_tolerations": [{"key": pulumi.Output.from_input("dedicated"), "operator": "Exists"}]},
     r"proxy_tolerations\[0\].key must be a plain value"),
    ({"proxy_tolerations": [pulumi.Output.from_input({"operator": "Exists"})]},
     r"proxy_tolerations\[0\] must be a plain value"),
    ({"tracing": {"mode": "otlp", "endpoint": "http://o:4318", "sample_ratio": pulumi.Output.from_input(0.5)}},
     r"tracing.sample_ratio must be a plain value"),
    ({"tracing": {"mode": pulumi.Output.from_input("jaeger")}}, r"tracing.mode must be a plain value"),
    ({"metrics": {"dashboard": pulumi.Output.from_input(True)}}, r"metrics.dashboard must be a plain value"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": pulumi.Output.from_input({"a": "b"})}},
     r"metrics.service_monitor_labels must be a plain value"),
    ({"proxy_node_selector": pulumi.Output.from_input({"a": "b"})}, r"proxy_node_selector must be a plain value"),
    ({"proxy_tolerations": [{"key": "a", "tolerationSeconds": 5}]}, r"proxy_tolerations\[0\] must only have"),
    ({"replicas": 3}, "args has unknown field\\(s\\) replicas; known: namespace, create_namespace, image, image_tag"),
    # the controller never meshes its own namespace: "default" would leave every application there out
    ({"namespace": "default"}, "namespace must not be 'default': the controller never meshes the Services of its own "
                               "namespace"),
    ({"watch_namespaces": ["shop", "lightmesh"]}, r"watch_namespaces\[1\] is the mesh namespace 'lightmesh', whose "
                                                  "Services the controller never meshes"),
    ({"namespace": "mesh", "watch_namespaces": ["mesh"]}, r"watch_namespaces\[0\] is the mesh namespace 'mesh'"),
    ({"watch_namespaces": ["shop", "kube-system"]}, r"watch_namespaces\[1\] is kube-system, whose Services the "
                                                    "controller never meshes; remove it$"),
    # image references a node could not pull
    ({"image": "ghcr.io/x y:1"}, r"image is not an image reference \(\[registry\[:port\]/\]repository\[:tag\]"
                                 r"\[@digest\]; .*\), got 'ghcr.io/x y:1'"),
    ({"image": "ghcr.io/x/y@sha256:zz"}, r"image has a malformed digest \(expected @sha256:, @sha384: or @sha512: and 64, 96 or 128 lowercase hex "
                                         r"digits\), got 'ghcr.io/x/y@sha256:zz'"),
    ({"image": "GHCR.io/Lightmesh/Lightmesh:1"}, "image is not an image reference"),
    # a request above its limit: Kubernetes refuses the pod
    ({"controller_resources": {"cpu_request": "2", "cpu_limit": "1"}},
     "controller_resources.cpu_request '2' is more than controller_resources.cpu_limit '1': Kubernetes refuses a "
     "request above its limit; lower the request or raise cpu_limit"),
    ({"controller_resources": {"cpu_request": "1500m"}},
     r"controller_resources.cpu_request '1500m' is more than controller_resources.cpu_limit '1' \(the default\)"),
    ({"proxy_resources": {"memory_request": "1Gi", "memory_limit": "512Mi"}},
     "proxy_resources.memory_request '1Gi' is more than proxy_resources.memory_limit '512Mi'"),
    ({"proxy_workers": 1, "proxy_resources": {"cpu_request": "2"}},
     r"proxy_resources.cpu_request '2' is more than proxy_resources.cpu_limit '1' \(the default: one CPU per proxy "
     r"worker\)"),
    # a bare string where a list belongs would otherwise become one entry per character
    ({"domains": "mesh"}, "domains must be a list, got 'mesh'"),
    ({"watch_namespaces": "default"}, "watch_namespaces must be a list, got 'default'"),
    ({"ignore_namespaces": "kube-public"}, "ignore_namespaces must be a list"),
    ({"proxy_tolerations": {"operator": "Exists"}}, "proxy_tolerations must be a list"),
    ({"proxy_resources": "2"}, "proxy_resources must be an object"),
    ({"proxy_node_selector": ["a"]}, "proxy_node_selector must be an object"),
    ({"proxy_node_selector": {"zone": 1}}, "proxy_node_selector must map label names to string values"),
    ({"metrics": "yes"}, "metrics must be an object"),
    ({"tracing": ["jaeger"]}, "tracing must be an object"),
    ({"image_tag": "bad tag"}, "image_tag must be an image tag"),
    # label maps and toleration keys are checked at preview, not refused by the API server at `pulumi up`
    ({"proxy_node_selector": {"zone!": "a"}}, "proxy_node_selector key 'zone!' is not a label name"),
    ({"proxy_node_selector": {"Example.com/zone": "a"}},
     r"proxy_node_selector key 'Example.com/zone' has a prefix \(before '/'\) that is not a DNS subdomain"),
    ({"proxy_node_selector": {"zone": "eu west"}}, r"proxy_node_selector\['zone'\] value 'eu west' is not a label value"),
    ({"proxy_node_selector": {"zone": "a" * 64}}, r"proxy_node_selector\['zone'\] value 'a{59}\.\.\. \(64 characters\) "
                                                  "is not a label value"),
    ({"proxy_tolerations": [{"key": "bad key", "operator": "Exists"}]},
     r"proxy_tolerations\[0\].key 'bad key' is not a label name"),
    ({"proxy_tolerations": [{"key": "dedicated", "value": "mesh proxies"}]},
     r"proxy_tolerations\[0\].value 'mesh proxies' is not a label value"),
    ({"image": "ghcr.io/x/lm@sha256:" + "a" * 64, "image_tag": "1.2"}, "image_tag cannot be combined with a digest"),
])
def test_bad_args_name_the_field(args, message):
    with pytest.raises(ComponentArgsError, match=r"^MeshInstall 'mesh': .*" + message):
        MeshInstall("mesh", args)


@pytest.mark.parametrize("args, message", [
    ({"controller_replicas": 10 ** 5000}, "controller_replicas must be between 1 and 64, got a whole number of "
                                          "about 5001 digits"),
    ({"http_port_base": -10 ** 5000}, "http_port_base must be between 1024 and 65535, got a negative whole number of "
                                      "about 5001 digits"),
    ({"proxy_workers": 1e308}, "proxy_workers must be between 1 and 64, got 1e+308"),
    ({"proxy_workers": "9" * 5000}, "proxy_workers must be a whole number, got '9999"),
    ({"proxy_body_timeout": 10 ** 5000}, "proxy_body_timeout must be more than 0 and at most 86400 seconds, got a "
                                         "whole number of about 5001 digits"),
    ({"proxy_response_timeout": -10 ** 5000}, "proxy_response_timeout must be between 0 and 86400 seconds"),
    ({"controller_resources": {"cpu_request": "1e" + "9" * 5000}},
     "controller_resources.cpu_request must be a Kubernetes quantity such as 100m, 64Mi or 1, got '1e99"),
    ({"proxy_resources": {"memory_limit": "5e" + "9" * 5000}}, "proxy_resources.memory_limit must be a Kubernetes quantity"),
    ({"controller_resources": {"cpu_request": "9" * 5000}}, "controller_resources.cpu_request '9999"),
    # other scripts' digits (regex \d matches them, Python's int() reads them); Kubernetes reads ASCII only
    ({"proxy_resources": {"memory_limit": "\u0665Gi"}}, "proxy_resources.memory_limit must be a Kubernetes quantity"),
    ({"controller_resources": {"cpu_limit": "1e\u0663"}}, "controller_resources.cpu_limit must be a Kubernetes quantity"),
])
def test_numbers_of_thousands_of_digits_are_errors_naming_the_field_not_crashes(args, message):
    """int()/str() of a number past 4,300 digits raises ValueError, float() of one past 1e308 OverflowError:
    such a value must still be a ComponentArgsError that names the field, and short enough to read."""
    with pytest.raises(ComponentArgsError) as err:
        MeshInstall("mesh", args)
    assert str(err.value).startswith("MeshInstall 'mesh': ") and message in str(err.value), str(err.value)[:300]
    assert len(str(err.value)) < 400


def test_label_maps_that_kubernetes_accepts_pass():
    s = resolve_settings("mesh", {"proxy_node_selector": {"kubernetes.io/os": "linux", "node.example.com/pool": "",
                                                          "Zone_A.b-c": "EU_west-1.a"},
                                  "proxy_tolerations": [{"key": "example.com/dedicated", "value": "mesh-proxy"}]})
    assert s["proxy_node_selector"]["Zone_A.b-c"] == "EU_west-1.a"


@pytest.mark.parametrize("args, image", [
    ({"image_tag": "0.2.0"}, "ghcr.io/lightmesh/lightmesh:0.2.0"),
    ({"image": "registry.local:5000/team/lightmesh", "image_tag": "1.2"}, "registry.local:5000/team/lightmesh:1.2"),
    ({"image": "registry.local:5000/team/lightmesh:old", "image_tag": "1.2"}, "registry.local:5000/team/lightmesh:1.2"),
    ({"image": "lightmesh@sha256:" + "b" * 64}, "lightmesh@sha256:" + "b" * 64),
])
def test_image_tag_replaces_the_tag_of_the_image(args, image):
    assert resolve_settings("mesh", args)["image"] == image


@pytest.mark.parametrize("args, image", [
    ({}, "ghcr.io/lightmesh/lightmesh:0.1.0"),
    ({"image": "localhost:5000/lightmesh"}, "localhost:5000/lightmesh"),
    ({"image": "registry.example.com/team/light_mesh:v1.2.3-rc.1"}, "registry.example.com/team/light_mesh:v1.2.3-rc.1"),
    ({"image": "ghcr.io/lightmesh/lightmesh:0.1.0@sha256:" + "c" * 64}, "ghcr.io/lightmesh/lightmesh:0.1.0@sha256:" + "c" * 64),
])
def test_image_references_nodes_can_pull_are_accepted(args, image):
    assert resolve_settings("mesh", args)["image"] == image


@pytest.mark.parametrize("args, cpu_limit", [
    ({}, "2"),  # proxy_workers defaults to 2
    ({"proxy_workers": 4}, "4"),
    ({"proxy_workers": 1}, "1"),
    ({"proxy_workers": 4, "proxy_resources": {"cpu_limit": "1500m"}}, "1500m"),  # given: kept
    ({"proxy_workers": 4, "proxy_resources": {"cpu_limit": ""}}, ""),  # removed: no CPU limit
])
def test_the_proxy_cpu_limit_follows_the_workers_unless_given(args, cpu_limit):
    """One CPU per proxy worker (docs/components.md): 4 workers under a 2-CPU limit were throttled."""
    resources = resolve_settings("mesh", args)["proxy_resources"]
    assert resources["cpu_limit"] == cpu_limit
    assert (resources["cpu_request"], resources["memory_limit"]) == ("100m", "512Mi")


def test_enum_values_are_accepted_in_any_case():
    s = resolve_settings("mesh", {"log_level": "INFO", "log_format": "JSON", "default_traffic_type": "TCP"})
    assert (s["log_level"], s["log_format"], s["default_traffic_type"]) == ("info", "json", "tcp")


@pulumi.runtime.test
def test_every_smi_object_the_components_write_fits_the_crds_mesh_install_registers():
    from components.manifests import validate_against_registered_crds
    from mesh_components import AccessPolicy, TrafficSplit

    mesh, outputs = _install("mi-smi")
    policy = AccessPolicy("mi-smi-policy", {
        "namespace": "app", "destination_service_account": "server",
        "sources": [{"service_account": "client"}, {"service_account": "probe", "namespace": "ops"}],
        "http_matches": [{"name": "api", "path_regex": "/api/.*", "methods": ["GET", "*"], "headers": {"x-a": ".*"}}],
        "tcp": {"ports": [8080]}, "udp": {"ports": [53]}})
    split = TrafficSplit("mi-smi-split", {"namespace": "app", "service": "web",
                                          "backends": [{"service": "v1", "weight": 1}, {"service": "v2", "weight": 3}],
                                          "matches": [{"name": "beta", "path_regex": "/beta"}]})

    def check(_):
        records = MOCKS.by_prefix("mi-smi")
        crds = [r.inputs for r in records if r.typ.endswith("CustomResourceDefinition")]
        objects = [r.inputs for r in records if r.custom and "smi-spec.io/" in r.typ]
        assert sorted(o["kind"] for o in objects) == sorted(
            ["HTTPRouteGroup", "TCPRoute", "UDPRoute", "TrafficTarget", "HTTPRouteGroup", "TrafficSplit"])
        for obj in objects:
            validate_against_registered_crds(obj, crds)

    return pulumi.Output.all(outputs, policy.traffic_target_name, policy.route_names,
                             split.traffic_split_name).apply(check)


# ------------------------------------------------------------------ None = the default (config.get() is None)
@pytest.mark.parametrize("field", list(MeshInstallArgs.__annotations__))
def test_none_means_the_default_for_every_field(field):
    """A config-driven program passes ``config.get("logLevel")``, None when unset: it installs the default,
    for every field alike (log_level None was a bare ``ValueError: None is not a valid LogLevel``)."""
    assert resolve_settings("mesh", {field: None}) == resolve_settings("mesh", {})


@pytest.mark.parametrize("args", [
    {"tracing": {"mode": None, "endpoint": None, "sample_ratio": None, "jaeger_image": None}},
    {"metrics": {"scrape_annotations": None, "dashboard": None, "service_monitor": None, "prometheus": None,
                 "prometheus_image": None, "service_monitor_labels": None}},
    {"controller_resources": {"cpu_request": None, "memory_limit": None},
     "proxy_resources": {"cpu_limit": None, "memory_request": None}},
])
def test_none_means_the_default_inside_the_object_fields(args):
    assert resolve_settings("mesh", args) == resolve_settings("mesh", {})


def test_a_toleration_field_given_none_is_left_out():
    s = resolve_settings("mesh", {"proxy_tolerations": [{"key": "dedicated", "operator": None, "value": "mesh",
                                                         "effect": None}]})
    assert s["proxy_tolerations"] == [{"key": "dedicated", "value": "mesh"}]  # operator: Equal (Kubernetes' default)


@pytest.mark.parametrize("tolerations, message", [
    # no key and operator Equal (given, or the default): the API server refuses the DaemonSet at `pulumi up`
    # ("operator must be Exists when `key` is empty"); preview passed
    ([{"effect": "NoSchedule"}], r"proxy_tolerations\[0\].operator must be Exists when key is empty, got 'Equal' "
                                 r"\(the default\): Kubernetes refuses it; give a key, or operator Exists to tolerate "
                                 r"every taint of effect NoSchedule$"),
    ([{"value": "mesh"}], r"proxy_tolerations\[0\].operator must be Exists when key is empty, got 'Equal' \(the default\)"),
    ([{"operator": "Equal"}], r"proxy_tolerations\[0\].operator must be Exists when key is empty, got 'Equal': "
                              r"Kubernetes refuses it; give a key, or operator Exists to tolerate every taint$"),
    ([{"key": "", "operator": "Equal", "value": ""}], r"proxy_tolerations\[0\].operator must be Exists when key is empty"),
    ([{"key": "dedicated", "operator": "Exists"}, {}], r"proxy_tolerations\[1\].operator must be Exists when key is "
                                                       r"empty, got 'Equal' \(the default\)"),
    ([{"key": None, "operator": None}], r"proxy_tolerations\[0\].operator must be Exists when key is empty"),
    # the other shapes Kubernetes' ValidateTolerations refuses (already refused at preview)
    ([{"operator": "Exists", "value": "x"}], r"proxy_tolerations\[0\].value must be empty with operator Exists"),
    ([{"key": "a", "operator": "Exists", "value": "x"}], r"proxy_tolerations\[0\].value must be empty with operator Exists"),
    ([{"key": "a", "operator": "In"}], r"proxy_tolerations\[0\].operator must be Equal or Exists"),
    ([{"operator": "Exists", "effect": "NoRun"}], r"proxy_tolerations\[0\].effect must be NoSchedule, PreferNoSchedule "
                                                  r"or NoExecute"),
    ([{"key": "a", "toleration_seconds": 30, "effect": "NoSchedule"}], r"proxy_tolerations\[0\] must only have key, "
                                                                       r"operator, value, effect"),
])
def test_tolerations_kubernetes_refuses_fail_at_preview_naming_the_field(tolerations, message):
    with pytest.raises(ComponentArgsError, match=r"^MeshInstall 'mesh': " + message):
        MeshInstall("mesh", {"proxy_tolerations": tolerations})


@pytest.mark.parametrize("tolerations", [
    [{"operator": "Exists"}],  # the default: every taint
    [{"operator": "Exists", "effect": "NoExecute"}, {"key": "", "operator": "Exists", "value": ""}],
    [{"key": "dedicated"}, {"key": "dedicated", "operator": "Equal", "value": "mesh", "effect": "NoSchedule"},
     {"key": "example.com/gpu", "operator": "Exists"}],
])
def test_tolerations_kubernetes_accepts_pass(tolerations):
    assert resolve_settings("mesh", {"proxy_tolerations": tolerations})["proxy_tolerations"] == tolerations


@pytest.mark.parametrize("namespace", ["kube-system", "kube-public", "kube-node-lease"])
@pytest.mark.parametrize("create", [{}, {"create_namespace": True}, {"create_namespace": None}])
def test_a_namespace_every_cluster_has_is_not_created(namespace, create):
    """Creating kube-system, kube-public or kube-node-lease passed preview and failed `pulumi up` (AlreadyExists)."""
    with pytest.raises(ComponentArgsError, match=rf"^MeshInstall 'mesh': namespace '{namespace}' always exists "
                                                 r"\(Kubernetes creates it\), so with create_namespace true \(the "
                                                 r"default\) `pulumi up` would fail creating it \(AlreadyExists\); set "
                                                 r"create_namespace false to install into it, or use a namespace of its "
                                                 r"own, e.g. 'lightmesh' \(the default\)$"):
        MeshInstall("mesh", {"namespace": namespace, **create})


@pulumi.runtime.test
def test_a_namespace_every_cluster_has_may_be_installed_into_without_creating_it():
    # The controller finds its shadow Services, proxies and Lease in its own namespace before it ignores
    # kube-system's Services; nothing else of kube-system is touched (it deletes only shadow Services).
    mesh, outputs = _install("mi-kubesys", {"namespace": "kube-system", "create_namespace": False,
                                            "patch_coredns": False})

    def check(values):
        assert values[0] == "kube-system"
        records = _records("mi-kubesys")
        assert "mi-kubesys-namespace" not in records
        assert records["mi-kubesys-controller"].inputs["metadata"]["namespace"] == "kube-system"

    return outputs.apply(check)


@pulumi.runtime.test
def test_enums_given_none_install_their_defaults():
    mesh, outputs = _install("mi-none", {"log_level": None, "log_format": None, "default_traffic_type": None,
                                         "dns_style": None})

    def check(_):
        records = _records("mi-none")
        cmd = records["mi-none-controller"].inputs["spec"]["template"]["spec"]["containers"][0]["command"]
        assert (cmd[cmd.index("--log-level") + 1], cmd[cmd.index("--log-format") + 1],
                cmd[cmd.index("--default-mode") + 1]) == ("info", "text", "http")
        assert records["mi-none-cluster-dns"].inputs["style"] == "auto"

    return outputs.apply(check)


@pytest.mark.parametrize("args, message", [
    ({"tracing": {1: "x"}}, r"tracing has unknown field\(s\) 1; known: mode"),
    ({"metrics": {1: True}}, r"metrics has unknown field\(s\) 1; known: scrape_annotations"),
    # the kubeconfig is a secret: the message gives its type, never its contents
    ({"kubeconfig": 42}, r"kubeconfig must be the contents of a kubeconfig file \(a non-empty string\), got a value "
                         r"of type int$"),
    ({"kubeconfig": {"apiVersion": "v1"}}, "kubeconfig must be the contents of a kubeconfig file .* got a value of "
                                           "type dict$"),
    ({"kubeconfig": " "}, "kubeconfig must be the contents of a kubeconfig file .* got an empty string$"),
])
def test_bad_values_are_component_errors_naming_the_field(args, message):
    with pytest.raises(ComponentArgsError, match=r"^MeshInstall 'mesh': " + message):
        MeshInstall("mesh", args)


def test_a_kubeconfig_output_is_checked_when_it_resolves():
    @pulumi.runtime.test
    def program():
        mesh = MeshInstall("mi-kc-late", {"kubeconfig": pulumi.Output.from_input(42)})
        return pulumi.Output.all(*[c.urn for c in mesh.children.values()])

    with pytest.raises(ValueError, match="MeshInstall 'mi-kc-late': kubeconfig must be .* got a value of type int"):
        program()


# ------------------------------------------------------------------ an explicit Kubernetes provider and the DNS patch
def _options(how, provider, name):
    """Resource options that give MeshInstall ``provider`` in one of the ways Pulumi allows."""
    if how == "provider":
        return pulumi.ResourceOptions(provider=provider)
    if how == "providers-list":
        return pulumi.ResourceOptions(providers=[provider])
    if how == "providers-dict":
        return pulumi.ResourceOptions(providers={"kubernetes": provider})
    group = pulumi.ComponentResource("test:index:Cluster", f"{name}-group", None,
                                     pulumi.ResourceOptions(providers=[provider]))
    return pulumi.ResourceOptions(parent=group)


@pytest.mark.parametrize("how, where", [("provider", "provider"), ("providers-list", "providers"),
                                        ("providers-dict", "providers"),
                                        ("parent", "providers inherited from the parent")])
@pulumi.runtime.test
def test_an_explicit_kubernetes_provider_without_kubeconfig_is_refused_with_the_dns_patch(how, where):
    """The DNS patch talks to the cluster of ``kubeconfig`` or of the ambient kubeconfig, never through the
    provider: with another cluster's provider it would silently patch the ambient cluster."""
    name = f"mi-prov-{how}"
    provider = k8s.Provider(f"{name}-k8s", kubeconfig="apiVersion: v1\nkind: Config\n")
    with pytest.raises(ComponentArgsError, match=rf"^MeshInstall '{name}': kubeconfig is required when the resource "
                                                 rf"options give a Kubernetes provider \({where}\) and "
                                                 r"patch_coredns is true: .* Pass the same cluster's kubeconfig in "
                                                 r"kubeconfig\. Do not set patch_coredns: false instead on an existing "
                                                 r"stack: that deletes its cluster DNS patch, which removes the mesh "
                                                 r"DNS forwarding \(mesh names stop resolving cluster-wide\); .*$"):
        MeshInstall(name, {}, opts=_options(how, provider, name))

    def check(_):  # refused before anything was registered
        assert not [r.name for r in MOCKS.by_prefix(name) if r.name not in (f"{name}-k8s", f"{name}-group")]

    return provider.urn.apply(check)


@pytest.mark.parametrize("args", [{"kubeconfig": "apiVersion: v1\nkind: Config\n# eu\n"},
                                  {"kubeconfig": pulumi.Output.secret("apiVersion: v1\nkind: Config\n")},
                                  {"patch_coredns": False}])
@pulumi.runtime.test
def test_an_explicit_kubernetes_provider_with_kubeconfig_or_without_the_dns_patch_is_fine(args):
    name = f"mi-prov-ok-{len(MOCKS.created)}"
    provider = k8s.Provider(f"{name}-k8s", kubeconfig="apiVersion: v1\nkind: Config\n")
    mesh = MeshInstall(name, args, opts=pulumi.ResourceOptions(provider=provider))

    def check(_):
        records = _records(name)
        assert f"$pulumi:providers:kubernetes::{name}-k8s::" in records[f"{name}-controller"].provider
        assert (f"{name}-cluster-dns" in records) == args.get("patch_coredns", True)

    return pulumi.Output.all(*[c.urn for c in mesh.children.values()]).apply(check)


@pulumi.runtime.test
def test_a_provider_of_another_package_needs_no_kubeconfig():
    other = pulumi.ProviderResource("random", "mi-prov-random-p", {})
    mesh = MeshInstall("mi-prov-random", {}, opts=pulumi.ResourceOptions(providers={"random": other}))

    def check(_):
        records = _records("mi-prov-random")
        assert "mi-prov-random-cluster-dns" in records and not records["mi-prov-random-controller"].provider

    return pulumi.Output.all(*[c.urn for c in mesh.children.values()]).apply(check)


# ------------------------------------------------------------------ the fields that may be Outputs
O = pulumi.Output.from_input


@pulumi.runtime.test
def test_the_fields_documented_to_accept_outputs_do():
    mesh, outputs = _install("mi-outs", {
        "patch_coredns": False, "otlp_endpoint": O("http://otel.obs:4318"),
        "proxy_node_selector": {"pool": O("mesh")},
        "metrics": {"prometheus": True, "prometheus_image": O("prom/prometheus:v2.55.0"),
                    "service_monitor": True, "service_monitor_labels": {"release": O("kps")}}})

    def check(_):
        records = _records("mi-outs")
        proxy = records["mi-outs-proxy"].inputs["spec"]["template"]["spec"]
        assert proxy["nodeSelector"] == {"pool": "mesh"}
        command = proxy["containers"][0]["command"]
        assert command[command.index("--otlp-endpoint") + 1] == "http://otel.obs:4318"
        assert records["mi-outs-service-monitor"].inputs["metadata"]["labels"]["release"] == "kps"
        image = records["mi-outs-prometheus-deployment"].inputs["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == "prom/prometheus:v2.55.0"

    return outputs.apply(check)


@pulumi.runtime.test
def test_a_jaeger_image_and_a_tracing_endpoint_may_be_outputs():
    jaeger, jaeger_done = _install("mi-outs-jaeger", {"patch_coredns": False, "tracing": {
        "mode": "jaeger", "jaeger_image": O("jaegertracing/all-in-one:1.61.0")}})
    otlp, otlp_done = _install("mi-outs-otlp", {"patch_coredns": False, "tracing": {
        "mode": "otlp", "endpoint": O("https://otel.obs:4318")}})

    def check(_):
        deployment = _records("mi-outs-jaeger")["mi-outs-jaeger-jaeger-deployment"].inputs
        assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "jaegertracing/all-in-one:1.61.0"
        command = _records("mi-outs-otlp")["mi-outs-otlp-controller"].inputs["spec"]["template"]["spec"][
            "containers"][0]["command"]
        assert command[command.index("--otlp-endpoint") + 1] == "https://otel.obs:4318"

    return pulumi.Output.all(jaeger_done, otlp_done).apply(check)


@pytest.mark.parametrize("name, args, message", [
    # label values given as Outputs were never checked ("for the API server to judge")
    ("mi-late-nodesel", {"proxy_node_selector": {"pool": O("mesh pool")}},
     r"proxy_node_selector\['pool'\] value 'mesh pool' is not a label value"),
    ("mi-late-smlabels", {"metrics": {"service_monitor": True, "service_monitor_labels": {"release": O("-kps")}}},
     r"metrics.service_monitor_labels\['release'\] value '-kps' is not a label value"),
    # an endpoint given turns tracing on: resolving to None put a null into both containers' commands
    ("mi-late-otlp-none", {"otlp_endpoint": O(None)},
     r"otlp_endpoint must be an http:// or https:// URL, got None: given as an Output, it must resolve to an "
     r"endpoint"),
    ("mi-late-endpoint-none", {"tracing": {"mode": "otlp", "endpoint": O(None)}},
     r"tracing.endpoint must be an http:// or https:// URL, got None"),
    ("mi-late-otlp-empty", {"otlp_endpoint": O("")}, r"otlp_endpoint must be an http:// or https:// URL, got ''$"),
])
def test_outputs_are_checked_when_they_resolve(name, args, message):
    @pulumi.runtime.test
    def program():
        return settled(MeshInstall(name, {"patch_coredns": False, **args}).children.values())

    fails_when_resolved(program, rf"MeshInstall '{name}': " + message)
