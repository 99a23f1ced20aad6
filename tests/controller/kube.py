"""A Kubernetes API for controller tests: kmock 0.8 plus the semantics it lacks.

kmock's ``KubernetesEmulator`` stores objects and streams watches but (see
``/work/shared/reference/testing-without-a-cluster.md``) assigns no ``resourceVersion``, ignores
``labelSelector``, never answers 410, has no optimistic concurrency and treats only the exact
string ``watch=true`` as a watch. :class:`Cluster` adds, on top of the pinned kmock (this touches
``kmock._internal``; pin kmock exactly):

* every write stamps ``metadata.resourceVersion`` from one cluster-wide counter (``uid``,
  ``creationTimestamp``, ``generation`` on create); lists carry the current resourceVersion,
  ``kind`` and ``apiVersion``;
* PATCH with a stale ``metadata.resourceVersion`` in the body → 409 Conflict (as the API server
  does for merge patches carrying one);
* an event log: a watch with ``resourceVersion=N`` replays only later events, and after
  :meth:`Cluster.compact` a watch from before the compaction gets a 410 Gone ERROR event;
  :meth:`Cluster.close_watches` ends every open watch (as the API server does on timeout);
  ``timeoutSeconds`` is honoured;
* ``labelSelector`` on lists and watches (``k=v``, ``k==v``, ``k!=v``, ``k``, ``!k``, comma = AND);
* ``watch=True``/``watch=1`` count as watches; ``GET /version/`` answers;
* :meth:`Cluster.fail_next` scripts error answers (any status) for matching requests.

Use :func:`cluster` (an async context manager) or the ``kube`` fixture in the tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime as dt
import itertools
import uuid
from collections import defaultdict
from typing import Any, AsyncIterator

import kmock
from kmock._internal import enums, parsing

# ------------------------------------------------------------------ kmock patches (module level, idempotent)

_original_guess_k8s = parsing.guess_k8s


def _guess_k8s(k8s, method, query):
    if method == enums.method.GET and str(query.get("watch", "")).lower() in ("true", "1"):
        query = {**query, "watch": "true"}
    return _original_guess_k8s(k8s, method, query)


parsing.guess_k8s = _guess_k8s

# group/version/plural → (kind, namespaced)
RESOURCES: dict[str, tuple[str, bool]] = {
    "v1/services": ("Service", True),
    "v1/pods": ("Pod", True),
    "v1/events": ("Event", True),
    "v1/namespaces": ("Namespace", False),
    "discovery.k8s.io/v1/endpointslices": ("EndpointSlice", True),
    "coordination.k8s.io/v1/leases": ("Lease", True),
    "events.k8s.io/v1/events": ("Event", True),
}
SMI: dict[str, tuple[str, bool]] = {
    "access.smi-spec.io/v1alpha3/traffictargets": ("TrafficTarget", True),
    "specs.smi-spec.io/v1alpha4/httproutegroups": ("HTTPRouteGroup", True),
    "specs.smi-spec.io/v1alpha4/tcproutes": ("TCPRoute", True),
    "specs.smi-spec.io/v1alpha4/udproutes": ("UDPRoute", True),
    "split.smi-spec.io/v1alpha4/trafficsplits": ("TrafficSplit", True),
    "gateway.networking.k8s.io/v1/httproutes": ("HTTPRoute", True),
    "gateway.networking.k8s.io/v1/grpcroutes": ("GRPCRoute", True),
    "gateway.networking.k8s.io/v1/tcproutes": ("TCPRoute", True),
    "gateway.networking.k8s.io/v1/udproutes": ("UDPRoute", True),
}


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_selector(text: str | None):
    """``labelSelector`` → predicate over a labels dict (equality and existence forms)."""
    if not text:
        return lambda labels: True
    tests = []
    for term in (t.strip() for t in text.split(",") if t.strip()):
        if "!=" in term:
            k, v = (s.strip() for s in term.split("!=", 1))
            tests.append(lambda l, k=k, v=v: l.get(k) != v)
        elif "==" in term or "=" in term:
            k, v = (s.strip() for s in term.replace("==", "=").split("=", 1))
            tests.append(lambda l, k=k, v=v: l.get(k) == v)
        elif term.startswith("!"):
            tests.append(lambda l, k=term[1:].strip(): k not in l)
        else:
            tests.append(lambda l, k=term: k in l)
    return lambda labels: all(t(labels or {}) for t in tests)


class _RecordingBus:
    """Stands in for kmock's per-resource bus: numbers, logs and fans out every event."""

    def __init__(self, cluster: Cluster, resource) -> None:
        self.cluster, self.resource = cluster, resource

    async def put(self, event: dict) -> None:
        event = copy.deepcopy(event)
        meta = event["object"].setdefault("metadata", {})
        if event["type"] == "DELETED" or not meta.get("resourceVersion"):
            meta["resourceVersion"] = self.cluster.next_rv()
        self.cluster.log.append((int(meta["resourceVersion"]), self.resource, event))
        for queue in list(self.cluster.watchers[self.resource]):
            queue.put_nowait(event)


_CLOSE = object()


class Cluster(kmock.KubernetesEmulator):
    """kmock's emulator with resourceVersions, 409/410, selectors and an event log."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._rv = itertools.count(1)
        self.rv = 0
        self.log: list[tuple[int, Any, dict]] = []
        self.compacted_rv = 0
        self.watchers: dict[Any, set[asyncio.Queue]] = defaultdict(set)
        self.failures: list[tuple[str, str, int, str, int]] = []  # method, path part, status, reason, count
        self.watch_requests: list[dict] = []  # params of every watch (tests check resume)
        self.watches_open = 0  # streams past their backlog snapshot, i.e. receiving live events
        self._buses = _BusMap(self)
        self.fallback["get /version/"] << {"major": "1", "minor": "30", "gitVersion": "v1.30.0-kmock"}
        self.serve(RESOURCES)

    def serve(self, resources: dict[str, tuple[str, bool]]) -> None:
        """Declare resources for discovery and lists (``group/version/plural`` → (kind, namespaced))."""
        for key, (kind, namespaced) in resources.items():
            self.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=namespaced,
                                                     verbs={"get", "list", "watch", "create", "patch", "delete"})

    # ------------------------------------------------------------------ test controls

    def next_rv(self) -> str:
        self.rv = next(self._rv)
        return str(self.rv)

    def compact(self) -> None:
        """Forget the event log: a watch resuming from before now gets 410 Gone.

        The version moves on (as writes to other kinds move it in a real cluster), so even a
        client that saw the very last event of its kind is too old afterwards.
        """
        self.compacted_rv = int(self.next_rv())
        self.log.clear()

    def close_watches(self) -> None:
        """End every open watch stream (the client resumes from its last resourceVersion)."""
        for queues in self.watchers.values():
            for queue in queues:
                queue.put_nowait(_CLOSE)

    def fail_next(self, method: str, path_part: str, status: int, reason: str = "", count: int = 1) -> None:
        """The next ``count`` requests with ``method`` whose path contains ``path_part`` fail."""
        self.failures.append((method.upper(), path_part, status, reason, count))

    def put_object(self, obj: dict, notify: bool = True) -> dict:
        """Store an object directly (test setup), stamped like a create; no HTTP involved.

        ``notify=False``: open watches do not see it (an event lost while a client was away).
        """
        obj = copy.deepcopy(obj)
        resource = _resource_of(obj)
        meta = obj.setdefault("metadata", {})
        self._stamp_create(meta)
        key = (resource, meta.get("namespace"), meta["name"])
        self.objects[key] = obj
        self.log.append((int(meta["resourceVersion"]), resource, {"type": "ADDED", "object": copy.deepcopy(obj)}))
        for queue in list(self.watchers[resource]) if notify else ():
            queue.put_nowait({"type": "ADDED", "object": copy.deepcopy(obj)})
        return obj

    def patch_object(self, api_version: str, plural: str, namespace: str | None, name: str, patch: dict) -> dict:
        """Merge-patch a stored object as another client would (watchers see MODIFIED); no HTTP."""
        resource = kmock.resource(f"{api_version}/{plural}")
        patch = copy.deepcopy(patch)
        patch.setdefault("metadata", {})["resourceVersion"] = self.next_rv()
        stored = self.objects[(resource, namespace, name)]
        stored.patch(patch)
        event = {"type": "MODIFIED", "object": copy.deepcopy(stored.raw)}
        self.log.append((self.rv, resource, event))
        for queue in list(self.watchers[resource]):
            queue.put_nowait(copy.deepcopy(event))
        return copy.deepcopy(stored.raw)

    def get_object(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict | None:
        resource = kmock.resource(f"{api_version}/{plural}")
        key = (resource, namespace, name)
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def list_objects(self, api_version: str, plural: str, namespace: str | None = None) -> list[dict]:
        resource = kmock.resource(f"{api_version}/{plural}")
        return [copy.deepcopy(o.raw) for (r, ns, _), o in self.objects.items()
                if r == resource and not o.deleted and (namespace is None or ns == namespace)]

    def writes(self) -> list[tuple[str, str]]:
        """(method, path) of every request that changed something."""
        return [(_method(r), r.url.path) for r in self._requests
                if _method(r) in ("POST", "PUT", "PATCH", "DELETE")]

    # ------------------------------------------------------------------ request handling

    def _stamp_create(self, meta: dict) -> None:
        meta["resourceVersion"] = self.next_rv()
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta["generation"] = 1

    def _scripted_failure(self, request):
        method = _method(request)
        for index, (m, part, status, reason, count) in enumerate(self.failures):
            if m == method and part in request.url.path:
                if count <= 1:
                    del self.failures[index]
                else:
                    self.failures[index] = (m, part, status, reason, count - 1)
                return kmock.KubernetesError(status=status, reason=reason or "Scripted", message="scripted failure")
        return None

    async def _handle(self, request):
        failure = self._scripted_failure(request)
        if failure is not None:
            return await self._render_error(failure)
        if request.resource is not None and isinstance(request.data, dict):
            try:
                if request.action == enums.action.CREATE:
                    meta = request.data.setdefault("metadata", {})
                    key = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
                    if key not in self.objects or self.objects[key].deleted:  # else kmock answers 409
                        self._stamp_create(meta)
                elif request.action == enums.action.UPDATE and request.name is not None:
                    self._check_version(request)
                    request.data.setdefault("metadata", {})["resourceVersion"] = self.next_rv()
            except kmock.KubernetesError as exc:
                return await self._render_error(exc)
        return await super()._handle(request)

    def _check_version(self, request) -> None:
        wanted = (request.data.get("metadata") or {}).get("resourceVersion")
        if wanted is None:
            return
        key = (request.resource, request.namespace, request.name)
        if key in self.objects and not self.objects[key].deleted:
            current = (self.objects[key].raw.get("metadata") or {}).get("resourceVersion")
            if str(current) != str(wanted):
                raise kmock.KubernetesError(
                    status=409, reason="Conflict",
                    message=f"Operation cannot be fulfilled: the object has been modified "
                            f"(resourceVersion {wanted} is not {current}); please apply your changes to the "
                            f"latest version and try again")

    def _matches(self, request, obj: dict) -> bool:
        meta = obj.get("metadata") or {}
        if request.namespace is not None and meta.get("namespace") != request.namespace:
            return False
        if request.name is not None and meta.get("name") != request.name:
            return False
        return parse_selector(request.params.get("labelSelector"))(meta.get("labels"))

    async def _serve_list(self, request):
        body = await super()._serve_list(request)
        items = [i for i in body["items"] if self._matches(request, i)]
        resource = request.resource
        kind = self.resources[resource].kind if resource in self.resources else None
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        return {"apiVersion": api_version, "kind": f"{kind or 'Object'}List",
                "metadata": {"resourceVersion": str(self.rv)}, "items": items}

    async def _serve_watch(self, request) -> AsyncIterator[Any]:
        yield b""
        params = request.params
        self.watch_requests.append(dict(params))
        since = params.get("resourceVersion")
        timeout = float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else None
        queue: asyncio.Queue = asyncio.Queue()
        if since not in (None, "", "0") and (not since.isdigit() or int(since) < self.compacted_rv):
            yield {"type": "ERROR", "object": {"apiVersion": "v1", "kind": "Status", "status": "Failure",
                                               "code": 410, "reason": "Expired",
                                               "message": f"too old resource version: {since} ({self.compacted_rv})"}}
            return
        async with self._lock:  # writes put events under this lock: no gap, no duplicate
            if since in (None, "", "0"):
                backlog = [{"type": "ADDED", "object": copy.deepcopy(o.raw)} for (r, _, _), o in self.objects.items()
                           if r == request.resource and not o.deleted]
            else:
                backlog = [copy.deepcopy(e) for rv, r, e in self.log if r == request.resource and rv > int(since)]
            self.watchers[request.resource].add(queue)
            self.watches_open += 1
        try:
            for event in backlog:
                if self._matches(request, event["object"]):
                    yield event
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout if timeout else None
            for _ in range(1_000_000):  # bounded; tests never get near it
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    return
                try:
                    event = await asyncio.wait_for(queue.get(), remaining)
                except asyncio.TimeoutError:
                    return
                if event is _CLOSE:
                    return
                if self._matches(request, event["object"]):
                    yield event
        finally:
            self.watchers[request.resource].discard(queue)
            self.watches_open -= 1


def _method(request) -> str:
    return str(getattr(request.method, "value", request.method)).upper()


class _BusMap(dict):
    def __init__(self, cluster: Cluster) -> None:
        super().__init__()
        self.cluster = cluster

    def __missing__(self, resource):
        bus = self[resource] = _RecordingBus(self.cluster, resource)
        return bus


def _resource_of(obj: dict):
    # every kind the controller uses has the plural "<kind lowercased>s"
    return kmock.resource(f"{obj['apiVersion']}/{obj['kind'].lower()}s")


@contextlib.asynccontextmanager
async def cluster(smi: dict[str, tuple[str, bool]] | None = None) -> AsyncIterator[Cluster]:
    """A running :class:`Cluster` on 127.0.0.1 (``str(c.url)`` is its address).

    ``smi``: the SMI resources it serves (default :data:`SMI`, the newest versions).
    """
    async with Cluster() as handler, kmock.Server(handler):
        handler.serve(SMI if smi is None else smi)
        yield handler
