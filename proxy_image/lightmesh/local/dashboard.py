"""The Grafana dashboard's panels drawn with matplotlib from real scrapes of a local mesh.

The README's dashboard picture comes from here: ``python -m lightmesh.local.dashboard`` starts local
mode on ``examples/whoami`` in ACL mode, sends a mixed load through the mesh (plain requests, a
rate-limited Service, a canary split and short TCP exchanges with ``whoami-tcp``, all from the
``whoami-client`` pod's address, which the example's AccessPolicy lets in; and an ACL-denied caller:
a few requests from a ``whoami-server`` pod's address, answered 403), scrapes the proxy's and the
controller's ``/metrics`` every second, and draws the same panels (titles and sections from
``mesh_components.dashboard.PANELS``) with the same arithmetic as their PromQL
(:mod:`lightmesh.telemetry`). No Grafana or Prometheus is needed.

:func:`render` is pure apart from writing the PNG: scrapes in, picture out.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

from lightmesh import telemetry
from lightmesh.telemetry import Scrape

PROXY = "lightmesh_proxy_"
CONTROLLER = "lightmesh_controller_"


def _series(points: list[tuple[float, dict[str, float]]]) -> dict[str, tuple[list[float], list[float]]]:
    out: dict[str, tuple[list[float], list[float]]] = {}
    for t, values in points:
        for key, value in values.items():
            xs, ys = out.setdefault(key, ([], []))
            xs.append(t)
            ys.append(value)
    return out


def _gauge(scrape: Scrape, name: str, *label_keys: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for labels, value in scrape.get(name).items():
        d = dict(labels)
        out[" ".join(d.get(k, "") for k in label_keys) or name] += value
    return dict(out)


def panel_data(proxy: list[Scrape], controller: list[Scrape]) -> dict[str, dict[str, tuple[list[float], list[float]]]]:
    """Panel title → legend → (times, values), over consecutive scrape pairs."""
    t0 = proxy[0].at if proxy else 0.0
    panels: dict[str, list[tuple[float, dict[str, float]]]] = defaultdict(list)
    for before, after in zip(proxy, proxy[1:]):
        t = after.at - t0
        stats = telemetry.service_stats(before, after)
        panels["Requests/s by code class"].append(
            (t, {f"{s.service} {c}": v for s in stats for c, v in s.rps_by_class.items()}))
        panels["Error ratio (5xx)"].append((t, {s.service: s.error_ratio for s in stats}))
        panels["Latency p50 / p95 / p99"].append(
            (t, {f"{s.service} p{q}": v * 1000 for s in stats
                 for q, v in (("50", s.p50), ("95", s.p95), ("99", s.p99)) if v is not None}))
        panels["Retries/s"].append((t, {s.service: s.retries_per_s for s in stats}))
        panels["Circuit breaker state"].append((t, {s.service: float(s.breaker_state) for s in stats}))
        panels["Rate-limited and ACL-denied"].append(
            (t, {**{f"{s.service} 429": s.rate_limited_per_s for s in stats if s.rate_limited_per_s},
                 **{f"{s.service} denied": s.acl_denied_per_s for s in stats if s.acl_denied_per_s}}))
        l4 = telemetry.l4_stats(before, after)
        panels["TCP/UDP connections/s"].append((t, {f"{r.route} {r.protocol}": r.connections_per_s for r in l4}))
        panels["TCP/UDP bytes/s by direction"].append(
            (t, {f"{r.route} {direction}": value for r in l4
                 for direction, value in (("upstream", r.bytes_in_per_s), ("downstream", r.bytes_out_per_s))}))
        panels["Open connections per proxy"].append((t, _gauge(after, PROXY + "open_connections", "protocol")))
        versions = {"proxy": sum(after.get(PROXY + "config_version").values())}
        failed = sum(v for labels, v in after.get(PROXY + "config_reloads_total").items()
                     if dict(labels).get("result") == "failed")
        panels["Config reload failures"].append((t, {"proxy": failed}))
        panels["Config version per proxy"].append((t, versions))
    c0 = controller[0].at if controller else t0
    for before, after in zip(controller, controller[1:]):
        t = after.at - t0 if proxy else after.at - c0
        hist = telemetry._delta(before, after, CONTROLLER + "reconcile_duration_seconds_bucket")
        buckets: dict[float, float] = {}
        for labels, value in hist.items():
            le = dict(labels).get("le", "+Inf")
            bound = float("inf") if le in ("+Inf", "Inf") else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + value
        quantiles = {f"p{int(q * 100)}": telemetry.histogram_quantile(q, buckets) for q in (0.5, 0.99)}
        panels["Reconcile time p50 / p99"].append(
            (t, {k: v * 1000 for k, v in quantiles.items() if v is not None}))
        panels["Objects with errors"].append((t, _gauge(after, CONTROLLER + "object_errors", "kind")))
        version = sum(after.get(CONTROLLER + "config_version").values())
        panels["Config version per proxy"].append((t, {"controller": version}))
    return {title: _series(points) for title, points in panels.items()}


UNITS = {"Latency p50 / p95 / p99": "ms", "Reconcile time p50 / p99": "ms", "Error ratio (5xx)": "ratio",
         "Requests/s by code class": "req/s", "Retries/s": "1/s", "Rate-limited and ACL-denied": "1/s",
         "TCP/UDP connections/s": "conn/s", "TCP/UDP bytes/s by direction": "B/s"}


def render(proxy: list[Scrape], controller: list[Scrape], path: str | Path,
           title: str = "Lightmesh — local mode") -> Path:
    """Draw every dashboard panel (Grafana's dark look) and write the PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mesh_components.dashboard import PANELS

    data = panel_data(proxy, controller)
    cols = 3
    rows = (len(PANELS) + cols - 1) // cols
    plt.style.use("dark_background")
    fig, axes = plt.subplots(rows, cols, figsize=(16, 3.1 * rows), dpi=90)
    fig.patch.set_facecolor("#111217")
    for ax, panel in zip(axes.flat, PANELS):
        ax.set_facecolor("#181b1f")
        ax.set_title(f"{panel.section} · {panel.title}", fontsize=10, loc="left", color="#d8d9da")
        series = data.get(panel.title, {})
        for legend, (xs, ys) in sorted(series.items()):
            ax.plot(xs, ys, linewidth=1.4, marker="o", markersize=2.5, label=legend[:40])
        if panel.mappings:
            ax.set_yticks([v for v, _ in panel.mappings], [label for _, label in panel.mappings])
        if series:
            ax.legend(fontsize=6, loc="upper left", framealpha=0.3)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="#777")
        ax.set_ylabel(UNITS.get(panel.title, ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.15)
    for ax in list(axes.flat)[len(PANELS):]:
        ax.set_visible(False)
    fig.suptitle(title + "  (seconds since start on the x axes)", color="#d8d9da", fontsize=12)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, facecolor=fig.get_facecolor())
    plt.close(fig)
    return out


# ---------------------------------------------------------------------------- the README picture


def _scrape(url: str) -> Scrape:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return telemetry.parse(resp.read().decode(), at=time.monotonic())


async def record(example: Path, out: Path, seconds: float, dns_port: int) -> Path:
    """Local mode (ACL mode) + a bounded mixed load; scrapes every second; renders at the end."""
    import socket

    from lightmesh.local.demo import _overlay
    from lightmesh.local.harness import LocalMesh
    from lightmesh.local.traffic import http_burst, tcp_exchange

    proxy: list[Scrape] = []
    controller: list[Scrape] = []
    async with LocalMesh(example, acl=True, dns_port=dns_port) as mesh:
        await mesh.apply(_overlay(mesh))
        by_name = {s.name: s for s in mesh.services()}
        client = mesh.cluster.pods_of("whoami", "whoami-client")[0]["status"]["podIP"]  # let in
        intruder = mesh.cluster.pods_of("whoami", "whoami-server")[0]["status"]["podIP"]  # no TrafficTarget: 403
        http_port, tcp_port = mesh.local_port(80), mesh.local_port(8080)
        # a few long-lived client connections, so the open-connections panel has something to show
        held = [socket.create_connection((by_name[n].address, p), source_address=(client, 0)) for n, p in
                (("whoami", http_port), ("whoami", http_port), ("whoami-tcp", tcp_port))]
        start = time.monotonic()
        deadline = start + seconds
        changed = False
        while time.monotonic() < deadline:
            if not changed and time.monotonic() > start + seconds / 2:
                # a config change mid-run: a new Service shows up in reconcile time and config versions
                extra = dict(next(o for o in mesh.manifests if o.get("kind") == "Service"
                                  and o["metadata"]["name"] == "whoami"))
                extra["metadata"] = {"name": "whoami-extra", "namespace": "whoami"}
                await mesh.apply([extra])
                changed = True
            proxy.append(await asyncio.to_thread(_scrape, mesh.admin_url + "/metrics"))
            controller.append(await asyncio.to_thread(_scrape, mesh.api_url + "/metrics"))
            for name, count, source in (("whoami", 60, client), ("whoami-canary", 40, client),
                                        ("whoami-limited", 12, client), ("whoami", 4, intruder)):
                svc = by_name[name]
                await asyncio.to_thread(http_burst, svc.address, http_port, f"{name}.whoami.traefik.mesh", count,
                                        source)
            for _ in range(5):  # the TCP/UDP panels: short TCP exchanges, as the client pod
                await asyncio.to_thread(tcp_exchange, by_name["whoami-tcp"].address, tcp_port, b"my data", client)
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() % 1.0)))
        proxy.append(await asyncio.to_thread(_scrape, mesh.admin_url + "/metrics"))
        controller.append(await asyncio.to_thread(_scrape, mesh.api_url + "/metrics"))
        for sock in held:
            sock.close()
    return render(proxy, controller, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightmesh.local.dashboard", description=__doc__.splitlines()[0])
    parser.add_argument("--example", type=Path, default=None)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/dashboard.png"))
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--dns-port", type=int, default=15353)  # not 5353: leaves a running `lightmesh local` alone
    args = parser.parse_args(argv)
    from lightmesh.local.demo import default_example

    path = asyncio.run(record(args.example or default_example(), args.output, args.seconds, args.dns_port))
    print(f"dashboard rendered to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
