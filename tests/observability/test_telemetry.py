"""Prometheus text → per-service rates, error ratio and quantiles, as the dashboard's PromQL does."""

import math

import pytest

from lightmesh import telemetry as t

BEFORE = """
# HELP lightmesh_proxy_requests_total HTTP requests answered
# TYPE lightmesh_proxy_requests_total counter
lightmesh_proxy_requests_total{service="whoami",code="200",method="GET"} 100
lightmesh_proxy_requests_total{service="whoami",code="503",method="GET"} 0
lightmesh_proxy_request_duration_seconds_bucket{service="whoami",le="0.001"} 50
lightmesh_proxy_request_duration_seconds_bucket{service="whoami",le="0.01"} 100
lightmesh_proxy_request_duration_seconds_bucket{service="whoami",le="+Inf"} 100
lightmesh_proxy_retries_total{service="whoami"} 1
"""

AFTER = """
lightmesh_proxy_requests_total{service="whoami",code="200",method="GET"} 280
lightmesh_proxy_requests_total{service="whoami",code="503",method="GET"} 20
lightmesh_proxy_requests_total{service="other \\"q\\"",code="404",method="GET"} 10
lightmesh_proxy_request_duration_seconds_bucket{service="whoami",le="0.001"} 150
lightmesh_proxy_request_duration_seconds_bucket{service="whoami",le="0.01"} 290
lightmesh_proxy_request_duration_seconds_bucket{service="whoami",le="+Inf"} 300
lightmesh_proxy_retries_total{service="whoami"} 5
lightmesh_proxy_rate_limited_total{service="whoami"} 8
lightmesh_proxy_acl_denied_total{protocol="http",service="whoami"} 2
lightmesh_proxy_circuit_breaker_state{service="whoami"} 1
garbage line here
"""


def test_parse_labels_values_and_escapes():
    scrape = t.parse(AFTER, at=12.0)
    series = scrape.get("lightmesh_proxy_requests_total")
    assert series[(("code", "404"), ("method", "GET"), ("service", 'other "q"'))] == 10
    assert scrape.at == 12.0 and "garbage" not in scrape.series


def test_service_stats_over_an_interval():
    before, after = t.parse(BEFORE, at=0.0), t.parse(AFTER, at=2.0)
    stats = {s.service: s for s in t.service_stats(before, after)}
    whoami = stats["whoami"]
    assert whoami.rps == pytest.approx(100.0)  # (180 + 20) / 2 s
    assert whoami.rps_by_class == {"2xx": 90.0, "5xx": 10.0}
    assert whoami.error_ratio == pytest.approx(0.1)
    # 200 new requests: 100 ≤ 1 ms, 90 in (1, 10] ms, 10 above 10 ms
    assert whoami.p50 == pytest.approx(0.001)
    assert whoami.p95 == pytest.approx(0.01)  # rank 190 = top of the 10 ms bucket
    assert whoami.p99 == pytest.approx(0.01)  # in +Inf: the highest finite bound, as Prometheus does
    assert whoami.retries_per_s == 2.0 and whoami.rate_limited_per_s == 4.0 and whoami.acl_denied_per_s == 1.0
    assert whoami.breaker_state == 1
    assert stats['other "q"'].rps_by_class == {"4xx": 5.0}


def test_counter_reset_counts_from_zero():
    stats = t.service_stats(t.parse(AFTER, 0), t.parse(BEFORE, 1))
    assert {s.service: s.rps for s in stats}["whoami"] == pytest.approx(100.0)  # 100 after a restart


def test_histogram_quantile_matches_prometheus_interpolation():
    buckets = {0.1: 10.0, 0.2: 30.0, math.inf: 40.0}
    assert t.histogram_quantile(0.25, buckets) == pytest.approx(0.1)
    assert t.histogram_quantile(0.5, buckets) == pytest.approx(0.15)
    assert t.histogram_quantile(0.99, buckets) == pytest.approx(0.2)
    assert t.histogram_quantile(0.5, {}) is None and t.histogram_quantile(0.5, {1.0: 0.0}) is None


def test_summary_table():
    stats = t.service_stats(t.parse(BEFORE, 0), t.parse(AFTER, 2))
    table = t.summary_table(stats, "title")
    assert table.splitlines()[0] == "title"
    row = next(line for line in table.splitlines() if line.startswith("whoami "))
    assert "100.0" in row and "10.0%" in row and "open" in row
    assert "(no requests yet)" in t.summary_table([])


def test_tcp_and_udp_routes_get_their_own_rows():
    """Issue 8 item 4 says per service: L4 routes have no requests, so they get connections/s,
    bytes/s each way, upstream errors and ACL refusals — from the proxy's real exporter."""
    from lightmesh.proxy.metrics import ProxyMetrics, merge, render

    metrics = ProxyMetrics()
    tcp, udp, web = "whoami/whoami-tcp:8080", "whoami/whoami-udp:8080", "whoami/whoami:80"

    def scrape(at):
        return t.parse(render(merge([metrics.snapshot()])), at=at)

    metrics.l4_connection(tcp, "tcp")
    metrics.l4_connection(udp, "udp")
    before = scrape(0.0)
    for _ in range(10):
        metrics.l4_connection(tcp, "tcp")
    metrics.l4_relayed(tcp, "tcp", "upstream", 2000)
    metrics.l4_relayed(tcp, "tcp", "downstream", 4000)
    metrics.upstream_error(tcp, "connect")
    metrics.denied(tcp, "tcp")
    metrics.denied(tcp, "tcp")
    metrics.request(web, 200, "GET", 0.001)
    metrics.denied(web)
    after = scrape(2.0)

    routes = {s.route: s for s in t.l4_stats(before, after)}
    assert routes[tcp] == t.L4Stats(tcp, "tcp", connections_per_s=5.0, bytes_in_per_s=1000.0, bytes_out_per_s=2000.0,
                                    errors_per_s=0.5, denied_per_s=1.0)
    assert routes[udp] == t.L4Stats(udp, "udp", 0.0, 0.0, 0.0, 0.0, 0.0)  # idle, but still listed
    http = {s.service: s for s in t.service_stats(before, after)}
    assert set(http) == {web} and http[web].acl_denied_per_s == 0.5  # L4 refusals stay out of the HTTP rows

    table = t.full_table(before, after, "title")
    row = next(line for line in table.splitlines() if line.startswith(tcp))
    assert row.split() == [tcp, "tcp", "5.0", "1.0", "kB", "2.0", "kB", "0.5", "1.0"]
    assert "tcp/udp route" in table and table.splitlines()[0] == "title"
    assert "tcp/udp route" not in t.full_table(t.parse(BEFORE, 0), t.parse(AFTER, 2))  # no L4: no section
