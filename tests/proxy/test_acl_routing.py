"""ACL mode end to end: cluster objects → the controller's build → the real HTTP data plane on loopback.

Each pod is a real backend on its own 127.0.71.x address, each client pod's requests leave from
its own address (ACL identity is the source address), and the answer says which backend took the
request (``X-Backend``). The cases are the SMI and Gateway API semantics an outside audit found
broken: TrafficTargets are additive, one TrafficTarget's sources never reach another's
destination pods, ACL mode never hands a request to a lower-ranked HTTPRoute rule or to a split
root's own pods, and header matches ignore the whitespace around a value.
"""

from __future__ import annotations

import asyncio
import contextlib

from lightmesh.controller.build import build
from lightmesh.controller.model import ClusterState, Settings

from tests.proxy.backends import Backend, ProxyUnderTest, RawClient, on_uvloop
from tests.proxy.test_h2c import H2Client

NS = "a"
HOST = "web.a.traefik.mesh"
CLIENTS = {"alice": "127.0.71.21", "bob": "127.0.71.22"}
OLD = "2026-01-01T00:00:00Z"


def _service(name: str, pods: dict[str, tuple[str, int, str]], admin_only: tuple[str, ...] = (),
             annotations: dict[str, str] | None = None) -> list[dict]:
    """Service ``name`` selecting ``pods`` (pod name → (ip, port, ServiceAccount)); a named
    targetPort, so each pod serves on its own port (one EndpointSlice each). The pods in
    ``admin_only`` serve only the Service's second port (90, ``admin``), none on port 80."""
    ports = [{"name": "http", "port": 80, "targetPort": "http"}]
    if admin_only:
        ports.append({"name": "admin", "port": 90, "targetPort": "admin"})
    objects = [{"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": NS, "annotations": annotations or {}},
                "spec": {"selector": {"app": name}, "ports": ports}}]
    for pod, (ip, port, account) in pods.items():
        objects.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                        "metadata": {"name": pod, "namespace": NS, "labels": {"kubernetes.io/service-name": name}},
                        "ports": [{"name": "admin" if pod in admin_only else "http", "port": port}],
                        "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": pod, "namespace": NS}}]})
    for pod, (ip, _, account) in pods.items():
        objects.append({"apiVersion": "v1", "kind": "Pod",
                        "metadata": {"name": pod, "namespace": NS, "labels": {"app": name}},
                        "spec": {"serviceAccountName": account}, "status": {"podIP": ip}})
    return objects


def _clients() -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS},
             "spec": {"serviceAccountName": name}, "status": {"podIP": ip}} for name, ip in CLIENTS.items()]


def _group(name: str, *matches: dict) -> dict:
    return {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
            "metadata": {"name": name, "namespace": NS}, "spec": {"matches": list(matches)}}


def _target(name: str, destination: str, group: str, *sources: str) -> dict:
    return {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"destination": {"kind": "ServiceAccount", "name": destination, "namespace": NS},
                     "sources": [{"kind": "ServiceAccount", "name": s, "namespace": NS} for s in sources],
                     "rules": [{"kind": "HTTPRouteGroup", "name": group}]}}


def _route(*rules: dict) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": NS, "creationTimestamp": OLD},
            "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                     "rules": list(rules)}}


def _rule(backend: str, **match) -> dict:
    return {"matches": [match] if match else [], "backendRefs": [{"name": backend, "port": 80}]}


@contextlib.asynccontextmanager
async def mesh(pods: dict[str, dict[str, str]], *extra: dict, acl: bool = True, admin_only: tuple[str, ...] = (),
               annotations: dict[str, dict[str, str]] | None = None):
    """Backends for ``pods`` (Service → {pod name: ServiceAccount}), the clients, ``extra`` objects;
    yields ``ask(client, method, path, headers, h2=False) -> (status, backend name or None)``
    (``h2``: over an HTTP/2 prior-knowledge connection)."""
    backends: list[Backend] = []
    objects: list[dict] = _clients()
    address = 10
    try:
        for service, members in pods.items():
            placed = {}
            for pod, account in members.items():
                address += 1
                backend = await Backend(pod, host=f"127.0.71.{address}").start()
                backends.append(backend)
                placed[pod] = (backend.host, backend.port, account)
            objects += _service(service, placed, tuple(p for p in admin_only if p in placed),
                                (annotations or {}).get(service))
        objects += extra
        settings = Settings(acl=acl)
        result = build(ClusterState.from_objects(objects, settings.mesh_namespace), settings, 1)
        assert not [e for e in result.errors if e.kind in ("TrafficTarget", "HTTPRoute", "TrafficSplit")], \
            result.errors
        entry = next(r.entry_points[0] for r in result.config.http.routers if HOST in r.match.hosts)
        async with ProxyUnderTest(result.config, entry_point=entry, host="127.0.71.1") as proxy:
            async def ask(client: str, method: str, path: str, headers: dict[str, str] | None = None,
                          h2: bool = False):
                if h2:
                    reader, writer = await asyncio.open_connection("127.0.71.1", proxy.port,
                                                                   local_addr=(CLIENTS[client], 0))
                    h2client = H2Client(reader, writer)
                    h2client.conn.initiate_connection()
                    writer.write(h2client.conn.data_to_send())
                    try:
                        sid = h2client.start(path, method=method, authority=HOST,
                                             headers=[(k.encode(), v.encode()) for k, v in (headers or {}).items()])
                        [result] = await h2client.wait([sid], timeout=5)
                    finally:
                        await h2client.close()
                    backend = result["headers"].get(b"x-backend")
                    return int(result["headers"][b":status"]), backend.decode() if backend else None
                conn = await RawClient.connect(proxy.port, "127.0.71.1", local_host=CLIENTS[client])
                try:
                    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Content-Length: 0"]
                    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
                    await conn.send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
                    response = await conn.response(5.0)
                finally:
                    await conn.close()
                return response.status, response.header("X-Backend")
            yield ask
    finally:
        for backend in backends:
            await backend.close()


@on_uvloop
async def test_traffic_targets_are_additive_where_their_matches_overlap():
    # alice may call anything, bob only /api: bob's /api must not be refused because alice's
    # router (which matches /api too) was picked first
    async with mesh({"web": {"web-0": "web"}},
                    _group("all", {"name": "all", "pathRegex": ".*"}),
                    _group("api", {"name": "api", "pathRegex": "/api"}),
                    _target("alice-all", "web", "all", "alice"), _target("bob-api", "web", "api", "bob")) as ask:
        assert await ask("bob", "GET", "/api") == (200, "web-0")
        assert await ask("alice", "GET", "/api") == (200, "web-0")
        assert await ask("alice", "GET", "/other") == (200, "web-0")
        assert (await ask("bob", "GET", "/other"))[0] == 403
        assert await ask("bob", "GET", "/api", h2=True) == (200, "web-0")  # the HTTP/2 side decides alike
        assert (await ask("bob", "GET", "/other", h2=True))[0] == 403
    # overlapping matches of another shape: methods against paths
    async with mesh({"web": {"web-0": "web"}},
                    _group("reads", {"name": "reads", "pathRegex": "/api", "methods": ["GET"]}),
                    _group("api", {"name": "api", "pathRegex": "/api"}),
                    _target("alice-reads", "web", "reads", "alice"), _target("bob-api", "web", "api", "bob")) as ask:
        assert await ask("bob", "GET", "/api") == (200, "web-0")
        assert await ask("bob", "POST", "/api") == (200, "web-0")
        assert await ask("alice", "GET", "/api") == (200, "web-0")
        assert (await ask("alice", "POST", "/api"))[0] == 403


@on_uvloop
async def test_a_traffic_targets_sources_reach_only_its_own_destination_pods():
    # one Service whose pods run as two ServiceAccounts; alice may reach team-a's pod, bob team-b's
    async with mesh({"web": {"web-a": "team-a", "web-b": "team-b"}},
                    _group("all", {"name": "all", "pathRegex": ".*"}),
                    _target("alice-to-a", "team-a", "all", "alice"), _target("bob-to-b", "team-b", "all", "bob")) as ask:
        # (one pod list shared by both would be round-robined: each client's pair of requests would
        # reach both pods)
        for client, pod in (("alice", "web-a"), ("bob", "web-b"), ("alice", "web-a"), ("bob", "web-b")):
            assert [await ask(client, "GET", "/") for _ in range(2)] == [(200, pod)] * 2, client


@on_uvloop
async def test_acl_mode_refuses_a_request_its_rule_matches_it_never_hands_it_to_a_lower_rule():
    # rule 0: /admin → one, rule 1: everything else → two; alice may call anything on two
    routes = _route(_rule("one", path={"type": "PathPrefix", "value": "/admin"}), _rule("two"))
    pods = {"web": {"web-0": "web"}, "one": {"one-0": "one"}, "two": {"two-0": "two"}}
    everything = _group("all", {"name": "all", "pathRegex": ".*"})
    to_two = _target("alice-two", "two", "all", "alice")
    # one allows alice only POST: a GET /admin is refused, not served by two
    async with mesh(pods, routes, everything, to_two,
                    _group("posts", {"name": "posts", "pathRegex": ".*", "methods": ["POST"]}),
                    _target("alice-one", "one", "posts", "alice")) as ask:
        assert await ask("alice", "POST", "/admin") == (200, "one-0")
        assert await ask("alice", "GET", "/admin") == (403, None)
        assert await ask("alice", "GET", "/other") == (200, "two-0")
    # one has no TrafficTarget at all: nothing under /admin is served, by anyone
    async with mesh(pods, routes, everything, to_two) as ask:
        assert await ask("alice", "GET", "/admin/users") == (403, None)
        assert await ask("alice", "GET", "/") == (200, "two-0")


@on_uvloop
async def test_a_rule_header_and_a_traffic_target_header_on_one_name_both_apply():
    # rule 0 matches x-canary: 1 exactly; one's TrafficTarget allows x-canary matching 1|2
    routes = _route(_rule("one", headers=[{"name": "x-canary", "value": "1"}]), _rule("two"))
    async with mesh({"web": {"web-0": "web"}, "one": {"one-0": "one"}, "two": {"two-0": "two"}}, routes,
                    _group("canary", {"name": "canary", "headers": {"x-canary": "1|2"}}),
                    _group("all", {"name": "all", "pathRegex": ".*"}),
                    _target("alice-one", "one", "canary", "alice"), _target("alice-two", "two", "all", "alice")) as ask:
        assert await ask("alice", "GET", "/", {"x-canary": "1"}) == (200, "one-0")
        assert await ask("alice", "GET", "/", {"x-canary": "2"}) == (200, "two-0")  # not rule 0's
        assert await ask("alice", "GET", "/") == (200, "two-0")


@on_uvloop
async def test_header_matches_ignore_the_whitespace_around_the_value():
    routes = _route(_rule("one", headers=[{"name": "x-canary", "value": "1"}]), _rule("two"))
    async with mesh({"web": {"web-0": "web"}, "one": {"one-0": "one"}, "two": {"two-0": "two"}}, routes,
                    acl=False) as ask:
        for value in ("1", "1 ", "1\t", " 1  "):
            assert await ask("alice", "GET", "/", {"X-Canary": value}) == (200, "one-0"), repr(value)
        assert await ask("alice", "GET", "/", {"X-Canary": "1 1"}) == (200, "two-0")


@on_uvloop
async def test_split_traffic_the_backends_refuse_is_refused_not_sent_to_the_roots_pods():
    # the split on web sends x-canary: 1 to two, which allows alice only GET; web allows everything
    split = {"apiVersion": "split.smi-spec.io/v1alpha4", "kind": "TrafficSplit",
             "metadata": {"name": "s", "namespace": NS},
             "spec": {"service": "web", "backends": [{"service": "two", "weight": 1}],
                      "matches": [{"kind": "HTTPRouteGroup", "name": "canary"}]}}
    async with mesh({"web": {"web-0": "web"}, "two": {"two-0": "two"}}, split,
                    _group("canary", {"name": "canary", "headers": {"x-canary": "^1$"}}),
                    _group("all", {"name": "all", "pathRegex": ".*"}),
                    _group("reads", {"name": "reads", "pathRegex": ".*", "methods": ["GET"]}),
                    _target("alice-web", "web", "all", "alice"), _target("alice-two", "two", "reads", "alice")) as ask:
        assert await ask("alice", "GET", "/", {"x-canary": "1"}) == (200, "two-0")
        assert await ask("alice", "POST", "/", {"x-canary": "1"}) == (403, None)
        assert await ask("alice", "POST", "/") == (200, "web-0")  # not split traffic: the root's pods


@on_uvloop
async def test_a_traffic_target_whose_pods_serve_nothing_here_does_not_hide_one_that_does():
    # alice may reach team-a's and team-b's pods; team-a's pod serves only the admin port. The
    # router of alice-to-a (first by name) admitted alice and answered 503 from its empty server list.
    pods = {"web": {"web-a": "team-a", "web-b": "team-b"}}
    async with mesh(pods, _group("all", {"name": "all", "pathRegex": ".*"}), _target("alice-to-a", "team-a", "all", "alice"),
                    _target("alice-to-b", "team-b", "all", "alice"), admin_only=("web-a",)) as ask:
        assert await ask("alice", "GET", "/") == (200, "web-b")
        assert await ask("alice", "GET", "/", h2=True) == (200, "web-b")
        assert (await ask("bob", "GET", "/"))[0] == 403
    # allowed, but only to pods that serve nothing on this port: unavailable (503), not refused
    async with mesh(pods, _group("all", {"name": "all", "pathRegex": ".*"}), _target("alice-to-a", "team-a", "all", "alice"),
                    admin_only=("web-a",)) as ask:
        assert await ask("alice", "GET", "/") == (503, None)
        assert (await ask("bob", "GET", "/"))[0] == 403


@on_uvloop
async def test_one_traffic_target_per_client_on_one_route_group_stays_one_router():
    # The common layout: a TrafficTarget per client, all on one HTTPRouteGroup, to one destination.
    # One router per TrafficTarget would make a refused client walk all of them on every request.
    many = [_target(f"client-{i}", "web", "all", f"client-{i}") for i in range(300)]
    many_pods = [{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"client-{i}", "namespace": NS},
                  "spec": {"serviceAccountName": f"client-{i}"}, "status": {"podIP": f"10.9.{i // 200}.{i % 200 + 1}"}}
                 for i in range(300)]
    async with mesh({"web": {"web-0": "web"}}, _group("all", {"name": "all", "pathRegex": ".*"}),
                    _target("alice-web", "web", "all", "alice"), *many, *many_pods) as ask:
        assert await ask("alice", "GET", "/") == (200, "web-0")
        assert (await ask("bob", "GET", "/"))[0] == 403
    objects = _clients() + _service("web", {"web-0": ("10.0.0.1", 80, "web")}) + [
        _group("all", {"name": "all", "pathRegex": ".*"}), *many, *many_pods]
    settings = Settings(acl=True)
    config = build(ClusterState.from_objects(objects, settings.mesh_namespace), settings, 1).config
    [router] = [r for r in config.http.routers if "/tt/" in r.name]
    allow = {m.name: m for m in config.http.middlewares}[router.middlewares[0]]
    assert len(allow.source_ranges) == 300


@on_uvloop
async def test_a_services_rate_limit_is_one_bucket_per_client_across_its_routes_rules_and_split_matches():
    # Each HTTPRoute rule, split match and TrafficTarget gets a config service of its own; the
    # limiter used to be per config service, so one client got the Service's burst once per rule.
    limited = {"web": {"mesh.traefik.io/ratelimit-average": "1", "mesh.traefik.io/ratelimit-burst": "3"}}
    route = _route(_rule("web", path={"type": "PathPrefix", "value": "/a"}),
                   _rule("web", path={"type": "PathPrefix", "value": "/b"}), _rule("web"))
    async with mesh({"web": {"web-0": "web"}}, route, acl=False, annotations=limited) as ask:
        statuses = [(await ask("alice", "GET", path))[0] for path in ("/a", "/b", "/c", "/a", "/b", "/c")]
        assert statuses == [200, 200, 200, 429, 429, 429], statuses
        assert (await ask("bob", "GET", "/a"))[0] == 200  # per client IP
    # ACL mode: a router per TrafficTarget match, the same bucket
    groups = _group("paths", {"name": "a", "pathRegex": "/a"}, {"name": "b", "pathRegex": "/b"})
    target = {**_target("alice-web", "web", "paths", "alice")}
    target["spec"]["rules"] = [{"kind": "HTTPRouteGroup", "name": "paths", "matches": ["a", "b"]}]
    async with mesh({"web": {"web-0": "web"}}, groups, target, annotations=limited) as ask:
        statuses = [(await ask("alice", "GET", path))[0] for path in ("/a", "/b", "/a", "/b")]
        assert statuses == [200, 200, 200, 429], statuses
