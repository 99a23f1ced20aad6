"""The dashboard picture: real exporter output (proxy recorder, controller registry) → panels → PNG."""

from lightmesh import telemetry
from lightmesh.controller.metrics import ControllerMetrics
from lightmesh.local import dashboard as local_dashboard
from lightmesh.proxy.metrics import ProxyMetrics, merge, render
from mesh_components.dashboard import PANELS


def _scrapes():
    proxy, controller = ProxyMetrics(), ControllerMetrics()
    proxy_scrapes, controller_scrapes = [], []
    for second in range(4):
        for _ in range(10):
            proxy.request("whoami/whoami:80", 200, "GET", 0.002)
        proxy.request("whoami/whoami:80", 503, "GET", 0.5)
        proxy.rate_limit("whoami/limited:80")
        proxy.request("whoami/limited:80", 429, "GET", 0.0001)
        for _ in range(3):
            proxy.l4_connection("whoami/whoami-tcp:8080", "tcp")
            proxy.l4_relayed("whoami/whoami-tcp:8080", "tcp", "upstream", 7)
            proxy.l4_relayed("whoami/whoami-tcp:8080", "tcp", "downstream", 17)
        controller["reconcile_duration_seconds"].observe(0.003)
        controller["object_errors"].labels(kind="Service").set(1)
        controller["config_version"].set(second + 1)
        proxy.config_applied(second + 1)
        text = render(merge([proxy.snapshot()]))
        proxy_scrapes.append(telemetry.parse(text, at=float(second)))
        controller_scrapes.append(telemetry.parse(controller.render().decode(), at=float(second)))
    return proxy_scrapes, controller_scrapes


def test_panel_data_uses_the_dashboard_arithmetic():
    data = local_dashboard.panel_data(*_scrapes())
    assert set(data) <= {p.title for p in PANELS}
    xs, ys = data["Requests/s by code class"]["whoami/whoami:80 2xx"]
    assert xs == [1.0, 2.0, 3.0] and ys == [10.0, 10.0, 10.0]
    _, ratio = data["Error ratio (5xx)"]["whoami/whoami:80"]
    assert ratio == [1 / 11] * 3
    _, limited = data["Rate-limited and ACL-denied"]["whoami/limited:80 429"]
    assert limited == [1.0] * 3
    _, connections = data["TCP/UDP connections/s"]["whoami/whoami-tcp:8080 tcp"]
    assert connections == [3.0] * 3
    _, upstream = data["TCP/UDP bytes/s by direction"]["whoami/whoami-tcp:8080 upstream"]
    _, downstream = data["TCP/UDP bytes/s by direction"]["whoami/whoami-tcp:8080 downstream"]
    assert (upstream, downstream) == ([21.0] * 3, [51.0] * 3)
    _, errors = data["Objects with errors"]["Service"]
    assert errors == [1.0] * 3
    _, versions = data["Config version per proxy"]["controller"]
    assert versions == [2.0, 3.0, 4.0]


def test_every_panel_gets_data_from_the_local_renderer():
    data = local_dashboard.panel_data(*_scrapes())
    assert set(data) == {p.title for p in PANELS}


def test_render_writes_a_png_with_every_panel(tmp_path):
    out = local_dashboard.render(*_scrapes(), tmp_path / "board.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
