"""The proxy-config contract: round trip, hashing, and validation that names the element."""

import json

import pytest

from lightmesh import config as c


def sample_config(version: int = 7) -> c.ProxyConfig:
    http = c.HTTPConfig(
        entry_points=[c.EntryPoint(name="http-5000", port=5000)],
        routers=[c.Router(name="whoami-whoami-80", entry_points=["http-5000"],
                          match=c.Match(hosts=["whoami.whoami.traefik.mesh"], path_regex="/api",
                                        methods=["get"], headers={"X-User": "^t"}),
                          priority=1002, service="whoami-whoami-80", middlewares=["acl", "retry"])],
        services=[c.HTTPService(name="whoami-whoami-80", servers=[
            c.HTTPServer(url="http://10.42.0.5:80"), c.HTTPServer(url="http://[fd00::5]:80", weight=3)],
            load_balancer=c.LoadBalancer.WEIGHTED)],
        middlewares=[c.AllowListMiddleware(name="acl", source_ranges=["10.42.0.7/32"]),
                     c.RetryMiddleware(name="retry", attempts=2),
                     c.CircuitBreakerMiddleware(name="cb", expression="NetworkErrorRatio() > 0.5"),
                     c.RateLimitMiddleware(name="rl", average=100, burst=200),
                     c.DenyMiddleware(name="block"),
                     c.RequestTimeoutMiddleware(name="timeout", seconds=5)],
    )
    tcp = [c.TCPRoute(name="whoami-whoami-tcp-8080", port=10000, allowed_sources=[],
                      servers=[c.L4Server(address="10.42.0.9", port=8080)])]
    udp = [c.UDPRoute(name="dns-udp", port=15000, servers=[c.L4Server(address="10.42.0.10", port=53, weight=2)])]
    return c.make_config(version, http, tcp, udp)


def test_round_trip_through_json_is_lossless():
    cfg = sample_config()
    again = c.load_config_json(cfg.to_json())
    assert again == cfg
    assert again.hash == cfg.hash and len(cfg.hash) == 64


def test_normalises_what_users_type():
    cfg = sample_config()
    match = cfg.http.routers[0].match
    assert match.methods == ["GET"]
    assert match.headers == {"x-user": "^t"}
    assert cfg.http.middlewares[0].source_ranges == ["10.42.0.7/32"]


def test_hash_ignores_version_but_tracks_content():
    assert sample_config(1).hash == sample_config(2).hash
    other = c.make_config(1, tcp=[c.TCPRoute(name="x", port=10001)])
    assert other.hash != sample_config(1).hash
    assert sample_config().etag() == f'"{sample_config().hash}"'


def test_tampered_content_is_rejected():
    data = json.loads(sample_config().to_json())
    data["tcp"][0]["port"] = 10005
    with pytest.raises(c.ConfigError, match="hash does not match"):
        c.load_config_dict(data)


def _broken(mutate) -> str:
    data = json.loads(sample_config().to_json())
    data["hash"] = ""
    mutate(data)
    with pytest.raises(c.ConfigError) as err:
        c.load_config_dict(data)
    return str(err.value)


def test_dangling_service_reference_names_router_and_service():
    msg = _broken(lambda d: d["http"]["routers"][0].update(service="nope"))
    assert "router 'whoami-whoami-80' references unknown service 'nope'" in msg


def test_dangling_middleware_and_entry_point():
    msg = _broken(lambda d: d["http"]["routers"][0].update(middlewares=["ghost"], entry_points=["http-9"]))
    assert "unknown middleware 'ghost'" in msg and "unknown entry point 'http-9'" in msg


def test_duplicate_names_are_rejected():
    msg = _broken(lambda d: d["http"]["services"].append(dict(d["http"]["services"][0])))
    assert "duplicate service name 'whoami-whoami-80'" in msg


@pytest.mark.parametrize("port", [0, 70000, -1, "5000", True, 5000.0])
def test_out_of_range_port_names_the_route(port):  # strict: a string, bool or float port is a producer bug
    msg = _broken(lambda d: d["tcp"][0].update(port=port))
    assert "tcp['whoami-whoami-tcp-8080'].port" in msg


def test_invalid_regex_names_router():
    msg = _broken(lambda d: d["http"]["routers"][0]["match"].update(path_regex="/api(["))
    assert "routers['whoami-whoami-80'].match.path_regex" in msg and "invalid path regex" in msg


def test_invalid_header_regex():
    msg = _broken(lambda d: d["http"]["routers"][0]["match"].update(headers={"X-A": "*"}))
    assert "regex for header 'X-A'" in msg


def test_invalid_cidr_names_middleware():
    msg = _broken(lambda d: d["http"]["middlewares"][0].update(source_ranges=["10.0.0.300/32"]))
    assert "middlewares['acl']" in msg and "invalid CIDR" in msg


def test_invalid_circuit_breaker_expression():
    msg = _broken(lambda d: d["http"]["middlewares"][2].update(expression="NetworkErrorRatio() >> 1"))
    assert "middlewares['cb']" in msg and "position" in msg


def test_server_url_must_be_scheme_ip_port():
    for url in ("10.0.0.1:80", "ftp://10.0.0.1:80", "http://host.example:80", "http://10.0.0.1", "http://10.0.0.1:0",
                "http://10.0.0.1:８0",  # a full-width digit is a digit to str.isdigit(), not to us
                "http://fd00::1:80",  # IPv6 without brackets: which colon starts the port?
                "http://10.0.0.1:" + "9" * 5000):  # int() of that many digits raises
        msg = _broken(lambda d, url=url: d["http"]["services"][0]["servers"][0].update(url=url))
        assert "services['whoami-whoami-80'].servers[0].url" in msg, msg
    assert c.parse_server_url("h2c://[fd00::1]:8080") == (c.Scheme.H2C, "fd00::1", 8080)


def test_unknown_fields_and_middleware_types_are_rejected():
    assert "extra" in _broken(lambda d: d["http"]["routers"][0].update(rule="Host(`x`)")).lower()
    msg = _broken(lambda d: d["http"]["middlewares"].append({"type": "magic", "name": "m"}))
    assert "magic" in msg


def test_listener_clash_is_a_config_error():
    msg = _broken(lambda d: d["udp"].append({"name": "u2", "port": 15000, "address": "127.0.0.5"}))
    assert "udp route 'u2' listens on udp 127.0.0.5:15000" in msg
    # the same port on two specific addresses is fine (local mode: one ClusterIP per service)
    c.make_config(1, tcp=[c.TCPRoute(name="a", address="127.0.1.1", port=80),
                          c.TCPRoute(name="b", address="127.0.1.2", port=80)])
    # one socket spelt two ways: an IPv4-mapped IPv6 address is the IPv4 address, "::0" is "::"
    # (both were accepted, and the HTTP entry point silently got none of its traffic)
    for first, second in (("::ffff:127.0.1.1", "127.0.1.1"), ("::0", "127.0.1.1"), ("0:0::0", "::1")):
        with pytest.raises(c.ConfigError, match="listens on tcp"):
            c.make_config(1, tcp=[c.TCPRoute(name="a", address=first, port=80),
                                  c.TCPRoute(name="b", address=second, port=80)])


def test_empty_allow_list_is_valid_and_means_deny():
    cfg = c.make_config(1, http=c.HTTPConfig(middlewares=[c.AllowListMiddleware(name="nobody")]))
    assert cfg.http.middlewares[0].source_ranges == []


def test_not_json_is_a_clear_error():
    with pytest.raises(c.ConfigError, match="not valid JSON"):
        c.load_config_json(b"{nope")


def test_json_schema_describes_every_middleware():
    schema = c.json_schema()
    text = json.dumps(schema)
    for kind in ("retry", "circuit_breaker", "rate_limit", "allow_list", "deny", "request_timeout"):
        assert f'"{kind}"' in text
    assert schema["title"] == "Lightmesh proxy configuration"


def test_schema_validates_a_real_config():
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(json.loads(sample_config().to_json()), c.json_schema())


@pytest.mark.parametrize("where, value", [
    (lambda d, v: d.update(version=v), "3"),
    (lambda d, v: d["http"]["middlewares"][3].update(average=v), True),
    (lambda d, v: d["http"]["middlewares"][1].update(attempts=v), "2"),
    (lambda d, v: d["http"]["middlewares"][5].update(seconds=v), "5"),
    (lambda d, v: d["http"]["middlewares"][5].update(seconds=v), float("nan")),
    (lambda d, v: d["http"]["routers"][0].update(priority=v), "1"),
    (lambda d, v: d["udp"][0].update(session_idle_timeout_seconds=v), float("inf")),
], ids=["version", "average", "attempts", "seconds", "nan", "priority", "inf"])
def test_numbers_are_strict_as_the_schema_says(where, value):
    # The loader used to coerce "3" and true where the exported JSON schema refuses them.
    _broken(lambda d: where(d, value))


@pytest.mark.parametrize("regex, reason", [("/(?=api)", "invalid perl operator"), (r"/(a)\1", "invalid escape"),
                                           ("/(unclosed", "missing )")])
def test_route_regexes_are_re2_and_errors_name_the_router(regex, reason):
    # RE2 runs users' regexes in linear time: no lookarounds or backreferences (as Go's regexp).
    msg = _broken(lambda d: d["http"]["routers"][0]["match"].update(path_regex=regex))
    assert "routers['whoami-whoami-80'].match.path_regex" in msg and reason in msg


def test_a_list_of_path_regexes_is_validated_each_and_an_empty_list_refused():
    msg = _broken(lambda d: d["http"]["routers"][0]["match"].update(path_regex=["/api", "/(?=x)"]))
    assert "invalid perl operator" in msg
    msg = _broken(lambda d: d["http"]["routers"][0]["match"].update(path_regex=[]))
    assert "must not be empty" in msg


@pytest.mark.parametrize("name", ["schema1-acl-config.json", "schema1-plain-config.json"])
def test_a_schema_1_config_from_the_previous_release_is_read_with_its_hash(name):
    # Served by the previous release's controller (files written by it, unchanged). This release's
    # proxy reads schema 1 (README): a router dump that added "fall_through": false changed every
    # hash, so each such config was refused as corrupted.
    from pathlib import Path

    from lightmesh.proxy.source import parse_config

    text = (Path(__file__).parent / "testdata" / name).read_text()
    served = json.loads(text)
    config = parse_config(text.encode(), name)
    assert config.schema_version == 1 and config.hash == served["hash"] and config.http.routers
    assert not any(r.fall_through for r in config.http.routers)
    # and it is written back unchanged: no field of schema 2 appears where it is not used
    assert json.loads(config.model_dump_json()) == served


def test_fall_through_is_written_only_where_it_is_set():
    http = c.HTTPConfig.model_validate({
        "entry_points": [{"name": "web", "port": 5000}],
        "services": [{"name": "s", "servers": [{"url": "http://10.0.0.1:80"}]}],
        "middlewares": [{"type": "allow_list", "name": "a", "source_ranges": ["10.1.0.0/16"]}],
        "routers": [{"name": "plain", "entry_points": ["web"], "service": "s"},
                    {"name": "acl", "entry_points": ["web"], "service": "s", "middlewares": ["a"],
                     "fall_through": True, "match": {"headers": {"x-a": ["^1", "1$"]}}}]})
    config = c.make_config(1, http)
    routers = {r["name"]: r for r in json.loads(config.to_json())["http"]["routers"]}
    assert "fall_through" not in routers["plain"] and routers["acl"]["fall_through"] is True
    assert routers["acl"]["match"]["headers"] == {"x-a": ["^1", "1$"]}
    assert c.load_config_json(config.to_json()).hash == config.hash  # round trip keeps the hash
    with pytest.raises(c.ConfigError, match="must not be empty"):
        c.load_config_dict({"version": 1, "http": {**json.loads(config.to_json())["http"], "routers": [
            {"name": "r", "entry_points": ["web"], "service": "s", "match": {"headers": {"x-a": []}}}]}})


def test_a_schema_1_config_using_schema_2_fields_is_refused_naming_the_router():
    # A schema-1 reader routes as if neither field were there: a config claiming schema 1 while
    # using them is inconsistent (hand-made or mangled), never half-applied.
    def fall_through(d):
        d["schema_version"] = 1
        d["http"]["routers"][0]["fall_through"] = True

    def header_list(d):
        d["schema_version"] = 1
        d["http"]["routers"][0]["match"]["headers"] = {"x-a": ["^1", "1$"]}

    router = json.loads(sample_config().to_json())["http"]["routers"][0]["name"]
    assert f"router {router!r}: fall_through needs schema_version 2" in _broken(fall_through)
    assert (f"router {router!r}: a list of regexes for header 'x-a' needs schema_version 2"
            in _broken(header_list))
    # the same fields under schema 2 load
    data = json.loads(sample_config().to_json())
    data["hash"] = ""
    fall_through(data)
    data["schema_version"] = 2
    assert c.load_config_dict(data).http.routers[0].fall_through is True


# ---------------------------------------------------------------------------- what the proxy can take

INT64_MAX = 2**63 - 1  # version and priority: Go's int
MAX_RATE = 10**9  # rate-limit average and burst

def _extremes(**change) -> dict:
    """A config with every number of the contract at one end of its range (``change`` overrides)."""
    values = dict(version=INT64_MAX, priority=INT64_MAX, port=65535, weight=1_000_000, attempts=100,
                  average=MAX_RATE, burst=MAX_RATE, period=1e-9, seconds=86400.0, status=599,
                  connect=300.0, idle=3600.0)
    values.update(change)
    return {"version": values["version"], "http": {
        "entry_points": [{"name": "web", "address": "127.0.0.1", "port": values["port"]}],
        "services": [{"name": "s", "load_balancer": "weighted",
                      "servers": [{"url": "http://10.0.0.1:65535", "weight": values["weight"]},
                                  {"url": "http://10.0.0.2:1", "weight": 1}]}],
        "middlewares": [{"type": "rate_limit", "name": "rl", "average": values["average"], "burst": values["burst"],
                         "period_seconds": values["period"]},
                        {"type": "retry", "name": "retry", "attempts": values["attempts"]},
                        {"type": "request_timeout", "name": "timeout", "seconds": values["seconds"]},
                        {"type": "deny", "name": "deny", "status_code": values["status"]},
                        {"type": "circuit_breaker", "name": "cb",
                         "expression": "ResponseCodeRatio(500, 500, 0, 9223372036854775807) > 1e308 || "
                                       "LatencyAtQuantileMS(0.0) > (100)"}],
        "routers": [{"name": "r", "entry_points": ["web"], "service": "s", "priority": values["priority"],
                     "middlewares": ["rl", "retry", "timeout", "deny", "cb"]}]},
        "tcp": [{"name": "t", "address": "127.0.0.1", "port": 65534, "connect_timeout_seconds": values["connect"],
                 "servers": [{"address": "10.0.0.1", "port": 65535, "weight": values["weight"]}]}],
        "udp": [{"name": "u", "address": "127.0.0.1", "port": 65534, "session_idle_timeout_seconds": values["idle"],
                 "servers": [{"address": "10.0.0.1", "port": 1, "weight": values["weight"]}]}]}


@pytest.mark.parametrize("ends", [{}, dict(version=0, priority=-INT64_MAX - 1, port=1, weight=0, attempts=1,
                                           average=1, burst=1, period=86400.0, seconds=1e-9, status=400,
                                           connect=1e-9, idle=1e-9)], ids=["max", "min"])
def test_every_number_the_contract_accepts_compiles_in_the_proxy(ends):
    # The contract is the proxy's promise: a value it accepts must compile in every proxy, or every
    # proxy refuses the whole config (an average of 10**400 did: OverflowError in the token bucket).
    import asyncio

    from lightmesh.proxy.policies import RateLimiter
    from lightmesh.proxy.routing import compile_http
    from lightmesh.proxy.runtime import Runtime

    config = c.make_config_from_dict(_extremes(**ends))
    config = c.load_config_json(config.to_json())  # as a proxy reads it
    plane = compile_http(config)
    assert plane.version == config.version and plane.entry_points["web"].lookup("x", "GET", b"/", []).name == "r"

    async def runtime_compile():  # HTTP, TCP and UDP, as Runtime.apply compiles them
        return Runtime()._compile(config)

    _, wanted = asyncio.run(runtime_compile())
    assert len(wanted) == 3
    # the token bucket at its fastest and slowest: finite waits, never NaN (a period under 1 ns made
    # the rate infinite, then 0 × inf = NaN and the Retry-After header could not be written)
    rl = config.http.middlewares[0]
    now = [0.0]
    limiter = RateLimiter(rl.average, rl.burst, rl.period_seconds, clock=lambda: now[0])
    for _ in range(3):
        waits = [limiter.check("10.0.0.1") for _ in range(3)]
        assert all(0.0 <= w < float("inf") for w in waits), waits
        now[0] += 1e-9


@pytest.mark.parametrize("change, where", [
    (dict(average=10**400), "middlewares['rl'].rate_limit.average"),
    (dict(average=MAX_RATE + 1), "middlewares['rl'].rate_limit.average"),
    (dict(burst=10**400), "middlewares['rl'].rate_limit.burst"),
    (dict(period=5e-324), "middlewares['rl'].rate_limit.period_seconds"),
    (dict(period=0.999e-9), "middlewares['rl'].rate_limit.period_seconds"),
    (dict(priority=INT64_MAX + 1), "routers['r'].priority"),
    (dict(priority=-10**5000), "routers['r'].priority"),  # no JSON number a proxy reads back
    (dict(version=INT64_MAX + 1), "version"),
], ids=["average-huge", "average", "burst", "period-denormal", "period", "priority", "priority-huge", "version"])
def test_a_number_the_proxy_cannot_take_is_refused_naming_the_element(change, where):
    with pytest.raises(c.ConfigError) as err:
        c.load_config_dict(_extremes(**change))
    assert where in str(err.value)
    with pytest.raises(c.ConfigError):  # and the controller's assembler says the same
        c.ConfigAssembler().make(_extremes(**change))


def test_header_names_differing_only_in_case_are_refused_naming_both():
    # both went to one lower-case key: one constraint was silently dropped ("^beta$" won)
    msg = _broken(lambda d: d["http"]["routers"][0]["match"].update(headers={"X-Tenant": "^alpha$",
                                                                             "x-tenant": "^beta$"}))
    assert "routers['whoami-whoami-80'].match.headers" in msg
    assert "'X-Tenant' and 'x-tenant' differ only in letter case" in msg
    # one spelling, any case, and a list of regexes for several constraints: fine
    data = json.loads(sample_config().to_json())
    data["hash"] = ""
    data["http"]["routers"][0]["match"]["headers"] = {"X-Tenant": ["^alpha", "beta$"]}
    assert c.load_config_dict(data).http.routers[0].match.headers == {"x-tenant": ["^alpha", "beta$"]}


@pytest.mark.parametrize("match", [{"methods": ["GET\n"]}, {"headers": {"X-A\n": "a"}}, {"methods": ["\nGET"]}])
def test_a_trailing_newline_is_not_part_of_a_token(match):
    # "$" matches before a final newline: "GET\n" passed re.match(r"^[...]+$")
    msg = _broken(lambda d: d["http"]["routers"][0]["match"].update(match))
    assert "routers['whoami-whoami-80'].match" in msg and "invalid" in msg
    msg = _broken(lambda d: d["http"]["middlewares"].append({"type": "request_headers", "name": "h",
                                                             "set": {"X-A\n": "1"}}))
    assert "middlewares['h']" in msg and "is not a header field name" in msg


def test_the_assembler_cache_is_as_strict_as_the_models():
    # A valid config, then the same with 5000.0 / true / 2.0: equal dicts to Python (5000.0 == 5000,
    # True == 1), which the strict models refuse; the warm assembler reused the cached elements.
    def data(port, weight, attempts):
        return {"version": 1, "http": {
            "entry_points": [{"name": "e", "port": port}],
            "routers": [{"name": "r", "entry_points": ["e"], "service": "s", "middlewares": ["m"]}],
            "services": [{"name": "s", "servers": [{"url": "http://10.0.0.1:80", "weight": weight}]}],
            "middlewares": [{"type": "retry", "name": "m", "attempts": attempts}]}, "tcp": [], "udp": []}

    assembler = c.ConfigAssembler()
    first = assembler.make(data(5000, 1, 2))
    for bad, where in (((5000.0, 1, 2), "entry_points['e'].port"), ((5000, True, 2), "servers[0].weight"),
                       ((5000, 1, 2.0), "middlewares['m'].retry.attempts")):
        with pytest.raises(c.ConfigError) as err:
            assembler.make(data(*bad))
        assert where in str(err.value)
        with pytest.raises(c.ConfigError):
            c.load_config_dict(data(*bad))
        warm = assembler.make(data(5000, 1, 2))  # (warm again)
        assert warm.hash == first.hash
    # the cache still serves an equal config of the same types: the very models are reused
    again = assembler.make(data(5000, 1, 2))
    assert again == first and again.http.services[0] is warm.http.services[0]
    assert not c._same_input({"a": 1, "b": 2}, {"b": 2, "a": 1})  # another order: validated again
    assert not c._same_input({"a": [1]}, {"a": (1,)}) and c._same_input({"a": [None, "x"]}, {"a": [None, "x"]})


def test_the_schema_requires_the_middleware_type_as_the_loader_does():
    # The loader needs "type" to tell the middlewares apart; the exported schema made it optional
    # (a Python default), so a config the schema passed was refused by every proxy.
    schema = c.json_schema()
    mapping = schema["$defs"]["HTTPConfig"]["properties"]["middlewares"]["items"]["discriminator"]["mapping"]
    assert len(mapping) == 8
    for ref in mapping.values():
        definition = schema["$defs"][ref.rsplit("/", 1)[-1]]
        assert "type" in definition["required"] and "default" not in definition["properties"]["type"]
    untyped = {"version": 1, "http": {"middlewares": [{"name": "retry", "attempts": 2}]}}
    with pytest.raises(c.ConfigError, match="discriminator 'type'"):
        c.load_config_dict(untyped)
    assert c.RetryMiddleware(name="retry", attempts=2).type == "retry"  # Python callers keep the default
    jsonschema = pytest.importorskip("jsonschema")
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(untyped))
    jsonschema.validate(json.loads(sample_config().to_json()), schema)
