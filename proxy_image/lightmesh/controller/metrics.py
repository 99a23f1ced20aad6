"""The controller's Prometheus metrics (off the data path, so ``prometheus_client`` is fine here).

:data:`METRICS` lists every series the controller exports; the Grafana dashboard's queries are
checked against it (``tests/observability/test_dashboard.py``). :class:`ControllerMetrics` owns a
private registry so several controllers in one test process never collide.
"""

from __future__ import annotations

from lightmesh.telemetry import MetricSpec

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

PREFIX = "lightmesh_controller_"




METRICS: tuple[MetricSpec, ...] = (
    MetricSpec(PREFIX + "reconcile_duration_seconds", "histogram",
               "Time to rebuild topology and proxy configuration after a change"),
    MetricSpec(PREFIX + "objects", "gauge", "Objects in the controller's caches, by kind", ("kind",)),
    MetricSpec(PREFIX + "object_errors", "gauge", "Objects with an error in the current topology, by kind",
               ("kind",)),
    MetricSpec(PREFIX + "config_version", "gauge", "Version of the newest proxy configuration"),
    MetricSpec(PREFIX + "is_leader", "gauge", "1 while this replica holds the leader Lease"),
    MetricSpec(PREFIX + "watch_restarts_total", "counter",
               "Watches restarted, by kind and reason (gone = re-list after 410, error = backoff)",
               ("kind", "reason")),
    MetricSpec(PREFIX + "shadow_service_writes_total", "counter",
               "Shadow Service writes by the leader, by action (create, update, delete, error)", ("action",)),
)

_TYPES = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._m: dict[str, object] = {}
        for spec in METRICS:
            cls = _TYPES[spec.type]
            # prometheus_client appends _total to counters itself
            name = spec.name.removesuffix("_total") if spec.type == "counter" else spec.name
            kwargs = {"buckets": _BUCKETS} if spec.type == "histogram" else {}
            self._m[spec.name] = cls(name, spec.help, spec.labels, registry=self.registry, **kwargs)

    def __getitem__(self, name: str):
        """``metrics["lightmesh_controller_objects"].labels(kind="Service").set(3)``"""
        return self._m[name if name.startswith(PREFIX) else PREFIX + name]

    def render(self) -> bytes:
        return generate_latest(self.registry)
