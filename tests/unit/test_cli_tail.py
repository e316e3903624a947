"""`exam-events tail` prints no personal data unless asked, and nothing a terminal would obey:
every case checked on what it writes, readable and as JSON lines."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from cli.tail import MASK, write_records

ADA = "Ada Lovelace"
LEARNER_ID = "usr_8f2c1a7e"


def record(
    value: bytes | None = b"{}",
    key: bytes | None = LEARNER_ID.encode(),
    headers: list[tuple[str, bytes]] | None = None,
) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(
        topic="exam.webhooks.unrouted",
        partition=0,
        offset=7,
        timestamp=1_764_676_800_000,
        timestamp_type=0,
        key=key,
        value=value,
        checksum=None,
        serialized_key_size=len(key or b""),
        serialized_value_size=len(value or b""),
        headers=headers or [],
    )


def printed(rec: ConsumerRecord[bytes, bytes], *, as_json: bool, show: bool = False) -> str:
    """What tail writes for one record."""
    out = io.StringIO()
    write_records([rec], out, as_json, show)
    return out.getvalue()


def as_event(rec: ConsumerRecord[bytes, bytes], *, show: bool = False) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(printed(rec, as_json=True, show=show))
    return event


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


@pytest.mark.parametrize("as_json", [True, False])
def test_tail_masks_the_record_key_which_is_the_learner_id(as_json: bool) -> None:
    output = printed(record(), as_json=as_json)

    assert LEARNER_ID not in output
    assert as_event(record())["key"] == MASK


def test_tail_shows_the_key_only_with_show_personal_data() -> None:
    assert as_event(record(), show=True)["key"] == LEARNER_ID


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize(
    "value",
    [
        f"name={ADA};email=ada@example.org".encode(),
        f"{ADA}\xff".encode("latin-1"),  # not UTF-8
        json.dumps(ADA).encode(),  # JSON, but a bare string
    ],
    ids=["text", "not-utf8", "bare-json-string"],
)
def test_tail_masks_a_value_that_is_not_a_json_object_whole_and_prints_its_size(
    value: bytes, as_json: bool
) -> None:
    output = printed(record(value), as_json=as_json)

    assert "Ada" not in output
    assert "ada@" not in output
    assert as_event(record(value))["value"] == f"{MASK} ({len(value)} bytes, not a JSON object or array)"


def test_tail_shows_a_value_that_is_not_json_as_text_with_show_personal_data() -> None:
    assert as_event(record(f"name={ADA}".encode()), show=True)["value"] == f"name={ADA}"


@pytest.mark.parametrize("as_json", [True, False])
@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (
            {"user": {"profile": {"contact": {"givenName": "Ada", "familyName": "Lovelace"}}}},
            {"user": {"profile": {"contact": {"givenName": MASK, "familyName": MASK}}}},
        ),
        ({"user": {"name": {"first": "Ada", "last": "Lovelace"}}}, {"user": {"name": MASK}}),
        ({"learner": {"name": ["Ada", "Lovelace"]}}, {"learner": {"name": MASK}}),
        (
            {"User": {"NAME": ADA, "Email": "ada@example.org", "SURNAME": "Lovelace", "First_Name": "Ada"}},
            {"User": {"NAME": MASK, "Email": MASK, "SURNAME": MASK, "First_Name": MASK}},
        ),
        (
            {"attendees": [{"first-name": "Ada", "lastName": "Lovelace", "surname": "Lovelace"}]},
            {"attendees": [{"first-name": MASK, "lastName": MASK, "surname": MASK}]},
        ),
        (
            {"user": {"id": LEARNER_ID}, "learnerId": LEARNER_ID, "note": "mail ada@example.org"},
            {"user": {"id": MASK}, "learnerId": MASK, "note": f"mail {MASK}"},
        ),
    ],
    ids=["nested-givenName", "name-object", "list-under-name", "other-case", "in-a-list", "learner-id"],
)
def test_tail_masks_names_emails_and_learner_ids_at_any_depth_in_any_spelling(
    value: dict[str, Any], masked: dict[str, Any], as_json: bool
) -> None:
    output = printed(record(body(value)), as_json=as_json)

    assert as_event(record(body(value)))["value"] == masked
    for secret in ("Ada", "Lovelace", "ada@", LEARNER_ID):
        assert secret not in output


def test_tail_keeps_the_names_of_exams_and_the_values_next_to_the_masked_ones() -> None:
    value = {"exam": {"id": "exm_1", "name": "Maths"}, "learner": {"name": ADA, "subPortalId": "sp_1"}}

    event = as_event(record(body(value)))

    assert event["value"] == {
        "exam": {"id": "exm_1", "name": "Maths"},
        "learner": {"name": MASK, "subPortalId": "sp_1"},
    }


def test_tail_shows_every_name_with_show_personal_data() -> None:
    value = {"user": {"id": LEARNER_ID, "name": {"given": "Ada"}, "givenName": "Ada"}}

    assert as_event(record(body(value)), show=True)["value"] == value


HOSTILE_EVENT_NAME = "exam.\x1b[2J\x1b[1;1Hhijacked"


@pytest.mark.parametrize("show", [False, True])
@pytest.mark.parametrize("as_json", [True, False])
def test_tail_strips_an_escape_sequence_from_a_header_value_and_from_meta_event_name(
    as_json: bool, show: bool
) -> None:
    rec = record(
        body({"meta": {"eventName": HOSTILE_EVENT_NAME}}),
        headers=[("event-name", HOSTILE_EVENT_NAME.encode()), ("ce_type", HOSTILE_EVENT_NAME.encode())],
    )

    output = printed(rec, as_json=as_json, show=show)
    event = as_event(rec, show=show)

    assert "\x1b" not in output
    assert "[2J" not in output
    assert "\\u001b" not in output  # not escaped either: removed
    assert event["headers"]["event-name"] == event["cloudevents"]["type"] == "exam.hijacked"
    assert event["value"]["meta"]["eventName"] == "exam.hijacked"


# C0 (tab and newline too), DEL, C1, an 8-bit CSI, an OSC (a window title), a bidi override.
CONTROLS = ["\x00", "\x07", "\t", "\n", "\r", "\x7f", "\x85", "\x9b2J", "\x1b]0;title\x07", "\u202e"]


def dirty_and_clean(text: str) -> tuple[ConsumerRecord[bytes, bytes], ConsumerRecord[bytes, bytes]]:
    """A record with `text` in its key, a header's name and value, a JSON key and values; and the
    same record with `ab` there."""

    def build(part: str) -> ConsumerRecord[bytes, bytes]:
        return record(body({part: part, "list": [part]}), key=part.encode(), headers=[(part, part.encode())])

    return build(text), build("ab")


@pytest.mark.parametrize("control", CONTROLS, ids=repr)
@pytest.mark.parametrize("as_json", [True, False])
def test_tail_strips_c0_del_c1_and_escape_sequences_from_key_header_names_values_and_json_keys(
    control: str, as_json: bool
) -> None:
    dirty, clean = dirty_and_clean(f"a{control}b")

    assert printed(dirty, as_json=as_json, show=True) == printed(clean, as_json=as_json, show=True)


@pytest.mark.parametrize("control", CONTROLS, ids=repr)
def test_tail_strips_control_characters_from_a_value_that_is_not_json(control: str) -> None:
    assert as_event(record(f"a{control}b".encode()), show=True)["value"] == "ab"


def test_tail_masks_an_email_address_that_a_control_character_split() -> None:
    rec = record(body({"note": "ada\n@example.org"}), headers=[("reply-to", b"ada@\texample.org")])

    event = as_event(rec)

    assert event["value"]["note"] == MASK
    assert event["headers"]["reply-to"] == MASK
