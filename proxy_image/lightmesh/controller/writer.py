"""Shadow Services: making the desired ones (from ``build``) exist, in a cluster or in local mode.

* :class:`KubeShadowWriter` (cluster, leader only): creates missing shadow Services, merge-patches
  the ones whose managed fields differ (labels, annotations, the spec keys we set), deletes
  orphans — Services in the mesh namespace that carry our ``managed-by`` label and are no longer
  desired. A Service without our label is never written, even on a name clash. Conflicts (409) are
  retried a bounded number of times; any other failure leaves the rest going, is counted
  (``shadow_service_writes_total{action="error"}``), reported as an object error (a failed write on
  the Service it shadows, a failed orphan delete on the orphan itself) and retried with per-object
  backoff (``retry.py``: 5 s doubling to 5 min, a probe every 5 s, everything due at once when one
  object recovers). Field manager ``lightmesh-controller``.
* :class:`LocalShadowStore` (local mode, ``--manifests``): shadow Services in memory with
  ClusterIPs from 127.1.0.0/16 (stable per shadow name: a hash of the name, linear probing on
  collisions; last octets .0, .1 and .255 skipped), persisted atomically to
  ``DIR/.lightmesh-shadows.json`` together with the last published config version and hash, so a
  restarted controller recovers the same ports, the same ClusterIPs and the same version.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import ipaddress
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from lightmesh import wire
from lightmesh.controller.model import ObjectError
from lightmesh.controller.retry import RetryBackoff
from lightmesh.controller.sources import BUILTIN, ApiError, KubeAPI, is_shadow

log = logging.getLogger("lightmesh.controller.writer")

FIELD_MANAGER = wire.MANAGED_BY_CONTROLLER
STATE_FILE_NAME = ".lightmesh-shadows.json"  # a dot-file: the file source skips it
LOCAL_SHADOW_NETWORK = "127.1.0.0/16"
CONFLICT_RETRIES = 3
WRITE_CONCURRENCY = 8
MAX_FAILURE_LINES = 10  # per apply: then one summary line (1,000 Services failing at once)


def _name(obj: dict) -> str:
    return (obj.get("metadata") or {}).get("name") or ""


def subset(want: Any, have: Any) -> bool:
    """``want`` is contained in ``have``: dict keys recursively, lists element-wise (same length).

    What the API server adds (defaults, clusterIP, status, managedFields) does not count as a
    difference; anything we set that differs does.
    """
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and subset(v, have[k]) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(subset(w, h) for w, h in zip(want, have))
    return want == have


def in_sync(want: dict, have: dict) -> bool:
    """``have`` (the cluster's) carries every field of ``want`` we own, and exactly its selector: an
    extra selector key (someone's edit) would match no proxy pod and blackhole the Service."""
    return subset(managed_part(want), have) and _selector(want) == _selector(have)


def _selector(service: dict) -> Any:
    return (service.get("spec") or {}).get("selector")


def managed_part(desired: dict) -> dict:
    """The fields of a shadow Service we own and compare."""
    meta = desired.get("metadata") or {}
    out: dict[str, Any] = {"metadata": {"labels": dict(meta.get("labels") or {})}, "spec": desired.get("spec") or {}}
    if meta.get("annotations"):
        out["metadata"]["annotations"] = dict(meta["annotations"])
    return out


class KubeShadowWriter:
    def __init__(self, api: KubeAPI, namespace: str, metrics=None, backoff: RetryBackoff | None = None) -> None:
        self.api = api
        self.namespace = namespace
        self.metrics = metrics
        self.resource = BUILTIN["services"]
        # shadow name → (the desired shadow, or the orphan not deleted; why it failed; "write"|"delete"),
        # for the last apply (objects waiting out their backoff keep their last failure)
        self.failed: dict[str, tuple[dict, str, str]] = {}
        # per shadow name: a failed write is retried with backoff, not on every round (see retry.py)
        self.backoff = backoff or RetryBackoff()

    def _count(self, action: str) -> None:
        if self.metrics is not None:
            self.metrics["shadow_service_writes_total"].labels(action=action).inc()

    def next_retry_in(self) -> float | None:
        """Seconds until a failed write is due again (None: none failed)."""
        return self.backoff.next_in()

    async def apply(self, desired: list[dict], existing: list[dict],
                    still_leader: Callable[[], bool] = lambda: True) -> int:
        """Make the mesh namespace's shadow Services match ``desired``; returns the failure count
        (objects waiting out their backoff, and writes not sent because ``still_leader()`` turned
        false meanwhile, included: another replica writes from then on).

        ``existing``: our shadow Services as the watch cache has them (label-filtered already).
        Up to ``WRITE_CONCURRENCY`` requests at a time (the first start creates them all).
        """
        have = {_name(s): s for s in existing if is_shadow(s)}
        wanted = {_name(d): d for d in desired}
        writes = {name: want for name, want in wanted.items() if not (name in have and in_sync(want, have[name]))}
        orphans = {name: have[name] for name in have if name not in wanted}
        # what is in sync (or gone) has nothing left to retry
        self.backoff.forget(set(writes) | set(orphans))
        due = self.backoff.select(sorted({*writes, *orphans}),
                                  lambda name: writes.get(name, "delete"))  # a changed want: due at once
        limit = asyncio.Semaphore(WRITE_CONCURRENCY)
        failed: dict[str, tuple[dict, str, str]] = {}
        lines = {"logged": 0, "more": 0, "recovered": 0}

        def fail(name: str, obj: dict, exc: Exception, action: str) -> None:
            self._count("error")
            why = " ".join(str(exc).split()) or type(exc).__name__
            failed[name] = (obj, why, action)
            verb = "deleting" if action == "delete" else "writing"
            # a line when an object starts failing or fails otherwise, not one per retry, and at most
            # MAX_FAILURE_LINES per apply (then a summary)
            if not self.backoff.failed(name, why, writes.get(name, "delete")):
                log.debug("%s shadow Service %s/%s failed again: %s", verb, self.namespace, name, why)
            elif lines["logged"] < MAX_FAILURE_LINES:
                lines["logged"] += 1
                log.error("%s shadow Service %s/%s failed: %s (retried with backoff)", verb, self.namespace, name,
                          why)
            else:
                lines["more"] += 1

        def done(name: str) -> None:
            if self.backoff.succeeded(name):
                lines["recovered"] += 1  # one line for all of them (below): an outage ends for hundreds
                log.debug("shadow Service %s/%s written after failing", self.namespace, name)

        async def write(name: str, want: dict, current: dict | None) -> int:
            async with limit:
                if not still_leader():
                    return 1  # stepped down while this batch ran: not ours to write any more
                try:
                    await (self._create(want) if current is None else self._patch(want))
                except Exception as exc:  # noqa: BLE001 - API or network error: counted, retried later
                    fail(name, want, exc, "write")
                    return 1
                done(name)
                return 0

        async def delete(name: str) -> int:
            async with limit:
                if not still_leader():
                    return 1
                try:
                    await self.api.request("DELETE", self.resource.path(self.namespace, name))
                    self._count("delete")
                    log.info("deleted orphan shadow Service %s/%s", self.namespace, name)
                except Exception as exc:  # noqa: BLE001 - counted, reported, retried later
                    if not (isinstance(exc, ApiError) and exc.status == 404):
                        fail(name, orphans[name], exc, "delete")
                        return 1
                done(name)
                return 0

        jobs = [write(name, want, have.get(name)) for name, want in sorted(writes.items()) if name in due]
        jobs += [delete(name) for name in sorted(orphans) if name in due]
        failures = sum(await asyncio.gather(*jobs)) if jobs else 0
        if lines["recovered"]:
            log.info("%d shadow Service(s) written after failing", lines["recovered"])
        if lines["more"]:
            log.error("%d more shadow Services started failing to be written (not logged one by one; "
                      "/api/topology/current lists them)", lines["more"])
        # the ones waiting out their backoff: still failed, for the reason of their last attempt
        for name in sorted({*writes, *orphans} - due):
            failed[name] = (writes.get(name) or orphans[name], self.backoff.reason(name) or "not written yet",
                            "write" if name in writes else "delete")
            failures += 1
        self.failed = failed
        return failures

    def write_errors(self) -> list[ObjectError]:
        """The last apply's failed writes, as errors of the Services they shadow (the topology API,
        the object_errors metric and Events report them; the mesh name does not resolve meanwhile);
        an orphan that could not be deleted, as an error of the shadow Service itself (its Service
        is gone; its mesh ports stay reserved while it exists, see ports.py)."""
        out = []
        for name, (obj, why, action) in sorted(self.failed.items()):
            labels = (obj.get("metadata") or {}).get("labels") or {}
            if action == "delete":
                ports = sorted({p.get("targetPort") for p in (obj.get("spec") or {}).get("ports") or []
                                if isinstance(p, dict) and isinstance(p.get("targetPort"), int)})
                of = (f"{labels.get(wire.LABEL_SHADOW_SERVICE_NAMESPACE, '?')}/"
                      f"{labels.get(wire.LABEL_SHADOW_SERVICE_NAME, '?')}")
                out.append(ObjectError(
                    "Service", self.namespace, name, "shadow Service",
                    f"this orphan shadow Service (of Service {of}, gone or no longer meshed) could not be deleted "
                    f"({why}); its mesh port(s) {', '.join(map(str, ports)) or '-'} stay reserved until it is "
                    f"(retried); delete it by hand if this persists"))
                continue
            out.append(ObjectError(
                "Service", labels.get(wire.LABEL_SHADOW_SERVICE_NAMESPACE, ""),
                labels.get(wire.LABEL_SHADOW_SERVICE_NAME, name), "shadow Service",
                f"its shadow Service {self.namespace}/{name} could not be written ({why}); its mesh name "
                f"does not resolve until it can (retried)"))
        return out

    async def _create(self, want: dict) -> None:
        body = copy.deepcopy(want)
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", "Service")
        body.setdefault("metadata", {})["namespace"] = self.namespace
        try:
            await self.api.request("POST", self.resource.path(self.namespace),
                                   params={"fieldManager": FIELD_MANAGER}, body=body)
            self._count("create")
            log.info("created shadow Service %s/%s", self.namespace, _name(want))
        except ApiError as exc:
            if exc.status != 409:
                raise
            # exists but not in our cache: ours (cache lagging) → patch; a user's → leave it alone
            current = await self.api.get(self.resource.path(self.namespace, _name(want)))
            if not is_shadow(current):
                raise ApiError(409, "NameTaken", f"Service {self.namespace}/{_name(want)} exists and is not "
                                                 f"managed by {FIELD_MANAGER}: not touching it") from None
            await self._patch(want)

    async def _patch(self, want: dict) -> None:
        path = self.resource.path(self.namespace, _name(want))
        for attempt in range(CONFLICT_RETRIES):
            try:
                current = await self.api.get(path)
                if not is_shadow(current):
                    raise ApiError(409, "NameTaken", f"Service {self.namespace}/{_name(want)} is not ours")
                if in_sync(want, current):
                    return
                patch = managed_part(want)
                # a merge patch keeps keys it does not name: selector keys added by others are removed
                theirs = _selector(current)
                if isinstance(theirs, dict) and isinstance(patch["spec"].get("selector"), dict):
                    patch["spec"] = {**patch["spec"], "selector": {
                        **{k: None for k in theirs if k not in patch["spec"]["selector"]}, **patch["spec"]["selector"]}}
                # optimistic concurrency: a concurrent writer makes this a 409, and we re-read
                patch["metadata"]["resourceVersion"] = (current.get("metadata") or {}).get("resourceVersion")
                if patch["metadata"]["resourceVersion"] is None:
                    del patch["metadata"]["resourceVersion"]
                await self.api.request("PATCH", path, params={"fieldManager": FIELD_MANAGER}, body=patch,
                                       content_type="application/merge-patch+json")
                self._count("update")
                log.info("updated shadow Service %s/%s", self.namespace, _name(want))
                return
            except ApiError as exc:
                if exc.status != 409 or exc.reason == "NameTaken" or attempt == CONFLICT_RETRIES - 1:
                    raise
                log.info("conflict updating shadow Service %s/%s: retrying", self.namespace, _name(want))


# =========================================================================== local mode


class LocalShadowStore:
    """Shadow Services without a cluster: in memory, ClusterIPs from loopback, persisted."""

    def __init__(self, state_file: str | Path, namespace: str = wire.DEFAULT_MESH_NAMESPACE,
                 network: str = LOCAL_SHADOW_NETWORK) -> None:
        self.state_file = Path(state_file)
        self.namespace = namespace
        self.network = ipaddress.ip_network(network)
        self.shadows: dict[str, dict] = {}
        self.last_config: dict[str, Any] = {}  # {"version": int, "hash": str} of the last published config
        self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("ignoring unreadable state file %s: %s", self.state_file, exc)
            return
        if not isinstance(data, dict):
            log.error("ignoring state file %s: not a JSON object", self.state_file)
            return
        shadows = data.get("shadows")
        used: set[str] = set()
        for shadow in shadows if isinstance(shadows, list) else []:
            # hand-edited files included: a shadow without a usable address is dropped (it gets a new
            # one), never kept with one nothing can serve (it would silently leave the mesh)
            name = _name(shadow) if isinstance(shadow, dict) and isinstance(shadow.get("metadata"), dict) else ""
            if not isinstance(name, str) or not name or not isinstance(shadow.get("spec"), dict):
                log.warning("state file %s: ignoring a shadow Service that is not one", self.state_file)
                continue
            address = self._ip_of(shadow)
            if not self._ours(address) or address in used:
                why = "already another's" if address in used else f"not an address of {self.network}"
                log.warning("state file %s: shadow Service %s has clusterIP %r, %s: it gets a new one",
                            self.state_file, name, address, why)
                continue
            used.add(address)
            self.shadows[name] = shadow
        config = data.get("config")
        if isinstance(config, dict) and isinstance(config.get("version"), int):
            self.last_config = {"version": config["version"], "hash": str(config.get("hash", ""))}
        log.info("recovered %d shadow Services from %s", len(self.shadows), self.state_file)

    @staticmethod
    def _ip_of(shadow: dict) -> str | None:
        return (shadow.get("spec") or {}).get("clusterIP")

    def _ours(self, address: Any) -> bool:
        """An address _allocate could have given (in the network, not .0, .1 or .255)."""
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else None
        except ValueError:
            return False
        return ip is not None and ip in self.network and ip.packed[-1] not in (0, 1, 255)

    def list(self) -> list[dict]:
        """The shadow Services, sorted by name. Shared, not copied: callers must not mutate them
        (the build is pure; copying 1,000 Services on every rebuild would cost more than it)."""
        return [s for _, s in sorted(self.shadows.items())]

    def _allocate(self, name: str, taken: set[str]) -> str:
        size = self.network.num_addresses
        start = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % size
        for step in range(size):
            address = self.network.network_address + (start + step) % size
            if address.packed[-1] in (0, 1, 255) or str(address) in taken:
                continue
            return str(address)
        raise RuntimeError(f"no free shadow ClusterIP left in {self.network}")

    def apply(self, desired: list[dict]) -> bool:
        """Make the in-memory shadows match ``desired``; True when anything changed (then persisted)."""
        wanted = {_name(d): d for d in desired}
        taken = {self._ip_of(s) for n, s in self.shadows.items() if n in wanted}
        result: dict[str, dict] = {}
        for name, want in sorted(wanted.items()):
            current = self.shadows.get(name)
            address = self._ip_of(current) if current else None
            if address is None:
                address = self._allocate(name, taken)
                taken.add(address)
            # shallow rebuild: the nested parts of ``want`` are not mutated, only replaced at this level
            meta = {**(want.get("metadata") or {}), "namespace": self.namespace}
            spec = {**(want.get("spec") or {}), "clusterIP": address, "clusterIPs": [address]}
            shadow = {"apiVersion": "v1", "kind": "Service", **want, "metadata": meta, "spec": spec}
            result[name] = shadow
        if result == self.shadows:
            return False
        self.shadows = result
        self.save()
        return True

    def remember_config(self, version: int, content_hash: str) -> None:
        if self.last_config != {"version": version, "hash": content_hash}:
            self.last_config = {"version": version, "hash": content_hash}
            self.save()

    def save(self) -> None:
        data = {"shadows": self.list(), "config": self.last_config}
        tmp = self.state_file.with_name(f".{self.state_file.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, self.state_file)  # atomic: a crash never leaves half a file
        except OSError as exc:
            log.error("cannot persist shadow Services to %s: %s", self.state_file, exc)
