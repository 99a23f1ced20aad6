"""Gateway API mesh routes, end to end through the pure core and the proxy's route table: which rule
answers a request follows the Gateway API's precedence, in ACL mode too; sectionName picks a port;
a rule whose filter cannot be applied answers an error instead of falling through to another rule."""

from __future__ import annotations

import pytest

from lightmesh.controller.build import build
from lightmesh.controller.model import ClusterState, Settings
from lightmesh.proxy.routing import compile_http

NS = "a"
BACKENDS = ("web", "one", "two", "three")


def service(name: str, ports=(("http", 80),)) -> list[dict]:
    ip = f"10.1.0.{BACKENDS.index(name) + 1}"
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
             "spec": {"selector": {"app": name}, "ports": [{"name": n, "port": p, "targetPort": 8000 + p}
                                                          for n, p in ports]}},
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{name}-0", "namespace": NS, "labels": {"app": name}},
             "spec": {"serviceAccountName": name}, "status": {"podIP": ip}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-1", "namespace": NS, "labels": {"kubernetes.io/service-name": name}},
             "ports": [{"name": n, "port": 8000 + p} for n, p in ports],
             "endpoints": [{"addresses": [ip], "targetRef": {"kind": "Pod", "name": f"{name}-0", "namespace": NS}}]}]


def route(name: str, created: str, rules: list[dict], kind: str = "HTTPRoute", parent: dict | None = None) -> dict:
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": kind,
            "metadata": {"name": name, "namespace": NS, "creationTimestamp": created},
            "spec": {"parentRefs": [parent or {"group": "", "kind": "Service", "name": "web"}], "rules": rules}}


def to(backend: str, **match) -> dict:
    return {"matches": [match] if match else [], "backendRefs": [{"name": backend, "port": 80}]}


def prefix(value: str) -> dict:
    return {"type": "PathPrefix", "value": value}


def chosen(objects: list[dict], method: str, path: str, headers=(), acl: bool = False, port: int = 80) -> str | None:
    """The backend Service whose pod answers ``method path`` to web (None: no route, or a local answer)."""
    settings = Settings(acl=acl)
    config = build(ClusterState.from_objects(objects, settings.mesh_namespace), settings, version=1).config
    plane = compile_http(config)
    table = plane.entry_points[f"http-{5000 + (0 if port == 80 else 1)}"]
    found = table.lookup("web.a.lightmesh", method, path.encode(), [(k.encode(), v.encode()) for k, v in headers])
    if found is None or not found.service.servers:
        return None
    ips = {s.host for s in found.service.servers}
    return next(b for b in BACKENDS if f"10.1.0.{BACKENDS.index(b) + 1}" in ips)


def cluster(*routes: dict, ports=(("http", 80),)) -> list[dict]:
    objects = service("web", ports)
    for b in BACKENDS[1:]:
        objects += service(b)
    return objects + list(routes)


OLD, NEW = "2026-11-01T00:00:00Z", "2026-11-02T00:00:00Z"


@pytest.mark.parametrize("rules, request_, winner", [
    # a longer prefix beats a shorter one with more headers
    ([to("one", path=prefix("/"), headers=[{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "2"}]),
      to("two", path=prefix("/api"))], ("GET", "/api/x", [("x-a", "1"), ("x-b", "2")]), "two"),
    # a longer prefix beats a shorter one with a method
    ([to("one", path=prefix("/api"), method="GET"), to("two", path=prefix("/api/v1"))],
     ("GET", "/api/v1/x", []), "two"),
    # Exact beats a prefix of the same path with a header
    ([to("one", path=prefix("/a"), headers=[{"name": "x-a", "value": "1"}]),
      to("two", path={"type": "Exact", "value": "/a"})], ("GET", "/a", [("x-a", "1")]), "two"),
    # with the same path, a method beats headers
    ([to("one", path=prefix("/a"), headers=[{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "1"}]),
      to("two", path=prefix("/a"), method="GET")], ("GET", "/a", [("x-a", "1"), ("x-b", "1")]), "two"),
    # and then more headers win
    ([to("one", path=prefix("/a"), headers=[{"name": "x-a", "value": "1"}]),
      to("two", path=prefix("/a"), headers=[{"name": "x-a", "value": "1"}, {"name": "x-b", "value": "1"}])],
     ("GET", "/a", [("x-a", "1"), ("x-b", "1")]), "two"),
])
def test_the_most_specific_match_wins_in_the_gateway_apis_order(rules, request_, winner):
    method, path, headers = request_
    for acl in (False, True):  # ACL mode filters requests; it never changes which rule wins
        objects = cluster(route("r", OLD, rules))
        if acl:
            objects += access_for_everyone()
        assert chosen(objects, method, path, headers, acl=acl) == winner, acl


def access_for_everyone() -> list[dict]:
    """ACL mode: every backend allows the client on every path (a TrafficTarget each)."""
    group = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
             "metadata": {"name": "everything", "namespace": NS}, "spec": {"matches": [{"name": "all", "pathRegex": ".*"}]}}
    return [group] + [
        {"apiVersion": "access.smi-spec.io/v1alpha3", "kind": "TrafficTarget", "metadata": {"name": b, "namespace": NS},
         "spec": {"destination": {"kind": "ServiceAccount", "name": b, "namespace": NS},
                  "sources": [{"kind": "ServiceAccount", "name": "client", "namespace": NS}],
                  "rules": [{"kind": "HTTPRouteGroup", "name": "everything"}]}} for b in BACKENDS]


def test_ties_go_to_the_oldest_route_then_to_the_first_rule():
    same = {"path": prefix("/a")}
    # "alpha" sorts first but is newer: the older "zeta" wins
    assert chosen(cluster(route("alpha", NEW, [to("one", **same)]), route("zeta", OLD, [to("two", **same)])),
                  "GET", "/a") == "two"
    # within one route, rule 2 beats rule 10 (list order, not the names' text order)
    rules = [to("three", path=prefix("/other"))] * 2 + [to("one", **same)] + [to("three", path=prefix("/x"))] * 7 \
        + [to("two", **same)]
    assert chosen(cluster(route("r", OLD, rules)), "GET", "/a") == "one"


def test_grpc_service_and_method_beat_a_service_with_headers():
    rules = [{"matches": [{"method": {"service": "pkg.Svc"}, "headers": [{"name": "x-a", "value": "1"},
                                                                         {"name": "x-b", "value": "1"}]}],
              "backendRefs": [{"name": "one", "port": 80}]},
             {"matches": [{"method": {"service": "pkg.Svc", "method": "Get"}}],
              "backendRefs": [{"name": "two", "port": 80}]}]
    objects = cluster(route("g", OLD, rules, kind="GRPCRoute"))
    assert chosen(objects, "POST", "/pkg.Svc/Get", [("x-a", "1"), ("x-b", "1")]) == "two"


def test_section_name_attaches_the_route_to_that_port_only():
    ports = (("http", 80), ("admin", 81))
    parent = {"group": "", "kind": "Service", "name": "web", "sectionName": "admin"}
    objects = cluster(route("r", OLD, [to("two")], parent=parent), ports=ports)
    assert chosen(objects, "GET", "/", port=81) == "two"
    assert chosen(objects, "GET", "/", port=80) == "web"  # port 80 has no route: the Service itself
    bad = cluster(route("r", OLD, [to("two")], parent={**parent, "sectionName": "nope"}), ports=ports)
    settings = Settings()
    result = build(ClusterState.from_objects(bad, settings.mesh_namespace), settings, version=1)
    assert any(e.field == "spec.parentRefs[0].sectionName" and "no port named 'nope'" in e.message
               for e in result.errors)


def test_a_rule_whose_filter_cannot_be_applied_answers_500_and_never_falls_through():
    redirect = {"type": "RequestRedirect", "requestRedirect": {"path": {"type": "ReplaceFullPath",
                                                                         "replaceFullPath": "/new"}}}
    rules = [{**to("one", path=prefix("/old")), "filters": [redirect]}, to("two")]
    settings = Settings()
    config = build(ClusterState.from_objects(cluster(route("r", OLD, rules)), settings.mesh_namespace), settings,
                   version=1).config
    table = compile_http(config).entry_points["http-5000"]
    found = table.lookup("web.a.lightmesh", "GET", b"/old/page", [])
    router = next(r for r in config.http.routers if r.name == found.name)
    deny = [m for m in config.http.middlewares if m.name in router.middlewares and m.type == "deny"]
    assert deny and deny[0].status_code == 500
    assert chosen(cluster(route("r", OLD, rules)), "GET", "/elsewhere") == "two"
