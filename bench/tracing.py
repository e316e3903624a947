#!/usr/bin/env python3
"""What tracing costs per webhook: the ingress's endpoint and the consumer's batch planning, off and on.

    .venv/bin/python bench/tracing.py [--rounds 15] [--calls 2000]

CPU only, in one process, no broker and no server: the ingress's `WebhookEndpoint` answering the
recorded Exam Results Released body (Basic auth, an inbound `traceparent`) to a producer that does
nothing, and the consumer's `plan_batch` over batches of 100 such records. Each is timed with
tracing off (`OTEL_TRACES_EXPORTER` unset: the default), on with every trace sampled, and on with
the sampler dropping every trace (`OTEL_TRACES_SAMPLER=always_off`); on, spans go through the SDK's
batch span processor to an exporter that drops them. Prints the median of `--rounds` rounds per
variant, interleaved so that the machine's noise hits each alike, and the ratio to off.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, Sampler
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.kafka import KafkaConnectionSettings  # noqa: E402
from common.tracing import NO_TRACING, Tracing  # noqa: E402
from consumer.plan import plan_batch  # noqa: E402
from consumer.settings import ConsumerSettings  # noqa: E402
from handlers import RulesSettings, build_routing_table  # noqa: E402
from ingress.app import create_app  # noqa: E402
from ingress.producer import Delivery, Headers, Readiness  # noqa: E402
from ingress.settings import IngressSettings  # noqa: E402

BODY = (ROOT / "tests" / "data" / "exam-results-released.json").read_bytes()
TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
PASSWORD = "p" * 20
BATCH = 100


class DroppingExporter(SpanExporter):
    """Takes every span and keeps none: the export itself is not what is measured."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class NoopProducer:
    """Acknowledges every record at once."""

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        return Delivery(0, 0)

    def unreachable(self) -> str | None:
        return None

    async def readiness(self) -> Readiness:
        return Readiness(True, {})


@dataclass
class RawRecord:
    """A consumed record as aiokafka hands it over."""

    value: bytes
    offset: int
    partition: int = 0
    topic: str = "exam.webhooks.raw"
    key: bytes | None = b"usr_8f2c1a7e"
    headers: Sequence[tuple[str, bytes]] = field(default_factory=lambda: (("traceparent", TRACEPARENT),))


def sdk_tracing(sampler: Sampler) -> Tracing:
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    # A queue that never fills: a dropped span would be work not measured.
    provider.add_span_processor(BatchSpanProcessor(DroppingExporter(), max_queue_size=1_000_000))
    return Tracing(provider.get_tracer("bench"), provider)


def ingress_call(tracing: Tracing, calls: int) -> Callable[[], float]:
    """A round of `calls` webhooks through the endpoint; returns µs per webhook."""
    settings = IngressSettings(
        basic_auth_username="bench",
        basic_auth_password=SecretStr(PASSWORD),
        raw_topic="exam.webhooks.raw",
        kafka=KafkaConnectionSettings(bootstrap_servers="127.0.0.1:1"),
    )
    app = create_app(settings, producer=NoopProducer(), tracing=tracing)
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/webhooks",
        "headers": [
            (b"content-type", b"application/json"),
            (b"authorization", b"Basic " + base64.b64encode(f"bench:{PASSWORD}".encode())),
            (b"content-length", str(len(BODY)).encode()),
            (b"traceparent", TRACEPARENT),
        ],
    }
    message = {"type": "http.request", "body": BODY, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    async def send(_: Any) -> None:
        return None

    async def one_round() -> float:
        started = time.perf_counter()
        for _ in range(calls):
            await app(scope, receive, send)
        return (time.perf_counter() - started) / calls * 1e6

    loop = asyncio.new_event_loop()
    return lambda: loop.run_until_complete(one_round())


def consumer_plan(tracing: Tracing, calls: int) -> Callable[[], float]:
    """A round of `calls` records planned in batches of 100; returns µs per record."""
    settings = ConsumerSettings(rules=RulesSettings())
    routes = build_routing_table(settings.rules)
    batch = [RawRecord(BODY, offset) for offset in range(BATCH)]

    def one_round() -> float:
        started = time.perf_counter()
        for _ in range(max(1, calls // BATCH)):
            plan = plan_batch(
                batch,
                routes,
                settings.derived_topics,
                dlq_topic=settings.dlq_topic,
                unrouted_topic=settings.unrouted_topic,
                tracing=tracing,
                group_id="bench",
            )
            # End the batch's spans as the checkpoint would once its outputs were acknowledged.
            plan.trace.start_publish(plan.outgoing)
            plan.trace.published()
            with plan.trace.committing({}):
                pass
            plan.trace.finish()
        return (time.perf_counter() - started) / (max(1, calls // BATCH) * BATCH) * 1e6

    return one_round


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per variant (median printed)")
    parser.add_argument("--calls", type=int, default=2000, help="webhooks per round")
    args = parser.parse_args()
    # The ingress's per-request log line is part of what it costs, but not to the terminal here.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))

    variants = {
        "off": NO_TRACING,
        "on, all sampled": sdk_tracing(ALWAYS_ON),
        "on, none sampled": sdk_tracing(ALWAYS_OFF),
    }
    for title, build in (
        ("ingress WebhookEndpoint, µs per webhook", ingress_call),
        ("consumer plan_batch, µs per record", consumer_plan),
    ):
        rounds = {name: build(tracing, args.calls) for name, tracing in variants.items()}
        for run in rounds.values():
            run()  # warm-up
        timings: dict[str, list[float]] = {name: [] for name in rounds}
        for done in range(args.rounds):
            for name, run in rounds.items():
                timings[name].append(run())
            if sys.stderr.isatty():
                print(f"\r{title}: round {done + 1}/{args.rounds}", end="", file=sys.stderr, flush=True)
        if sys.stderr.isatty():
            print(file=sys.stderr)
        off = statistics.median(timings["off"])
        print(title)
        for name, values in timings.items():
            median = statistics.median(values)
            print(f"  {name:<18} {median:8.1f}   x{median / off:.2f} of off")
    for tracing in variants.values():
        tracing.shutdown()


if __name__ == "__main__":
    main()
