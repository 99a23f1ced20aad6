"""Regular expressions written by users (SMI ``pathRegex`` and header regexes, Gateway API
``RegularExpression`` matches): compiled with RE2, a linear-time engine.

Why not Python's ``re``: these run on every request, and a pattern with catastrophic
backtracking (``(a+)+``) let one crafted request stall a proxy worker for seconds, for every
tenant it serves. RE2 is also what Traefik Mesh used (Go's ``regexp``), so patterns mean what they
meant there: ``\\d`` is ASCII, and backreferences and lookarounds are refused (a config error
naming the element, as for any invalid pattern).

Every part that checks or runs such a pattern goes through :func:`compile_user_regex`: the
controller, the config contract, the proxy, the components and the policy pack agree on what is
valid.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import re2

__all__ = ["compile_user_regex", "check_user_regex"]

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # an invalid pattern is our error to report, not a line on stderr


@lru_cache(maxsize=4096)
def compile_user_regex(pattern: str) -> Any:
    """The compiled pattern (``.match`` anchors at the start, ``.search`` does not, as ``re``);
    ValueError with RE2's reason when it is not a valid RE2 expression.

    Cached, as ``re`` caches: a controller build checks each route's patterns twice (topology, then
    the config contract) and most routes share a few patterns; RE2 compiles cost ~7 µs each, ~0.07 s
    of a 5,000-Service build. Compiled patterns are immutable (matching never changes them)."""
    try:
        return re2.compile(pattern, _OPTIONS)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise ValueError(str(reason)) from None


def check_user_regex(pattern: str) -> str | None:
    """Why ``pattern`` is invalid, or None."""
    try:
        compile_user_regex(pattern)
    except ValueError as exc:
        return str(exc)
    return None
