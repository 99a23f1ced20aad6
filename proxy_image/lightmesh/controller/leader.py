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
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
from typing import Callable

from lightmesh import wire
from lightmesh.controller.sources import LEASES, ApiError, KubeAPI

log = logging.getLogger("lightmesh.controller.leader")

LEASE_SECONDS = 15.0
RENEW_SECONDS = 5.0
RETRY_SECONDS = 2.0


def default_identity() -> str:
    return os.environ.get(wire.ENV_POD_NAME) or socket.gethostname()


def micro_time(now: float | None = None) -> str:
    moment = dt.datetime.fromtimestamp(time.time() if now is None else now, dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(self, api: KubeAPI, namespace: str, identity: str | None = None, *, name: str = wire.LEASE_NAME,
                 lease_seconds: float = LEASE_SECONDS, renew_seconds: float = RENEW_SECONDS,
                 retry_seconds: float = RETRY_SECONDS, renew_deadline_seconds: float | None = None,
                 on_change: Callable[[bool], None] = lambda leader: None,
                 metrics=None, clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity or default_identity()
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
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.name, "namespace": self.namespace}, "spec": self._spec(0)}
            try:
                await self.api.request("POST", LEASES.path(self.namespace), body=body)
            except ApiError as exc2:
                if exc2.status == 409:
                    return False  # someone else created it first
                raise
            self._last_renew = now
            return True
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = (holder, str(spec.get("renewTime")))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        duration = float(spec.get("leaseDurationSeconds") or self.lease_seconds)
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            new_spec = self._spec(transitions, spec.get("acquireTime"))
        elif not holder or now - self._observed_at >= duration:
            new_spec = self._spec(transitions + 1)
            log.info("%s taking over the Lease from %r", self.identity, holder)
        else:
            return False
        patch = {"metadata": {"resourceVersion": (lease.get("metadata") or {}).get("resourceVersion")},
                 "spec": new_spec}
        if patch["metadata"]["resourceVersion"] is None:
            del patch["metadata"]
        try:
            await self.api.request("PATCH", self.path, body=patch, content_type="application/merge-patch+json")
        except ApiError as exc:
            if exc.status == 409:
                return False  # another replica updated it between our read and write
            raise
        self._observed, self._observed_at = (self.identity, new_spec["renewTime"]), now
        self._last_renew = now
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

    async def _release(self) -> None:
        self._become(False)
        try:
            lease = await self.api.get(self.path)
            if (lease.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            patch = {"metadata": {"resourceVersion": (lease.get("metadata") or {}).get("resourceVersion")},
                     "spec": {"holderIdentity": None, "renewTime": None, "acquireTime": None}}
            await asyncio.wait_for(self.api.request("PATCH", self.path, body=patch,
                                                    content_type="application/merge-patch+json"), 2.0)
            log.info("%s released the leader Lease", self.identity)
        except Exception as exc:  # noqa: BLE001 - best effort: the Lease expires anyway
            log.info("could not release the leader Lease: %s", exc)
