"""Shared helpers for the Lightmesh components: the package token, arg validation, child options.

Everything here is pure (no resources are created). The components call these helpers in
``__init__`` so a bad argument raises at once — during ``pulumi preview`` — with a message naming the
component instance and the field, before any child resource is registered.

Values that arrive as ``pulumi.Output`` (computed by another resource) cannot be checked
synchronously; :func:`when_known` runs the same check once the value resolves, so the error still
names the field, only later in the deployment. A field that decides which objects are created, their
names or their shape must be plain instead (:meth:`Checker.plain`, :meth:`Checker.no_outputs`).
"""

import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional

import pulumi

# The runtime package (``lightmesh``) lives in ``proxy_image/`` of this checkout. When the repository
# is used in place (``pulumi up`` from a clone without ``pip install -e .``) make it importable; an
# installed distribution ships both packages and this is a no-op.
try:  # pragma: no cover - exercised only when the checkout is not installed
    import lightmesh  # noqa: F401
except ImportError:  # pragma: no cover
    _runtime = Path(__file__).resolve().parent.parent / "proxy_image"
    if (_runtime / "lightmesh").is_dir():
        sys.path.insert(0, str(_runtime))

#: The Pulumi package name: type tokens are ``lightmesh:index:<Class>`` and the component provider
#: host is registered under the same name (``PulumiPlugin.yaml``), so the classes work unchanged
#: when imported natively and when hosted for other languages.
PACKAGE = "lightmesh"
VERSION = "0.1.0"
DEFAULT_IMAGE = f"ghcr.io/lightmesh/lightmesh:{VERSION}"


def type_token(class_name: str) -> str:
    return f"{PACKAGE}:index:{class_name}"


class ComponentArgsError(ValueError):
    """A component argument is invalid. The message names the component instance and the field."""


# RFC 1123 label (namespaces, Service names) and subdomain (most other object names).
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
# Kubernetes resource quantity, e.g. 100m, 64Mi, 1.5, 2G. ASCII digits only (``\d`` would take '٣'), and
# an exponent of at most three digits: Kubernetes caps quantities at 2^63-1 anyway, and a longer one
# (thousands of digits) would make ``int()`` raise when two quantities are compared.
_QUANTITY = re.compile(r"[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]{1,3}|[KMGTPE]i|[mkMGTPE]|[num])?")
# Kubernetes label name (also a node-selector or toleration key): an optional DNS-subdomain prefix and
# '/', then a name of at most 63 characters; a label value: at most 63 characters, may be empty.
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SHOWN_CHARS = 60


def shown(value: Any) -> str:
    """``repr(value)`` for an error message, safe and short whatever the user gave: the repr of an int of
    more than 4,300 digits raises ValueError, and a value thousands of characters long would bury the
    message, so both are cut to their start and a count."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        sign = "a negative" if value < 0 else "a"
        return f"{sign} whole number of about {int(value.bit_length() * 0.30103) + 1} digits"
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a value whose repr fails is still reported, by its type
        return f"a {type(value).__name__}"
    if len(text) <= _SHOWN_CHARS:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:_SHOWN_CHARS]}... ({size})"


def label_name_problem(key: Any) -> str | None:
    """Why ``key`` is not a Kubernetes label name (``[prefix/]name``), or None."""
    if not isinstance(key, str):
        return "is not a string"
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return "has a prefix (before '/') that is not a DNS subdomain (lowercase letters, digits, '-' and '.')"
    if not name or len(name) > 63 or not _LABEL_NAME.fullmatch(name):
        return ("is not a label name (at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
                "letter or digit, after an optional DNS-subdomain prefix and '/')")
    return None


def label_value_problem(value: Any) -> str | None:
    """Why ``value`` is not a Kubernetes label value, or None."""
    if not isinstance(value, str):
        return "is not a string"
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        return ("is not a label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
                "letter or digit, or empty)")
    return None


def is_known(value: Any) -> bool:
    """True for plain values (checked now); False for Outputs/awaitables (checked on resolution)."""
    return not isinstance(value, pulumi.Output) and not hasattr(value, "__await__")


def when_known(value: Any, check: Callable[[Any], None], none_ok: bool = True) -> Any:
    """Run ``check`` now on a plain value and return it; for an Output, return a new Output that runs
    ``check`` when the value resolves.

    An Output that resolves to None is "not given" and skips ``check``, unless ``none_ok`` is false:
    for a field whose being given already decided something (an OTLP endpoint that turned tracing on).

    Callers must pass the *returned* value on to the child resource: that way a failing check on an
    Output fails the resource that uses it (an apply nobody consumes would only log a warning).
    """
    if is_known(value):
        check(value)
        return value

    def checked(v: Any) -> Any:
        if v is not None or not none_ok:
            check(v)
        return v
    return pulumi.Output.from_input(value).apply(checked)


class Checker:
    """Collects field checks for one component instance; errors are prefixed ``Kind 'name': ``."""

    def __init__(self, kind: str, name: str) -> None:
        self.prefix = f"{kind} {name!r}: "

    def fail(self, message: str) -> ComponentArgsError:
        return ComponentArgsError(self.prefix + message)

    def require(self, args: Mapping[str, Any], field: str) -> Any:
        if not isinstance(args, Mapping):
            raise self.fail(f"args must be a mapping (a dict or the *Args TypedDict), got {type(args).__name__}")
        if field not in args or args[field] is None:
            raise self.fail(f"{field} is required")
        return args[field]

    def dns_label(self, field: str, value: Any) -> Any:
        def check(v: Any) -> None:
            if not isinstance(v, str) or len(v) > 63 or not _DNS_LABEL.fullmatch(v):
                raise self.fail(f"{field} must be a DNS label (lowercase letters, digits and '-', "
                                f"at most 63 characters, starting and ending alphanumeric), got {v!r}")
        return when_known(value, check)

    def dns_subdomain(self, field: str, value: Any) -> Any:
        def check(v: Any) -> None:
            if not isinstance(v, str) or len(v) > 253 or not _DNS_SUBDOMAIN.fullmatch(v):
                raise self.fail(f"{field} must be a DNS subdomain (lowercase letters, digits, '-' and '.', "
                                f"at most 253 characters), got {v!r}")
        return when_known(value, check)

    def dns_name(self, field: str, value: Any) -> Any:
        """A DNS domain name (mesh domains, the cluster domain): a subdomain whose labels have at most
        63 characters each (DNS's own bound; object names only have the 253 in all)."""
        def check(v: Any) -> None:
            if not isinstance(v, str) or len(v) > 253 or not _DNS_SUBDOMAIN.fullmatch(v) \
                    or any(len(label) > 63 for label in v.split(".")):
                raise self.fail(f"{field} must be a DNS name (lowercase letters, digits, '-' and '.', labels of "
                                f"at most 63 characters, at most 253 in all), got {v!r}")
        return when_known(value, check)

    def integer(self, field: str, value: Any, low: int, high: int) -> Any:
        def check(v: Any) -> None:
            # The cross-language path delivers numbers as floats; whole floats are accepted.
            given = v
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            if isinstance(v, bool) or not isinstance(v, int):
                raise self.fail(f"{field} must be a whole number, got {shown(given)}")
            if not low <= v <= high:
                # a whole float is shown as the int it stands for, unless it is beyond exact (1e308)
                raise self.fail(f"{field} must be between {low} and {high}, "
                                f"got {shown(given if abs(v) > 2 ** 53 else v)}")
        return when_known(value, check)

    def labels(self, field: str, value: Any) -> dict:
        """A map of Kubernetes label names to label values (labels, a node selector, a pod selector),
        checked here rather than by the API server at ``pulumi up``; errors name the field and the key.

        The map itself and its keys must be plain; a value may be an Output (it only fills in a label,
        it decides no object): it is checked when it resolves, so use the returned map."""
        if not is_known(value):
            raise self.fail(f"{field} must be a plain value, not an Output (it is validated at preview)")
        if not isinstance(value, Mapping):
            raise self.fail(f"{field} must be an object mapping label names to string values, got {shown(value)}")
        checked = {}
        for key, v in value.items():
            if not isinstance(key, str):
                raise self.fail(f"{field} must map label names to string values, got {shown(key)}: {shown(v)}")
            if problem := label_name_problem(key):
                raise self.fail(f"{field} key {shown(key)} {problem}")
            checked[key] = when_known(v, lambda x, key=key: self._label_value(field, key, x), none_ok=False)
        return checked

    def _label_value(self, field: str, key: str, v: Any) -> None:
        if not isinstance(v, str):
            raise self.fail(f"{field} must map label names to string values, got {shown(key)}: {shown(v)}")
        if problem := label_value_problem(v):
            raise self.fail(f"{field}[{key!r}] value {shown(v)} {problem}")

    def string(self, field: str, value: Any, allow_empty: bool = False) -> Any:
        def check(v: Any) -> None:
            if not isinstance(v, str) or (not allow_empty and not v.strip()):
                raise self.fail(f"{field} must be a non-empty string, got {v!r}")
        return when_known(value, check)

    def quantity(self, field: str, value: Any) -> Any:
        def check(v: Any) -> None:
            if not isinstance(v, str) or not _QUANTITY.fullmatch(v):
                raise self.fail(f"{field} must be a Kubernetes quantity such as 100m, 64Mi or 1, got {shown(v)}")
        return when_known(value, check)

    def regex(self, field: str, value: Any) -> Any:
        def check(v: Any) -> None:
            if not isinstance(v, str):
                raise self.fail(f"{field} must be a regular expression string, got {v!r}")
            from lightmesh.userregex import check_user_regex  # RE2, as the proxy runs it

            problem = check_user_regex(v)
            if problem is not None:
                raise self.fail(f"{field} is not a valid regular expression ({problem}), got {v!r}")
        return when_known(value, check)

    def enum(self, field: str, value: Any, enum_type: type) -> Any:
        """Coerce a raw value (as the cross-language path sends it) to ``enum_type``."""
        if value is None or not is_known(value):
            return value
        raw = value.value if hasattr(value, "value") else value
        try:
            return enum_type(raw)
        except ValueError:
            pass
        try:  # "INFO", "HTTP": every enum here has lowercase values
            return enum_type(raw.lower()) if isinstance(raw, str) else enum_type(raw)
        except ValueError:
            allowed = ", ".join(m.value for m in enum_type)
            raise self.fail(f"{field} must be one of {allowed}, got {value!r}") from None

    def known_fields(self, field: str, value: Any, typed_dict: type) -> Mapping[str, Any]:
        """``value`` as a mapping that has only ``typed_dict``'s keys: a misspelt key (``retries`` for
        ``retry_attempts``) would otherwise be dropped silently, and what it meant never happens."""
        if not isinstance(value, Mapping):
            raise self.fail(f"{field} must be an object with the fields {', '.join(typed_dict.__annotations__)}, "
                            f"got {value!r}")
        unknown = [k for k in value if k not in typed_dict.__annotations__]
        if unknown:
            raise self.fail(f"{field} has unknown field(s) {', '.join(map(str, unknown))}; "
                            f"known: {', '.join(typed_dict.__annotations__)}")
        return value

    def list_of(self, field: str, value: Any) -> list:
        """A list (or tuple) as a list. A bare string is refused: ``list("mesh")`` would be four
        one-letter entries."""
        if not isinstance(value, (list, tuple)):
            raise self.fail(f"{field} must be a list, got {value!r}")
        return list(value)

    def mapping(self, field: str, value: Any) -> dict:
        if not isinstance(value, Mapping):
            raise self.fail(f"{field} must be an object (a dict of fields), got {value!r}")
        return dict(value)

    def plain(self, field: str, value: Any) -> Any:
        """Refuse an Output where the value names objects or shapes manifests, so it is checked at preview."""
        if not is_known(value):
            raise self.fail(f"{field} must be a plain value, not an Output (it is validated at preview)")
        return value

    def no_outputs(self, field: str, value: Any, accepted: Iterable[str] = (),
                   label_maps: Iterable[str] = ()) -> None:
        """Refuse an Output anywhere in ``value`` (inside lists and objects too), naming its path
        (``domains[0]``, ``controller_resources.cpu_limit``): such a value decides objects or their shape,
        so it must be known at preview. ``accepted``: paths that may be Outputs (checked when they resolve);
        ``label_maps``: label maps whose values may be Outputs (see :meth:`labels`)."""
        if field in accepted:
            return
        self.plain(field, value)
        if field in label_maps:
            return
        if isinstance(value, Mapping):
            for key, v in value.items():
                self.no_outputs(f"{field}.{key}", v, accepted, label_maps)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self.no_outputs(f"{field}[{i}]", v, accepted, label_maps)

    def non_empty_list(self, field: str, value: Any) -> list:
        if not is_known(value):
            return value
        if not isinstance(value, (list, tuple)) or not value:
            raise self.fail(f"{field} must be a non-empty list, got {value!r}")
        for i, v in enumerate(value):
            if not is_known(v):
                raise self.fail(f"{field}[{i}] must be a plain value, not an Output (it is validated at preview)")
        return list(value)

    def unique(self, field: str, values: Iterable[Any]) -> None:
        seen: set = set()
        for v in values:
            if not is_known(v):
                continue
            if v in seen:
                raise self.fail(f"{field} has a duplicate entry {v!r}")
            seen.add(v)


def child_options(parent: pulumi.Resource, opts: Optional[pulumi.ResourceOptions],
                  **extra: Any) -> pulumi.ResourceOptions:
    """Options for a child: ``parent=`` the component, plus the component's own ``depends_on``.

    ``depends_on`` given to a component is not pushed down to its children by the SDK; a user who
    writes ``AccessPolicy(..., opts=ResourceOptions(depends_on=[mesh]))`` means "create my SMI objects
    after the CRDs exist", so the components pass it on explicitly.
    """
    depends_on: Any = list(extra.pop("depends_on", None) or [])
    if opts is not None and opts.depends_on is not None:
        inherited = opts.depends_on
        if isinstance(inherited, (list, tuple)):
            depends_on += list(inherited)
        elif isinstance(inherited, pulumi.Resource):
            depends_on.append(inherited)
        else:  # an Output of a list of resources
            own = list(depends_on)
            depends_on = pulumi.Output.from_input(inherited).apply(lambda deps: [*own, *(deps or [])])
    return pulumi.ResourceOptions(parent=parent, depends_on=depends_on or None, **extra)
