"""The Lightmesh stack: the mesh, plus the whoami example from the seed article.

    pulumi config set lightmesh:acl true      # ACL mode; the whoami client gets an AccessPolicy
    pulumi up

Config (all optional): ``lightmesh:acl`` (default false), ``lightmesh:image``,
``lightmesh:patchCoredns`` (default true; false to leave the cluster DNS alone, e.g. offline
rendering), ``lightmesh:dnsStyle`` (auto, corefile, coredns-custom, kube-dns).
"""

import pulumi

from mesh_components import MeshInstall
from mesh_components.examples import deploy_whoami

config = pulumi.Config()
acl = config.get_bool("acl") or False
patch_coredns = config.get_bool("patchCoredns")

mesh = MeshInstall("lightmesh", {
    "acl": acl,
    "image": config.get("image") or "ghcr.io/lightmesh/lightmesh:0.1.0",
    "patch_coredns": True if patch_coredns is None else patch_coredns,
    "dns_style": config.get("dnsStyle") or "auto",
})
whoami = deploy_whoami(acl=acl, domains=mesh.domains, opts=pulumi.ResourceOptions(depends_on=[mesh]))

pulumi.export("meshNamespace", mesh.namespace)
pulumi.export("meshDnsServiceIp", mesh.dns_service_ip)
pulumi.export("controllerApiUrl", mesh.controller_api_url)
pulumi.export("whoamiHosts", whoami.http_service.host_names)
pulumi.export("whoamiTcpHosts", whoami.tcp_service.host_names)
pulumi.export("acl", acl)
