"""Latency-distribution chart for ``lightmesh demo`` (matplotlib, headless Agg backend).

One box-and-whisker row per service over the request latencies the tour measured through the mesh,
with p50/p99 annotated, written as a PNG. matplotlib is imported only here (the ``bench``/``dev``
extras install it), so the proxy image never needs it.
"""

from __future__ import annotations

from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def latency_chart(samples: dict[str, list[float]], path: str | Path, title: str = "Latency through the mesh") -> Path:
    """``samples``: service → latencies in seconds. Returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    services = [name for name, values in samples.items() if values]
    if not services:
        raise ValueError("no latency samples to chart")
    data_ms = [[v * 1000 for v in samples[name]] for name in services]
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.8 * len(services)), dpi=110)
    ax.boxplot(data_ms, orientation="horizontal", showfliers=True, whis=(1, 99),
               flierprops={"markersize": 2, "alpha": 0.4})
    labels = [f"{name}\np50 {percentile(v, 50):.2f} ms · p99 {percentile(v, 99):.2f} ms · n={len(v)}"
              for name, v in zip(services, data_ms)]
    ax.set_yticks(range(1, len(services) + 1), labels, fontsize=8)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("latency (ms, log scale) — whiskers at p1/p99")
    ax.set_title(title)
    ax.grid(axis="x", which="both", alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out)
    plt.close(fig)
    return out
