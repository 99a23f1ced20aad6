"""The default provider's namespace comes from the stack config (``kubernetes:namespace: shop`` in
Pulumi.dev.yaml): the app, its Service and (with case=bare) its HTTPRouteGroup and TrafficTarget name no
namespace and no provider, so pulumi puts them in shop. case=explicit (the default) writes the
HTTPRouteGroup and TrafficTarget into shop: covered either way. The controller names its own namespace."""
import pulumi
import pulumi_kubernetes as k8s

case = pulumi.Config().get("case") or "explicit"
IMAGE = "ghcr.io/lightmesh/lightmesh:0.1.0"
RESOURCES = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}
labels = {"app.kubernetes.io/name": "lightmesh-controller"}
k8s.apps.v1.Deployment("controller", metadata={"name": "lightmesh-controller", "namespace": "lightmesh"},
                       spec={"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
                           "containers": [{"name": "controller", "image": IMAGE, "args": ["controller", "--acl"],
                                           "resources": RESOURCES}]}}})
k8s.apps.v1.Deployment("app", metadata={"name": "app"},
                       spec={"selector": {"matchLabels": {"app": "app"}},
                             "template": {"metadata": {"labels": {"app": "app"}},
                                          "spec": {"serviceAccountName": "app-sa",
                                                   "containers": [{"name": "app", "image": "nginx:1.27"}]}}})
k8s.core.v1.Service("svc", metadata={"name": "app", "annotations": {"lightmesh.io/traffic-type": "http"}},
                    spec={"selector": {"app": "app"}, "ports": [{"port": 80}]})
meta = {} if case == "bare" else {"namespace": "shop"}
k8s.apiextensions.CustomResource("routes", api_version="specs.smi-spec.io/v1alpha4", kind="HTTPRouteGroup",
                                 metadata={"name": "all", **meta}, spec={"matches": [{"name": "all", "pathRegex": "/.*"}]})
k8s.apiextensions.CustomResource("access", api_version="access.smi-spec.io/v1alpha3", kind="TrafficTarget",
                                 metadata={"name": "web-to-app", **meta},
                                 spec={"destination": {"kind": "ServiceAccount", "name": "app-sa"},
                                       "sources": [{"kind": "ServiceAccount", "name": "web"}],
                                       "rules": [{"kind": "HTTPRouteGroup", "name": "all"}]})
