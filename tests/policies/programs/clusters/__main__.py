"""Meshes across clusters, for the stack rules that compare objects with each other.

case=acl: ACL mode in an eu and a us cluster (a Kubernetes provider each), the Service shop/api in
both, an AccessPolicy for it in eu only: the us one has no TrafficTarget there. case=acl-both: the
same with the AccessPolicy in both. case=two-meshes: two MeshInstalls in one cluster.
case=mixed: MeshInstall on an explicit provider, the app on the default one (maybe the same
cluster), no AccessPolicy. case=apps: MeshInstall (ACL mode) in one cluster, the app without an
AccessPolicy in another, both on explicit providers with different kubeconfigs: surely two
clusters, the app's mesh installed by another stack."""
import pulumi
import pulumi_kubernetes as k8s

from mesh_components import AccessPolicy, MeshInstall, MeshService

case = pulumi.Config().require("case")


def mesh_with_api(name: str, opts: pulumi.ResourceOptions | None, namespace: str = "lightmesh",
                  app_opts: pulumi.ResourceOptions | None = None) -> MeshInstall:
    mesh = MeshInstall(name, {"acl": True, "patch_coredns": False, "namespace": namespace}, opts=opts)
    opts = app_opts if app_opts is not None else opts
    k8s.apps.v1.Deployment(f"{name}-api", metadata={"name": "api", "namespace": "shop"},
                           spec={"selector": {"matchLabels": {"app": "api"}},
                                 "template": {"metadata": {"labels": {"app": "api"}},
                                              "spec": {"serviceAccountName": "api",
                                                       "containers": [{"name": "api", "image": "nginx:1.27.3"}]}}},
                           opts=opts)
    MeshService(f"{name}-api", {"namespace": "shop", "service_name": "api", "traffic_type": "http",
                                "ports": [{"port": 80}], "selector": {"app": "api"}},
                opts=pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[mesh])))
    return mesh


def access(name: str, opts: pulumi.ResourceOptions | None) -> None:
    AccessPolicy(name, {"namespace": "shop", "destination_service_account": "api",
                        "sources": [{"service_account": "web"}],
                        "http_matches": [{"name": "all", "path_regex": "/.*"}]}, opts=opts)


if case in ("acl", "acl-both"):
    for region in ("eu", "us"):
        opts = pulumi.ResourceOptions(provider=k8s.Provider(f"k8s-{region}", kubeconfig=f"kubeconfig-{region}"))
        mesh_with_api(f"mesh-{region}", opts)
        if region == "eu" or case == "acl-both":
            access(f"web-to-api-{region}", opts)
elif case == "apps":
    mesh_with_api("mesh", pulumi.ResourceOptions(provider=k8s.Provider("k8s-eu", kubeconfig="kubeconfig-eu")),
                  app_opts=pulumi.ResourceOptions(provider=k8s.Provider("k8s-apps", kubeconfig="kubeconfig-apps")))
elif case == "mixed":
    mesh_with_api("mesh", pulumi.ResourceOptions(provider=k8s.Provider("k8s-admin", kubeconfig="kubeconfig-admin")),
                  app_opts=pulumi.ResourceOptions())
else:
    for name in ("mesh-a", "mesh-b"):
        MeshInstall(name, {"acl": True, "patch_coredns": False, "namespace": name})
