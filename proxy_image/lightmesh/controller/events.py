"""Kubernetes Events (core/v1) on the objects the topology rejected or partly applied (leader only).

One Event per (object, field, message): the Event's name is derived from those, so it is created
once — a rebuild reporting the same error again does nothing, and after a restart or a leader
change the API's 409 AlreadyExists tells us it was already recorded. ``reason`` says which kind of
problem (``InvalidAnnotation``, ``DanglingReference``, ``InvalidObject``); the message names the
field and the value (it is the ObjectError's own message).
"""

from __future__ import annotations

import hashlib
import logging
from typing import Iterable

from lightmesh import wire
from lightmesh.controller.leader import default_identity, micro_time
from lightmesh.controller.sources import EVENTS, ApiError, KubeAPI

log = logging.getLogger("lightmesh.controller.events")

MAX_EVENTS_PER_ROUND = 100  # a flood of errors must not turn into a flood of API calls
MAX_REMEMBERED = 50_000

API_VERSIONS = {"Service": "v1", "Pod": "v1", "EndpointSlice": "discovery.k8s.io/v1"}


def reason_for(error) -> str:
    text = f"{getattr(error, 'field', '')} {getattr(error, 'message', '')}".lower()
    if "annotation" in text:
        return "InvalidAnnotation"
    if any(w in text for w in ("not found", "unknown", "does not exist", "dangling", "no such", "missing")):
        return "DanglingReference"
    return "InvalidObject"


def event_name(error) -> str:
    digest = hashlib.sha256(f"{error.kind}\0{error.namespace}\0{error.name}\0{error.field}\0{error.message}"
                            .encode()).hexdigest()[:16]
    return f"{error.name[:200]}.{digest}"


class EventRecorder:
    def __init__(self, api: KubeAPI, identity: str | None = None, api_versions=None, uids=None) -> None:
        self.api = api
        self.identity = identity or default_identity()
        self.api_versions = api_versions or (lambda: {})  # () → {kind: apiVersion} of the watched versions
        self.uids = uids or (lambda kind, namespace, name: None)  # (kind, ns, name) → uid from the caches
        self.recorded: set[str] = set()
        self.backlog = False  # the last record() stopped at MAX_EVENTS_PER_ROUND

    def body(self, error) -> dict:
        now = micro_time()
        # "TCPRoute.gateway.networking.k8s.io": a kind other groups share, qualified by its group
        involved = {"kind": error.kind.split(".", 1)[0], "namespace": error.namespace, "name": error.name}
        versions = {**API_VERSIONS, **self.api_versions()}
        if error.kind in versions:
            involved["apiVersion"] = versions[error.kind]
        uid = self.uids(error.kind, error.namespace, error.name)
        if uid:
            involved["uid"] = uid
        message = f"{error.field}: {error.message}" if error.field else error.message
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": event_name(error), "namespace": error.namespace,
                         "labels": {wire.LABEL_MANAGED_BY: wire.MANAGED_BY_CONTROLLER}},
            "involvedObject": involved, "reason": reason_for(error), "message": message[:1024],
            "type": "Warning", "count": 1, "firstTimestamp": now[:19] + "Z", "lastTimestamp": now[:19] + "Z",
            "eventTime": None, "source": {"component": wire.CONTROLLER_NAME},
            "reportingComponent": wire.CONTROLLER_NAME, "reportingInstance": self.identity[:128],
        }

    async def record(self, errors: Iterable) -> int:
        """Create the Events not created yet; returns how many were created. ``backlog`` says whether
        the per-round cap left some for another call."""
        created = 0
        self.backlog = False
        for error in errors:
            if not error.namespace or not error.name:
                continue
            name = event_name(error)
            if name in self.recorded:
                continue
            if created >= MAX_EVENTS_PER_ROUND:
                self.backlog = True  # the rest in a later round (the caller schedules one)
                break
            try:
                await self.api.request("POST", EVENTS.path(error.namespace), body=self.body(error))
                created += 1
            except ApiError as exc:
                if exc.status != 409:
                    log.warning("cannot create Event for %s %s/%s: %s", error.kind, error.namespace, error.name,
                                exc)
                    continue
            if len(self.recorded) >= MAX_REMEMBERED:
                self.recorded.clear()  # bounded memory; 409 keeps us from duplicating anyway
            self.recorded.add(name)
        return created
