"""Lightmesh runtime: controller, proxy, mesh DNS and local mode, in one package and one image.

Importing this package is cheap and pure: the heavy parts (uvloop, lightkube, Pulumi) are imported
only by the subcommand that needs them, so the Pulumi components and the policy pack can reuse the
pure modules (:mod:`lightmesh.config`, :mod:`lightmesh.cbexpr`, :mod:`lightmesh.annotations`).
"""

__version__ = "0.1.0"
