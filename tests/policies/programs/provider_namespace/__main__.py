"""Objects without metadata.namespace go to their Kubernetes provider's default namespace.

The controller (ACL mode) is on the default provider; the app is on a provider with namespace="shop".
case=ok: its HTTPRouteGroup and TrafficTarget have no namespace either, so they are in shop too: passes.
case=explicit: they are written into namespace "shop", where the Service is: passes.
case=tt-in-default: they are written into namespace "default": in the cluster they cover nothing in shop.
case=two-namespaces: the same app, Service name and TrafficTarget on a provider for "shop" and one for
"books" (one cluster): two objects each, each covered; nothing to report."""
import pulumi
import pulumi_kubernetes as k8s

case = pulumi.Config().require("case")
IMAGE = "ghcr.io/lightmesh/lightmesh:0.1.0"
RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
labels = {"app.kubernetes.io/name": "lightmesh-controller"}
k8s.apps.v1.Deployment("controller", metadata={"name": "lightmesh-controller", "namespace": "lightmesh"},
                       spec={"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
                           "containers": [{"name": "controller", "image": IMAGE, "args": ["controller", "--acl"],
                                           "resources": RESOURCES}]}}})


def app(namespace: str, access_namespace: str | None) -> None:
    opts = pulumi.ResourceOptions(provider=k8s.Provider(f"k8s-{namespace}", namespace=namespace))
    meta = {"namespace": access_namespace} if access_namespace else {}
    k8s.apps.v1.Deployment(f"app-{namespace}", metadata={"name": "app"},
                           spec={"selector": {"matchLabels": {"app": "app"}},
                                 "template": {"metadata": {"labels": {"app": "app"}},
                                              "spec": {"serviceAccountName": "app-sa",
                                                       "containers": [{"name": "app", "image": "nginx:1.27"}]}}},
                           opts=opts)
    k8s.core.v1.Service(f"svc-{namespace}", metadata={"name": "app", "annotations": {"lightmesh.io/traffic-type": "http"}},
                        spec={"selector": {"app": "app"}, "ports": [{"port": 80}]}, opts=opts)
    k8s.apiextensions.CustomResource(f"routes-{namespace}", api_version="specs.smi-spec.io/v1alpha4",
                                     kind="HTTPRouteGroup", metadata={"name": "all", **meta},
                                     spec={"matches": [{"name": "all", "pathRegex": "/.*"}]}, opts=opts)
    k8s.apiextensions.CustomResource(f"access-{namespace}", api_version="access.smi-spec.io/v1alpha3",
                                     kind="TrafficTarget", metadata={"name": "web-to-app", **meta},
                                     spec={"destination": {"kind": "ServiceAccount", "name": "app-sa"},
                                           "sources": [{"kind": "ServiceAccount", "name": "web"}],
                                           "rules": [{"kind": "HTTPRouteGroup", "name": "all"}]}, opts=opts)


if case == "ok":
    app("shop", None)
elif case == "explicit":
    app("shop", "shop")
elif case == "tt-in-default":
    app("shop", "default")
elif case == "two-namespaces":
    app("shop", None)
    app("books", None)
