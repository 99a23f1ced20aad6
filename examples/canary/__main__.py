"""Canary release with an SMI TrafficSplit: ``web`` → 90 % ``web-v1``, 10 % ``web-v2``, on a cluster
where Lightmesh is installed without ACL mode (the root stack: it brings the SMI CRDs this program's
TrafficSplit needs). Not on ``examples/acl``: in ACL mode every request to ``web`` is refused (403),
as this program declares no AccessPolicy letting a client in.

    pulumi up
    pulumi config set canaryWeight 50 && pulumi up      # shift more traffic to v2
    kubectl run -it --rm c --image=giantswarm/tiny-tools:3.9 -- \\
        sh -c 'for i in $(seq 20); do curl -s web.shop.traefik.mesh | grep Name; done'
"""

import runpy
from pathlib import Path

runpy.run_path(str(Path(__file__).resolve().parent.parent / "_bootstrap.py"))

import pulumi  # noqa: E402

from mesh_components.examples import deploy_canary  # noqa: E402

config = pulumi.Config()
weight = config.get_int("canaryWeight")  # 0 is a valid weight (roll back to v1 only), so no `or 10`
app = deploy_canary(canary_weight=10 if weight is None else weight)
pulumi.export("webHosts", app.service.host_names)
pulumi.export("totalWeight", app.split.total_weight)
