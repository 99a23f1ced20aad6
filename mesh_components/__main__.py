"""Component provider host: serves the four Lightmesh components to other Pulumi languages.

``python -m mesh_components`` is what the plugin directory ``plugin/`` runs (``plugin/__main__.py``);
TypeScript, Go, C#, Java and YAML programs use the components after ``pulumi package add <repo>/plugin``.
The package name is ``lightmesh`` — the same prefix as the type tokens (``lightmesh:index:MeshInstall``)
so the classes behave identically natively and hosted.
"""

from pulumi.provider.experimental import component_provider_host

from mesh_components import COMPONENTS, PACKAGE, VERSION


def main() -> None:
    component_provider_host(COMPONENTS, name=PACKAGE, namespace="lightmesh", version=VERSION)


if __name__ == "__main__":
    main()
