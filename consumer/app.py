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
import os
import signal
import threading
import time
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
from pydantic import Field, GetPydanticSchema

from common.logging import configure_logging
from consumer.batch import (
    BatchProcessor,
    InFlightBatch,
    OffsetGuard,
    Offsets,
    backoff_delay,
    commit_assigned,
)
from consumer.http import health_routes
from consumer.metrics import ConsumerMetrics
from consumer.sender import KafkaSender, ManagedSender
from consumer.settings import ConsumerSettings
from consumer.topics import TopicsNotReady, check_topics
from handlers import build_routing_table
from schemas.derived import ExamFailed, ExamPassed, ResitAvailable, ResitExhausted, ResitPassed
from schemas.webhook import ExamResultsReleased

# Exit status when the consumer cannot guarantee it will not skip records (a rewind failed).
EXIT_CANNOT_REWIND = 70

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
        # A failed start-up (e.g. a missing topic) ends here with uvicorn's exit status 3.
        await super().run(log_level, options)


# The raw channel's payload in the AsyncAPI document: each raw record is one webhook body, any JSON
# (or not JSON at all: it is then dead-lettered); Exam Results Released bodies are routed by
# meta.eventName. FastDepends is off (apply_types=False), so this annotation only documents: the
# handler receives a batch of aiokafka records and validates each body once.
RawWebhookBody = Annotated[
    ExamResultsReleased | Any,
    Field(
        title="RawWebhookBody",
        description="One record = one webhook body, byte for byte as the sender posted it: any JSON "
        "(bodies that are not JSON are dead-lettered). Bodies whose meta.eventName is an Exam Results "
        "Released name are validated as ExamResultsReleased; others go to the unrouted topic.",
    ),
]
RawWebhookBatch = Annotated[
    Sequence[Any],
    GetPydanticSchema(lambda _source, handler: handler(RawWebhookBody)),
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

    async def committed(tp: TopicPartition) -> int | None:
        consumer: Any = subscriber.consumer
        offset = await consumer.committed(tp)
        return None if offset is None else int(offset)

    guard = OffsetGuard(committed)
    in_flight = InFlightBatch(settings.graceful_timeout_seconds, metrics, on_assigned=guard.forget)

    broker = KafkaBroker(
        settings.kafka.bootstrap_list,
        client_id=settings.kafka.client_id,
        security=settings.kafka.faststream_security(),
        # Our producer sends everything (KafkaSender); the broker only consumes. Topics are provisioned
        # by operations; the start-up check (consumer.topics) refuses to run when one is missing, so no
        # metadata request of ours ever auto-creates one with the broker's defaults.
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
        # The listener waits up to the graceful timeout for the in-flight batch; the coordinator must
        # then still accept the rejoin, so it allows that wait plus a session timeout on top.
        rebalance_timeout_ms=int(settings.graceful_timeout_seconds * 1000) + settings.session_timeout_ms,
        listener=in_flight,
        parser=_parse_batch,
        decoder=_raw_records,
        title=f"{settings.raw_topic}:consume",
        description="One raw webhook body per record (not a list), as the ingress stored it; routed by "
        "meta.eventName. The consumer reads records in batches, which is no concern of producers.",
    )

    async def commit(offsets: Offsets) -> None:
        await commit_assigned(subscriber.consumer, offsets)

    def owned(partitions: set[tuple[str, int]]) -> set[tuple[str, int]]:
        return owned_partitions(subscriber.consumer, partitions)

    processor = BatchProcessor(
        settings=settings,
        table=build_routing_table(settings.rules),
        sender=sender,
        commit=commit,
        metrics=metrics,
        owned=owned,
    )
    failures = 0

    @subscriber
    async def handle_raw_webhooks(records: RawWebhookBatch) -> None:
        """Route a batch of raw webhooks; publish derived events, DLQ and unrouted records; commit."""
        nonlocal failures
        consumer = subscriber.consumer
        async with in_flight.running():
            try:
                gaps = await guard.gaps(records)
                if gaps:
                    # Records before this batch were never handled (FastStream dropped a batch before
                    # our handler ran): committing this one would skip them. Read them first.
                    metrics.gap_rewinds.inc()
                    log.error(
                        "batch starts past unhandled records; rewinding",
                        rewind_to={f"{tp.topic}/{tp.partition}": offset for tp, offset in gaps.items()},
                    )
                    _seek_or_die(consumer, gaps)
                    return
                if await processor.process(records):
                    guard.handled(records)
                else:
                    guard.drop(records)
                    _seek_or_die(consumer, _earliest(records))
                failures = 0
            except Exception:
                # A bug outside the per-record guard. FastStream would fetch on, and the next commit
                # would skip this batch: rewind its partitions instead, so it is read again.
                failures += 1
                metrics.batch_failures.inc()
                log.exception("batch handling crashed; rewinding to re-read it", records=len(records))
                guard.drop(records)
                _seek_or_die(consumer, _earliest(records))
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
    metrics.in_flight_batch_seconds.set_function(processor.in_flight_seconds)
    metrics.seconds_since_progress.set_function(lambda: time.monotonic() - processor.last_progress)
    metrics.producer_replacements.set_function(lambda: float(getattr(sender, "replacements", 0)))
    stuck_after = settings.stuck_batch_seconds

    async def ready() -> tuple[bool, dict[str, Any]]:
        consumer = subscriber.consumer
        assigned = len(consumer.assignment()) if consumer is not None else 0
        reachable = await sender.ping(timeout=2.0)
        looping = any(not task.done() for task in subscriber.tasks)
        in_flight_seconds = round(processor.in_flight_seconds(), 1)
        checks = {
            "broker_reachable": reachable,
            "assigned_partitions": assigned,
            "consume_loop_running": looping,
            "in_flight_batch_seconds": in_flight_seconds,
            "batch_stuck": in_flight_seconds > stuck_after,
        }
        return reachable and assigned > 0 and looping and in_flight_seconds <= stuck_after, checks

    async def start() -> None:
        try:
            await check_topics(settings)
        except TopicsNotReady as exc:
            log.error(f"refusing to start: {exc}")
            raise
        await sender.start()

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
        on_startup=[start],
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


def owned_partitions(consumer: Any, partitions: set[tuple[str, int]]) -> set[tuple[str, int]]:
    """Those of `partitions` this member still owns: assigned, and the member still in the group.

    After an eviction (max_poll_interval) aiokafka keeps the old assignment until it rejoins, but
    resets the generation: a commit could no longer succeed, and another member reads the partitions.
    """
    if consumer is None or getattr(consumer._coordinator, "generation", -1) < 0:
        return set()
    assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
    return partitions & assigned


def _earliest(records: Sequence[Any]) -> dict[TopicPartition, int]:
    """Partition -> first offset of the batch's records there."""
    earliest: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        earliest[tp] = min(earliest.get(tp, record.offset), record.offset)
    return earliest


def _seek_or_die(consumer: Any, offsets: dict[TopicPartition, int]) -> None:
    """Seek the partitions still assigned back to `offsets`, so those records are fetched again.

    If that fails, the next commit could pass over records nobody handled: stop the process at once
    instead (non-zero exit; the restart resumes from the committed offsets, losing nothing).
    """
    try:
        for tp, offset in offsets.items():
            if tp in consumer.assignment():
                consumer.seek(tp, offset)
    except Exception:
        log.critical("rewinding failed; exiting so that no record is skipped", exc_info=True)
        _exit(EXIT_CANNOT_REWIND)


def _exit(status: int) -> None:
    """End the process now (tests replace this)."""
    logging.shutdown()
    os._exit(status)


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
