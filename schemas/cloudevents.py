"""A derived event as the consumer publishes it: CloudEvents 1.0 in Kafka binary content mode."""

from __future__ import annotations

import builtins
from typing import Any, NamedTuple

from pydantic import BaseModel
from pydantic_core import to_json

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/json"


class DerivedEvent(NamedTuple):
    """One derived event: CloudEvents attributes, the Kafka key, and the data model.

    Immutable, and built per record: a named tuple costs a third of a frozen dataclass.
    """

    type: str  # ce_type, e.g. "exam.result.passed"
    id: str  # ce_id: deterministic, so a redelivered webhook gives the same id
    source: str  # ce_source
    subject: str  # ce_subject: the attempt id (the exam id of a registration)
    time: str  # ce_time: attempt.audit.releasedAt (else meta.timestamp), as the platform sent it
    key: str  # Kafka key: user.id, so one learner's events keep their order in a partition
    # The event's data as on the wire (camelCase names, in the model's field order), shaped as
    # `data_model`. Handlers build it from a webhook its model has just validated, so the consumer
    # does not validate it again: that was the largest cost of a derived event (docs/performance.md).
    data: dict[str, Any]
    data_model: builtins.type[BaseModel]  # one of the models in schemas.derived, or the xAPI statement's

    def value(self) -> bytes:
        """The Kafka record value: the data as JSON (NaN and infinities as null, as pydantic writes
        them: the platform's numbers may overflow to infinity, and JSON has no word for it)."""
        return to_json(self.data, inf_nan_mode="null")

    def validated(self) -> BaseModel:
        """The data validated by its model. The tests hold every handler to it: its JSON is `value()`,
        byte for byte (tests/unit/test_derived_wire.py)."""
        return self.data_model.model_validate(self.data)

    def kafka_headers(self) -> list[tuple[str, bytes]]:
        """CloudEvents binary-mode headers (`ce_*`) plus the data's content type."""
        return [
            ("ce_specversion", SPEC_VERSION),
            ("ce_id", self.id.encode()),
            ("ce_source", self.source.encode()),
            ("ce_type", self.type.encode()),
            ("ce_subject", self.subject.encode()),
            ("ce_time", self.time.encode()),
            ("content-type", CONTENT_TYPE),
        ]
