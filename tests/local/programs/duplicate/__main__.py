"""case=split: an AccessPolicy and a TrafficSplit both named "api" (each with HTTP matches) — distinct
objects; case=services: two resources declaring the Service shop/api."""
import pulumi
import pulumi_kubernetes as k8s

from mesh_components import AccessPolicy, TrafficSplit

case = pulumi.Config().require("case")
if case == "split":
    AccessPolicy("api", {"namespace": "shop", "destination_service_account": "api",
                         "sources": [{"service_account": "web"}],
                         "http_matches": [{"name": "reads", "methods": ["GET"]}]})
    TrafficSplit("api", {"namespace": "shop", "service": "api",
                         "backends": [{"service": "api-v1", "weight": 90}, {"service": "api-v2", "weight": 10}],
                         "matches": [{"name": "canary", "headers": {"x-canary": "1"}}]})
else:
    for resource, port in (("api-a", 80), ("api-b", 81)):
        k8s.core.v1.Service(resource, metadata={"name": "api", "namespace": "shop"},
                            spec={"selector": {"app": "api"}, "ports": [{"port": port}]})
