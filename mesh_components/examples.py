"""The example applications, as functions shared by the root stack, ``examples/`` and local mode.

:func:`deploy_whoami` is the seed article's whoami: namespace ``whoami``; ServiceAccounts
``whoami-server`` and ``whoami-client``; Deployments ``whoami`` (traefik/whoami:v1.6.0, 2 replicas) and
``whoami-tcp`` (traefik/whoamitcp:v0.1.0, 2 replicas); Services ``whoami`` (port 80, http, 2 retry
attempts) and ``whoami-tcp`` (port 8080, tcp) made mesh Services by :class:`MeshService`; a client pod
(giantswarm/tiny-tools:3.9) running as ``whoami-client``. With ``acl`` an :class:`AccessPolicy` lets
``whoami-client`` reach both servers (in ACL mode everything else is denied).

Only plain resources and the Lightmesh components are created — no reads of cluster objects — so
the programs render offline under Pulumi mocks.
"""

import dataclasses
from typing import Optional

import pulumi
import pulumi_kubernetes as k8s

from mesh_components.access import AccessPolicy, TrafficSplit
from mesh_components.service import MeshService

WHOAMI_IMAGE = "traefik/whoami:v1.6.0"
WHOAMI_TCP_IMAGE = "traefik/whoamitcp:v0.1.0"
CLIENT_IMAGE = "giantswarm/tiny-tools:3.9"


@dataclasses.dataclass
class WhoamiApp:
    namespace: pulumi.Output[str]
    http_service: MeshService
    tcp_service: MeshService
    access_policy: Optional[AccessPolicy]
    resources: list[pulumi.Resource]

    def settled(self) -> pulumi.Output[list]:
        """Resolves once every resource of the app is registered."""
        return pulumi.Output.all(*[r.urn for r in self.resources])


def _deployment(name: str, namespace, image: str, port: int, service_account: str,
                opts: pulumi.ResourceOptions, replicas: int = 2, env: Optional[dict[str, str]] = None,
                labels: Optional[dict[str, str]] = None) -> k8s.apps.v1.Deployment:
    labels = labels or {"app": name}
    return k8s.apps.v1.Deployment(
        name, metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace),
        spec=k8s.apps.v1.DeploymentSpecArgs(
            replicas=replicas, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                spec=k8s.core.v1.PodSpecArgs(
                    service_account_name=service_account,
                    containers=[k8s.core.v1.ContainerArgs(
                        name=name, image=image, image_pull_policy="IfNotPresent",
                        env=[k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in (env or {}).items()] or None,
                        ports=[k8s.core.v1.ContainerPortArgs(container_port=port, name="web")])]))),
        opts=opts)


def client_pod(name: str, namespace, service_account: str, opts: pulumi.ResourceOptions) -> k8s.core.v1.Pod:
    """A pod with curl/dig/nc to call mesh services from (``kubectl exec -it <pod> -- ash``)."""
    return k8s.core.v1.Pod(
        name, metadata=k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels={"app": name}),
        spec=k8s.core.v1.PodSpecArgs(
            service_account_name=service_account,
            containers=[k8s.core.v1.ContainerArgs(name=name, image=CLIENT_IMAGE, image_pull_policy="IfNotPresent",
                                                  # busybox sleep takes whole seconds only: ~68 years
                                                  command=["sleep", "2147483647"])]),
        opts=opts)


def deploy_whoami(acl: bool = False, namespace: str = "whoami", domains: Optional[pulumi.Input[list[str]]] = None,
                  opts: Optional[pulumi.ResourceOptions] = None) -> WhoamiApp:
    """The whoami example. ``opts`` (e.g. ``depends_on=[mesh]``) applies to every resource."""
    base = opts or pulumi.ResourceOptions()
    ns = k8s.core.v1.Namespace("whoami-namespace", metadata=k8s.meta.v1.ObjectMetaArgs(name=namespace), opts=base)
    ns_name = ns.metadata.apply(lambda m: m.name)
    in_ns = pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(deleted_with=ns))
    server_sa = k8s.core.v1.ServiceAccount("whoami-server", metadata=k8s.meta.v1.ObjectMetaArgs(
        name="whoami-server", namespace=ns_name), opts=in_ns)
    client_sa = k8s.core.v1.ServiceAccount("whoami-client", metadata=k8s.meta.v1.ObjectMetaArgs(
        name="whoami-client", namespace=ns_name), opts=in_ns)
    whoami = _deployment("whoami", ns_name, WHOAMI_IMAGE, 80, "whoami-server",
                         pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=[server_sa])))
    whoami_tcp = _deployment("whoami-tcp", ns_name, WHOAMI_TCP_IMAGE, 8080, "whoami-server",
                             pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=[server_sa])))
    extra = {"domains": domains} if domains is not None else {}
    http = MeshService("whoami", {"service_name": "whoami", "namespace": namespace, "traffic_type": "http",
                                  "retry_attempts": 2, "ports": [{"port": 80, "name": "web"}],
                                  "selector": {"app": "whoami"}, **extra},
                       opts=pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=[ns])))
    tcp = MeshService("whoami-tcp", {"service_name": "whoami-tcp", "namespace": namespace, "traffic_type": "tcp",
                                     "ports": [{"port": 8080, "name": "web"}], "selector": {"app": "whoami-tcp"},
                                     **extra},
                      opts=pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=[ns])))
    client = client_pod("whoami-client", ns_name, "whoami-client",
                        pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=[client_sa])))
    resources: list[pulumi.Resource] = [ns, server_sa, client_sa, whoami, whoami_tcp, client,
                                        *http.children.values(), *tcp.children.values()]
    policy = None
    if acl:
        policy = AccessPolicy("whoami-client-access", {
            "namespace": namespace, "destination_service_account": "whoami-server",
            "sources": [{"service_account": "whoami-client"}],
            "http_matches": [{"name": "everything", "path_regex": "/.*", "methods": ["*"]}],
            "tcp": {"ports": [8080]}},
            opts=pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(depends_on=[ns])))
        resources += list(policy.children.values())
    return WhoamiApp(ns_name, http, tcp, policy, resources)


@dataclasses.dataclass
class CanaryApp:
    namespace: pulumi.Output[str]
    service: MeshService
    split: TrafficSplit
    resources: list[pulumi.Resource]

    def settled(self) -> pulumi.Output[list]:
        return pulumi.Output.all(*[r.urn for r in self.resources])


def deploy_canary(namespace: str = "shop", canary_weight: int = 10,
                  opts: Optional[pulumi.ResourceOptions] = None) -> CanaryApp:
    """Canary release: clients call ``web``; the mesh sends ``100 - canary_weight`` % to ``web-v1`` and
    ``canary_weight`` % to ``web-v2`` (whoami pods answering with their version's name)."""
    if isinstance(canary_weight, bool) or not isinstance(canary_weight, int) or not 0 <= canary_weight <= 100:
        raise ValueError(f"canary example: canaryWeight must be a whole percentage from 0 to 100, got {canary_weight!r}")
    base = opts or pulumi.ResourceOptions()
    ns = k8s.core.v1.Namespace("canary-namespace", metadata=k8s.meta.v1.ObjectMetaArgs(name=namespace), opts=base)
    ns_name = ns.metadata.apply(lambda m: m.name)
    in_ns = pulumi.ResourceOptions.merge(base, pulumi.ResourceOptions(deleted_with=ns, depends_on=[ns]))
    resources: list[pulumi.Resource] = [ns]
    services = {}
    for version in ("v1", "v2"):
        labels = {"app": "web", "version": version}
        resources.append(_deployment(f"web-{version}", ns_name, WHOAMI_IMAGE, 80, "default", in_ns, replicas=2,
                                     env={"WHOAMI_NAME": f"web-{version}"}, labels=labels))
        services[version] = k8s.core.v1.Service(
            f"web-{version}", metadata=k8s.meta.v1.ObjectMetaArgs(name=f"web-{version}", namespace=ns_name),
            spec=k8s.core.v1.ServiceSpecArgs(selector=labels, ports=[k8s.core.v1.ServicePortArgs(port=80, name="web")]),
            opts=in_ns)
        resources.append(services[version])
    web = MeshService("web", {"service_name": "web", "namespace": namespace, "traffic_type": "http",
                              "retry_attempts": 2, "ports": [{"port": 80, "name": "web"}], "selector": {"app": "web"}},
                      opts=in_ns)
    split = TrafficSplit("web-canary", {
        "namespace": namespace, "service": "web",
        "backends": [{"service": "web-v1", "weight": 100 - canary_weight}, {"service": "web-v2", "weight": canary_weight}]},
        opts=pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=list(services.values()))))
    resources += [*web.children.values(), *split.children.values()]
    return CanaryApp(ns_name, web, split, resources)


__all__ = ["deploy_whoami", "deploy_canary", "client_pod", "WhoamiApp", "CanaryApp"]
