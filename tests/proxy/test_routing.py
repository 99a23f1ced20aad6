"""Route compilation and lookup against the config contract, plus state carry-over across swaps."""

from __future__ import annotations

import re
from collections import Counter
import time

import pytest

from hypothesis import given, settings
from hypothesis import strategies as st

from lightmesh.config import HTTPConfig, make_config
from lightmesh.proxy.metrics import ProxyMetrics
from lightmesh.proxy.routing import compile_http, match_length, normal_path, split_host


def _config(routers, services=None, middlewares=None, entry_points=("web", "admin"), version=1):
    services = services or [{"name": "svc", "servers": [{"url": "http://10.0.0.1:80"}]}]
    http = {"entry_points": [{"name": ep, "port": 5000 + i} for i, ep in enumerate(entry_points)],
            "services": services, "routers": routers, "middlewares": middlewares or []}
    return make_config(version, HTTPConfig.model_validate(http))


def _router(name, priority=0, ep="web", service="svc", **match):
    return {"name": name, "entry_points": [ep], "service": service, "priority": priority, "match": match}


def _lookup(plane, host, method="GET", path=b"/", headers=(), ep="web"):
    route = plane.entry_points[ep].lookup(host, method, path, list(headers))
    return route.name if route else None


def test_split_host():
    assert split_host(b"Svc.NS.Traefik.Mesh:5000") == "svc.ns.traefik.mesh"
    assert split_host(b"svc") == "svc"
    assert split_host(b"[::1]:80") == "::1"
    assert split_host(b"[::1]") == "::1"
    assert split_host(b"10.0.0.1:8080") == "10.0.0.1"
    assert split_host(b"svc.ns.lightmesh.") == "svc.ns.lightmesh"


def test_hosts_case_insensitive_without_port_and_entry_points_separate():
    plane = compile_http(_config([_router("a", hosts=["Svc.NS"]), _router("b", ep="admin")]))
    assert _lookup(plane, split_host(b"SVC.ns:5000")) == "a"
    assert _lookup(plane, "other") is None
    assert _lookup(plane, "svc.ns", ep="admin") == "b"
    assert _lookup(plane, "anything", ep="admin") == "b"


def test_path_regex_anchored_at_start_only_and_no_query():
    plane = compile_http(_config([_router("api", path_regex="/api/v[0-9]+"), _router("exact", path_regex="/x$")]))
    assert _lookup(plane, "h", path=b"/api/v2/users") == "api"
    assert _lookup(plane, "h", path=b"/v1/api/v2") is None
    assert _lookup(plane, "h", path=b"/x") == "exact"
    assert _lookup(plane, "h", path=b"/xy") is None


@pytest.mark.parametrize("path, normal", [
    ("/api", "/api"), ("/%61pi", "/api"), ("/API%2d%5F%7e%2E", "/API-_~."), ("/api/../admin", "/admin"),
    ("/%2e%2e/admin", "/admin"), ("/a/./b/", "/a/b/"), ("//admin", "/admin"), ("/a//b", "/a/b"),
    ("/a/b/..", "/a/"), ("/..", "/"), ("/../../x", "/x"), ("/a/", "/a/"), ("/a%2Fb", "/a%2Fb"),
    ("/%25", "/%25"), ("/%zz", "/%zz"), ("/", "/")])
def test_normal_path(path, normal):
    assert normal_path(path) == normal


def test_path_regex_sees_the_normal_path_so_rules_cannot_be_dodged():
    # Backends decode unreserved escapes and resolve dot segments before they route: a rule for
    # /admin must catch /%61dmin and /api/../admin, and a rule for /api must not let /api/../admin by.
    plane = compile_http(_config([_router("admin", priority=10, path_regex="/admin"),
                                  _router("api", priority=5, path_regex="/api/")]))
    for path in (b"/admin", b"/%61dmin", b"/%61%64min?x=/api/", b"/api/../admin", b"/api/%2e%2e/admin", b"//admin",
                 b"/./admin"):
        assert _lookup(plane, "h", path=path) == "admin", path
    assert _lookup(plane, "h", path=b"/api/x") == "api"
    assert _lookup(plane, "h", path=b"/api/x/../y") == "api"
    assert _lookup(plane, "h", path=b"/other/../api/x") == "api"
    assert _lookup(plane, "h", path=b"/api%2F..%2Fadmin") is None  # %2F is not a separator


def test_methods_and_headers():
    plane = compile_http(_config([
        _router("post", methods=["post", "PUT"]),
        _router("any", methods=["*"], headers={"X-Canary": "^yes$", "User-Agent": "curl"}),
    ]))
    assert _lookup(plane, "h", method="POST") == "post"
    assert _lookup(plane, "h", method="GET") is None
    assert _lookup(plane, "h", headers=[(b"x-canary", b"yes"), (b"User-Agent", b"x curl/8")]) == "any"
    assert _lookup(plane, "h", headers=[(b"X-Canary", b"yes")]) is None  # all must match
    assert _lookup(plane, "h", headers=[(b"X-Canary", b"yes!"), (b"User-Agent", b"curl")]) is None


def test_header_values_are_matched_as_utf8_like_gos_regexp():
    # A pattern with non-ASCII letters matched nothing: values were decoded as latin-1
    plane = compile_http(_config([_router("fr", headers={"X-User": "^café$"}),
                                  _router("any", headers={"X-User": "^caf.$"}, priority=-1)]))
    assert _lookup(plane, "h", headers=[(b"X-User", "café".encode())]) == "fr"
    # a byte that is not UTF-8 is one U+FFFD, as in Go: it is no "é", but it is one character
    assert _lookup(plane, "h", headers=[(b"X-User", b"caf\xe9")]) == "any"
    # a truncated sequence is one U+FFFD per byte, as Go's decoding makes it
    plane = compile_http(_config([_router("two", headers={"X-Two": "^..$"})]))
    assert _lookup(plane, "h", headers=[(b"X-Two", b"\xe2\x82")]) == "two"


def test_precedence_priority_then_length_then_name():
    plane = compile_http(_config([
        _router("low", 1, hosts=["h"]),
        _router("high-any-host", 5),
        _router("zz", 3, hosts=["h"], path_regex="/a"),
        _router("aa", 3, hosts=["h"], path_regex="/b"),
        _router("longer", 3, hosts=["h"], path_regex="/abc"),
    ]))
    assert _lookup(plane, "h", path=b"/abc") == "high-any-host"
    plane = compile_http(_config([
        _router("low", 1, hosts=["h"]),
        _router("zz", 3, hosts=["h"], path_regex="/a"),
        _router("aa", 3, hosts=["h"], path_regex="/"),
        _router("longer", 3, hosts=["h"], path_regex="/abc"),
    ]))
    assert _lookup(plane, "h", path=b"/abc") == "longer"
    assert _lookup(plane, "h", path=b"/ab") == "zz"
    assert _lookup(plane, "h", path=b"/q") == "aa"
    assert _lookup(plane, "other", path=b"/q") is None


def test_middlewares_compiled_in_router_order():
    mws = [{"type": "retry", "name": "retry", "attempts": 3},
           {"type": "allow_list", "name": "acl", "source_ranges": ["10.0.0.0/8"]},
           {"type": "rate_limit", "name": "rl", "average": 5, "burst": 10},
           {"type": "request_timeout", "name": "to", "seconds": 2.5},
           {"type": "deny", "name": "deny", "status_code": 451}]
    plane = compile_http(_config([{**_router("r"), "middlewares": ["rl", "retry", "acl", "to", "deny"]}],
                                 middlewares=mws))
    route = plane.entry_points["web"].lookup("h", "GET", b"/", [])
    assert [c.name for c in route.checks] == ["rl", "acl", "deny"]
    assert route.retries == 3 and route.timeout == 2.5


def test_carry_over_of_unchanged_elements_and_close_of_retired():
    mws = [{"type": "rate_limit", "name": "rl", "average": 5, "burst": 10},
           {"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"}]
    services = [{"name": "svc", "servers": [{"url": "http://10.0.0.1:80"}]},
                {"name": "gone", "servers": [{"url": "http://10.0.0.2:80"}]}]
    routers = [{**_router("r"), "middlewares": ["rl", "cb"]}, _router("g", service="gone", hosts=["g"])]
    metrics = ProxyMetrics()
    first = compile_http(_config(routers, services, mws), None, metrics)

    class FakeConn:
        closed = False

        def close(self):
            self.closed = True
    kept_conn, gone_conn = FakeConn(), FakeConn()
    first.services["svc"].servers[0].idle.append(kept_conn)
    first.services["gone"].servers[0].idle.append(gone_conn)
    second = compile_http(_config(routers[:1], services[:1], mws, version=2), first, metrics)
    assert second.services["svc"] is first.services["svc"]
    r1 = first.entry_points["web"].lookup("h", "GET", b"/", [])
    r2 = second.entry_points["web"].lookup("h", "GET", b"/", [])
    assert r2.checks[0].limiter is r1.checks[0].limiter
    assert r2.checks[1].breaker is r1.checks[1].breaker
    first.close()
    assert gone_conn.closed and not kept_conn.closed
    assert metrics.breaker_state["svc"] == 0
    # changed definitions: new objects, the balancer's ejections carried for servers still present
    changed = [{"name": "svc", "servers": [{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.9:80"}]}]
    second.services["svc"].balancer.failed(second.services["svc"].servers[0])
    third = compile_http(_config(routers[:1], changed, [{**mws[0], "burst": 11}, mws[1]], version=3), second, metrics)
    assert third.services["svc"] is not second.services["svc"]
    r3 = third.entry_points["web"].lookup("h", "GET", b"/", [])
    assert r3.checks[0].limiter is not r2.checks[0].limiter
    assert r3.checks[1].breaker is r2.checks[1].breaker
    health = {row["server"].url: row for row in third.services["svc"].balancer.status()}
    assert health["http://10.0.0.1:80"]["ejected_seconds"] > 0 and health["http://10.0.0.1:80"]["failures"] == 1
    assert health["http://10.0.0.9:80"]["ejected_seconds"] == 0
    # the server still listed is the same object, with its idle connections and ejection
    assert third.services["svc"].servers[0] is second.services["svc"].servers[0]
    second.close()
    assert not kept_conn.closed and not third.services["svc"].servers[0].retired
    # a server no longer listed is retired, its idle connections closed; the kept one stays
    dropped_conn = FakeConn()
    third.services["svc"].servers[1].idle.append(dropped_conn)
    fourth = compile_http(_config(routers[:1], services[:1], mws, version=4), third, metrics)
    assert fourth.services["svc"].servers == third.services["svc"].servers[:1]
    third.close()
    assert dropped_conn.closed and third.services["svc"].servers[1].retired
    assert not kept_conn.closed and not fourth.services["svc"].servers[0].retired
    # a server listed twice keeps one object per listing; a third listing gets a new one
    twice = [{"name": "svc", "servers": [{"url": "http://10.0.0.1:80"}] * 2}]
    fifth = compile_http(_config(routers[:1], twice, mws, version=5), fourth, metrics)
    thrice = [{"name": "svc", "servers": [{"url": "http://10.0.0.1:80"}] * 3}]
    sixth = compile_http(_config(routers[:1], thrice, mws, version=6), fifth, metrics)
    a, b, c = sixth.services["svc"].servers
    assert [a, b] == fifth.services["svc"].servers and a is not b and c not in (a, b)
    fifth.close()
    assert not any(s.retired for s in (a, b, c)) and not kept_conn.closed


# --------------------------------------------------------------------------- property: table == reference

_HOSTS = ["a", "b", "c.d"]
_PATHS = [None, "/", "/a", "/a/b", "/b$", "/[ab]"]
_METHODS = [[], ["GET"], ["POST"], ["*"], ["GET", "PUT"]]
_HEADERS = [{}, {"x-k": "v"}, {"x-k": "^w"}, {"x-k": "v", "x-j": "."}]

router_st = st.builds(
    lambda i, prio, hosts, path, methods, headers: {
        "name": f"r{i}", "entry_points": ["web"], "service": "svc", "priority": prio,
        "match": {"hosts": hosts, "path_regex": path, "methods": methods, "headers": headers}},
    st.integers(0, 10_000), st.integers(-2, 2), st.lists(st.sampled_from(_HOSTS), max_size=2, unique=True),
    st.sampled_from(_PATHS), st.sampled_from(_METHODS), st.sampled_from(_HEADERS))
request_st = st.tuples(st.sampled_from(_HOSTS + ["zzz"]), st.sampled_from(["GET", "POST", "PUT"]),
                       st.sampled_from([b"/", b"/a", b"/a/b", b"/b", b"/c"]),
                       st.lists(st.tuples(st.sampled_from([b"X-K", b"x-j", b"x-other"]),
                                          st.sampled_from([b"v", b"w", b"vw", b""])), max_size=3))


def _reference(routers, host, method, path, headers):
    def matches(m):
        if m["hosts"] and host not in m["hosts"]:
            return False
        if m["path_regex"] is not None and not re.match(m["path_regex"], path.decode()):
            return False
        if m["methods"] and "*" not in m["methods"] and method not in [x.upper() for x in m["methods"]]:
            return False
        for name, regex in m["headers"].items():
            if not any(k.decode().lower() == name and re.search(regex, v.decode()) for k, v in headers):
                return False
        return True

    def key(r):
        from lightmesh.config import Match
        return (-r["priority"], -match_length(Match.model_validate(r["match"])), r["name"])
    for r in sorted(routers, key=key):
        if matches(r["match"]):
            return r["name"]
    return None


@settings(max_examples=150, deadline=None)
@given(st.lists(router_st, max_size=8, unique_by=lambda r: r["name"]), st.lists(request_st, min_size=1, max_size=5))
def test_lookup_agrees_with_a_brute_force_reading_of_the_contract(routers, requests):
    plane = compile_http(_config(routers, entry_points=("web",)))
    for host, method, path, headers in requests:
        assert _lookup(plane, host, method, path, headers) == _reference(routers, host, method, path, headers)


def _breaker_config(with_breaker: bool):
    http = HTTPConfig.model_validate({
        "entry_points": [{"name": "web", "port": 5000}],
        "services": [{"name": "svc", "servers": [{"url": "http://127.0.0.1:9"}]}],
        "middlewares": [{"type": "circuit_breaker", "name": "cb", "expression": "NetworkErrorRatio() > 0.5"}],
        "routers": [{"name": "r", "entry_points": ["web"], "service": "svc",
                     "middlewares": ["cb"] if with_breaker else []}]})
    return make_config(1, http)


def test_breaker_gauge_is_the_state_now_and_forgets_removed_breakers():
    from lightmesh.proxy.metrics import CB_OPEN, CB_RECOVERING

    plane = compile_http(_breaker_config(True))
    [breaker] = plane._breakers.values()
    assert plane.breaker_states() == {"svc": 0}
    # its open period ended a second ago, and no request came since: by the clock it is recovering
    breaker._state, breaker._until = CB_OPEN, time.monotonic() - 1.0
    assert plane.breaker_states() == {"svc": CB_RECOVERING}
    # a config without the breaker: the service has no breaker state any more
    assert compile_http(_breaker_config(False), plane).breaker_states() == {}


def test_route_regexes_run_in_linear_time():
    # Python's re backtracks exponentially on (a+)+ against "aaa...b": one crafted request stalled a
    # worker for seconds, for every tenant. Users' regexes run on RE2 (as Go's regexp in Traefik).
    import time as time_mod

    plane = compile_http(_config([_router("evil", priority=10, path_regex="/(a+)+$", headers={"X-A": "^(a+)+$"}),
                                  _router("rest")]))
    [evil] = [r for r in plane.entry_points["web"].any_host if r.name == "evil"]
    assert type(evil.headers[0][1].__self__).__module__.startswith("re2")
    start = time_mod.perf_counter()
    for _ in range(20):
        assert _lookup(plane, "h", path=b"/" + b"a" * 5000 + b"b", headers=[(b"X-A", b"a" * 5000 + b"b")]) == "rest"
    assert time_mod.perf_counter() - start < 5  # Python's re: never, in practice (2**5000 paths)


def test_several_path_regexes_must_all_match():
    plane = compile_http(_config([_router("both", priority=10, path_regex=["/api/", "/.*/v2"]), _router("rest")]))
    assert _lookup(plane, "h", path=b"/api/v2") == "both"
    assert _lookup(plane, "h", path=b"/api/v1") == "rest"
    assert _lookup(plane, "h", path=b"/web/v2") == "rest"


def test_next_match_resumes_after_the_route_it_is_given():
    # A chain of refusals (fall-through routers) walks the host's routes in order, testing each
    # route's match once (next_match starts from the route's own position, kept per host).
    routers = [{**_router(f"r{i:03d}", priority=1000 - i, hosts=["svc"], path_regex="/"), "fall_through": True}
               for i in range(200)]
    plane = compile_http(_config(routers + [_router("any", hosts=["svc"])]))
    table = plane.entry_points["web"]
    calls = []
    for route in table.by_host["svc"]:
        if route.path is not None:
            route.path = (lambda real: lambda path: calls.append(1) or real(path))(route.path)
    route = table.lookup("svc", "GET", b"/x", [])
    walked = [route.name]
    while route.fall_through:
        route = table.next_match(route, "svc", "GET", b"/x", [])
        walked.append(route.name)
    assert walked == [f"r{i:03d}" for i in range(200)] + ["any"]
    assert len(calls) == 200  # each path predicate once
    assert table.next_match(route, "svc", "GET", b"/x", []) is None  # the last one has no next
    assert table.next_match(route, "other", "GET", b"/x", []) is None  # not in that host's list


def test_a_service_whose_endpoints_change_at_every_request_still_spreads_its_traffic():
    # Endpoint churn makes a new balancer per config. Each used to start at the first server, so
    # with a config per request that server took everything and a split's canary nothing.
    rr = [{"url": "http://10.0.0.1:80"}, {"url": "http://10.0.0.2:80"}]
    plane, counts = None, Counter()
    for i in range(400):  # a third server comes and goes with every config
        servers = rr + [{"url": "http://10.0.0.3:80"}] * (i % 2)
        plane = compile_http(_config([_router("r")], [{"name": "svc", "servers": servers}], version=i + 1), plane)
        counts[plane.services["svc"].balancer.pick().url] += 1
    # expected ~167 / ~167 / ~67 (sd ~9): far from the old 400 / 0 / 0
    assert counts["http://10.0.0.1:80"] > 100 and counts["http://10.0.0.2:80"] > 100
    assert counts["http://10.0.0.3:80"] > 20
    # a 90/10 split (weighted servers of one service) whose stable pods change at every request
    plane, canary = None, 0
    for i in range(1000):
        stable = [{"url": f"http://10.1.0.{1 + i % 2}:80", "weight": 90}]
        servers = stable + [{"url": "http://10.2.0.1:80", "weight": 10}]
        plane = compile_http(_config([_router("r")], [{"name": "svc", "load_balancer": "weighted",
                                                      "servers": servers}], version=i + 1), plane)
        canary += plane.services["svc"].balancer.pick().url == "http://10.2.0.1:80"
    assert 40 <= canary <= 200  # expected 100 (sd ~9.5); the first server of the cycle every time: 0
