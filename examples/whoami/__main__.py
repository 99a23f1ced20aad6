"""whoami over the mesh (HTTP on port 80, TCP on 8080), on a cluster where Lightmesh is installed by
a program of your own that declares only ``MeshInstall``. The root stack and ``examples/acl`` already
deploy these very objects (namespace ``whoami`` included): next to either, ``pulumi up`` here fails
with AlreadyExists (pulumi-kubernetes 4.29+ refuses objects that exist).

    pulumi up
    kubectl -n whoami exec -it whoami-client -- curl -s whoami.whoami.traefik.mesh
    kubectl -n whoami exec -it whoami-client -- ash -c 'echo hi | nc whoami-tcp.whoami.traefik.mesh 8080'

Config: ``lightmesh-whoami:acl`` (true when the mesh runs in ACL mode: adds the AccessPolicy that lets
``whoami-client`` in).
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "_bootstrap.py"))

import pulumi  # noqa: E402

from mesh_components.examples import deploy_whoami  # noqa: E402

config = pulumi.Config()
app = deploy_whoami(acl=config.get_bool("acl") or False)
pulumi.export("whoamiHosts", app.http_service.host_names)
pulumi.export("whoamiTcpHosts", app.tcp_service.host_names)
