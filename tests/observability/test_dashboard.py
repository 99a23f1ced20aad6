"""The Grafana dashboard: generated file in sync, and every query uses metrics the exporters export."""

import json
import re

from mesh_components import dashboard

PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "rate", "increase", "histogram_quantile", "label_replace", "by",
                    "le", "service", "instance", "protocol", "kind", "code_class", "code", "result", "or"}


def exporter_series() -> set[str]:
    """Every series name the proxy and controller expose (histograms as _bucket/_sum/_count)."""
    from lightmesh.controller import metrics as controller_metrics
    from lightmesh.proxy import metrics as proxy_metrics

    specs = [(m.name, m.type) for m in proxy_metrics.METRICS.values()]
    specs += [(m.name, m.type) for m in controller_metrics.METRICS]
    names = set()
    for name, kind in specs:
        names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', '""', expr)  # label values and regexes are not metric names
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    return {tok for tok in re.findall(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr) if tok not in PROMQL_FUNCTIONS}


def all_exprs(board: dict) -> list[str]:
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    exprs += [v["definition"] for v in board["templating"]["list"] if "definition" in v]
    return exprs


def test_committed_json_is_the_generated_one():
    assert json.loads(dashboard.DASHBOARD_FILE.read_text()) == dashboard.build_dashboard()


def test_every_query_uses_exported_metrics_only():
    exported = exporter_series()
    board = dashboard.build_dashboard()
    exprs = all_exprs(board)
    assert len(exprs) >= 15
    for expr in exprs:
        names = metric_names(expr.replace("label_values(", "").replace(", service)", ")"))
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} not exported; query: {expr}"


def test_the_check_catches_a_wrong_name():
    assert metric_names("rate(lightmesh_proxy_requestz_total[5m])") - exporter_series() == {
        "lightmesh_proxy_requestz_total"}


def test_covers_what_the_issue_asks_for():
    text = json.dumps(dashboard.build_dashboard())
    for needle in ("lightmesh_proxy_requests_total", "code_class", "histogram_quantile(0.99",
                   "lightmesh_proxy_retries_total", "lightmesh_proxy_circuit_breaker_state",
                   "lightmesh_proxy_rate_limited_total", "lightmesh_proxy_acl_denied_total",
                   "lightmesh_proxy_open_connections", "lightmesh_proxy_config_version",
                   'result=\\"failed\\"', "lightmesh_controller_reconcile_duration_seconds_bucket",
                   "lightmesh_controller_object_errors"):
        assert needle in text, needle
