"""Where the controller's view of the cluster comes from: Kubernetes watches or a directory of files.

This module owns the caches of raw objects (dicts exactly as the API returns them) and the rules
deciding which objects the controller looks at:

* :class:`ObjectFilter`: namespace filters (``--watch-namespaces``, ``--ignore-namespaces``; always
  ignored: ``kube-system``, the mesh namespace except our shadow Services and the proxy pods, and
  ``default/kubernetes``), and the split of Services into user Services and shadow Services.
* :class:`FileSource` (``--manifests DIR``, local mode): every ``*.yaml``/``*.yml``/``*.json``
  (multi-document, ``*List`` kinds flattened) at the top of DIR, re-read when a file's mtime or
  size changes (polled every 0.2 s); dot-files are skipped (the harness's temporary file, the
  writer's state file). A file that fails to parse is logged and its last good objects are kept.
* :class:`KubeSource`: one :class:`Informer` (list + watch) per kind over :class:`KubeAPI`. The
  SMI kinds are discovered: the newest version the cluster serves among the ones we support.
  Watches resume from the last ``resourceVersion``, re-list on ``410 Gone`` and back off on errors
  (``watch_restarts_total{kind,reason}``). Only a 404 from discovery means "not served": any other
  failure keeps what is watched (a flapping API server never empties a kind). An optional kind
  (SMI, Gateway API) the controller is forbidden to list (403) counts as absent until it may, so
  the rest of the mesh still gets served; the built-in kinds have no such way out, nor, in ACL
  mode, the access kinds (``ACL_REQUIRED``: absent, they would deny everything).

Both sources call ``on_change()`` (no arguments, cheap) after the cache changed; the reconcile loop
debounces and calls :meth:`snapshot` to get ``{field: [objects]}`` for ``ClusterState``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable

import yaml

from lightmesh import wire

log = logging.getLogger("lightmesh.controller.sources")

# ClusterState field → (API group, kind). Group "" is core.
FIELDS: dict[str, tuple[str, str]] = {
    "services": ("", "Service"),
    "endpoint_slices": ("discovery.k8s.io", "EndpointSlice"),
    "pods": ("", "Pod"),
    "traffic_targets": ("access.smi-spec.io", "TrafficTarget"),
    "http_route_groups": ("specs.smi-spec.io", "HTTPRouteGroup"),
    "tcp_routes": ("specs.smi-spec.io", "TCPRoute"),
    "udp_routes": ("specs.smi-spec.io", "UDPRoute"),
    "traffic_splits": ("split.smi-spec.io", "TrafficSplit"),
    "mesh_http_routes": ("gateway.networking.k8s.io", "HTTPRoute"),
    "mesh_grpc_routes": ("gateway.networking.k8s.io", "GRPCRoute"),
    # same kind names as SMI's: errors about these name their kind with the group ("TCPRoute.gateway...")
    "mesh_tcp_routes": ("gateway.networking.k8s.io", "TCPRoute"),
    "mesh_udp_routes": ("gateway.networking.k8s.io", "UDPRoute"),
}
STATE_FIELDS = (*FIELDS, "shadow_services")
_BY_GROUP_KIND = {gk: f for f, gk in FIELDS.items()}

ALWAYS_IGNORED_NAMESPACES = frozenset({"kube-system"})


@dataclass(frozen=True)
class Resource:
    """How to reach one kind over the API: ``/api/v1/pods`` or ``/apis/<group>/<version>/<plural>``."""

    field: str
    group: str
    version: str
    kind: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if namespace:
            base += f"/namespaces/{namespace}"
        base += f"/{self.plural}"
        return f"{base}/{name}" if name else base


BUILTIN = {
    "services": Resource("services", "", "v1", "Service", "services"),
    "endpoint_slices": Resource("endpoint_slices", "discovery.k8s.io", "v1", "EndpointSlice", "endpointslices"),
    "pods": Resource("pods", "", "v1", "Pod", "pods"),
}
# Newest first: the first one the cluster serves wins.
SMI_VERSIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "traffic_targets": (("v1alpha3", "v1alpha2", "v1alpha1"), "traffictargets"),
    "http_route_groups": (("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "httproutegroups"),
    "tcp_routes": (("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "tcproutes"),
    "udp_routes": (("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "udproutes"),
    "traffic_splits": (("v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"), "trafficsplits"),
    # not SMI, but optional the same way: watched when the cluster has the Gateway API CRDs
    "mesh_http_routes": (("v1", "v1beta1"), "httproutes"),
    "mesh_grpc_routes": (("v1", "v1alpha2"), "grpcroutes"),
    "mesh_tcp_routes": (("v1", "v1alpha2"), "tcproutes"),
    "mesh_udp_routes": (("v1", "v1alpha2"), "udproutes"),
}
# kinds two groups share (SMI's and Gateway API's TCPRoute/UDPRoute): metric labels add the group
_SHARED_KINDS = frozenset(k for _g, k in FIELDS.values() if sum(k2 == k for _g2, k2 in FIELDS.values()) > 1)
# ACL mode cannot do without these: a TrafficTarget and the routes its rules name grant access
ACL_REQUIRED = frozenset(("traffic_targets", "http_route_groups", "tcp_routes", "udp_routes"))
LEASES = Resource("leases", "coordination.k8s.io", "v1", "Lease", "leases")
EVENTS = Resource("events", "", "v1", "Event", "events")


def group_of(api_version: str) -> str:
    return api_version.rpartition("/")[0] if "/" in api_version else ""


def key_of(obj: dict) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


def is_shadow(obj: dict) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(wire.LABEL_MANAGED_BY) == wire.MANAGED_BY_CONTROLLER


def is_proxy_pod(obj: dict) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wire.PROXY_POD_LABELS.items())


def is_controller_pod(obj: dict) -> bool:
    """A controller replica's pod: the labels MeshInstall's Deployment gives its pod template (and
    selects them by), ``wire.CONTROLLER_POD_LABELS``. Only looked for in the mesh namespace."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in wire.CONTROLLER_POD_LABELS.items())


# what classify/snapshot return besides STATE_FIELDS: mesh-namespace pods the API reads (never the
# config builder): the proxies (/api/status/nodes) and the controller replicas (its peers there)
POD_GROUPS = ("proxy_pods", "controller_pods")


def _csv(value: Iterable[str] | str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = value.split(",")
    return frozenset(v.strip() for v in value if v and v.strip())


@dataclass(frozen=True)
class ObjectFilter:
    """Which objects the controller considers, and where they go (field name or ``None``)."""

    mesh_namespace: str = wire.DEFAULT_MESH_NAMESPACE
    watch_namespaces: frozenset[str] = frozenset()
    ignore_namespaces: frozenset[str] = frozenset()

    @classmethod
    def create(cls, mesh_namespace: str, watch: Iterable[str] | str | None = None,
               ignore: Iterable[str] | str | None = None) -> ObjectFilter:
        return cls(mesh_namespace, _csv(watch), _csv(ignore))

    def route(self, fieldname: str, obj: dict) -> str | None:
        """``services`` → ``services``/``shadow_services``/None (ignored), ``pods`` →
        ``pods``/``proxy_pods``/``controller_pods``/None, etc."""
        namespace, name = key_of(obj)
        if namespace == self.mesh_namespace:
            if fieldname == "services" and is_shadow(obj):
                return "shadow_services"
            if fieldname == "pods" and is_proxy_pod(obj):
                return "proxy_pods"
            if fieldname == "pods" and is_controller_pod(obj):
                return "controller_pods"
            return None
        if namespace in ALWAYS_IGNORED_NAMESPACES or namespace in self.ignore_namespaces:
            return None
        if self.watch_namespaces and namespace not in self.watch_namespaces:
            return None
        if fieldname == "services" and ((namespace, name) == ("default", "kubernetes") or is_shadow(obj)):
            return None  # a shadow outside the mesh namespace is not ours to use
        return fieldname


def classify(objects: Iterable[Any], object_filter: ObjectFilter) -> dict[str, list[dict]]:
    """Raw objects of any kinds → ``{field: [objects]}`` (every STATE_FIELDS and POD_GROUPS key)."""
    out: dict[str, list[dict]] = {f: [] for f in (*STATE_FIELDS, *POD_GROUPS)}
    for obj in objects:
        if not isinstance(obj, dict):
            continue
        fieldname = _BY_GROUP_KIND.get((group_of(str(obj.get("apiVersion", ""))), obj.get("kind")))
        if fieldname is None:
            continue
        target = object_filter.route(fieldname, obj)
        if target is not None:
            out[target].append(obj)
    return out


# =========================================================================== file source

POLL_SECONDS = 0.2
FILE_SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: 10x faster


def parse_file(path: Path) -> list[dict]:
    """Objects in one file; raises ValueError naming the file on malformed content."""
    text = path.read_text()
    try:
        if path.suffix == ".json":
            docs = [json.loads(text)] if text.strip() else []
        else:
            docs = list(yaml.load_all(text, Loader=_Loader))
    except (ValueError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}") from None
    objects: list[dict] = []
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise ValueError(f"{path} document {index + 1}: a Kubernetes object needs apiVersion and kind")
        if str(doc["kind"]).endswith("List") and isinstance(doc.get("items"), list):
            objects.extend(i for i in doc["items"] if isinstance(i, dict))
        else:
            objects.append(doc)
    for obj in objects:
        meta = obj.setdefault("metadata", {}) if isinstance(obj.get("metadata", {}), dict) else None
        if meta is None or not meta.get("name"):
            raise ValueError(f"{path}: {obj.get('kind')} without metadata.name")
        meta.setdefault("namespace", "default")
    return objects


class FileSource:
    """A directory of manifests as the cluster (local mode)."""

    def __init__(self, directory: str | Path, object_filter: ObjectFilter,
                 on_change: Callable[[], None] = lambda: None, poll_seconds: float = POLL_SECONDS) -> None:
        self.directory = Path(directory)
        self.filter = object_filter
        self.on_change = on_change
        self.poll_seconds = poll_seconds
        self.synced = asyncio.Event()
        self._files: dict[Path, tuple[tuple[int, int], list[dict]]] = {}  # path → (mtime, size), objects
        self._groups: dict[str, list[dict]] = classify([], object_filter)
        self.errors: dict[str, str] = {}  # file → last parse error (kept until the file parses again)

    def _signature(self) -> dict[Path, tuple[int, int]]:
        out = {}
        try:
            entries = list(os.scandir(self.directory))
        except OSError as exc:
            log.warning("cannot read manifests directory %s: %s", self.directory, exc)
            return {p: sig for p, (sig, _) in self._files.items()}  # keep what we had
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(FILE_SUFFIXES):
                continue
            try:
                st = entry.stat()
            except OSError:
                continue  # replaced between scandir and stat: seen on the next poll
            if entry.is_file():
                out[Path(entry.path)] = (st.st_mtime_ns, st.st_size)
        return out

    def load(self) -> bool:
        """Re-read changed files; True when the objects changed. Blocking: call in a thread."""
        signature = self._signature()
        changed = False
        for path in list(self._files):
            if path not in signature:
                del self._files[path]
                self.errors.pop(str(path), None)
                changed = True
        for path, sig in sorted(signature.items()):
            old = self._files.get(path)
            if old is not None and old[0] == sig:
                continue
            try:
                objects = parse_file(path)
            except (OSError, ValueError) as exc:
                if self.errors.get(str(path)) != str(exc):
                    log.error("ignoring %s, keeping its last good objects: %s", path.name, exc)
                self.errors[str(path)] = str(exc)
                # remember the signature so a broken file is not re-parsed on every poll
                self._files[path] = (sig, old[1] if old else [])
                continue
            self.errors.pop(str(path), None)
            if old is None or old[1] != objects:
                changed = True
            self._files[path] = (sig, objects)
        if changed:
            every = [obj for path in sorted(self._files) for obj in self._files[path][1]]
            self._groups = classify(every, self.filter)
        return changed

    def snapshot(self) -> dict[str, list[dict]]:
        return {f: list(v) for f, v in self._groups.items()}

    def mesh_pods(self, group: str) -> list[dict]:
        """``snapshot()[group]`` for a POD_GROUPS key, without copying the rest."""
        return list(self._groups.get(group, ()))

    async def run(self) -> None:
        """Poll until cancelled."""
        if await asyncio.to_thread(self.load) or not self.synced.is_set():
            self.synced.set()
            self.on_change()
        while True:
            await asyncio.sleep(self.poll_seconds)
            if await asyncio.to_thread(self.load):
                log.info("manifests changed in %s", self.directory)
                self.on_change()


# =========================================================================== Kubernetes API


class ApiError(Exception):
    """A non-2xx answer from the API server (``status`` is the HTTP code, ``reason`` k8s' reason)."""

    def __init__(self, status: int, reason: str = "", message: str = "") -> None:
        super().__init__(f"{status} {reason}: {message}".strip())
        self.status, self.reason, self.message = status, reason, message


class KubeAPI:
    """Raw JSON over lightkube's connection setup (kubeconfig/in-cluster auth, TLS, base URL).

    Objects stay dicts (what the pure core consumes; no model decode per watch event), and the
    watch loop stays ours (resourceVersion resume, 410 handling, backoff).
    """

    def __init__(self, http) -> None:  # an httpx.AsyncClient with base_url and auth
        self.http = http

    @classmethod
    def from_kubeconfig(cls, path: str | None = None, server: str | None = None) -> KubeAPI:
        import httpx2 as httpx  # what lightkube 1.x is built on
        from lightkube.config.client_adapter import AsyncClient, ConnectionParams
        from lightkube.config.kubeconfig import KubeConfig

        if server:  # plain URL, no credentials (tests against a local fake API server)
            config = KubeConfig.from_dict({
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c"})
        elif path:
            config = KubeConfig.from_file(path)
        else:
            config = cls._config_from_env()
        return cls(AsyncClient(config.get(), ConnectionParams(timeout=httpx.Timeout(10.0))))

    @staticmethod
    def _config_from_env():
        """The in-cluster service account, else $KUBECONFIG or ~/.kube/config. In a pod (the
        in-cluster variables set), a failure names what failed there, not the missing file."""
        from lightkube.config.kubeconfig import KubeConfig
        from lightkube.core.exceptions import ConfigError

        try:
            return KubeConfig.from_env()
        except ConfigError as exc:
            if not os.environ.get("KUBERNETES_SERVICE_HOST"):
                raise
            try:
                KubeConfig.from_service_account()
            except (ConfigError, KeyError) as in_cluster:
                raise ConfigError(f"in-cluster configuration (KUBERNETES_SERVICE_HOST is set): {in_cluster}; "
                                  f"no kubeconfig either: {exc}") from exc
            raise

    async def close(self) -> None:
        await self.http.aclose()

    @staticmethod
    def _raise(resp) -> None:
        if resp.status_code < 400:
            return
        reason = message = ""
        try:
            body = resp.json()
            reason, message = body.get("reason", ""), body.get("message", "")
        except (ValueError, AttributeError):
            message = resp.text[:200] if hasattr(resp, "text") else ""
        raise ApiError(resp.status_code, reason, message)

    async def request(self, method: str, path: str, *, params: dict | None = None, body: Any = None,
                      content_type: str = "application/json") -> dict:
        headers = {"Accept": "application/json"}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        resp = await self.http.request(method, path, params=params, content=content, headers=headers)
        self._raise(resp)
        if not resp.content:
            return {}
        data = resp.json()
        return data if isinstance(data, dict) else {}

    async def get(self, path: str, **params) -> dict:
        return await self.request("GET", path, params=params or None)

    async def list(self, path: str, page_size: int = 500) -> tuple[list[dict], str | None]:
        """All items (paged with ``limit``/``continue``) and the list's resourceVersion."""
        items: list[dict] = []
        params: dict[str, Any] = {"limit": page_size}
        for _ in range(100_000):  # bounded: at most 50M objects
            body = await self.request("GET", path, params=params)
            items.extend(i for i in body.get("items") or [] if isinstance(i, dict))
            meta = body.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                return items, meta.get("resourceVersion")
            params["continue"] = cont
        raise ApiError(500, "TooManyPages", path)

    async def watch(self, path: str, resource_version: str | None, timeout_seconds: int = 300,
                    on_open: Callable[[], None] | None = None) -> AsyncIterator[dict]:
        """Watch events as dicts ``{"type", "object"}`` until the server ends the stream.
        ``on_open()``: called once the server accepted the watch (a quiet watch yields nothing)."""
        import httpx2 as httpx  # what lightkube 1.x is built on

        params: dict[str, Any] = {"watch": "true", "allowWatchBookmarks": "true",
                                  "timeoutSeconds": timeout_seconds}
        if resource_version:
            params["resourceVersion"] = resource_version
        timeout = httpx.Timeout(10.0, read=timeout_seconds + 30.0)
        async with self.http.stream("GET", path, params=params, timeout=timeout,
                                    headers={"Accept": "application/json"}) as resp:
            if resp.status_code >= 400:
                await resp.aread()
                self._raise(resp)
            if on_open is not None:
                on_open()
            async for line in resp.aiter_lines():
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except ValueError:
                    raise ApiError(500, "BadWatchLine", line[:200]) from None
                if isinstance(event, dict):
                    yield event


# =========================================================================== informers

BACKOFF_MIN_SECONDS = 0.2
BACKOFF_MAX_SECONDS = 30.0
# A watch open this long counts as healthy: the next failure starts again from the shortest pause
# (one closed sooner by the server counts as a failure: no busy loop).
HEALTHY_WATCH_SECONDS = 1.0
REDISCOVER_SECONDS = 60.0
SYNC_TIMEOUT_SECONDS = 60.0


class Informer:
    """List + watch one kind into a cache ``{(namespace, name): object}``."""

    def __init__(self, api: KubeAPI, resource: Resource | None, on_change: Callable[[], None],
                 metrics=None, watch_timeout_seconds: int = 300, optional: bool = False) -> None:
        self.api = api
        self.resource = resource  # None: the cluster does not serve this kind (cache stays empty)
        # a 403 on the list means "absent for us", not "not ready" (see KubeSource._informer)
        self.optional = optional
        self.forbidden = False
        self.on_change = on_change
        self.metrics = metrics
        self.watch_timeout_seconds = watch_timeout_seconds
        self.cache: dict[tuple[str, str], dict] = {}
        self.synced = asyncio.Event()
        self.resource_version: str | None = None
        self.lists = 0  # how many full lists were made (tests: a 410 re-lists)
        self._listed_at = float("-inf")

    @property
    def kind(self) -> str:
        if self.resource is None:
            return "?"
        if self.resource.kind in _SHARED_KINDS and self.resource.group != "specs.smi-spec.io":
            return f"{self.resource.kind}.{self.resource.group}"
        return self.resource.kind

    def _restart(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics["watch_restarts_total"].labels(kind=self.kind, reason=reason).inc()

    async def relist(self) -> None:
        assert self.resource is not None
        items, rv = await self.api.list(self.resource.path())
        self.lists += 1
        self._listed_at = asyncio.get_running_loop().time()
        cache = {key_of(i): i for i in items}
        if self.forbidden:
            self.forbidden = False
            log.warning("%s: listing is allowed again; watching it", self.kind)
        changed = cache != self.cache
        self.cache, self.resource_version = cache, rv
        if not self.synced.is_set():
            self.synced.set()
            changed = True
        if changed:
            self.on_change()

    def apply(self, event: dict) -> bool:
        """Apply one watch event; True when the cache changed. Raises ApiError on ERROR events."""
        etype, obj = event.get("type"), event.get("object")
        if not isinstance(obj, dict):
            raise ApiError(500, "BadWatchEvent", str(event)[:200])
        if etype == "ERROR":
            raise ApiError(int(obj.get("code") or 500), obj.get("reason", ""), obj.get("message", ""))
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = rv
        if etype == "BOOKMARK":
            return False
        key = key_of(obj)
        if etype == "DELETED":
            return self.cache.pop(key, None) is not None
        if etype in ("ADDED", "MODIFIED"):
            if self.cache.get(key) == obj:
                return False
            self.cache[key] = obj
            return True
        return False

    async def run(self) -> None:
        """List, then watch from the list's resourceVersion, forever (until cancelled)."""
        if self.resource is None:
            self.synced.set()
            return
        loop = asyncio.get_running_loop()
        backoff = BACKOFF_MIN_SECONDS
        need_list = True
        gone_after_list = False  # the last list was followed at once by a 410: its success proves little
        opened: list[float] = []  # when the current watch was accepted

        def healthy() -> bool:
            return bool(opened) and loop.time() - opened[0] >= HEALTHY_WATCH_SECONDS

        while True:
            opened.clear()
            try:
                if need_list:
                    await self.relist()
                    need_list = False
                    if not gone_after_list:
                        backoff = BACKOFF_MIN_SECONDS  # the API answers again: no pause left from an outage
                async for event in self.api.watch(self.resource.path(), self.resource_version,
                                                  self.watch_timeout_seconds,
                                                  on_open=lambda: opened.append(loop.time())):
                    if self.apply(event):
                        self.on_change()
                    backoff = BACKOFF_MIN_SECONDS
                # the server closed the watch (timeoutSeconds): resume from where we are, at once and
                # from the shortest pause on (a quiet kind gets no events: a watch that held is the
                # sign of health), unless it keeps closing right away (then back off: no busy loop)
                if healthy():
                    backoff, gone_after_list = BACKOFF_MIN_SECONDS, False
                    continue
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                if healthy():  # it failed after holding a while: a new incident, not the old one going on
                    backoff, gone_after_list = BACKOFF_MIN_SECONDS, False
                if exc.status == 403 and self.optional and need_list:
                    self._forbidden(exc)
                else:
                    if exc.status == 410:
                        log.info("%s watch expired (410 Gone): re-listing", self.kind)
                        self._restart("gone")
                        need_list = True
                        gone_after_list = loop.time() - self._listed_at < 1.0
                        if not gone_after_list:
                            continue  # at once, unless 410s come back right after a list (then back off)
                    self._restart("error")
                    log.warning("%s watch failed (%s); retrying in %.1fs", self.kind, exc, backoff)
            except Exception as exc:  # network errors, decode errors: back off, never die
                if healthy():
                    backoff, gone_after_list = BACKOFF_MIN_SECONDS, False
                self._restart("error")
                log.warning("%s watch failed (%s: %s); retrying in %.1fs", self.kind, type(exc).__name__,
                            exc, backoff)
            await asyncio.sleep(backoff * (0.5 + random.random() / 2))
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _forbidden(self, exc: ApiError) -> None:
        """403 on the list of an optional kind: at start, serve without it (empty, as if the CRD
        were not installed) rather than keep the whole controller not ready; once listed, keep what
        was listed (a 403 from a flaky authorizer must not empty it). Retried with backoff."""
        self._restart("forbidden")
        if not self.forbidden:
            self.forbidden = True
            now = ("treated as absent (none of these objects apply)" if not self.synced.is_set()
                   else f"keeping the {len(self.cache)} listed before")
            log.warning("%s: the controller may not list it (403: %s): %s until it may; check the "
                        "controller's ClusterRole", self.kind, exc, now)
        if not self.synced.is_set():
            self._listed_at = asyncio.get_running_loop().time()
            self.synced.set()
            self.on_change()


async def discover(api: KubeAPI) -> dict[str, Resource | None]:
    """The resource to watch per field: built-ins fixed, SMI kinds and Gateway API HTTPRoute and
    GRPCRoute the newest served version (none when the cluster lacks the CRDs)."""
    out: dict[str, Resource | None] = dict(BUILTIN)
    groups: dict[str, set[str]] = {}
    body = await api.get("/apis")  # an error here is retried by the caller
    for group in body.get("groups") or []:
        groups[group.get("name", "")] = {v.get("version") for v in group.get("versions") or []}
    for fieldname, (versions, plural) in SMI_VERSIONS.items():
        group, kind = FIELDS[fieldname]
        served = groups.get(group, set())
        chosen = None
        for version in versions:
            if version not in served:
                continue
            # a group version may exist without this kind (e.g. specs v1alpha1 has no UDPRoute)
            try:
                resources = (await api.get(f"/apis/{group}/{version}")).get("resources") or []
            except ApiError as exc:
                if exc.status == 404:  # listed in /apis a moment ago, gone now: not served
                    continue
                # 503, 429, 500...: not an answer. Raising keeps the informers running (re-discovery)
                # or retries (start); taken as "not served", it emptied the kind: in ACL mode every
                # TrafficTarget gone, all traffic denied until the next discovery.
                raise
            if any(r.get("name") == plural for r in resources):
                chosen = Resource(fieldname, group, version, kind, plural)
                break
        if chosen is None:
            log.info("the cluster serves no supported version of %s.%s: not watched", kind, group)
        out[fieldname] = chosen
    return out


class KubeSource:
    """Every kind the controller needs, list+watched from the API server."""

    def __init__(self, api: KubeAPI, object_filter: ObjectFilter, on_change: Callable[[], None] = lambda: None,
                 metrics=None, watch_timeout_seconds: int = 300,
                 rediscover_seconds: float = REDISCOVER_SECONDS, required: Iterable[str] = ()) -> None:
        self.api = api
        # optional kinds a 403 must not make absent: in ACL mode, the TrafficTargets and the route
        # kinds their rules name (absent, every request is denied: a controller that starts before
        # its ClusterRoleBinding is in effect must wait, not publish deny-all)
        self.required = frozenset(required)
        self.filter = object_filter
        self.on_change = on_change
        self.metrics = metrics
        self.watch_timeout_seconds = watch_timeout_seconds
        self.rediscover_seconds = rediscover_seconds
        self.informers: dict[str, Informer] = {}
        self._tasks: dict[str, asyncio.Task] = {}
        self.synced = asyncio.Event()

    def _changed(self) -> None:
        if self.synced.is_set():
            self.on_change()

    async def _discover(self) -> dict[str, Resource | None]:
        backoff = BACKOFF_MIN_SECONDS
        while True:  # until the API server answers (or we are cancelled); readiness stays 503 meanwhile
            try:
                return await discover(self.api)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - unreachable API server at start: retry, never die
                log.warning("API discovery failed (%s: %s); retrying in %.1fs", type(exc).__name__, exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _informer(self, resource: Resource | None) -> Informer:
        # SMI and Gateway API kinds may be absent, unless required (ACL mode: the access kinds)
        optional = resource is not None and resource.field in SMI_VERSIONS and resource.field not in self.required
        return Informer(self.api, resource, self._changed, self.metrics, self.watch_timeout_seconds, optional)

    async def run(self) -> None:
        resources = await self._discover()
        self.informers = {f: self._informer(r) for f, r in resources.items()}
        async with asyncio.TaskGroup() as tasks:
            for fieldname, informer in self.informers.items():
                self._tasks[fieldname] = tasks.create_task(informer.run())
            await asyncio.gather(*(i.synced.wait() for i in self.informers.values()))
            self.synced.set()
            self.on_change()
            await self._rediscover_forever(tasks)

    async def _rediscover_forever(self, tasks: asyncio.TaskGroup) -> None:
        """SMI CRDs installed, upgraded or removed after start: switch the informer of that kind.

        The new informer syncs before it replaces the old one, so the kind never looks empty
        in between (no config flap).
        """
        while True:
            await asyncio.sleep(self.rediscover_seconds)
            try:
                resources = await discover(self.api)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - try again next period
                log.info("re-discovery failed: %s", exc)
                continue
            for fieldname, resource in resources.items():
                if resource == self.informers[fieldname].resource:
                    continue
                log.info("%s: now watching %s", fieldname, resource.api_version if resource else "nothing "
                         "(no supported version served)")
                informer = self._informer(resource)
                task = tasks.create_task(informer.run())
                try:
                    async with asyncio.timeout(SYNC_TIMEOUT_SECONDS):  # (not wait_for: see reconcile._write_loop)
                        await informer.synced.wait()
                except TimeoutError:
                    task.cancel()
                    log.warning("%s: the new version did not sync; keeping the old watch", fieldname)
                    continue
                old = self._tasks.get(fieldname)
                self.informers[fieldname], self._tasks[fieldname] = informer, task
                if old is not None:
                    old.cancel()
                self.on_change()

    def snapshot(self) -> dict[str, list[dict]]:
        out: dict[str, list[dict]] = {f: [] for f in (*STATE_FIELDS, *POD_GROUPS)}
        for fieldname, informer in self.informers.items():
            for obj in informer.cache.values():
                target = self.filter.route(fieldname, obj)
                if target is not None:
                    out[target].append(obj)
        return out

    def mesh_pods(self, group: str) -> list[dict]:
        """``snapshot()[group]`` for a POD_GROUPS key: only the Pods cache is read (the API asks on
        every /api/status/nodes; a whole snapshot routes every cached object)."""
        informer = self.informers.get("pods")
        if informer is None:
            return []
        return [obj for obj in list(informer.cache.values()) if self.filter.route("pods", obj) == group]

    def raw(self, fieldname: str, namespace: str, name: str) -> dict | None:
        informer = self.informers.get(fieldname)
        return informer.cache.get((namespace, name)) if informer else None

    def uid(self, kind: str, namespace: str, name: str) -> str | None:
        """The uid of a cached object (Events point at it), by kind."""
        fieldname = _FIELD_OF_KIND.get(kind)
        obj = self.raw(fieldname, namespace, name) if fieldname else None
        return ((obj or {}).get("metadata") or {}).get("uid")

    def api_versions(self) -> dict[str, str]:
        """kind → the apiVersion watched (the version discovered), under ``Kind.group`` too; a bare
        kind two groups share (TCPRoute, UDPRoute) means SMI's."""
        out: dict[str, str] = {}
        for fieldname, (group, kind) in FIELDS.items():
            informer = self.informers.get(fieldname)
            if informer is not None and informer.resource:
                out[f"{kind}.{group}" if group else kind] = informer.resource.api_version
                out.setdefault(kind, informer.resource.api_version)
        return out


# ``Kind`` (the first field of that kind: SMI's for TCPRoute/UDPRoute) and ``Kind.group`` → field
_FIELD_OF_KIND: dict[str, str] = {}
for _f, (_group, _kind) in FIELDS.items():
    _FIELD_OF_KIND.setdefault(_kind, _f)
    _FIELD_OF_KIND[f"{_kind}.{_group}" if _group else _kind] = _f
