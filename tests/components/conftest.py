"""Pulumi mocks for the component tests: no CLI, no cluster, no network.

The mocks echo inputs back as outputs and emulate what the Kubernetes provider would add that the
components read back: ``metadata.name`` auto-naming and a Service ``spec.clusterIP``. Every
registration is recorded (:data:`MOCKS.created`) so tests can look at the exact, camelCase inputs the
provider would receive — the "rendered manifests".

``set_mocks`` is installed once at import (before any component is constructed). Resource names
accumulate across tests (the mock does not detect duplicate URNs), so every test uses its own
instance names and filters the records by them.
"""

import asyncio
import gc
import ipaddress
import itertools

import pulumi
import pytest


class K8sMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.created: list[pulumi.runtime.MockResourceArgs] = []
        self._ips = (str(ipaddress.ip_address("10.96.0.0") + i) for i in itertools.count(10))

    def new_resource(self, args: pulumi.runtime.MockResourceArgs):
        self.created.append(args)
        state = dict(args.inputs)
        if args.typ.startswith("kubernetes:") and args.custom:
            metadata = dict(state.get("metadata") or {})
            metadata.setdefault("name", f"{args.name}-x1y2z3")  # the provider adds a random suffix
            state["metadata"] = metadata
        if args.typ == "kubernetes:core/v1:Service":
            state["spec"] = {**(state.get("spec") or {}), "clusterIP": next(self._ips)}
        return [f"{args.name}_id", state]

    def call(self, args: pulumi.runtime.MockCallArgs):
        return {}

    def by_prefix(self, prefix: str) -> list[pulumi.runtime.MockResourceArgs]:
        """Registrations whose Pulumi name is ``prefix`` or starts with ``prefix-``."""
        return [a for a in self.created if a.name == prefix or a.name.startswith(prefix + "-")]


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """Also keeps each RegisterResource request (parent URN, dependencies), which the mock's
    ``MockResourceArgs`` does not carry."""

    def __init__(self, mocks: pulumi.runtime.Mocks) -> None:
        super().__init__(mocks)
        self.requests: dict[str, object] = {}

    def RegisterResource(self, request):  # noqa: N802 - gRPC method name
        self.requests[request.name] = request
        return super().RegisterResource(request)

    def parent_of(self, name: str) -> str:
        return self.requests[name].parent

    def dependencies_of(self, name: str) -> list[str]:
        return list(self.requests[name].dependencies)


# Python ≥3.14 no longer creates an implicit event loop (pulumi/pulumi#24338); be explicit.
MOCK_LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(MOCK_LOOP)


@pytest.fixture(autouse=True)
def _mock_loop_is_current():
    # asyncio.run() (other directories' tests, run before these in one session) ends by setting
    # the current loop to None; Pulumi's mocks then made Outputs on a loop of their own
    # ("attached to a different loop"). Every test here runs with the one loop the mocks use.
    asyncio.set_event_loop(MOCK_LOOP)
    yield

MOCKS = K8sMocks()
MONITOR = RecordingMonitor(MOCKS)
pulumi.runtime.set_mocks(MOCKS, project="lightmesh", stack="test", preview=False, monitor=MONITOR)


@pytest.fixture
def mocks() -> K8sMocks:
    return MOCKS


@pytest.fixture
def monitor():
    return MONITOR



def fails_when_resolved(program, match: str) -> None:
    """Run a ``@pulumi.runtime.test`` program expected to fail once an Output resolves, with an error matching
    ``match``. Then collect the failed futures of its resources now: "Future exception was never retrieved" is
    logged when they are garbage-collected, and a collection that happens inside ``ast.parse`` (pytest's
    assertion rewriting) trips a CPython 3.11 bug (SystemError: AST constructor recursion depth mismatch)."""
    with pytest.raises(ValueError, match=match):
        program()
    from pulumi.runtime.settings import SETTINGS
    SETTINGS.rpc_manager.clear()  # what the next program would do first: the failed registrations go now
    SETTINGS.outputs.clear()
    gc.collect()


def settled(resources) -> "asyncio.Future":
    """For a program expected to fail: waits for every resource's registration, failed or not, then raises the
    first failure. ``Output.all`` raises at the first failure while registrations that depend on the failed
    one are still running; they would fail later, inside the next test."""
    async def wait():
        results = await asyncio.gather(*[r.urn.future() for r in resources], return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]
    return asyncio.ensure_future(wait())
