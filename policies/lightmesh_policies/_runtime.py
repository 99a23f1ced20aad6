"""The runtime's shared pure code, imported once: ``lightmesh.annotations``, ``cbexpr``, ``wire``, the
controller's flag definitions (``lightmesh.controller.main.configure``), its TrafficSplit weight
parser (``lightmesh.controller.topology.parse_weight``), its HTTPRouteGroup match parser
(``topology._http_match``, which decides which matches it ignores), its reading of a Service's ports
(``topology._service_ports``: the ports of the traffic type's protocol it meshes), its Gateway API
route match parsers (``topology._gw_match``/``_grpc_match``: a rule with a match they refuse is
ignored), its reading of a TrafficSplit's service names (``topology._split_service_name``: ``name``,
``name.<ns>``, ``name.<ns>.svc.<domain>``), namespace rules and the settings its flags make
(``lightmesh.controller.model``; ``main.settings_from_args``, which refuses some flags at start), and
what ``lightmesh render`` counts as one Kubernetes object (``lightmesh.local.render.object_identity``;
``CLUSTER_SCOPED_KINDS`` have no namespace), as one cluster (``cluster_key``) and as a stack's config
(``load_stack_config``).

The pack judges annotations, controller flags and split weights with exactly the controller's code,
so it imports the ``lightmesh`` package. In the pack's own venv that package is installed from the repository (``-e ..`` in
``requirements.txt``); when the pack is used straight from a checkout without installing (tests,
``python -m lightmesh_policies.offline``), fall back to ``proxy_image/`` next to ``policies/``.
"""

import sys
from pathlib import Path

try:
    import lightmesh  # noqa: F401
except ImportError:  # pragma: no cover - only without an installed lightmesh
    _checkout = Path(__file__).resolve().parents[2] / "proxy_image"
    if (_checkout / "lightmesh").is_dir():
        sys.path.insert(0, str(_checkout))

from lightmesh import annotations, cbexpr, wire  # noqa: E402
from lightmesh.controller import main as controller_cli  # noqa: E402
from lightmesh.controller import model as controller_model  # noqa: E402
from lightmesh.controller.topology import _Errors as ControllerErrors  # noqa: E402
from lightmesh.controller.topology import _grpc_match as controller_grpc_match  # noqa: E402
from lightmesh.controller.topology import _gw_match as controller_gateway_match  # noqa: E402
from lightmesh.controller.topology import _http_match as controller_http_match  # noqa: E402
from lightmesh.controller.topology import _service_ports as controller_service_ports  # noqa: E402
from lightmesh.controller.topology import _split_service_name as controller_split_service_name  # noqa: E402
from lightmesh.controller.topology import parse_weight, port_number  # noqa: E402
from lightmesh.local.render import (CLUSTER_SCOPED_KINDS, cluster_key, describe_identity,  # noqa: E402
                                    load_stack_config, object_identity, resource_description)
from lightmesh.userregex import check_user_regex  # noqa: E402

__all__ = ["annotations", "cbexpr", "wire", "controller_cli", "controller_model", "parse_weight", "port_number",
           "controller_http_match", "ControllerErrors", "controller_service_ports", "controller_gateway_match",
           "controller_grpc_match", "controller_split_service_name", "CLUSTER_SCOPED_KINDS", "load_stack_config",
           "object_identity", "describe_identity", "resource_description", "check_user_regex", "cluster_key"]
