"""A tiny program: a namespace, an auto-named ConfigMap, a Deployment, a Service, a patch and a
ConfigGroup (a component the Kubernetes provider expands at pulumi up)."""
import pulumi
import pulumi_kubernetes as k8s

cfg = pulumi.Config()
ns = k8s.core.v1.Namespace("demo", metadata={"name": "demo"})
labels = {"app": "web", "from": cfg.get("label") or "none"}
k8s.core.v1.ConfigMap("settings", metadata={"namespace": ns.metadata.name}, data={"a": "b"})
k8s.apps.v1.Deployment("web", metadata={"name": "web", "namespace": ns.metadata.name}, spec={
    "replicas": cfg.get_int("replicas"),
    "selector": {"matchLabels": {"app": "web"}},
    "template": {"metadata": {"labels": labels},
                 "spec": {"containers": [{"name": "web", "image": "traefik/whoami:v1.6.0",
                                          "ports": [{"containerPort": 80}]}]}}})
k8s.core.v1.Service("web-svc", metadata={"name": "web", "namespace": ns.metadata.name},
                    spec={"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 80}]})
k8s.core.v1.ConfigMapPatch("coredns-patch", metadata={"name": "coredns", "namespace": "kube-system"},
                           data={"x": "y"})
k8s.yaml.v2.ConfigGroup("extra", yaml="apiVersion: v1\nkind: Namespace\nmetadata:\n  name: extra\n")
# yaml v1 is expanded by the SDK itself: its objects are the program's and are written
k8s.yaml.ConfigGroup("v1-group", yaml=["apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-v1\n  namespace: demo\n"])
k8s.helm.v3.Chart("h3", k8s.helm.v3.LocalChartOpts(path="chart"))
k8s.kustomize.Directory("k1", directory="kust")
existing = k8s.core.v1.ConfigMap.get("coredns", "kube-system/coredns")
pulumi.export("corefile_seen", existing.data.apply(lambda d: "kubernetes cluster.local" in d["Corefile"]))
