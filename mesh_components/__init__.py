"""Lightmesh Pulumi components.

``MeshInstall`` installs the mesh (namespace, SMI CRDs, RBAC, controller, proxy DaemonSet, cluster DNS
forwarding); ``MeshService`` puts a Service into the mesh; ``AccessPolicy`` and ``TrafficSplit`` write
SMI objects. All four are typed (TypedDict args), validate their args when constructed, and are also
served to other languages by the component provider host (``PulumiPlugin.yaml``, package
``lightmesh``). See ``docs/components.md``.
"""

from mesh_components._common import PACKAGE, VERSION, ComponentArgsError
from mesh_components.access import (AccessPolicy, AccessPolicyArgs, AccessSourceArgs, BackendArgs, HttpMatchArgs,
                                    PortMatchArgs, TrafficSplit, TrafficSplitArgs)
from mesh_components.install import MeshInstall, MeshInstallArgs
from mesh_components.service import MeshService, MeshServiceArgs, ServicePortArgs

COMPONENTS = [MeshInstall, MeshService, AccessPolicy, TrafficSplit]

__all__ = [
    "PACKAGE", "VERSION", "COMPONENTS", "ComponentArgsError",
    "MeshInstall", "MeshInstallArgs",
    "MeshService", "MeshServiceArgs", "ServicePortArgs",
    "AccessPolicy", "AccessPolicyArgs", "AccessSourceArgs", "HttpMatchArgs", "PortMatchArgs",
    "TrafficSplit", "TrafficSplitArgs", "BackendArgs",
]
