"""MeshInstall's observability options: what each one adds, that it is valid, and bad input."""

import json

import jsonschema
import pulumi
import pytest
import yaml

from components.conftest import MOCKS, MONITOR
from components.manifests import validate_all
from mesh_components import ComponentArgsError, MeshInstall, dashboard, observability
from mesh_components.install import resolve_settings

# The fields of the Prometheus Operator's ServiceMonitor CRD (monitoring.coreos.com/v1) we use,
# closed: kubernetes-validate has no schema for it, so a typo must still fail here.
SERVICE_MONITOR_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "selector": {"type": "object", "properties": {"matchLabels": {"type": "object"}},
                         "additionalProperties": False},
            "namespaceSelector": {"type": "object", "properties": {"matchNames": {"type": "array"}},
                                  "additionalProperties": False},
            "endpoints": {"type": "array", "minItems": 1, "items": {
                "type": "object", "additionalProperties": False, "required": ["port"],
                "properties": {"port": {"type": "string"}, "path": {"type": "string"},
                               "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"}}}}}},
    },
}


def _install(name, args):
    mesh = MeshInstall(name, args)
    settled = pulumi.Output.all(*[c.urn for c in mesh.children.values()])
    return mesh, settled


def _records(prefix):
    return {r.name: r for r in MOCKS.by_prefix(prefix)}


def _container(records, resource):
    return records[resource].inputs["spec"]["template"]["spec"]["containers"][0]


@pulumi.runtime.test
def test_defaults_scrape_annotations_and_dashboard_only():
    mesh, settled = _install("obs-default", {})

    def check(_):
        records = _records("obs-default")
        for resource, port in (("obs-default-controller", "9000"), ("obs-default-proxy", "8080")):
            annotations = records[resource].inputs["spec"]["template"]["metadata"]["annotations"]
            assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": port,
                                   "prometheus.io/path": "/metrics"}
        board = records["obs-default-dashboard"].inputs
        assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert json.loads(board["data"]["lightmesh.json"]) == dashboard.build_dashboard()
        assert not any("jaeger" in n or "prometheus" in n or "monitor" in n for n in records)
        assert "--otlp-endpoint" not in _container(records, "obs-default-proxy")["command"]
        validate_all(list(records.values()))

    return settled.apply(check)


@pulumi.runtime.test
def test_jaeger_prometheus_and_service_monitor():
    mesh, settled = _install("obs-all", {"namespace": "mesh", "tracing": {"mode": "jaeger", "sample_ratio": 0.25},
                                         "metrics": {"service_monitor": True, "prometheus": True,
                                                     "service_monitor_labels": {"release": "kube-prometheus-stack"}}})

    def check(_):
        records = _records("obs-all")
        endpoint = "http://lightmesh-jaeger.mesh.svc.cluster.local:4318"
        proxy_cmd = _container(records, "obs-all-proxy")["command"]
        assert proxy_cmd[proxy_cmd.index("--otlp-endpoint") + 1] == endpoint
        assert proxy_cmd[proxy_cmd.index("--trace-sample-ratio") + 1] == "0.25"
        ctl_cmd = _container(records, "obs-all-controller")["command"]
        assert ctl_cmd[ctl_cmd.index("--otlp-endpoint") + 1] == endpoint
        jaeger = records["obs-all-jaeger-deployment"].inputs
        assert jaeger["spec"]["template"]["spec"]["containers"][0]["image"] == observability.DEFAULT_JAEGER_IMAGE
        assert jaeger["spec"]["template"]["spec"]["automountServiceAccountToken"] is False  # no API calls
        prometheus = records["obs-all-prometheus-deployment"].inputs["spec"]["template"]["spec"]["containers"][0]
        assert prometheus["securityContext"]["readOnlyRootFilesystem"] is True
        assert {m["mountPath"] for m in prometheus["volumeMounts"]} == {"/etc/prometheus", "/prometheus"}
        ports = {p["name"]: p["port"] for p in records["obs-all-jaeger-service"].inputs["spec"]["ports"]}
        assert ports == {"otlp-http": 4318, "otlp-grpc": 4317, "ui": 16686}
        monitor = records["obs-all-service-monitor"]
        assert monitor.typ == "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"
        # kube-prometheus-stack's Prometheus selects ServiceMonitors by its release label
        assert monitor.inputs["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        jsonschema.validate(monitor.inputs | {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor"},
                            SERVICE_MONITOR_SCHEMA)
        # the ServiceMonitor finds the controller Service (api) and the proxies' headless Service (admin)
        selector = monitor.inputs["spec"]["selector"]["matchLabels"]
        controller_svc = records["obs-all-controller-service"].inputs
        proxy_svc = records["obs-all-proxy-metrics-service"].inputs
        for svc, port in ((controller_svc, "api"), (proxy_svc, "admin")):
            assert selector.items() <= svc["metadata"]["labels"].items()
            assert port in {p["name"] for p in svc["spec"]["ports"]}
        prom_config = yaml.safe_load(records["obs-all-prometheus-configmap"].inputs["data"]["prometheus.yml"])
        [job] = prom_config["scrape_configs"]
        assert job["kubernetes_sd_configs"][0]["namespaces"]["names"] == ["mesh"]
        rules = records["obs-all-prometheus-role"].inputs["rules"]
        assert rules == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
        # every built-in manifest passes kubernetes-validate --strict (the ServiceMonitor is a CRD kind)
        validate_all([r for n, r in records.items() if n != "obs-all-service-monitor"])
        for n in records:
            if n != "obs-all":
                assert MONITOR.parent_of(n).endswith("MeshInstall::obs-all"), n

    return settled.apply(check)


@pulumi.runtime.test
def test_otlp_mode_and_no_scrape_annotations():
    mesh, settled = _install("obs-otlp", {"tracing": {"mode": "otlp", "endpoint": "http://otel.obs:4318"},
                                          "metrics": {"scrape_annotations": False, "dashboard": False}})

    def check(_):
        records = _records("obs-otlp")
        cmd = _container(records, "obs-otlp-proxy")["command"]
        assert cmd[cmd.index("--otlp-endpoint") + 1] == "http://otel.obs:4318"
        assert "annotations" not in records["obs-otlp-proxy"].inputs["spec"]["template"]["metadata"]
        assert "obs-otlp-dashboard" not in records

    return settled.apply(check)


@pytest.mark.parametrize("args, message", [
    ({"tracing": {"mode": "zipkin"}}, "tracing.mode must be off, otlp or jaeger, got 'zipkin'"),
    ({"tracing": {"mode": "otlp"}}, "tracing.mode otlp needs tracing.endpoint"),
    ({"tracing": {"mode": "jaeger", "endpoint": "http://x:4318"}}, "must be unset with tracing.mode jaeger"),
    ({"tracing": {"mode": "otlp", "endpoint": "otel:4318"}}, "tracing.endpoint must be an http:// or https:// URL"),
    ({"tracing": {"mode": "jaeger", "sample_ratio": 1.5}}, "tracing.sample_ratio must be a number from 0 to 1"),
    ({"tracing": {"sampling": 0.5}}, "tracing has unknown field(s) sampling"),
    ({"metrics": {"prometheus": "yes"}}, "metrics.prometheus must be true or false, got 'yes'"),
    ({"metrics": {"grafana": True}}, "metrics has unknown field(s) grafana"),
    ({"tracing": {"sample_ratio": 0.5}}, "tracing.sample_ratio is set but tracing is off"),
    ({"metrics": {"service_monitor_labels": {"release": "x"}}}, "service_monitor_labels needs metrics.service_monitor"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"release": 1}}},
     "service_monitor_labels must map label names to string values"),
    # label names and values as Kubernetes checks them, at preview rather than at `pulumi up`
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"bad key!": "x"}}},
     "metrics.service_monitor_labels key 'bad key!' is not a label name"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"": "x"}}},
     "metrics.service_monitor_labels key '' is not a label name"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"team/": "x"}}},
     "metrics.service_monitor_labels key 'team/' is not a label name"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"Monitoring.Example/release": "x"}}},
     "metrics.service_monitor_labels key 'Monitoring.Example/release' has a prefix (before '/') that is not a DNS "
     "subdomain"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"release": "kube prometheus"}}},
     "metrics.service_monitor_labels['release'] value 'kube prometheus' is not a label value"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"release": "-stack"}}},
     "metrics.service_monitor_labels['release'] value '-stack' is not a label value"),
    ({"metrics": {"service_monitor": True, "service_monitor_labels": {"x" * 64: "a"}}},
     "metrics.service_monitor_labels key 'xxxxxxxx"),
    # a number of hundreds of digits: float() of it raised OverflowError
    ({"tracing": {"mode": "jaeger", "sample_ratio": 10 ** 400}},
     "tracing.sample_ratio must be a number from 0 to 1, got a whole number of about 401 digits"),
])
def test_bad_observability_args_name_the_field(args, message):
    with pytest.raises(ComponentArgsError) as err:
        resolve_settings("bad", args)
    assert message in str(err.value) and "MeshInstall 'bad'" in str(err.value)


def test_service_monitor_labels_kubernetes_accepts_pass():
    labels = {"release": "kube-prometheus-stack", "monitoring.example.com/team": "", "Tier_1.a-b": "A.b_c-1"}
    s = resolve_settings("ok", {"metrics": {"service_monitor": True, "service_monitor_labels": labels}})
    assert s["service_monitor_labels"] == labels


def test_otlp_endpoint_shorthand_is_otlp_mode():
    s = resolve_settings("short", {"otlp_endpoint": "http://otel:4318"})
    assert (s["tracing_mode"], s["otlp_endpoint"]) == ("otlp", "http://otel:4318")


def _pod_targets(pod_name, pod_ip, template):
    """The targets Prometheus' Kubernetes pod discovery makes of one pod: one per container port, its
    address ``<pod IP>:<port>`` (IPv6 bracketed, Go's net.JoinHostPort), labels and annotations as
    ``__meta_kubernetes_pod_label_<name>`` with every other character than [a-zA-Z0-9_] made '_'."""
    import re

    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    meta = {"__meta_kubernetes_pod_name": pod_name, "__meta_kubernetes_pod_ip": pod_ip,
            "__meta_kubernetes_pod_node_name": "node-1"}
    for kind in ("label", "annotation"):
        for key, value in (template["metadata"].get(f"{kind}s") or {}).items():
            meta[f"__meta_kubernetes_pod_{kind}_{re.sub('[^a-zA-Z0-9_]', '_', key)}"] = value
    return [{**meta, "__address__": f"{host}:{int(port['containerPort'])}",  # numbers pass the mocks as floats
             "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
             "__meta_kubernetes_pod_container_port_number": str(int(port["containerPort"]))}
            for container in template["spec"]["containers"] for port in container.get("ports", [])]


def _relabel(rules, target):
    """Prometheus relabelling (the actions the bundled config uses): None if the target is dropped."""
    import re

    target = dict(target)
    for rule in rules:
        value = rule.get("separator", ";").join(target.get(label, "") for label in rule.get("source_labels", []))
        match = re.fullmatch(rule.get("regex", "(.*)"), value)  # Prometheus anchors its regexes (RE2)
        action = rule.get("action", "replace")
        if action == "keep":
            if not match:
                return None
        elif action == "replace":
            if match:
                target[rule["target_label"]] = re.sub(r"\$(\d)", lambda m: match.group(int(m.group(1))) or "",
                                                      rule.get("replacement", "$1"))
        else:
            raise AssertionError(f"relabel action {action} not simulated")
    return target


@pytest.mark.parametrize("scrape_annotations", [True, False])
@pytest.mark.parametrize("pod_ip", ["10.1.2.3", "fd00:10::1:2"])
@pulumi.runtime.test
def test_the_bundled_prometheus_scrapes_the_controller_and_proxies_with_or_without_annotations(scrape_annotations,
                                                                                               pod_ip):
    """With scrape_annotations false (a cluster Prometheus that discovers pods by annotation should leave
    the mesh alone) the bundled Prometheus used to keep no target at all: its dashboard stayed empty."""
    name = f"obs-prom-{scrape_annotations}-{pod_ip.count(':')}"
    mesh, settled = _install(name, {"metrics": {"prometheus": True, "scrape_annotations": scrape_annotations},
                                    "tracing": {"mode": "jaeger"}})

    def check(_):
        records = _records(name)
        config = yaml.safe_load(records[f"{name}-prometheus-configmap"].inputs["data"]["prometheus.yml"])
        [job] = config["scrape_configs"]
        assert job["kubernetes_sd_configs"] == [{"role": "pod", "namespaces": {"names": ["lightmesh"]}}]
        pods = {"controller": f"{name}-controller", "proxy": f"{name}-proxy",
                "jaeger": f"{name}-jaeger-deployment", "prometheus": f"{name}-prometheus-deployment"}
        kept = set()
        for pod, resource in pods.items():
            for target in _pod_targets(pod, pod_ip, records[resource].inputs["spec"]["template"]):
                relabelled = _relabel(job["relabel_configs"], target)
                if relabelled is not None:
                    kept.add((pod, relabelled["__address__"], relabelled.get("__metrics_path__", "/metrics"),
                              relabelled["instance"]))
        host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
        assert kept == {("controller", f"{host}:9000", "/metrics", "controller"),
                        ("proxy", f"{host}:8080", "/metrics", "proxy")}

    return settled.apply(check)
