"""Fixtures shared by every test: the real broker and factories for unique names."""

from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

import common.logging
from tests.support.broker import (
    LocalBroker,
    container_broker,
    docker_engine_answers,
    local_broker,
)
from tests.support.kafka_io import create_topics
from tests.support.tracing import MemoryTracing

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_BODY = ROOT / "tests" / "data" / "exam-results-released.json"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under integration/ and e2e/ need the broker; mark them so they can be selected."""
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts or "e2e" in parts:
            item.add_marker(pytest.mark.kafka)
        if "e2e" in parts:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True, scope="session")
def _uncached_loggers() -> Iterator[None]:
    """Every test's structlog.testing.capture_logs sees every logger, whatever ran before it."""
    common.logging.CACHE_LOGGERS = False
    yield
    common.logging.CACHE_LOGGERS = True


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a real Kafka broker for the whole test session."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS"):
        yield os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    elif docker_engine_answers():
        with container_broker() as bootstrap:
            yield bootstrap
    else:
        with local_broker(tmp_path_factory.mktemp("kafka-session")) as broker:
            yield broker.bootstrap


@pytest.fixture
def restartable_broker(tmp_path: Path) -> Iterator[LocalBroker]:
    """A broker of this test's own that the test may stop and start (scripts/kafka-local)."""
    with local_broker(tmp_path / "kafka") as broker:
        yield broker


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """Factory of names no other test uses: topic names, group ids."""
    test = request.node.name.replace("[", "-").replace("]", "")[:40]

    def make(prefix: str) -> str:
        return f"{prefix}.{test}.{uuid.uuid4().hex[:8]}"

    return make


@pytest.fixture
def new_topic(kafka_bootstrap: str, unique_name: Callable[[str], str]) -> Callable[..., Awaitable[str]]:
    """Factory that creates a fresh topic on the session broker and returns its name."""

    async def make(prefix: str = "test", partitions: int = 1) -> str:
        name = unique_name(prefix)
        await create_topics(kafka_bootstrap, [name], partitions)
        return name

    return make


@pytest.fixture
def new_group_id(unique_name: Callable[[str], str]) -> Callable[[], str]:
    """Factory of consumer group ids unique to this test."""
    return lambda: unique_name("group")


@pytest.fixture(scope="session")
def sample_body() -> bytes:
    """A realistic Exam Results Released body, byte for byte as the platform sends it."""
    return FIXTURE_BODY.read_bytes()


@pytest.fixture
def memory_tracing() -> Iterator[MemoryTracing]:
    """Tracing on, every ended span kept in memory (the SDK's in-memory exporter)."""
    tracing = MemoryTracing()
    yield tracing
    tracing.shutdown()
