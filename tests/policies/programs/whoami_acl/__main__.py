"""whoami (HTTP + TCP) in ACL mode with the Lightmesh components, plus one switchable defect."""
import pulumi
import pulumi_kubernetes as k8s

from mesh_components import AccessPolicy, MeshInstall, MeshService, TrafficSplit

cfg = pulumi.Config()
NS = "whoami"
cpu_limit = cfg.get("cpu_limit")  # unset: MeshInstall's default; "" removes the CPU limit
resources = {"cpu_request": "100m", "memory_request": "128Mi", "memory_limit": "512Mi",
             **({"cpu_limit": cpu_limit} if cpu_limit is not None else {})}
install_args = {"acl": cfg.get_bool("acl"), "controller_resources": resources, "proxy_resources": resources}
if cfg.get("image"):
    install_args["image"] = cfg.get("image")
if cfg.get("default_traffic_type"):  # the controller's --default-mode
    install_args["default_traffic_type"] = cfg.get("default_traffic_type")
mesh = MeshInstall("mesh", install_args)
after_mesh = pulumi.ResourceOptions(depends_on=[mesh])

k8s.core.v1.Namespace("ns", metadata={"name": NS})
for sa in ("whoami-server", "whoami-client"):
    k8s.core.v1.ServiceAccount(sa, metadata={"name": sa, "namespace": NS})


def app(name: str, image: str, sa: str = "whoami-server") -> None:
    k8s.apps.v1.Deployment(name, metadata={"name": name, "namespace": NS}, spec={
        "replicas": 2, "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}},
                     "spec": {"serviceAccountName": sa, "containers": [{"name": name, "image": image}]}}})


app("whoami", "traefik/whoami:v1.6.0")
app("whoami-tcp", "traefik/whoamitcp:v0.1.0")
k8s.core.v1.Pod("client", metadata={"name": "client", "namespace": NS, "labels": {"app": "client"}},
                spec={"serviceAccountName": "whoami-client",
                      "containers": [{"name": "client", "image": "giantswarm/tiny-tools:3.9",
                                      "command": ["sleep", "infinity"]}]})

# whoami: an existing Service annotated by MeshService (ServicePatch); whoami-tcp: created by MeshService.
k8s.core.v1.Service("whoami-svc", metadata={"name": "whoami", "namespace": NS},
                    spec={"selector": {"app": "whoami"}, "ports": [{"port": 80, "targetPort": 80}]})
MeshService("whoami", {"service_name": "whoami", "namespace": NS, "traffic_type": "http", "retry_attempts": 2},
            opts=after_mesh)
MeshService("whoami-tcp", {"service_name": "whoami-tcp", "namespace": NS, "traffic_type": "tcp",
                           "ports": [{"port": 8080}], "selector": {"app": "whoami-tcp"}}, opts=after_mesh)

client = [{"service_account": "whoami-client"}]
if cfg.get("drop_access") != "http":
    AccessPolicy("client-to-whoami", {"namespace": NS, "destination_service_account": "whoami-server",
                                      "sources": client,
                                      "http_matches": [{"name": "api", "path_regex": "/.*", "methods": ["GET"]}]},
                 opts=after_mesh)
if cfg.get("drop_access") != "tcp":
    # tcp_port: the port the AccessPolicy allows (whoami-tcp listens on 8080)
    AccessPolicy("client-to-whoami-tcp", {"namespace": NS, "destination_service_account": "whoami-server",
                                          "sources": client, "tcp": {"ports": [cfg.get_int("tcp_port") or 8080]}},
                 opts=after_mesh)
if cfg.get_bool("udp_access"):
    AccessPolicy("client-to-whoami-udp", {"namespace": NS, "destination_service_account": "whoami-server",
                                          "sources": client, "udp": {}}, opts=after_mesh)

split = cfg.get("split")
if split:
    for version in ("v1", "v2"):
        app(f"whoami-{version}", "traefik/whoami:v1.6.0", sa=f"whoami-{version}")
        MeshService(f"whoami-{version}", {"service_name": f"whoami-{version}", "namespace": NS,
                                          "traffic_type": "http", "ports": [{"port": 80}],
                                          "selector": {"app": f"whoami-{version}"}}, opts=after_mesh)
        sources = client if (version == "v1" or split != "unreachable") else [{"service_account": "someone-else"}]
        AccessPolicy(f"client-to-whoami-{version}", {"namespace": NS, "destination_service_account": f"whoami-{version}",
                                                     "sources": sources,
                                                     "http_matches": [{"name": "all", "path_regex": "/.*"}]},
                     opts=after_mesh)
    backends = {"ok": [("whoami-v1", 90), ("whoami-v2", 10)], "unreachable": [("whoami-v1", 90), ("whoami-v2", 10)],
                "missing-backend": [("whoami-v1", 90), ("whoami-v3", 10)], "apex": [("whoami-v1", 90), ("whoami-v2", 10)],
                "root-backend": [("whoami-v1", 90), ("whoami", 10)]}[split]
    root = "whoami"
    if split == "apex":
        # An SMI apex Service: the name clients call, selecting no pods of its own.
        root = "whoami-apex"
        MeshService("whoami-apex", {"service_name": root, "namespace": NS, "traffic_type": "http",
                                    "ports": [{"port": 80}], "selector": {"app": "whoami-apex"}}, opts=after_mesh)
    if split == "root-backend":
        # The TrafficSplit component refuses this; a hand-written (or Helm-rendered) object does not.
        k8s.apiextensions.CustomResource("canary", api_version="split.smi-spec.io/v1alpha4", kind="TrafficSplit",
                                         metadata={"name": "canary", "namespace": NS},
                                         spec={"service": root,
                                               "backends": [{"service": s, "weight": w} for s, w in backends]})
    else:
        # split_name: e.g. the name of an AccessPolicy above; the split then restricts itself to a header match
        matches = {"matches": [{"name": "canary", "headers": {"x-canary": "1"}}]} if cfg.get("split_name") else {}
        TrafficSplit(cfg.get("split_name") or "canary", {
            "namespace": NS, "service": root, "backends": [{"service": s, "weight": w} for s, w in backends],
            **matches}, opts=after_mesh)

if cfg.get("second_mesh_service"):
    # A second MeshService for the Service whoami, with other retry attempts: two patches of one Service.
    MeshService("whoami-again", {"service_name": "whoami", "namespace": NS, "traffic_type": "http",
                                 "retry_attempts": cfg.get_int("second_mesh_service")}, opts=after_mesh)

if cfg.get("hand_annotation"):
    # A Service annotated by hand, Traefik Mesh style (no component validates it).
    app("legacy", "traefik/whoami:v1.6.0", sa="legacy")
    k8s.core.v1.Service("legacy-svc", metadata={
        "name": "legacy", "namespace": NS,
        "annotations": {"mesh.traefik.io/traffic-type": "http",
                        "mesh.traefik.io/retry-attempts": cfg.get("hand_annotation")}},
        spec={"selector": {"app": "legacy"}, "ports": [{"port": 80}]})
    AccessPolicy("client-to-legacy", {"namespace": NS, "destination_service_account": "legacy", "sources": client,
                                      "http_matches": [{"name": "all", "path_regex": "/.*"}]}, opts=after_mesh)

if cfg.get("untyped_annotation"):
    # A Service annotated by hand with retry attempts and no traffic type: the controller's --default-mode decides
    # whether it uses them. Port 8080 of whoami-tcp's pods, which both AccessPolicies allow (for http, tcp).
    k8s.core.v1.Service("untyped-svc", metadata={
        "name": "untyped", "namespace": NS, "annotations": {"lightmesh.io/retry-attempts": cfg.get("untyped_annotation")}},
        spec={"selector": {"app": "whoami-tcp"}, "ports": [{"port": 8080}]})
