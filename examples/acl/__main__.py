"""ACL mode: Lightmesh denies by default; an AccessPolicy allows ``whoami-client`` only.

Installs the mesh with ``acl: true``, the whoami example with its AccessPolicy, and a second client
pod ``intruder`` running as the namespace's ``default`` ServiceAccount:

    kubectl -n whoami exec whoami-client -- curl -s -o /dev/null -w '%{http_code}\\n' whoami.whoami.traefik.mesh  # 200
    kubectl -n whoami exec intruder      -- curl -s -o /dev/null -w '%{http_code}\\n' whoami.whoami.traefik.mesh  # 403

Config: ``lightmesh-acl:patchCoredns`` (default true).
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "_bootstrap.py"))

import pulumi  # noqa: E402

from mesh_components import MeshInstall  # noqa: E402
from mesh_components.examples import client_pod, deploy_whoami  # noqa: E402

config = pulumi.Config()
patch = config.get_bool("patchCoredns")
mesh = MeshInstall("lightmesh", {"acl": True, "patch_coredns": True if patch is None else patch})
app = deploy_whoami(acl=True, domains=mesh.domains, opts=pulumi.ResourceOptions(depends_on=[mesh]))
intruder = client_pod("intruder", app.namespace, "default", pulumi.ResourceOptions(depends_on=[mesh]))
pulumi.export("whoamiHosts", app.http_service.host_names)
pulumi.export("allowedSources", ["whoami/whoami-client"])
