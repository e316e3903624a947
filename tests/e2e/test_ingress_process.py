"""`python -m ingress` as operators run it: posts reach Kafka, SIGTERM exits 0, the log stays clean."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from tests.support.broker import ROOT
from tests.support.ingress_harness import JSON, PASSWORD, SIGNING_SECRET, USERNAME, basic_auth, signed
from tests.support.ingress_process import ingress_environment, ingress_process
from tests.support.kafka_io import read_records

CREDENTIALS = {
    "INGRESS_BASIC_AUTH_USERNAME": USERNAME,
    "INGRESS_BASIC_AUTH_PASSWORD": PASSWORD,
    "INGRESS_SIGNING_SECRETS": SIGNING_SECRET,
}


async def test_the_ingress_process_stores_posts_and_exits_0_on_sigterm(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], sample_body: bytes, tmp_path: Path
) -> None:
    topic = await new_topic("raw-e2e", partitions=3)
    with ingress_process(kafka_bootstrap, topic, tmp_path / "ingress.log", **CREDENTIALS) as ingress:
        async with httpx.AsyncClient(base_url=ingress.url, timeout=30) as client:
            by_password = await client.post(
                "/webhooks", content=sample_body, headers={**JSON, **basic_auth()}
            )
            by_signature = await client.post(
                "/webhooks", content=sample_body, headers={**JSON, **signed(sample_body)}
            )
            refused = await client.post(
                "/webhooks", content=sample_body, headers={**JSON, **basic_auth(password="nope")}
            )
            ready = await client.get("/readyz")

        ingress.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(ingress.process.wait, 60)

    assert [by_password.status_code, by_signature.status_code, refused.status_code] == [202, 202, 401]
    assert ready.status_code == 200
    assert exit_code == 0
    records = await read_records(kafka_bootstrap, topic, count=2)
    assert [r.value for r in records] == [sample_body, sample_body]
    log = ingress.log()
    request_lines = [json.loads(line) for line in log.splitlines() if '"event": "webhook"' in line]
    assert [line["status"] for line in request_lines] == [202, 202, 401]
    assert {"size", "latency_ms", "webhook_id", "event_name"} <= set(request_lines[0])
    for secret in ["amara.okafor@example.org", "Amara Okafor", PASSWORD, SIGNING_SECRET]:
        assert secret not in log


def test_the_ingress_refuses_to_start_without_authentication(kafka_bootstrap: str) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "ingress"],
        cwd=ROOT,
        env=ingress_environment(kafka_bootstrap, "unused", 1),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 2
    assert "no authentication configured" in finished.stderr
