"""``ConfigAssembler`` (the controller's config build, reusing unchanged elements) gives exactly the
config ``load_config_dict`` + ``content_hash`` give, and refuses what they refuse."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from lightmesh.config import ConfigAssembler, ConfigError, _canonical, content_hash, load_config_dict
from lightmesh.controller import provider
from lightmesh.controller.build import build
from lightmesh.controller.model import Settings

from .test_provider import CASES, load_case
from .test_topology import SETTINGS, STATES


def _data(state, settings) -> dict:
    seen: list[dict] = []
    original = provider.load_config_dict
    provider.load_config_dict = lambda data: (seen.append(data), original(data))[1]
    try:
        build(state, settings, 7)
    finally:
        provider.load_config_dict = original
    return seen[0]


def _expected(data: dict):
    config = load_config_dict(data)
    return config.model_copy(update={"hash": content_hash(config)})


def _check(assembler: ConfigAssembler, data: dict) -> None:
    want = _expected(data)
    got = assembler.make(data)
    assert got == want
    assert got.hash == want.hash and got.model_dump_json() == want.model_dump_json()
    assert _canonical(got) == _canonical(want)
    assert load_config_dict(got.model_dump(mode="json")) == got  # the hash checks out on the wire


@pytest.mark.parametrize("case", CASES)
def test_same_as_validation_on_every_golden_case_cold_and_warm(case):
    state, settings, _ = load_case(case)
    data = _data(state, settings)
    assembler = ConfigAssembler()
    _check(assembler, data)
    _check(assembler, copy.deepcopy(data))  # every element reused
    assert build(state, settings, 1, assembler=assembler).config == build(state, settings, 1).config


def _bench_cluster(n):
    sys.path.insert(0, str(Path(__file__).parents[2] / "bench"))
    try:
        from bench_controller import cluster
    finally:
        sys.path.pop(0)
    return cluster(n)


def test_changes_between_builds_on_the_bench_cluster():
    state = _bench_cluster(200)
    settings = Settings(acl=True)
    assembler = ConfigAssembler()
    _check(assembler, _data(state, settings))
    state.services[4]["metadata"]["annotations"] = {"mesh.traefik.io/retry-attempts": "3"}
    state.endpoint_slices[7]["endpoints"][0]["addresses"] = ["10.250.0.1"]
    del state.services[9]
    _check(assembler, _data(state, settings))
    _check(assembler, _data(state, Settings(acl=False)))


@hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(STATES, SETTINGS, STATES)
def test_same_as_validation_on_any_states_in_a_row(state, settings, other):
    assembler = ConfigAssembler()
    _check(assembler, _data(state, settings))
    _check(assembler, _data(other, settings))
    _check(assembler, _data(state, settings))


def _router(name="r", service="s", middlewares=()):
    return {"name": name, "entry_points": ["http-5000"], "match": {"hosts": ["A.example"], "methods": ["get"]},
            "priority": 1000, "service": service, "middlewares": list(middlewares)}


def _config(**http):
    base = {"entry_points": [{"name": "http-5000", "address": "0.0.0.0", "port": 5000}], "routers": [_router()],
            "services": [{"name": "s", "servers": [{"url": "http://[2001:DB8::1]:80", "weight": 3}]}],
            "middlewares": [{"type": "allow_list", "name": "a", "source_ranges": ["2001:DB8::1/128", "10.0.0.1/24"]},
                            {"type": "rate_limit", "name": "rl", "average": 5, "burst": 2, "period_seconds": 2}]}
    return {"version": 1, "http": base | http,
            "tcp": [{"name": "t", "port": 6000, "servers": [{"address": "2001:DB8::2", "port": 5}]}], "udp": []}


def test_normalizes_as_validation_does():
    assembler = ConfigAssembler()
    _check(assembler, _config())
    config = assembler.make(_config())
    assert config.http.routers[0].match.hosts == ["a.example"]
    assert config.http.middlewares[0].source_ranges == ["2001:db8::1/128", "10.0.0.0/24"]


@pytest.mark.parametrize("data", [
    _config(routers=[_router(), _router()]),
    _config(routers=[_router(service="nope")]),
    _config(routers=[_router(middlewares=["nope"])]),
    _config(routers=[_router(name="bad name")]),
    _config(services=[{"name": "s", "servers": [{"url": "http://1.2.3.4:80", "weight": -1}]}]),
    _config(middlewares=[{"type": "retry", "name": "r", "attempts": 0}]),
    _config(entry_points=[{"name": "http-5000", "address": "0.0.0.0", "port": 5000},
                          {"name": "http-5001", "address": "127.0.0.1", "port": 5000}]),
    {**_config(), "version": -1},
    {**_config(), "extra": 1},
    {**_config(), "hash": "0" * 64},
])
def test_refuses_what_validation_refuses_with_the_same_message(data):
    with pytest.raises(ConfigError) as want:
        load_config_dict(data)
    assembler = ConfigAssembler()
    _check(assembler, _config())  # a warm cache changes nothing
    with pytest.raises(ConfigError) as got:
        assembler.make(data)
    assert str(got.value) == str(want.value)
