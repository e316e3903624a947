"""One rule for numbers, at the ingress and in the consumer: a body with a non-finite number is refused.

Non-finite means `NaN`, `Infinity`, `-Infinity` (not JSON at all) or a literal past a double's
range such as `1e999` (valid JSON grammar, but every parser here reads it as infinity, which is
written as `null` downstream: a score would silently vanish).

Parsers give no cheap way to refuse an overflow, and walking every parsed document costs as much
as parsing it. So the raw bytes are screened first, for the only shapes that can overflow, and
only a body that has one is walked (`holds_non_finite`).
"""

from __future__ import annotations

import math

NON_FINITE_REASON = "non-finite number in JSON"

# A literal overflows only with an exponent of 3 or more digits or with 200 or more digits in a
# row: with an exponent of at most 99, the integer part needs 210 digits to pass 1.8e308.
# Digits become "d", `e`, `E` and `+` become "e" (so "e+ddd" shows as "eeddd"), the rest ".".
_SHAPE = bytes(
    ord("d") if chr(byte).isdigit() and byte < 128 else ord("e") if byte in b"eE+" else ord(".")
    for byte in range(256)
)
_EXPONENT_OF_3_DIGITS = b"eddd"
_RUN_OF_200_DIGITS = b"d" * 200


def may_overflow(body: bytes) -> bool:
    """False when no number of `body` can be past a double's range; True when one may be."""
    shape = body.translate(_SHAPE)
    return _EXPONENT_OF_3_DIGITS in shape or _RUN_OF_200_DIGITS in shape


def may_hold_non_finite(body: bytes) -> bool:
    """False when `body`, parsed leniently, cannot hold NaN or an infinity; True when it may."""
    return b"NaN" in body or b"Infinity" in body or may_overflow(body)


def holds_non_finite(document: object) -> bool:
    """True when a parsed JSON document holds a NaN or an infinity anywhere, keys aside."""
    stack = [document]
    while stack:
        value = stack.pop()
        if type(value) is dict:  # exact types: what JSON parsers build, and cheaper than isinstance
            stack.extend(value.values())
        elif type(value) is list:
            stack.extend(value)
        elif type(value) is float and not math.isfinite(value):
            return True
    return False
