"""docs/components.md quotes real messages: the validation example is what the component raises today."""

from pathlib import Path

import pytest

from components.conftest import MOCKS  # noqa: F401 - installs the Pulumi mocks before any component
from mesh_components import AccessPolicy, ComponentArgsError

DOC = Path(__file__).resolve().parents[2] / "docs" / "components.md"


def test_documented_bad_regex_message_is_the_real_one():
    with pytest.raises(ComponentArgsError) as err:
        AccessPolicy("api", {"namespace": "shop", "destination_service_account": "web",
                             "sources": [{"service_account": "frontend"}],
                             "http_matches": [{"name": "api", "path_regex": "/api/(x", "methods": ["GET"]}]})
    assert str(err.value) in DOC.read_text().splitlines()
