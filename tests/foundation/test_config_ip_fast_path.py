"""The config's IPv4 fast path (pattern instead of ``ipaddress``) gives ipaddress's exact verdicts."""

from __future__ import annotations

import ipaddress
import itertools

import pytest

from lightmesh.config import ConfigError, HTTPConfig, HTTPServer, HTTPService, _check_cidr, _check_host, make_config
from lightmesh.controller.topology import _is_ip

OCTETS = ["0", "00", "1", "01", "9", "10", "99", "100", "199", "200", "249", "250", "255", "256", "300", "-1",
          "१", "٣", "1 "]
SUFFIXES = ["", "/32", "/24", "/0", "/032", "/33", "\n", "/32\n"]


def _verdict(fn, value):
    try:
        return fn(value)
    except ValueError:
        return "error"


def _cases():
    yield from ("::1", "::ffff:1.2.3.4", "fe80::1%eth0", "", "/32", "1.2.3.4//32", "a/32", " 1.2.3.4", "1.2.3.4.5")
    for parts in itertools.product(OCTETS[:6] + OCTETS[12:], repeat=4):
        for suffix in ("", "/32", "/24"):
            yield ".".join(parts) + suffix
    for octet, suffix in itertools.product(OCTETS, SUFFIXES):
        yield f"10.{octet}.0.1{suffix}"


def test_same_verdicts_as_ipaddress():
    for value in _cases():
        assert _verdict(_check_host, value) == _verdict(lambda v: str(ipaddress.ip_address(v)), value), value
        assert _verdict(_check_cidr, value) == _verdict(lambda v: str(ipaddress.ip_network(v, strict=False)),
                                                        value), value
        assert _is_ip(value) == (_verdict(ipaddress.ip_address, value) != "error"), value


@pytest.mark.parametrize("bad", ["१.2.3.4", "01.2.3.4", "256.0.0.1"])
def test_non_canonical_ipv4_still_rejected_in_a_config(bad):
    with pytest.raises(ConfigError, match="invalid IP address"):
        make_config(1, HTTPConfig(services=[HTTPService.model_construct(
            name="s", servers=[HTTPServer.model_construct(url=f"http://{bad}:80", weight=1)])]))
