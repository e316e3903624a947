"""`python -m ingress` as operators run it: posts reach Kafka on the public port, probes and metrics
answer on the admin port, a refusal reaches a client still sending, slow clients keep no one out and
are closed, SIGTERM exits 0, the log stays clean."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest

from tests.support.broker import ROOT
from tests.support.ingress_harness import JSON, PASSWORD, SIGNING_SECRET, USERNAME, basic_auth, signed
from tests.support.ingress_process import ingress_environment, ingress_process
from tests.support.ingress_server import post_request, send_all_then_read, statuses
from tests.support.kafka_io import read_records
from tests.support.slow_clients import need_open_files, slow_clients

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
            public_probe = await client.get("/readyz")
            public_metrics = await client.get("/metrics")
        async with httpx.AsyncClient(base_url=ingress.admin_url, timeout=30) as admin:
            ready = await admin.get("/readyz")
            metrics = (await admin.get("/metrics")).text

        ingress.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(ingress.process.wait, 60)

    assert [by_password.status_code, by_signature.status_code, refused.status_code] == [202, 202, 401]
    assert (public_probe.status_code, public_metrics.status_code) == (404, 404)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["checks"]["broker_reachable"] is True
    assert 'exam_events_ingress_requests_total{status="202"} 2.0' in metrics
    assert exit_code == 0
    records = await read_records(kafka_bootstrap, topic, count=2)
    assert [r.value for r in records] == [sample_body, sample_body]
    log = ingress.log()
    request_lines = [json.loads(line) for line in log.splitlines() if '"event": "webhook"' in line]
    assert [line["status"] for line in request_lines] == [202, 202, 401]
    assert {"size", "latency_ms", "webhook_id", "event_name"} <= set(request_lines[0])
    for secret in ["amara.okafor@example.org", "Amara Okafor", PASSWORD, SIGNING_SECRET]:
        assert secret not in log


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ({}, "ingress: invalid settings: no authentication configured"),
        (
            {"INGRESS_ALLOW_UNAUTHENTICATED": "true", "INGRESS_ADMIN_PORT": "1"},
            "ingress: invalid settings: INGRESS_ADMIN_PORT must differ from INGRESS_PORT (both 1)",
        ),
        (
            {"INGRESS_ALLOW_UNAUTHENTICATED": "true", "OTEL_TRACES_EXPORTER": "nonesuch"},
            "ingress: invalid settings: OTEL_TRACES_EXPORTER: unknown exporter 'nonesuch'",
        ),
    ],
    ids=["without authentication", "admin port equal to the public port", "unknown trace exporter"],
)
def test_the_ingress_refuses_to_start_with_invalid_settings_in_one_line_and_exit_2(
    kafka_bootstrap: str, settings: dict[str, str], line: str
) -> None:
    finished = subprocess.run(
        [sys.executable, "-m", "ingress"],
        cwd=ROOT,
        env=ingress_environment(kafka_bootstrap, "unused", 1, **settings),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert finished.returncode == 2
    assert finished.stderr.startswith(line)
    assert finished.stderr.count("\n") == 1


async def test_with_a_trace_exporter_configured_the_process_continues_the_senders_trace(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], sample_body: bytes, tmp_path: Path
) -> None:
    topic = await new_topic("raw-traced")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    settings = {**CREDENTIALS, "OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "ingress-under-test"}
    with ingress_process(kafka_bootstrap, topic, tmp_path / "ingress.log", **settings) as ingress:
        async with httpx.AsyncClient(base_url=ingress.url, timeout=30) as client:
            response = await client.post(
                "/webhooks",
                content=sample_body,
                headers={**JSON, **basic_auth(), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
            )
        ingress.process.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(ingress.process.wait, 60)

    assert response.status_code == 202
    assert exit_code == 0
    (record,) = await read_records(kafka_bootstrap, topic, count=1)
    assert record.headers["traceparent"].startswith(f"00-{trace}-".encode())
    # The SDK's console exporter printed both spans at shutdown, in the sender's trace.
    log = ingress.log()
    assert '"name": "receive"' in log
    assert '"name": "produce"' in log
    assert f'"trace_id": "0x{trace}"' in log
    assert '"service.name": "ingress-under-test"' in log
    assert "Amara Okafor" not in log


async def test_a_client_sending_2_mib_before_reading_gets_the_processs_413_every_time(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], tmp_path: Path
) -> None:
    # Under uvloop, as in production: the lingering close's half-close and protocol swap.
    topic = await new_topic("raw-e2e-413")
    body = b'{"pad":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    with ingress_process(kafka_bootstrap, topic, tmp_path / "ingress.log", **CREDENTIALS) as ingress:
        answers = [await send_all_then_read(ingress.port, post_request(body)) for _ in range(10)]

    assert [statuses(raw) for raw in answers] == [[413]] * 10
    assert all(raw.endswith(b"<EOF>") for raw in answers)


async def test_slow_clients_neither_keep_the_sender_out_nor_stay_open_on_either_port(
    kafka_bootstrap: str, new_topic: Callable[..., Awaitable[str]], sample_body: bytes, tmp_path: Path
) -> None:
    # The attack of issue 17: 300 connections that send nothing and 20 that send a header line a
    # second used to get the real sender a 503 at once, and stayed open for good.
    need_open_files(4096)
    topic = await new_topic("raw-e2e-slow-clients")
    deadlines = {"INGRESS_HEADER_TIMEOUT_SECONDS": "2", "INGRESS_KEEP_ALIVE_TIMEOUT_SECONDS": "1"}
    with ingress_process(
        kafka_bootstrap, topic, tmp_path / "ingress.log", **CREDENTIALS, **deadlines
    ) as ingress:
        async with (
            slow_clients(ingress.port, idle=300, trickling=20, every=0.5) as public,
            slow_clients(ingress.admin_port, idle=100, trickling=5, every=0.5) as admin,
            httpx.AsyncClient(timeout=10) as client,
        ):
            started = time.perf_counter()
            posted = await client.post(
                f"{ingress.url}/webhooks", content=sample_body, headers={**JSON, **basic_auth()}
            )
            post_seconds = time.perf_counter() - started
            health = await client.get(f"{ingress.admin_url}/healthz")
            # Idle ones: at 1 s (keep-alive); trickling ones: at 2 s (head deadline); a margin on top.
            closed_public, closed_admin = await asyncio.gather(
                public.closed_by_server(within=4), admin.closed_by_server(within=4)
            )

    assert posted.status_code == 202
    assert post_seconds < 1
    assert health.status_code == 200
    assert closed_public == (300, 20)
    assert closed_admin == (100, 5)
    assert [statuses(raw) for raw in public.received.values()] == [[408]] * 20
    (record,) = await read_records(kafka_bootstrap, topic, count=1)
    assert record.value == sample_body
