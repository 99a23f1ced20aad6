"""Service annotations → typed, validated mesh settings (pure).

Keys are read from the first prefix that has them: ``lightmesh.io/``, then ``mesh.traefik.io/``, then
``maesh.containo.us/`` — so Services written for Traefik Mesh or Maesh work unchanged. Each key is
resolved on its own (a Service may mix prefixes while migrating).

The controller, the Pulumi components and the policy pack all call :func:`parse_annotations`, so a
value is judged the same way at ``pulumi preview``, in CI and in the cluster. Errors name the
annotation exactly as the user wrote it and the offending value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

from lightmesh import cbexpr

PREFIXES = ("lightmesh.io/", "mesh.traefik.io/", "maesh.containo.us/")

TRAFFIC_TYPE = "traffic-type"
SCHEME = "scheme"
RETRY_ATTEMPTS = "retry-attempts"
CIRCUIT_BREAKER_EXPRESSION = "circuit-breaker-expression"
RATELIMIT_AVERAGE = "ratelimit-average"
RATELIMIT_BURST = "ratelimit-burst"
REQUEST_TIMEOUT = "request-timeout"

KEYS = (TRAFFIC_TYPE, SCHEME, RETRY_ATTEMPTS, CIRCUIT_BREAKER_EXPRESSION, RATELIMIT_AVERAGE, RATELIMIT_BURST,
        REQUEST_TIMEOUT)
#: Keys a TCP or UDP Service has no use for (the proxy applies them to HTTP requests only).
HTTP_ONLY_KEYS = (SCHEME, RETRY_ATTEMPTS, CIRCUIT_BREAKER_EXPRESSION, RATELIMIT_AVERAGE, RATELIMIT_BURST,
                  REQUEST_TIMEOUT)

MAX_RETRY_ATTEMPTS = 100
MAX_RATE = 1_000_000
MAX_TIMEOUT_SECONDS = 86400.0


class TrafficType(str, Enum):
    HTTP = "http"
    TCP = "tcp"
    UDP = "udp"


class Scheme(str, Enum):
    HTTP = "http"
    HTTPS = "https"
    H2C = "h2c"


@dataclass(frozen=True)
class RateLimit:
    average: int
    burst: int


@dataclass(frozen=True)
class AnnotationError:
    annotation: str  # the full key as written, e.g. "mesh.traefik.io/retry-attempts"
    value: str
    reason: str
    # False: the Service is fine without the value as written (half a rate-limit pair, which
    # Traefik Mesh ignored without a word; a number above our bound, which Traefik accepted): the
    # controller reports it, does what ``effect`` says and keeps the Service
    fatal: bool = True
    effect: str = ""  # what the mesh does instead, when not fatal

    def __str__(self) -> str:
        return f"annotation {self.annotation}={self.value!r}: {self.reason}"


@dataclass(frozen=True)
class MeshSettings:
    """What a Service's annotations ask of the mesh. Unset knobs are None."""

    traffic_type: TrafficType
    scheme: Scheme = Scheme.HTTP
    retry_attempts: int | None = None
    circuit_breaker_expression: str | None = None
    rate_limit: RateLimit | None = None
    request_timeout_seconds: float | None = None
    sources: dict[str, str] = field(default_factory=dict)  # key → full annotation it was read from


class AnnotationsInvalid(ValueError):
    def __init__(self, errors: list[AnnotationError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def lookup(annotations: Mapping[str, str] | None, key: str) -> tuple[str, str] | None:
    """(full annotation name, value) of ``key`` under the first prefix that has it."""
    for prefix in PREFIXES:
        full = prefix + key
        if annotations and full in annotations:
            return full, annotations[full]
    return None


def is_meshed(annotations: Mapping[str, str] | None) -> bool:
    """True when any mesh annotation is present (used by policies to find mesh Services)."""
    return any(lookup(annotations, key) for key in KEYS)


def parse_annotations(annotations: Mapping[str, str] | None,
                      default_traffic_type: TrafficType | str = TrafficType.HTTP) -> MeshSettings:
    """Read every mesh key; raise :class:`AnnotationsInvalid` listing all bad values at once."""
    settings, errors = parse_annotations_lenient(annotations, default_traffic_type)
    if errors:
        raise AnnotationsInvalid(errors)
    return settings


def parse_annotations_lenient(annotations: Mapping[str, str] | None,
                              default_traffic_type: TrafficType | str = TrafficType.HTTP
                              ) -> tuple[MeshSettings, list[AnnotationError]]:
    """Like :func:`parse_annotations` but returns the errors next to the settings it could read."""
    errors: list[AnnotationError] = []
    sources: dict[str, str] = {}

    def get(key: str) -> tuple[str, str] | None:
        found = lookup(annotations, key)
        if found:
            sources[key] = found[0]
            if not isinstance(found[1], str):
                # an unquoted YAML number or boolean (the API server refuses it; local mode reads files)
                got = found[1]
                errors.append(AnnotationError(found[0], str(got),
                                              f"must be a string, got {type(got).__name__} {got!r}: quote it in YAML"))
                return None
        return found

    traffic_type = TrafficType(default_traffic_type)
    if found := get(TRAFFIC_TYPE):
        try:
            traffic_type = TrafficType(found[1].strip().lower())
        except ValueError:
            errors.append(AnnotationError(*found, "must be one of http, tcp, udp"))

    scheme = Scheme.HTTP
    if found := get(SCHEME):
        try:
            scheme = Scheme(found[1].strip().lower())
        except ValueError:
            errors.append(AnnotationError(*found, "must be one of http, https, h2c"))

    retry_attempts = None
    if found := get(RETRY_ATTEMPTS):
        retry_attempts = _int(found, 1, MAX_RETRY_ATTEMPTS, errors, clamp=True)

    expression = None
    if found := get(CIRCUIT_BREAKER_EXPRESSION):
        try:
            expression = str(cbexpr.parse(found[1]))
        except cbexpr.ExpressionError as exc:
            errors.append(AnnotationError(*found, f"invalid circuit-breaker expression: {exc}"))
        else:
            # what the proxies get (and check against the same bound) is the written-out form:
            # '>1e15' becomes '> 1000000000000000.0'; longer than the bound, the whole config was refused
            if len(expression) > cbexpr.MAX_LENGTH:
                errors.append(AnnotationError(*found, f"invalid circuit-breaker expression: {len(expression)} "
                                                      f"characters once written out in full (numbers as decimals, "
                                                      f"spaces around operators), more than {cbexpr.MAX_LENGTH}"))
                expression = None

    rate_limit = None
    average_found, burst_found = get(RATELIMIT_AVERAGE), get(RATELIMIT_BURST)
    if average_found and burst_found:
        average = _int(average_found, 1, MAX_RATE, errors, clamp=True)
        burst = _int(burst_found, 1, MAX_RATE, errors, clamp=True)
        if average is not None and burst is not None:
            rate_limit = RateLimit(average, burst)
    elif average_found or burst_found:
        # Half a pair applies no rate limit whatever its value, so a bad one does not take the
        # Service out either (Traefik Mesh ignored half a pair before reading its value).
        found, sibling = (average_found, RATELIMIT_BURST) if average_found else (burst_found, RATELIMIT_AVERAGE)
        problems: list[AnnotationError] = []
        _int(found, 1, MAX_RATE, problems, clamp=True)
        reason = f"needs {_sibling(found[0], sibling)} too"
        if problems:  # (a bad value, or one over the bound: said too)
            reason = f"{problems[0].reason}, and {reason}"
        errors.append(AnnotationError(*found, reason, fatal=False, effect=_NO_RATE_LIMIT))

    timeout = None
    if found := get(REQUEST_TIMEOUT):
        try:
            timeout = parse_duration(found[1])
        except ValueError as exc:
            errors.append(AnnotationError(*found, str(exc)))
        else:
            if not 0 < timeout <= MAX_TIMEOUT_SECONDS:
                errors.append(AnnotationError(*found, "must be more than 0 and at most 24h"))
                timeout = None

    settings = MeshSettings(traffic_type=traffic_type, scheme=scheme, retry_attempts=retry_attempts,
                            circuit_breaker_expression=expression, rate_limit=rate_limit,
                            request_timeout_seconds=timeout, sources=sources)
    return settings, errors


def _sibling(full_key: str, key: str) -> str:
    return full_key.rsplit("/", 1)[0] + "/" + key


_NO_RATE_LIMIT = "no rate limit is applied"


def _int(found: tuple[str, str], low: int, high: int, errors: list[AnnotationError],
         clamp: bool = False) -> int | None:
    """The whole number in ``found``, or None with an error. ``clamp``: a number above ``high``
    is reported (not fatal) and ``high`` is used, as Traefik Mesh had no bound there and a Service
    annotated for it must not drop out of the mesh for it."""
    text = found[1].strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        errors.append(AnnotationError(*found, "must be a whole number"))
        return None
    too_long = len(text.lstrip("+-").lstrip("0")) > 18  # int() of thousands of digits raises (and is slow)
    if clamp and not text.startswith("-") and (too_long or int(text) > high):
        errors.append(AnnotationError(*found, f"must be between {low} and {high}", fatal=False,
                                      effect=f"{high} is used"))
        return high
    if too_long:
        errors.append(AnnotationError(*found, f"must be between {low} and {high}"))
        return None
    value = int(text)
    if not low <= value <= high:
        errors.append(AnnotationError(*found, f"must be between {low} and {high}"))
        return None
    return value


# Go's units; microseconds also as "µs" with U+00B5 (micro sign) or U+03BC (Greek mu), as Go takes both
_DURATION_PART = re.compile("([0-9]+(?:\\.[0-9]*)?|\\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")  # ASCII digits only
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go-style duration (``5s``, ``1.5s``, ``250ms``, ``1m30s``, ``+5s``) → seconds."""
    raw = text.strip()
    if raw.startswith("+"):
        raw = raw[1:]  # Go's time.ParseDuration takes one leading sign ("-": negative, refused below)
    if not raw:
        raise ValueError("must be a duration such as 5s, 250ms or 1m30s")
    if raw == "0":
        return 0.0  # Go's one duration without a unit (callers say whether 0 is allowed)
    pos, total = 0, 0.0
    while pos < len(raw):
        m = _DURATION_PART.match(raw, pos)
        if not m:
            rest = raw[pos:]
            why = ("negative" if rest.startswith("-") else
                   "a unit is required" if re.fullmatch(r"[0-9.]+", rest) else f"unexpected {rest[:20]!r}")
            raise ValueError(f"must be a duration such as 5s, 250ms or 1m30s ({why})")
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total


def format_duration(seconds: float) -> str:
    """Inverse of :func:`parse_duration` for values it produced (used when rendering annotations)."""
    if seconds >= 1 and float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000, 3):g}ms"
