"""The Grafana dashboard: generated file in sync, and every query uses metrics the exporters export."""

import json
import re

from mesh_components import dashboard

PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "count", "rate", "increase", "histogram_quantile", "label_replace",
                    "by", "le", "service", "route", "direction", "instance", "protocol", "kind", "code_class", "code",
                    "result", "or", "query_result", "label_values"}


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
        names = metric_names(expr)
        assert names, expr
        assert names <= exported, f"{sorted(names - exported)} not exported; query: {expr}"


def selectors(expr: str) -> list[tuple[str, str]]:
    """(metric, label) for every ``metric{label=~"$service"}`` of an expression."""
    return [(name, label) for name, matchers in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}", expr)
            for label in re.findall(r'(\w+)=~"\$service"', matchers)]


def test_the_service_selector_filters_on_a_label_each_series_has():
    # the HTTP series carry it as service, the L4 ones as route (same values: <ns>/<svc>:<port>)
    from lightmesh.proxy import metrics as proxy_metrics

    board = dashboard.build_dashboard()
    filtered = [pair for expr in all_exprs(board) for pair in selectors(expr)]
    assert ("lightmesh_proxy_l4_connections_total", "route") in filtered
    assert ("lightmesh_proxy_l4_bytes_total", "route") in filtered
    for name, label in filtered:
        spec = proxy_metrics.METRICS[re.sub(r"_bucket$", "", name)]
        assert label in spec.labels, (name, label)


def test_the_service_variable_lists_http_services_and_l4_routes():
    [variable] = [v for v in dashboard.build_dashboard()["templating"]["list"] if v["name"] == "service"]
    definition = variable["definition"]
    assert variable["query"]["query"] == definition and definition.startswith("query_result(")
    for source in ("lightmesh_proxy_requests_total", "lightmesh_proxy_l4_connections_total",
                   "lightmesh_proxy_acl_denied_total"):
        assert source in definition, source
    assert '"service", "$1", "route", "(.*)"' in definition  # the routes' label read as service
    # Grafana applies the regex to each line of the instant query's result
    pattern = re.compile(variable["regex"].strip("/"))
    assert pattern.search('{service="whoami/whoami-tcp:8080"} 1 1700000000000').group(1) == "whoami/whoami-tcp:8080"


def test_a_row_of_tcp_udp_panels_by_route():
    board = dashboard.build_dashboard()
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["Services", "TCP/UDP routes", "Proxies", "Controller"]
    l4 = {p.title: p for p in dashboard.PANELS if p.section == "TCP/UDP routes"}
    [(connections, _)] = l4["TCP/UDP connections/s"].targets
    [(relayed, legend)] = l4["TCP/UDP bytes/s by direction"].targets
    assert connections.startswith("sum by (route, protocol) (rate(lightmesh_proxy_l4_connections_total{")
    assert relayed.startswith("sum by (route, direction) (rate(lightmesh_proxy_l4_bytes_total{")
    assert legend == "{{route}} {{direction}}"
    ys = [p["gridPos"]["y"] for p in board["panels"]]
    assert ys == sorted(ys)  # laid out top to bottom, no overlap of rows


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
                   "lightmesh_controller_object_errors", "lightmesh_proxy_l4_connections_total",
                   "lightmesh_proxy_l4_bytes_total"):
        assert needle in text, needle


def test_the_service_variable_and_the_l4_panels_evaluate_in_prometheus(tmp_path):
    """Real PromQL evaluation (``promtool test rules``) over series as the proxy exports them."""
    import shutil
    import subprocess

    import pytest
    import yaml

    if not shutil.which("promtool"):
        pytest.skip("promtool (Prometheus) is not installed")
    board = dashboard.build_dashboard()
    [variable] = [v for v in board["templating"]["list"] if v["name"] == "service"]
    values = variable["definition"].removeprefix("query_result(").removesuffix(")")
    l4 = {p.title: p.targets[0][0].replace("$__rate_interval", "1m").replace("$service", ".*")
          for p in dashboard.PANELS if p.section == "TCP/UDP routes"}
    tcp = 'route="whoami/whoami-tcp:8080",protocol="tcp"'
    series = [('lightmesh_proxy_requests_total{service="whoami/whoami:80",code="200",method="GET"}', "0+60x5"),
              (f"lightmesh_proxy_l4_connections_total{{{tcp}}}", "0+120x5"),
              (f'lightmesh_proxy_l4_bytes_total{{{tcp},direction="upstream"}}', "0+600x5"),
              (f'lightmesh_proxy_l4_bytes_total{{{tcp},direction="downstream"}}', "0+1200x5"),
              ('lightmesh_proxy_acl_denied_total{service="whoami/closed-tcp:9000",protocol="tcp"}', "0+1x5")]
    tests = [(values, [('{service="whoami/whoami:80"}', 1), ('{service="whoami/whoami-tcp:8080"}', 1),
                       ('{service="whoami/closed-tcp:9000"}', 1)]),
             (l4["TCP/UDP connections/s"], [(f"{{{tcp}}}", 2)]),
             (l4["TCP/UDP bytes/s by direction"], [('{route="whoami/whoami-tcp:8080",direction="upstream"}', 10),
                                                   ('{route="whoami/whoami-tcp:8080",direction="downstream"}', 20)])]
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [{"expr": expr, "eval_time": "5m",
                              "exp_samples": [{"labels": labels, "value": value} for labels, value in samples]}
                             for expr, samples in tests]}]}))
    result = subprocess.run(["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
