"""A mesh installed with its own settings: local mode must run its controller the same way."""
import pulumi_kubernetes as k8s

from mesh_components import MeshInstall

MeshInstall("mesh", {"namespace": "meshsys", "domains": ["corp.mesh"], "default_traffic_type": "tcp",
                     "patch_coredns": False})
for namespace, name in (("shop", "echo"), ("meshsys", "stray")):  # the mesh namespace is never meshed
    labels = {"app": name}
    k8s.apps.v1.Deployment(name, metadata={"name": name, "namespace": namespace}, spec={
        "replicas": 1, "selector": {"matchLabels": labels},
        "template": {"metadata": {"labels": labels},
                     "spec": {"containers": [{"name": name, "image": "traefik/whoamitcp:v0.1.0",
                                              "ports": [{"containerPort": 8080}]}]}}})
    # no traffic-type annotation: the mesh's default traffic type (tcp) applies
    k8s.core.v1.Service(f"{name}-svc", metadata={"name": name, "namespace": namespace},
                        spec={"selector": labels, "ports": [{"port": 8080}]})
