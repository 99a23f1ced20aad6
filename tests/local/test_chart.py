"""The demo's latency chart is a real PNG with one row per service."""

import pytest

from lightmesh.local.chart import latency_chart, percentile


def test_percentile():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 51.0 or percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile([], 50) == 0.0


def test_chart_is_written_as_png(tmp_path):
    path = latency_chart({"whoami": [0.001, 0.002, 0.0015] * 20, "whoami-canary": [0.003] * 10, "empty": []},
                         tmp_path / "latency.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_no_samples_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no latency samples"):
        latency_chart({"a": []}, tmp_path / "x.png")
