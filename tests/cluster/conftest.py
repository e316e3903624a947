"""The three-node cluster shared by the cluster tests: started once per session, stopped at the end.

Every test here gets the `cluster` marker (registered below) and `kafka` (it needs a real broker,
so `-m "not kafka"` leaves it out). A test that stops or kills a node starts it again before it
ends, so the next test finds all three nodes in the cluster.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import LocalCluster, local_cluster

HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: runs on a three-node KRaft cluster (scripts/kafka-local start --nodes 3)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """A three-node cluster on free ports with its own data directory, for the whole session."""
    with local_cluster(tmp_path_factory.mktemp("kafka-cluster")) as cluster:
        yield cluster
