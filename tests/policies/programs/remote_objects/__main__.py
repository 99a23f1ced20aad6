"""Objects the Kubernetes provider makes, which the offline runner cannot judge, next to ones it can.

yaml.v2.ConfigGroup (remote component: the provider parses the YAML) and helm.v3.Release (one
resource: its chart's objects are never sent to a policy pack) get a note each; yaml.ConfigGroup
(v1: the program parses the YAML) registers its Service, which is judged like any other."""
import pulumi_kubernetes as k8s

SERVICE = """
apiVersion: v1
kind: Service
metadata: {name: NAME, namespace: shop, annotations: {lightmesh.io/retry-attempts: "2"}}
spec: {selector: {app: NAME}, ports: [{port: 80}]}
"""
k8s.yaml.v2.ConfigGroup("remote-yaml", yaml=SERVICE.replace("NAME", "remote"))
k8s.helm.v3.Release("release", chart="nginx", namespace="shop")
k8s.yaml.ConfigGroup("local-yaml", yaml=[SERVICE.replace("NAME", "local").replace('"2"', '"two"')])
