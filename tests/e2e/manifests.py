"""The whoami example as plain manifests, for end-to-end tests independent of the Pulumi layer."""

NS = "whoami"


def _deployment(name, image, replicas, sa, labels, port, protocol="TCP"):
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"serviceAccountName": sa, "containers": [
                                      {"name": name, "image": image,
                                       "ports": [{"containerPort": port, "protocol": protocol, "name": "main"}]}]}}}}


def _service(name, selector, port, annotations=None, protocol="TCP", target="main"):
    meta = {"name": name, "namespace": NS}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta,
            "spec": {"selector": selector, "ports": [{"name": "main", "port": port, "protocol": protocol,
                                                      "targetPort": target}]}}


def whoami(acl_policy: bool = True) -> list[dict]:
    objects = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "whoami-server", "namespace": NS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "whoami-client", "namespace": NS}},
        _deployment("whoami", "traefik/whoami:v1.6.0", 2, "whoami-server", {"app": "whoami"}, 80),
        _deployment("whoami-tcp", "traefik/whoamitcp:v0.1.0", 2, "whoami-server", {"app": "whoami-tcp"}, 8080),
        _deployment("whoami-udp", "traefik/whoamiudp:v0.2.0", 1, "whoami-server", {"app": "whoami-udp"}, 8080, "UDP"),
        _service("whoami", {"app": "whoami"}, 80, {"mesh.traefik.io/traffic-type": "http",
                                                   "mesh.traefik.io/retry-attempts": "2"}),
        _service("whoami-tcp", {"app": "whoami-tcp"}, 8080, {"mesh.traefik.io/traffic-type": "tcp"}),
        _service("whoami-udp", {"app": "whoami-udp"}, 8080, {"mesh.traefik.io/traffic-type": "udp"}, "UDP"),
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "whoami-client", "namespace": NS},
         "spec": {"serviceAccountName": "whoami-client",
                  "containers": [{"name": "client", "image": "giantswarm/tiny-tools:3.9"}]}},
    ]
    if acl_policy:
        objects += [
            {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
             "metadata": {"name": "whoami-routes", "namespace": NS},
             "spec": {"matches": [{"name": "all", "pathRegex": "/.*", "methods": ["*"]}]}},
            {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "TCPRoute",
             "metadata": {"name": "whoami-tcp-route", "namespace": NS}, "spec": {}},
            {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
             "metadata": {"name": "client-to-server", "namespace": NS},
             "spec": {"destination": {"kind": "ServiceAccount", "name": "whoami-server", "namespace": NS},
                      "sources": [{"kind": "ServiceAccount", "name": "whoami-client", "namespace": NS}],
                      "rules": [{"kind": "HTTPRouteGroup", "name": "whoami-routes", "matches": ["all"]},
                                {"kind": "TCPRoute", "name": "whoami-tcp-route"}]}},
        ]
    return objects


def extra_service(name: str, annotations: dict) -> dict:
    return _service(name, {"app": "whoami"}, 80, annotations)


def gateway_canary() -> list[dict]:
    """whoami plus a v2 Deployment and a Gateway API HTTPRoute on the whoami Service (GAMMA):
    requests with ``X-Canary: 1`` go to v2 (tagged ``X-Route: canary``), ``/v2/...`` too, everything else
    to v1."""
    return whoami(acl_policy=False) + [
        _deployment("whoami-v2", "traefik/whoami:v1.6.0", 1, "whoami-server", {"app": "whoami-v2"}, 80),
        _service("whoami-v2", {"app": "whoami-v2"}, 80, {"mesh.traefik.io/traffic-type": "http"}),
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
         "metadata": {"name": "whoami-canary", "namespace": NS},
         "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "whoami", "port": 80}],
                  "rules": [
                      {"matches": [{"headers": [{"name": "X-Canary", "value": "1"}]},
                                   {"path": {"type": "PathPrefix", "value": "/v2"}}],
                       "filters": [{"type": "RequestHeaderModifier",
                                    "requestHeaderModifier": {"set": [{"name": "X-Route", "value": "canary"}]}}],
                       "backendRefs": [{"name": "whoami-v2", "port": 80}]},
                      {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "backendRefs": [{"name": "whoami", "port": 80}]}]}},
    ]


def canary_split(v1_weight: int = 80, v2_weight: int = 20) -> list[dict]:
    """whoami plus a v2 Deployment and an SMI TrafficSplit ``whoami-canary`` → ``whoami-v1`` (the
    whoami pods) / ``whoami-v2``, as the demo adds it."""
    return whoami(acl_policy=False) + [
        _deployment("whoami-v2", "traefik/whoami:v1.6.0", 1, "whoami-server", {"app": "whoami-v2"}, 80),
        _service("whoami-canary", {"app": "whoami"}, 80),
        _service("whoami-v1", {"app": "whoami"}, 80),
        _service("whoami-v2", {"app": "whoami-v2"}, 80),
        {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
         "metadata": {"name": "whoami-canary", "namespace": NS},
         "spec": {"service": "whoami-canary",
                  "backends": [{"service": "whoami-v1", "weight": v1_weight},
                               {"service": "whoami-v2", "weight": v2_weight}]}},
    ]
