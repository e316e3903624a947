"""The test harness really talks to a Kafka broker."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.support.kafka_io import produce, read_records


async def test_records_produced_to_a_topic_are_read_back_with_key_and_headers(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]]
) -> None:
    topic = await new_topic("roundtrip", partitions=3)
    await produce(kafka_bootstrap, topic, [b"a", b"b", b"c"], key=b"k1", headers=[("h", b"v")])

    records = await read_records(kafka_bootstrap, topic, count=3)

    assert sorted(r.value or b"" for r in records) == [b"a", b"b", b"c"]
    assert {r.key for r in records} == {b"k1"}
    assert len({r.partition for r in records}) == 1  # one key, one partition
    assert all(r.headers == {"h": b"v"} for r in records)
