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
from mesh_components.cluster_dns import DnsStyle
from mesh_components.install import LogFormat, LogLevel, MeshInstall, MeshInstallArgs, ResourcesArgs, TolerationArgs
from mesh_components.observability import MetricsArgs, TracingArgs
from mesh_components.service import MeshService, MeshServiceArgs, ServicePortArgs
from lightmesh.annotations import Scheme, TrafficType

COMPONENTS = [MeshInstall, MeshService, AccessPolicy, TrafficSplit]

__all__ = [
    "PACKAGE", "VERSION", "COMPONENTS", "ComponentArgsError",
    "MeshInstall", "MeshInstallArgs", "ResourcesArgs", "TolerationArgs", "TracingArgs", "MetricsArgs",
    "LogLevel", "LogFormat", "DnsStyle", "TrafficType", "Scheme",
    "MeshService", "MeshServiceArgs", "ServicePortArgs",
    "AccessPolicy", "AccessPolicyArgs", "AccessSourceArgs", "HttpMatchArgs", "PortMatchArgs",
    "TrafficSplit", "TrafficSplitArgs", "BackendArgs",
]
