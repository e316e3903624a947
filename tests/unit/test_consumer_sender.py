"""KafkaSender picks partitions exactly as aiokafka's default partitioner would."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner
from hypothesis import given
from hypothesis import strategies as st

from consumer.sender import KafkaSender
from consumer.settings import ConsumerSettings
from handlers import RulesSettings

SENDER = KafkaSender(ConsumerSettings(rules=RulesSettings()))


@given(key=st.binary(min_size=1, max_size=40), partitions=st.integers(min_value=1, max_value=64))
def test_a_keyed_record_goes_to_the_partition_the_default_partitioner_chooses(
    key: bytes, partitions: int
) -> None:
    available = list(range(partitions))

    assert SENDER._partition(key, available) == DefaultPartitioner()(key, available, available)


def test_one_learner_always_maps_to_one_partition() -> None:
    available = [0, 1, 2, 3]

    assert len({SENDER._partition(b"usr_8f2c1a7e", available) for _ in range(50)}) == 1


def test_a_record_without_key_goes_to_some_available_partition() -> None:
    assert {SENDER._partition(None, [0, 1, 2]) for _ in range(200)} <= {0, 1, 2}
