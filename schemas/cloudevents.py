"""A derived event as the consumer publishes it: CloudEvents 1.0 in Kafka binary content mode."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

SPEC_VERSION = b"1.0"
CONTENT_TYPE = b"application/json"


@dataclass(frozen=True, slots=True)
class DerivedEvent:
    """One derived event: CloudEvents attributes, the Kafka key, and the data model."""

    type: str  # ce_type, e.g. "exam.result.passed"
    id: str  # ce_id: deterministic, so a redelivered webhook gives the same id
    source: str  # ce_source
    subject: str  # ce_subject: the attempt id (the exam id of a registration)
    time: str  # ce_time: attempt.audit.releasedAt (else meta.timestamp), as the platform sent it
    key: str  # Kafka key: user.id, so one learner's events keep their order in a partition
    data: BaseModel  # the event's data, one of the models in schemas.derived

    def value(self) -> bytes:
        """The Kafka record value: the data as JSON, field names as on the wire."""
        return self.data.model_dump_json(by_alias=True).encode()

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
