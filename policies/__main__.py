"""Entry point the Pulumi CLI runs for ``--policy-pack policies``: builds the pack, nothing else.

``PolicyPack(...)`` starts the analyzer's gRPC server and never returns, so the rules live in the
importable ``lightmesh_policies`` package (tests and the offline runner use that, never this file).
"""

from pulumi_policy import EnforcementLevel, PolicyPack

from lightmesh_policies import ALL_POLICIES, PACK_DESCRIPTION, PACK_NAME

# Each rule carries its own level; the pack level only applies to rules that set none.
PolicyPack(name=PACK_NAME, policies=ALL_POLICIES, enforcement_level=EnforcementLevel.ADVISORY,
           description=PACK_DESCRIPTION)
