"""Fuzzing headers and bodies against the app with a real producer: no 500, no crash, 202 only when due."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ingress.app import IngressApp, create_app
from ingress.bootstrap import build_producer
from ingress.openapi import PATH_EVENT_NAME_MAX_CHARS, PATH_EVENT_NAME_PATTERN, WEBHOOK_RESPONSES
from ingress.producer import KafkaRecordProducer
from tests.support.ingress_harness import (
    OTHER_KEY,
    PASSWORD,
    basic_auth,
    ingress_settings,
    signed,
)

MAX_BODY = 8192  # room for integer literals past 4300 digits
RawHeaders = list[tuple[bytes, bytes]]
CREDENTIAL_NAMES = {
    b"authorization",
    b"webhook-id",
    b"webhook-timestamp",
    b"webhook-signature",
    b"content-type",
}


@dataclass
class FuzzTarget:
    app: IngressApp
    producer: KafkaRecordProducer


@pytest.fixture
async def target(kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]) -> AsyncIterator[FuzzTarget]:
    from common.kafka import KafkaConnectionSettings

    topic = await new_topic("fuzz", partitions=2)
    settings_ = ingress_settings(
        raw_topic=topic,
        max_body_bytes=MAX_BODY,
        kafka=KafkaConnectionSettings(bootstrap_servers=kafka_bootstrap),
    )
    producer = build_producer(settings_)
    await producer.start()
    try:
        yield FuzzTarget(create_app(settings_, producer=producer), producer)
    finally:
        await producer.stop()


# Strings include lone surrogates (valid JSON escapes, not encodable as UTF-8) and long ones.
strings = (
    st.text()
    | st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
    | st.integers(100, 2000).map(lambda n: "e" * n)
)
integers = st.integers() | st.integers(10**300, 10**400)
json_values = st.recursive(
    st.none() | st.booleans() | integers | st.floats(allow_nan=False, allow_infinity=False) | strings,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
objects = st.fixed_dictionaries(
    {},
    optional={
        "user": st.fixed_dictionaries({}, optional={"id": json_values}) | json_values,
        "attempt": st.fixed_dictionaries({}, optional={"id": json_values}),
        "meta": st.fixed_dictionaries({}, optional={"eventName": json_values}),
        "extra": json_values,
    },
)
valid_bodies = objects.map(lambda o: json.dumps(o).encode())
# Valid objects are drawn most often, so that the 202 path is exercised as much as the refusals.
bodies = st.one_of(
    valid_bodies,
    valid_bodies,
    valid_bodies,
    json_values.map(lambda v: json.dumps(v).encode()),
    valid_bodies,
    st.binary(max_size=256),
    valid_bodies.map(lambda b: b + b" " * MAX_BODY),
    # Integer literals around Python's int conversion limit (4300 digits).
    st.integers(4290, 4400).map(lambda n: b'{"a":' + b"1" * n + b"}"),
    # Non-finite numbers (400) next to the largest finite ones (202).
    st.sampled_from([b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity", b"1e308", b"-1.7e308"]).map(
        lambda literal: b'{"a":[1,' + literal + b"]}"
    ),
)
json_types = st.sampled_from([b"application/json", b"application/json; charset=utf-8", b"application/x+json"])
content_types = st.one_of(
    json_types, json_types, st.sampled_from([b"text/plain", b"", b"json"]), st.binary(max_size=40)
)
junk_headers = st.lists(
    st.tuples(
        st.sampled_from(
            [b"authorization", b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"x-junk"]
        )
        | st.binary(min_size=1, max_size=20),
        st.binary(max_size=200) | st.integers(1, 500).map(lambda n: b"9" * n),  # long "timestamps"
    ).filter(
        # The server frames the body, so its Content-Length always matches; a junk one would be a
        # different request (400 or 413, tested in the unit tests). Hypothesis finds the name among
        # the app's constants.
        lambda header: header[0] != b"content-length"
    ),
    max_size=4,
)


@st.composite
def requests(draw: st.DrawFn, *, well_formed: bool = False) -> tuple[RawHeaders, bytes, dict[bytes, bytes]]:
    """Headers, body, and the valid credentials among the headers (empty when none were sent).

    `well_formed` draws only credentialed JSON-object posts, whose fuzzed parts are the object and
    extra headers: the 202 path gets as many examples as the refusals.
    """
    # Well-formed means storable too: a JSON object within the size limit (larger ones get 413).
    body = draw(valid_bodies.filter(lambda b: len(b) <= MAX_BODY) if well_formed else bodies)
    kinds = (
        ["basic", "signature"]
        if well_formed
        else ["basic", "signature", "wrong basic", "foreign signature", "none"]
    )
    auth = draw(st.sampled_from(kinds))
    credentials: dict[str, str] = {}
    if auth == "basic":
        credentials = basic_auth()
    elif auth == "signature":
        credentials = signed(body, msg_id=draw(st.text("abc_123", min_size=1, max_size=20)))
    elif auth == "wrong basic":
        credentials = basic_auth(password=draw(st.text(max_size=10).filter(lambda p: p != PASSWORD)))
    elif auth == "foreign signature":
        credentials = signed(body, key=OTHER_KEY)
    headers = [(name.encode(), value.encode()) for name, value in credentials.items()]
    if well_formed:
        headers.append((b"content-type", draw(json_types)))
        headers += draw(junk_headers.map(lambda hs: [(n, v) for n, v in hs if n not in CREDENTIAL_NAMES]))
    else:
        if draw(st.integers(0, 4)):
            headers.append((b"content-type", draw(content_types)))
        headers += draw(junk_headers)
    valid = dict(headers[: len(credentials)]) if auth in {"basic", "signature"} else {}
    return headers, body, valid


async def call(
    app: IngressApp, headers: RawHeaders, body: bytes, path: str = "/webhooks"
) -> tuple[int, bytes]:
    sent: list[MutableMapping[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": path, "headers": headers}, receive, send)
    return sent[0]["status"], sent[1]["body"]


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError("past a double's range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def is_json_object(body: bytes) -> bool:
    """A JSON object whose numbers are all finite."""
    try:
        document = json.loads(body.decode("utf-8"), parse_float=_finite, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(document, dict)


def is_json_type(value: bytes | None) -> bool:
    """The media type rule, restated independently of the app's code."""
    if not value:
        return False
    media = value.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (media.startswith(b"application/") and media.endswith(b"+json"))


def check_answer(
    status: int, answer: bytes, headers: RawHeaders, body: bytes, credentials: dict[bytes, bytes]
) -> None:
    """No 500 or 503; 202 exactly when credentials, size, content type and JSON shape are all right."""
    assert status in WEBHOOK_RESPONSES
    assert status != 503, answer
    last_values = dict(headers)  # a repeated header name: the app sees the last value
    due = (
        bool(credentials)
        and all(last_values.get(name) == value for name, value in credentials.items())
        and len(body) <= MAX_BODY
        and is_json_type(last_values.get(b"content-type"))
        and is_json_object(body)
    )
    assert (status == 202) == due, (status, answer)
    if status == 202:
        assert json.loads(answer)["offset"] >= 0


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(request=requests())
async def test_fuzzed_requests_never_get_a_500_and_get_202_only_when_everything_is_right(
    target: FuzzTarget, request: tuple[RawHeaders, bytes, dict[bytes, bytes]]
) -> None:
    headers, body, credentials = request

    status, answer = await call(target.app, headers, body)

    event(f"status {status}")
    check_answer(status, answer, headers, body, credentials)


@FUZZ
@given(request=requests(well_formed=True))
async def test_fuzzed_well_formed_posts_are_all_stored_and_answered_202(
    target: FuzzTarget, request: tuple[RawHeaders, bytes, dict[bytes, bytes]]
) -> None:
    headers, body, credentials = request

    status, answer = await call(target.app, headers, body)

    assert status == 202, answer
    check_answer(status, answer, headers, body, credentials)


# What a client generated from the OpenAPI document may send as `{eventName}` (percent-decoded, as
# ASGI gives it). `$` is ECMA-262's end of string: hypothesis reads the pattern with Python's.
documented_event_names = st.from_regex(PATH_EVENT_NAME_PATTERN.removesuffix("$") + r"\Z").filter(
    lambda name: len(name) <= PATH_EVENT_NAME_MAX_CHARS
)


@FUZZ
@given(name=documented_event_names, request=requests(well_formed=True))
async def test_fuzzed_event_names_the_openapi_document_allows_are_all_accepted(
    target: FuzzTarget, name: str, request: tuple[RawHeaders, bytes, dict[bytes, bytes]]
) -> None:
    headers, body, _ = request

    status, answer = await call(target.app, headers, body, f"/webhooks/{name}")

    assert status == 202, answer
