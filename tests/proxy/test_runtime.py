"""Runtime (one worker): listeners follow the config, invalid configs change nothing, busy ports are
reported and retried, the HTTP plane swaps under load without a single failed request, drain."""

from __future__ import annotations

import asyncio
import socket

import pytest
import uvloop

from lightmesh.config import ConfigError, EntryPoint, HTTPConfig, L4Server, TCPRoute, UDPRoute, make_config
from lightmesh.proxy.metrics import ProxyMetrics
from conftest import without_ipv6
from lightmesh.proxy.runtime import Runtime, RuntimeOptions
from proctools import listen_backlog
from proxy.backends import Backend, RawClient, request


def run(coro, timeout: float = 60.0):
    return uvloop.run(asyncio.wait_for(coro, timeout))


def free_port(kind=socket.SOCK_STREAM, host="127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def build(version: int, *, http_port: int | None = None, http_servers=(), tcp: dict | None = None,
          udp: dict | None = None, ep_name: str = "web", host: str = "127.0.0.1"):
    """``tcp``/``udp``: {listen port: [server ports]}."""
    http = HTTPConfig()
    if http_port:
        http = HTTPConfig.model_validate({
            "entry_points": [{"name": ep_name, "address": host, "port": http_port}],
            "services": [{"name": "svc", "servers": [{"url": u} for u in http_servers]}],
            "routers": [{"name": "r", "entry_points": [ep_name], "service": "svc"}],
        })
    tcp_routes = [TCPRoute(name=f"t{p}", address=host, port=p,
                           servers=[L4Server(address="127.0.0.1", port=s) for s in servers])
                  for p, servers in (tcp or {}).items()]
    udp_routes = [UDPRoute(name=f"u{p}", address=host, port=p,
                           servers=[L4Server(address="127.0.0.1", port=s) for s in servers])
                  for p, servers in (udp or {}).items()]
    return make_config(version, http, tcp_routes, udp_routes)


async def tcp_echo():
    async def handle(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()
    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def tcp_ping(port: int, host: str = "127.0.0.1") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.readexactly(4), 5)
    finally:
        writer.close()


def refuses(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def test_listeners_follow_the_config():
    async def main():
        echo, eport = await tcp_echo()
        rt = Runtime(ProxyMetrics())
        hp, tp1, tp2, up = free_port(), free_port(), free_port(), free_port(socket.SOCK_DGRAM)
        async with Backend("A") as a:
            try:
                r1 = await rt.apply(build(1, http_port=hp, http_servers=[a.url], tcp={tp1: [eport]}, udp={up: [9]}))
                assert r1.version == 1 and not r1.listener_errors
                assert set(rt.listeners) == {("http", "127.0.0.1", hp), ("tcp", "127.0.0.1", tp1),
                                             ("udp", "127.0.0.1", up)}
                assert (await request(hp)).status == 200
                assert await tcp_ping(tp1) == b"ping"
                http_listener = rt.listeners[("http", "127.0.0.1", hp)]
                # tcp route moves from tp1 to tp2; udp route removed; http entry point renamed
                r2 = await rt.apply(build(2, http_port=hp, http_servers=[a.url], tcp={tp2: [eport]}, ep_name="web2"))
                assert set(rt.listeners) == {("http", "127.0.0.1", hp), ("tcp", "127.0.0.1", tp2)}
                assert rt.listeners[("http", "127.0.0.1", hp)] is http_listener  # socket kept
                assert http_listener.name == "web2"
                assert refuses(tp1)
                assert await tcp_ping(tp2) == b"ping"
                assert (await request(hp)).status == 200  # routed through the renamed entry point
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                    s.bind(("127.0.0.1", up))  # the udp port is free again
                assert rt.metrics.config_version == 2 and rt.metrics.reloads["applied"] == 2
                assert rt.status()["applied_version"] == 2
            finally:
                await rt.close()
                echo.close()

    run(main())


def test_removed_tcp_route_lets_established_connections_finish():
    async def main():
        echo, eport = await tcp_echo()
        tp = free_port()
        rt = Runtime(ProxyMetrics())
        try:
            await rt.apply(build(1, tcp={tp: [eport]}))
            reader, writer = await asyncio.open_connection("127.0.0.1", tp)
            writer.write(b"one")
            assert await reader.readexactly(3) == b"one"
            await rt.apply(build(2))
            assert refuses(tp)
            writer.write(b"two")  # the established connection still works
            assert await asyncio.wait_for(reader.readexactly(3), 5) == b"two"
            await rt.drain(0.2)  # and the drain ends it
            try:
                assert await asyncio.wait_for(reader.read(), 2) == b""
            except ConnectionResetError:
                pass
            writer.close()
        finally:
            await rt.close()
            echo.close()

    run(main())


def test_invalid_config_changes_nothing():
    async def main():
        echo, eport = await tcp_echo()
        rt = Runtime(ProxyMetrics())
        tp = free_port()
        try:
            await rt.apply(build(1, tcp={tp: [eport]}))
            bad = build(2, tcp={free_port(): [eport]}).model_dump(mode="json")
            bad["tcp"][0]["port"] = 0
            with pytest.raises(ConfigError, match=r"tcp\['t\d+'\]\.port"):
                await rt.apply(bad)
            with pytest.raises(ConfigError, match="not valid JSON"):
                await rt.apply("{")
            assert rt.config.version == 1 and rt.metrics.reloads == {"applied": 1, "failed": 2}
            assert await tcp_ping(tp) == b"ping"
        finally:
            await rt.close()
            echo.close()

    run(main())


def test_busy_port_is_reported_others_serve_and_it_is_retried():
    async def main():
        echo, eport = await tcp_echo()
        busy = socket.socket()  # no SO_REUSEPORT: the proxy's bind must fail with EADDRINUSE
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        bport = busy.getsockname()[1]
        ok = free_port()
        rt = Runtime(ProxyMetrics())
        try:
            result = await rt.apply(build(1, tcp={bport: [eport], ok: [eport]}))
            assert list(result.listener_errors) == [f"tcp 127.0.0.1:{bport}"]
            assert result.listener_errors[f"tcp 127.0.0.1:{bport}"] == (
                f"cannot listen on tcp 127.0.0.1:{bport} (tcp route 't{bport}'): Address already in use")
            # an HTTP entry point on it is named the same way
            http_result = await rt.apply(build(2, http_port=bport, http_servers=["http://127.0.0.1:9"], ep_name="web"))
            assert http_result.listener_errors[f"http 127.0.0.1:{bport}"] == (
                f"cannot listen on http 127.0.0.1:{bport} (entry point 'web'): Address already in use")
            result = await rt.apply(build(3, tcp={bport: [eport], ok: [eport]}))
            assert await tcp_ping(ok) == b"ping"
            assert not await rt.retry_failed()
            busy.close()
            assert await rt.retry_failed()
            assert not rt.listener_errors
            assert await tcp_ping(bport) == b"ping"
        finally:
            busy.close()
            await rt.close()
            echo.close()

    run(main())


def test_two_workers_share_a_port_with_reuseport():
    async def main():
        echo, eport = await tcp_echo()
        tp = free_port()
        a, b = Runtime(ProxyMetrics()), Runtime(ProxyMetrics())
        try:
            for rt in (a, b):
                assert not (await rt.apply(build(1, tcp={tp: [eport]}))).listener_errors
            for _ in range(20):
                assert await tcp_ping(tp) == b"ping"
            await a.close()
            assert await tcp_ping(tp) == b"ping"  # the other keeps serving
        finally:
            await a.close()
            await b.close()
            echo.close()

    run(main())


def test_shadow_cluster_ip_address():
    async def main():
        echo, eport = await tcp_echo()
        tp = free_port(host="127.1.0.7")
        rt = Runtime(ProxyMetrics())
        try:
            await rt.apply(build(1, tcp={tp: [eport]}, host="127.1.0.7"))
            assert await tcp_ping(tp, "127.1.0.7") == b"ping"
            assert refuses(tp, "127.0.0.1")
        finally:
            await rt.close()
            echo.close()

    run(main())


def test_the_any_address_is_dual_stack_and_falls_back_without_ipv6(monkeypatch):
    # what the controller asks for in a cluster: "::" serves IPv4 and IPv6 clients, and a node
    # without IPv6 gets 0.0.0.0 instead of a listener error
    async def main():
        echo, eport = await tcp_echo()
        async with Backend() as b:
            hp, tp = free_port(), free_port()
            rt = Runtime(ProxyMetrics())
            try:
                await rt.apply(build(1, http_port=hp, http_servers=[b.url], tcp={tp: [eport]}, host="::"))
                assert (await request(hp)).status == 200
                assert b.requests[-1].header("X-Forwarded-For") == "127.0.0.1"  # not ::ffff:127.0.0.1
                for host in ("127.0.0.1", "::1"):
                    assert await tcp_ping(tp, host) == b"ping"
            finally:
                await rt.close()

            without_ipv6(monkeypatch)
            rt = Runtime(ProxyMetrics())
            try:
                result = await rt.apply(build(1, http_port=hp, http_servers=[b.url], tcp={tp: [eport]}, host="::"))
                assert result.listener_errors == {}
                assert (await request(hp)).status == 200 and await tcp_ping(tp) == b"ping"
            finally:
                await rt.close()
                monkeypatch.undo()
        echo.close()

    run(main())


def test_swap_under_steady_http_load_fails_no_request():
    async def main():
        hp = free_port()
        rt = Runtime(ProxyMetrics())
        async with Backend("A") as a, Backend("B") as b:
            configs = [build(v, http_port=hp, http_servers=[(a, b)[v % 2].url]) for v in range(1, 31)]
            await rt.apply(configs[0])
            stop = asyncio.Event()
            results: list[int] = []
            seen: set[str] = set()

            async def client(n: int) -> None:
                conn = await RawClient.connect(hp)
                try:
                    while not stop.is_set():
                        await conn.send(b"GET /req HTTP/1.1\r\nHost: svc\r\n\r\n")
                        resp = await conn.response(5)
                        results.append(resp.status)
                        seen.add(resp.header("X-Backend") or "")
                        if len(results) % 7 == n:  # some clients also reconnect (fresh connections)
                            await conn.close()
                            conn = await RawClient.connect(hp)
                finally:
                    await conn.close()

            clients = [asyncio.create_task(client(n)) for n in range(6)]
            try:
                for config in configs[1:]:
                    await asyncio.sleep(0.05)
                    await rt.apply(config)
                await asyncio.sleep(0.1)
            finally:
                stop.set()
                outcomes = await asyncio.gather(*clients, return_exceptions=True)
                await rt.close()
            assert [o for o in outcomes if o is not None] == []  # no connection error in any client
            assert len(results) > 100
            assert set(results) == {200}, {s: results.count(s) for s in set(results)}
            assert seen == {"A", "B"}

    run(main())


def test_endpoint_changes_keep_the_pooled_connections_of_servers_still_listed():
    # Endpoints come and go all day in a cluster; every change used to close the whole pool of the
    # service (unchanged servers included), so each one cost a reconnect to every pod.
    async def main():
        hp = free_port()
        rt = Runtime(ProxyMetrics())
        async with Backend("A") as a, Backend("B") as b, Backend("C") as c:
            await rt.apply(build(1, http_port=hp, http_servers=[a.url, b.url]))
            conn = await RawClient.connect(hp)
            try:
                for v in range(2, 22):  # C comes and goes; A and B stay
                    await rt.apply(build(v, http_port=hp, http_servers=[a.url, b.url] + [c.url] * (v % 2)))
                    for _ in range(4):  # sequential requests: one upstream connection per server suffices
                        await conn.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                        assert (await conn.response(5)).status == 200
                assert a.requests and b.requests and a.connections == 1 and b.connections == 1, \
                    (a.connections, b.connections)
                # C's connections were closed each time it left, and it was reconnected when it came back
                assert c.connections >= 2
            finally:
                await conn.close()
                await rt.close()

    run(main())


def test_drain_finishes_in_flight_and_closes_idle():
    async def main():
        hp = free_port()
        rt = Runtime(ProxyMetrics())
        async with Backend("A") as a:
            await rt.apply(build(1, http_port=hp, http_servers=[a.url]))
            idle = await RawClient.connect(hp)
            await idle.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
            assert (await idle.response()).status == 200
            busy = await RawClient.connect(hp)
            await busy.send(b"GET /slow?ms=600 HTTP/1.1\r\nHost: svc\r\n\r\n")
            await asyncio.sleep(0.1)
            drain = asyncio.create_task(rt.drain(5))
            await asyncio.sleep(0.1)
            assert refuses(hp)  # stopped accepting
            assert await idle.closed(2)  # idle keep-alive connection closed
            resp = await busy.response(5)  # the in-flight request completes
            assert resp.status == 200 and resp.header("X-Backend") == "A"
            await asyncio.wait_for(drain, 5)
            await idle.close()
            await busy.close()

    run(main())


def test_drain_cuts_what_outlives_the_grace_period():
    async def main():
        echo, eport = await tcp_echo()
        tp = free_port()
        rt = Runtime(ProxyMetrics())
        await rt.apply(build(1, tcp={tp: [eport]}))
        reader, writer = await asyncio.open_connection("127.0.0.1", tp)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        loop = asyncio.get_running_loop()
        start = loop.time()
        await rt.drain(0.3)
        assert 0.25 <= loop.time() - start < 3
        try:
            assert await asyncio.wait_for(reader.read(), 2) == b""
        except ConnectionResetError:
            pass
        writer.close()
        echo.close()
        with pytest.raises(ConfigError, match="draining"):
            await rt.apply(build(2))

    run(main())


def test_series_of_services_and_routes_no_longer_configured_are_dropped():
    # One series per name ever configured grew without bound where Services come and go (a soak
    # run: +3.3 series per config swap); Traefik drops them on a reload too.
    from lightmesh.proxy import metrics as metrics_mod

    async def main():
        rt = Runtime(ProxyMetrics())
        hp, tp = free_port(), free_port()
        async with Backend("A") as a:
            try:
                await rt.apply(build(1, http_port=hp, http_servers=[a.url], tcp={tp: [9]}))
                assert (await request(hp)).status == 200
                m = rt.metrics
                m.request("unrouted", 404, "GET", 0.001)
                m.l4_connection(f"t{tp}", "tcp")
                m.rate_limit("svc")
                assert ("svc", "200", "GET") in m.requests and "svc" in m.durations
                await rt.apply(build(2, tcp={tp: [9]}))  # the HTTP service is gone, the TCP route stays
                assert set(m.requests) == {("unrouted", "404", "GET")}
                assert set(m.durations) == {"unrouted"} and m.rate_limited == {}
                assert set(m.l4_connections) == {(f"t{tp}", "tcp")}
                # a request in flight at the swap ends now, counted under its old service: the
                # worker's periodic pass forgets that series again (it stayed for good)
                m.request("svc", 200, "GET", 0.01)
                rt.retain_metrics()
                assert set(m.requests) == {("unrouted", "404", "GET")} and "svc" not in m.durations
                snapshot = metrics_mod.retain_snapshot(
                    {"lightmesh_proxy_requests_total": [["svc", "200", "GET", 5], ["unrouted", "404", "GET", 1]],
                     "lightmesh_proxy_l4_connections_total": [["gone", "tcp", 2], [f"t{tp}", "tcp", 3]],
                     "lightmesh_proxy_config_reloads_total": [["applied", 4]]},
                    metrics_mod.config_names(rt.config))
                assert snapshot == {"lightmesh_proxy_requests_total": [["unrouted", "404", "GET", 1]],
                                    "lightmesh_proxy_l4_connections_total": [[f"t{tp}", "tcp", 3]],
                                    "lightmesh_proxy_config_reloads_total": [["applied", 4]]}
            finally:
                await rt.close()

    run(main())


def test_series_of_a_removed_tcp_route_stay_while_its_connections_do():
    # A connection still open on a removed route keeps counting under the route's name: dropping
    # its series made them come back from zero (a false counter reset) until the next swap.
    async def main():
        echo, eport = await tcp_echo()
        tp, tp2 = free_port(), free_port()
        rt = Runtime(ProxyMetrics())
        try:
            await rt.apply(build(1, tcp={tp: [eport]}))
            reader, writer = await asyncio.open_connection("127.0.0.1", tp)
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            await rt.apply(build(2, tcp={tp2: [eport]}))  # the route is gone, its connection is not
            writer.write(b"pong")
            assert await reader.readexactly(4) == b"pong"
            bytes_up = {k: v for k, v in rt.metrics.l4_bytes.items() if k[0] == f"t{tp}" and k[2] == "upstream"}
            assert list(bytes_up.values()) == [8], rt.metrics.l4_bytes  # counted through, never reset
            writer.close()
            await asyncio.sleep(0.2)
            await rt.apply(build(3, tcp={tp2: [eport]}))
            assert not [k for k in rt.metrics.l4_bytes if k[0] == f"t{tp}"]  # ended: dropped now
        finally:
            await rt.close()
            echo.close()

    run(main())


def test_every_listener_keeps_the_full_accept_queue():
    # uvloop listened again with its default of 100 on HTTP entry points: a burst of 800 connects
    # left hundreds of clients waiting 1 s for a SYN retransmit
    async def main():
        echo, eport = await tcp_echo()
        hp, tp = free_port(), free_port()
        rt = Runtime(ProxyMetrics())
        try:
            await rt.apply(build(1, http_port=hp, http_servers=["http://127.0.0.1:9"], tcp={tp: [eport]}))
            assert (listen_backlog(hp), listen_backlog(tp)) == (1024, 1024)
        finally:
            await rt.close()
            echo.close()

    run(main())


def test_pooled_upstream_connections_idle_too_long_are_closed_without_a_request():
    # they were closed only when a later request to that server popped them: after a burst, the
    # pool's connections to a server no longer asked stayed open against it for good
    async def main():
        import time

        from lightmesh.proxy.http import HTTPOptions

        async with Backend() as b:
            hp = free_port()
            rt = Runtime(ProxyMetrics(), RuntimeOptions(http=HTTPOptions(upstream_idle_timeout=0.2)))
            try:
                await rt.apply(build(1, http_port=hp, http_servers=[b.url]))
                clients = [await RawClient.connect(hp) for _ in range(3)]
                for c in clients:  # three requests at once: three pooled connections
                    await c.send(b"GET /slow?ms=50 HTTP/1.1\r\nHost: svc\r\n\r\n")
                for c in clients:
                    assert (await c.response()).status == 200
                    await c.close()
                (server,) = rt.http.services["svc"].servers
                assert len(server.idle) == 3 and rt.close_stale_upstreams() == 0
                conns = list(server.idle)
                await asyncio.sleep(0.25)
                assert rt.close_stale_upstreams() == 3 and server.idle == []
                await asyncio.sleep(0.05)
                assert all(c.transport is None or c.transport.is_closing() for c in conns)
                assert (await request(hp)).status == 200  # a fresh one serves the next request
            finally:
                await rt.close()

    run(main())


def _two_entry_points(version: int, names: dict[int, str], backends: dict[str, str]):
    """Entry points {port: name}, each routed to its own service ({name: backend url})."""
    http = HTTPConfig.model_validate({
        "entry_points": [{"name": name, "address": "127.0.0.1", "port": port} for port, name in names.items()],
        "services": [{"name": f"svc-{name}", "servers": [{"url": backends[name]}]} for name in names.values()],
        "routers": [{"name": f"r-{name}", "entry_points": [name], "service": f"svc-{name}"}
                    for name in names.values()],
    })
    return make_config(version, http, [], [])


def test_kept_alive_connections_follow_their_entry_point_renamed_and_end_when_it_is_removed():
    # Before: a connection kept its entry point's old name: after a rename every later request on
    # it got 404 (new connections 200); after two names traded places it was routed as the other
    # port; and one of a removed entry point stayed open answering 404 until its idle timeout.
    async def main():
        rt = Runtime(ProxyMetrics())
        p1, p2 = free_port(), free_port()
        async with Backend("A") as a, Backend("B") as b, Backend("C") as c:
            try:
                await rt.apply(_two_entry_points(1, {p1: "a", p2: "b"}, {"a": a.url, "b": b.url}))
                on_p1, on_p2 = await RawClient.connect(p1), await RawClient.connect(p2)
                get = b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n"
                for client, backend in ((on_p1, "A"), (on_p2, "B")):
                    await client.send(get)
                    assert (await client.response()).header("x-backend") == backend
                # the two names trade places: p1 is now "b" (served by C), p2 "a" (served by A)
                await rt.apply(_two_entry_points(2, {p1: "b", p2: "a"}, {"a": a.url, "b": c.url}))
                for client, backend in ((on_p1, "C"), (on_p2, "A")):
                    await client.send(get)
                    response = await client.response()
                    assert (response.status, response.header("x-backend")) == (200, backend)
                # renamed again, to a name never used: still routed
                await rt.apply(_two_entry_points(3, {p1: "web", p2: "a"}, {"a": a.url, "web": c.url}))
                await on_p1.send(get)
                assert (await on_p1.response()).status == 200
                # p2's entry point removed: its idle keep-alive connection is closed, p1's stays
                await rt.apply(_two_entry_points(4, {p1: "web"}, {"web": c.url}))
                assert await on_p2.closed()
                await on_p1.send(get)
                assert (await on_p1.response()).status == 200
            finally:
                await rt.close()

    run(main())


def test_a_connection_accepted_just_before_a_rename_registers_under_the_new_name():
    # The protocol is made at the accept, and registers (connection_made) a loop turn later: a swap
    # in between renamed every registered connection but not this one, which then got 404 on every
    # request. Here the protocol is made by the listener's factory, then the config renames the
    # entry point, then the connection is handed over.
    async def main():
        loop = asyncio.get_running_loop()
        rt = Runtime(ProxyMetrics())
        p1, p2 = free_port(), free_port()
        async with Backend("A") as a, Backend("B") as b:
            try:
                await rt.apply(_two_entry_points(1, {p1: "a", p2: "gone"}, {"a": a.url, "gone": a.url}))
                renamed = rt.listeners[("http", "127.0.0.1", p1)].factory()
                removed = rt.listeners[("http", "127.0.0.1", p2)].factory()
                await rt.apply(_two_entry_points(2, {p1: "b"}, {"b": b.url}))
                clients = []
                for protocol in (renamed, removed):
                    ours, theirs = socket.socketpair()
                    await loop.connect_accepted_socket(lambda p=protocol: p, ours)
                    reader, writer = await asyncio.open_connection(sock=theirs)
                    clients.append(RawClient(reader, writer))
                for client in clients:
                    await client.send(b"GET / HTTP/1.1\r\nHost: svc\r\n\r\n")
                response = await clients[0].response()
                assert (response.status, response.header("x-backend"), response.keep_alive) == (200, "B", True)
                # its entry point was removed meanwhile: answered, then closed
                response = await clients[1].response()
                assert response.header("connection") == "close" and await clients[1].closed()
            finally:
                await rt.close()

    run(main())


def test_pipelined_requests_on_a_removed_entry_point_are_all_answered_before_it_closes():
    # Before: the recycle put Connection: close on every request already received, so the
    # connection closed after the first response and the pipelined ones were never answered.
    async def main():
        rt = Runtime(ProxyMetrics())
        p1, p2 = free_port(), free_port()
        async with Backend("A") as a:
            try:
                await rt.apply(_two_entry_points(1, {p1: "a", p2: "b"}, {"a": a.url, "b": a.url}))
                client = await RawClient.connect(p2)
                await client.send(b"GET /slow?ms=400 HTTP/1.1\r\nHost: svc\r\n\r\n"
                                  b"POST /second HTTP/1.1\r\nHost: svc\r\nContent-Length: 2\r\n\r\nhi")
                await asyncio.sleep(0.15)
                await rt.apply(_two_entry_points(2, {p1: "a"}, {"a": a.url}))
                first, second = await client.response(), await client.response()
                assert (first.status, first.header("connection")) == (200, None)
                assert (second.status, second.header("connection")) == (200, "close")
                assert await client.closed()
                assert [r.path for r in a.requests] == ["/slow?ms=400", "/second"]
            finally:
                await rt.close()

    run(main())
