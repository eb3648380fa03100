"""Bounded JSON: the same answer as json.loads on what it accepts, one line for everything it refuses."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blackholes.errors import BlackholesError
from blackholes.io.untrusted import MAX_DEPTH, json_depth, parse_json

scalars = st.one_of(st.none(), st.booleans(), st.integers(-(10**39), 10**39),
                    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=20))
documents = st.recursive(scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                        st.dictionaries(st.text(max_size=8), kids, max_size=4)),
                         max_leaves=40)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=200, deadline=None)
@given(documents)
def test_agrees_with_json_loads_and_counts_depth_exactly(doc):
    text = json.dumps(doc)
    assert parse_json(text, what="doc") == json.loads(text)
    assert parse_json(text.encode(), what="doc") == json.loads(text)
    assert json_depth(text.encode()) == _depth(doc)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_refuse_with_one_line(raw):
    try:
        parse_json(raw, what="blob")
    except BlackholesError as e:
        assert str(e).startswith("blob: ") and "\n" not in str(e)


@pytest.mark.parametrize("text, message", [
    ("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested deeper than 64 levels"),
    ("[" * 100_000, "nested deeper than 64 levels"),
    ('{"offset": ' + "9" * 5000 + "}", "an integer of 5000 digits"),
    ('{"offset": -' + "9" * 41 + "}", "an integer of 41 digits"),
    ("[NaN]", "NaN is not a JSON number"),
    ("[-Infinity]", "-Infinity is not a JSON number"),
    ("[1e999]", "1e999 is beyond the largest float"),
    ("[0." + "1" * 500 + "]", "a number written in 502 characters"),
    ('{"a": [}', "not valid JSON (line 1 column 8"),
    ('"' + '\\"' * 200_000, "not valid JSON"),
    (b"\xff{}", "not UTF-8 text (byte 0)"),
])
def test_refusals_name_the_input_and_the_limit(text, message):
    with pytest.raises(BlackholesError) as e:
        parse_json(text, what="model/config.json")
    assert str(e.value).startswith("model/config.json: ") and message in str(e.value)


def test_brackets_inside_strings_are_not_nesting():
    doc = {"merges": ["[" * 500, "{" * 500], "ok": [[1]]}
    assert parse_json(json.dumps(doc), what="tokenizer.json") == doc


def test_size_limit_and_nan_when_allowed():
    with pytest.raises(BlackholesError, match="more than 10"):
        parse_json("[" + "1," * 10 + "1]", what="x", max_bytes=10)
    assert math.isnan(parse_json("[NaN]", what="x", allow_nan=True)[0])
