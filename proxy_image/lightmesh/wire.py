"""The controller ↔ proxy HTTP protocol: paths, headers and timings, shared by both sides.

Config delivery is a long poll::

    GET {controller}/api/configuration/current
        If-None-Match: "<hash of the config the proxy has>"      (absent on first fetch)
        X-Lightmesh-Proxy: <proxy pod name>                      (who is asking; for /api/status/nodes)
        X-Lightmesh-Applied-Version: <version the proxy applied> (0 before the first one)
        X-Lightmesh-Config-Schema: <config schema versions the proxy reads, comma list>

    → 200, ETag: "<hash>", X-Lightmesh-Config-Version: <version>, body: ProxyConfig JSON
      as soon as the controller's config hash differs from If-None-Match;
    → 304 after holding the request up to ``LONG_POLL_SECONDS`` (``?wait=N`` shortens it) when
      nothing changed; the proxy then asks again at once.
    → 503 while the controller has no config yet (not synced): the proxy retries with backoff.
    → 406 when the controller serves no schema the proxy reads (a proxy and a controller of
      releases whose schemas differ): the text names both; the proxy keeps its last config and
      retries with backoff. Without the header, the controller's schema is served. A config is
      validated strictly (unknown fields refused), so this is how a controller learns what a proxy
      can take before sending it, during a rolling upgrade in either order.

A proxy that cannot reach the controller keeps serving its last good config and retries with
exponential backoff from ``RETRY_MIN_SECONDS`` to ``RETRY_MAX_SECONDS``.
"""

CONFIG_PATH = "/api/configuration/current"
TOPOLOGY_PATH = "/api/topology/current"
READINESS_PATH = "/api/status/readiness"
NODES_PATH = "/api/status/nodes"

HEADER_PROXY_NAME = "X-Lightmesh-Proxy"
HEADER_APPLIED_VERSION = "X-Lightmesh-Applied-Version"
# the hash of the config every worker applied (absent until they agree): a refused config is held
# (its ETag is the next If-None-Match) but not applied, and the controller's status must say so
HEADER_APPLIED_HASH = "X-Lightmesh-Applied-Hash"
HEADER_CONFIG_VERSION = "X-Lightmesh-Config-Version"
HEADER_CONFIG_SCHEMA = "X-Lightmesh-Config-Schema"

LONG_POLL_SECONDS = 30.0
RETRY_MIN_SECONDS = 0.2
RETRY_MAX_SECONDS = 10.0

DEFAULT_CONTROLLER_API_PORT = 9000
# What MeshInstall passes as --shutdown-delay to the proxies and the controller: how long a pod
# that got SIGTERM goes on serving (not ready) while kube-proxy stops sending it new connections.
SHUTDOWN_DELAY_SECONDS = 5.0
DEFAULT_PROXY_ADMIN_PORT = 8080
DEFAULT_DNS_PORT = 53
DEFAULT_LOCAL_DNS_PORT = 5353

HTTP_PORT_BASE = 5000
TCP_PORT_BASE = 10000
UDP_PORT_BASE = 15000

DEFAULT_DOMAINS = ("lightmesh", "traefik.mesh", "maesh")

# ---------------------------------------------------------------------------- cluster-facing names
# MeshInstall (deploy time) and the controller (run time) must agree on these; keep them here.

DEFAULT_MESH_NAMESPACE = "lightmesh"
CONTROLLER_NAME = "lightmesh-controller"  # Deployment, Service (API 9000/tcp, DNS 53/udp+tcp), ServiceAccount
PROXY_NAME = "lightmesh-proxy"  # DaemonSet and ServiceAccount
LEASE_NAME = "lightmesh-controller-leader"

PROXY_POD_LABELS = {"app.kubernetes.io/name": PROXY_NAME, "app.kubernetes.io/part-of": "lightmesh"}
CONTROLLER_POD_LABELS = {"app.kubernetes.io/name": CONTROLLER_NAME, "app.kubernetes.io/part-of": "lightmesh"}

LABEL_SHADOW_SERVICE_NAME = "lightmesh.io/service-name"
LABEL_SHADOW_SERVICE_NAMESPACE = "lightmesh.io/service-namespace"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY_CONTROLLER = "lightmesh-controller"

DEFAULT_HTTP_PORT_LIMIT = 10
DEFAULT_TCP_PORT_LIMIT = 25
DEFAULT_UDP_PORT_LIMIT = 25

# Environment the proxy reads its identity from (Kubernetes downward API in the DaemonSet).
ENV_POD_NAME = "POD_NAME"
ENV_NODE_NAME = "NODE_NAME"
