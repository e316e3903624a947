"""Composition root of the consumer: `create_app(settings)` wires everything; nothing connects at import.

    python -m consumer
    faststream run consumer.app:create_app --factory      # same app, same CONSUMER_HTTP_* port

One batch subscriber on the raw topic (AckPolicy.MANUAL, raw records, no per-record casting), a
producer of our own for derived events, DLQ and unrouted records, and an HTTP port with /healthz,
/readyz, /metrics and the AsyncAPI page.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Sequence
from typing import Annotated, Any

import structlog
from aiokafka import TopicPartition
from faststream import AckPolicy
from faststream._internal.basic_types import SettingField
from faststream.asgi import AsgiFastStream, AsyncAPIRoute
from faststream.kafka import KafkaBroker
from faststream.kafka.message import FAKE_CONSUMER, KafkaMessage
from faststream.specification import AsyncAPI
from pydantic import GetPydanticSchema

from common.logging import configure_logging
from consumer.batch import BatchProcessor, InFlightBatch, Offsets, backoff_delay, commit_assigned
from consumer.http import health_routes
from consumer.metrics import ConsumerMetrics
from consumer.sender import KafkaSender, ManagedSender
from consumer.settings import ConsumerSettings
from handlers import build_routing_table
from schemas.derived import ExamFailed, ExamPassed, ResitAvailable, ResitExhausted, ResitPassed
from schemas.webhook import ExamResultsReleased

log = structlog.get_logger("consumer")


class ConsumerApp(AsgiFastStream):
    """The ASGI app, which serves on CONSUMER_HTTP_HOST/PORT unless the CLI says otherwise."""

    def __init__(
        self, *args: Any, settings: ConsumerSettings, metrics: ConsumerMetrics, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.settings = settings
        self.metrics = metrics

    async def run(
        self, log_level: int = logging.INFO, run_extra_options: dict[str, SettingField] | None = None
    ) -> None:
        """Serve with uvicorn; our logging stays in charge (no uvicorn log config, no access log)."""
        options: dict[str, SettingField] = {
            "host": self.settings.http_host,
            "port": self.settings.http_port,
            "log_config": None,
            "access_log": "false",  # FastStream parses CLI strings
            **(run_extra_options or {}),
        }
        _exit_zero_after_graceful_sigterm()
        await super().run(log_level, options)


# The raw channel's payload in the AsyncAPI document. FastDepends is off (apply_types=False), so
# this annotation only documents: the handler receives aiokafka records and validates each body once.
RawWebhookBatch = Annotated[
    Sequence[Any],
    GetPydanticSchema(lambda _source, handler: handler(list[ExamResultsReleased])),
]


def create_app(
    settings: ConsumerSettings | None = None, *, sender: ManagedSender | None = None
) -> ConsumerApp:
    """Build broker, subscriber, producer, metrics and HTTP routes from settings.

    `sender` replaces the Kafka producer (tests wrap the real one to inject broker errors).
    """
    settings = settings or ConsumerSettings()
    configure_logging("consumer", settings.log_level)
    metrics = ConsumerMetrics.create()
    sender = sender or KafkaSender(settings)
    in_flight = InFlightBatch(settings.graceful_timeout_seconds, metrics)

    broker = KafkaBroker(
        settings.kafka.bootstrap_list,
        client_id=settings.kafka.client_id,
        security=settings.kafka.faststream_security(),
        # Our producer sends everything (KafkaSender); the broker only consumes. Topics are provisioned
        # by operations, never auto-created with a guessed partition count.
        consumer_only=True,
        graceful_timeout=settings.graceful_timeout_seconds,
        # No FastDepends: the handler takes the raw records, so nothing is cast per record.
        apply_types=False,
        # FastStream's own per-batch "Received/Processed" lines; ours carry the offsets and outcomes.
        log_level=logging.DEBUG,
        # Through the root logger, so FastStream's lines are rendered like ours.
        logger=logging.getLogger("consumer.broker"),
        description="Turns Exam Results Released webhooks into pass/fail and resit events.",
    )
    subscriber = broker.subscriber(
        settings.raw_topic,
        batch=True,
        max_records=settings.batch_max_records,
        batch_timeout_ms=settings.batch_timeout_ms,
        group_id=settings.group_id,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.MANUAL,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        session_timeout_ms=settings.session_timeout_ms,
        # Wait for the in-flight batch on rebalance, within what the group coordinator allows.
        rebalance_timeout_ms=max(settings.session_timeout_ms, int(settings.graceful_timeout_seconds * 1000)),
        listener=in_flight,
        parser=_parse_batch,
        decoder=_raw_records,
        title=f"{settings.raw_topic}:consume",
        description="Raw webhook bodies as the ingress stored them, routed by meta.eventName.",
    )

    async def commit(offsets: Offsets) -> None:
        await commit_assigned(subscriber.consumer, offsets)

    processor = BatchProcessor(
        settings=settings,
        table=build_routing_table(settings.rules),
        sender=sender,
        commit=commit,
        metrics=metrics,
    )
    failures = 0

    @subscriber
    async def handle_raw_webhooks(records: RawWebhookBatch) -> None:
        """Route a batch of raw webhooks; publish derived events, DLQ and unrouted records; commit."""
        nonlocal failures
        async with in_flight.running():
            try:
                await processor.process(records)
                failures = 0
            except Exception:
                # A bug outside the per-record guard. FastStream would fetch on, and the next commit
                # would skip this batch: rewind its partitions instead, so it is read again.
                failures += 1
                metrics.batch_failures.inc()
                log.exception("batch handling crashed; rewinding to re-read it", records=len(records))
                _rewind(subscriber.consumer, records)
                await asyncio.sleep(
                    backoff_delay(
                        failures, settings.retry_backoff_initial_seconds, settings.retry_backoff_max_seconds
                    )
                )

    _document_outputs(broker, settings)

    def consume_task_crashes() -> float:
        return float(
            sum(1 for task in subscriber.tasks if task.done() and not task.cancelled() and task.exception())
        )

    metrics.consume_task_crashes.set_function(consume_task_crashes)

    async def ready() -> tuple[bool, dict[str, Any]]:
        consumer = subscriber.consumer
        assigned = len(consumer.assignment()) if consumer is not None else 0
        reachable = await sender.ping(timeout=2.0)
        looping = any(not task.done() for task in subscriber.tasks)
        checks = {
            "broker_reachable": reachable,
            "assigned_partitions": assigned,
            "consume_loop_running": looping,
        }
        return reachable and assigned > 0 and looping, checks

    return ConsumerApp(
        broker,
        settings=settings,
        metrics=metrics,
        asgi_routes=health_routes(ready, metrics.registry),
        # No "try it out" route: it would let any HTTP caller publish to the cluster.
        asyncapi_path=AsyncAPIRoute("/asyncapi", try_it_out_path=None),
        specification=AsyncAPI(
            title="exam-events consumer",
            description="Reads raw Exam Results Released webhooks and publishes CloudEvents.",
            version="0.1.0",
        ),
        on_startup=[sender.start],
        after_shutdown=[sender.stop],
        logger=logging.getLogger("consumer.app"),
    )


def _exit_zero_after_graceful_sigterm() -> None:
    """Make a SIGTERM that uvicorn has already turned into a graceful shutdown end with exit code 0.

    uvicorn restores the previous handler after serving and raises the signal again; with the default
    handler the process would die by SIGTERM (-15) although it had stopped cleanly.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda _signum, _frame: None)


async def _parse_batch(records: tuple[Any, ...]) -> KafkaMessage:
    """A light FastStream message around the raw records: no header decoding (a header that is not
    UTF-8 must not fail the batch), no copy of the values."""
    first = records[0]
    return KafkaMessage(
        raw_message=records,
        body=b"",
        consumer=FAKE_CONSUMER,
        message_id=f"{first.topic}-{first.partition}-{first.offset}",
        correlation_id=f"{first.topic}-{first.partition}-{first.offset}",
    )


async def _raw_records(message: KafkaMessage) -> Any:
    """The handler's argument: the records themselves; each is validated once, by its handler."""
    return message.raw_message


def _rewind(consumer: Any, records: Sequence[Any]) -> None:
    """Seek every partition of the batch back to its first record, so the batch is fetched again."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        earliest[tp] = min(earliest.get(tp, record.offset), record.offset)
    for tp, offset in earliest.items():
        if tp in consumer.assignment():
            consumer.seek(tp, offset)


def _document_outputs(broker: KafkaBroker, settings: ConsumerSettings) -> None:
    """Declare the output channels for the AsyncAPI document (records are sent by KafkaSender)."""
    outputs: list[tuple[str, str, Any]] = [
        (settings.passed_topic, "exam.result.passed (CloudEvents binary mode, key user.id)", ExamPassed),
        (settings.failed_topic, "exam.result.failed (CloudEvents binary mode, key user.id)", ExamFailed),
        (
            settings.resits_topic,
            "exam.resit.available, exam.resit.exhausted, exam.resit.passed (ce_type says which)",
            ResitAvailable | ResitExhausted | ResitPassed,
        ),
        (
            settings.dlq_topic,
            "Raw records that are not JSON or fail validation; headers dlq-error-type, dlq-error-message, "
            "dlq-source-topic, dlq-source-partition, dlq-source-offset",
            bytes,
        ),
        (
            settings.unrouted_topic,
            "Raw JSON records no handler answers to; headers unrouted-reason, unrouted-source-*",
            bytes,
        ),
    ]
    for topic, description, schema in outputs:
        broker.publisher(topic, title=f"{topic}:publish", description=description, schema=schema)


# commit_assigned is looked up here at call time, so tests can wrap it.
__all__ = ["ConsumerApp", "commit_assigned", "create_app"]
