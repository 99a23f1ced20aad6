"""Lightmesh policy pack rules (``lightmesh-policies``): importable without starting the pack.

``policies/__main__.py`` builds the ``PolicyPack`` from :data:`ALL_POLICIES`; tests and the offline
runner (:mod:`lightmesh_policies.offline`) import the rules from here. The pack's identity lives here
too so every caller agrees on it.
"""

from lightmesh_policies.rules import ALL_POLICIES, POLICIES_BY_NAME

PACK_NAME = "lightmesh-policies"
PACK_DESCRIPTION = ("Lightmesh guardrails: ACL coverage of mesh Services, SMI TrafficTarget/TrafficSplit sanity, "
                    "mesh annotation validity and install hygiene.")

__all__ = ["ALL_POLICIES", "POLICIES_BY_NAME", "PACK_NAME", "PACK_DESCRIPTION"]
