"""``MeshInstall``: everything the mesh needs in a cluster, from typed and validated args.

Children (names derived from the instance name; Kubernetes names from ``lightmesh.wire``):

* the mesh Namespace (unless ``create_namespace`` is false);
* the SMI CRDs from :mod:`mesh_components.smi`, ``retain_on_delete`` (deleting a CRD deletes every
  object of its kind in the cluster — never as a side effect of ``pulumi destroy``);
* ServiceAccounts and least-privilege RBAC (:func:`controller_rbac_rules`): the controller reads
  Services, EndpointSlices, Pods and the SMI kinds cluster-wide, writes Events, and writes Services
  and its Lease only in the mesh namespace. The proxy has no API access at all;
* the controller Deployment (2 replicas, Lease leader election, probes, non-root) and its Service
  ``lightmesh-controller`` (API 9000/TCP, DNS 53/UDP and 53/TCP → container 5353, so no capability
  is needed to bind), plus a PodDisruptionBudget;
* the proxy DaemonSet (probes on ``/ping`` and ``/live``, mesh port ranges, surge rolling update,
  tolerations, node selector, priority class);
* the cluster DNS forwarding of the mesh domains (:mod:`mesh_components.cluster_dns`);
* observability (:mod:`mesh_components.observability`): scrape annotations, the Grafana dashboard
  ConfigMap, and on request Jaeger, a ServiceMonitor and a bundled Prometheus.

The container command lines are built by pure functions (:func:`controller_command`,
:func:`proxy_command`) that the tests and the controller/proxy CLIs agree on.
"""

import re
from decimal import Decimal
from enum import Enum
from typing import Any, Mapping, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from mesh_components import observability, smi
from mesh_components._common import (DEFAULT_IMAGE, Checker, child_options, label_name_problem,
                                      label_value_problem, shown, type_token, when_known)
from mesh_components.cluster_dns import ClusterDnsPatch, DnsStyle
from lightmesh import wire
from lightmesh.annotations import TrafficType

CONTROLLER_DNS_CONTAINER_PORT = wire.DEFAULT_LOCAL_DNS_PORT  # 5353: unprivileged, Service maps 53 → 5353
RUN_AS_USER = 65532  # "nonroot" in distroless-style images


class LogLevel(str, Enum):
    """Log verbosity of the controller and proxies."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(str, Enum):
    """Log line format."""

    TEXT = "text"
    JSON = "json"


class ResourcesArgs(TypedDict):
    """CPU and memory requests/limits of a container (Kubernetes quantities; "" removes a default)."""

    cpu_request: NotRequired[str]
    """CPU request, e.g. ``100m``."""
    memory_request: NotRequired[str]
    """Memory request, e.g. ``64Mi``."""
    cpu_limit: NotRequired[str]
    """CPU limit, e.g. ``1`` (``""`` = no CPU limit)."""
    memory_limit: NotRequired[str]
    """Memory limit, e.g. ``256Mi``."""


class TolerationArgs(TypedDict):
    """A pod toleration for the proxy DaemonSet."""

    key: NotRequired[str]
    """Taint key (unset only with operator Exists, which then tolerates every taint)."""
    operator: NotRequired[str]
    """Equal (default) or Exists."""
    value: NotRequired[str]
    """Taint value for operator Equal."""
    effect: NotRequired[str]
    """NoSchedule, PreferNoSchedule or NoExecute (unset = all)."""


class MeshInstallArgs(TypedDict):
    """Inputs for MeshInstall. Every field is optional (None = the default); defaults install a working mesh."""

    namespace: NotRequired[str]
    """Namespace of the mesh control plane and proxies (default ``lightmesh``). The controller never
    meshes the Services of this namespace, so it may not be ``default``; ``kube-system``, ``kube-public``
    and ``kube-node-lease`` always exist, so only with ``create_namespace`` false."""
    create_namespace: NotRequired[bool]
    """Create the namespace (default true); false when it is managed elsewhere."""
    image: NotRequired[str]
    """Image for both roles, controller and proxy (default ``ghcr.io/lightmesh/lightmesh:0.1.0``).
    May carry a tag or a digest (``repo@sha256:...``)."""
    image_tag: NotRequired[str]
    """Tag that replaces the one in ``image`` (e.g. ``0.1.1``); not with a digest in ``image``."""
    image_pull_policy: NotRequired[str]
    """IfNotPresent (default), Always or Never."""
    acl: NotRequired[bool]
    """ACL mode: deny by default, allow only what SMI TrafficTargets allow (default false)."""
    default_traffic_type: NotRequired[TrafficType]
    """Traffic type of Services without a traffic-type annotation (default http)."""
    domains: NotRequired[list[str]]
    """Mesh DNS domains (default ``lightmesh``, ``traefik.mesh``, ``maesh``)."""
    cluster_domain: NotRequired[str]
    """Cluster DNS domain (default ``cluster.local``), for the controller API URL."""
    http_port_base: NotRequired[int]
    """First proxy port for HTTP services (default 5000)."""
    http_port_limit: NotRequired[int]
    """Number of HTTP proxy ports (default 10)."""
    tcp_port_base: NotRequired[int]
    """First proxy port for TCP services (default 10000)."""
    tcp_port_limit: NotRequired[int]
    """Number of TCP proxy ports (default 25)."""
    udp_port_base: NotRequired[int]
    """First proxy port for UDP services (default 15000)."""
    udp_port_limit: NotRequired[int]
    """Number of UDP proxy ports (default 25)."""
    log_level: NotRequired[LogLevel]
    """Log level (default info)."""
    log_format: NotRequired[LogFormat]
    """Log format (default text)."""
    otlp_endpoint: NotRequired[str]
    """OpenTelemetry OTLP/HTTP endpoint for traces, e.g. ``http://otel-collector.observability:4318``
    (shorthand for ``tracing: {mode: otlp, endpoint: ...}``)."""
    tracing: NotRequired[observability.TracingArgs]
    """Tracing: off (default), an existing OTLP endpoint, or a bundled Jaeger; sampling ratio."""
    metrics: NotRequired[observability.MetricsArgs]
    """Metrics: scrape annotations and Grafana dashboard (on by default), ServiceMonitor, bundled Prometheus."""
    watch_namespaces: NotRequired[list[str]]
    """Only mesh Services in these namespaces (default: all)."""
    ignore_namespaces: NotRequired[list[str]]
    """Never mesh Services in these namespaces."""
    controller_replicas: NotRequired[int]
    """Controller replicas (default 2; one leads, all serve config and DNS)."""
    controller_resources: NotRequired[ResourcesArgs]
    """Controller container resources (default requests 100m / 128Mi, limits 1 CPU / 512Mi). A request
    may not exceed its limit."""
    proxy_resources: NotRequired[ResourcesArgs]
    """Proxy container resources (default requests 100m / 128Mi, limits one CPU per proxy worker / 512Mi).
    A request may not exceed its limit."""
    proxy_workers: NotRequired[int]
    """Proxy worker processes per node (default 2); the default CPU limit follows (one CPU each)."""
    proxy_max_surge: NotRequired[int]
    """Nodes whose proxy is replaced at once during a rolling update, new pod first (default 1)."""
    proxy_response_timeout: NotRequired[float]
    """Seconds from a whole request to its response head before the proxy answers 504, for routes
    without a request-timeout (default 0: none, as Traefik's ``responseHeaderTimeout``)."""
    proxy_body_timeout: NotRequired[float]
    """Seconds the proxy waits between two reads of a request body before answering 408 (default 60)."""
    proxy_tolerations: NotRequired[list[TolerationArgs]]
    """Proxy tolerations (default: tolerate every taint, so every node that runs clients has a proxy)."""
    proxy_node_selector: NotRequired[dict[str, str]]
    """Proxy node selector (default ``kubernetes.io/os: linux``)."""
    proxy_priority_class_name: NotRequired[str]
    """Priority class of the proxy pods, e.g. ``system-node-critical`` (default: none)."""
    patch_coredns: NotRequired[bool]
    """Configure the cluster DNS to forward the mesh domains to the mesh DNS (default true).
    Set false when rendering offline or when DNS is managed elsewhere. On an existing stack, setting it
    false deletes the DNS patch: the mesh DNS forwarding is removed (mesh names stop resolving)."""
    dns_style: NotRequired[DnsStyle]
    """How the cluster DNS is configured (default auto: detected from the cluster at deploy time)."""
    dns_namespace: NotRequired[str]
    """Namespace of the cluster DNS (default ``kube-system``)."""
    kubeconfig: NotRequired[pulumi.Input[str]]
    """Kubeconfig contents for the DNS patcher (default: ``KUBECONFIG``/``~/.kube/config``/in-cluster).
    The patcher does not use the Pulumi Kubernetes provider: required with ``patch_coredns`` when the
    component is given an explicit Kubernetes provider (``provider``/``providers``), same cluster.
    On an existing stack pass it rather than turning ``patch_coredns`` off, which removes the mesh DNS
    forwarding."""


class MeshInstall(pulumi.ComponentResource):
    """Installs Lightmesh: SMI CRDs, RBAC, controller, per-node proxies and the cluster DNS forwarding."""

    namespace: pulumi.Output[str]
    """Namespace the mesh runs in."""
    domains: pulumi.Output[list[str]]
    """Mesh DNS domains."""
    dns_service_ip: pulumi.Output[str]
    """ClusterIP of the mesh DNS (the controller Service); the cluster DNS forwards the mesh domains here."""
    controller_api_url: pulumi.Output[str]
    """In-cluster URL of the controller API (configuration, topology, status)."""

    def __init__(self, name: str, args: MeshInstallArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        # Every field is optional: ``MeshInstall("lightmesh", {})`` installs the defaults.
        s = resolve_settings(name, args if args is not None else {})
        explicit = kubernetes_provider_option(opts)
        if explicit and s["patch_coredns"] and s["kubeconfig"] is None:
            # The DNS patch is a dynamic resource talking to the cluster through lightkube, not through the
            # Kubernetes provider, whose kubeconfig cannot be read back from the Provider object.
            raise Checker("MeshInstall", name).fail(
                f"kubeconfig is required when the resource options give a Kubernetes provider ({explicit}) and "
                f"patch_coredns is true: the cluster DNS patch does not go through that provider, it would patch "
                f"the cluster of the ambient kubeconfig (KUBECONFIG, ~/.kube/config, in-cluster), which may be "
                f"another one. Pass the same cluster's kubeconfig in kubeconfig. Do not set patch_coredns: false "
                f"instead on an existing stack: that deletes its cluster DNS patch, which removes the mesh DNS "
                f"forwarding (mesh names stop resolving cluster-wide); set it false only where the cluster DNS "
                f"forwards the mesh domains by other means")
        super().__init__(type_token("MeshInstall"), name, None, opts)
        child = child_options(self, opts)
        #: every child by role, for composition (e.g. ``depends_on=[mesh.children["controller"]]``) and tests;
        #: not a cross-language output.
        self.children: dict[str, pulumi.Resource] = {}
        ns_name = s["namespace"]
        labels = {"app.kubernetes.io/part-of": "lightmesh", "app.kubernetes.io/managed-by": "pulumi"}

        if s["create_namespace"]:
            # Retained on delete: a stack that turns create_namespace off (the namespace now managed
            # elsewhere) would otherwise delete it, and Kubernetes everything in it — controller, mesh
            # DNS Service, every node's proxy — behind Pulumi's back. So children are deleted one by
            # one (no deleted_with), and destroy leaves the namespace, empty, as it leaves the CRDs.
            namespace = k8s.core.v1.Namespace(f"{name}-namespace", metadata=_meta(ns_name, None, labels),
                                              opts=pulumi.ResourceOptions.merge(
                                                  child, pulumi.ResourceOptions(retain_on_delete=True)))
            self.children["namespace"] = namespace
            ns = namespace.metadata.apply(lambda m: m.name)
            in_ns = child
        else:
            ns = pulumi.Output.from_input(ns_name)
            in_ns = child

        crd_opts = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(retain_on_delete=True))
        crds = [k8s.apiextensions.v1.CustomResourceDefinition(
            f"{name}-crd-{c['spec']['names']['plural']}", metadata=c["metadata"], spec=c["spec"], opts=crd_opts)
            for c in smi.crd_manifests()]

        # ------------------------------------------------------------------ identities and RBAC
        controller_sa = k8s.core.v1.ServiceAccount(f"{name}-controller-sa", metadata=_meta(wire.CONTROLLER_NAME, ns, labels),
                                                   opts=in_ns)
        proxy_sa = k8s.core.v1.ServiceAccount(f"{name}-proxy-sa", metadata=_meta(wire.PROXY_NAME, ns, labels),
                                              automount_service_account_token=False, opts=in_ns)
        cluster_role_name = f"{wire.CONTROLLER_NAME}-{ns_name}"  # cluster-scoped: unique per mesh namespace
        self.children.update({f"crd-{c['spec']['names']['plural']}": crd for c, crd in zip(smi.CRDS, crds)})
        cluster_role = k8s.rbac.v1.ClusterRole(f"{name}-controller-clusterrole", metadata=_meta(cluster_role_name, None, labels),
                                               rules=cluster_rules(), opts=child)
        cluster_role_binding = k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-controller-clusterrolebinding", metadata=_meta(cluster_role_name, None, labels),
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="ClusterRole",
                                             name=cluster_role.metadata.apply(lambda m: m.name)),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=wire.CONTROLLER_NAME, namespace=ns)],
            opts=child)
        role = k8s.rbac.v1.Role(f"{name}-controller-role", metadata=_meta(wire.CONTROLLER_NAME, ns, labels),
                                rules=namespace_rules(), opts=in_ns)
        role_binding = k8s.rbac.v1.RoleBinding(
            f"{name}-controller-rolebinding", metadata=_meta(wire.CONTROLLER_NAME, ns, labels),
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role",
                                             name=role.metadata.apply(lambda m: m.name)),
            subjects=[k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=wire.CONTROLLER_NAME, namespace=ns)],
            opts=in_ns)

        # ------------------------------------------------------------------ controller
        controller_labels = {**labels, **wire.CONTROLLER_POD_LABELS}
        controller = k8s.apps.v1.Deployment(
            f"{name}-controller", metadata=_meta(wire.CONTROLLER_NAME, ns, controller_labels),
            spec=controller_deployment_spec(s, controller_sa.metadata.apply(lambda m: m.name)),
            # The controller starts once its CRDs and all of its RBAC exist — the cluster-wide lists and watches
            # (ClusterRole + ClusterRoleBinding) as well as the namespaced ones: a pod started before would get
            # 403s on the cluster-wide kinds.
            opts=pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(
                depends_on=[*crds, cluster_role, cluster_role_binding, role, role_binding])))
        pdb = k8s.policy.v1.PodDisruptionBudget(
            f"{name}-controller-pdb", metadata=_meta(wire.CONTROLLER_NAME, ns, controller_labels),
            # maxUnavailable, not minAvailable 1: with controller_replicas 1 the latter lets no drain
            # evict the pod, so node drains (upgrades, autoscaling) hang; with 2 both say the same
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1, selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(wire.CONTROLLER_POD_LABELS))),
            opts=in_ns)
        service_labels = {**controller_labels, **({observability.METRICS_LABEL: "true"} if s["service_monitor"] else {})}
        service = k8s.core.v1.Service(
            f"{name}-controller-service", metadata=_meta(wire.CONTROLLER_NAME, ns, service_labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                selector=dict(wire.CONTROLLER_POD_LABELS),
                ports=[k8s.core.v1.ServicePortArgs(name="api", port=s["api_port"], target_port="api", protocol="TCP"),
                       k8s.core.v1.ServicePortArgs(name="dns", port=53, target_port="dns", protocol="UDP"),
                       k8s.core.v1.ServicePortArgs(name="dns-tcp", port=53, target_port="dns-tcp", protocol="TCP")]),
            opts=in_ns)

        # ------------------------------------------------------------------ proxies
        proxy_labels = {**labels, **wire.PROXY_POD_LABELS}
        proxy = k8s.apps.v1.DaemonSet(
            f"{name}-proxy", metadata=_meta(wire.PROXY_NAME, ns, proxy_labels),
            spec=proxy_daemonset_spec(s, ns, proxy_sa.metadata.apply(lambda m: m.name)),
            opts=pulumi.ResourceOptions.merge(in_ns, pulumi.ResourceOptions(depends_on=[service])))

        # ------------------------------------------------------------------ cluster DNS
        self.dns_service_ip = service.spec.apply(lambda spec: spec.cluster_ip)
        if s["patch_coredns"]:
            self.children["cluster-dns"] = ClusterDnsPatch(f"{name}-cluster-dns", style=s["dns_style"], dns_namespace=s["dns_namespace"],
                            domains=s["domains"], dns_ip=self.dns_service_ip, kubeconfig=s["kubeconfig"],
                            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[controller])))

        # ------------------------------------------------------------------ observability
        addon_opts = pulumi.ResourceOptions.merge(
            in_ns, pulumi.ResourceOptions(depends_on=[self.children["namespace"]] if "namespace" in self.children else []))
        addons: list[tuple[str, dict]] = []
        if s["tracing_mode"] == "jaeger":
            addons += [(f"jaeger-{m['kind'].lower()}", m) for m in observability.jaeger_manifests(ns_name, s["jaeger_image"])]
        if s["service_monitor"]:
            addons += [("proxy-metrics-service", observability.proxy_metrics_service(ns_name)),
                       ("service-monitor", observability.service_monitor(ns_name, s["service_monitor_labels"]))]
        if s["prometheus"]:
            addons += [(f"prometheus-{m['kind'].lower()}", m)
                       for m in observability.prometheus_manifests(ns_name, s["prometheus_image"])]
        if s["dashboard"]:
            addons.append(("dashboard", observability.dashboard_configmap(ns_name)))
        for role_name, manifest in addons:
            self.children[role_name] = register_manifest(f"{name}-{role_name}", manifest, addon_opts)

        self.children.update({
            "controller-service-account": controller_sa, "proxy-service-account": proxy_sa,
            "controller-cluster-role": cluster_role, "controller-cluster-role-binding": cluster_role_binding,
            "controller-role": role, "controller-role-binding": role_binding, "controller": controller,
            "controller-pdb": pdb, "controller-service": service, "proxy": proxy})
        self.namespace = ns
        self.domains = pulumi.Output.from_input(list(s["domains"]))
        self.controller_api_url = ns.apply(
            lambda n: f"http://{wire.CONTROLLER_NAME}.{n}.svc.{s['cluster_domain']}:{s['api_port']}")
        self.register_outputs({"namespace": self.namespace, "domains": self.domains,
                               "dns_service_ip": self.dns_service_ip, "controller_api_url": self.controller_api_url})


# ------------------------------------------------------------------------------ pure settings
# Limits on both CPU and memory so the install passes its own policy pack (lightmesh-install-resources).
# The proxy's CPU limit follows proxy_workers (2 by default): one core each, no throttling at full load.
_DEFAULT_CONTROLLER_RESOURCES = {"cpu_request": "100m", "memory_request": "128Mi", "cpu_limit": "1",
                                 "memory_limit": "512Mi"}
_DEFAULT_PROXY_RESOURCES = {"cpu_request": "100m", "memory_request": "128Mi", "cpu_limit": "2",
                            "memory_limit": "512Mi"}


#: Namespaces every cluster has from the start: MeshInstall can install into one, not create it.
KUBERNETES_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")

#: The MeshInstall fields that may be Outputs (each checked when it resolves): they only fill in a value
#: of an object, never decide which objects there are, their names or their shape.
OUTPUT_FIELDS = frozenset({"kubeconfig", "otlp_endpoint", "tracing.endpoint", "tracing.jaeger_image",
                           "metrics.prometheus_image"})
#: Label maps whose values (not keys) may be Outputs, checked as label values when they resolve.
OUTPUT_LABEL_MAPS = frozenset({"proxy_node_selector", "metrics.service_monitor_labels"})


def resolve_settings(name: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults applied and every field validated (errors name the field); no resources created."""
    check = Checker("MeshInstall", name)
    if not isinstance(args, Mapping):
        raise check.fail(f"args must be a mapping, got {type(args).__name__}")
    unknown = set(args) - set(MeshInstallArgs.__annotations__)
    if unknown:
        raise check.fail(f"args has unknown field(s) {', '.join(sorted(map(str, unknown)))}; "
                         f"known: {', '.join(MeshInstallArgs.__annotations__)}")
    # Everything else names cluster objects or shapes manifests, so it must be known at preview (and is
    # validated there), at every level: an Output inside a list or an object too (``domains[0]``).
    for field, value in args.items():
        check.no_outputs(field, value, accepted=OUTPUT_FIELDS, label_maps=OUTPUT_LABEL_MAPS)
    # None means "not given", i.e. the default, for every field, as in the other components: a
    # config-driven program passes ``config.get("logLevel")``, which is None when the key is unset.
    args = _given(args)
    s: dict[str, Any] = {
        "namespace": args.get("namespace", wire.DEFAULT_MESH_NAMESPACE),
        "create_namespace": args.get("create_namespace", True),
        "image": _image(check, args.get("image", DEFAULT_IMAGE), args.get("image_tag")),
        "image_pull_policy": args.get("image_pull_policy", "IfNotPresent"),
        "acl": args.get("acl", False),
        "default_traffic_type": check.enum("default_traffic_type", args.get("default_traffic_type", "http"), TrafficType),
        "domains": check.list_of("domains", args.get("domains", list(wire.DEFAULT_DOMAINS))),
        "cluster_domain": args.get("cluster_domain", "cluster.local"),
        "http_port_base": args.get("http_port_base", wire.HTTP_PORT_BASE),
        "http_port_limit": args.get("http_port_limit", wire.DEFAULT_HTTP_PORT_LIMIT),
        "tcp_port_base": args.get("tcp_port_base", wire.TCP_PORT_BASE),
        "tcp_port_limit": args.get("tcp_port_limit", wire.DEFAULT_TCP_PORT_LIMIT),
        "udp_port_base": args.get("udp_port_base", wire.UDP_PORT_BASE),
        "udp_port_limit": args.get("udp_port_limit", wire.DEFAULT_UDP_PORT_LIMIT),
        "log_level": check.enum("log_level", args.get("log_level", "info"), LogLevel),
        "log_format": check.enum("log_format", args.get("log_format", "text"), LogFormat),
        "otlp_endpoint": args.get("otlp_endpoint"),
        "watch_namespaces": check.list_of("watch_namespaces", args.get("watch_namespaces") or []),
        "ignore_namespaces": check.list_of("ignore_namespaces", args.get("ignore_namespaces") or []),
        "controller_replicas": args.get("controller_replicas", 2),
        "controller_resources": {**_DEFAULT_CONTROLLER_RESOURCES,
                                 **_given(check.mapping("controller_resources", args.get("controller_resources", {})))},
        "proxy_resources": {**_DEFAULT_PROXY_RESOURCES,
                            **_given(check.mapping("proxy_resources", args.get("proxy_resources", {})))},
        "proxy_cpu_limit_given": _given(args.get("proxy_resources", {})).get("cpu_limit") is not None,
        "proxy_workers": args.get("proxy_workers", 2),
        "proxy_max_surge": args.get("proxy_max_surge", 1),
        "proxy_response_timeout": args.get("proxy_response_timeout", 0),
        "proxy_body_timeout": args.get("proxy_body_timeout", 60),
        "proxy_tolerations": check.list_of("proxy_tolerations", args.get("proxy_tolerations", [{"operator": "Exists"}])),
        "proxy_node_selector": check.mapping("proxy_node_selector",
                                             args.get("proxy_node_selector", {"kubernetes.io/os": "linux"})),
        "proxy_priority_class_name": args.get("proxy_priority_class_name"),
        "patch_coredns": args.get("patch_coredns", True),
        "dns_style": check.enum("dns_style", args.get("dns_style", "auto"), DnsStyle),
        "dns_namespace": args.get("dns_namespace", "kube-system"),
        "kubeconfig": args.get("kubeconfig"),
        "api_port": wire.DEFAULT_CONTROLLER_API_PORT,
        "admin_port": wire.DEFAULT_PROXY_ADMIN_PORT,
    }
    check.dns_label("namespace", s["namespace"])
    if s["namespace"] == "default":
        raise check.fail("namespace must not be 'default': the controller never meshes the Services of its own "
                         "namespace (its shadow Services live there), so every application in 'default' would be "
                         "left out of the mesh; use a namespace of its own, e.g. 'lightmesh' (the default)")
    if s["namespace"] in KUBERNETES_NAMESPACES and s["create_namespace"] is True:
        raise check.fail(f"namespace {s['namespace']!r} always exists (Kubernetes creates it), so with create_namespace "
                         f"true (the default) `pulumi up` would fail creating it (AlreadyExists); set create_namespace "
                         f"false to install into it, or use a namespace of its own, e.g. 'lightmesh' (the default)")
    check.dns_label("dns_namespace", s["dns_namespace"])
    check.dns_name("cluster_domain", s["cluster_domain"])
    check.string("image", s["image"])
    if s["image_pull_policy"] not in ("IfNotPresent", "Always", "Never"):
        raise check.fail(f"image_pull_policy must be one of IfNotPresent, Always, Never, got {s['image_pull_policy']!r}")
    for field in ("create_namespace", "acl", "patch_coredns"):
        if not isinstance(s[field], bool):
            raise check.fail(f"{field} must be true or false, got {s[field]!r}")
    if s["kubeconfig"] is not None:  # the dynamic provider would fail only at deploy, inside lightkube
        s["kubeconfig"] = when_known(s["kubeconfig"], lambda v: _check_kubeconfig(check, v))
    if not s["domains"]:
        raise check.fail("domains must list at least one domain")
    for i, d in enumerate(s["domains"]):
        check.dns_name(f"domains[{i}]", d)
    check.unique("domains", s["domains"])
    cluster_domain = s["cluster_domain"].strip(".").lower()
    for i, d in enumerate(s["domains"]):
        # The cluster DNS sends a query to the server block of its longest zone: a mesh domain equal
        # to, above or below the cluster domain, or in the reverse-lookup tree, takes those lookups
        # from the cluster DNS and every Service name (or PTR) in the cluster stops resolving.
        zone = d.strip(".").lower()
        if zone == cluster_domain or zone.endswith("." + cluster_domain) or cluster_domain.endswith("." + zone):
            raise check.fail(f"domains[{i}] {d!r} would take the cluster domain {s['cluster_domain']!r} "
                             "(or part of it) from the cluster DNS; choose a domain outside it")
        if zone == "arpa" or zone.endswith(".arpa"):
            raise check.fail(f"domains[{i}] {d!r} would take reverse lookups (arpa) from the cluster DNS; "
                             "choose another domain")
    for field in ("controller_replicas", "proxy_workers", "proxy_max_surge"):
        s[field] = _int(check, field, s[field], 1, 64)
    if not s.pop("proxy_cpu_limit_given"):  # one CPU per worker: no throttling when every worker is busy
        s["proxy_resources"]["cpu_limit"] = str(s["proxy_workers"])
    for field, low in (("proxy_response_timeout", 0.0), ("proxy_body_timeout", 0.001)):
        s[field] = _seconds(check, field, s[field], low)
    ranges = []
    for proto, limit_max in (("http", 100), ("tcp", 1000), ("udp", 1000)):
        base = s[f"{proto}_port_base"] = _int(check, f"{proto}_port_base", s[f"{proto}_port_base"], 1024, 65535)
        limit = s[f"{proto}_port_limit"] = _int(check, f"{proto}_port_limit", s[f"{proto}_port_limit"], 1, limit_max)
        if base + limit - 1 > 65535:
            raise check.fail(f"{proto}_port_base + {proto}_port_limit goes past port 65535 ({base}+{limit})")
        ranges.append((proto, base, base + limit - 1))
    reserved = {s["api_port"]: "the controller API port", s["admin_port"]: "the proxy admin port"}
    for i, (proto, low, high) in enumerate(ranges):
        for other, olow, ohigh in ranges[i + 1:]:
            if low <= ohigh and olow <= high:
                raise check.fail(f"{proto} port range {low}-{high} overlaps the {other} port range {olow}-{ohigh}")
        for port, what in reserved.items():
            if low <= port <= high:
                raise check.fail(f"{proto} port range {low}-{high} includes {what} {port}")
    for field in ("watch_namespaces", "ignore_namespaces"):
        for i, n in enumerate(s[field]):
            check.dns_label(f"{field}[{i}]", n)
    if s["namespace"] in s["watch_namespaces"]:
        raise check.fail(f"watch_namespaces[{s['watch_namespaces'].index(s['namespace'])}] is the mesh namespace "
                         f"{s['namespace']!r}, whose Services the controller never meshes; remove it (and keep "
                         f"applications out of the mesh namespace)")
    if "kube-system" in s["watch_namespaces"]:
        raise check.fail(f"watch_namespaces[{s['watch_namespaces'].index('kube-system')}] is kube-system, whose "
                         f"Services the controller never meshes; remove it")
    overlap = set(s["watch_namespaces"]) & set(s["ignore_namespaces"])
    if overlap:
        raise check.fail(f"namespaces both watched and ignored: {', '.join(sorted(overlap))}")
    # An endpoint given turns tracing on (mode otlp) at preview, so an Output one may not resolve to
    # None: the containers would get "--otlp-endpoint None". The checked value is the one used.
    if s["otlp_endpoint"] is not None:
        s["otlp_endpoint"] = when_known(s["otlp_endpoint"], lambda v: _check_url(check, "otlp_endpoint", v),
                                        none_ok=False)
    s.update(observability.resolve(check, check.mapping("tracing", args.get("tracing") or {}),
                                   check.mapping("metrics", args.get("metrics") or {}), s["otlp_endpoint"]))
    if (args.get("tracing") or {}).get("endpoint") is not None:  # otlp_endpoint was checked above
        s["tracing_endpoint"] = when_known(s["tracing_endpoint"],
                                           lambda v: _check_url(check, "tracing.endpoint", v), none_ok=False)
    # The one endpoint both roles get: the bundled Jaeger's, the user's, or none.
    s["otlp_endpoint"] = {"off": None, "otlp": s["tracing_endpoint"],
                          "jaeger": observability.jaeger_endpoint(s["namespace"], s["cluster_domain"])}[s["tracing_mode"]]
    for which in ("controller_resources", "proxy_resources"):
        for key, value in s[which].items():
            if key not in ResourcesArgs.__annotations__:
                raise check.fail(f"{which}.{key} is not a known field (cpu_request, memory_request, cpu_limit, memory_limit)")
            if value != "":  # "" removes a default (e.g. teams that run proxies without CPU limits)
                check.quantity(f"{which}.{key}", value)
        given = args.get(which) or {}
        for resource in ("cpu", "memory"):
            request, limit = s[which][f"{resource}_request"], s[which][f"{resource}_limit"]
            if request and limit and quantity_value(request) > quantity_value(limit):
                whose = "" if f"{resource}_limit" in given else (
                    " (the default: one CPU per proxy worker)" if (which, resource) == ("proxy_resources", "cpu")
                    else " (the default)")
                raise check.fail(f"{which}.{resource}_request {shown(request)} is more than {which}.{resource}_limit "
                                 f"{shown(limit)}{whose}: Kubernetes refuses a request above its limit; lower the "
                                 f"request or raise {resource}_limit")
    for i, t in enumerate(s["proxy_tolerations"]):
        if not isinstance(t, Mapping) or set(t) - set(TolerationArgs.__annotations__):
            raise check.fail(f"proxy_tolerations[{i}] must only have key, operator, value, effect; got {t!r}")
        t = s["proxy_tolerations"][i] = _given(t)
        if t.get("operator", "Equal") not in ("Equal", "Exists"):
            raise check.fail(f"proxy_tolerations[{i}].operator must be Equal or Exists, got {t.get('operator')!r}")
        if t.get("effect") not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise check.fail(f"proxy_tolerations[{i}].effect must be NoSchedule, PreferNoSchedule or NoExecute, "
                             f"got {t.get('effect')!r}")
        if t.get("operator") == "Exists" and t.get("value"):
            raise check.fail(f"proxy_tolerations[{i}].value must be empty with operator Exists")
        # The API server refuses a toleration without a key unless its operator is Exists ("operator must be
        # Exists when `key` is empty"): Kubernetes' ValidateTolerations
        if not t.get("key") and t.get("operator", "Equal") != "Exists":
            raise check.fail(f"proxy_tolerations[{i}].operator must be Exists when key is empty, got "
                             f"{t.get('operator', 'Equal')!r}{'' if 'operator' in t else ' (the default)'}: "
                             f"Kubernetes refuses it; give a key, or operator Exists to tolerate every taint"
                             f"{' of effect ' + t['effect'] if t.get('effect') else ''}")
        # Kubernetes validates a toleration's key as a label name and its value as a label value
        if t.get("key") and (problem := label_name_problem(t["key"])):
            raise check.fail(f"proxy_tolerations[{i}].key {shown(t['key'])} {problem}")
        if t.get("value") is not None and (problem := label_value_problem(t["value"])):
            raise check.fail(f"proxy_tolerations[{i}].value {shown(t['value'])} {problem}")
    s["proxy_node_selector"] = check.labels("proxy_node_selector", s["proxy_node_selector"])
    if s["proxy_priority_class_name"] is not None:
        check.dns_subdomain("proxy_priority_class_name", s["proxy_priority_class_name"])
    return s


# An image reference as the container runtimes read it (github.com/distribution/reference):
# [host[:port]/]path[:tag][@algorithm:hex]; path components lowercase.
_IMAGE_HOST = r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)*(?::[0-9]+)?/)?"
_IMAGE_PATH = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*"
_IMAGE_REFERENCE = re.compile(rf"(?P<name>{_IMAGE_HOST}{_IMAGE_PATH})(?::(?P<tag>[\w][\w.-]{{0,127}}))?"
                              rf"(?:@(?P<digest>.*))?")
_IMAGE_DIGEST = re.compile(r"sha256:[a-f0-9]{64}|sha384:[a-f0-9]{96}|sha512:[a-f0-9]{128}")


def image_reference_problem(image: str) -> str | None:
    """Why ``image`` is not an image reference a node could pull, or None."""
    found = _IMAGE_REFERENCE.fullmatch(image)
    if found is None:
        return ("is not an image reference ([registry[:port]/]repository[:tag][@digest]; the repository in "
                "lowercase letters, digits and separators, no spaces)")
    if len(found["name"]) > 255:
        return "has a repository name longer than 255 characters"
    if found["digest"] is not None and not _IMAGE_DIGEST.fullmatch(found["digest"]):
        return ("has a malformed digest (expected @sha256:, @sha384: or @sha512: and 64, 96 or 128 lowercase hex "
                "digits)")
    return None


def quantity_value(quantity: str) -> Decimal:
    """A Kubernetes quantity (``100m``, ``1.5``, ``64Mi``, ``2e3``) as a number, to compare two."""
    found = re.fullmatch(r"[+]?([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(.*)", quantity)
    if found is None:
        raise ValueError(f"not a quantity: {quantity[:60]!r}")
    number, suffix = Decimal(found[1]), found[2]
    if suffix[:1] in ("e", "E"):
        if not re.fullmatch(r"[-+]?[0-9]{1,3}", suffix[1:]):  # as Checker.quantity (int() of 5,000 digits raises)
            raise ValueError(f"not a quantity: {quantity[:60]!r}")
        return number * Decimal(10) ** int(suffix[1:])
    binary = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
    decimal = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
    if suffix in binary:
        return number * Decimal(1024) ** binary[suffix]
    return number * Decimal(10) ** decimal[suffix]


def _image(check: Checker, image: Any, tag: Any) -> Any:
    """``image`` with its tag replaced by ``tag`` when one is given."""
    check.string("image", image)
    if problem := image_reference_problem(image):
        raise check.fail(f"image {problem}, got {image!r}")
    if tag is None:
        return image
    if not isinstance(tag, str) or not _IMAGE_TAG.fullmatch(tag):
        raise check.fail(f"image_tag must be an image tag (letters, digits, '_', '.', '-'; at most 128, "
                         f"not starting with '.' or '-'), got {tag!r}")
    if "@" in image:
        raise check.fail(f"image_tag cannot be combined with a digest in image ({image!r}): give one of them")
    repository = image
    name_start = image.rfind("/") + 1
    if ":" in image[name_start:]:  # a registry port (host:5000/x) is before the last '/', a tag after it
        repository = image[:name_start] + image[name_start:].split(":", 1)[0]
    return f"{repository}:{tag}"


_IMAGE_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def _int(check: Checker, field: str, value: Any, low: int, high: int) -> int:
    check.integer(field, value, low, high)  # a whole number in range (a whole float too), or it raises
    return int(value)


def _seconds(check: Checker, field: str, value: Any, low: float) -> float:
    """A duration in seconds, ``low`` to one day (what ``lightmesh proxy`` accepts)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise check.fail(f"{field} must be a number of seconds, got {shown(value)}")
    if not low <= value <= 86400:  # exact for ints of any size: no float() before the range check
        bound = "between 0 and 86400" if low == 0 else "more than 0 and at most 86400"
        raise check.fail(f"{field} must be {bound} seconds, got {shown(value)}")
    return float(value)


def _given(fields: Any) -> Any:
    """A mapping without its None values (None = not given = the default); anything else unchanged."""
    return {k: v for k, v in fields.items() if v is not None} if isinstance(fields, Mapping) else fields


def _check_kubeconfig(check: Checker, value: Any) -> None:
    # the value is a secret: the message names its type, never its contents
    if not isinstance(value, str) or not value.strip():
        got = "an empty string" if isinstance(value, str) else f"a value of type {type(value).__name__}"
        raise check.fail(f"kubeconfig must be the contents of a kubeconfig file (a non-empty string), got {got}")


def kubernetes_provider_option(opts: Optional[pulumi.ResourceOptions]) -> Optional[str]:
    """Which resource option gives the children an explicit Kubernetes provider (``provider``,
    ``providers`` as a list or a dict, or the parent's providers), or None for the default provider."""
    if opts is None:
        return None
    if getattr(opts.provider, "package", None) == "kubernetes":
        return "provider"
    providers = opts.providers
    if isinstance(providers, Mapping):
        providers = list(providers.values())
    if any(getattr(p, "package", None) == "kubernetes" for p in providers or []):
        return "providers"
    if isinstance(getattr(opts.parent, "_providers", None), Mapping) and "kubernetes" in opts.parent._providers:
        return "providers inherited from the parent"
    return None


def _check_url(check: Checker, field: str, value: Any) -> None:
    if value is None:  # only an Output gets here with None: a plain None is "not given"
        raise check.fail(f"{field} must be an http:// or https:// URL, got None: given as an Output, it must "
                         f"resolve to an endpoint, as tracing was set up for one at preview (leave the field out "
                         f"for no tracing)")
    if not isinstance(value, str) or not value.startswith(("http://", "https://")) or len(value) < 9:
        raise check.fail(f"{field} must be an http:// or https:// URL, got {value!r}")


# ------------------------------------------------------------------------------ pure renderers
def controller_command(s: Mapping[str, Any]) -> list[str]:
    """The controller container's command line for resolved settings ``s``."""
    cmd = ["lightmesh", "controller", "--namespace", s["namespace"]]
    if s["acl"]:
        cmd.append("--acl")
    cmd += ["--default-mode", TrafficType(s["default_traffic_type"]).value,
            "--domains", ",".join(s["domains"]),
            "--http-port-base", str(s["http_port_base"]), "--http-port-limit", str(s["http_port_limit"]),
            "--tcp-port-base", str(s["tcp_port_base"]), "--tcp-port-limit", str(s["tcp_port_limit"]),
            "--udp-port-base", str(s["udp_port_base"]), "--udp-port-limit", str(s["udp_port_limit"]),
            "--api-port", str(s["api_port"]), "--dns-port", str(CONTROLLER_DNS_CONTAINER_PORT),
            "--log-level", LogLevel(s["log_level"]).value, "--log-format", LogFormat(s["log_format"]).value,
            # go on answering DNS and config, not ready, while the Service stops sending here
            "--shutdown-delay", f"{wire.SHUTDOWN_DELAY_SECONDS:g}"]
    if s.get("otlp_endpoint"):
        cmd += ["--otlp-endpoint", s["otlp_endpoint"]]
    if s["watch_namespaces"]:
        cmd += ["--watch-namespaces", ",".join(s["watch_namespaces"])]
    if s["ignore_namespaces"]:
        cmd += ["--ignore-namespaces", ",".join(s["ignore_namespaces"])]
    cmd.append("--leader-election")
    return cmd


def proxy_command(s: Mapping[str, Any], namespace: str) -> list[str]:
    """The proxy container's command line (``namespace`` is the resolved mesh namespace)."""
    url = f"http://{wire.CONTROLLER_NAME}.{namespace}.svc.{s['cluster_domain']}:{s['api_port']}"
    cmd = ["lightmesh", "proxy", "--controller", url, "--admin-port", str(s["admin_port"]),
           "--workers", str(s["proxy_workers"]),
           "--log-level", LogLevel(s["log_level"]).value, "--log-format", LogFormat(s["log_format"]).value,
           # serve on, not ready, while kube-proxy stops sending here; then drain (15 s): within the
           # pod's 30 s grace period
           "--shutdown-delay", f"{wire.SHUTDOWN_DELAY_SECONDS:g}"]
    if s.get("proxy_response_timeout"):
        cmd += ["--response-timeout", repr(float(s["proxy_response_timeout"]))]
    if s.get("proxy_body_timeout", 60) != 60:
        cmd += ["--body-timeout", repr(float(s["proxy_body_timeout"]))]
    if s.get("otlp_endpoint"):
        cmd += ["--otlp-endpoint", s["otlp_endpoint"],
                "--trace-sample-ratio", repr(float(s.get("trace_sample_ratio", 1.0)))]
    return cmd


def cluster_rules() -> list[k8s.rbac.v1.PolicyRuleArgs]:
    """Cluster-wide, read-only except Events: what the controller watches everywhere."""
    read = ["get", "list", "watch"]
    return [
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["services", "pods"], verbs=read),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=["discovery.k8s.io"], resources=["endpointslices"], verbs=read),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[smi.ACCESS_GROUP], resources=["traffictargets"], verbs=read),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[smi.SPECS_GROUP],
                                   resources=["httproutegroups", "tcproutes", "udproutes"], verbs=read),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[smi.SPLIT_GROUP], resources=["trafficsplits"], verbs=read),
        # Gateway API mesh routes (HTTPRoutes, GRPCRoutes with a Service parent), when the cluster has the CRDs
        k8s.rbac.v1.PolicyRuleArgs(api_groups=["gateway.networking.k8s.io"], resources=["httproutes", "grpcroutes",
                                                                                      "tcproutes", "udproutes"],
                                   verbs=read),
        # Events (core v1) on the objects it rejects (bad annotations, dangling references), in their
        # namespaces. (get: a restarted controller reads an Event's count before it counts on)
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["events"], verbs=["create", "get", "patch"]),
    ]


def namespace_rules() -> list[k8s.rbac.v1.PolicyRuleArgs]:
    """Mesh-namespace only: shadow Services and the leader-election Lease (exactly the verbs the
    controller uses: it writes with POST, merge/apply PATCH and DELETE, never PUT)."""
    return [
        k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["services"],
                                   verbs=["get", "list", "watch", "create", "patch", "delete"]),
        # `create` cannot be limited by resourceNames; get/patch are limited to our Lease.
        k8s.rbac.v1.PolicyRuleArgs(api_groups=["coordination.k8s.io"], resources=["leases"], verbs=["create"]),
        k8s.rbac.v1.PolicyRuleArgs(api_groups=["coordination.k8s.io"], resources=["leases"],
                                   resource_names=[wire.LEASE_NAME], verbs=["get", "patch"]),
    ]


def _security_context() -> k8s.core.v1.SecurityContextArgs:
    return k8s.core.v1.SecurityContextArgs(
        allow_privilege_escalation=False, read_only_root_filesystem=True, run_as_non_root=True,
        run_as_user=RUN_AS_USER, run_as_group=RUN_AS_USER,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"))


def _resources(r: Mapping[str, str]) -> k8s.core.v1.ResourceRequirementsArgs:
    requests = {k: v for k, v in (("cpu", r.get("cpu_request")), ("memory", r.get("memory_request"))) if v}
    limits = {k: v for k, v in (("cpu", r.get("cpu_limit")), ("memory", r.get("memory_limit"))) if v}
    return k8s.core.v1.ResourceRequirementsArgs(requests=requests or None, limits=limits or None)


def _env_field(name: str, path: str) -> k8s.core.v1.EnvVarArgs:
    return k8s.core.v1.EnvVarArgs(name=name, value_from=k8s.core.v1.EnvVarSourceArgs(
        field_ref=k8s.core.v1.ObjectFieldSelectorArgs(field_path=path)))


def controller_deployment_spec(s: Mapping[str, Any], service_account: Any) -> k8s.apps.v1.DeploymentSpecArgs:
    readiness = k8s.core.v1.HTTPGetActionArgs(path=wire.READINESS_PATH, port="api")
    container = k8s.core.v1.ContainerArgs(
        name="controller", image=s["image"], image_pull_policy=s["image_pull_policy"],
        command=controller_command(s),
        env=[_env_field(wire.ENV_POD_NAME, "metadata.name")],
        ports=[k8s.core.v1.ContainerPortArgs(name="api", container_port=s["api_port"], protocol="TCP"),
               k8s.core.v1.ContainerPortArgs(name="dns", container_port=CONTROLLER_DNS_CONTAINER_PORT, protocol="UDP"),
               k8s.core.v1.ContainerPortArgs(name="dns-tcp", container_port=CONTROLLER_DNS_CONTAINER_PORT,
                                             protocol="TCP")],
        readiness_probe=k8s.core.v1.ProbeArgs(http_get=readiness, period_seconds=5, failure_threshold=3),
        # Liveness: /live answers while the event loop runs, syncing or not (a replica still syncing
        # its caches is alive but not yet ready); a TCP probe would pass a hung process too (the
        # kernel completes the handshake from the listen backlog).
        liveness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(path="/live", port="api"),
                                             initial_delay_seconds=10, period_seconds=10, failure_threshold=6),
        resources=_resources(s["controller_resources"]), security_context=_security_context())
    return k8s.apps.v1.DeploymentSpecArgs(
        replicas=s["controller_replicas"],
        selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(wire.CONTROLLER_POD_LABELS)),
        strategy=k8s.apps.v1.DeploymentStrategyArgs(
            type="RollingUpdate",
            rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0)),
        template=k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(labels=dict(wire.CONTROLLER_POD_LABELS),
                                                annotations=_scrape(s, s["api_port"])),
            spec=k8s.core.v1.PodSpecArgs(
                service_account_name=service_account, containers=[container],
                # Spread replicas over nodes so one node failure never takes every DNS server down.
                topology_spread_constraints=[k8s.core.v1.TopologySpreadConstraintArgs(
                    max_skew=1, topology_key="kubernetes.io/hostname", when_unsatisfiable="ScheduleAnyway",
                    label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(wire.CONTROLLER_POD_LABELS)))],
                security_context=k8s.core.v1.PodSecurityContextArgs(run_as_non_root=True)))
    )


def proxy_ports(s: Mapping[str, Any]) -> list[k8s.core.v1.ContainerPortArgs]:
    ports = [k8s.core.v1.ContainerPortArgs(name="admin", container_port=s["admin_port"], protocol="TCP")]
    for proto in ("http", "tcp", "udp"):
        base, limit = s[f"{proto}_port_base"], s[f"{proto}_port_limit"]
        ports += [k8s.core.v1.ContainerPortArgs(name=f"{proto}-{i}", container_port=base + i,
                                                protocol="UDP" if proto == "udp" else "TCP")
                  for i in range(limit)]
    return ports


def proxy_daemonset_spec(s: Mapping[str, Any], namespace: Any, service_account: Any) -> k8s.apps.v1.DaemonSetSpecArgs:
    container = k8s.core.v1.ContainerArgs(
        name="proxy", image=s["image"], image_pull_policy=s["image_pull_policy"],
        command=pulumi.Output.from_input(namespace).apply(lambda n: proxy_command(s, n)),
        env=[_env_field(wire.ENV_POD_NAME, "metadata.name"), _env_field(wire.ENV_NODE_NAME, "spec.nodeName"),
             # glibc malloc: return freed arenas to the OS, fewer brk/mmap calls under load.
             k8s.core.v1.EnvVarArgs(name="MALLOC_TRIM_THRESHOLD_", value="268435456"),
             k8s.core.v1.EnvVarArgs(name="MALLOC_TOP_PAD_", value="67108864")],
        ports=proxy_ports(s),
        readiness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(path="/ping", port="admin"),
                                              period_seconds=5, failure_threshold=2),
        liveness_probe=k8s.core.v1.ProbeArgs(http_get=k8s.core.v1.HTTPGetActionArgs(path="/live", port="admin"),
                                             initial_delay_seconds=5, period_seconds=10, failure_threshold=3),
        resources=_resources(s["proxy_resources"]), security_context=_security_context())
    tolerations = [k8s.core.v1.TolerationArgs(**{k: v for k, v in t.items()}) for t in s["proxy_tolerations"]]
    return k8s.apps.v1.DaemonSetSpecArgs(
        selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(wire.PROXY_POD_LABELS)),
        # Surge: the new proxy is ready on a node before the old one stops (no port clash: the proxy
        # uses container ports reached through the shadow Services, not hostPorts).
        update_strategy=k8s.apps.v1.DaemonSetUpdateStrategyArgs(
            type="RollingUpdate",
            rolling_update=k8s.apps.v1.RollingUpdateDaemonSetArgs(max_surge=s["proxy_max_surge"], max_unavailable=0)),
        template=k8s.core.v1.PodTemplateSpecArgs(
            metadata=k8s.meta.v1.ObjectMetaArgs(labels=dict(wire.PROXY_POD_LABELS),
                                                annotations=_scrape(s, s["admin_port"])),
            spec=k8s.core.v1.PodSpecArgs(
                service_account_name=service_account, automount_service_account_token=False,
                containers=[container], tolerations=tolerations, node_selector=s["proxy_node_selector"] or None,
                priority_class_name=s["proxy_priority_class_name"],
                termination_grace_period_seconds=30,
                security_context=k8s.core.v1.PodSecurityContextArgs(run_as_non_root=True))))


def _scrape(s: Mapping[str, Any], port: int) -> dict[str, str] | None:
    return observability.scrape_annotations(port) if s.get("scrape_annotations", True) else None


# kind → resource class for the observability manifests (plain dicts from mesh_components.observability)
_KINDS = {
    ("v1", "Service"): k8s.core.v1.Service, ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
    ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount, ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
    ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
}
_FIELDS = {"metadata": "metadata", "spec": "spec", "data": "data", "rules": "rules", "roleRef": "role_ref",
           "subjects": "subjects"}


def register_manifest(resource_name: str, manifest: Mapping[str, Any], opts: pulumi.ResourceOptions) -> pulumi.Resource:
    """Register a plain manifest dict as its typed pulumi-kubernetes resource (a CustomResource for
    kinds pulumi-kubernetes has no class for, such as the Prometheus Operator's ServiceMonitor)."""
    cls = _KINDS.get((manifest["apiVersion"], manifest["kind"]))
    if cls is None:
        return k8s.apiextensions.CustomResource(
            resource_name, api_version=manifest["apiVersion"], kind=manifest["kind"],
            metadata=manifest["metadata"], spec=manifest.get("spec"), opts=opts)
    return cls(resource_name, **{_FIELDS[k]: v for k, v in manifest.items() if k in _FIELDS}, opts=opts)


def _meta(name: Any, namespace: Any, labels: Mapping[str, str]) -> k8s.meta.v1.ObjectMetaArgs:
    return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=namespace, labels=dict(labels))
