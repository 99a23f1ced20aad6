"""Circuit-breaker expressions: parsing, positions in errors, evaluation, and properties."""

import pytest
from hypothesis import given, settings, strategies as st

from lightmesh import cbexpr as cb
from lightmesh.cbexpr import Sample, SampleWindow


@pytest.mark.parametrize("text", [
    "NetworkErrorRatio() > 0.5",
    "ResponseCodeRatio(500, 600, 0, 600) > 0.25",
    "LatencyAtQuantileMS(50.0) > 100",
    "NetworkErrorRatio() > 0.5 || ResponseCodeRatio(500, 600, 0, 600) > 0.25",
    "(LatencyAtQuantileMS(99) >= 250 && NetworkErrorRatio() != 0) || NetworkErrorRatio() == 2",
])
def test_valid_expressions_parse_and_round_trip(text):
    ast = cb.parse(text)
    assert cb.parse(str(ast)) == ast


@pytest.mark.parametrize("text, position, words", [
    ("NetworkErrorRatio() >> 0.5", 22, "expected a number on the right"),
    ("NetworkErrorRatio > 0.5", 19, "expected '('"),
    ("Foo() > 1", 1, "unknown function 'Foo'"),
    ("ResponseCodeRatio(500, 600) > 0.1", 27, "takes 4 arguments"),
    ("NetworkErrorRatio() > 0.5 &&", 29, "expected a metric"),
    # Traefik compares a metric with a constant, in that order
    ("1 > 0", 1, "expected a metric (NetworkErrorRatio, ResponseCodeRatio, LatencyAtQuantileMS) on the left"),
    ("0.3 < NetworkErrorRatio()", 1, "expected a metric"),
    ("NetworkErrorRatio() > NetworkErrorRatio()", 23, "expected a number on the right"),
    ("(NetworkErrorRatio() > 0.5", 27, "expected ')'"),
    ("NetworkErrorRatio()", 20, "expected a comparison operator"),
    ("NetworkErrorRatio() > 0.5 # x", 27, "unexpected character '#'"),
    ("LatencyAtQuantileMS(0) > 1", 21, "quantile"),
    ("ResponseCodeRatio(600, 500, 0, 600) > 0.1", 19, "from < to"),
    ("NetworkErrorRatio() > 1e999", 23, "invalid number '1e999' (not finite)"),
    ("NetworkErrorRatio() > \u0663", 23, "unexpected character"),  # Arabic-Indic 3: not a number here
])
def test_errors_carry_a_position(text, position, words):
    with pytest.raises(cb.ExpressionError) as err:
        cb.parse(text)
    assert err.value.position + 1 == position, str(err.value)
    assert words in str(err.value)
    assert f"at position {position}" in str(err.value)


def test_precedence_and_binds_tighter_than_or():
    # on an empty window every metric is 0
    ast = cb.parse("NetworkErrorRatio() < 2 || NetworkErrorRatio() > 2 && NetworkErrorRatio() > 3")
    assert isinstance(ast, cb.Or) and isinstance(ast.right, cb.And)
    assert ast.evaluate(SampleWindow()) is True
    assert cb.parse("(NetworkErrorRatio() < 2 || NetworkErrorRatio() > 2) && NetworkErrorRatio() > 3"
                    ).evaluate(SampleWindow()) is False


def test_evaluation_over_a_window():
    window = SampleWindow([Sample(200, 10), Sample(500, 20), Sample(None, 30), Sample(503, 400)])
    assert window.network_error_ratio() == 0.25
    assert window.response_code_ratio(500, 600, 0, 600) == pytest.approx(2 / 3)
    assert cb.parse("NetworkErrorRatio() >= 0.25").evaluate(window)
    assert not cb.parse("NetworkErrorRatio() > 0.25").evaluate(window)
    assert cb.parse("ResponseCodeRatio(500, 600, 0, 600) > 0.5").evaluate(window)
    assert cb.parse("LatencyAtQuantileMS(100.0) > 300").evaluate(window)
    assert not cb.parse("LatencyAtQuantileMS(50.0) > 300").evaluate(window)


def test_no_eval_is_used():
    with pytest.raises(cb.ExpressionError):
        cb.parse("__import__('os').system('true') > 0")


def test_validate_helper_and_length_bound():
    assert cb.validate("NetworkErrorRatio() > 0.5") is None
    assert "position" in cb.validate("nope")
    assert "longer than" in cb.validate("1 < 2 && " * 200 + "1 < 2")


# ---------------------------------------------------------------------------- properties

numbers = st.one_of(st.integers(-10**6, 10**6), st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))
codes = st.tuples(st.integers(0, 999), st.integers(1, 1000)).filter(lambda t: t[0] < t[1])
metrics = st.one_of(
    st.just(cb.NetworkErrorRatio()),
    st.builds(lambda a, b: cb.ResponseCodeRatio(a[0], a[1], b[0], b[1]), codes, codes),
    st.floats(0.001, 100, allow_nan=False).map(cb.LatencyAtQuantileMS),
)
comparisons = st.builds(cb.Comparison, st.sampled_from(sorted(cb.COMPARATORS)), metrics, numbers.map(cb.Number))
expressions = st.recursive(
    comparisons,
    lambda inner: st.one_of(st.builds(cb.And, inner, inner), st.builds(cb.Or, inner, inner)),
    max_leaves=12,
)


@given(expressions)
@settings(max_examples=300, deadline=None)
def test_random_expressions_round_trip(ast):
    text = str(ast)
    assert cb.parse(text) == ast
    assert len(text) > cb.MAX_LENGTH or cb.validate(text) is None


alphabet = st.sampled_from(list("()<>=!&|,.0123456789 eE-+_abcXYZ") + [
    "NetworkErrorRatio", "ResponseCodeRatio", "LatencyAtQuantileMS", "&&", "||", "(", ")", "\x00", "é"])


@given(st.lists(alphabet, max_size=40).map("".join))
@settings(max_examples=500, deadline=None)
def test_garbage_never_crashes_only_errors(text):
    try:
        ast = cb.parse(text)
    except cb.ExpressionError as exc:
        assert 0 <= exc.position <= len(text)
    else:
        assert ast.evaluate(SampleWindow([Sample(500, 5)])) in (True, False)


@given(expressions, st.lists(st.tuples(st.one_of(st.none(), st.integers(100, 599)), st.floats(0, 1e4)), max_size=20))
@settings(max_examples=200, deadline=None)
def test_evaluation_is_total_and_boolean(ast, samples):
    window = SampleWindow([Sample(s, l) for s, l in samples])
    assert ast.evaluate(window) in (True, False)


def test_an_empty_expression_says_so_without_a_position():
    for text in ("", "   "):
        with pytest.raises(cb.ExpressionError) as err:
            cb.parse(text)
        assert str(err.value) == "empty expression"
