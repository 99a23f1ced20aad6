"""Circuit-breaker expressions: Traefik's grammar, parsed and evaluated without ``eval``.

Grammar (``||`` binds looser than ``&&``; both are left-associative)::

    expression := disjunction
    disjunction:= conjunction ( "||" conjunction )*
    conjunction:= term ( "&&" term )*
    term       := "(" disjunction ")" | comparison
    comparison := left ( "<" | "<=" | ">" | ">=" | "==" | "!=" ) right
    left       := metric | "(" left ")"
    right      := number | "(" right ")"
    metric     := "NetworkErrorRatio" "(" ")"
                | "ResponseCodeRatio" "(" int "," int "," int "," int ")"
                | "LatencyAtQuantileMS" "(" number ")"

Examples: ``NetworkErrorRatio() > 0.5``, ``ResponseCodeRatio(500, 600, 0, 600) > 0.25``,
``LatencyAtQuantileMS(50.0) > 100 || NetworkErrorRatio() > 0.3``.

As in Traefik (Go's expression parser, which drops parentheses wherever they are), an operand may be
parenthesised: ``(NetworkErrorRatio()) > (0.5)`` is ``NetworkErrorRatio() > 0.5``. Parentheses of
every kind count towards one nesting limit. The ranges of ``ResponseCodeRatio`` are half-open,
``from <= code < to``, as oxy's: ``to`` may exceed 599 (``500, 10000``: every code from 500 up), and
an empty range (``from == to``) counts nothing, so ``ResponseCodeRatio(500, 500, 0, 600)`` is always
0 (as is any ratio whose divisor counts nothing). ``LatencyAtQuantileMS(q)`` takes 0 <= q <= 100;
q = 0 is the smallest latency in the window.

``parse`` returns an immutable AST whose ``str()`` is canonical text that parses back to an equal
AST. ``Expression.evaluate(window)`` reads the metrics from any object implementing
:class:`MetricsWindow` (the proxy's rolling 10 s window; a fixed sample set in tests).
Errors are :class:`ExpressionError` with the 0-based ``position`` of the offending character.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Callable, Protocol, Union

MAX_LENGTH = 1024  # annotations are user input; bound the work a hostile one can cause
MAX_NESTING = 33  # parentheses, of sub-expressions and of operands together
MAX_CODE = 2**63 - 1  # a ResponseCodeRatio bound: Go's int, what oxy reads


class MetricsWindow(Protocol):
    def network_error_ratio(self) -> float: ...

    def response_code_ratio(self, code_from: int, code_to: int, divided_from: int, divided_to: int) -> float: ...

    def latency_at_quantile_ms(self, quantile: float) -> float: ...


class ExpressionError(ValueError):
    def __init__(self, message: str, expression: str, position: int) -> None:
        self.expression = expression
        self.position = position
        self.reason = message
        # an empty expression has no position to point at
        super().__init__(f"{message} at position {position + 1} in {expression!r}" if expression.strip()
                         else message)


# --------------------------------------------------------------------------- AST


@dataclass(frozen=True)
class Number:
    value: int | float

    def __str__(self) -> str:
        return repr(self.value)

    def value_in(self, window: MetricsWindow) -> float:
        return self.value


@dataclass(frozen=True)
class NetworkErrorRatio:
    def __str__(self) -> str:
        return "NetworkErrorRatio()"

    def value_in(self, window: MetricsWindow) -> float:
        return window.network_error_ratio()


@dataclass(frozen=True)
class ResponseCodeRatio:
    code_from: int
    code_to: int
    divided_from: int
    divided_to: int

    def __str__(self) -> str:
        return f"ResponseCodeRatio({self.code_from}, {self.code_to}, {self.divided_from}, {self.divided_to})"

    def value_in(self, window: MetricsWindow) -> float:
        return window.response_code_ratio(self.code_from, self.code_to, self.divided_from, self.divided_to)


@dataclass(frozen=True)
class LatencyAtQuantileMS:
    quantile: float

    def __str__(self) -> str:
        return f"LatencyAtQuantileMS({self.quantile!r})"

    def value_in(self, window: MetricsWindow) -> float:
        # as in Traefik: oxy's HDR histogram answers quantile 0 with its lowest bucket, 0, whatever
        # it recorded, so 'LatencyAtQuantileMS(0) > 100' never trips there; migrated manifests keep that
        return 0.0 if self.quantile == 0 else window.latency_at_quantile_ms(self.quantile)


Operand = Union[Number, NetworkErrorRatio, ResponseCodeRatio, LatencyAtQuantileMS]

COMPARATORS: dict[str, Callable[[float, float], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge, "==": operator.eq, "!=": operator.ne,
}


@dataclass(frozen=True)
class Comparison:
    op: str
    left: Operand
    right: Operand

    def __str__(self) -> str:
        return f"{self.left} {self.op} {self.right}"

    def evaluate(self, window: MetricsWindow) -> bool:
        return COMPARATORS[self.op](self.left.value_in(window), self.right.value_in(window))


@dataclass(frozen=True)
class And:
    left: Expression
    right: Expression

    def __str__(self) -> str:
        return f"{_wrap(self.left, Or)} && {_wrap(self.right, (Or, And))}"

    def evaluate(self, window: MetricsWindow) -> bool:
        return self.left.evaluate(window) and self.right.evaluate(window)


@dataclass(frozen=True)
class Or:
    left: Expression
    right: Expression

    def __str__(self) -> str:
        return f"{self.left} || {_wrap(self.right, Or)}"

    def evaluate(self, window: MetricsWindow) -> bool:
        return self.left.evaluate(window) or self.right.evaluate(window)


Expression = Union[Comparison, And, Or]


def _wrap(node: Expression, needs_parens) -> str:
    return f"({node})" if isinstance(node, needs_parens) else str(node)


# --------------------------------------------------------------------------- tokenizer

_TOKEN = re.compile(
    r"""(?P<space>\s+)
      | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>&&|\|\||<=|>=|==|!=|<|>)
      | (?P<punct>[(),])""",
    re.VERBOSE | re.ASCII,  # \d is 0-9 only: "٣" is not a number here (nor in Traefik's Go parser)
)


@dataclass(frozen=True)
class _Token:
    kind: str  # number | ident | op | punct | end
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise ExpressionError(f"unexpected character {text[pos]!r}", text, pos)
        if m.lastgroup != "space":
            tokens.append(_Token(m.lastgroup, m.group(), pos))
        pos = m.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# --------------------------------------------------------------------------- parser

_METRIC_ARITY = {"NetworkErrorRatio": 0, "ResponseCodeRatio": 4, "LatencyAtQuantileMS": 1}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def number(self, tok: _Token) -> int | float:
        try:
            return _number(tok.text)
        except (ValueError, OverflowError):
            raise ExpressionError(f"invalid number {tok.text!r} (not finite)", self.text, tok.pos) from None

    def fail(self, message: str, tok: _Token | None = None) -> ExpressionError:
        tok = tok or self.peek()
        found = "end of expression" if tok.kind == "end" else repr(tok.text)
        return ExpressionError(f"{message}, found {found}", self.text, tok.pos)

    def expect(self, text: str) -> _Token:
        if self.peek().text != text or self.peek().kind == "end":
            raise self.fail(f"expected {text!r}")
        return self.take()

    def parse(self) -> Expression:
        if self.peek().kind == "end":
            raise ExpressionError("empty expression", self.text, 0)
        node = self.disjunction(depth=0)
        if self.peek().kind != "end":
            raise self.fail("expected '&&', '||' or end of expression")
        return node

    def disjunction(self, depth: int) -> Expression:
        node = self.conjunction(depth)
        while self.peek().text == "||":
            self.take()
            node = Or(node, self.conjunction(depth))
        return node

    def conjunction(self, depth: int) -> Expression:
        node = self.term(depth)
        while self.peek().text == "&&":
            self.take()
            node = And(node, self.term(depth))
        return node

    def term(self, depth: int) -> Expression:
        if self.peek().text == "(" and not self.operand_in_parentheses():
            if depth >= MAX_NESTING:
                raise self.fail("parentheses nested too deeply")
            self.take()
            node = self.disjunction(depth + 1)
            self.expect(")")
            return node
        # Traefik (oxy's predicates) compares a metric with a constant, in that order: "1 > 0"
        # would be a breaker open for good, "0.5 < NetworkErrorRatio()" is refused there too.
        left = self.parenthesised(depth, self.left_operand)
        tok = self.peek()
        if tok.kind != "op" or tok.text not in COMPARATORS:
            raise self.fail("expected a comparison operator (<, <=, >, >=, ==, !=)")
        self.take()
        right = self.parenthesised(depth, self.right_operand)
        return Comparison(tok.text, left, right)

    def operand_in_parentheses(self) -> bool:
        """At a run of "(": do they all wrap the metric that follows (``((M)) > 1``), or does one at
        least open a sub-expression (``((M) > 1)``, ``(M > 1)``)? As many as the ")" right after
        the metric's call wrap it; any more open sub-expressions. Anything else: a sub-expression
        (whose parser reports what is wrong)."""
        i, tokens = self.i, self.tokens
        opened = 0
        while tokens[i].text == "(" and tokens[i].kind == "punct":
            opened += 1
            i += 1
        if tokens[i].kind != "ident" or tokens[i + 1].text != "(":
            return False
        i += 2
        while tokens[i].kind == "number" or tokens[i].text == ",":
            i += 1
        if tokens[i].text != ")":
            return False
        closed = 0
        while tokens[i + 1 + closed].text == ")":
            closed += 1
        return opened <= closed

    def parenthesised(self, depth: int, inner: Callable[[], Operand]) -> Operand:
        opened = 0
        while self.peek().text == "(":
            if depth + opened >= MAX_NESTING:
                raise self.fail("parentheses nested too deeply")
            self.take()
            opened += 1
        node = inner()
        for _ in range(opened):
            self.expect(")")
        return node

    def left_operand(self) -> Operand:
        if self.peek().kind != "ident":
            raise self.fail("expected a metric (NetworkErrorRatio, ResponseCodeRatio, LatencyAtQuantileMS) "
                            "on the left of a comparison")
        return self.metric()

    def right_operand(self) -> Operand:
        tok = self.peek()
        if tok.kind != "number":
            raise self.fail("expected a number on the right of a comparison")
        self.take()
        return Number(self.number(tok))

    def metric(self) -> Operand:
        name_tok = self.take()
        if name_tok.text not in _METRIC_ARITY:
            raise ExpressionError(
                f"unknown function {name_tok.text!r} (known: {', '.join(_METRIC_ARITY)})", self.text, name_tok.pos)
        self.expect("(")
        args: list[_Token] = []
        if self.peek().text != ")":
            while True:
                tok = self.peek()
                if tok.kind != "number":
                    raise self.fail(f"{name_tok.text} takes numbers as arguments")
                args.append(self.take())
                if self.peek().text != ",":
                    break
                self.take()
        close = self.expect(")")
        arity = _METRIC_ARITY[name_tok.text]
        if len(args) != arity:
            raise ExpressionError(
                f"{name_tok.text} takes {arity} argument{'s' if arity != 1 else ''}, got {len(args)}",
                self.text, close.pos)
        if name_tok.text == "NetworkErrorRatio":
            return NetworkErrorRatio()
        if name_tok.text == "LatencyAtQuantileMS":
            q = self.number(args[0])  # compared before float(): an int of 400 digits does not convert
            if not 0 <= q <= 100:
                raise ExpressionError("LatencyAtQuantileMS quantile must be in [0, 100]", self.text, args[0].pos)
            return LatencyAtQuantileMS(abs(float(q)))  # abs: -0.0 is 0.0
        codes = []
        for tok in args:
            value = self.number(tok)
            if not isinstance(value, int) or not 0 <= value <= MAX_CODE:
                raise ExpressionError("ResponseCodeRatio takes whole status codes (0 or more, below 2**63)",
                                      self.text, tok.pos)
            codes.append(value)
        for start in (0, 2):  # an empty range (from == to) counts nothing, as in oxy
            if codes[start] > codes[start + 1]:
                raise ExpressionError(
                    "ResponseCodeRatio ranges must be from <= to (e.g. 500, 600, 0, 600)", self.text, args[start].pos)
        return ResponseCodeRatio(*codes)


def _number(text: str) -> int | float:
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(text)
    return value


def parse(text: str) -> Expression:
    """Parse a Traefik circuit-breaker expression; raises :class:`ExpressionError`."""
    if not isinstance(text, str):
        raise ExpressionError("expression must be a string", repr(text), 0)
    if len(text) > MAX_LENGTH:
        raise ExpressionError(f"expression longer than {MAX_LENGTH} characters", text[:40] + "…", MAX_LENGTH)
    try:
        return _Parser(text).parse()
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, ExpressionError):
            raise
        raise ExpressionError(f"invalid number ({exc})", text, 0) from None


def validate(text: str) -> str | None:
    """None when ``text`` parses, else the error message (for annotation and policy checks)."""
    try:
        parse(text)
    except ExpressionError as exc:
        return str(exc)
    return None


# --------------------------------------------------------------------------- a fixed window


@dataclass
class Sample:
    status: int | None  # None: network error (no response)
    latency_ms: float


class SampleWindow:
    """A :class:`MetricsWindow` over a list of samples; for tests and for offline evaluation."""

    def __init__(self, samples: list[Sample] | None = None) -> None:
        self.samples = list(samples or [])

    def network_error_ratio(self) -> float:
        if not self.samples:
            return 0.0
        return sum(1 for s in self.samples if s.status is None) / len(self.samples)

    def response_code_ratio(self, code_from: int, code_to: int, divided_from: int, divided_to: int) -> float:
        codes = [s.status for s in self.samples if s.status is not None]
        divisor = sum(1 for c in codes if divided_from <= c < divided_to)
        if not divisor:
            return 0.0
        return sum(1 for c in codes if code_from <= c < code_to) / divisor

    def latency_at_quantile_ms(self, quantile: float) -> float:
        if not self.samples:
            return 0.0
        ordered = sorted(s.latency_ms for s in self.samples)
        index = min(len(ordered) - 1, max(0, int(round(quantile / 100 * len(ordered) + 0.5)) - 1))
        return ordered[index]
