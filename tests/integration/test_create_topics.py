"""scripts/create-topics creates every topic the system uses, once, and can raise partitions."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from tests.support.broker import ROOT

CREATE_TOPICS = ROOT / "scripts" / "create-topics"
TOPIC_SETTINGS = (
    "RAW",
    "PASSED",
    "FAILED",
    "RESITS",
    "OVERRIDES",
    "ATTEMPTS",
    "REGISTRATIONS",
    "XAPI",
    "DLQ",
    "UNROUTED",
    "DEDUP",
)


def create_topics(env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(CREATE_TOPICS), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def topic_config(bootstrap: str, topic: str, name: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    return str(next(c[1] for r in configs for res in r.resources for c in res[4] if c[0] == name))


async def partitions_and_max_bytes(bootstrap: str, topics: list[str]) -> dict[str, tuple[int, str]]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        counts = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
        configs = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
        max_bytes = {
            resource[3]: next(c[1] for c in resource[4] if c[0] == "max.message.bytes")
            for response in configs
            for resource in response.resources
        }
    finally:
        await admin.close()
    return {t: (counts[t], max_bytes[t]) for t in topics}


async def test_it_creates_every_topic_with_room_for_the_largest_body_and_grows_them_on_request(
    kafka_bootstrap: str, unique_name: Callable[[str], str]
) -> None:
    names = {kind: unique_name(kind.lower()) for kind in TOPIC_SETTINGS}
    env = {f"CONSUMER_{kind}_TOPIC": name for kind, name in names.items()}
    names["LRS_DLQ"] = env["LRS_DLQ_TOPIC"] = unique_name("lrs-dlq")  # lrs-forward's dead letters
    env["KAFKA_BOOTSTRAP_SERVERS"] = kafka_bootstrap

    first = create_topics(env, "--partitions", "2")
    assert first.count("created") == len(names)
    state = await partitions_and_max_bytes(kafka_bootstrap, list(names.values()))
    assert {count for count, _ in state.values()} == {2}
    for kind in ("RAW", "DLQ", "UNROUTED"):  # they carry whole webhook bodies
        assert int(state[names[kind]][1]) >= 1024 * 1024 + 64 * 1024
    assert create_topics(env, "--partitions", "2").count("created") == 0
    # Exactly-once's dedup changelog: compacted, records kept for the dedup window (168 h).
    assert await topic_config(kafka_bootstrap, names["DEDUP"], "cleanup.policy") == "compact,delete"
    assert await topic_config(kafka_bootstrap, names["DEDUP"], "retention.ms") == str(168 * 3600 * 1000)

    create_topics(env, "--partitions", "4", "--grow")
    grown = await partitions_and_max_bytes(kafka_bootstrap, list(names.values()))
    assert {count for count, _ in grown.values()} == {4}
