"""Cluster DNS forwarding of the mesh domains, as a Pulumi dynamic resource with a restoring delete.

Why not a ``ConfigMapPatch`` on ``data.Corefile``: ``Corefile`` is a single string, so server-side apply
makes our field manager own the *whole* value, and deleting the patch removes the field — the
cluster is left without a Corefile and DNS breaks. Instead this resource:

* **create**: reads the DNS ConfigMap, remembers the original value of the key it touches in its
  state, writes the patched value (``mesh_components.coredns``) and rolls the DNS Deployment through
  a pod-template annotation carrying the hash of what was written;
* **update** (new DNS IP or domains, or drift): rewrites the block in place; keeps the remembered
  original if the value is still what we wrote, else takes what is there now (without our part) as
  the new original — a reset by a kubeadm upgrade or an EKS add-on update is the new baseline;
* **delete** (``pulumi destroy``): writes back the original byte for byte if nobody changed the value
  since we wrote it; otherwise removes only our part (their edits survive), then rolls again.

**Drift** (someone rewrote the value and dropped or changed our part): ``read`` (``pulumi refresh``)
reports the hash of our part as found live (``block_hash``: ``None`` when missing), and ``diff``
(every ``pulumi preview`` / ``up``) compares the live value with what we wrote and asks for an
update when it differs, so ``pulumi up`` puts the block back (:func:`drift`, :func:`diff_props`).

**Which cluster**: the patcher reaches the cluster through ``kubeconfig`` or, by default, the ambient
kubeconfig and its *current context*, which can point at another cluster by the next ``pulumi up``
(``kubectx prod``). So create records the cluster's identity in the state (``cluster_id``: the
``kube-system`` Namespace's UID, stable and unique per cluster). ``diff`` and ``read`` look at the live
DNS config only in that cluster (elsewhere they fall back to the recorded state: no drift is claimed
from another cluster's config), and ``update`` and ``delete`` refuse to write to another one
(:class:`WrongClusterError`). States written before the identity was recorded cannot be verified:
no live check in ``diff`` and ``read``; ``update`` and ``delete`` proceed as before, and ``update``
records the identity.

Styles (:class:`DnsStyle`): ``corefile`` (our block appended to ``Corefile``), ``coredns-custom``
(our own ``lightmesh.server`` key in the ``coredns-custom`` ConfigMap that k3s and AKS import; created
if missing, deleted on destroy if we created it), ``kube-dns`` (``stubDomains``), or ``auto``
(detected at deploy time from the DNS Deployment's ConfigMap volumes, as Traefik Mesh did).

The create/update/delete logic are plain functions over a small :class:`DnsClient` protocol, tested
with an in-memory client; :class:`LightkubeDnsClient` is the thin Kubernetes adapter. Under Pulumi
mocks (tests, offline rendering) nothing here runs: the resource is only registered.
"""

import dataclasses
import json
from enum import Enum
from typing import Any, Callable, Optional, Protocol, Sequence

import pulumi
import pulumi.dynamic

from mesh_components import coredns

ROLL_ANNOTATION = "lightmesh.io/dns-config-hash"
COREDNS_DEPLOYMENTS = ("coredns", "rke2-coredns-rke2-coredns")
KUBE_DNS_DEPLOYMENT = "kube-dns"
CUSTOM_CONFIGMAP = "coredns-custom"
#: ``block_hash`` of a value whose part of ours cannot be read (damaged markers, stubDomains not JSON).
DAMAGED = "damaged"


class DnsStyle(str, Enum):
    """How the cluster DNS is told to forward the mesh domains."""

    AUTO = "auto"
    """Detect from the DNS Deployment at deploy time."""
    COREFILE = "corefile"
    """Append a marker-delimited block to the CoreDNS Corefile (kubeadm, EKS, ...)."""
    COREDNS_CUSTOM = "coredns-custom"
    """Add a ``lightmesh.server`` key to the ``coredns-custom`` ConfigMap (k3s, AKS)."""
    KUBE_DNS = "kube-dns"
    """Add stubDomains to the kube-dns ConfigMap (GKE with kube-dns)."""


class WrongClusterError(RuntimeError):
    """The kubeconfig now reaches another cluster than the one whose DNS this resource patched."""


class DnsClient(Protocol):
    """The few Kubernetes operations the patcher needs (all in the DNS namespace but ``cluster_id``)."""

    def cluster_id(self) -> str:
        """The cluster's identity: the ``kube-system`` Namespace's ``metadata.uid``."""

    def deployment_configmaps(self, namespace: str, name: str) -> Optional[list[str]]:
        """Names of ConfigMaps mounted by the Deployment's pod template; None if no such Deployment."""

    def get_configmap(self, namespace: str, name: str) -> Optional[dict[str, str]]:
        """The ConfigMap's data (``{}`` when it has none); None when the ConfigMap does not exist."""

    def set_configmap_key(self, namespace: str, name: str, key: str, value: Optional[str]) -> None:
        """Set ``data[key]`` (None removes the key); creates the ConfigMap when it does not exist."""

    def delete_configmap(self, namespace: str, name: str) -> None: ...

    def roll_deployment(self, namespace: str, name: str, value: str) -> None:
        """Set the pod-template annotation ``ROLL_ANNOTATION`` (a rolling restart when it changes)."""


@dataclasses.dataclass(frozen=True)
class Target:
    style: DnsStyle
    deployment: str
    configmap: str
    key: str


def detect_target(client: DnsClient, namespace: str, style: DnsStyle) -> Target:
    """Which Deployment, ConfigMap and key to patch for ``style`` (``auto`` detects)."""
    style = DnsStyle(style)
    for name in COREDNS_DEPLOYMENTS:
        mounted = client.deployment_configmaps(namespace, name)
        if mounted is None:
            continue
        if style in (DnsStyle.AUTO, DnsStyle.COREDNS_CUSTOM) and (
                CUSTOM_CONFIGMAP in mounted or style is DnsStyle.COREDNS_CUSTOM):
            return Target(DnsStyle.COREDNS_CUSTOM, name, CUSTOM_CONFIGMAP, coredns.CUSTOM_SERVER_KEY)
        if style in (DnsStyle.AUTO, DnsStyle.COREFILE):
            corefile_maps = [m for m in mounted if m != CUSTOM_CONFIGMAP]
            return Target(DnsStyle.COREFILE, name, corefile_maps[0] if corefile_maps else "coredns", "Corefile")
    if style in (DnsStyle.AUTO, DnsStyle.KUBE_DNS):
        mounted = client.deployment_configmaps(namespace, KUBE_DNS_DEPLOYMENT)
        if mounted is not None:
            return Target(DnsStyle.KUBE_DNS, KUBE_DNS_DEPLOYMENT, mounted[0] if mounted else "kube-dns", "stubDomains")
    wanted = "CoreDNS" if style in (DnsStyle.COREFILE, DnsStyle.COREDNS_CUSTOM) else "CoreDNS or kube-dns"
    raise coredns.CorefileError(
        f"no {wanted} Deployment found in namespace {namespace!r} (looked for "
        f"{', '.join(COREDNS_DEPLOYMENTS + (KUBE_DNS_DEPLOYMENT,))}); set dns_namespace, or patch_coredns "
        "false and forward the mesh domains to the mesh DNS Service yourself")


def _patched(target: Target, current: Optional[str], domains: Sequence[str], dns_ip: str,
             old_domains: Sequence[str]) -> str:
    if target.style is DnsStyle.COREFILE:
        if current is None:
            raise coredns.CorefileError(f"ConfigMap {target.configmap} has no Corefile key")
        return coredns.patch_corefile(current, domains, dns_ip)
    if target.style is DnsStyle.COREDNS_CUSTOM:
        return coredns.render_server_block(domains, dns_ip)  # conflicts: _check_custom_conflicts
    return coredns.patch_stub_domains(coredns.restore_stub_domains(current, old_domains), domains, dns_ip)


def _stripped(target: Target, current: Optional[str], domains: Sequence[str]) -> Optional[str]:
    if target.style is DnsStyle.COREFILE:
        return None if current is None else coredns.restore_corefile(current)
    if target.style is DnsStyle.COREDNS_CUSTOM:
        return None
    return coredns.restore_stub_domains(current, domains)


def _has_ours(target: Target, current: Optional[str], domains: Sequence[str]) -> bool:
    if current is None:
        return False
    if target.style is DnsStyle.COREDNS_CUSTOM:
        return True  # our own key: whatever is there was not written by someone else's tooling
    if target.style is DnsStyle.COREFILE:
        return coredns.find_block(current) is not None
    return coredns.restore_stub_domains(current, domains) != coredns.restore_stub_domains(current, [])


def _check_custom_conflicts(client: DnsClient, namespace: str, target: Target, data: Optional[dict[str, str]],
                            domains: Sequence[str]) -> None:
    """coredns-custom style: CoreDNS imports every ``*.server`` key of the ConfigMap next to its own
    Corefile, so a mesh zone one of them (or the Corefile) already serves would make it refuse the
    whole configuration: the block Traefik Mesh leaves on AKS (``traefik.mesh.server``) is that case."""
    if target.style is not DnsStyle.COREDNS_CUSTOM:
        return
    for key, value in sorted((data or {}).items()):
        if key != target.key and key.endswith(".server") and isinstance(value, str):
            coredns.check_conflicts(value, domains, where=f"ConfigMap {namespace}/{target.configmap} key {key!r}")
    for name in client.deployment_configmaps(namespace, target.deployment) or ():
        if name == target.configmap:
            continue
        corefile = (client.get_configmap(namespace, name) or {}).get("Corefile")
        if isinstance(corefile, str):
            coredns.check_conflicts(corefile, domains, where=f"the Corefile of ConfigMap {namespace}/{name}")


def _baseline(target: Target, current: Optional[str], domains: Sequence[str]) -> Optional[str]:
    """What delete should give back for ``current``: the value exactly as found, or without our
    block or keys when some are already there (state lost and re-installed, or a drifted block)."""
    return _stripped(target, current, domains) if _has_ours(target, current, domains) else current


def _target(state: dict[str, Any]) -> Target:
    return Target(DnsStyle(state["style"]), state["deployment"], state["configmap"], state["key"])


def same_cluster(client: DnsClient, state: dict[str, Any]) -> Optional[bool]:
    """Whether ``client`` reaches the cluster ``state`` was written in: None when the state records no
    identity (written before it was recorded: cannot be verified). Errors reaching the cluster propagate."""
    recorded = state.get("cluster_id")
    if not recorded:
        return None
    return client.cluster_id() == recorded


_DELETE_HINT = " (a delete uses the kubeconfig recorded at the last create or update, else the ambient one)"


def check_cluster(client: DnsClient, state: dict[str, Any], action: str) -> str:
    """The live cluster's identity, after checking it is the recorded one (when one is recorded);
    raises :class:`WrongClusterError` before anything is written otherwise."""
    live = client.cluster_id()
    recorded = state.get("cluster_id")
    if recorded and live != recorded:
        raise WrongClusterError(
            f"refusing to {action} the cluster DNS patch of {state['namespace']}/{state['configmap']}: the "
            f"kubeconfig (the kubeconfig input, else the ambient KUBECONFIG / ~/.kube/config current context) "
            f"now points at another cluster than the one this stack patched (this stack patched the cluster "
            f"whose kube-system Namespace has uid {recorded}; the kubeconfig reaches the one with uid {live}); "
            f"nothing was written. Switch the kubeconfig context back to the cluster this stack patched, or "
            f"pass that cluster's kubeconfig in the kubeconfig input{_DELETE_HINT if action == 'delete' else ''}. "
            f"If that cluster no longer exists, remove this resource from the stack with pulumi state delete")
    return live


def create(client: DnsClient, namespace: str, style: str, domains: Sequence[str], dns_ip: str) -> dict[str, Any]:
    """Patch the cluster DNS; return the state needed to update and to restore it (with the identity of
    the cluster patched, ``cluster_id``)."""
    cluster_id = client.cluster_id()
    target = detect_target(client, namespace, DnsStyle(style))
    data = client.get_configmap(namespace, target.configmap)
    if data is None and target.style is not DnsStyle.COREDNS_CUSTOM:
        raise coredns.CorefileError(f"ConfigMap {namespace}/{target.configmap} does not exist")
    current = (data or {}).get(target.key)
    # A block or keys of ours already present (state lost, re-install) are not part of the original;
    # otherwise keep the value exactly as found, so delete can give it back byte for byte.
    original = _baseline(target, current, domains)
    _check_custom_conflicts(client, namespace, target, data, domains)
    written = _patched(target, current, domains, dns_ip, domains)
    if written != current:
        client.set_configmap_key(namespace, target.configmap, target.key, written)
        client.roll_deployment(namespace, target.deployment, coredns.block_hash(written))
    return {"style": target.style.value, "namespace": namespace, "deployment": target.deployment,
            "configmap": target.configmap, "key": target.key, "original": original, "written": written,
            "created_configmap": data is None, "domains": list(domains), "dns_ip": dns_ip,
            "cluster_id": cluster_id}


def update(client: DnsClient, state: dict[str, Any], domains: Sequence[str], dns_ip: str) -> dict[str, Any]:
    """New IP or domains, or drift: (re)write our part in place.

    The remembered original is kept while the value is still exactly what we wrote. If someone
    rewrote it since — a kubeadm upgrade or an EKS add-on update resetting the Corefile (our block
    gone), an edit — what they wrote, without our part, is the new original: delete gives back the
    reset or edited value, not the one from before it.

    Refuses (:class:`WrongClusterError`, nothing written) when the client reaches another cluster than
    the recorded one; a state without a recorded identity gets the live one.
    """
    cluster_id = check_cluster(client, state, "update")
    target = _target(state)
    data = client.get_configmap(state["namespace"], target.configmap)
    current = (data or {}).get(target.key)
    if current == state["written"]:
        original = state["original"]
    else:
        original = _baseline(target, current, state["domains"])
    _check_custom_conflicts(client, state["namespace"], target, data, domains)
    written = _patched(target, current, domains, dns_ip, state["domains"])
    if written != current:
        client.set_configmap_key(state["namespace"], target.configmap, target.key, written)
        client.roll_deployment(state["namespace"], target.deployment, coredns.block_hash(written))
    return {**state, "original": original, "written": written, "domains": list(domains), "dns_ip": dns_ip,
            "created_configmap": bool(state.get("created_configmap")) or data is None, "cluster_id": cluster_id}


def delete(client: DnsClient, state: dict[str, Any]) -> None:
    """Give the cluster DNS back: the original byte for byte, or (if edited since) ours removed.
    Refuses (:class:`WrongClusterError`, nothing written) when the client reaches another cluster than
    the recorded one; a state without a recorded identity proceeds as before."""
    if state.get("cluster_id"):
        check_cluster(client, state, "delete")
    ns = state["namespace"]
    target = _target(state)
    data = client.get_configmap(ns, target.configmap)
    if data is None:
        return  # already gone: nothing of ours is left to remove
    current = data.get(target.key)
    restored = state["original"] if current == state["written"] else _stripped(target, current, state["domains"])
    if restored != current:
        client.set_configmap_key(ns, target.configmap, target.key, restored)
    if state.get("created_configmap") and not {k for k in data if k != target.key}:
        client.delete_configmap(ns, target.configmap)
    client.roll_deployment(ns, target.deployment, coredns.block_hash(restored or ""))


# ------------------------------------------------------------------------------ drift
def _our_part(target: Target, value: Optional[str], domains: Sequence[str]) -> Optional[str]:
    """Our part of a DNS config value: the marker block (Corefile), the whole value (our own
    ``coredns-custom`` key), or the mesh domains' ``stubDomains`` entries (canonical JSON, so another
    tool reformatting the JSON is no drift); None when none of it is there. Raises
    :class:`coredns.CorefileError` when the value cannot be read (damaged markers, not JSON)."""
    if value is None:
        return None
    if target.style is DnsStyle.COREFILE:
        span = coredns.find_block(value)
        return None if span is None else value[span[0]:span[1]]
    if target.style is DnsStyle.COREDNS_CUSTOM:
        return value
    ours = coredns.mesh_stub_domains(value, domains)
    return json.dumps(ours, sort_keys=True) if ours else None


def _part_hash(target: Target, value: Optional[str], domains: Sequence[str]) -> Optional[str]:
    try:
        part = _our_part(target, value, domains)
    except coredns.CorefileError:
        return DAMAGED
    return None if part is None else coredns.block_hash(part)


def written_hash(state: dict[str, Any]) -> Optional[str]:
    """``block_hash`` of what we wrote (the value recorded after create and update)."""
    return _part_hash(_target(state), state["written"], state["domains"])


def live_hash(client: DnsClient, state: dict[str, Any]) -> Optional[str]:
    """``block_hash`` of our part as it is in the cluster now: None when it is missing (ConfigMap or
    key gone, block or entries dropped), :data:`DAMAGED` when it cannot be read. Errors reaching the
    cluster propagate."""
    data = client.get_configmap(state["namespace"], state["configmap"])
    return _part_hash(_target(state), (data or {}).get(state["key"]), state["domains"])


def drift(client: DnsClient, state: dict[str, Any]) -> Optional[str]:
    """None when the cluster DNS holds exactly the part we wrote; else ``"missing"`` (our block or
    entries are gone, e.g. the Corefile was reset) or ``"changed"`` (edited, or damaged). Other
    people's edits outside our part are no drift."""
    live = live_hash(client, state)
    if live == written_hash(state):
        return None
    return "missing" if live is None else "changed"


# ``kubeconfig`` counts (it never replaces): given later, on an existing stack, the update records it
# (and the cluster's identity), so destroy reaches the cluster patched, not the ambient context's.
_INPUTS = ("style", "dns_namespace", "domains", "dns_ip", "kubeconfig")
_REPLACING = ("style", "dns_namespace")


def diff_props(olds: dict[str, Any], news: dict[str, Any],
               connect: Callable[[Optional[str]], DnsClient]) -> tuple[list[str], list[str]]:
    """``(changed, replaces)`` for the dynamic provider's ``diff``.

    ``olds`` are the recorded outputs (inputs, ``state``, ``block_hash``), ``news`` the new inputs
    (values may be unknown during a preview), ``connect(kubeconfig)`` makes a client. Changed inputs
    decide alone (the update or replacement rewrites our part anyway). Otherwise the live DNS config
    is checked for drift; ``"state"`` in ``changed`` means it drifted and ``update`` must repair it.

    The live check is made only in the cluster the state was written in (``cluster_id``): a kubeconfig
    that reaches another cluster now (a context switch) or a state recording no identity (written before
    it was recorded) fall back to the recorded state, as an unreachable cluster does — another
    cluster's DNS config is never taken as drift, which would have the update write to it.
    """
    changed = [k for k in _INPUTS if olds.get(k) != news.get(k)]
    replaces = [k for k in _REPLACING if k in changed]
    state = olds.get("state")
    if changed or not state:
        return changed, replaces
    kubeconfig = news.get("kubeconfig")
    try:
        if kubeconfig is not None and not isinstance(kubeconfig, str):
            raise ValueError("kubeconfig not known yet")  # an unknown Output during preview
        if not state.get("cluster_id"):
            raise ValueError("the state records no cluster identity: cannot tell which cluster it patched")
        client = connect(kubeconfig)
        if not same_cluster(client, state):
            raise WrongClusterError("the kubeconfig reaches another cluster than the one this stack patched")
        drifted = drift(client, state) is not None
    except Exception:  # noqa: BLE001 - any failure to reach, identify or read the cluster
        # The cluster cannot be reached (or read, or is not the one patched) now: do not fail the preview
        # over a check. Fall back to what the state records — the inputs (unchanged, see above) and the
        # block hash the last `pulumi refresh` read (absent in states written before drift detection: no
        # drift then). `update` refuses to write to another cluster anyway.
        drifted = "block_hash" in olds and olds["block_hash"] != written_hash(state)
    return (["state"] if drifted else []), []


# ------------------------------------------------------------------------------ Kubernetes adapter
class LightkubeDnsClient:
    """:class:`DnsClient` over lightkube (kubeconfig contents, else the ambient configuration)."""

    def __init__(self, kubeconfig: Optional[str] = None) -> None:
        import lightkube

        config = read_kubeconfig(kubeconfig) if kubeconfig else None
        self._client = lightkube.Client(config=config, field_manager="lightmesh-dns")

    def cluster_id(self) -> str:
        from lightkube.resources.core_v1 import Namespace
        uid = self._client.get(Namespace, "kube-system").metadata.uid
        if not uid:
            raise RuntimeError("the kube-system Namespace has no metadata.uid: cannot identify the cluster")
        return uid

    def deployment_configmaps(self, namespace: str, name: str) -> Optional[list[str]]:
        from lightkube.resources.apps_v1 import Deployment
        try:
            dep = self._client.get(Deployment, name, namespace=namespace)
        except Exception as exc:
            if _status_code(exc) == 404:
                return None
            raise
        return [v.configMap.name for v in (dep.spec.template.spec.volumes or []) if v.configMap]

    def get_configmap(self, namespace: str, name: str) -> Optional[dict[str, str]]:
        from lightkube.resources.core_v1 import ConfigMap
        try:
            return dict(self._client.get(ConfigMap, name, namespace=namespace).data or {})
        except Exception as exc:
            if _status_code(exc) == 404:
                return None
            raise

    def set_configmap_key(self, namespace: str, name: str, key: str, value: Optional[str]) -> None:
        from lightkube.models.meta_v1 import ObjectMeta
        from lightkube.resources.core_v1 import ConfigMap
        from lightkube.types import PatchType
        if self.get_configmap(namespace, name) is None:
            self._client.create(ConfigMap(metadata=ObjectMeta(name=name, namespace=namespace), data={key: value}))
            return
        # A JSON merge patch of one key: every other key of the ConfigMap is left alone.
        self._client.patch(ConfigMap, name, {"data": {key: value}}, namespace=namespace, patch_type=PatchType.MERGE)

    def delete_configmap(self, namespace: str, name: str) -> None:
        from lightkube.resources.core_v1 import ConfigMap
        self._client.delete(ConfigMap, name, namespace=namespace)

    def roll_deployment(self, namespace: str, name: str, value: str) -> None:
        from lightkube.resources.apps_v1 import Deployment
        from lightkube.types import PatchType
        patch = {"spec": {"template": {"metadata": {"annotations": {ROLL_ANNOTATION: value}}}}}
        self._client.patch(Deployment, name, patch, namespace=namespace, patch_type=PatchType.MERGE)


def read_kubeconfig(kubeconfig: str) -> Any:
    """``kubeconfig`` (a kubeconfig file's contents) as a lightkube ``KubeConfig``.

    The contents hold credentials: an error says where or what shape, never quotes them (PyYAML's
    errors quote the offending line, which can be a token), and drops the cause that would.
    """
    import lightkube
    import yaml

    try:
        loaded = yaml.safe_load(kubeconfig)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ValueError(f"the kubeconfig is not valid YAML{where}") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"the kubeconfig must be a YAML mapping (a kubeconfig file's contents), "
                         f"got a YAML value of type {type(loaded).__name__}")
    try:
        return lightkube.KubeConfig.from_dict(loaded)
    except KeyError as exc:  # a key name is the file's structure, not its contents
        raise ValueError(f"the kubeconfig has no {exc.args[0]!r} section") from None
    except Exception as exc:  # noqa: BLE001 - its message could quote a value
        raise ValueError(f"the kubeconfig is not a valid kubeconfig ({type(exc).__name__} while reading "
                         f"it; its contents are not shown as they hold credentials)") from None


def _status_code(exc: Exception) -> Optional[int]:
    """HTTP status of a lightkube error: ``ApiError`` (a Kubernetes Status body) or the underlying
    HTTP client's status error (a 404 whose body is not a Status object)."""
    status = getattr(getattr(exc, "status", None), "code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return status


# ------------------------------------------------------------------------------ Pulumi dynamic resource
def update_props(olds: dict[str, Any], news: dict[str, Any], connect: Callable[[Optional[str]], DnsClient],
                 warn: Callable[[str], None]) -> dict[str, Any]:
    """The new ``state`` for the dynamic provider's ``update``.

    The ``kubeconfig`` input decides which cluster: unchanged, it must still reach the cluster patched
    (:func:`update` refuses another: a context switch). Changed, it is the stack saying where its mesh
    is now: a state that recorded no cluster adopts the one it reaches (given on an existing stack, as
    the upgrade notes say); a state that did, whose cluster the new kubeconfig does not reach, moved
    (the cluster was replaced, say): the new cluster is patched, and the old one gets its DNS back if
    its kubeconfig still reaches it (else a warning: nothing of it can be restored from here).
    """
    state = olds["state"]
    client = connect(news.get("kubeconfig"))
    if olds.get("kubeconfig") != news.get("kubeconfig") and state.get("cluster_id") \
            and client.cluster_id() != state["cluster_id"]:
        try:
            delete(connect(olds.get("kubeconfig")), state)  # checks that it reaches the old cluster
        except Exception as exc:  # noqa: BLE001 - gone, unreachable or another cluster: nothing to restore
            warn(f"the cluster DNS of the cluster this stack patched before (kube-system uid "
                 f"{state['cluster_id']}) was not restored: {exc}")
        return create(client, news["dns_namespace"], news["style"], news["domains"], news["dns_ip"])
    return update(client, state, news["domains"], news["dns_ip"])


class _Provider(pulumi.dynamic.ResourceProvider):
    def create(self, props: dict[str, Any]) -> pulumi.dynamic.CreateResult:
        client = LightkubeDnsClient(props.get("kubeconfig"))
        state = create(client, props["dns_namespace"], props["style"], props["domains"], props["dns_ip"])
        return pulumi.dynamic.CreateResult(f"{state['namespace']}/{state['configmap']}/{state['key']}",
                                           {**props, "state": state, "block_hash": written_hash(state)})

    def read(self, id_: str, props: dict[str, Any]) -> pulumi.dynamic.ReadResult:
        # `pulumi refresh`: record the hash of our part as found live (None when the block is gone), so
        # a reset shows as a change of `block_hash` and the next diff asks for the repairing update.
        # Only in the cluster the state was written in: another cluster's block (a context switch), or a
        # state recording no cluster (cannot be verified), keeps the recorded `block_hash`.
        if not props.get("state") or not props["state"].get("cluster_id"):
            return pulumi.dynamic.ReadResult(id_, props)
        client = LightkubeDnsClient(props.get("kubeconfig"))
        if not same_cluster(client, props["state"]):
            return pulumi.dynamic.ReadResult(id_, props)
        live = live_hash(client, props["state"])
        return pulumi.dynamic.ReadResult(id_, {**props, "block_hash": live})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.DiffResult:
        changed, replaces = diff_props(olds, news, LightkubeDnsClient)
        return pulumi.dynamic.DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> pulumi.dynamic.UpdateResult:
        state = update_props(olds, news, LightkubeDnsClient, pulumi.log.warn)
        return pulumi.dynamic.UpdateResult({**news, "state": state, "block_hash": written_hash(state)})

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        delete(LightkubeDnsClient(props.get("kubeconfig")), props["state"])


class ClusterDnsPatch(pulumi.dynamic.Resource, module="lightmesh", name="ClusterDnsPatch"):
    """Forwards the mesh domains from the cluster DNS to the mesh DNS; restores the DNS on delete."""

    def __init__(self, name: str, *, style: DnsStyle, dns_namespace: str, domains: Sequence[str],
                 dns_ip: pulumi.Input[str], kubeconfig: Optional[pulumi.Input[str]] = None,
                 opts: Optional[pulumi.ResourceOptions] = None) -> None:
        props = {"style": DnsStyle(style).value, "dns_namespace": dns_namespace, "domains": list(domains),
                 "dns_ip": dns_ip, "kubeconfig": pulumi.Output.secret(kubeconfig) if kubeconfig else None,
                 "state": None}
        super().__init__(_Provider(), name, props, opts)
