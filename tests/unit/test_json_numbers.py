"""The one rule for numbers: the raw-bytes screen never misses a literal past a double's range
(it may flag a finite one, such as 1e308: then the parsed document is walked)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from pydantic_core import from_json

from common.json_numbers import holds_non_finite, may_hold_non_finite, may_overflow

# JSON number literals of every shape: sign, integer part (up to 400 digits), fraction, exponent.
digits = st.text("0123456789", min_size=1, max_size=400)
literals = st.builds(
    lambda sign, integer, fraction, exponent: f"{sign}{integer.lstrip('0') or '0'}{fraction}{exponent}",
    st.sampled_from(["", "-"]),
    digits,
    st.sampled_from([""]) | digits.map(lambda d: "." + d),
    st.sampled_from([""])
    | st.tuples(
        st.sampled_from("eE"), st.sampled_from(["", "+", "-"]), st.text("0123456789", min_size=1, max_size=5)
    ).map("".join),
)


@given(literals)
@example("1e999")
@example("1" + "0" * 209 + "e99")
@example("1.7976931348623159e308")
@example("1e+309")
def test_every_literal_past_a_doubles_range_has_the_shape_the_screen_looks_for(literal: str) -> None:
    body = f'{{"n":{literal}}}'.encode()
    value = from_json(body)["n"]

    if isinstance(value, float) and math.isinf(value):
        assert may_overflow(body)
        assert holds_non_finite(from_json(body))


@pytest.mark.parametrize("body", [b'{"n":9.9e99}', b'{"n":1e-99,"m":"e12"}', b'{"d":"2026-06-14T09:30:12Z"}'])
def test_a_body_without_an_overflow_shape_passes_the_screen(body: bytes) -> None:
    assert not may_overflow(body)
    assert not may_hold_non_finite(body)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
def test_each_non_finite_literal_is_screened_and_found_however_deep(literal: str) -> None:
    body = f'{{"a":[{{"b":[1,2.5,{literal}]}}]}}'.encode()

    assert may_hold_non_finite(body)
    assert holds_non_finite(from_json(body))


def test_finite_documents_hold_no_non_finite_number() -> None:
    document = json.loads('{"a":[1,2.5,1e308,{"b":null,"c":"NaN"}],"Infinity":true}')

    assert not holds_non_finite(document)
