"""The Grafana dashboard for Lightmesh, built as data (pure; no Pulumi or Grafana needed).

``build_dashboard()`` is the single source: ``mesh_components/dashboards/lightmesh.json`` is its
output (a test keeps the two equal) and MeshInstall ships the same JSON in a ConfigMap labelled for
Grafana's dashboard sidecar. Every query uses only metric names the proxy
(``lightmesh.proxy.metrics.METRICS``) and the controller (``lightmesh.controller.metrics.METRICS``)
really export; a test checks each expression against both registries.

``PANELS`` is also what ``lightmesh.local.dashboard`` renders with matplotlib for the README, so the
picture users see first shows the same panels they get in Grafana.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

DASHBOARD_UID = "lightmesh-mesh"
DASHBOARD_FILE = Path(__file__).resolve().parent / "dashboards" / "lightmesh.json"
GRAFANA_SIDECAR_LABEL = {"grafana_dashboard": "1"}

SVC = 'service=~"$service"'
ROUTE = 'route=~"$service"'  # an L4 route's label value is a service's (<ns>/<svc>:<port>)
RATE = "$__rate_interval"
# $service: the HTTP services and the TCP/UDP routes the proxies have counted (the route label is
# named route on the L4 series, service elsewhere; both read <ns>/<svc>:<port>)
SERVICE_VALUES = ('query_result(count by (service) (lightmesh_proxy_requests_total) or count by (service) '
                  '(label_replace(lightmesh_proxy_l4_connections_total, "service", "$1", "route", "(.*)")) or '
                  'count by (service) (lightmesh_proxy_acl_denied_total))')


@dataclass(frozen=True)
class Panel:
    title: str
    section: str  # one of SECTIONS
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    description: str = ""
    mappings: tuple[tuple[int, str], ...] = ()
    width: int = 12


PANELS: tuple[Panel, ...] = (
    Panel("Requests/s by code class", "Services", (
        (f'sum by (service, code_class) (label_replace(rate(lightmesh_proxy_requests_total{{{SVC}}}[{RATE}]), '
         f'"code_class", "${{1}}xx", "code", "([0-9])..")) ', "{{service}} {{code_class}}"),), "reqps",
          "HTTP requests answered by the proxies, per mesh service and status class."),
    Panel("Error ratio (5xx)", "Services", (
        (f'sum by (service) (rate(lightmesh_proxy_requests_total{{{SVC},code=~"5.."}}[{RATE}])) / '
         f'sum by (service) (rate(lightmesh_proxy_requests_total{{{SVC}}}[{RATE}]))', "{{service}}"),),
          "percentunit", "Share of requests answered with a 5xx (upstream errors, open breakers, timeouts)."),
    Panel("Latency p50 / p95 / p99", "Services", tuple(
        (f"histogram_quantile({q}, sum by (le, service) "
         f"(rate(lightmesh_proxy_request_duration_seconds_bucket{{{SVC}}}[{RATE}])))", f"{{{{service}}}} p{p}")
        for q, p in ((0.5, 50), (0.95, 95), (0.99, 99))), "s",
          "Request head to last response byte, through the proxy."),
    Panel("Retries/s", "Services", (
        (f"sum by (service) (rate(lightmesh_proxy_retries_total{{{SVC}}}[{RATE}]))", "{{service}}"),), "ops",
          "Upstream attempts repeated after a connect failure or reset (retry-attempts)."),
    Panel("Circuit breaker state", "Services", (
        # the worst state: open (1) wherever a proxy has it open, else the highest (recovering 2, closed 0)
        (f"max by (service) (lightmesh_proxy_circuit_breaker_state{{{SVC}}} == 1) or "
         f"max by (service) (lightmesh_proxy_circuit_breaker_state{{{SVC}}})", "{{service}}"),), "short",
          "Worst state over all proxies: 0 closed, 1 open (503), 2 recovering.",
          ((0, "closed"), (1, "open"), (2, "recovering"))),
    Panel("Rate-limited and ACL-denied", "Services", (
        (f"sum by (service) (rate(lightmesh_proxy_rate_limited_total{{{SVC}}}[{RATE}]))", "{{service}} 429"),
        (f"sum by (service) (rate(lightmesh_proxy_acl_denied_total{{{SVC}}}[{RATE}]))", "{{service}} denied"),
    ), "ops", "Requests answered 429 by a rate limit, and requests or connections refused by the ACL."),
    Panel("TCP/UDP connections/s", "TCP/UDP routes", (
        (f"sum by (route, protocol) (rate(lightmesh_proxy_l4_connections_total{{{ROUTE}}}[{RATE}]))",
         "{{route}} {{protocol}}"),), "cps",
          "TCP connections accepted and UDP sessions opened per L4 route (ACL-denied ones not included)."),
    Panel("TCP/UDP bytes/s by direction", "TCP/UDP routes", (
        (f"sum by (route, direction) (rate(lightmesh_proxy_l4_bytes_total{{{ROUTE}}}[{RATE}]))",
         "{{route}} {{direction}}"),), "Bps",
          "Bytes relayed per L4 route: upstream is client → server, downstream server → client."),
    Panel("Open connections per proxy", "Proxies", (
        ("sum by (instance, protocol) (lightmesh_proxy_open_connections)", "{{instance}} {{protocol}}"),), "short"),
    Panel("Config version per proxy", "Proxies", (
        ("max by (instance) (lightmesh_proxy_config_version)", "{{instance}}"),
        ("max(lightmesh_controller_config_version)", "controller"),), "short",
          "A proxy whose version lags the controller's has not applied the newest config."),
    Panel("Config reload failures", "Proxies", (
        (f'sum by (instance) (increase(lightmesh_proxy_config_reloads_total{{result="failed"}}[{RATE}]))',
         "{{instance}}"),), "short", "Configurations a proxy refused (it keeps serving the last good one)."),
    Panel("Reconcile time p50 / p99", "Controller", tuple(
        (f"histogram_quantile({q}, sum by (le) (rate(lightmesh_controller_reconcile_duration_seconds_bucket"
         f"[{RATE}])))", f"p{p}") for q, p in ((0.5, 50), (0.99, 99))), "s",
          "Time to rebuild topology and proxy configuration after a change."),
    Panel("Objects with errors", "Controller", (
        # every replica reconciles and exports the same gauge: max, not sum, over replicas
        ("max by (kind) (lightmesh_controller_object_errors)", "{{kind}}"),), "short",
          "Objects left out of the mesh or reported with a problem (see /api/topology/current and Events)."),
)


SECTIONS = ("Services", "TCP/UDP routes", "Proxies", "Controller")  # the dashboard's rows, in order


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict:
    targets = [{"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"}}
               for i, (expr, legend) in enumerate(panel.targets)]
    defaults: dict = {"unit": panel.unit}
    if panel.mappings:
        defaults["mappings"] = [{"type": "value", "options": {str(v): {"text": t, "index": i}
                                                               for i, (v, t) in enumerate(panel.mappings)}}]
    return {"id": panel_id, "type": "timeseries", "title": panel.title, "description": panel.description,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"x": x, "y": y, "w": panel.width, "h": 8},
            "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"}, "tooltip": {"mode": "multi"}},
            "targets": targets}


def build_dashboard() -> dict:
    panels: list[dict] = []
    y, panel_id = 0, 1
    for section in SECTIONS:
        panels.append({"id": panel_id, "type": "row", "title": section, "collapsed": False,
                       "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []})
        panel_id, y = panel_id + 1, y + 1
        x = 0
        for panel in (p for p in PANELS if p.section == section):
            if x + panel.width > 24:
                x, y = 0, y + 8
            panels.append(_panel_json(panel, panel_id, x, y))
            panel_id, x = panel_id + 1, x + panel.width
        y += 8
    return {
        "uid": DASHBOARD_UID, "title": "Lightmesh", "tags": ["lightmesh", "service-mesh"],
        "schemaVersion": 39, "version": 1, "editable": True, "timezone": "browser",
        "time": {"from": "now-30m", "to": "now"}, "refresh": "10s",
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            {"name": "service", "type": "query", "label": "Mesh service", "multi": True, "includeAll": True,
             "allValue": ".*", "current": {"text": "All", "value": "$__all"},
             "datasource": {"type": "prometheus", "uid": "${datasource}"},
             "query": {"query": SERVICE_VALUES, "refId": "service"}, "regex": '/service="([^"]+)"/',
             "definition": SERVICE_VALUES, "refresh": 2, "sort": 1},
        ]},
        "panels": panels,
    }


def dashboard_json() -> str:
    return json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":  # regenerate the committed file: python -m mesh_components.dashboard
    DASHBOARD_FILE.parent.mkdir(exist_ok=True)
    DASHBOARD_FILE.write_text(dashboard_json())
    print(f"wrote {DASHBOARD_FILE}")
