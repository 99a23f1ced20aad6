"""High availability: controller replicas as real processes against the Kubernetes API fake.

* a follower serves the config the leader's settings make (a rollout that changes the mesh ports
  must not move proxies off the ports the leader's shadow Services send to);
* two processes of one pod name are two Lease candidates, never two leaders;
* ``--shutdown-delay``: Lease released and unready at once, DNS and the API still answer, exit after;
* the Kubernetes client's per-request log lines are off unless ``--log-level debug``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from dnslib import RCODE, DNSRecord

from lightmesh import wire
from lightmesh.controller.shadow import shadow_name
from proctools import free_dns_port
from tests.conftest import lightmesh_cmd, lightmesh_env

from .kube import cluster

MESH = "lightmesh"
NS = "shop"
SETTINGS_ANNOTATION = "lightmesh.io/settings"  # the leader's record on its Lease (leader.py)


def service(name, port, traffic):
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": NS, "annotations": {"mesh.traefik.io/traffic-type": traffic}},
            "spec": {"selector": {"app": name}, "clusterIP": "10.96.0.10",
                     "ports": [{"name": "main", "port": port, "protocol": "TCP", "targetPort": port}]}}


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def until(check, what, timeout=20.0, log: Path | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{log.read_text()}" if log else ""))


def write_kubeconfig(path: Path, kube) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": str(kube.url)}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}]}))
    return path


class Replica:
    """``lightmesh controller --leader-election`` as a subprocess."""

    def __init__(self, tmp_path: Path, kubeconfig: Path, name: str, *flags: str, pod: str | None = None) -> None:
        self.name, self.flags, self.pod = name, flags, pod or name
        self.kubeconfig = kubeconfig
        self.log = tmp_path / f"{name}.log"
        self.api_port, self.dns_port = free_dns_port(), free_dns_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Replica:
        with open(self.log, "wb") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *lightmesh_cmd("controller", "--kubeconfig", str(self.kubeconfig), "--namespace", MESH,
                               "--leader-election", "--api-address", "127.0.0.1", "--api-port", str(self.api_port),
                               "--dns-address", "127.0.0.1", "--dns-port", str(self.dns_port),
                               "--log-format", "json", *self.flags),
                stdout=out, stderr=asyncio.subprocess.STDOUT, env=lightmesh_env({wire.ENV_POD_NAME: self.pod}))
        return self

    async def status(self, path: str) -> tuple[int | None, str]:
        try:
            async with aiohttp.ClientSession() as http, http.get(self.url + path,
                                                                 timeout=aiohttp.ClientTimeout(total=3)) as resp:
                return resp.status, await resp.text()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None, ""

    async def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.log.read_text()}")
        return (await self.status(wire.READINESS_PATH))[0] == 200

    async def config(self) -> dict:
        code, text = await self.status(wire.CONFIG_PATH + "?wait=0")
        assert code == 200, (code, text)
        return json.loads(text)

    async def is_leader(self) -> bool:
        _, text = await self.status("/metrics")
        return "lightmesh_controller_is_leader 1.0" in text

    async def resolve(self, name: str) -> tuple[int, list[str]]:
        raw = await asyncio.to_thread(DNSRecord.question(name).send, "127.0.0.1", self.dns_port, timeout=2)
        reply = DNSRecord.parse(raw)
        return reply.header.rcode, [str(r.rdata) for r in reply.rr]

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(sig)

    async def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.signal()
        try:
            return await asyncio.wait_for(self.proc.wait(), 20)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return None


@contextlib.asynccontextmanager
async def replicas(tmp_path: Path, kube):
    started: list[Replica] = []
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", kube)

    async def make(name, *flags, pod=None) -> Replica:
        replica = Replica(tmp_path, kubeconfig, name, *flags, pod=pod)
        started.append(replica)
        return await replica.start()

    try:
        yield make
    finally:
        for replica in started:
            await replica.stop()


def lease(kube) -> dict:
    return kube.get_object("coordination.k8s.io/v1", "leases", MESH, wire.LEASE_NAME) or {}


def holder(kube) -> str:
    return (lease(kube).get("spec") or {}).get("holderIdentity") or ""


def recorded(kube) -> dict:
    return json.loads(((lease(kube).get("metadata") or {}).get("annotations") or {}).get(SETTINGS_ANNOTATION, "{}"))


def shadows(kube) -> dict[str, dict]:
    return {s["metadata"]["name"]: s for s in kube.list_objects("v1", "services", MESH)}


def target_ports(kube) -> dict[str, int]:
    return {name: s["spec"]["ports"][0]["targetPort"] for name, s in shadows(kube).items()}


def mesh_ports(config: dict) -> tuple[set[int], set[int]]:
    return ({e["port"] for e in config["http"]["entry_points"]}, {r["port"] for r in config["tcp"]})


def give_cluster_ips(kube) -> None:
    """What the API server does for a new Service (kmock does not)."""
    for i, (name, obj) in enumerate(sorted(shadows(kube).items())):
        if not (obj.get("spec") or {}).get("clusterIP"):
            kube.patch_object("v1", "services", MESH, name, {"spec": {"clusterIP": f"10.96.7.{i + 1}"}})


def test_followers_serve_the_config_of_the_leaders_settings_and_a_new_leader_its_own(tmp_path):
    # A rollout that changes the mesh ports runs old and new replicas side by side. The new follower
    # served its own ports while the old leader's shadow Services still sent traffic to the old ones:
    # proxies polling it moved their listeners, and the shadow ClusterIPs reached nothing.
    web, db = shadow_name(NS, "web"), shadow_name(NS, "db")

    async def scenario():
        async with cluster() as kube, replicas(tmp_path, kube) as make:
            kube.put_object(service("web", 80, "http"))
            kube.put_object(service("db", 5432, "tcp"))
            old = await make("old")
            await until(old.ready, "the old replica ready", log=old.log)
            await until(lambda: holder(kube).startswith("old"), "the old replica leads", log=old.log)
            await until(lambda: target_ports(kube) == {web: 5000, db: 10000}, "the old leader's shadows", log=old.log)
            give_cluster_ips(kube)
            new = await make("new", "--http-port-base", "6000", "--tcp-port-base", "11000",
                             "--domains", "mesh.example")
            await until(new.ready, "the new replica ready", log=new.log)
            assert not await new.is_leader()
            # the follower serves what the leader's settings make: the same ports, hosts and hash
            # (on its next read of the Lease: every 2 s)
            old_config = await old.config()

            async def same_config():
                return (await new.config())["hash"] == old_config["hash"]

            await until(same_config, "the follower serving the leader's config", timeout=15, log=new.log)
            assert mesh_ports(await new.config()) == ({5000}, {10000})
            assert recorded(kube) == {"holder": holder(kube), "settings": {
                "acl": False, "default_mode": "http", "domains": ["lightmesh", "traefik.mesh", "maesh"],
                "listen_mode": "node", "http_port_base": 5000, "http_port_limit": 10, "tcp_port_base": 10000,
                "tcp_port_limit": 25, "udp_port_base": 15000, "udp_port_limit": 25}}
            # its DNS answers for the leader's domains too (the shadows' ClusterIPs)
            assert (await new.resolve("web.shop.lightmesh"))[0] == RCODE.NOERROR
            assert (await new.resolve("web.shop.lightmesh"))[1] == (await old.resolve("web.shop.lightmesh"))[1]
            assert (await new.resolve("web.shop.mesh.example"))[0] != RCODE.NOERROR
            # no flapping: still the leader's a few Lease reads later
            await asyncio.sleep(2.5)
            assert (await new.config())["hash"] == old_config["hash"]

            # the old leader goes (releasing the Lease): the new one takes over with its own settings,
            # records them and moves the shadows to its ports
            assert await old.stop() == 0
            await until(lambda: holder(kube).startswith("new"), "the new replica leads", timeout=10, log=new.log)
            await until(lambda: target_ports(kube) == {web: 6000, db: 11000}, "the new leader's shadows",
                        log=new.log)

            async def own_ports():
                return mesh_ports(await new.config()) == ({6000}, {11000})

            await until(own_ports, "the new leader serving its own ports", log=new.log)
            record = recorded(kube)
            assert record["holder"] == holder(kube)
            assert record["settings"]["http_port_base"] == 6000 and record["settings"]["domains"] == ["mesh.example"]
            give_cluster_ips(kube)

            async def own_domain():
                return (await new.resolve("web.shop.mesh.example"))[0] == RCODE.NOERROR

            await until(own_domain, "DNS for the new leader's domain", log=new.log)

    run(scenario())


def test_a_replica_serving_out_its_shutdown_delay_follows_the_new_leader(tmp_path):
    # On SIGTERM the old leader released the Lease and stopped reading it, but served configs (and
    # held proxies' polls) for its whole delay on its own ports, while the new-settings leader had
    # moved the shadows: the blackhole the settings record exists to prevent.
    web, db = shadow_name(NS, "web"), shadow_name(NS, "db")

    async def scenario():
        async with cluster() as kube, replicas(tmp_path, kube) as make:
            kube.put_object(service("web", 80, "http"))
            kube.put_object(service("db", 5432, "tcp"))
            old = await make("old", "--shutdown-delay", "8")
            await until(old.ready, "the old replica ready", log=old.log)
            await until(lambda: holder(kube).startswith("old"), "the old replica leads", log=old.log)
            await until(lambda: target_ports(kube) == {web: 5000, db: 10000}, "the old leader's shadows", log=old.log)
            give_cluster_ips(kube)
            new = await make("new", "--http-port-base", "6000", "--tcp-port-base", "11000")
            await until(new.ready, "the new replica ready", log=new.log)
            old.signal()  # the old one stops: releases the Lease, serves on for 8 s
            await until(lambda: holder(kube).startswith("new"), "the new replica leads", timeout=10, log=new.log)
            await until(lambda: target_ports(kube) == {web: 6000, db: 11000}, "the new leader's shadows",
                        log=new.log)

            async def follows():
                return mesh_ports(await old.config()) == ({6000}, {11000})

            # within the delay, the stopping replica serves what the shadows now target
            await until(follows, "the stopping replica serving the new leader's ports", timeout=5, log=old.log)
            assert old.proc.returncode is None and not await old.is_leader()
            assert holder(kube).startswith("new")  # and it never took the Lease back
            assert await old.stop() == 0

    run(scenario())


def test_two_processes_of_one_pod_name_are_never_both_leader(tmp_path):
    # The identity was the pod name alone: two processes with the same one (no POD_NAME, one host
    # name) each took the Lease for its own and both wrote.
    async def scenario():
        async with cluster() as kube, replicas(tmp_path, kube) as make:
            one = await make("one", pod="controller-0")
            two = await make("two", pod="controller-0")
            await until(one.ready, "one ready", log=one.log)
            await until(two.ready, "two ready", log=two.log)
            await asyncio.sleep(3)  # past a follower's first Lease read (every 2 s)
            leaders = [await r.is_leader() for r in (one, two)]
            assert leaders.count(True) == 1, leaders
            identity = holder(kube)
            assert identity.startswith("controller-0_") and len(identity) > len("controller-0_")
            # the leader stops (releasing the Lease): the other process of the same pod name takes over
            leader, other = (one, two) if leaders[0] else (two, one)
            assert await leader.stop() == 0
            await until(other.is_leader, "takeover by the other process", timeout=10, log=other.log)
            assert holder(kube).startswith("controller-0_") and holder(kube) != identity

    run(scenario())


def test_shutdown_delay_keeps_dns_and_the_api_answering_unready_and_not_leader(tmp_path):
    async def scenario():
        async with cluster() as kube, replicas(tmp_path, kube) as make:
            kube.put_object(service("web", 80, "http"))
            ctl = await make("ctl", "--shutdown-delay", "1.5", "--log-level", "info")
            await until(ctl.ready, "ready", log=ctl.log)
            await until(lambda: shadow_name(NS, "web") in shadows(kube), "the shadow", log=ctl.log)
            give_cluster_ips(kube)

            async def resolves():
                return (await ctl.resolve("web.shop.lightmesh"))[0] == RCODE.NOERROR

            await until(resolves, "DNS", log=ctl.log)
            assert (await ctl.status("/live"))[0] == 200
            signalled = time.monotonic()
            ctl.signal(signal.SIGTERM)
            # at once: the Lease released (another replica may write), readiness 503
            await until(lambda: holder(kube) == "", "the Lease released", timeout=1.0, log=ctl.log)
            assert (await ctl.status(wire.READINESS_PATH))[0] == 503
            # while DNS, the config and liveness still answer
            assert await resolves()
            assert (await ctl.status("/live"))[0] == 200
            assert (await ctl.status(wire.CONFIG_PATH + "?wait=0"))[0] == 200
            assert not await ctl.is_leader()
            assert time.monotonic() - signalled < 1.4, "the checks above ran past the delay"
            code = await asyncio.wait_for(ctl.proc.wait(), 10)
            took = time.monotonic() - signalled
            assert code == 0 and 1.4 <= took < 5.0, (code, took)
            # the Kubernetes client's per-request lines stay off at --log-level info
            records = [json.loads(line) for line in ctl.log.read_text().splitlines() if line.startswith("{")]
            assert records and not [r for r in records if r["logger"].startswith("httpx")], \
                [r for r in records if r["logger"].startswith("httpx")][:3]
            assert any("--shutdown-delay" in r["message"] for r in records)

    run(scenario())


def test_a_second_signal_cuts_the_shutdown_delay_short(tmp_path):
    async def scenario():
        async with cluster() as kube, replicas(tmp_path, kube) as make:
            ctl = await make("ctl", "--shutdown-delay", "30")
            await until(ctl.ready, "ready", log=ctl.log)
            ctl.signal(signal.SIGTERM)
            await until(lambda: holder(kube) == "", "the Lease released", timeout=2.0, log=ctl.log)
            assert (await ctl.status("/live"))[0] == 200  # still serving: the delay runs
            signalled = time.monotonic()
            ctl.signal(signal.SIGINT)
            code = await asyncio.wait_for(ctl.proc.wait(), 10)
            assert code == 0 and time.monotonic() - signalled < 5.0

    run(scenario())


@pytest.mark.parametrize("value, message", [
    ("61", "argument --shutdown-delay: 61 is not between 0 and 60 seconds"),
    ("-1", "argument --shutdown-delay: -1 is not between 0 and 60 seconds"),
    ("nan", "argument --shutdown-delay: nan is not between 0 and 60 seconds"),
    ("soon", "argument --shutdown-delay: 'soon' is not a number of seconds (0-60)"),
])
def test_the_shutdown_delay_flag_is_checked_and_named(value, message):
    import argparse

    from lightmesh.controller.main import configure

    parser = argparse.ArgumentParser(prog="lightmesh controller", exit_on_error=False)
    configure(parser)
    with pytest.raises(argparse.ArgumentError) as info:
        parser.parse_args(["--manifests", "/tmp", "--shutdown-delay", value])
    assert str(info.value) == message
    assert parser.parse_args(["--shutdown-delay", "2.5"]).shutdown_delay == 2.5
    assert parser.parse_args([]).shutdown_delay == 0.0


def test_the_kubernetes_clients_request_lines_stay_off_at_info(tmp_path):
    # httpx2 (lightkube's client) logged every API request at INFO: watches, Lease renewals, writes.
    async def scenario():
        async with cluster() as kube, replicas(tmp_path, kube) as make:
            kube.put_object(service("web", 80, "http"))
            ctl = await make("ctl", "--log-level", "info")
            await until(ctl.ready, "ready", log=ctl.log)
            await until(lambda: shadow_name(NS, "web") in shadows(kube), "the shadow", log=ctl.log)
            assert await ctl.stop() == 0
            records = [json.loads(line) for line in ctl.log.read_text().splitlines() if line.startswith("{")]
            assert any(r["logger"] == "lightmesh.controller" for r in records)  # info lines are there
            noisy = [r for r in records if r["logger"].startswith(("httpx", "httpcore"))]
            assert not noisy, noisy[:3]

    run(scenario())


@pytest.mark.parametrize("level, shown", [("debug", True), ("info", False), ("warning", False)])
def test_the_kubernetes_clients_request_lines_are_shown_at_debug_only(level, shown):
    import logging

    from lightmesh.controller.main import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level, {n: logging.getLogger(n).level for n in ("httpx2", "httpcore2")}
    try:
        setup_logging(level, "text")
        # httpx2 logs every request ("HTTP Request: GET ... 200 OK") at INFO
        assert logging.getLogger("httpx2").isEnabledFor(logging.INFO) is shown
        assert not logging.getLogger("httpcore2.http11").isEnabledFor(logging.DEBUG)  # byte-level traces: never
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, value in saved[2].items():
            logging.getLogger(name).setLevel(value)


def test_a_follower_builds_with_a_usable_leader_record_only_and_a_leader_with_its_own(tmp_path, caplog):
    """The reconcile loop in process, with an elector stand-in whose record the test sets."""
    import types

    from lightmesh.controller.dns import DNSTable, MeshDNS
    from lightmesh.controller.model import Settings
    from lightmesh.controller.reconcile import Controller
    from lightmesh.controller.sources import FileSource, ObjectFilter

    (tmp_path / "a.yaml").write_text(yaml.safe_dump_all([service("web", 80, "http"), service("db", 5432, "tcp")]))
    leader_settings = Settings(mesh_namespace=MESH)
    own = Settings(mesh_namespace=MESH, http_port_base=6000, tcp_port_base=11000, domains=("mesh.example",))

    async def forever():
        await asyncio.Event().wait()

    def start(settings, elector=None):
        source = FileSource(tmp_path, ObjectFilter.create(MESH), poll_seconds=0.02)
        controller = Controller(settings, source, dns=MeshDNS(DNSTable(settings.domains)), elector=elector)
        return controller, asyncio.create_task(controller.run())

    def ports(controller):
        return {e.port for e in controller.config.http.entry_points}, {r.port for r in controller.config.tcp}

    async def scenario():
        record = {"acl": False, "default_mode": "http", "domains": ["lightmesh", "traefik.mesh", "maesh"],
                  "listen_mode": "node", "http_port_base": 5000, "http_port_limit": 10, "tcp_port_base": 10000,
                  "tcp_port_limit": 25, "udp_port_base": 15000, "udp_port_limit": 25}  # leader_settings'
        elector = types.SimpleNamespace(is_leader=False, leader_settings=record, run=forever)
        follower, task = start(own, elector)
        reference, ref_task = start(leader_settings)  # the leader's build, for its hash
        try:
            await until(lambda: follower.ready() and reference.ready(), "both ready")
            assert ports(follower) == ({5000}, {10000})
            assert follower.config.hash == reference.config.hash  # what proxies compare
            assert follower.dns.table.domains == tuple(sorted(leader_settings.domains, key=len, reverse=True))
            # a record this replica cannot use: its own settings, said once
            caplog.clear()
            elector.leader_settings = {"http_port_base": "5000"}
            follower.leader_settings_changed(elector.leader_settings)
            await until(lambda: ports(follower) == ({6000}, {11000}), "own settings")
            for _ in range(3):
                rounds = follower.rounds
                follower.notify()
                await until(lambda: follower.rounds > rounds, "another round")
            said = [r.getMessage() for r in caplog.records if "recorded settings" in r.getMessage()]
            assert len(said) == 1 and "serving this replica's own settings" in said[0], said
            # a usable one again
            assert leader_settings.shaping_record() == record
            elector.leader_settings = {**record, "from_the_future": 1}
            follower.leader_settings_changed(elector.leader_settings)
            await until(lambda: follower.config.hash == reference.config.hash, "the leader's again")
            # this replica becomes the leader: its own settings, whatever the Lease said
            elector.is_leader = True
            follower.leadership_changed(True)
            await until(lambda: ports(follower) == ({6000}, {11000}), "own settings as leader")
            assert follower.dns.table.domains == ("mesh.example",)
        finally:
            for t in (task, ref_task):
                t.cancel()
            await asyncio.gather(task, ref_task, return_exceptions=True)

    run(scenario())
