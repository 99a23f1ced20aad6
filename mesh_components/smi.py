"""The SMI CustomResourceDefinitions Lightmesh serves, as data, and pure builders for SMI objects.

Groups and versions (see ``docs/components.md``):

* ``access.smi-spec.io`` — ``TrafficTarget`` v1alpha1, v1alpha2, v1alpha3
* ``specs.smi-spec.io`` — ``HTTPRouteGroup`` and ``TCPRoute`` v1alpha1..v1alpha4, ``UDPRoute`` v1alpha4
  (UDPRoute was introduced by specs v1alpha4)
* ``split.smi-spec.io`` — ``TrafficSplit`` v1alpha1..v1alpha4

Every version carries a structural ``openAPIV3Schema`` written from the SMI specification of that
version (field shapes differ: v1alpha1 ``TrafficTarget`` and ``HTTPRouteGroup`` keep their fields at the
top level, ``TrafficTarget`` v1alpha2 has ``destination.port``, v1alpha1 ``TrafficSplit`` weights are
quantities, ...). The newest version of each kind is the storage version. Without a conversion webhook
the API server converts by rewriting ``apiVersion`` only, exactly as the upstream CRDs do.

:data:`CRDS` is what ``MeshInstall`` installs, :func:`object_schema` gives the JSON schema of one
``apiVersion``/``kind`` so tests and the policy pack validate objects against precisely what the
cluster will enforce (:func:`validate_object`). The ``render_*`` functions build the objects
``AccessPolicy`` and ``TrafficSplit`` create; they are pure so they can be golden-tested.
"""

import copy
from typing import Any, Iterable, Mapping, Optional, Sequence

ACCESS_GROUP = "access.smi-spec.io"
SPECS_GROUP = "specs.smi-spec.io"
SPLIT_GROUP = "split.smi-spec.io"

#: The versions the components write (the newest of each group).
ACCESS_VERSION = f"{ACCESS_GROUP}/v1alpha3"
SPECS_VERSION = f"{SPECS_GROUP}/v1alpha4"
SPLIT_VERSION = f"{SPLIT_GROUP}/v1alpha4"

HTTP_METHODS = ("*", "GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def _s(description: str) -> dict:
    return {"type": "string", "description": description}


def _obj(properties: Mapping[str, Any], required: Sequence[str] = (), description: str = "") -> dict:
    schema: dict = {"type": "object", "properties": dict(properties)}
    if required:
        schema["required"] = list(required)
    if description:
        schema["description"] = description
    return schema


def _arr(items: dict, description: str) -> dict:
    return {"type": "array", "items": items, "description": description}


def _root(fields: Mapping[str, Any], required: Sequence[str] = ()) -> dict:
    """A version's openAPIV3Schema: the standard envelope plus ``fields`` (usually just ``spec``)."""
    props = {"apiVersion": _s("APIVersion of this object."), "kind": _s("Kind of this object."),
             "metadata": {"type": "object"}}
    props.update(fields)
    return _obj(props, required)


# ------------------------------------------------------------------------------------------ access
_IDENTITY = _obj({"kind": {**_s("Kind of the identity; only ServiceAccount is defined."), "enum": ["ServiceAccount"]},
                  "name": _s("Name of the ServiceAccount."),
                  "namespace": _s("Namespace of the ServiceAccount (defaults to the object's namespace).")},
                 ["kind", "name"])
_IDENTITY_WITH_PORT = copy.deepcopy(_IDENTITY)
_IDENTITY_WITH_PORT["properties"]["port"] = {"type": "integer", "minimum": 1, "maximum": 65535,
                                             "description": "Destination port (removed in v1alpha3)."}


def _access_rule(kinds: Sequence[str]) -> dict:
    return _obj({"kind": {**_s("Kind of the referenced route."), "enum": list(kinds)},
                 "name": _s("Name of the referenced route object."),
                 "matches": _arr(_s("Name of a match in the referenced HTTPRouteGroup."),
                                 "Names of HTTPRouteGroup matches this rule allows (empty = all).")},
                ["kind", "name"])


_ACCESS_V1 = _root({"destination": _IDENTITY_WITH_PORT,
                    "specs": _arr(_access_rule(["HTTPRouteGroup", "TCPRoute"]), "Routes allowed."),
                    "sources": _arr(_IDENTITY, "Identities allowed to reach the destination.")},
                   ["destination"])
_ACCESS_V2 = _root({"spec": _obj({"destination": _IDENTITY_WITH_PORT,
                                  "rules": _arr(_access_rule(["HTTPRouteGroup", "TCPRoute"]), "Routes allowed."),
                                  "sources": _arr(_IDENTITY, "Identities allowed to reach the destination.")},
                                 ["destination", "sources"])})
_ACCESS_V3 = _root({"spec": _obj({"destination": _IDENTITY,
                                  "rules": _arr(_access_rule(["HTTPRouteGroup", "TCPRoute", "UDPRoute"]),
                                                "Routes allowed."),
                                  "sources": _arr(_IDENTITY, "Identities allowed to reach the destination.")},
                                 ["destination", "rules", "sources"])})

# ------------------------------------------------------------------------------------------- specs
_METHODS = _arr({**_s("HTTP method or '*'."), "enum": list(HTTP_METHODS)}, "Methods matched (empty = all).")


def _http_match(with_headers: bool) -> dict:
    props: dict = {"name": _s("Name of the match, referenced from TrafficTarget rules."),
                   "pathRegex": _s("Regular expression the request path must match (anchored at the start)."),
                   "methods": _METHODS}
    if with_headers:
        props["headers"] = {"type": "object", "additionalProperties": {"type": "string"},
                            "description": "Header name → regular expression the value must match (all must)."}
    return _obj(props, ["name"])


_HRG_V1 = _root({"matches": _arr(_http_match(False), "HTTP matches.")})
_HRG_V2 = _root({"spec": _obj({"matches": _arr(_http_match(False), "HTTP matches.")}, ["matches"])})
_HRG_V3 = _root({"spec": _obj({"matches": _arr(_http_match(True), "HTTP matches.")}, ["matches"])})
_PORT_MATCH = _obj({"name": _s("Name of the match."),
                    "ports": _arr({"type": "integer", "minimum": 1, "maximum": 65535},
                                  "Ports matched (empty = every port of the destination Service).")})
_TCP_OLD = _root({"spec": {"type": "object", "description": "No fields before v1alpha4: all TCP traffic."}})
_TCP_V4 = _root({"spec": _obj({"matches": _PORT_MATCH})})
_UDP_V4 = _root({"spec": _obj({"matches": _PORT_MATCH}, ["matches"])})

# ------------------------------------------------------------------------------------------- split
_QUANTITY_WEIGHT = {"x-kubernetes-int-or-string": True, "anyOf": [{"type": "integer"}, {"type": "string"}],
                    "description": "Weight as a Kubernetes quantity (v1alpha1)."}
_INT_WEIGHT = {"type": "integer", "minimum": 0, "description": "Whole-number weight of this backend."}


def _split_spec(weight: dict, with_matches: bool) -> dict:
    props: dict = {"service": _s("The root (apex) Service clients call."),
                   "backends": _arr(_obj({"service": _s("Backend Service name."), "weight": weight},
                                         ["service", "weight"]), "Weighted backends.")}
    if with_matches:
        props["matches"] = _arr(_obj({"kind": {**_s("Kind of the match object."), "enum": ["HTTPRouteGroup"]},
                                      "name": _s("Name of the HTTPRouteGroup."),
                                      "apiGroup": _s("API group of the match object.")}, ["kind", "name"]),
                                "HTTPRouteGroups restricting which requests are split.")
    return _obj({"spec": _obj(props, ["service", "backends"])})["properties"]["spec"]


_SPLIT_V1 = _root({"spec": _split_spec(_QUANTITY_WEIGHT, False)})
_SPLIT_V2 = _root({"spec": _split_spec(_INT_WEIGHT, False)})
_SPLIT_V3 = _root({"spec": _split_spec(_INT_WEIGHT, True)})
_SPLIT_V4 = _root({"spec": _split_spec(_INT_WEIGHT, True)})

# (group, kind, plural, short names, [(version, schema)] oldest first; the last one is storage)
_DEFINITIONS: list[tuple[str, str, str, list[str], list[tuple[str, dict]]]] = [
    (ACCESS_GROUP, "TrafficTarget", "traffictargets", ["tt"],
     [("v1alpha1", _ACCESS_V1), ("v1alpha2", _ACCESS_V2), ("v1alpha3", _ACCESS_V3)]),
    (SPECS_GROUP, "HTTPRouteGroup", "httproutegroups", ["htr"],
     [("v1alpha1", _HRG_V1), ("v1alpha2", _HRG_V2), ("v1alpha3", _HRG_V3), ("v1alpha4", _HRG_V3)]),
    (SPECS_GROUP, "TCPRoute", "tcproutes", ["tr"],
     [("v1alpha1", _TCP_OLD), ("v1alpha2", _TCP_OLD), ("v1alpha3", _TCP_OLD), ("v1alpha4", _TCP_V4)]),
    (SPECS_GROUP, "UDPRoute", "udproutes", ["ur"], [("v1alpha4", _UDP_V4)]),
    (SPLIT_GROUP, "TrafficSplit", "trafficsplits", ["ts"],
     [("v1alpha1", _SPLIT_V1), ("v1alpha2", _SPLIT_V2), ("v1alpha3", _SPLIT_V3), ("v1alpha4", _SPLIT_V4)]),
]


def _crd(group: str, kind: str, plural: str, short: list[str], versions: list[tuple[str, dict]]) -> dict:
    newest = versions[-1][0]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}",
                     "labels": {"app.kubernetes.io/part-of": "lightmesh"}},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural,
                      "singular": kind.lower(), "shortNames": list(short)},
            "versions": [{"name": name, "served": True, "storage": name == newest,
                          "schema": {"openAPIV3Schema": copy.deepcopy(schema)}}
                         for name, schema in versions],
        },
    }


#: The five CRD manifests MeshInstall installs (plain dicts, Kubernetes field names).
CRDS: list[dict] = [_crd(*d) for d in _DEFINITIONS]


def crd_manifests() -> list[dict]:
    """A fresh deep copy of :data:`CRDS` (callers may mutate it)."""
    return copy.deepcopy(CRDS)


def object_schema(api_version: str, kind: str) -> dict:
    """The openAPIV3Schema the installed CRD enforces for ``apiVersion``/``kind``.

    Raises ``KeyError`` for a kind/version Lightmesh does not install (a validator must treat that as
    a failure, never as "nothing to check").
    """
    group, _, version = api_version.partition("/")
    for crd in CRDS:
        if crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind:
            for v in crd["spec"]["versions"]:
                if v["name"] == version:
                    return v["schema"]["openAPIV3Schema"]
    raise KeyError(f"no SMI CRD installed for {api_version} {kind}")


def validate_object(obj: Mapping[str, Any]) -> None:
    """Validate an SMI object against its CRD schema; raises ``jsonschema.ValidationError``.

    ``x-kubernetes-*`` extensions are unknown to JSON Schema and ignored, as the API server would
    treat them structurally; everything else (types, required fields, enums, bounds) is enforced.
    Unknown fields are rejected, like the API server's strict field validation would report.
    """
    import jsonschema  # test/CI dependency; not needed to deploy

    schema = _closed(object_schema(obj["apiVersion"], obj["kind"]))
    jsonschema.Draft7Validator(schema).validate(obj)


def _closed(schema: Any) -> Any:
    """Copy of ``schema`` where every object with ``properties`` rejects unknown fields."""
    if isinstance(schema, dict):
        out = {k: _closed(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_closed(v) for v in schema]
    return schema


# ------------------------------------------------------------------------------ object renderers
def render_http_route_group(name: str, namespace: Any, matches: Iterable[Mapping[str, Any]],
                            labels: Optional[Mapping[str, str]] = None) -> dict:
    """``HTTPRouteGroup`` (specs v1alpha4). ``matches`` use the component's snake_case keys."""
    rendered = []
    for m in matches:
        item: dict = {"name": m["name"]}
        if m.get("path_regex") is not None:
            item["pathRegex"] = m["path_regex"]
        if m.get("methods"):
            item["methods"] = [str(x).upper() for x in m["methods"]]
        if m.get("headers"):
            item["headers"] = dict(m["headers"])
        rendered.append(item)
    return _object(SPECS_VERSION, "HTTPRouteGroup", name, namespace, labels, {"matches": rendered})


def render_port_route(kind: str, name: str, namespace: Any, ports: Optional[Sequence[int]],
                      labels: Optional[Mapping[str, str]] = None) -> dict:
    """``TCPRoute`` or ``UDPRoute`` (specs v1alpha4); no ports = every port of the Service."""
    matches: dict = {"name": name, "ports": [int(p) for p in ports or []]}
    return _object(SPECS_VERSION, kind, name, namespace, labels, {"matches": matches})


def render_traffic_target(name: str, namespace: Any, destination_sa: Any,
                          sources: Iterable[Mapping[str, Any]], rules: Iterable[Mapping[str, Any]],
                          labels: Optional[Mapping[str, str]] = None) -> dict:
    """``TrafficTarget`` (access v1alpha3). ``sources`` items: ``service_account``, ``namespace``."""
    spec = {
        "destination": {"kind": "ServiceAccount", "name": destination_sa, "namespace": namespace},
        "rules": [dict(r) for r in rules],
        "sources": [{"kind": "ServiceAccount", "name": s["service_account"],
                     "namespace": s.get("namespace") or namespace} for s in sources],
    }
    return _object(ACCESS_VERSION, "TrafficTarget", name, namespace, labels, spec)


def render_traffic_split(name: str, namespace: Any, service: Any, backends: Iterable[Mapping[str, Any]],
                         match_group: Optional[str] = None,
                         labels: Optional[Mapping[str, str]] = None) -> dict:
    """``TrafficSplit`` (split v1alpha4), optionally restricted to one HTTPRouteGroup's matches."""
    spec: dict = {"service": service,
                  "backends": [{"service": b["service"], "weight": int(b["weight"])} for b in backends]}
    if match_group:
        spec["matches"] = [{"kind": "HTTPRouteGroup", "name": match_group}]
    return _object(SPLIT_VERSION, "TrafficSplit", name, namespace, labels, spec)


def _object(api_version: str, kind: str, name: str, namespace: Any,
            labels: Optional[Mapping[str, str]], spec: dict) -> dict:
    metadata: dict = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, "spec": spec}
