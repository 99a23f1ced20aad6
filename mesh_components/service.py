"""``MeshService``: make a Kubernetes Service part of the mesh by annotating it.

Two modes, picked by the args:

* ``ports`` given → the component **creates** the Service (with ``selector`` and the mesh annotations);
* no ``ports`` → it **annotates an existing** Service with a server-side-apply ``ServicePatch`` that
  owns only the ``lightmesh.io/*`` annotations (its own field manager), so destroying the component
  removes exactly those annotations and nothing else of the Service.

The typed args are rendered to the ``lightmesh.io/`` annotations and then validated by the runtime's
own parser (``lightmesh.annotations.parse_annotations``), so preview rejects exactly what the
controller would reject — with the error re-phrased to name the component field.
"""

import re
from typing import Any, Mapping, NotRequired, Optional, TypedDict

import pulumi
import pulumi_kubernetes as k8s

from mesh_components._common import (Checker, ComponentArgsError, child_options, is_known, shown, type_token,
                                      when_known)
from lightmesh import annotations as ann
from lightmesh import wire
from lightmesh.annotations import Scheme, TrafficType
from lightmesh.controller.model import ALWAYS_IGNORED_NAMESPACES, ALWAYS_IGNORED_SERVICES

ANNOTATION_PREFIX = ann.PREFIXES[0]  # "lightmesh.io/"

# annotation key → the MeshServiceArgs field it is rendered from (for error messages)
_FIELD_OF_KEY = {
    ann.TRAFFIC_TYPE: "traffic_type",
    ann.SCHEME: "scheme",
    ann.RETRY_ATTEMPTS: "retry_attempts",
    ann.CIRCUIT_BREAKER_EXPRESSION: "circuit_breaker_expression",
    ann.RATELIMIT_AVERAGE: "rate_limit_average",
    ann.RATELIMIT_BURST: "rate_limit_burst",
    ann.REQUEST_TIMEOUT: "request_timeout",
}


class ServicePortArgs(TypedDict):
    """One port of a Service created by MeshService."""

    port: pulumi.Input[int]
    """Port the Service exposes (and the mesh serves it on)."""
    target_port: NotRequired[pulumi.Input[int]]
    """Container port number the traffic goes to (default: ``port``). From Python, a container port
    name is accepted here too, as Kubernetes' ``targetPort`` does."""
    target_port_name: NotRequired[pulumi.Input[str]]
    """Container port *name* the traffic goes to, resolved per pod (instead of ``target_port``)."""
    name: NotRequired[pulumi.Input[str]]
    """Port name: a DNS label, unique within the Service (required by Kubernetes when there are several ports)."""
    protocol: NotRequired[pulumi.Input[str]]
    """TCP (default) or UDP."""


class MeshServiceArgs(TypedDict):
    """Inputs for MeshService."""

    service_name: pulumi.Input[str]
    """Name of the Service to mesh (an existing one, or the one to create when ``ports`` is set)."""
    namespace: pulumi.Input[str]
    """Namespace of the Service (not ``kube-system``, nor the mesh namespace: the controller never meshes
    their Services)."""
    traffic_type: NotRequired[TrafficType]
    """How the mesh proxies this Service: http, tcp or udp (default: the controller's default mode)."""
    scheme: NotRequired[Scheme]
    """Scheme the mesh uses towards the pods of an http Service: http (default), https or h2c."""
    retry_attempts: NotRequired[pulumi.Input[int]]
    """Tries in all (1–100) for an HTTP request whose upstream could not be reached or reset the
    connection before answering, each on the next server; as Traefik's ``attempts``, 2 = one retry."""
    circuit_breaker_expression: NotRequired[pulumi.Input[str]]
    """Traefik-style circuit-breaker expression, e.g. ``NetworkErrorRatio() > 0.5``."""
    rate_limit_average: NotRequired[pulumi.Input[int]]
    """Allowed requests per second per source (needs ``rate_limit_burst``)."""
    rate_limit_burst: NotRequired[pulumi.Input[int]]
    """Burst size of the rate limit (needs ``rate_limit_average``)."""
    request_timeout: NotRequired[pulumi.Input[str]]
    """Request timeout as a duration, e.g. ``5s`` or ``250ms`` (at most 24h)."""
    ports: NotRequired[list[ServicePortArgs]]
    """When set, the Service is created with these ports instead of annotating an existing one."""
    selector: NotRequired[pulumi.Input[dict[str, str]]]
    """Pod selector of the created Service (required with ``ports``)."""
    domains: NotRequired[pulumi.Input[list[str]]]
    """Mesh DNS domains, for the ``host_names`` output (default: MeshInstall's defaults)."""


class MeshService(pulumi.ComponentResource):
    """A Kubernetes Service that is part of the Lightmesh mesh (reachable as ``<svc>.<ns>.<domain>``)."""

    service_name: pulumi.Output[str]
    """Name of the meshed Service."""
    namespace: pulumi.Output[str]
    """Namespace of the meshed Service."""
    host_names: pulumi.Output[list[str]]
    """Mesh host names of the Service, one per mesh domain (e.g. ``whoami.whoami.traefik.mesh``)."""
    annotations: pulumi.Output[dict[str, str]]
    """The mesh annotations written on the Service."""

    def __init__(self, name: str, args: MeshServiceArgs, opts: Optional[pulumi.ResourceOptions] = None) -> None:
        check = Checker("MeshService", name)
        check.known_fields("args", args, MeshServiceArgs)
        service_name = check.require(args, "service_name")
        namespace = check.require(args, "namespace")
        service_name = check.dns_label("service_name", service_name)
        namespace = check.dns_label("namespace", namespace)
        service_name, namespace = _check_meshable(check, service_name, namespace)
        # traffic_type decides the ports' default protocol and which fields apply, and ports which ports the
        # created Service has: both must be known at preview, or those checks would be skipped.
        check.plain("traffic_type", args.get("traffic_type"))
        ports = check.plain("ports", args.get("ports"))
        rendered = render_annotations(name, args)
        _check_http_only_fields(check, args)
        if ports is not None:
            traffic_type = check.enum("traffic_type", args.get("traffic_type"), TrafficType)
            ports = _check_ports(check, check.non_empty_list("ports", ports), traffic_type)
            if args.get("selector") is None:
                raise check.fail("selector is required when ports is set (the Service is created)")
            selector = args["selector"]
            selector = (check.labels("selector", selector) if is_known(selector)
                        else when_known(selector, lambda v: check.labels("selector", v)))
        elif args.get("selector") is not None:
            raise check.fail("selector only applies when ports is set (an existing Service keeps its selector)")
        else:
            _check_field_manager(check, name)
        domains = args.get("domains")  # None = not given = MeshInstall's default domains
        domains = when_known(list(wire.DEFAULT_DOMAINS) if domains is None else domains,
                             lambda d: _check_domains(check, d))

        super().__init__(type_token("MeshService"), name, None, opts)
        child = child_options(self, opts)

        if ports is not None:
            service = k8s.core.v1.Service(
                f"{name}-service",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=service_name, namespace=namespace, annotations=rendered),
                spec=k8s.core.v1.ServiceSpecArgs(selector=selector, ports=[_port(p) for p in ports]),
                opts=child)
        else:
            # Own only our annotations: a dedicated field manager, and force so a previous manual
            # `kubectl annotate` of the same keys does not block the apply.
            patch_annotations = pulumi.Output.from_input(rendered).apply(
                lambda a: {**a, "pulumi.com/patchFieldManager": field_manager(name),
                           "pulumi.com/patchForce": "true"})
            service = k8s.core.v1.ServicePatch(
                f"{name}-annotations",
                metadata=k8s.meta.v1.ObjectMetaPatchArgs(name=service_name, namespace=namespace,
                                                         annotations=patch_annotations),
                opts=child)

        self.children: dict[str, pulumi.Resource] = {"service": service}  # for composition and tests
        self.service_name = service.metadata.apply(lambda m: m.name)
        self.namespace = service.metadata.apply(lambda m: m.namespace)
        self.annotations = pulumi.Output.from_input(rendered)
        self.host_names = pulumi.Output.all(self.service_name, self.namespace, domains).apply(
            lambda v: host_names(v[0], v[1], v[2]))
        self.register_outputs({"service_name": self.service_name, "namespace": self.namespace,
                               "host_names": self.host_names, "annotations": self.annotations})


def _check_meshable(check: Checker, service_name: Any, namespace: Any) -> tuple[Any, Any]:
    """Refuse a Service the controller never meshes, whatever its annotations: one in ``kube-system``
    (``lightmesh.controller.model.ALWAYS_IGNORED_NAMESPACES``) or ``default/kubernetes`` (the API
    server's own, ``ALWAYS_IGNORED_SERVICES``): it would stay out of the mesh and its ``host_names``
    would never resolve. Outputs are checked when they resolve (the returned values fail the child
    resource that uses them). The mesh namespace is never meshed either, but a MeshService cannot know it."""
    def namespace_ok(ns: Any) -> None:
        if ns in ALWAYS_IGNORED_NAMESPACES:
            raise check.fail(f"namespace must not be {ns!r}: the controller never meshes the Services of {ns}, so "
                             f"this Service would stay out of the mesh and its host_names would never resolve")

    def service_ok(ns: Any, name: Any) -> None:
        if (ns, name) in ALWAYS_IGNORED_SERVICES:
            raise check.fail(f"service_name must not be {name!r} in namespace {ns!r}: the controller never meshes "
                             f"{ns}/{name} (the API server's own Service), so its host_names would never resolve")

    namespace = when_known(namespace, namespace_ok)
    if is_known(service_name) and is_known(namespace):
        service_ok(namespace, service_name)
        return service_name, namespace
    # One is an Output: check the pair when it resolves, unless the plain one already rules every such Service
    # out (then the name is passed on as it is).
    plain_rules_out = (is_known(namespace) and namespace not in {ns for ns, _ in ALWAYS_IGNORED_SERVICES}) or \
        (is_known(service_name) and service_name not in {name for _, name in ALWAYS_IGNORED_SERVICES})
    if not plain_rules_out and is_known(service_name):
        # the name is plain: it stays plain (known at preview, as it was given); the namespace carries the check
        def namespace_checked(ns: Any) -> Any:
            if ns is not None:
                service_ok(ns, service_name)
            return ns
        namespace = pulumi.Output.from_input(namespace).apply(namespace_checked)
    elif not plain_rules_out:
        def checked(values: list) -> Any:
            if None not in values:
                service_ok(values[1], values[0])
            return values[0]
        service_name = pulumi.Output.all(service_name, namespace).apply(checked)
    return service_name, namespace


def host_names(service: str, namespace: str, domains: list[str]) -> list[str]:
    """``<svc>.<ns>.<domain>`` for every mesh domain, in the order the domains are given."""
    return [f"{service}.{namespace}.{d.strip('.')}" for d in domains]


def render_annotations(name: str, args: Mapping[str, Any]) -> Any:
    """The ``lightmesh.io/`` annotations for ``args`` (a dict, or an Output of one when inputs are
    Outputs), validated by ``lightmesh.annotations``. Errors name the MeshService field."""
    check = Checker("MeshService", name)
    values = {
        ann.TRAFFIC_TYPE: check.enum("traffic_type", args.get("traffic_type"), TrafficType),
        ann.SCHEME: check.enum("scheme", args.get("scheme"), Scheme),
        ann.RETRY_ATTEMPTS: args.get("retry_attempts"),
        ann.CIRCUIT_BREAKER_EXPRESSION: args.get("circuit_breaker_expression"),
        ann.RATELIMIT_AVERAGE: args.get("rate_limit_average"),
        ann.RATELIMIT_BURST: args.get("rate_limit_burst"),
        ann.REQUEST_TIMEOUT: args.get("request_timeout"),
    }
    if all(is_known(v) for v in values.values()):
        return _render(check, values)
    # Check the plain values now (at preview), each Output standing in as a valid value of its field: the
    # only check across fields (the rate-limit pair) is about which are given, and an Output is given.
    _render(check, {k: v if is_known(v) else _VALID[k] for k, v in values.items()})
    keys = list(values)

    def resolved(vs: list) -> dict[str, str]:  # all checked again, the Outputs now with their values
        given = dict(zip(keys, vs))
        given[ann.TRAFFIC_TYPE] = check.enum("traffic_type", given[ann.TRAFFIC_TYPE], TrafficType)
        given[ann.SCHEME] = check.enum("scheme", given[ann.SCHEME], Scheme)  # "HTTPS" is written as https
        return _render(check, given)
    return pulumi.Output.all(*values.values()).apply(resolved)


#: A valid value of each annotation field, to check the plain fields of a MeshService while others are Outputs.
_VALID = {ann.TRAFFIC_TYPE: TrafficType.HTTP, ann.SCHEME: Scheme.HTTP, ann.RETRY_ATTEMPTS: 1,
          ann.CIRCUIT_BREAKER_EXPRESSION: "NetworkErrorRatio() > 0.5", ann.RATELIMIT_AVERAGE: 1,
          ann.RATELIMIT_BURST: 1, ann.REQUEST_TIMEOUT: "1s"}


def _render(check: Checker, values: Mapping[str, Any]) -> dict[str, str]:
    for key in (ann.RETRY_ATTEMPTS, ann.RATELIMIT_AVERAGE, ann.RATELIMIT_BURST):
        v = values.get(key)
        if isinstance(v, float) and v.is_integer():  # numbers arrive as floats cross-language
            v = int(v)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
            raise check.fail(f"{_FIELD_OF_KEY[key]} must be a whole number, got {shown(v)}")
    for key in (ann.CIRCUIT_BREAKER_EXPRESSION, ann.REQUEST_TIMEOUT):
        v = values.get(key)
        if v is not None and not isinstance(v, str):
            raise check.fail(f"{_FIELD_OF_KEY[key]} must be a string, got {shown(v)}")
    rendered: dict[str, str] = {}
    for key, v in values.items():
        if v is None:
            continue
        if isinstance(v, float):
            v = int(v)
        if isinstance(v, int) and v.bit_length() > 64:
            # str() of an int of more than 4,300 digits raises; any 20 digits are past every bound, so the
            # parser below reports the field as out of range (with the other fields' errors)
            text = "-" * (v < 0) + "9" * 20
        else:
            text = v.value if hasattr(v, "value") else str(v)
        rendered[ANNOTATION_PREFIX + key] = text
    _, errors = ann.parse_annotations_lenient(rendered)
    if errors:
        messages = []
        given = {ANNOTATION_PREFIX + key: v for key, v in values.items()}
        for e in errors:
            key = e.annotation[len(ANNOTATION_PREFIX):]
            field = _FIELD_OF_KEY.get(key, key)
            reason = e.reason.replace(ANNOTATION_PREFIX + ann.RATELIMIT_BURST, "rate_limit_burst") \
                             .replace(ANNOTATION_PREFIX + ann.RATELIMIT_AVERAGE, "rate_limit_average")
            value = given.get(e.annotation, e.value)
            value = value.value if hasattr(value, "value") else value  # an enum member: its text
            if key == ann.CIRCUIT_BREAKER_EXPRESSION:
                # "invalid circuit-breaker expression: <what> at position N in '<value>'": said once, quoted
                what = reason.removeprefix("invalid circuit-breaker expression: ").removesuffix(f" in {e.value!r}")
                messages.append(f"{field} {value!r} is not a valid circuit-breaker expression: {what}")
            else:
                messages.append(f"{field} {reason}, got {shown(value)}")
        raise ComponentArgsError(check.prefix + "; ".join(messages))
    return rendered


def _check_http_only_fields(check: Checker, args: Mapping[str, Any]) -> None:
    """A TCP or UDP Service has no use for retries, rate limits etc.: the controller would ignore
    them (with an object error), so the program that set them is refused instead."""
    traffic_type = check.enum("traffic_type", args.get("traffic_type"), TrafficType)
    if traffic_type not in (TrafficType.TCP, TrafficType.UDP):
        return
    given = [_FIELD_OF_KEY[key] for key in ann.HTTP_ONLY_KEYS if args.get(_FIELD_OF_KEY[key]) is not None]
    if given:
        raise check.fail(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to HTTP traffic only; "
                         f"traffic_type {traffic_type.value} does not use {'it' if len(given) == 1 else 'them'}: "
                         "leave it out or use traffic_type http")


#: The API server refuses a field manager longer than this (bytes) or with a non-printable character.
MAX_FIELD_MANAGER = 128


def field_manager(name: str) -> str:
    """The server-side-apply field manager that owns the annotations of an existing Service."""
    return f"lightmesh-{name}"


def _check_field_manager(check: Checker, name: str) -> None:
    size = len(field_manager(name).encode())
    if size > MAX_FIELD_MANAGER:
        raise check.fail(f"name is too long: the annotations are applied with the field manager 'lightmesh-<name>', "
                         f"here {size} bytes, over Kubernetes' limit of {MAX_FIELD_MANAGER}; use a name of at most "
                         f"{MAX_FIELD_MANAGER - len(field_manager('').encode())} bytes")
    if not name.isprintable():
        raise check.fail("name must have printable characters only: the annotations are applied with the field "
                         "manager 'lightmesh-<name>', and Kubernetes refuses a non-printable one")


def _check_domains(check: Checker, domains: Any) -> None:
    if not isinstance(domains, (list, tuple)) or not domains:
        raise check.fail(f"domains must be a non-empty list of DNS names, got {domains!r}")
    for d in domains:
        check.dns_name("domains", d.strip(".") if isinstance(d, str) else d)


def _check_ports(check: Checker, ports: list, traffic_type: Any = None) -> list[dict]:
    """Validated copies of ``ports`` (Output values wrapped so they are checked where they are used).

    A port's protocol defaults from the traffic type (UDP for udp, TCP otherwise) and must agree with
    it: the controller meshes only the ports whose protocol fits the Service's traffic type, so a TCP
    port on a udp Service would be left out of the mesh without a word.
    """
    expected = "UDP" if traffic_type == TrafficType.UDP else "TCP"
    checked = []
    for i, p in enumerate(ports):
        check.known_fields(f"ports[{i}]", p, ServicePortArgs)
        p = {k: v for k, v in p.items() if v is not None}  # None = not given = the default
        if "port" not in p:
            raise check.fail(f"ports[{i}] must have a port, got {p!r}")
        protocol = p.get("protocol", expected)
        if is_known(protocol):
            p["protocol"] = _protocol(check, i, protocol, traffic_type)
        else:  # checked (and upper-cased) when it resolves; the Service registered with it fails if it is wrong
            p["protocol"] = pulumi.Output.from_input(protocol).apply(
                lambda v, i=i: _protocol(check, i, expected if v is None else v, traffic_type))
        p["port"] = check.integer(f"ports[{i}].port", p["port"], 1, 65535)
        if p.get("target_port") is not None and p.get("target_port_name") is not None:
            raise check.fail(f"ports[{i}] has both target_port and target_port_name: give one")
        if p.get("target_port") is not None:  # Kubernetes' IntOrString (a name from Python)
            p["target_port"] = _target_port(check, f"ports[{i}].target_port", p["target_port"])
        if p.get("target_port_name") is not None:
            p["target_port"] = when_known(p.pop("target_port_name"), lambda v, i=i: _port_name(
                check, f"ports[{i}].target_port_name", v))
        if p.get("name") is not None:  # Kubernetes checks a Service port name as a DNS label
            p["name"] = check.dns_label(f"ports[{i}].name", p["name"])
        checked.append(p)
    if len(checked) > 1 and any(p.get("name") is None for p in checked):
        raise check.fail("ports need a name each when there is more than one")
    check.unique("ports[].name", [p["name"] for p in checked if p.get("name") is not None])
    check.unique("ports[].port", [p["port"] for p in checked])
    return checked


_PORT_NAME = re.compile(r"[a-z0-9]([a-z0-9]|-(?=[a-z0-9]))*")


def _target_port(check: Checker, field: str, value: Any) -> Any:
    """A port number, or a container port name (see :func:`_port_name`); an Output is checked, and
    a name it resolves to accepted, when it resolves."""
    def checked(v: Any) -> Any:
        if isinstance(v, str):
            return _port_name(check, field, v, number_ok=True)
        return check.integer(field, v, 1, 65535)
    if is_known(value):
        return checked(value)
    return pulumi.Output.from_input(value).apply(lambda v: v if v is None else checked(v))


def _port_name(check: Checker, field: str, value: Any, number_ok: bool = False) -> Any:
    """A container port name as Kubernetes checks a ``targetPort`` (IANA_SVC_NAME): at most 15
    lowercase letters, digits and single inner '-', at least one letter. With ``number_ok``, a string
    of digits is the port number it spells (as ``kubectl`` reads ``targetPort: "8080"``)."""
    if number_ok and isinstance(value, str) and value.isascii() and value.isdigit():
        return check.integer(field, int(value), 1, 65535)
    if (not isinstance(value, str) or len(value) > 15 or not _PORT_NAME.fullmatch(value)
            or not any(c.isalpha() for c in value)):
        raise check.fail(f"{field} must be a container port name (at most 15 lowercase letters, digits and "
                         f"single inner '-', with at least one letter, e.g. 'http'), got {shown(value)}")
    return value


def _protocol(check: Checker, i: int, protocol: Any, traffic_type: Any) -> str:
    """``protocol`` upper-cased, if it is TCP or UDP (any case) and fits ``traffic_type``."""
    if not (isinstance(protocol, str) and protocol.upper() in ("TCP", "UDP")):
        raise check.fail(f"ports[{i}].protocol must be TCP or UDP, got {shown(protocol)}")
    protocol = protocol.upper()
    expected = "UDP" if traffic_type == TrafficType.UDP else "TCP"
    if protocol != expected:
        needs = "traffic_type udp" if protocol == "UDP" else f"protocol {expected}"
        have = f"traffic_type {traffic_type.value}" if traffic_type else "no traffic_type (http or tcp)"
        raise check.fail(f"ports[{i}].protocol {protocol} does not fit {have}: the mesh would leave "
                         f"this port out; use {needs}")
    return protocol


def _port(p: Mapping[str, Any]) -> k8s.core.v1.ServicePortArgs:
    return k8s.core.v1.ServicePortArgs(port=p["port"], target_port=p.get("target_port", p["port"]),
                                       name=p.get("name"), protocol=p["protocol"])


