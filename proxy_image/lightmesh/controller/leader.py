"""Leader election on a ``coordination.k8s.io/v1`` Lease (``wire.LEASE_NAME`` in the mesh namespace).

Only the leader writes (shadow Services, Events); every replica watches, builds and serves config
and DNS from its own caches. The algorithm is client-go's:

* the Lease is created if missing (a 409 means another replica won the race);
* the holder renews every ``renew_seconds`` (``spec.renewTime``); updates carry
  ``metadata.resourceVersion`` so two replicas can never both succeed (optimistic concurrency:
  the loser gets 409);
* a candidate takes over when the record (holder, renewTime) has not changed for
  ``lease_seconds`` *as observed on its own clock* (no clock comparison between nodes), or at
  once when the holder released it (empty ``holderIdentity``);
* a leader that cannot renew within ``renew_deadline_seconds`` of its last renewal (client-go's
  RenewDeadline; default ``lease_seconds - renew_seconds``, before anyone else may take over) steps
  down on its own. That bounds the whole attempt, not each request: a GET and a PATCH that each
  hang just under the HTTP timeout on a slow API server must not keep ``is_leader`` true past the
  moment another replica may take the Lease. On shutdown it releases the Lease so a successor
  takes over at once.

Identity (``holderIdentity``): the pod name (``POD_NAME``, else the host name), ``_`` and a random
suffix per process, as client-go does (``<hostname>_<uuid>``): two processes never share one, so
two cannot both take themselves for the holder (a container restarted in the same pod, or two
controllers run by hand without ``POD_NAME``). A restarted process is a new candidate: it takes over
at once when the old one released the Lease (it does on SIGTERM), else when the Lease expires.

Settings record (``settings_record``, annotation ``lightmesh.io/settings``): the leader writes
``{"holder": <identity>, "settings": {...}}`` (canonical JSON) with the Lease when it creates or
takes it, and again whenever the Lease's copy differs. Every round a follower reads the holder's
record into :attr:`LeaderElector.leader_settings` (``None``: no record, or one written by another
holder — an older release's leader that took over without writing its own) and calls
``on_leader_settings`` when it changes; a malformed annotation is logged once and read as none.
While the Lease has no holder (released, until a successor takes it) the last record read is kept:
the shadow Services still follow it, and a candidate that loses the race for the free Lease must
not fall back to its own settings meanwhile.

Resigning (:meth:`LeaderElector.resign`, a controller's --shutdown-delay): the leader releases the
Lease, and from then on the elector only reads it, every ``retry_seconds``, and never takes it
again, so a replica that goes on serving while it stops keeps following whoever leads.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import socket
import time
import uuid
from typing import Callable

from lightmesh import wire
from lightmesh.controller.sources import LEASES, ApiError, KubeAPI

log = logging.getLogger("lightmesh.controller.leader")

LEASE_SECONDS = 15.0
RENEW_SECONDS = 5.0
RETRY_SECONDS = 2.0


SETTINGS_ANNOTATION = "lightmesh.io/settings"


def default_identity() -> str:
    """This pod's name (``POD_NAME``), else the host name: who reports Events."""
    return os.environ.get(wire.ENV_POD_NAME) or socket.gethostname()


def unique_identity(name: str | None = None) -> str:
    """A Lease holder identity of its own for this process: ``<pod name>_<random hex>``."""
    return f"{name or default_identity()}_{uuid.uuid4().hex[:12]}"


def settings_annotation(identity: str, settings: dict) -> str:
    return json.dumps({"holder": identity, "settings": settings}, sort_keys=True, separators=(",", ":"))


def micro_time(now: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: KubeAPI, namespace: str, identity: str | None = None, *, name: str = wire.LEASE_NAME,
                 lease_seconds: float = LEASE_SECONDS, renew_seconds: float = RENEW_SECONDS,
                 retry_seconds: float = RETRY_SECONDS, renew_deadline_seconds: float | None = None,
                 on_change: Callable[[bool], None] = lambda leader: None,
                 metrics=None, clock: Callable[[], float] = time.monotonic, settings_record: dict | None = None,
                 on_leader_settings: Callable[[dict | None], None] = lambda record: None) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity or unique_identity()
        self.name = name
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self.renew_deadline_seconds = (lease_seconds - renew_seconds if renew_deadline_seconds is None
                                       else renew_deadline_seconds)
        if not 0 < self.renew_deadline_seconds < lease_seconds:
            raise ValueError(f"leader election: the renew deadline ({self.renew_deadline_seconds}s) must be "
                             f"above 0 and below the lease duration ({lease_seconds}s)")
        self.on_change = on_change
        self.metrics = metrics
        self.clock = clock
        self.is_leader = False
        # what this replica records on the Lease while it leads (None: nothing), and what a follower
        # read there: the current holder's recorded settings
        self.settings_record = settings_record
        self.on_leader_settings = on_leader_settings
        self.leader_settings: dict | None = None
        self.candidate = True  # False once resigned: reads the Lease, never takes it
        self._bad_record: str | None = None  # the malformed annotation last logged (logged once)
        self._observed: tuple[str, str] | None = None  # (holder, renewTime) last seen
        self._observed_at = 0.0
        self._last_renew = 0.0
        self._set_metric()

    @property
    def path(self) -> str:
        return LEASES.path(self.namespace, self.name)

    def _set_metric(self) -> None:
        if self.metrics is not None:
            self.metrics["is_leader"].set(1 if self.is_leader else 0)

    def _become(self, leader: bool) -> None:
        if leader == self.is_leader:
            return
        self.is_leader = leader
        self._set_metric()
        log.info("%s %s the leader Lease %s/%s", self.identity, "acquired" if leader else "lost",
                 self.namespace, self.name)
        self.on_change(leader)

    def _annotation(self) -> str | None:
        return None if self.settings_record is None else settings_annotation(self.identity, self.settings_record)

    def _read_record(self, lease: dict, holder: str) -> None:
        """The holder's recorded settings → :attr:`leader_settings` (None when there is none to use)."""
        if not holder:
            return  # free Lease: the shadows still follow the last record read (module docstring)
        record = None
        annotations = (lease.get("metadata") or {}).get("annotations")
        text = annotations.get(SETTINGS_ANNOTATION) if isinstance(annotations, dict) else None
        if holder and holder != self.identity and text is not None:
            try:
                parsed = json.loads(text) if isinstance(text, str) else None
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("settings"), dict) \
                    and isinstance(parsed.get("holder"), str):
                if parsed["holder"] == holder:  # else written by an earlier holder: not this leader's
                    record = parsed["settings"]
            elif text != self._bad_record:
                self._bad_record = text
                log.warning("the leader Lease's %s annotation is not a settings record (%.200r): "
                            "serving this replica's own settings", SETTINGS_ANNOTATION, text)
        self._set_leader_settings(record)

    def _set_leader_settings(self, record: dict | None) -> None:
        if record == self.leader_settings:
            return
        self.leader_settings = record
        try:
            self.on_leader_settings(record)
        except Exception:  # noqa: BLE001 - a callback bug must not end the election
            log.exception("on_leader_settings failed")

    def _spec(self, transitions: int, acquire: str | None = None) -> dict:
        now = micro_time()
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(round(self.lease_seconds)),
                "renewTime": now, "leaseTransitions": transitions}
        spec["acquireTime"] = acquire or now
        return spec

    async def try_acquire_or_renew(self) -> bool:
        """One round; True when we hold the Lease afterwards."""
        now = self.clock()
        try:
            lease = await self.api.get(self.path)
        except ApiError as exc:
            if exc.status != 404:
                raise
            if not self.candidate:
                return False  # resigned: nothing to read, nothing to create
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(0)}
            if self.settings_record is not None:
                body["metadata"]["annotations"] = {SETTINGS_ANNOTATION: self._annotation()}
            try:
                await self.api.request("POST", LEASES.path(self.namespace), body=body)
            except ApiError as exc2:
                if exc2.status == 409:
                    return False  # someone else created it first
                raise
            self._last_renew = now
            self._set_leader_settings(None)
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        self._read_record(lease, holder)
        record = (holder, str(spec.get("renewTime")))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        transitions = int(spec.get("leaseTransitions") or 0)
        if not self.candidate:
            return False  # resigned: reading only
        if holder == self.identity:
            new_spec = self._spec(transitions, spec.get("acquireTime"))
        elif not holder or now - self._observed_at >= duration:
            new_spec = self._spec(transitions + 1)
            log.info("%s taking over the Lease from %r", self.identity, holder)
        else:
            return False
        meta = lease.get("metadata") or {}
        patch: dict = {"spec": new_spec}
        if meta.get("resourceVersion") is not None:
            patch["metadata"] = {"resourceVersion": meta["resourceVersion"]}
        wanted = self._annotation()
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), dict) else {}
        if wanted is not None and annotations.get(SETTINGS_ANNOTATION) != wanted:
            # on taking the Lease, and whenever its record is not ours (our settings or identity changed)
            patch.setdefault("metadata", {})["annotations"] = {SETTINGS_ANNOTATION: wanted}
        try:
            await self.api.request("PATCH", self.path, body=patch, content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status == 409:
                return False  # another replica updated it between our read and write
            raise
        self._observed, self._observed_at = (self.identity, new_spec["renewTime"]), now
        self._last_renew = now
        self._set_leader_settings(None)
        return True

    async def step(self) -> None:
        # A leader's attempt must end by its renew deadline: others may take over once the Lease
        # has not changed for lease_seconds, counted from no earlier than our last attempt's start.
        # A candidate's attempt gets the same time (a cancelled PATCH that still lands is safe: the
        # Lease then names us, and the next round renews it or it expires).
        limit = (self._last_renew + self.renew_deadline_seconds - self.clock() if self.is_leader
                 else self.renew_deadline_seconds)
        try:
            if limit <= 0:
                raise asyncio.TimeoutError
            async with asyncio.timeout(limit):  # (not wait_for, which may drop a cancel: see reconcile)
                held = await self.try_acquire_or_renew()
            if held and not self.candidate:  # resigned while this round took the Lease: give it back
                await self._release()
                held = False
        except TimeoutError:
            log.warning("leader election round did not finish in time (renew deadline %.1fs)%s",
                        self.renew_deadline_seconds, ": stepping down" if self.is_leader else "")
            held = False
        except Exception as exc:  # API unreachable: keep leadership only while the lease surely holds
            log.warning("leader election round failed: %s", exc)
            held = self.is_leader and self.clock() - self._last_renew < self.renew_deadline_seconds
        self._become(held)

    async def run(self) -> None:
        """Until cancelled; the Lease is released on the way out."""
        try:
            while True:
                await self.step()
                pause = self.retry_seconds
                if self.is_leader:  # the next round no later than the renew deadline (then it steps down)
                    pause = min(self.renew_seconds,
                                max(0.0, self._last_renew + self.renew_deadline_seconds - self.clock()))
                await asyncio.sleep(pause)
        finally:
            if self.is_leader:
                await asyncio.shield(self._release())

    async def resign(self) -> None:
        """Never take the Lease again; release it now if held (see the module docstring). The
        :meth:`run` loop goes on reading it."""
        self.candidate = False
        if self.is_leader:
            await self._release()

    async def _release(self) -> None:
        self._become(False)
        try:
            lease = await self.api.get(self.path)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            patch = {"metadata": {"resourceVersion": (lease.get("metadata") or {}).get("resourceVersion")},
                     "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None}}
            if self.settings_record is not None:  # no holder, no record (followers ignore it anyway)
                patch["metadata"]["annotations"] = {SETTINGS_ANNOTATION: None}
            await asyncio.wait_for(self.api.request("PATCH", self.path, body=patch,
                                                    content_type="application/merge-patch+json"), 2.0)
            log.info("%s released the leader Lease", self.identity)
        except Exception as exc:  # noqa: BLE001 - best effort: the Lease expires anyway
            log.info("could not release the leader Lease: %s", exc)
