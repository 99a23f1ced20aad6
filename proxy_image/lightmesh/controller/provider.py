"""Topology + mesh ports → the proxy configuration (pure).

This module owns the translation to :mod:`lightmesh.config` (whose docstring defines what a proxy
does with it). It builds plain dicts and validates them once (``load_config_dict``), because
validating every element twice costs more than the whole translation at 5,000 Services.

Listeners (``settings.listen_mode``):

* ``node``: HTTP entry point ``http-<port>`` on ``[::]:<mesh port>`` (dual stack; the port table's, see
  :mod:`ports`) shared by every HTTP Service, routers matching the hosts ``<svc>.<ns>.<domain>`` for
  every domain and the shadow ClusterIP when known; TCP/UDP routes on ``[::]:<mesh port>``.
* ``shadow-ip``: every listener on the shadow Service's ClusterIP at the user Service's own port; a
  Service whose shadow has no ClusterIP yet is left out until it has one (not an error); HTTP
  routers there match any host.

Names (the ``service`` label users see in Grafana is the config service name):
``<ns>/<svc>:<port>`` for a Service port's HTTP service, router and TCP/UDP route — a split root's
weighted service keeps that name, its own pods (reached by requests its matches do not select) are
``<ns>/<svc>:<port>/pods``; middlewares ``<ns>/<svc>/<kind>``; allow-lists
``<ns>/<svc>/allow@<tt-ns>/<tt>``; a TrafficTarget whose destination pods are not all the port's
endpoints gets ``<ns>/<svc>:<port>@<tt-ns>/<tt>``.

Priorities (highest wins): Gateway API HTTPRoute rule 5000 + 100 × its rank (ACL mode: the rank's
deny router at that priority, its allowed combinations above it), split with matches 4000 (ACL
mode: the deny router of each split match; combinations at 4001 + specificity), split without
matches 3000 (+ 1 + specificity in ACL mode), TrafficTarget 2000 + specificity, plain Service
1000, ACL deny 1.

Middleware order: allow-list (or deny) first, so refused clients cost nothing and never count
against a rate limit, then rate limit, circuit breaker, request timeout, retry.

ACL mode: every HTTP Service port answers 403 unless a more specific router lets the request in:
one router per TrafficTarget match (alternatives are separate routers) with the allow-list of that
TrafficTarget's sources' pod IPs, forwarding to its destination pods only. These routers, and the
split and HTTPRoute ones below, ``fall_through``: a source one refuses is tried against the next
router that matches the request (TrafficTargets are additive), down to a router that answers 403. TCP/UDP routes accept only the sources of
TrafficTargets with a TCPRoute/UDPRoute rule covering the port (none → ``allowed_sources = []``).
A TrafficSplit is resolved in the same hop, straight to backend pods, so no second proxy checks
the backends' policy: the split itself must never let through more than every backend's
TrafficTargets allow. HTTP: each match that appears (same content) in the TrafficTargets of every
weighted backend becomes a split router (ANDed with the split's own matches: two regexes for the
path or one header become a list the proxy requires each of) whose allow-list is the sources
allowed by all backends (Traefik Mesh's intersection rule, here per match); requests no such router
admits are refused (a split with its own matches: those its matches select; the others are left
to the root's own routers).
A split without matches takes all of the root's traffic, so the root's own TrafficTarget routers
are not emitted. TCP/UDP: sources allowed on every weighted backend's port.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from math import gcd
from typing import Sequence

from lightmesh.annotations import SCHEME as SCHEME_KEY, TrafficType
from lightmesh.config import ConfigAssembler, ProxyConfig, content_hash, load_config_dict
from lightmesh.controller.model import ObjectError, Settings
from lightmesh.controller.ports import PortTable
from lightmesh.controller.shadow import shadow_index
from lightmesh.controller.topology import (MAX_WEIGHT, Endpoint, HTTPMatch, MeshRule, Service, ServicePort,
                                           Topology, TrafficSplit, _is_ip)

DENY = "deny"
# Node mode: every address of the proxy pod, IPv4 and IPv6 (the proxy falls back to 0.0.0.0 where
# the pod has no IPv6), so IPv6-only and dual-stack clusters reach the mesh ports too.
NODE_ADDRESS = "::"
_ANY = ("::", "0.0.0.0")

PRIORITY_DENY = 1
PRIORITY_SERVICE = 1000
PRIORITY_TARGET = 2000
PRIORITY_SPLIT = 3000
PRIORITY_SPLIT_MATCH = 4000
PRIORITY_ROUTE = 5000  # Gateway API rules: + RANK_STRIDE × their rank by the Gateway API's precedence
RANK_STRIDE = 100  # room below each rank for the ACL sub-routers of one match (+ their specificity)


def _bounded(name: str) -> str:
    """Config names are at most 253 characters; a TrafficTarget name alone may be 253: hash the tail."""
    if len(name) <= 253:
        return name
    return name[:240] + "-" + hashlib.sha256(name.encode()).hexdigest()[:12]


def _cidr(ip: str) -> str:
    return f"{ip}/128" if ":" in ip else f"{ip}/32"


def _url(scheme: str, ip: str, port: int) -> str:
    return f"{scheme}://[{ip}]:{port}" if ":" in ip else f"{scheme}://{ip}:{port}"


def _specificity(m: HTTPMatch) -> int:
    return (m.path_regex is not None) + bool(m.methods) + len(m.headers)


def _match_key(m: HTTPMatch) -> tuple:
    return (m.path_regex, m.methods, m.headers)


def _combine(a: HTTPMatch | None, b: HTTPMatch) -> HTTPMatch | None:
    """``a AND b`` as one match, or None when no request can match both (disjoint methods). Two
    path regexes, or two regexes for one header, become a list the proxy requires each of (RE2,
    which runs users' regexes, has no lookahead to say it in one)."""
    if a is None:
        return b
    path = a.path_regex if a.path_regex is not None else b.path_regex
    if a.path_regex is not None and b.path_regex is not None and a.path_regex != b.path_regex:
        parts = [r for p in (a.path_regex, b.path_regex) for r in (p if isinstance(p, tuple) else (p,))]
        path = tuple(dict.fromkeys(parts))
    methods = a.methods or b.methods
    if a.methods and b.methods:
        methods = tuple(sorted(set(a.methods) & set(b.methods)))
        if not methods:
            return None
    headers: dict[str, tuple[str, ...]] = {}
    for name, regex in (*a.headers, *b.headers):
        have = headers.setdefault(name, ())
        for one in regex if isinstance(regex, tuple) else (regex,):
            if one not in have:
                have += (one,)
        headers[name] = have
    return HTTPMatch(f"{a.name}&{b.name}", path, methods,
                     tuple(sorted((n, r[0] if len(r) == 1 else r) for n, r in headers.items())))


def _match(hosts: list[str], m: HTTPMatch | None) -> dict:
    out: dict = {"hosts": hosts}
    if m is not None:
        if m.path_regex is not None:
            out["path_regex"] = list(m.path_regex) if isinstance(m.path_regex, tuple) else m.path_regex
        if m.methods:
            out["methods"] = list(m.methods)
        if m.headers:
            out["headers"] = {n: list(r) if isinstance(r, tuple) else r for n, r in m.headers}
    return out


@dataclass
class _Sockets:
    """The proxy refuses two listeners on one socket: skip the second and report it."""

    used: dict[tuple[str, str, int], str]

    def claim(self, proto: str, address: str, port: int, what: str) -> str | None:
        for a in (address, *_ANY) if address not in _ANY else (address,):
            if (proto, a, port) in self.used:
                return self.used[(proto, a, port)]
        if address in _ANY:
            for (p, a, po), owner in self.used.items():
                if p == proto and po == port:
                    return owner
        self.used[(proto, address, port)] = what
        return None


# A destination a TrafficTarget authorises: (ServiceAccount "ns/name", its destination.port or None).
Destination = tuple[str, int | None]


def _authorised(e: Endpoint, destinations: set[Destination] | tuple) -> bool:
    """Whether a pod endpoint is a destination: it runs as a destination ServiceAccount and, where
    the TrafficTarget names a port, serves on that port (a named targetPort is resolved per pod, so
    the pods of one Service port may differ)."""
    return (e.service_account, None) in destinations or (e.service_account, e.port) in destinations


def _backend_scheme(backend: Service, root: Service) -> str:
    """How a split backend's pods are spoken to: the backend's own ``scheme`` annotation (Traefik
    Mesh went through the backend's router), else the root's (a gRPC canary annotated on its root
    only keeps h2c)."""
    return (backend if SCHEME_KEY in backend.mesh.sources else root).mesh.scheme.value


def _split_servers(split: TrafficSplit, port: int, topology: Topology) -> list[tuple[Endpoint, int, Service]]:
    """Backend endpoints with weights keeping each backend's share whatever its pod count, and the
    backend Service each belongs to (its ``scheme`` is how its pods are spoken to)."""
    return _weighted_endpoints([(b.service, port, b.weight) for b in split.backends], topology)


def _weighted_endpoints(backends: Sequence[tuple[str, int, int]], topology: Topology,
                        accounts: dict[tuple[str, int], set[Destination]] | None = None
                        ) -> list[tuple[Endpoint, int, Service]]:
    """(Service key, port, weight) backends → their endpoints with weights keeping each backend's
    share whatever its pod count, and the Service each belongs to. ``accounts`` (ACL mode): per
    (Service key, port), the destinations TrafficTargets authorise; only their pods are servers
    (a backend without any drops out, as one without ready pods does). A backend whose pods are
    all in their grace period (ServicePort.terminating) is used only when no backend has a ready
    one: its share goes to the others, as that of a backend without pods does."""
    groups: list[tuple[int, tuple[Endpoint, ...], Service]] = []
    terminating: list[bool] = []
    for key, port, weight in backends:
        backend = topology.services.get(key)
        bp = backend.port(port) if backend else None
        if bp is None or weight <= 0:
            continue
        endpoints = bp.endpoints
        if accounts is not None:
            allowed = accounts.get((key, port), ())
            endpoints = tuple(e for e in endpoints if _authorised(e, allowed))
        if endpoints:
            groups.append((weight, endpoints, backend))
            terminating.append(bp.terminating)
    if not all(terminating):
        groups = [g for g, t in zip(groups, terminating) if not t]
    if not groups:
        return []
    # exact: weight_b / n_b scaled by lcm(n_b); approximate when that overflows the weight range
    lcm = 1
    for _, eps, _ in groups:
        lcm = lcm * len(eps) // gcd(lcm, len(eps))
    divisor = 0
    for w, _, _ in groups:
        divisor = gcd(divisor, w)
    exact = [(w // divisor) * (lcm // len(eps)) for w, eps, _ in groups]
    if max(exact) <= MAX_WEIGHT:
        weights = exact
    else:
        total = sum(w for w, _, _ in groups)
        weights = [max(1, round(MAX_WEIGHT * w / total / len(eps))) for w, eps, _ in groups]
    out = []
    for (_, eps, svc), weight in zip(groups, weights):
        out.extend((e, weight, svc) for e in eps)
    return out


class ProviderCache:
    """What the previous build's translation made per HTTP Service port (the controller keeps one).

    Reused when the port's inputs are the same: the very same topology ``Service`` (the
    ``TopologyCache`` hands the same object back while its Service, EndpointSlices and the Pods are
    unchanged), the same listener, hosts, ACL mode and TrafficTargets (equal), and no TrafficSplit
    rooted at it (a split root depends on its backends: always translated again).
    """

    def __init__(self) -> None:
        self.entries: dict[tuple[str, int], tuple] = {}


class _Builder:
    def __init__(self, topology: Topology, ports: PortTable, shadow_services: Sequence[dict], settings: Settings,
                 cache: ProviderCache | None = None):
        self.cache = cache
        self.kept: dict[tuple[str, int], tuple] = {}
        self.t, self.ports, self.settings = topology, ports, settings
        self.shadows = shadow_index(shadow_services)
        self.entry_points: dict[str, dict] = {}
        self.entry_owner: dict[str, str] = {}
        self.routers: list[dict] = []
        self.services: list[dict] = []
        self.middlewares: dict[str, dict] = {}
        self.tcp: list[dict] = []
        self.udp: list[dict] = []
        self.errors: list[ObjectError] = []
        self.sockets = _Sockets({})
        self.acl = settings.acl

    # ----------------------------------------------------------------- helpers

    def shadow_ip(self, svc: Service) -> str | None:
        """The shadow Service's (primary) ClusterIP."""
        ips = self.shadow_ips(svc)
        return ips[0] if ips else None

    def shadow_ips(self, svc: Service) -> list[str]:
        """Every ClusterIP of the shadow Service (two on a dual-stack one), primary first."""
        shadow = self.shadows.get(svc.key)
        spec = shadow.get("spec") if isinstance(shadow, dict) else None
        if not isinstance(spec, dict):
            return []
        ips = spec.get("clusterIPs")
        if not isinstance(ips, list) or not ips:
            ips = [spec.get("clusterIP")]
        return [ip for ip in ips if isinstance(ip, str) and ip != "None" and _is_ip(ip)]

    def listener(self, svc: Service, p: ServicePort, mesh_port: int, proto: str) -> tuple[str, int] | None:
        """(address, port) to listen on, or None when the Service is not served (yet)."""
        if self.settings.listen_mode == "shadow-ip":
            ip = self.shadow_ip(svc)
            if ip is None:
                return None
            address, port = ip, p.port
        else:
            address, port = NODE_ADDRESS, mesh_port
        if proto == "http":
            name = f"http-{port}" if address == NODE_ADDRESS else f"http-{address}:{port}"
            owner = self.entry_owner.get(name)
            if owner is not None and (address == NODE_ADDRESS or owner == svc.key):
                return address, port  # node mode: shared by every HTTP Service, told apart by Host
            what = f"entry point {name}"
            if owner is not None:  # shadow-ip: two Services with one ClusterIP cannot share "any host"
                self.errors.append(ObjectError("Service", svc.namespace, svc.name, f"spec.ports[port={p.port}]",
                                               f"{address}:{port} is already used by {owner}; port not served"))
                return None
        else:
            what = f"{proto} route {svc.key}:{p.port}"
        clash = self.sockets.claim("udp" if proto == "udp" else "tcp", address, port, what)
        if clash:
            self.errors.append(ObjectError("Service", svc.namespace, svc.name, f"spec.ports[port={p.port}]",
                                           f"{address}:{port} is already used by {clash}; port not served"))
            return None
        if proto == "http":
            self.entry_points[name] = {"name": name, "address": address, "port": port}
            self.entry_owner[name] = svc.key
        return address, port

    def middleware(self, mw: dict) -> str:
        self.middlewares.setdefault(mw["name"], mw)
        return mw["name"]

    def router_maker(self, ep_name: str, hosts: list[str]):
        """``router(name, priority, service, middlewares, match, fall_through=False)`` adding a router
        on ``ep_name`` for ``hosts``."""
        def router(name: str, priority: int, service: str, middlewares: list[str], m: HTTPMatch | None,
                   fall_through: bool = False) -> None:
            made = {"name": _bounded(name), "entry_points": [ep_name], "match": _match(hosts, m),
                    "priority": priority, "service": service, "middlewares": middlewares}
            if fall_through:
                made["fall_through"] = True
            self.routers.append(made)
        return router

    def deny(self) -> str:
        """ACL mode's refusal (403)."""
        return self.middleware({"type": "deny", "name": DENY, "status_code": 403})

    def service_middlewares(self, svc: Service) -> list[str]:
        m, base, out = svc.mesh, svc.key, []
        if m.rate_limit is not None:
            out.append(self.middleware({"type": "rate_limit", "name": f"{base}/rate-limit",
                                        "average": m.rate_limit.average, "burst": m.rate_limit.burst}))
        if m.circuit_breaker_expression is not None:
            out.append(self.middleware({"type": "circuit_breaker", "name": f"{base}/circuit-breaker",
                                        "expression": m.circuit_breaker_expression}))
        if m.request_timeout_seconds is not None:
            out.append(self.middleware({"type": "request_timeout", "name": f"{base}/request-timeout",
                                        "seconds": m.request_timeout_seconds}))
        # retry-attempts counts every try, as Traefik's retry{attempts} does (2 = one retry); the
        # config's retry middleware counts the extra tries. 1 try is no retry at all.
        if m.retry_attempts is not None and m.retry_attempts > 1:
            out.append(self.middleware({"type": "retry", "name": f"{base}/retry", "attempts": m.retry_attempts - 1}))
        return out

    def allowed_ips(self, key: str, port: int, kind: TrafficType) -> tuple[set[str], set[Destination]]:
        """Source IPs TrafficTargets allow to Service ``key`` on ``port``, and the destination
        ServiceAccounts they cover."""
        ips: set[str] = set()
        accounts: set[Destination] = set()
        svc = self.t.services.get(key)
        p = svc.port(port) if svc else None
        for st in self.t.service_targets.get(key, ()):
            if port not in st.ports:
                continue
            tt = st.target
            if kind is TrafficType.HTTP:
                ok = bool(tt.http_matches)
            else:
                allowed = tt.tcp_ports if kind is TrafficType.TCP else tt.udp_ports
                ok = allowed is not None and (not allowed or port in allowed
                                              or (p is not None and p.target_port in allowed))
            if ok:
                ips.update(tt.source_ips)
                accounts.add((tt.destination, tt.destination_port))
        return ips, accounts

    def split_matches(self, split: TrafficSplit, port: int
                      ) -> list[tuple[HTTPMatch, set[str], dict[tuple[str, int], set[Destination]]]]:
        return self.backend_matches([(b.service, port) for b in split.backends if b.weight > 0])

    def backend_matches(self, backends: Sequence[tuple[str, int]]
                        ) -> list[tuple[HTTPMatch, set[str], dict[tuple[str, int], set[Destination]]]]:
        """HTTP matches every (Service, port) backend's TrafficTargets allow, each with the sources
        allowed by all of them (intersection across backends, union within one) and, per backend,
        the destination ServiceAccounts those TrafficTargets authorise for the match: only their
        pods may take the request (TrafficTargets of one match share a router, as for a Service)."""
        common: dict[tuple, tuple[HTTPMatch, set[str], dict]] | None = None
        for service, port in backends:
            here: dict[tuple, tuple[HTTPMatch, set[str], set[Destination]]] = {}
            for st in self.t.service_targets.get(service, ()):
                if port not in st.ports:
                    continue
                for m in st.target.http_matches:
                    entry = here.setdefault(_match_key(m), (m, set(), set()))
                    entry[1].update(st.target.source_ips)
                    entry[2].add((st.target.destination, st.target.destination_port))
            if common is None:
                common = {k: (m, ips, {(service, port): accts}) for k, (m, ips, accts) in here.items()}
            else:
                common = {k: (v[0], v[1] & here[k][1], {**v[2], (service, port): here[k][2]})
                          for k, v in common.items() if k in here}
        return [v for _, v in sorted((common or {}).items(), key=lambda kv: repr(kv[0]))]

    def backends_allowed(self, backends: Sequence[tuple[str, int]], kind: TrafficType
                         ) -> tuple[list[str], dict[tuple[str, int], set[Destination]]]:
        """TCP/UDP: the sources every (Service, port) backend's TrafficTargets allow, and per
        backend the destination ServiceAccounts they authorise."""
        allowed: set[str] | None = None
        accounts: dict[tuple[str, int], set[Destination]] = {}
        for key, port in backends:
            ips, accts = self.allowed_ips(key, port, kind)
            allowed = ips if allowed is None else allowed & ips
            accounts[(key, port)] = accts
        return sorted(_cidr(ip) for ip in allowed or ()), accounts

    # ----------------------------------------------------------------- HTTP

    def http_service(self, svc: Service, p: ServicePort) -> None:
        mesh_port = self.ports.http.get((svc.key, p.port))
        if mesh_port is None:
            return
        where = self.listener(svc, p, mesh_port, "http")
        if where is None:
            return
        address, port = where
        ep_name = f"http-{port}" if address == NODE_ADDRESS else f"http-{address}:{port}"
        if self.settings.listen_mode == "shadow-ip":
            hosts: list[str] = []
        else:
            hosts = [f"{svc.name}.{svc.namespace}.{d}" for d in self.settings.domains]
            hosts += self.shadow_ips(svc)  # a client may name the shadow by any of its addresses
        split = self.t.splits.get(svc.key)
        rules = self.t.rules_for(svc.key, p.port)
        if rules:
            self._routes(svc, p, ep_name, hosts, rules)
            return
        if self.cache is None or split is not None:
            self._http(svc, p, ep_name, hosts, split)
            return
        inputs = (where, tuple(hosts), self.acl, self.settings.listen_mode,
                  tuple((st.target, st.ports) for st in self.t.service_targets.get(svc.key, ())))
        hit = self.cache.entries.get((svc.key, p.port))
        if hit is None or hit[0] is not svc or hit[1] != inputs:
            services, routers = len(self.services), len(self.routers)
            self._http(svc, p, ep_name, hosts, split)
            made = self.routers[routers:]
            used = {name: self.middlewares[name] for r in made for name in r["middlewares"]}
            hit = (svc, inputs, self.services[services:], made, used)
        else:
            self.services.extend(hit[2])
            self.routers.extend(hit[3])
            for name, mw in hit[4].items():
                self.middlewares.setdefault(name, mw)
        self.kept[(svc.key, p.port)] = hit

    def _http(self, svc: Service, p: ServicePort, ep_name: str, hosts: list[str], split: TrafficSplit | None
              ) -> None:
        scheme = svc.mesh.scheme.value
        mws = self.service_middlewares(svc)
        base = f"{svc.key}:{p.port}"
        own = base if split is None else f"{base}/pods"

        router = self.router_maker(ep_name, hosts)

        pods_needed = split is None or split.http_matches is not None or self.acl
        if pods_needed:
            self.services.append({"name": own, "servers": [{"url": _url(scheme, e.ip, e.port)} for e in p.endpoints]})
        if split is not None:
            # each backend's pods in the backend's own scheme (TLS pods behind a plain root, as
            # Traefik Mesh reached them through the backend's own router)
            servers = [{"url": _url(_backend_scheme(b, svc), e.ip, e.port), "weight": w}
                       for e, w, b in _split_servers(split, p.port, self.t)]
            self.services.append({"name": base, "servers": servers, "load_balancer": "weighted"})
            if not self.acl:
                if split.http_matches is None:
                    router(base, PRIORITY_SPLIT, base, mws, None)
                else:
                    for i, m in enumerate(split.http_matches):
                        router(f"{base}/split/{i}", PRIORITY_SPLIT_MATCH + _specificity(m), base, mws, m)
            else:
                # One hop straight to backend pods: a request passes the split only where every
                # weighted backend's TrafficTargets allow that source for a match covering it.
                # Matches common to all backends (same content) become split routers, ANDed with
                # the split's own matches; anything else is refused (never more than a backend allows).
                # Only backend pods whose ServiceAccount those TrafficTargets name as destination
                # take the request (a backend's other pods are not authorised). A source one split
                # router refuses falls through to the next that matches; a request the split's own
                # matches select that none admits is refused at their priority (it is split traffic:
                # the root's own pods are not the place for it).
                n = 0
                base_priority = PRIORITY_SPLIT if split.http_matches is None else PRIORITY_SPLIT_MATCH
                for i, own_match in enumerate(split.http_matches or ()):
                    router(f"{base}/split/{i}/deny", PRIORITY_SPLIT_MATCH, own, [self.deny()], own_match)
                for j, (m, ips, accounts) in enumerate(self.split_matches(split, p.port)):
                    allow = self.middleware({"type": "allow_list", "name": f"{base}/split-allow/{j}",
                                             "source_ranges": [_cidr(ip) for ip in sorted(ips)]})
                    authorised = [{"url": _url(_backend_scheme(b, svc), e.ip, e.port), "weight": w} for e, w, b in _weighted_endpoints(
                        [(b.service, p.port, b.weight) for b in split.backends], self.t, accounts)]
                    target = base
                    if authorised != servers:
                        target = f"{base}/split@{j}"
                        self.services.append({"name": target, "servers": authorised, "load_balancer": "weighted"})
                    for own_match in split.http_matches or (None,):
                        both = _combine(own_match, m)
                        if both is None:
                            continue
                        router(f"{base}/split/{n}", base_priority + 1 + min(_specificity(both), 998), target,
                               [allow, *mws], both, fall_through=True)
                        n += 1
        if not self.acl:
            if split is None or split.http_matches is not None:
                router(base if split is None else f"{base}/pods", PRIORITY_SERVICE, own, mws, None)
            return
        router(f"{base}/deny", PRIORITY_DENY, own, [self.deny()], None)
        if split is not None and split.http_matches is None:
            return  # every request to the root is split traffic: the split routers decide
        # One router per TrafficTarget match and destination: TrafficTargets share a router only
        # when both their match and their destination pods are the same (their sources merged:
        # one TrafficTarget per client on one route group stays one router), so no source reaches
        # pods another TrafficTarget authorises. The routers fall through: a source one refuses is
        # tried against the next that matches the request, so TrafficTargets are additive (SMI)
        # where their matches overlap; the deny router answers when none admits it.
        groups: dict[tuple, tuple[HTTPMatch, tuple[Endpoint, ...], list]] = {}
        grouped: set[tuple] = set()  # (group key, TrafficTarget key): a set, one TrafficTarget per client scales
        for st in self.t.service_targets.get(svc.key, ()):
            tt = st.target
            if p.port not in st.ports:
                continue
            dest = tuple(e for e in p.endpoints if _authorised(e, {(tt.destination, tt.destination_port)}))
            for m in tt.http_matches:
                key = (_match_key(m), dest)
                entry = groups.setdefault(key, (m, dest, []))
                if (key, tt.key) not in grouped:
                    grouped.add((key, tt.key))
                    entry[2].append(tt)
        made: set[str] = set()
        for n, (m, dest, tts) in enumerate(groups.values()):
            label = "@".join(tt.key for tt in tts)  # "+" is not allowed in config names
            if len(dest) == len(p.endpoints):
                target_service = own
            else:
                target_service = _bounded(f"{base}@{label}")
                if target_service not in made:
                    made.add(target_service)
                    self.services.append({"name": target_service,
                                          "servers": [{"url": _url(scheme, e.ip, e.port)} for e in dest]})
            ips = sorted(set().union(*(tt.source_ips for tt in tts)))
            allow = self.middleware({"type": "allow_list", "name": _bounded(f"{svc.key}/allow@{label}"),
                                     "source_ranges": [_cidr(ip) for ip in ips]})
            # (specificity capped: a match of a thousand headers must not outrank a split's deny router)
            router(f"{base}/tt/{label}/{n}", PRIORITY_TARGET + min(_specificity(m), 999), target_service,
                   [allow, *mws], m, fall_through=True)

    def _routes(self, svc: Service, p: ServicePort, ep_name: str, hosts: list[str], rules: Sequence[MeshRule]
                ) -> None:
        """A Service port with Gateway API HTTPRoute rules attached: one router per rule match to
        the rule's weighted backends; a request matching no rule finds no router (404), or the
        deny router (403) in ACL mode. In ACL mode a rule's match is ANDed with each HTTP match
        that every backend's TrafficTargets allow, with the sources allowed by all of them; those
        routers fall through to one another, then to a router at the match's own rank that answers
        403: ACL mode refuses a request, it never hands it to a rule ranked below."""
        mws = self.service_middlewares(svc)
        base = f"{svc.key}:{p.port}"

        router = self.router_maker(ep_name, hosts)

        own = f"{base}/pods"
        if self.acl:
            self.services.append({"name": own, "servers": [{"url": _url(svc.mesh.scheme.value, e.ip, e.port)}
                                                           for e in p.endpoints]})
            router(f"{base}/deny", PRIORITY_DENY, own, [self.deny()], None)
        # The Gateway API's precedence across every rule on this port: a rank per match, larger first;
        # ties keep the rules' order (oldest route, then namespace/name, then rule and match index).
        ordered = sorted(((p, n, j) for n, rule in enumerate(rules) for j, p in enumerate(rule.precedence)),
                         key=lambda e: (tuple(-x for x in e[0]), e[1], e[2]))
        rank = {(n, j): len(ordered) - pos for pos, (_, n, j) in enumerate(ordered)}
        for n_rule, rule in enumerate(rules):
            label = f"{base}/route/{rule.route}/{rule.index}"
            service = _bounded(label)
            weighted = _weighted_endpoints([(b.service, b.port, b.weight) for b in rule.backends if b.service],
                                           self.t)
            extra = []
            first = []  # before the Service's own middlewares: the refusal (ACL mode: a refusal comes first)
            refused = not any(b.service and b.weight > 0 for b in rule.backends)
            if not weighted and not refused:
                # valid backends, none with a ready endpoint now (scaled to zero, rolling out): a
                # service without servers, which the proxy answers 503, as for any Service
                self.services.append({"name": service, "servers": []})
            elif refused:  # the Gateway API's answer when no backend can take the request
                service = f"{base}/pods" if self.acl else base
                if not self.acl and not any(s["name"] == base for s in self.services):
                    self.services.append({"name": base, "servers": []})
                # GRPCRoute: UNAVAILABLE, which gRPC clients read from 503 (a 500 reads as UNKNOWN)
                first.append(self.middleware({"type": "deny", "name": "route-no-backend-grpc", "status_code": 503}
                                             if rule.grpc else
                                             {"type": "deny", "name": "route-no-backend", "status_code": 500}))
            else:
                self.services.append({"name": service, "load_balancer": "weighted", "servers": [
                    {"url": _url("h2c" if rule.grpc else b.mesh.scheme.value, e.ip, e.port), "weight": w}
                    for e, w, b in weighted]})
            if rule.timeout_seconds is not None:
                extra.append(self.middleware({"type": "request_timeout", "name": _bounded(f"{label}/timeout"),
                                              "seconds": rule.timeout_seconds}))
            for kind, edits in (("request_headers", rule.header_edits), ("response_headers", rule.response_edits)):
                if edits is not None:
                    set_, add, remove = edits
                    extra.append(self.middleware({"type": kind, "name": _bounded(f"{label}/{kind}"),
                                                  "set": dict(set_), "add": dict(add), "remove": list(remove)}))
            # ACL: (a match the backends allow, its allow-list, the service of its authorised pods)
            allowed: list[tuple[HTTPMatch, str, str]] = []
            if self.acl and not refused:
                live = sorted({(b.service, b.port) for b in rule.backends if b.service and b.weight > 0})
                for n, (tm, ips, accounts) in enumerate(self.backend_matches(live)):
                    target = service
                    if weighted:
                        authorised = _weighted_endpoints([(b.service, b.port, b.weight) for b in rule.backends
                                                          if b.service], self.t, accounts)
                        if authorised != weighted:
                            target = _bounded(f"{label}/acl@{n}")
                            self.services.append({"name": target, "load_balancer": "weighted", "servers": [
                                {"url": _url("h2c" if rule.grpc else b.mesh.scheme.value, e.ip, e.port), "weight": w}
                                for e, w, b in authorised]})
                    allowed.append((tm, self.middleware({"type": "allow_list", "name": _bounded(f"{label}/allow/{n}"),
                                                         "source_ranges": [_cidr(ip) for ip in sorted(ips)]}), target))
            for j, m in enumerate(rule.matches):
                priority = PRIORITY_ROUTE + RANK_STRIDE * rank[(n_rule, j)]
                if not self.acl or refused:
                    router(f"{label}/{j}", priority, service, [*first, *mws, *extra], m)
                    continue
                # ACL mode: one router per match the backends' TrafficTargets allow, all within this
                # match's rank, above the router that refuses the rest of the match (ACL filters
                # requests; it never re-ranks the rules)
                router(f"{label}/{j}/deny", priority, own, [self.deny()], m)
                for n, (tm, allow, target) in enumerate(allowed):
                    both = _combine(m, tm)
                    if both is not None:
                        router(f"{label}/{j}/{n}", priority + 1 + min(_specificity(tm), RANK_STRIDE - 2), target,
                               [allow, *mws, *extra], both, fall_through=True)

    # ----------------------------------------------------------------- TCP / UDP

    def l4_service(self, svc: Service, p: ServicePort) -> None:
        kind = svc.traffic_type
        mesh_port = (self.ports.tcp if kind is TrafficType.TCP else self.ports.udp).get((svc.key, p.port))
        if mesh_port is None:
            return
        where = self.listener(svc, p, mesh_port, kind.value)
        if where is None:
            return
        address, port = where
        split = self.t.splits.get(svc.key)
        rules = self.t.rules_for(svc.key, p.port)
        allowed: list[str] | None = None
        if rules or split is not None:
            # a Gateway API TCPRoute/UDPRoute (its first rule's weighted backends) or a TrafficSplit
            live = ([(b.service, b.port, b.weight) for b in rules[0].backends if b.service] if rules else
                    [(b.service, p.port, b.weight) for b in split.backends])
            accounts = None
            if self.acl:  # sources every weighted backend's TrafficTargets allow, to authorised pods only
                allowed, accounts = self.backends_allowed([(k, bp) for k, bp, w in live if w > 0], kind)
            servers = [{"address": e.ip, "port": e.port, "weight": w}
                       for e, w, _ in _weighted_endpoints(live, self.t, accounts)]
        else:
            endpoints = p.endpoints
            if self.acl:
                ips, accounts = self.allowed_ips(svc.key, p.port, kind)
                allowed = sorted(_cidr(ip) for ip in ips)
                endpoints = tuple(e for e in endpoints if _authorised(e, accounts))
            servers = [{"address": e.ip, "port": e.port} for e in endpoints]
        route = {"name": f"{svc.key}:{p.port}", "address": address, "port": port, "servers": servers}
        if allowed is not None:
            route["allowed_sources"] = allowed
        (self.tcp if kind is TrafficType.TCP else self.udp).append(route)

    # ----------------------------------------------------------------- all

    def build(self, version: int, assembler: ConfigAssembler | None = None) -> ProxyConfig:
        for svc in self.t.services.values():
            for p in svc.ports:
                if svc.traffic_type is TrafficType.HTTP:
                    self.http_service(svc, p)
                else:
                    self.l4_service(svc, p)
        if self.cache is not None:
            self.cache.entries = self.kept
        # only the middlewares some router uses: a Service's own ones go unused when ACL mode denies
        # all its traffic, and a reused (cached) port brings only those its routers name
        used = {name for r in self.routers for name in r["middlewares"]}
        data = {
            "version": version,
            "http": {"entry_points": sorted(self.entry_points.values(), key=lambda e: (e["address"], e["port"])),
                     "routers": self.routers, "services": self.services,
                     "middlewares": [self.middlewares[k] for k in sorted(self.middlewares) if k in used]},
            "tcp": self.tcp,
            "udp": self.udp,
        }
        if assembler is not None:  # the controller: reuses the elements that did not change
            return assembler.make(data)
        config = load_config_dict(data)
        return config.model_copy(update={"hash": content_hash(config)})


def build_config_with_errors(topology: Topology, ports: PortTable, shadow_services: Sequence[dict],
                             settings: Settings, version: int, assembler: ConfigAssembler | None = None,
                             cache: ProviderCache | None = None) -> tuple[ProxyConfig, list[ObjectError]]:
    """:func:`build_config` and the errors found while building it (listener clashes).

    ``assembler``, ``cache``: kept by the caller from one build to the next, so what did not change
    is not translated, validated and serialized again (same config)."""
    builder = _Builder(topology, ports, shadow_services, settings, cache)
    config = builder.build(version, assembler)
    return config, sorted(set(builder.errors))


def build_config(topology: Topology, ports: PortTable, shadow_services: Sequence[dict], settings: Settings,
                 version: int) -> ProxyConfig:
    """The proxy configuration for ``topology`` (see the module docstring). Raises
    :class:`lightmesh.config.ConfigError` only on a bug: the topology holds validated values."""
    return build_config_with_errors(topology, ports, shadow_services, settings, version)[0]
