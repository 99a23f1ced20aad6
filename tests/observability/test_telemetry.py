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
