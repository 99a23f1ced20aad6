"""Controller settings from flags: a wrong one stops the controller at start, naming the flag."""

from __future__ import annotations

import subprocess

import pytest

from conftest import lightmesh_cmd, lightmesh_env
from lightmesh.controller.model import Settings


def test_domains_are_normalised_like_the_hosts_they_are_compared_with():
    assert Settings(domains=("Mesh.Local.", "mesh.local", "traefik.mesh")).domains == ("mesh.local", "traefik.mesh")


@pytest.mark.parametrize("settings, message", [
    ({"domains": ("my mesh",)}, r"domains \(--domains\): 'my mesh' is not a DNS name"),
    ({"domains": ("",)}, r"domains \(--domains\): '' is not a DNS name"),
    ({"domains": ()}, "at least one mesh domain is required"),
    ({"domains": ("a..b",)}, "is not a DNS name"),
    ({"tcp_port_base": 5005}, r"http port range 5000-5009 overlaps the tcp port range 5005-5029"),
    ({"http_port_base": 10020}, r"http port range 10020-10029 overlaps the tcp port range 10000-10024"),
    ({"udp_port_base": 65530, "udp_port_limit": 10}, r"udp port range 65530\+10 .* is outside 1-65535"),
    # watched but never meshed: the controller served a mesh without them, without a word
    ({"watch_namespaces": ("shop", "kube-system")}, r"--watch-namespaces names kube-system, whose Services are never"),
    ({"mesh_namespace": "mesh", "watch_namespaces": ("mesh",)}, r"--watch-namespaces names mesh, .* mesh namespace 'mesh'"),
    ({"watch_namespaces": ("a", "b"), "ignore_namespaces": ("b",)},
     r"--watch-namespaces and --ignore-namespaces both name b$"),
])
def test_bad_settings_name_the_flag(settings, message):
    with pytest.raises(ValueError, match=message):
        Settings(**settings)


def test_udp_ports_may_share_numbers_with_tcp_ones():
    assert Settings(udp_port_base=10000).udp_port_base == 10000  # another protocol, another socket


def test_the_controller_refuses_to_start_on_a_bad_flag():
    result = subprocess.run(lightmesh_cmd("controller", "--manifests", "/nonexistent", "--domains", "my mesh"),
                            capture_output=True, text=True, env=lightmesh_env(), timeout=60)
    assert result.returncode == 2 and "--domains" in result.stderr and "'my mesh'" in result.stderr


def test_help_shows_every_default():
    result = subprocess.run(lightmesh_cmd("controller", "--help"), capture_output=True, text=True,
                            env=lightmesh_env(), timeout=60)
    text = " ".join(result.stdout.split())
    for default in ("default: lightmesh)", "default: 9000)", "default: 53)", "default: 5000)", "default: 10)",
                    "default: 10000)", "default: 15000)", "default: info)", "default: text)", "default: http)"):
        assert default in text, default


@pytest.mark.parametrize("flags, message", [
    (["--api-port", "70000"], "argument --api-port: 70000 is not a port number (1-65535)"),
    (["--dns-port", "-1"], "argument --dns-port: -1 is not a port number (1-65535)"),
    (["--namespace", "BAD_NS"], "argument --namespace: 'BAD_NS' is not a namespace name"),
    (["--watch-namespaces", "shop,Shop"], "argument --watch-namespaces: 'Shop' is not a namespace name"),
    (["--ignore-namespaces", "x-"], "argument --ignore-namespaces: 'x-' is not a namespace name"),
])
def test_ports_and_namespaces_are_checked_at_start(flags, message):
    # --api-port 70000 used to listen on 4464 (70000 mod 65536); a bad namespace failed only later,
    # at the first write to Kubernetes.
    import argparse

    from lightmesh.controller.main import configure

    parser = argparse.ArgumentParser(prog="lightmesh controller", exit_on_error=False)
    configure(parser)
    with pytest.raises(argparse.ArgumentError, match=message.split(": ", 1)[1].replace("(", r"\(").replace(")", r"\)")):
        parser.parse_args(["--manifests", "/tmp", *flags])


def test_the_shaping_record_round_trips_and_a_bad_one_is_not_used():
    from lightmesh.controller.model import SHAPING_FIELDS

    leader = Settings(acl=True, default_mode="tcp", domains=("mesh.example",), http_port_base=6000,
                      tcp_port_base=11000, tcp_port_limit=5, udp_port_limit=3, listen_mode="node")
    own = Settings(mesh_namespace="mesh", watch_namespaces=("shop",))
    record = leader.shaping_record()
    assert set(record) == set(SHAPING_FIELDS) and record["domains"] == ["mesh.example"]
    used, problems = own.with_record(record)
    assert problems == [] and used.shaping_record() == record
    # what is not the leader's to decide stays this replica's
    assert used.mesh_namespace == "mesh" and used.watch_namespaces == ("shop",)
    # fields a newer leader records and this release does not know: skipped, the rest used
    used, problems = own.with_record({**record, "future": 1})
    assert used.http_port_base == 6000 and problems == ["unknown field 'future' skipped"]
    # a missing field keeps this replica's value
    assert own.with_record({"http_port_base": 6000})[0].tcp_port_base == own.tcp_port_base
    # anything unusable: this replica's own settings, and why
    for bad in (None, [], "x", {"http_port_base": "6000"}, {"acl": 1}, {"http_port_base": True},
                {"domains": "lightmesh"}, {"domains": []}, {"http_port_base": 10000}, {"default_mode": "sctp"},
                {"udp_port_base": 10**100}):
        used, problems = own.with_record(bad)
        assert used is own and problems, bad
