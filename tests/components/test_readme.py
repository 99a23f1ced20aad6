"""The README's own-program example runs as written under the Pulumi mocks (the README stays true)."""

import re
from pathlib import Path

import pulumi

from components.conftest import MOCKS
from components.manifests import validate_all

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> str:
    section = README.read_text().split("### In your own Pulumi program", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pulumi.runtime.test
def test_readme_program_registers_valid_objects():
    code = _example()
    # unique resource names: the mock engine keeps every registration of the test session
    code = re.sub(r'(MeshInstall|MeshService|AccessPolicy|TrafficSplit)\("([a-z-]+)"', r'\1("readme-\2"', code)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    mesh = scope["mesh"]
    # the SMI objects wait for the mesh (depends_on): settle on their own outputs too
    settled = pulumi.Output.all(*[c.urn for c in mesh.children.values()], scope["api"].urn,
                                scope["access"].traffic_target_name, scope["canary"].traffic_split_name)

    def check(_):
        records = [r for r in MOCKS.created if r.name.startswith("readme-")]
        kinds = {r.typ.rsplit(":", 1)[1] for r in records}
        assert {"TrafficTarget", "HTTPRouteGroup", "TrafficSplit", "Deployment", "DaemonSet"} <= kinds
        assert validate_all([r for r in records if not r.typ.endswith("ServiceMonitor")]) > 20

    return settled.apply(check)
