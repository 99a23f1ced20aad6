"""Cluster DNS configuration text: pure patch/restore functions for the mesh DNS forwarding.

Three shapes of cluster DNS configuration exist in the wild:

* a CoreDNS ``Corefile`` (kubeadm, EKS, most distributions): :func:`patch_corefile` appends one
  marker-delimited server block forwarding every mesh domain to the mesh DNS Service, and
  :func:`restore_corefile` removes it again;
* a ``coredns-custom`` ConfigMap imported by the distribution's Corefile (k3s, AKS import
  ``*.server`` keys): :func:`render_server_block` is the whole value of our own key;
* kube-dns ``stubDomains`` JSON (GKE with kube-dns): :func:`patch_stub_domains` /
  :func:`restore_stub_domains`.

Guarantees (golden- and property-tested):

* **every other byte stays as it was** — the block is appended after the original text, nothing
  is reformatted;
* **idempotent** — patching a patched Corefile replaces our block in place (new IP or domains), so
  ``patch(patch(x)) == patch(x)``;
* **reversible** — ``restore_corefile(patch_corefile(x, ...)) == x`` byte for byte, for any ``x``
  that does not itself contain our markers;
* **refuses conflicts** — a server block for a mesh zone that is not ours (e.g. the regex-rewrite
  block Traefik Mesh leaves behind) would make CoreDNS refuse the whole Corefile ("zone already
  defined") and take cluster DNS down; :class:`CorefileError` is raised instead.
"""

import hashlib
import ipaddress
import json
import re
from typing import Iterable, Optional, Sequence

BEGIN_MARKER = "# BEGIN lightmesh: forward the mesh domains to the mesh DNS (managed by Lightmesh, edits are overwritten)"
END_MARKER = "# END lightmesh"
_BEGIN_PREFIX = "# BEGIN lightmesh"

#: Key written into a ``coredns-custom`` ConfigMap (k3s and AKS import ``*.server``).
CUSTOM_SERVER_KEY = "lightmesh.server"


class CorefileError(ValueError):
    """The DNS configuration cannot be patched safely; the message says why and what to do."""


def render_server_block(domains: Sequence[str], dns_ip: str, port: int = 53) -> str:
    """The marker-delimited CoreDNS server block for ``domains`` on ``port`` (always ends with a newline)."""
    if not domains:
        raise CorefileError("at least one mesh domain is required")
    try:
        ipaddress.ip_address(dns_ip)
    except ValueError:
        raise CorefileError(f"mesh DNS address must be an IP address, got {dns_ip!r}") from None
    zones = " ".join(f"{_zone(d)}:{port}" for d in domains)
    return (f"{BEGIN_MARKER}\n"
            f"{zones} {{\n"
            f"    errors\n"
            f"    cache 5\n"
            f"    forward . {dns_ip}\n"
            f"}}\n"
            f"{END_MARKER}\n")


def block_hash(text: str) -> str:
    """Short content hash, used as the CoreDNS pod-template annotation that rolls its pods."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def find_block(text: str) -> Optional[tuple[int, int]]:
    """``(start, end)`` of our block including its end marker line and newline; None if absent."""
    begins = [m.start() for m in re.finditer(rf"(?m)^{re.escape(_BEGIN_PREFIX)}\b", text)]
    if not begins:
        if re.search(rf"(?m)^{re.escape(END_MARKER)}\s*$", text):
            raise CorefileError(f"the Corefile has {END_MARKER!r} without its begin marker; remove it by hand")
        return None
    if len(begins) > 1:
        raise CorefileError("the Corefile has more than one Lightmesh block; keep one (or none) and retry")
    start = begins[0]
    end_match = re.compile(rf"(?m)^{re.escape(END_MARKER)}[ \t]*(\n|$)").search(text, start)
    if not end_match:
        raise CorefileError(f"the Corefile has the Lightmesh begin marker but no {END_MARKER!r} line; "
                            "fix or remove the block by hand")
    return start, end_match.end()


def patch_corefile(text: str, domains: Sequence[str], dns_ip: str) -> str:
    """``text`` with our block added (after the existing text) or replaced in place."""
    port = root_port(text)
    block = render_server_block(domains, dns_ip, port)
    check_conflicts(text, domains, port)  # our own block is not counted: also on an update (new port, domains)
    span = find_block(text)
    if span:
        start, end = span
        return text[:start] + block + text[end:]
    # The separating newline is ours: restore_corefile removes it with the block.
    return text + "\n" + block


def restore_corefile(text: str) -> str:
    """``text`` without our block (and the newline that ``patch_corefile`` put before it)."""
    span = find_block(text)
    if not span:
        return text
    start, end = span
    if start > 0 and text[start - 1] == "\n":
        start -= 1
    return text[:start] + text[end:]


def server_keys(text: str) -> list[tuple[int, str]]:
    """``(line number, key as written)`` of every top-level server block outside our block (a small
    Caddyfile scanner: comments, braces, keys written ``dns://name:port``, ``tls://name``, ``name.``
    or ``name``)."""
    span = find_block(text)
    if span:
        text = text[:span[0]] + "\n" * text[span[0]:span[1]].count("\n") + text[span[1]:]
    keys: list[tuple[int, str]] = []
    depth = 0
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if depth == 0 and line.endswith("{"):
            keys.extend((lineno, token) for token in re.split(r"[\s,]+", line[:-1].strip()) if token)
        depth += line.count("{") - line.count("}")
        depth = max(depth, 0)
    return keys


def server_zones(text: str) -> list[tuple[int, str, int]]:
    """``(line number, zone, port)`` of every top-level server block outside our block; a zone
    without a port is served on 53."""
    return [(lineno, _zone(token), _port(token)) for lineno, token in server_keys(text)]


def check_conflicts(text: str, domains: Iterable[str], port: int = 53, where: str = "the Corefile") -> None:
    """Raise :class:`CorefileError` when ``text`` (a Corefile, or a ``coredns-custom`` key that
    CoreDNS imports: ``where`` names it) serves a mesh zone on ``port`` outside our block."""
    # CoreDNS refuses the same zone twice on one port only; our block serves the mesh zones on ``port``.
    wanted = {_zone(d) for d in domains}
    for lineno, zone, zone_port in server_zones(text):
        if zone in wanted and zone_port == port:
            hint = (" It looks like Traefik Mesh's block: uninstall Traefik Mesh (or run `traefik-mesh cleanup`) "
                    "first, or drop this domain from MeshInstall domains."
                    if "Traefik Mesh Block" in text or "Maesh Block" in text
                    or "'traefik.mesh.server'" in where or "'maesh.server'" in where else
                    " Remove that server block or drop this domain from MeshInstall domains.")
            raise CorefileError(f"{where} already serves zone {zone!r} (line {lineno}); "
                                f"CoreDNS would refuse a second server block for it.{hint}")


def root_port(text: str) -> int:
    """The port the Corefile's plain-DNS root zone (``.``, no scheme or ``dns://``) is served on: our
    block listens there too, so a CoreDNS run on another port (``.:1053``, non-root images) sends
    the mesh zones to it. 53 when a plain root block is on 53 or there is none (a ``tls://``,
    ``https://`` or ``grpc://`` root is not where the cluster DNS Service sends queries)."""
    ports = []
    for _, token in server_keys(text):
        scheme = re.match(r"^([a-z0-9+]+)://", token.strip().lower())
        if _zone(token) == "." and (scheme is None or scheme.group(1) == "dns") and _port(token) > 0:
            ports.append(_port(token))
    return 53 if not ports or 53 in ports else ports[0]


def _port(token: str) -> int:
    """The port of a server-block key (53 if it has none; -1 for one no port could be: CoreDNS reads
    ASCII digits, and ``int()`` of thousands of digits raises)."""
    match = re.search(r":([0-9]+)$", token.strip())
    if not match:
        return 53
    return int(match.group(1)) if len(match.group(1)) <= 5 else -1


def _zone(token: str) -> str:
    token = token.strip().lower()
    token = re.sub(r"^[a-z0-9+]+://", "", token)
    token = re.sub(r":[0-9]+$", "", token)
    return token.rstrip(".") or "."


# ------------------------------------------------------------------------------ kube-dns
def patch_stub_domains(value: Optional[str], domains: Sequence[str], dns_ip: str) -> str:
    """kube-dns ``stubDomains`` JSON with every mesh domain pointing at ``dns_ip`` (others kept)."""
    render_server_block(domains, dns_ip)  # same argument checks
    stubs = _load_stubs(value)
    for d in domains:
        stubs[_zone(d)] = [dns_ip]
    return json.dumps(stubs, indent=2, sort_keys=False) + "\n"


def restore_stub_domains(value: Optional[str], domains: Sequence[str]) -> Optional[str]:
    """``value`` without the mesh domains; None when nothing else is left (the key is removed)."""
    stubs = _load_stubs(value)
    for d in domains:
        stubs.pop(_zone(d), None)
    return json.dumps(stubs, indent=2) + "\n" if stubs else None


def mesh_stub_domains(value: Optional[str], domains: Sequence[str]) -> dict:
    """The ``stubDomains`` entries of the mesh ``domains`` in ``value`` (those present), keyed by zone."""
    stubs = _load_stubs(value)
    return {_zone(d): stubs[_zone(d)] for d in domains if _zone(d) in stubs}


def _load_stubs(value: Optional[str]) -> dict:
    if value is None or not value.strip():
        return {}
    try:
        stubs = json.loads(value)
    except json.JSONDecodeError as exc:
        raise CorefileError(f"kube-dns stubDomains is not valid JSON ({exc}); fix it by hand") from None
    if not isinstance(stubs, dict):
        raise CorefileError("kube-dns stubDomains must be a JSON object of domain → [nameserver, ...]")
    return stubs
