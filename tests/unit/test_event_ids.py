"""Deterministic ids: our UUIDv5 is the standard library's, and the dedup store packs any UUID form
as `uuid.UUID` does."""

from __future__ import annotations

import uuid

from hypothesis import given
from hypothesis import strategies as st

from consumer.dedup import id_bytes
from handlers.event_ids import EVENT_ID_NAMESPACE, event_id, uuid5
from handlers.xapi import STATEMENT_ID_NAMESPACE, statement_id


@given(st.text())
def test_uuid5_is_the_standard_librarys_for_any_name(name: str) -> None:
    for namespace in (EVENT_ID_NAMESPACE, STATEMENT_ID_NAMESPACE, uuid.NAMESPACE_URL):
        assert uuid5(namespace, name) == str(uuid.uuid5(namespace, name))


def test_event_and_statement_ids_keep_their_namespaces_and_separator() -> None:
    parts = ("prt_01HZX4", "att_5b9e0c2d", "2026-06-14T09:30:00.000Z", "exam.result.passed")
    ce_id = event_id(*parts)
    assert ce_id == str(uuid.uuid5(EVENT_ID_NAMESPACE, "\x1f".join(parts)))
    assert statement_id(ce_id) == str(uuid.uuid5(STATEMENT_ID_NAMESPACE, ce_id))


@given(st.uuids())
def test_id_bytes_packs_every_spelling_of_a_uuid_as_uuid_does(value: uuid.UUID) -> None:
    for spelling in (str(value), str(value).upper(), value.hex, f"{{{value}}}", value.urn):
        assert id_bytes(spelling) == value.bytes


@given(st.text())
def test_id_bytes_keeps_any_other_string_as_its_utf8_bytes(text: str) -> None:
    try:
        expected = uuid.UUID(text).bytes
    except ValueError:
        expected = text.encode()
    assert id_bytes(text) == expected


def test_id_bytes_does_not_take_a_uuid_shaped_string_with_spaces_for_a_uuid() -> None:
    spaced = "0123456 -89ab-cdef-0123-456789abcdef"
    assert id_bytes(spaced) == spaced.encode()
