"""One program, several clusters (a Kubernetes provider each). case=two: the Service shop/api in the
eu and the us cluster (no ambient objects); case=mixed: one in the ambient cluster, one in eu;
case=same: two providers for one cluster (same kubeconfig) both declaring shop/api."""
import pulumi
import pulumi_kubernetes as k8s

case = pulumi.Config().require("case")
kubeconfigs = {"two": {"eu": "kc-eu", "us": "kc-us"}, "mixed": {"eu": "kc-eu"},
               "same": {"eu": "kc-eu", "eu-again": "kc-eu"}}[case]
placements = [pulumi.ResourceOptions(provider=k8s.Provider(f"k8s-{region}", kubeconfig=kubeconfig))
              for region, kubeconfig in kubeconfigs.items()]
if case == "mixed":
    placements.append(None)
for index, opts in enumerate(placements):
    k8s.core.v1.Service(f"api-{index}", metadata={"name": "api", "namespace": "shop"},
                        spec={"selector": {"app": "api"}, "ports": [{"port": 80 + index}]}, opts=opts)
