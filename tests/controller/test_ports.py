"""Mesh port allocation: unique, in range, stable across rebuilds and controller restarts."""

from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st

from lightmesh.controller.model import ClusterState, Settings
from lightmesh.controller.ports import PortTable, allocate_ports
from lightmesh.controller.shadow import desired_shadow_services
from lightmesh.controller.topology import build_topology

SETTINGS = Settings(tcp_port_limit=6, udp_port_limit=3, http_port_limit=2)


def service(ns, name, ports, mode="tcp"):
    protocol = "UDP" if mode == "udp" else "TCP"
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns,
                                            "annotations": {"lightmesh.io/traffic-type": mode}},
            "spec": {"ports": [{"port": p, "protocol": protocol} for p in ports]}}


def allocate(services, shadows=(), previous=None, settings=SETTINGS):
    topology = build_topology(ClusterState(services=services), settings)
    return topology, allocate_ports(topology, shadows, settings, previous)


SERVICES = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.sampled_from(["x", "y", "z", "w"]),
              st.lists(st.sampled_from([80, 81, 82]), min_size=1, max_size=2, unique=True),
              st.sampled_from(["tcp", "udp", "http"])),
    max_size=8, unique_by=lambda s: (s[0], s[1]))


def to_objects(specs):
    return [service(ns, name, ports, mode) for ns, name, ports, mode in specs]


def check_table(table: PortTable, settings: Settings):
    for kind in ("tcp", "udp"):
        values = list(getattr(table, kind).values())
        base, limit = getattr(settings, f"{kind}_port_base"), getattr(settings, f"{kind}_port_limit")
        assert len(values) == len(set(values)), "a mesh port serves two service ports"
        assert all(base <= v < base + limit for v in values)


@hsettings(max_examples=200, deadline=None)
@given(SERVICES, SERVICES)
def test_unique_in_range_and_stable_for_services_that_stay(before, after):
    _, first = allocate(to_objects(before))
    check_table(first, SETTINGS)
    topology, second = allocate(to_objects(after), previous=first)
    check_table(second, SETTINGS)
    for kind in ("tcp", "udp"):
        old, new = getattr(first, kind), getattr(second, kind)
        for key, port in new.items():
            if key in old:
                assert old[key] == port, f"{key} moved from {old[key]} to {port}"
        # freed when gone: nothing outside the current topology keeps a port
        assert all(k[0] in topology.services for k in new)


@hsettings(max_examples=100, deadline=None)
@given(SERVICES)
def test_a_restarted_controller_recovers_every_port_from_the_shadow_services(specs):
    topology, first = allocate(to_objects(specs))
    shadows = desired_shadow_services(topology, first, SETTINGS)
    for s in shadows:
        s["metadata"]["namespace"] = SETTINGS.mesh_namespace
    _, recovered = allocate(list(reversed(to_objects(specs))), shadows=shadows)
    assert (recovered.tcp, recovered.udp, recovered.http) == (first.tcp, first.udp, first.http)


def test_new_service_sorted_first_does_not_take_an_existing_port():
    _, first = allocate([service("zz", "late", [7000])])
    assert first.tcp == {("zz/late", 7000): 10000}
    _, second = allocate([service("aa", "new", [7000]), service("zz", "late", [7000])], previous=first)
    assert second.tcp == {("aa/new", 7000): 10001, ("zz/late", 7000): 10000}


def test_exhaustion_is_reported_for_that_service_only():
    settings = Settings(tcp_port_limit=1)
    _, table = allocate([service("a", "one", [1]), service("a", "two", [1])], settings=settings)
    assert table.tcp == {("a/one", 1): 10000}
    [err] = table.errors
    assert (err.namespace, err.name) == ("a", "two") and "tcp port limit" in err.message


def test_http_ports_are_shared_by_index_and_limited_per_service():
    _, table = allocate([service("a", "web", [80, 81, 82], "http"), service("b", "api", [8080], "http")])
    assert table.http == {("a/web", 80): 5000, ("a/web", 81): 5001, ("b/api", 8080): 5000}
    [err] = table.errors
    assert err.name == "web" and "http port limit" in err.message
    assert table.mesh_port("a/web", 81, "http") == 5001 and table.mesh_port("a/web", 82, "http") is None


def test_changing_traffic_type_moves_the_port_to_the_new_range():
    _, first = allocate([service("a", "s", [53], "tcp")])
    shadows = [{"metadata": {"labels": {"lightmesh.io/service-name": "s", "lightmesh.io/service-namespace": "a"}},
                "spec": {"ports": [{"port": 53, "protocol": "TCP", "targetPort": 10000}]}}]
    _, second = allocate([service("a", "s", [53], "udp")], shadows=shadows, previous=first)
    assert second.tcp == {} and second.udp == {("a/s", 53): 15000}


def test_replicas_that_saw_events_in_another_order_adopt_the_leaders_ports():
    # Every replica serves config; the shadow Services the leader wrote are what kube-proxy routes
    # by, so a follower's own earlier numbering must give way to them, or its proxies would send
    # one Service's traffic to another.
    a, b = service("app", "a", [5432]), service("app", "b", [5432])
    _, leader_first = allocate([b])
    topology, leader = allocate([a, b], previous=leader_first)
    assert (leader.tcp[("app/a", 5432)], leader.tcp[("app/b", 5432)]) == (10001, 10000)
    shadows = desired_shadow_services(topology, leader, SETTINGS)

    _, follower_before = allocate([a, b])  # saw both at once, before the leader's write landed
    assert (follower_before.tcp[("app/a", 5432)], follower_before.tcp[("app/b", 5432)]) == (10000, 10001)
    _, follower = allocate([a, b], shadows=shadows, previous=follower_before)
    assert follower.tcp == leader.tcp
    # and the leader itself stays where it was
    assert allocate([a, b], shadows=shadows, previous=leader)[1].tcp == leader.tcp


def _shadow(ns, name, ports):
    return {"metadata": {"labels": {"lightmesh.io/service-name": name, "lightmesh.io/service-namespace": ns}},
            "spec": {"ports": [{"port": p, "protocol": "TCP", "targetPort": t} for p, t in ports]}}


def test_a_port_a_shadow_still_targets_is_not_given_to_another_service():
    # a (tcp, 10000) turns HTTP and b (tcp) appears in one round: until a's shadow is patched,
    # kube-proxy sends a's clients to 10000; had b got it, they would reach b's pods.
    _, first = allocate([service("shop", "a", [5432])])
    assert first.tcp == {("shop/a", 5432): 10000}
    a_shadow = _shadow("shop", "a", [(5432, 10000)])
    now = [service("shop", "a", [5432], "http"), service("shop", "b", [6379])]
    _, second = allocate(now, shadows=[a_shadow], previous=first)
    assert second.tcp == {("shop/b", 6379): 10001}
    # a's shadow patched to its HTTP port: 10000 is free again (b keeps its port: stable)
    _, third = allocate(now + [service("shop", "c", [1])], shadows=[_shadow("shop", "a", [(5432, 5000)]),
                                                                       _shadow("shop", "b", [(6379, 10001)])],
                        previous=second)
    assert third.tcp == {("shop/b", 6379): 10001, ("shop/c", 1): 10000}
    # an orphan (its Service gone, its delete failing) keeps its ports reserved while it exists
    orphan = _shadow("gone", "old", [(80, 10000)])
    _, fourth = allocate([service("shop", "d", [1])], shadows=[orphan])
    assert fourth.tcp == {("shop/d", 1): 10001}


def test_a_port_dropped_and_another_added_in_one_edit_do_not_share_a_mesh_port():
    # Until db's shadow is patched, kube-proxy still sends port 5432's clients to 10000: had the new
    # port 6379 taken it, they would reach the redis pods. The new port takes a free one instead.
    _, first = allocate([service("shop", "db", [5432])])
    _, second = allocate([service("shop", "db", [6379])], shadows=[_shadow("shop", "db", [(5432, 10000)])],
                         previous=first)
    assert second.tcp == {("shop/db", 6379): 10001} and not second.errors
    # once the shadow is patched, 10000 is free again and 6379 keeps 10001 (stable)
    _, third = allocate([service("shop", "db", [6379]), service("shop", "other", [1])],
                        shadows=[_shadow("shop", "db", [(6379, 10001)])], previous=second)
    assert third.tcp == {("shop/db", 6379): 10001, ("shop/other", 1): 10000}


def test_a_dropped_ports_mesh_port_is_held_while_its_shadow_write_is_not_seen_yet():
    # Round 1 gave 5432 → 10000 and the leader wrote the shadow; an edit replacing 5432 with 6379
    # came before the shadow's watch event: 6379 took 10000, and the nodes that already had the
    # shadow sent 5432's clients to the redis pods.
    _, first = allocate([service("shop", "db", [5432])])
    _, second = allocate([service("shop", "db", [6379])], shadows=[], previous=first)
    assert second.tcp == {("shop/db", 6379): 10001} and not second.errors


def test_a_service_whose_port_changed_keeps_its_mesh_port_in_a_full_range():
    # No other port free: its own shadow alone targets the old port, so the new port number takes it
    # (the lesser harm). Reserved against it too, a full range would leave it with no port: the
    # shadow deleted and created again (a new ClusterIP, its mesh name gone meanwhile).
    full = Settings(tcp_port_limit=1)
    _, first = allocate([service("shop", "db", [5432])], settings=full)
    assert first.tcp == {("shop/db", 5432): 10000}
    _, second = allocate([service("shop", "db", [5433])], shadows=[_shadow("shop", "db", [(5432, 10000)])],
                         previous=first, settings=full)
    assert second.tcp == {("shop/db", 5433): 10000} and not second.errors
    # a port another Service's shadow targets too is still nobody's to take
    shared = [_shadow("shop", "db", [(5432, 10000)]), _shadow("gone", "old", [(80, 10000)])]
    _, third = allocate([service("shop", "db", [5433])], shadows=shared, settings=full)
    assert third.tcp == {} and third.errors
