"""Annotation model: prefix precedence, every key, and errors naming annotation and value."""

import pytest

from lightmesh import annotations as a


def test_defaults_without_annotations():
    s = a.parse_annotations({})
    assert s.traffic_type is a.TrafficType.HTTP and s.scheme is a.Scheme.HTTP
    assert (s.retry_attempts, s.circuit_breaker_expression, s.rate_limit, s.request_timeout_seconds) == (None,) * 4
    assert a.parse_annotations(None, "tcp").traffic_type is a.TrafficType.TCP


def test_every_key_is_read():
    s = a.parse_annotations({
        "lightmesh.io/traffic-type": "HTTP",
        "lightmesh.io/scheme": "h2c",
        "lightmesh.io/retry-attempts": "2",
        "lightmesh.io/circuit-breaker-expression": "NetworkErrorRatio()>0.5",
        "lightmesh.io/ratelimit-average": "100",
        "lightmesh.io/ratelimit-burst": "200",
        "lightmesh.io/request-timeout": "1m30s",
    })
    assert s.traffic_type is a.TrafficType.HTTP and s.scheme is a.Scheme.H2C
    assert s.retry_attempts == 2
    assert s.circuit_breaker_expression == "NetworkErrorRatio() > 0.5"
    assert s.rate_limit == a.RateLimit(100, 200)
    assert s.request_timeout_seconds == 90


def test_prefix_precedence_per_key():
    s = a.parse_annotations({
        "maesh.containo.us/traffic-type": "udp",
        "mesh.traefik.io/traffic-type": "tcp",
        "maesh.containo.us/retry-attempts": "3",
    })
    assert s.traffic_type is a.TrafficType.TCP
    assert s.retry_attempts == 3
    assert s.sources == {"traffic-type": "mesh.traefik.io/traffic-type",
                         "retry-attempts": "maesh.containo.us/retry-attempts"}
    assert a.parse_annotations({"lightmesh.io/traffic-type": "http",
                                "mesh.traefik.io/traffic-type": "tcp"}).traffic_type is a.TrafficType.HTTP


@pytest.mark.parametrize("key, value, reason", [
    ("mesh.traefik.io/traffic-type", "grpc", "must be one of http, tcp, udp"),
    ("lightmesh.io/scheme", "ftp", "must be one of http, https, h2c"),
    ("maesh.containo.us/retry-attempts", "two", "must be a whole number"),
    ("lightmesh.io/retry-attempts", "0", "between 1 and 100"),
    ("lightmesh.io/circuit-breaker-expression", "NetworkErrorRatio() >", "position"),
    ("lightmesh.io/request-timeout", "5", "a unit is required"),
    ("lightmesh.io/request-timeout", "0s", "more than 0"),
    ("lightmesh.io/retry-attempts", "-1", "between 1 and 100"),
    ("lightmesh.io/retry-attempts", "\u0663", "must be a whole number"),  # only ASCII digits
    ("lightmesh.io/request-timeout", "\u0665s", "must be a duration"),
    ("lightmesh.io/request-timeout", "-5s", "(negative)"),  # it has a unit: "a unit is required" misled
    ("lightmesh.io/request-timeout", "0", "more than 0"),
    ("lightmesh.io/request-timeout", "5x", "unexpected '5x'"),
    ("lightmesh.io/retry-attempts", "9" * 5000, "between 1 and 100"),  # int() of 5,000 digits raises
])
def test_invalid_values_name_annotation_and_value(key, value, reason):
    with pytest.raises(a.AnnotationsInvalid) as err:
        a.parse_annotations({key: value})
    [error] = err.value.errors
    assert error.annotation == key and error.value == value and reason in error.reason
    assert f"annotation {key}={value!r}" in str(err.value)


def test_rate_limit_needs_both_and_reports_the_missing_sibling():
    with pytest.raises(a.AnnotationsInvalid, match="needs mesh.traefik.io/ratelimit-burst too"):
        a.parse_annotations({"mesh.traefik.io/ratelimit-average": "10"})
    with pytest.raises(a.AnnotationsInvalid, match="needs lightmesh.io/ratelimit-average too"):
        a.parse_annotations({"lightmesh.io/ratelimit-burst": "10"})
    with pytest.raises(a.AnnotationsInvalid, match="between 1"):
        a.parse_annotations({"lightmesh.io/ratelimit-average": "0", "lightmesh.io/ratelimit-burst": "1"})
    # half a pair with a bad value: reported, not fatal (no rate limit applies either way)
    for alone, said in (({"lightmesh.io/ratelimit-burst": "0"}, "must be between 1 and 1000000, and needs"),
                        ({"lightmesh.io/ratelimit-average": "abc"}, "must be a whole number, and needs"),
                        ({"lightmesh.io/ratelimit-average": "9" * 20}, "must be between 1 and 1000000, and needs")):
        settings, errors = a.parse_annotations_lenient(alone)
        [error] = errors
        assert not error.fatal and settings.rate_limit is None and error.reason.startswith(said), error.reason


def test_all_errors_are_reported_at_once_and_lenient_mode_keeps_the_rest():
    annotations = {"lightmesh.io/scheme": "ftp", "lightmesh.io/retry-attempts": "-1",
                   "lightmesh.io/request-timeout": "2s"}
    settings, errors = a.parse_annotations_lenient(annotations)
    assert len(errors) == 2
    assert settings.request_timeout_seconds == 2


def test_a_circuit_breaker_expression_too_long_once_written_out_is_refused_here():
    # 1,013 characters as written, 1,711 as the proxies get it ('>1e15' → '> 1000000000000000.0'):
    # the config loader refused it, and with it every config the controller built, for the whole mesh
    written = "||".join(["LatencyAtQuantileMS(1)>1e15"] * 35)
    assert len(written) <= 1024
    settings, errors = a.parse_annotations_lenient({"lightmesh.io/circuit-breaker-expression": written})
    assert settings.circuit_breaker_expression is None
    [error] = errors
    assert error.fatal and error.reason.startswith("invalid circuit-breaker expression: 1711 characters once written")


def test_non_string_value_is_an_error_not_a_crash():
    _, errors = a.parse_annotations_lenient({"lightmesh.io/retry-attempts": 2})
    assert [str(e) for e in errors] == [
        "annotation lightmesh.io/retry-attempts='2': must be a string, got int 2: quote it in YAML"]


@pytest.mark.parametrize("text, seconds", [("5s", 5), ("250ms", 0.25), ("1m30s", 90), ("1.5s", 1.5),
                                           ("2h", 7200), ("100us", 1e-4),
                                           # as Go's time.ParseDuration: a leading "+", and both micro signs
                                           ("+5s", 5), ("+1m30s", 90), ("100\u00b5s", 1e-4), ("100\u03bcs", 1e-4),
                                           ("1ms500\u03bcs", 1.5e-3)])
def test_durations(text, seconds):
    assert a.parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("value, seconds", [("+5s", 5), ("250\u03bcs", 2.5e-4), ("250\u00b5s", 2.5e-4)])
def test_request_timeout_takes_what_go_takes(value, seconds):
    # A Service annotated for Traefik Mesh with one of these dropped out of the mesh.
    assert a.parse_annotations({"mesh.traefik.io/request-timeout": value}).request_timeout_seconds == \
        pytest.approx(seconds)


@pytest.mark.parametrize("value, reason", [("-5s", "(negative)"), ("+-5s", "(negative)"), ("++5s", "unexpected '+5s'"),
                                           ("+", "must be a duration"), ("+0", "more than 0")])
def test_a_sign_is_one_plus_at_most(value, reason):
    with pytest.raises(a.AnnotationsInvalid) as err:
        a.parse_annotations({"lightmesh.io/request-timeout": value})
    [error] = err.value.errors
    assert reason in error.reason, error.reason


def test_format_duration_round_trips():
    for seconds in (5, 0.25, 90, 1.5):
        assert a.parse_duration(a.format_duration(seconds)) == pytest.approx(seconds)


def test_is_meshed():
    assert a.is_meshed({"maesh.containo.us/traffic-type": "http"})
    assert not a.is_meshed({"app": "x"})
