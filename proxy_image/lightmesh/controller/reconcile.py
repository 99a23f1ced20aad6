"""The reconcile loop: source changed → (debounce) → build → publish → shadows, DNS, events, metrics.

:class:`Controller` owns the sequencing and nothing else; every edge is injected:

* ``source``: a :class:`~lightmesh.controller.sources.FileSource` or ``KubeSource`` (``synced``,
  ``snapshot()``, ``run()``); its ``on_change`` is wired to :meth:`Controller.notify`.
* ``build_fn``: :func:`lightmesh.controller.build.build` (pure); tests may pass their own.
* ``local_shadows`` (local mode): shadow Services are applied in memory right in the loop and the
  build runs again so the config listens on the ClusterIPs just allocated (at most
  ``MAX_PASSES`` builds per round).
* ``kube_writer`` + ``elector`` + ``events`` (cluster): the leader writes shadow Services and
  Events from a separate task, so slow API calls never delay publishing config; the shadow
  Services come back through the watch with their ClusterIPs and trigger the next round. A failed
  write or Event is retried with its own backoff (``retry.py``): the write task wakes when one is
  due, and a round that changes the desired shadows still writes at once.
* Settings (``model.SHAPING_FIELDS``): with an ``elector``, a follower builds (config, shadows,
  DNS) with the leader's, as the leader records them on the Lease (``elector.leader_settings``), so
  that during a rollout that changes them every replica serves what the leader's shadow Services
  send traffic to, and the config hashes agree; the leader, a replica without election and a
  follower that finds no usable record use their own (``settings``). A record that cannot be used
  whole (wrong types, invalid values) is logged once and this replica's own settings are used.
* DNS answers only for the shadows the round wants: an orphan (its Service gone, its delete
  pending or failing) no longer resolves (its mesh ports stay reserved until it is gone: ports.py).

Latency (``bench/bench_controller.py``): a lone change after a quiet period is built after 5 ms
instead of the 20 ms debounce; the default build keeps caches across rounds (``TopologyCache``,
``ProviderCache``, ``ConfigAssembler``: a Service whose objects did not change is not read,
translated, validated or serialized again; same result); the writer skips its diff when no shadow
Service changed; ``main.py`` freezes the GC's view of the synced caches after the first round.

Versions: a new version (previous + 1) only when the config hash changes. In local mode the last
published (version, hash) is persisted with the shadows, so a restart with the same content serves
the same version and hash, and a restart with other content continues the numbering. In a cluster
nothing is persisted: the numbering starts from the controller's start time in milliseconds
(``first_version``), so versions still grow across restarts (a controller publishes far fewer than
1,000 configs a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from lightmesh.controller.api import ConfigStore
from lightmesh.controller.dns import DNSTable, MeshDNS
from lightmesh.controller.model import SHAPING_FIELDS
from lightmesh.controller.sources import FIELDS, STATE_FIELDS

log = logging.getLogger("lightmesh.controller")

DEBOUNCE_SECONDS = 0.02
MAX_DELAY_SECONDS = 0.1  # a stream of events still gets a rebuild at least this often
# The first change after a quiet period (no round for QUIET_SECONDS) waits only this long: enough
# for the events one action makes at once (a Pod and its EndpointSlice), not the whole debounce, so
# a lone change reaches the proxies sooner. Events that keep coming (they pile up during a round)
# get the full debounce: at most one extra round per burst.
IDLE_DEBOUNCE_SECONDS = 0.005
QUIET_SECONDS = MAX_DELAY_SECONDS
MAX_PASSES = 3
WRITE_RETRY_SECONDS = 5.0  # after an apply that raised (a bug): failed objects have their own backoff
MIN_WRITE_PAUSE_SECONDS = 0.05  # a floor on the write loop's timer: never a busy loop
EVENT_BACKLOG_SECONDS = 1.0  # pace of Event batches past MAX_EVENTS_PER_ROUND
FAILURE_RETRY_SECONDS = 0.5
FAILURE_RETRY_MAX_SECONDS = 30.0

# The metrics' kind label. Gateway API TCPRoute and UDPRoute carry their group, as their errors do:
# SMI has kinds of the same names, and one label value would count both (the later overwriting).
_SMI_KINDS = {kind for group, kind in FIELDS.values() if group.endswith("smi-spec.io")}
KIND_OF_FIELD = {f: f"{kind}.{group}" if group == "gateway.networking.k8s.io" and kind in _SMI_KINDS else kind
                 for f, (group, kind) in FIELDS.items()} | {"shadow_services": "ShadowService"}


def _default_build():
    from lightmesh.controller.build import build

    return build


def _build_caches() -> dict:
    from lightmesh.config import ConfigAssembler
    from lightmesh.controller.provider import ProviderCache
    from lightmesh.controller.topology import TopologyCache

    return {"assembler": ConfigAssembler(), "topology_cache": TopologyCache(), "provider_cache": ProviderCache()}


@dataclass
class RoundStats:
    builds: int = 0
    published: bool = False


class Controller:
    def __init__(self, settings, source, *, store: ConfigStore | None = None, metrics=None,
                 dns: MeshDNS | None = None, local_shadows=None, kube_writer=None, elector=None, events=None,
                 build_fn: Callable | None = None, debounce_seconds: float = DEBOUNCE_SECONDS,
                 max_delay_seconds: float = MAX_DELAY_SECONDS,
                 idle_debounce_seconds: float = IDLE_DEBOUNCE_SECONDS, freeze_gc_after_sync: bool = False,
                 tracer=None, first_version: int = 0) -> None:
        from lightmesh.controller.model import ClusterState

        self._state_type = ClusterState
        self.settings = settings  # this replica's own (flags)
        self._round_settings = settings  # what the last round built with (the leader's, on a follower)
        self._record_seen: object = None  # the leader's record last turned into settings, and the result
        self._record_settings = settings
        self.source = source
        self.store = store or ConfigStore()
        self.metrics = metrics
        self.dns = dns
        self.local_shadows = local_shadows
        self.kube_writer = kube_writer
        self.elector = elector
        self.events = events
        self.build_fn = build_fn or _default_build()
        self.tracer = tracer  # OpenTelemetry Tracer (--otlp-endpoint): one span per reconcile round
        # the default build reuses what did not change between rounds (Services, config elements)
        self._build_kwargs = _build_caches() if build_fn is None else {}
        self.debounce_seconds = debounce_seconds
        self.max_delay_seconds = max_delay_seconds
        self.idle_debounce_seconds = min(idle_debounce_seconds, debounce_seconds)
        self._last_round_at = float("-inf")  # monotonic end of the last round
        # main.py (one controller per process): after the first round, what exists (the synced caches,
        # most of them for good) goes to the GC's permanent generation, so the full collections
        # that come every few rounds do not scan it again: at 1,000 Services a full collection took
        # up to ~170 ms (a config published that much later), ~15 ms after the freeze.
        self.freeze_gc_after_sync = freeze_gc_after_sync
        self._dns_shadows: list[dict] | None = None  # the shadow objects the DNS table was made from
        self._dns_wanted: frozenset[str] = frozenset()  # and the names of the shadows wanted then
        self._dns_domains = settings.domains  # and the domains
        self._round_shadows: list[dict] = []  # the shadow Services the last round saw
        self._applied: tuple[list[dict], list[dict]] | None = None  # (desired, seen) of the last clean write
        self._attempted: tuple[list[dict], list[dict]] | None = None  # (desired, seen) of the last write
        self.config = None
        self.version = first_version  # the first config published is this + 1
        self.ports = None
        self.result = None
        self.rounds = 0
        self.published_at: float | None = None
        self.draining = False  # stopping (main.py's --shutdown-delay): not ready, still serving
        self._dirty = asyncio.Event()
        self._write_wanted = asyncio.Event()
        self._desired_shadows: list[dict] | None = None
        self._errors: list = []
        self._logged_errors: set = set()  # the object errors already logged (see _log_new_errors)
        self._shadow_errors: list = []  # shadow Services the leader could not write (next rounds report them)
        if local_shadows is not None and local_shadows.last_config:
            self.version = int(local_shadows.last_config.get("version") or 0)
        self.source.on_change = self.notify

    # ------------------------------------------------------------------ wiring

    def notify(self) -> None:
        self._dirty.set()

    def leadership_changed(self, leader: bool) -> None:
        self._applied = self._attempted = None
        if self.effective_settings() != self._round_settings:
            # built with the other side's settings: rebuild first, and never write those shadows
            self._desired_shadows = None
            self._dirty.set()
        elif leader:
            self._write_wanted.set()  # a new leader writes what it has at once

    def leader_settings_changed(self, record) -> None:
        """The elector read another record of the leader's settings (or none): build with it."""
        self._dirty.set()

    def effective_settings(self):
        """The settings this round builds with: the leader's recorded ones on a follower that has a
        usable record, else this replica's own."""
        record = None if self.elector is None or self.elector.is_leader else \
            getattr(self.elector, "leader_settings", None)
        if record is None:
            return self.settings
        if record is not self._record_seen:
            self._record_seen = record
            settings, problems = self.settings.with_record(record)
            if problems:  # once per record
                log.warning("the leader's recorded settings: %s%s", "; ".join(problems),
                            ": serving this replica's own settings" if settings is self.settings else "")
            self._record_settings = settings
        return self._record_settings

    @property
    def synced(self) -> bool:
        return self.source.synced.is_set()

    def ready(self) -> bool:
        return not self.draining and self.synced and self.config is not None

    async def resign(self) -> None:
        """Stop taking part in the election (a shutdown delay): the leader releases the Lease, so
        another replica takes over writing while this one keeps serving, and the elector goes on
        reading the Lease, so this replica keeps building with whoever leads (leader.py)."""
        if self.elector is not None:
            await self.elector.resign()

    # ------------------------------------------------------------------ one round

    def _state(self):
        snapshot = self.source.snapshot()
        if self.local_shadows is not None:
            snapshot["shadow_services"] = self.local_shadows.list()
        return snapshot, self._state_type(**{f: snapshot.get(f, []) for f in STATE_FIELDS})

    def reconcile_once(self) -> RoundStats:
        """Build and publish from the current caches (synchronous: the core is pure and fast)."""
        started = time.perf_counter()
        started_ns = time.time_ns()
        stats = RoundStats()
        snapshot, state = self._state()
        settings = self.effective_settings()
        if settings != self._round_settings:
            # another leader's settings (a rollout that changes them), or our own on taking over:
            # nothing of the last round carries over (ports of other ranges, cached config elements)
            changed = {name: getattr(settings, name) for name in SHAPING_FIELDS
                       if getattr(settings, name) != getattr(self._round_settings, name)}
            log.info("building with %s settings from now on (%s)",
                     "this replica's own" if settings is self.settings else "the leader's",
                     ", ".join(f"{k}={v!r}" for k, v in changed.items()) or "no shaping change")
            self._round_settings = settings
            self.ports = None
            if self._build_kwargs:
                self._build_kwargs = _build_caches()
        result = None
        for _ in range(MAX_PASSES):
            result = self.build_fn(state, settings, self.version + 1, previous_ports=self.ports,
                                   **self._build_kwargs)
            stats.builds += 1
            if self.local_shadows is None or not self.local_shadows.apply(list(result.shadow_services)):
                break
            # new ClusterIPs/ports: build again so the config listens on them
            snapshot["shadow_services"] = self.local_shadows.list()
            state = self._state_type(**{f: snapshot.get(f, []) for f in STATE_FIELDS})
        assert result is not None
        if self._shadow_errors:
            result = dataclasses.replace(result, errors=sorted(set(result.errors) | set(self._shadow_errors)))
        self.result = result
        self.ports = result.ports
        config = result.config
        if self.config is None or config.hash != self.config.hash:
            config = self._numbered(config)
            self.config, self.version = config, config.version
            stats.published = True
            self.published_at = time.monotonic()  # benches: change → publish latency
            log.info("published config version %d (hash %s)", config.version, config.hash[:12])
            if self.local_shadows is not None:
                self.local_shadows.remember_config(config.version, config.hash)
        if stats.published:
            self.store.publish(self.config, result)
        else:
            self.store.set_result(result)  # topology and errors may change without the config
        shadows = self._round_shadows = list(snapshot.get("shadow_services", []))
        if self.dns is not None:
            # Only the shadows this round wants (meshed Services, and those left out for bad
            # annotations, which keep theirs): an orphan waiting to be deleted (or whose delete
            # fails) must not keep its Service's mesh name alive, and its port may serve another.
            wanted = frozenset(s["metadata"]["name"] for s in result.shadow_services)
            # same shadow objects (the caches replace an object when it changes) → same table
            # (the list keeps them alive, so their ids cannot be reused); local mode: always rebuilt
            if self.local_shadows is not None or self._dns_shadows is None or not _same_objects(
                    shadows, self._dns_shadows) or wanted != self._dns_wanted or settings.domains != self._dns_domains:
                self.dns.table = DNSTable.from_shadows(
                    [s for s in shadows if (s.get("metadata") or {}).get("name") in wanted], settings.domains)
                self._dns_shadows, self._dns_wanted, self._dns_domains = shadows, wanted, settings.domains
        self._errors = list(result.errors)
        self._log_new_errors(self._errors)
        if self.kube_writer is not None or self.events is not None:
            self._desired_shadows = list(result.shadow_services)
            self._write_wanted.set()
        self._observe(snapshot, result, time.perf_counter() - started)
        if self.tracer is not None:
            self._trace(started_ns, stats, result)
        self.rounds += 1
        return stats

    def _log_new_errors(self, errors: list) -> None:
        """One warning per object error when it appears (not every round it stays); an error that
        goes away and comes back is logged again. Bounded by the errors of the current round."""
        current = set(errors)
        for error in sorted(current - self._logged_errors, key=str):
            log.warning("object error: %s", error)
        self._logged_errors = current

    def _trace(self, started_ns: int, stats: RoundStats, result) -> None:
        """A span for the round just done (after the fact: the round itself stays free of tracing)."""
        try:
            span = self.tracer.start_span("reconcile", start_time=started_ns)
            span.set_attributes({
                "lightmesh.config_version": self.version, "lightmesh.config_hash": self.config.hash[:12],
                "lightmesh.published": stats.published, "lightmesh.builds": stats.builds,
                "lightmesh.services": len(result.topology.services), "lightmesh.object_errors": len(result.errors),
            })
            span.end()
        except Exception:  # noqa: BLE001 - tracing must never fail a round
            log.warning("could not record the reconcile span", exc_info=True)

    def _numbered(self, config):
        """Give a new config its version: +1, or the persisted one when the content is the same."""
        last = self.local_shadows.last_config if self.local_shadows is not None else {}
        if self.config is None and last.get("hash") == config.hash and last.get("version"):
            return config.model_copy(update={"version": int(last["version"])})
        if config.version != self.version + 1:
            config = config.model_copy(update={"version": self.version + 1})
        return config

    def _observe(self, snapshot: dict[str, Any], result, seconds: float) -> None:
        m = self.metrics
        if m is None:
            return
        m["reconcile_duration_seconds"].observe(seconds)
        for fieldname in STATE_FIELDS:
            m["objects"].labels(kind=KIND_OF_FIELD[fieldname]).set(len(snapshot.get(fieldname, [])))
        # objects, not error records: one Service with three bad annotations is one object in error
        by_kind = Counter(kind for kind, _ns, _name in
                          {(getattr(e, "kind", "?"), getattr(e, "namespace", ""), getattr(e, "name", ""))
                           for e in result.errors})
        for kind in set(KIND_OF_FIELD.values()) | set(by_kind):
            m["object_errors"].labels(kind=kind).set(by_kind.get(kind, 0))
        m["config_version"].set(self.version)

    # ------------------------------------------------------------------ loops

    async def run(self) -> None:
        """Until cancelled: the source, the reconcile loop and (cluster) the writer."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.source.run())
            if self.elector is not None:
                tasks.create_task(self.elector.run(), name="leader-election")
            if self.kube_writer is not None or self.events is not None:
                tasks.create_task(self._write_loop())
            await self._reconcile_loop()

    async def _reconcile_loop(self) -> None:
        await self.source.synced.wait()
        failures = 0
        while True:
            await self._dirty.wait()
            first = time.monotonic()
            # debounce: wait for a quiet gap, but never longer than max_delay after the first event;
            # after a quiet period the first gap is short (a lone change is published sooner)
            delay = self.idle_debounce_seconds if first - self._last_round_at >= QUIET_SECONDS \
                else self.debounce_seconds
            while True:
                self._dirty.clear()
                await asyncio.sleep(delay)
                if not self._dirty.is_set() or time.monotonic() - first >= self.max_delay_seconds:
                    break
                delay = self.debounce_seconds  # more events are coming: the full gap from now on
            self._dirty.clear()
            try:
                self.reconcile_once()
                failures = 0
                if self.freeze_gc_after_sync and self.rounds == 1:
                    gc.collect()  # the start-up garbage first: frozen objects are never collected
                    gc.freeze()
                self._last_round_at = time.monotonic()
            except Exception:  # a bug in one round must not stop the mesh: log, keep the last config
                failures += 1
                delay = min(FAILURE_RETRY_SECONDS * 2 ** (failures - 1), FAILURE_RETRY_MAX_SECONDS)
                log.exception("reconcile failed; keeping the last published config, retrying in %.1fs", delay)
                await asyncio.sleep(delay)
                self._dirty.set()  # retry the same state (or a newer one)

    def _leader(self) -> bool:
        return self.elector is None or self.elector.is_leader

    async def _write_loop(self) -> None:
        retry_in: float | None = None  # a failed write or Event due again, a backlog, an Event to refresh
        while True:
            if retry_in is None:
                await self._write_wanted.wait()
            else:
                # a round (new desired shadows) must not wait for a retry that is minutes away.
                # asyncio.timeout, not wait_for: Python 3.11's wait_for drops a cancel that arrives
                # just after the Event was set (a round at shutdown), and the TaskGroup, which
                # cancels its children once, would then wait for this loop forever
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(retry_in, MIN_WRITE_PAUSE_SECONDS)):
                        await self._write_wanted.wait()
            self._write_wanted.clear()
            retry_in = None
            if not self._leader() or self._desired_shadows is None:
                if self._shadow_errors:  # the leader writes (and reports) them now, not this replica
                    self._shadow_errors = []
                    self._dirty.set()
                continue
            desired, seen = self._desired_shadows, self._round_shadows
            writer = self.kube_writer
            # Nothing to write when the desired shadows and the ones the cluster has are those of the
            # last clean write (most rounds: an endpoint or a policy changed). Skipping the diff
            # (~10 ms at 1,000 Services) lets the config long polls be answered sooner. The same holds
            # after a failed write while no failed object is due again (its backoff).
            last = self._applied or self._attempted
            due = writer is not None and (writer.next_retry_in() or 0.0) <= 0.0
            if writer is not None and not (last is not None and last[0] == desired and _same_objects(last[1], seen)
                                           and not (self._applied is None and due)):
                self._applied = None
                self._attempted = (desired, seen)
                existing = self.source.snapshot().get("shadow_services", [])
                try:
                    failures = await writer.apply(desired, existing, self._leader)
                except Exception:
                    log.exception("writing shadow Services failed")
                    failures = 1
                if not failures:
                    self._applied = (desired, seen)
                write_errors = writer.write_errors()
                if write_errors != self._shadow_errors:
                    self._shadow_errors = write_errors
                    self._dirty.set()  # a round to report them (or clear them) in the topology and metrics
            if self.events is not None:
                try:
                    await self.events.record(self._errors, self._leader)
                except Exception:
                    log.exception("recording Events failed")
            waits = []
            if writer is not None and self._applied is None:
                # per-object backoff (retry.py); an apply that raised has none: the fixed pause
                # (0.0, due now after a recovery, is a wait of its own: not the fixed pause)
                retry = writer.next_retry_in()
                waits.append(WRITE_RETRY_SECONDS if retry is None else retry)
            if self.events is not None:
                # More errors than one round's Events: the rest must not wait for an unrelated change
                # on a quiet cluster. Failed Events back off; recorded ones are refreshed (events.py).
                waits += [EVENT_BACKLOG_SECONDS] if self.events.backlog else []
                waits += [t for t in (self.events.next_retry_in(),) if t is not None]
            retry_in = min(waits) if waits else None


def _same_objects(a: list, b: list) -> bool:
    """The same objects in the same order (the watch caches replace an object when it changes)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))
