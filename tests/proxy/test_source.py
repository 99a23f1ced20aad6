"""Config sources: the controller long poll against a stub controller (aiohttp on 127.0.0.1) and the
reloaded file. Invalid configs are refused and the last good one is what the callbacks saw last."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp import web

from lightmesh import wire
from lightmesh.config import L4Server, TCPRoute, make_config
from lightmesh.proxy.source import Backoff, ControllerSource, FileSource, parse_config


def config_v(version: int, port: int = 10001):
    return make_config(version, tcp=[TCPRoute(name=f"r{port}", address="127.0.0.1", port=port,
                                              servers=[L4Server(address="127.0.0.1", port=9)])])


class Recorder:
    def __init__(self) -> None:
        self.configs = []
        self.errors = []
        self.refused = []
        self.event = asyncio.Event()

    def on_config(self, config) -> None:
        self.configs.append(config)
        self.event.set()

    def on_error(self, message: str, refused: bool = False) -> None:
        (self.refused if refused else self.errors).append(message)
        self.event.set()

    async def wait(self, predicate, timeout: float = 10.0) -> None:
        async def loop():
            while not predicate():
                self.event.clear()
                await self.event.wait()
        await asyncio.wait_for(loop(), timeout)


class StubController:
    """Implements the wire protocol's server side: 200 on a hash change, 304 after ``hold`` seconds,
    503 while ``unavailable``; records every request's headers."""

    def __init__(self, hold: float = 0.3) -> None:
        self.body: bytes | None = None
        self.etag: str | None = None
        self.unavailable = False
        self.hold = hold
        self.requests: list[dict] = []
        self.changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def publish(self, config=None, raw: bytes | None = None, etag: str | None = None) -> None:
        self.body = raw if raw is not None else config.to_json().encode()
        self.etag = etag or (config.etag() if config is not None else '"bad"')
        self.changed.set()
        self.changed = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append(dict(request.headers))
        if self.unavailable or self.body is None:
            return web.Response(status=503, text="not synced")
        if request.headers.get("If-None-Match") == self.etag:
            hold = min(self.hold, float(request.query.get("wait", self.hold)))  # ?wait=N, as the controller
            try:
                await asyncio.wait_for(self.changed.wait(), hold)
            except asyncio.TimeoutError:
                return web.Response(status=304)
        return web.Response(body=self.body, headers={"ETag": self.etag}, content_type="application/json")

    async def start(self, port: int = 0) -> StubController:
        app = web.Application()
        app.router.add_get(wire.CONFIG_PATH, self.handle)
        # stop() cuts held polls at once, as a controller that dies does (aiohttp would wait for them)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def fast_backoff() -> Backoff:
    return Backoff(0.05, 0.2)


async def run_source(source):
    task = asyncio.create_task(source.run())
    await asyncio.sleep(0)
    return task


async def stop(task):
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.asyncio
async def test_long_poll_headers_and_updates():
    stub = await StubController().start()
    rec = Recorder()
    applied = {"v": 0}
    source = ControllerSource(stub.url, "node-a-proxy", rec.on_config, rec.on_error, lambda: applied["v"],
                              backoff=fast_backoff())
    task = await run_source(source)
    try:
        stub.publish(config_v(1))
        await rec.wait(lambda: len(rec.configs) == 1)
        applied["v"] = 1
        source.notify_applied()  # the held poll is re-issued with the new applied version
        for _ in range(100):
            if any(r.get(wire.HEADER_APPLIED_VERSION) == "1" for r in stub.requests):
                break
            await asyncio.sleep(0.02)
        stub.publish(config_v(2, port=10002))
        await rec.wait(lambda: len(rec.configs) == 2)
        assert [c.version for c in rec.configs] == [1, 2]
        assert rec.configs[1].tcp[0].port == 10002
        first = stub.requests[0]
        assert first[wire.HEADER_PROXY_NAME] == "node-a-proxy"
        assert first[wire.HEADER_APPLIED_VERSION] == "0"
        assert first[wire.HEADER_CONFIG_SCHEMA] == "1,2"  # what it can read (see wire)
        assert "If-None-Match" not in first
        later = [r for r in stub.requests if r.get("If-None-Match") == config_v(1).etag()]
        assert later and later[-1][wire.HEADER_APPLIED_VERSION] == "1"
        assert source.connected and not rec.errors
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_304_asks_again_at_once_without_redelivering():
    stub = await StubController(hold=0.05).start()
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff(),
                              min_poll_seconds=0.01)
    stub.publish(config_v(1))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        for _ in range(100):
            if len(stub.requests) >= 6:
                break
            await asyncio.sleep(0.05)
        assert len(stub.requests) >= 6  # each 304 (held 50 ms) is followed by a new poll at once
        assert len(rec.configs) == 1 and not rec.errors
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_503_backs_off_and_recovers():
    stub = await StubController().start()
    stub.unavailable = True
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=Backoff(0.05, 0.4, jitter=0))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.errors) >= 4)
        assert "503" in rec.errors[0]
        assert source.backoff.current > 0.05  # grew
        stub.unavailable = False
        stub.publish(config_v(1))
        await rec.wait(lambda: len(rec.configs) == 1)
        assert source.backoff.current == 0.05  # reset by success
    finally:
        await stop(task)
        await stub.stop()


def test_backoff_doubles_up_to_the_maximum():
    b = Backoff(wire.RETRY_MIN_SECONDS, wire.RETRY_MAX_SECONDS, jitter=0)
    delays = [b.next() for _ in range(10)]
    assert delays[0] == wire.RETRY_MIN_SECONDS and delays[1] == 2 * wire.RETRY_MIN_SECONDS
    assert max(delays) == wire.RETRY_MAX_SECONDS and delays == sorted(delays)
    jittery = Backoff(1, 10)  # ±20 %, clipped to [low, high]
    assert 1 <= jittery.next() <= 1.2 and 1.6 <= jittery.next() <= 2.4


@pytest.mark.asyncio
async def test_controller_down_keeps_last_good_and_reconnects():
    stub = await StubController().start()
    port = stub.port
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff())
    stub.publish(config_v(1))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        await stub.stop()  # controller gone: connection refused from now on
        await rec.wait(lambda: len(rec.errors) >= 2)
        assert "unreachable" in rec.errors[-1]
        assert len(rec.configs) == 1 and not source.connected
        stub2 = await StubController().start(port)
        stub = stub2
        stub.publish(config_v(2, port=10002))  # (same content would be the same ETag: a 304)
        await rec.wait(lambda: len(rec.configs) == 2)
        # it came back with the last hash it had: the first request after reconnecting said so
        assert stub.requests[0]["If-None-Match"] == config_v(1).etag()
        assert source.connected
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_invalid_config_is_refused_and_not_refetched_in_a_loop():
    stub = await StubController(hold=0.2).start()
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff())
    stub.publish(config_v(1))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        bad = json.loads(config_v(2).to_json())
        bad["tcp"][0]["servers"][0]["address"] = "not-an-ip"
        bad["hash"] = ""
        stub.publish(raw=json.dumps(bad).encode(), etag='"bad-1"')
        await rec.wait(lambda: len(rec.refused) == 1)
        assert "not-an-ip" in rec.refused[0] and "r10001" in rec.refused[0]
        before = len(stub.requests)
        await asyncio.sleep(1.5)  # (the poll after a refusal starts 1 s after the one that brought it)
        # held polls (If-None-Match: the bad ETag), not a hot loop of refusals
        assert len(rec.refused) == 1 and len(stub.requests) - before <= 4
        assert stub.requests[-1]["If-None-Match"] == '"bad-1"'
        stub.publish(config_v(3, port=10003))
        await rec.wait(lambda: len(rec.configs) == 2)
        assert rec.configs[-1].version == 3
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_a_controller_that_resends_a_refused_config_is_polled_with_backoff():
    # A misbehaving server ignores If-None-Match and sends the same bad body again at once: without
    # a backoff the proxy polled (and logged an error) every few milliseconds.
    class Ignoring(StubController):
        async def handle(self, request):
            self.requests.append(dict(request.headers))
            return web.Response(body=self.body, headers={"ETag": self.etag}, content_type="application/json")

    stub = await Ignoring().start()
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff(),
                              min_poll_seconds=0.01)
    stub.publish(raw=b'{"version": "x"}', etag='"bad"')
    task = await run_source(source)
    try:
        await asyncio.sleep(1.0)
        # backoff 0.05 s doubling to 0.2 s: about 7 polls in a second (a hot loop made hundreds)
        assert 2 <= len(stub.requests) <= 10 and len(rec.refused) == len(stub.requests)
        stub.publish(config_v(1))
        await rec.wait(lambda: len(rec.configs) == 1)
        assert source.refused_backoff.current == source.refused_backoff.low  # reset by a valid config
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_the_controllers_own_etag_is_sent_back_so_polls_are_held():
    # A controller may use any opaque ETag; answering with the config's hash instead would never
    # match, and every poll would come straight back with the same config.
    stub = await StubController(hold=0.3).start()
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff())
    stub.publish(config_v(1), etag='W/"opaque-14"')
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        await asyncio.sleep(0.5)
        assert len(rec.configs) == 1 and len(stub.requests) <= 4  # held polls, not a hot loop
        assert stub.requests[-1]["If-None-Match"] == 'W/"opaque-14"'
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_recovery_is_reported_once_when_the_controller_answers_again():
    stub = await StubController(hold=0.05).start()
    stub.unavailable = True
    rec = Recorder()
    recovered = []
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff(),
                              on_recovered=lambda: recovered.append(len(rec.errors)))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.errors) >= 2)
        assert not recovered
        stub.unavailable = False
        stub.publish(config_v(1))
        await rec.wait(lambda: len(rec.configs) == 1)
        await asyncio.sleep(0.2)  # a few held polls more: still one recovery
        assert len(recovered) == 1 and recovered[0] >= 2
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_a_restarted_controller_with_the_same_config_shows_as_connected_at_once():
    # Its poll after reconnecting carries the hash the controller still has: the controller holds
    # it (30 s in a cluster), and the proxy said "disconnected", with the old error, all that time.
    stub = await StubController(hold=30).start()
    port = stub.port
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff())
    stub.publish(config_v(1))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        await stub.stop()  # the held poll is cut: disconnected
        await rec.wait(lambda: len(rec.errors) >= 1)
        assert not source.connected
        stub = await StubController(hold=30).start(port)
        stub.publish(config_v(1))  # the same config: the same ETag
        for _ in range(50):  # at most 5 s (a held poll would take 30)
            if source.connected:
                break
            await asyncio.sleep(0.1)
        assert source.connected
        assert len(rec.configs) == 1  # nothing new to apply
        assert stub.requests[0].get("If-None-Match") == config_v(1).etag()
        # and, connected again, it goes back to polls the controller holds
        await asyncio.sleep(1.5)  # past the 1 s pacing of an answer that brought nothing new
        assert len(stub.requests) == 2
    finally:
        await stop(task)
        await stub.stop()


def test_controller_url_must_be_http():
    with pytest.raises(ValueError, match="--controller"):
        ControllerSource("ftp://x", "p", print, print)
    # a query or fragment would end up in front of the config path (/?x=1/api/configuration/current)
    for url in ("http://c:9000/?x=1", "http://c:9000#frag"):
        with pytest.raises(ValueError, match="without a query or fragment"):
            ControllerSource(url, "p", print, print)
    for url in ("http://", " http://c:9000"):
        with pytest.raises(ValueError, match="with a host"):
            ControllerSource(url, "p", print, print)
    for url in ("http://c:abc", "http://c:99999"):
        with pytest.raises(ValueError, match="its port must be a number"):
            ControllerSource(url, "p", print, print)
    assert ControllerSource("HTTP://c:9000", "p", print, print).url.endswith(wire.CONFIG_PATH)  # any case


def test_parse_config_stamps_missing_hash_and_names_the_source():
    data = json.loads(config_v(1).to_json())
    data["hash"] = ""
    config = parse_config(json.dumps(data), "file x")
    assert config.hash == config_v(1).hash
    with pytest.raises(ValueError, match="^file x: configuration is not valid JSON"):
        parse_config("{", "file x")


@pytest.mark.asyncio
async def test_file_reload_and_refusal(tmp_path):
    path = tmp_path / "proxy.json"
    rec = Recorder()
    source = FileSource(str(path), rec.on_config, rec.on_error, interval=0.05)
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.errors) == 1)  # missing file: reported once
        assert "No such file" in rec.errors[0]
        path.write_text(config_v(1).to_json())
        await rec.wait(lambda: len(rec.configs) == 1)
        path.write_text("{ half a file")
        await rec.wait(lambda: len(rec.refused) == 1)
        assert "not valid JSON" in rec.refused[0] and str(path) in rec.refused[0]
        os.utime(path)  # touched, still bad: no new report spam beyond one per change
        tmp = tmp_path / "new.json"
        tmp.write_text(config_v(2, port=10005).to_json())
        os.replace(tmp, path)
        await rec.wait(lambda: len(rec.configs) == 2)
        assert rec.configs[-1].tcp[0].port == 10005
        # same content rewritten: not handed over again
        path.write_text(config_v(2, port=10005).to_json() + "\n")
        await asyncio.sleep(0.3)
        assert len(rec.configs) == 2
    finally:
        await stop(task)


@pytest.mark.asyncio
async def test_the_applied_hash_is_reported_so_a_refused_config_is_not_taken_for_applied():
    stub = await StubController(hold=0.2).start()
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, lambda: 4, applied_hash=lambda: "abc123",
                              backoff=fast_backoff())
    stub.publish(config_v(1))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        assert stub.requests[0][wire.HEADER_APPLIED_HASH] == "abc123"
        assert stub.requests[0][wire.HEADER_APPLIED_VERSION] == "4"
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
@pytest.mark.parametrize("answer", ["304", "same-200"])
async def test_answers_that_bring_nothing_new_are_paced_when_the_server_does_not_hold_them(answer):
    # A server that does not hold polls (a static file server, an intermediary that drops
    # If-None-Match) was polled ~5,000 times a second: a 304 or the config already held meant
    # "ask again at once". The next poll now starts no sooner than 1 s after the previous one.
    class NoHold(StubController):
        async def handle(self, request):
            self.requests.append(dict(request.headers))
            if answer == "304" and request.headers.get("If-None-Match") == self.etag:
                return web.Response(status=304)
            return web.Response(body=self.body, headers={"ETag": self.etag}, content_type="application/json")

    stub = await NoHold().start()
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error, backoff=fast_backoff())
    stub.publish(config_v(1))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        await asyncio.sleep(2.5)
        assert 2 <= len(stub.requests) <= 5, len(stub.requests)  # at once after the new config, then 1/s
        assert not rec.errors and not rec.refused
    finally:
        await stop(task)
        await stub.stop()


@pytest.mark.asyncio
async def test_a_valid_config_after_refused_ones_is_asked_for_without_a_growing_wait():
    # Each refusal used to grow a backoff applied before the next poll, even from a controller that
    # holds polls: after five bad configs in a row the good one arrived 7 s late.
    stub = await StubController(hold=5.0).start()
    rec = Recorder()
    source = ControllerSource(stub.url, "p", rec.on_config, rec.on_error,  # default backoff: 0.2 s to 10 s
                              min_poll_seconds=0.3)
    stub.publish(config_v(1))
    task = await run_source(source)
    try:
        await rec.wait(lambda: len(rec.configs) == 1)
        for i in range(4):
            stub.publish(raw=b'{"version": "bad %d"}' % i, etag=f'"bad-{i}"')
            await rec.wait(lambda: len(rec.refused) == i + 1)
        loop = asyncio.get_running_loop()
        published = loop.time()
        stub.publish(config_v(9, port=10009))
        await rec.wait(lambda: len(rec.configs) == 2)
        assert loop.time() - published < 0.9  # at most the 0.3 s floor after a fast answer (was 1.3-1.9 s)
        assert source.refused_backoff.current == source.refused_backoff.low
    finally:
        await stop(task)
        await stub.stop()


def test_file_source_reads_again_after_chmod_and_reports_a_reverted_edit(tmp_path, monkeypatch):
    import builtins

    path = tmp_path / "config.json"
    path.write_text(config_v(1).to_json())
    rec = Recorder()
    recovered = []
    source = FileSource(str(path), rec.on_config, rec.on_error, on_recovered=lambda: recovered.append(True))
    def unreadable(*args, **kwargs):  # as for a non-root reader of a mode-000 file
        raise PermissionError(13, "Permission denied")

    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", unreadable)
    assert not source.check() and "Permission denied" in rec.errors[-1]
    monkeypatch.setattr(builtins, "open", real_open)
    assert not source.check()  # nothing about the file changed: not read again
    os.chmod(path, 0o644)  # fixed by chmod: only the ctime changes
    assert source.check() and rec.configs[-1].version == 1
    # a bad edit, then reverted: the config in force is back, which is reported once
    path.write_text('{"version": 2, "tcp": "x"}')
    assert not source.check() and rec.refused
    assert not recovered
    path.write_text(config_v(1).to_json())
    assert not source.check() and recovered == [True]
    assert not source.check() and recovered == [True]
