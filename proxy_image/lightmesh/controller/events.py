"""Kubernetes Events (core/v1) on the objects the topology rejected or partly applied (leader only).

One Event per (object — its uid included —, field, message): the Event's name is derived from
those, so a rebuild reporting the same error again does nothing, an object deleted and created
again (a new uid) gets its own Event, and after a restart or a leader change the API's 409
AlreadyExists tells us it was already recorded (the Event is then refreshed, see below).
``reason`` says which kind of problem (``InvalidAnnotation``, ``DanglingReference``,
``InvalidObject``); the message names the field and the value (it is the ObjectError's own message).

An error still present is refreshed every :data:`REFRESH_SECONDS` (a merge patch of
``lastTimestamp`` and ``count`` + 1, as for an event seen again — ``kubectl`` shows "x3 over 40m";
a create if the Event is gone): the API server deletes Events ``--event-ttl`` (1 h by default)
after their last write, and an error that lasts must stay visible. The count lives in memory; after
a restart or a leader change (409 AlreadyExists) it is read from the Event. A failed post
is retried with per-Event backoff (retry.py), and logged when it starts failing, not every round.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Callable, Iterable

from lightmesh import wire
from lightmesh.controller.leader import default_identity, micro_time
from lightmesh.controller.retry import RetryBackoff
from lightmesh.controller.sources import EVENTS, ApiError, KubeAPI

log = logging.getLogger("lightmesh.controller.events")

MAX_EVENTS_PER_ROUND = 100  # a flood of errors must not turn into a flood of API calls
MAX_FAILURE_LINES = 10  # per round: then one summary line
# An error still present is written again this often: well within kube-apiserver's --event-ttl
# (1 h by default), so its Event never expires while the error lasts; one request per error per
# 20 minutes (1,000 errors: under one a second).
REFRESH_SECONDS = 20 * 60.0

API_VERSIONS = {"Service": "v1", "Pod": "v1", "EndpointSlice": "discovery.k8s.io/v1"}


def reason_for(error) -> str:
    text = f"{getattr(error, 'field', '')} {getattr(error, 'message', '')}".lower()
    if "annotation" in text:
        return "InvalidAnnotation"
    if any(w in text for w in ("not found", "unknown", "does not exist", "dangling", "no such", "missing")):
        return "DanglingReference"
    return "InvalidObject"


def event_name(error, uid: str | None = None) -> str:
    # the uid: an object deleted and created again is another object, with an Event of its own
    key = f"{error.kind}\0{error.namespace}\0{error.name}\0{error.field}\0{error.message}"
    if uid:
        key += f"\0{uid}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{error.name[:200]}.{digest}"


class EventRecorder:
    def __init__(self, api: KubeAPI, identity: str | None = None, api_versions=None, uids=None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.identity = identity or default_identity()
        self.api_versions = api_versions or (lambda: {})  # () → {kind: apiVersion} of the watched versions
        self.uids = uids or (lambda kind, namespace, name: None)  # (kind, ns, name) → uid from the caches
        self.clock = clock
        self.recorded: dict[str, float] = {}  # Event name → when it was last written (errors still present)
        self.counts: dict[str, int] = {}  # Event name → its count as last written
        self.backoff = RetryBackoff(clock=clock)  # Event name → failed posts
        self.backlog = False  # the last record() stopped at MAX_EVENTS_PER_ROUND

    def body(self, error, uid: str | None = None) -> dict:
        now = micro_time()
        # "TCPRoute.gateway.networking.k8s.io": a kind other groups share, qualified by its group
        involved = {"kind": error.kind.split(".", 1)[0], "namespace": error.namespace, "name": error.name}
        versions = {**API_VERSIONS, **self.api_versions()}
        if error.kind in versions:
            involved["apiVersion"] = versions[error.kind]
        if uid:
            involved["uid"] = uid
        message = f"{error.field}: {error.message}" if error.field else error.message
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name(error, uid), "namespace": error.namespace,
                         "labels": {wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER}},
            "involvedObject": involved, "reason": reason_for(error), "message": message[:1024],
            "type": "Warning", "count": 1, "firstTimestamp": now[:19] + "Z", "lastTimestamp": now[:19] + "Z",
            "eventTime": None, "source": {"component": wire.CONTROLLER_NAME},
            "reportingComponent": wire.CONTROLLER_NAME, "reportingInstance": self.identity[:128],
        }

    def next_retry_in(self) -> float | None:
        """Seconds until a failed Event is due again or a recorded one needs its refresh."""
        times = [t for t in (self.backoff.next_in(),) if t is not None]
        # a refresh that failed waits for its backoff (counted above), not for its overdue refresh time
        refresh = [t for n, t in self.recorded.items() if n not in self.backoff]
        if refresh:
            times.append(max(0.0, min(refresh) + REFRESH_SECONDS - self.clock()))
        return min(times) if times else None

    async def _write(self, error, uid: str | None, refresh: bool) -> bool:
        """Create the Event, or refresh it when it exists; True when it was created."""
        body = self.body(error, uid)
        name, namespace = body["metadata"]["name"], error.namespace
        if refresh:  # most likely still there: one patch (its TTL starts again)
            count = self.counts.get(name)
            if count is None:  # not known (an earlier read failed): read it again
                count = await self._read_count(namespace, name)
            try:
                await self._touch(namespace, name, body, count + 1 if count else None)
                return False
            except ApiError as exc:
                if exc.status != 404:
                    raise
        try:
            await self.api.request("POST", EVENTS.path(namespace), body=body)
            self.counts[name] = 1
            return True
        except ApiError as exc:
            if exc.status != 409:
                raise
        # recorded before (another leader, a restart): refreshed, its count read first
        count = await self._read_count(namespace, name)
        await self._touch(namespace, name, body, count + 1 if count else None)
        return False

    async def _read_count(self, namespace: str, name: str) -> int | None:
        """The Event's count, or None when it cannot be read. Reading needs `get` on events, which
        installs before this release did not grant: the Event is then refreshed without a count (as
        before), never left to expire."""
        try:
            found = await self.api.request("GET", EVENTS.path(namespace, name))
        except ApiError as exc:
            log.debug("cannot read Event %s/%s (%s): refreshed without its count", namespace, name, exc.status)
            return None
        count = found.get("count")
        return count if type(count) is int and count > 0 else None

    async def _touch(self, namespace: str, name: str, body: dict, count: int | None) -> None:
        patch: dict = {"lastTimestamp": body["lastTimestamp"]}
        if count is not None:
            patch["count"] = count
        await self.api.request("PATCH", EVENTS.path(namespace, name), body=patch,
                               content_type="application/merge-patch+json")
        if count is not None:
            self.counts[name] = count
        else:
            self.counts.pop(name, None)  # unknown: the next refresh tries to read it again

    async def record(self, errors: Iterable, still_leader: Callable[[], bool] = lambda: True) -> int:
        """Create the Events not created yet and refresh the old ones; returns how many were created.
        ``backlog`` says whether the per-round cap left some for another call. Stops when
        ``still_leader()`` turns false (another replica records them from then on)."""
        now = self.clock()
        current: dict[str, tuple] = {}
        for error in errors:
            if error.namespace and error.name:
                uid = self.uids(error.kind, error.namespace, error.name)
                current.setdefault(event_name(error, uid), (error, uid))
        # bounded memory: only the errors present now (one that comes back is recorded again)
        self.recorded = {n: t for n, t in self.recorded.items() if n in current}
        self.counts = {n: c for n, c in self.counts.items() if n in current}
        self.backoff.forget(current)
        pending = [n for n in current if n not in self.recorded or now - self.recorded[n] >= REFRESH_SECONDS]
        tried = self.backoff.select(pending)
        created = attempts = logged = quiet = 0
        self.backlog = False
        for name in pending:
            if name not in tried:
                continue
            if attempts >= MAX_EVENTS_PER_ROUND:
                self.backlog = True  # the rest in a later round (the caller schedules one)
                break
            if not still_leader():
                break
            attempts += 1
            error, uid = current[name]
            try:
                created += await self._write(error, uid, refresh=name in self.recorded)
            except Exception as exc:  # noqa: BLE001 - API or network error: backed off, retried
                why = " ".join(str(exc).split()) or type(exc).__name__
                if not self.backoff.failed(name, why):
                    log.debug("cannot record Event for %s %s/%s (again): %s", error.kind, error.namespace,
                              error.name, why)
                elif logged < MAX_FAILURE_LINES:
                    logged += 1
                    log.warning("cannot record Event for %s %s/%s: %s (retried with backoff)", error.kind,
                                error.namespace, error.name, why)
                else:
                    quiet += 1
                continue
            self.backoff.succeeded(name)
            self.recorded[name] = self.clock()
        if quiet:
            log.warning("%d more Events could not be recorded (not logged one by one)", quiet)
        return created
