"""A real LRS for the forwarder's tests: Ralph 5.1.0, installed once into a cached venv of its own.

Every test here gets the `lrs` marker (registered below) and `kafka` (it needs a real broker too, so
`-m "not kafka"` leaves it out), and a timeout that leaves room for Ralph's first install (about a
minute on our machine; cached afterwards). When PyPI cannot be reached the tests fail with the
reason; `EXAM_EVENTS_LRS_OFFLINE=skip` makes them skip instead (for a machine known to be offline).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ralph import RalphServer, RalphUnavailable, ralph_server, ralph_venv

HERE = Path(__file__).resolve().parent
TIMEOUT_SECONDS = 600


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "lrs: runs against a real Ralph LRS (installed into a cached venv)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.lrs)
            item.add_marker(pytest.mark.kafka)
            item.add_marker(pytest.mark.timeout(TIMEOUT_SECONDS))


@pytest.fixture(scope="session")
def ralph_installation() -> Path:
    """The venv with Ralph in it (built on the first run, then taken from the cache)."""
    try:
        return ralph_venv()
    except RalphUnavailable as exc:
        if os.environ.get("EXAM_EVENTS_LRS_OFFLINE") == "skip":
            pytest.skip(f"{exc} (EXAM_EVENTS_LRS_OFFLINE=skip)")
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def ralph(ralph_installation: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RalphServer]:
    """One Ralph LRS for the session (file-system store in a temporary directory), stopped at the end."""
    with ralph_server(tmp_path_factory.mktemp("ralph"), ralph_installation) as server:
        yield server


@pytest.fixture
def own_ralph(ralph_installation: Path, tmp_path: Path) -> Iterator[RalphServer]:
    """A Ralph LRS of this test's own, which the test may stop and start again."""
    with ralph_server(tmp_path / "ralph", ralph_installation) as server:
        yield server
