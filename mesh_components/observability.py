"""Tracing and metrics for a MeshInstall: typed args, their validation, and the manifests they add.

What a user can switch on (all in the mesh namespace, all optional):

* tracing ``mode``: ``off`` (default), ``otlp`` (send spans to an existing OTLP/HTTP endpoint) or
  ``jaeger`` (deploy Jaeger all-in-one with OTLP ingest and point the proxies and the controller at
  it); ``sample_ratio`` is the share of requests the proxies trace (parent-based: a request that
  arrives with a sampled ``traceparent`` is always traced).
* metrics: Prometheus scrape annotations on the proxy and controller pods (on by default); a
  ``ServiceMonitor`` for the Prometheus Operator (off by default: only for clusters that have its
  CRD); a bundled single-replica Prometheus that scrapes the mesh's controller and proxy pods,
  found by label whether or not they carry the annotations (off by default); the Grafana
  dashboard as a ConfigMap for Grafana's dashboard sidecar (on by default; the same JSON as
  ``mesh_components/dashboards/lightmesh.json``).

Everything here is pure: :func:`resolve` validates the args, the ``*_manifest`` functions return
plain dicts (the shapes MeshInstall registers, also checked with ``kubernetes-validate``).
"""

import json
import re
from typing import Any, Mapping, NotRequired, Optional, TypedDict

from mesh_components._common import Checker, shown
from mesh_components import dashboard
from lightmesh import wire

JAEGER_NAME = "lightmesh-jaeger"
PROMETHEUS_NAME = "lightmesh-prometheus"
PROXY_METRICS_SERVICE = "lightmesh-proxy-metrics"
DASHBOARD_CONFIGMAP = "lightmesh-dashboard"
METRICS_LABEL = "lightmesh.io/metrics"
DEFAULT_JAEGER_IMAGE = "jaegertracing/all-in-one:1.62.0"
DEFAULT_PROMETHEUS_IMAGE = "prom/prometheus:v2.55.1"
JAEGER_OTLP_HTTP_PORT = 4318
JAEGER_OTLP_GRPC_PORT = 4317  # the proxies use HTTP; applications in the mesh may export over gRPC
JAEGER_UI_PORT = 16686
PROMETHEUS_PORT = 9090

_ADDON_RESOURCES = {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}


class TracingArgs(TypedDict):
    """Distributed tracing of the mesh (OpenTelemetry, W3C traceparent)."""

    mode: NotRequired[str]
    """``off`` (default), ``otlp`` (use ``endpoint``) or ``jaeger`` (deploy Jaeger all-in-one)."""
    endpoint: NotRequired[str]
    """OTLP/HTTP endpoint for mode ``otlp``, e.g. ``http://otel-collector.observability:4318``."""
    sample_ratio: NotRequired[float]
    """Share of requests traced, 0 to 1 (default 1.0 for jaeger and otlp)."""
    jaeger_image: NotRequired[str]
    """Jaeger all-in-one image for mode ``jaeger`` (default ``jaegertracing/all-in-one:1.62.0``)."""


class MetricsArgs(TypedDict):
    """Prometheus metrics of the proxies and the controller."""

    scrape_annotations: NotRequired[bool]
    """``prometheus.io/scrape``/``port``/``path`` annotations on proxy and controller pods (default true),
    for a cluster Prometheus that discovers pods by annotation. The bundled Prometheus does not need them."""
    service_monitor: NotRequired[bool]
    """A Prometheus Operator ``ServiceMonitor`` (default false; needs the monitoring.coreos.com CRD,
    or ``pulumi up`` fails on it)."""
    service_monitor_labels: NotRequired[dict[str, str]]
    """Labels on the ServiceMonitor, for a Prometheus that selects them: kube-prometheus-stack's
    picks only ``release: <its Helm release>`` by default (e.g. ``{"release": "kube-prometheus-stack"}``)."""
    prometheus: NotRequired[bool]
    """Deploy a single-replica Prometheus that scrapes the mesh (default false). It finds the controller
    and proxy pods by their labels and named ports, with or without ``scrape_annotations``."""
    prometheus_image: NotRequired[str]
    """Image of the bundled Prometheus (default ``prom/prometheus:v2.55.1``)."""
    dashboard: NotRequired[bool]
    """Ship the Grafana dashboard as a ConfigMap labelled ``grafana_dashboard: "1"`` (default true)."""


def resolve(check: Checker, tracing: Any, metrics: Any, otlp_endpoint: Any) -> dict:
    """Validated settings (field errors name ``tracing.<field>`` / ``metrics.<field>``)."""
    # None = not given = the default, as for the top-level fields
    tracing = {k: v for k, v in (tracing or {}).items() if v is not None}
    metrics = {k: v for k, v in (metrics or {}).items() if v is not None}
    for field, value, known in (("tracing", tracing, TracingArgs), ("metrics", metrics, MetricsArgs)):
        unknown = set(value) - set(known.__annotations__)
        if unknown:
            raise check.fail(f"{field} has unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                             f"known: {', '.join(known.__annotations__)}")
    mode = tracing.get("mode", "otlp" if otlp_endpoint else "off")
    if mode not in ("off", "otlp", "jaeger"):
        raise check.fail(f"tracing.mode must be off, otlp or jaeger, got {mode!r}")
    endpoint = tracing.get("endpoint", otlp_endpoint)
    if mode == "otlp" and not endpoint:
        raise check.fail("tracing.mode otlp needs tracing.endpoint (or otlp_endpoint), "
                         "e.g. http://otel-collector.observability:4318")
    if mode == "jaeger" and endpoint:
        raise check.fail("tracing.endpoint (or otlp_endpoint) must be unset with tracing.mode jaeger: "
                         "the proxies send to the bundled Jaeger")
    if mode == "off" and endpoint:
        raise check.fail("tracing.mode off with an endpoint set: use mode otlp, or drop the endpoint")
    if mode == "off" and tracing.get("sample_ratio") is not None:
        raise check.fail("tracing.sample_ratio is set but tracing is off: set tracing.mode (otlp or jaeger) "
                         "or otlp_endpoint")
    ratio = tracing.get("sample_ratio", 1.0)
    # compared as given: float() of an int past 1e308 raises OverflowError
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 <= ratio <= 1:
        raise check.fail(f"tracing.sample_ratio must be a number from 0 to 1, got {shown(ratio)}")
    out = {
        "tracing_mode": mode,
        "tracing_endpoint": endpoint,
        "trace_sample_ratio": float(ratio),
        "jaeger_image": check.string("tracing.jaeger_image", tracing.get("jaeger_image", DEFAULT_JAEGER_IMAGE)),
        "prometheus_image": check.string("metrics.prometheus_image",
                                         metrics.get("prometheus_image", DEFAULT_PROMETHEUS_IMAGE)),
    }
    for field, default in (("scrape_annotations", True), ("service_monitor", False), ("prometheus", False),
                           ("dashboard", True)):
        value = metrics.get(field, default)
        if not isinstance(value, bool):
            raise check.fail(f"metrics.{field} must be true or false, got {value!r}")
        out[field] = value
    labels = check.labels("metrics.service_monitor_labels", metrics.get("service_monitor_labels") or {})
    if labels and not out["service_monitor"]:
        raise check.fail("metrics.service_monitor_labels needs metrics.service_monitor: true")
    out["service_monitor_labels"] = dict(labels)
    return out


def jaeger_endpoint(namespace: str, cluster_domain: str) -> str:
    return f"http://{JAEGER_NAME}.{namespace}.svc.{cluster_domain}:{JAEGER_OTLP_HTTP_PORT}"


def scrape_annotations(port: int) -> dict[str, str]:
    return {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}


def _labels(name: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "lightmesh"}


def _meta(name: str, namespace: str, labels: Optional[Mapping[str, str]] = None) -> dict:
    return {"name": name, "namespace": namespace,
            "labels": {**_labels(name), "app.kubernetes.io/managed-by": "pulumi", **(labels or {})}}


def _container_security() -> dict:
    return {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 65534,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def jaeger_manifests(namespace: str, image: str) -> list[dict]:
    """Jaeger all-in-one (in-memory storage) with OTLP ingest; UI on 16686."""
    labels = _labels(JAEGER_NAME)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(JAEGER_NAME, namespace),
        "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     # Jaeger never calls the Kubernetes API: no token in its pod
                     "automountServiceAccountToken": False,
                     "containers": [{
                     "name": "jaeger", "image": image,
                     "env": [{"name": "COLLECTOR_OTLP_ENABLED", "value": "true"},
                             {"name": "MEMORY_MAX_TRACES", "value": "50000"}],
                     "ports": [{"name": "otlp-http", "containerPort": JAEGER_OTLP_HTTP_PORT, "protocol": "TCP"},
                               {"name": "otlp-grpc", "containerPort": JAEGER_OTLP_GRPC_PORT, "protocol": "TCP"},
                               {"name": "ui", "containerPort": JAEGER_UI_PORT, "protocol": "TCP"}],
                     "readinessProbe": {"httpGet": {"path": "/", "port": "ui"}, "periodSeconds": 10},
                     "resources": _ADDON_RESOURCES, "securityContext": _container_security()}]}}}}
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(JAEGER_NAME, namespace),
        "spec": {"selector": labels, "ports": [
            {"name": "otlp-http", "port": JAEGER_OTLP_HTTP_PORT, "targetPort": "otlp-http", "protocol": "TCP"},
            {"name": "otlp-grpc", "port": JAEGER_OTLP_GRPC_PORT, "targetPort": "otlp-grpc", "protocol": "TCP"},
            {"name": "ui", "port": JAEGER_UI_PORT, "targetPort": "ui", "protocol": "TCP"}]}}
    return [deployment, service]


def proxy_metrics_service(namespace: str) -> dict:
    """Headless Service over the proxy pods' admin port, so a ServiceMonitor can find every proxy."""
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _meta(PROXY_METRICS_SERVICE, namespace, {METRICS_LABEL: "true"}),
            "spec": {"clusterIP": "None", "selector": dict(wire.PROXY_POD_LABELS),
                     "ports": [{"name": "admin", "port": wire.DEFAULT_PROXY_ADMIN_PORT, "targetPort": "admin",
                                "protocol": "TCP"}]}}


def service_monitor(namespace: str, labels: Optional[Mapping[str, str]] = None) -> dict:
    """Scrapes every Service of this mesh labelled ``lightmesh.io/metrics: "true"`` (the controller
    Service on ``api``, the proxies' headless Service on ``admin``). ``labels``: on the
    ServiceMonitor itself, for the Prometheus that selects it."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor",
            "metadata": _meta("lightmesh", namespace, labels),
            "spec": {"selector": {"matchLabels": {METRICS_LABEL: "true"}},
                     "namespaceSelector": {"matchNames": [namespace]},
                     "endpoints": [{"port": "api", "path": "/metrics", "interval": "15s"},
                                   {"port": "admin", "path": "/metrics", "interval": "15s"}]}}


def prometheus_config(namespace: str) -> str:
    """Scrape the controller and proxy pods of the mesh namespace, found by their pod labels and named
    container ports (``api``, ``admin``) — not by the prometheus.io annotations, so the bundled
    Prometheus works with ``scrape_annotations: false`` too (a cluster Prometheus that discovers pods
    by annotation then leaves the mesh to it). Prometheus' pod discovery makes one target per
    container port, ``<pod IP>:<port>`` (an IPv6 pod IP bracketed), so no address rewriting is needed."""
    name_label = "__meta_kubernetes_pod_label_" + _prometheus_label("app.kubernetes.io/name")
    metrics_ports = [(wire.CONTROLLER_POD_LABELS["app.kubernetes.io/name"], "api"),
                     (wire.PROXY_POD_LABELS["app.kubernetes.io/name"], "admin")]
    relabel = [
        {"source_labels": [name_label, "__meta_kubernetes_pod_container_port_name"],
         "regex": "|".join(f"{app};{port}" for app, port in metrics_ports), "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "instance"},
        {"source_labels": ["__meta_kubernetes_pod_node_name"], "target_label": "node"},
    ]
    config = {"global": {"scrape_interval": "15s", "evaluation_interval": "15s"},
              "scrape_configs": [{"job_name": "lightmesh",
                                  "kubernetes_sd_configs": [{"role": "pod",
                                                             "namespaces": {"names": [namespace]}}],
                                  "relabel_configs": relabel}]}
    return json.dumps(config, indent=2)  # JSON is YAML: no YAML emitter needed in the pod


def _prometheus_label(name: str) -> str:
    """A Kubernetes label name as Prometheus' service discovery spells it (``app.kubernetes.io/name`` →
    ``app_kubernetes_io_name``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def prometheus_manifests(namespace: str, image: str) -> list[dict]:
    """A single-replica Prometheus (emptyDir storage, 2 days) with read access to the mesh pods."""
    labels = _labels(PROMETHEUS_NAME)
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(PROMETHEUS_NAME, namespace)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": _meta(PROMETHEUS_NAME, namespace),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": _meta(PROMETHEUS_NAME, namespace),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": PROMETHEUS_NAME},
         "subjects": [{"kind": "ServiceAccount", "name": PROMETHEUS_NAME, "namespace": namespace}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(PROMETHEUS_NAME, namespace),
         "data": {"prometheus.yml": prometheus_config(namespace)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(PROMETHEUS_NAME, namespace),
         "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                  "template": {"metadata": {"labels": labels}, "spec": {
                      "serviceAccountName": PROMETHEUS_NAME,
                      "containers": [{
                          "name": "prometheus", "image": image,
                          "args": ["--config.file=/etc/prometheus/prometheus.yml",
                                   "--storage.tsdb.path=/prometheus", "--storage.tsdb.retention.time=2d"],
                          "ports": [{"name": "web", "containerPort": PROMETHEUS_PORT, "protocol": "TCP"}],
                          "readinessProbe": {"httpGet": {"path": "/-/ready", "port": "web"}, "periodSeconds": 10},
                          # it writes to its emptyDir only (/prometheus)
                          "resources": _ADDON_RESOURCES,
                          "securityContext": {**_container_security(), "readOnlyRootFilesystem": True},
                          "volumeMounts": [{"name": "config", "mountPath": "/etc/prometheus"},
                                           {"name": "data", "mountPath": "/prometheus"}]}],
                      "volumes": [{"name": "config", "configMap": {"name": PROMETHEUS_NAME}},
                                  {"name": "data", "emptyDir": {}}]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": _meta(PROMETHEUS_NAME, namespace),
         "spec": {"selector": labels,
                  "ports": [{"name": "web", "port": PROMETHEUS_PORT, "targetPort": "web", "protocol": "TCP"}]}},
    ]


def dashboard_configmap(namespace: str) -> dict:
    """The Grafana dashboard, picked up by Grafana's sidecar from any namespace it watches."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(DASHBOARD_CONFIGMAP, namespace, dashboard.GRAFANA_SIDECAR_LABEL),
            "data": {"lightmesh.json": json.dumps(dashboard.build_dashboard(), indent=1, sort_keys=True)}}
