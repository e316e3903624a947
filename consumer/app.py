"""Composition root of the consumer: `create_app(settings)` wires everything; nothing connects at import.

    python -m consumer
    faststream run consumer.app:create_app --factory      # same app, same CONSUMER_HTTP_* port

One batch subscriber on the raw topic (AckPolicy.MANUAL, raw records, no per-record casting); the
checkpoint of the configured processing guarantee (`consumer.checkpoint`: THE commit point) with
its producers (at-least-once: one idempotent producer; exactly-once: one transactional producer per
assigned raw partition, `consumer.transactions`); the rebalance listener; an HTTP port with
/healthz, /readyz, /metrics and the AsyncAPI page.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
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

from common import gc_tuning
from common.logging import configure_logging
from common.tracing import Tracing, configure_tracing
from consumer.checkpoint import (
    AtLeastOnceCheckpoint,
    BatchProcessor,
    ExactlyOnceCheckpoint,
    InFlightBatch,
    OffsetGuard,
    Offsets,
    commit_assigned,
)
from consumer.group import GroupMember
from consumer.http import health_routes
from consumer.lag import LagMonitor
from consumer.metrics import ConsumerMetrics
from consumer.sender import KafkaSender, KeyPartitioner, ManagedSender
from consumer.settings import ConsumerSettings
from consumer.topics import TopicsNotReady, check_topics, read_output_limits
from consumer.transactions import PartitionTransactions
from handlers import build_routing_table
from handlers.settings import PLACEHOLDER_HOME_PAGE
from schemas.derived import (
    AttemptCompleted,
    AttemptSubmitted,
    ExamFailed,
    ExamPassed,
    RegistrationCreated,
    ResitAvailable,
    ResitExhausted,
    ResitPassed,
    ScoreOverridden,
)
from schemas.platform import AttemptOverrideCreated, AttemptReported, UserRegisteredForExam
from schemas.webhook import ExamResultsReleased
from schemas.xapi import ExamResultStatement

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
        self.after_startup(_tune_gc)
        # A failed start-up (e.g. a missing topic) ends here with uvicorn's exit status 3.
        await super().run(log_level, options)


# The raw channel's payload in the AsyncAPI document: each raw record is one webhook body, any JSON
# (or not JSON at all: it is then dead-lettered); bodies are routed by meta.eventName, else by the
# event-name header. FastDepends is off (apply_types=False), so this annotation only documents: the
# handler receives a batch of aiokafka records and validates each body once.
RawWebhookBody = Annotated[
    ExamResultsReleased | AttemptOverrideCreated | AttemptReported | UserRegisteredForExam | Any,
    Field(
        title="RawWebhookBody",
        description="One record = one webhook body, byte for byte as the sender posted it: any JSON "
        "(bodies that are not JSON are dead-lettered). Bodies are routed by meta.eventName, else by "
        "the record's event-name header (the ingress's POST /webhooks/{eventName}), and validated as "
        "the model of that event (ExamResultsReleased for an Exam Results Released name; "
        "AttemptOverrideCreated, AttemptReported, UserRegisteredForExam); others go to the unrouted "
        "topic.",
    ),
]
RawWebhookBatch = Annotated[
    Sequence[Any],
    GetPydanticSchema(lambda _source, handler: handler(RawWebhookBody)),
]


def create_app(
    settings: ConsumerSettings | None = None,
    *,
    sender: ManagedSender | None = None,
    tracing: Tracing | None = None,
) -> ConsumerApp:
    """Build broker, subscriber, checkpoint, producers, metrics and HTTP routes from settings.

    `sender` replaces the at-least-once Kafka producer (tests wrap the real one to inject errors);
    `tracing` replaces the one the OTEL_* environment configures (tests export to memory).
    """
    settings = settings or ConsumerSettings()
    configure_logging("consumer", settings.log_level)
    metrics = ConsumerMetrics.create()
    tracing = configure_tracing("exam-events-consumer") if tracing is None else tracing
    member = GroupMember(lambda: subscriber.consumer, _exit)
    table = build_routing_table(settings.rules)

    checkpoint: AtLeastOnceCheckpoint | ExactlyOnceCheckpoint
    # Output topic -> max.message.bytes, read by the start-up check before the first batch.
    output_limits: dict[str, int] = {}

    async def refresh_output_limits() -> bool:
        """After the broker refused a record as too large: read the limits again; True if one changed."""
        try:
            fresh = await read_output_limits(settings)
        except Exception as exc:  # the refusal is then handled without them: in halves
            log.warning("output_limits_unreadable", error=repr(exc)[:300])
            return False
        changed = {topic: size for topic, size in fresh.items() if output_limits.get(topic) != size}
        output_limits.update(fresh)
        if changed:
            log.warning("output_limits_changed", hint="a topic's max.message.bytes changed", limits=changed)
        return bool(changed)

    partitioner = KeyPartitioner()
    metrics.partitioner_cache_bytes.set_function(lambda: partitioner.cached_bytes)
    if settings.exactly_once:
        transactions = PartitionTransactions(settings, member, metrics)
        eos = checkpoint = ExactlyOnceCheckpoint(
            settings=settings,
            table=table,
            partitions=transactions,
            member=member,
            metrics=metrics,
            tracing=tracing,
            output_limits=output_limits,
            partitioner=partitioner,
            refresh_limits=refresh_output_limits,
        )

        async def after_assign(assigned: set[TopicPartition]) -> None:
            eos.resume()
            await transactions.on_assigned(assigned)

        in_flight = InFlightBatch(
            settings.graceful_timeout_seconds,
            metrics,
            before_wait=eos.interrupt,
            after_revoke=transactions.on_revoked,
            after_assign=after_assign,
        )
        ping: Callable[[float], Awaitable[bool]] = transactions.ping
        stop_producers: Callable[[], Awaitable[None]] = transactions.stop
        replacements: Callable[[], float] = lambda: 0.0  # noqa: E731  # producers are acquired, not replaced
    else:
        at_least_once_sender = sender or KafkaSender(
            settings, partitioner=partitioner, output_limits=output_limits
        )
        guard = OffsetGuard(member.committed)
        in_flight = InFlightBatch(settings.graceful_timeout_seconds, metrics, on_assigned=guard.forget)

        async def commit(offsets: Offsets) -> None:
            # Looked up at call time, so tests can wrap it.
            await commit_assigned(subscriber.consumer, offsets)

        def owned(partitions: set[tuple[str, int]]) -> set[tuple[str, int]]:
            found = member.owned({TopicPartition(topic, partition) for topic, partition in partitions})
            return {(tp.topic, tp.partition) for tp in found}

        processor = BatchProcessor(
            settings=settings,
            table=table,
            sender=at_least_once_sender,
            commit=commit,
            metrics=metrics,
            owned=owned,
            tracing=tracing,
            output_limits=output_limits,
            refresh_limits=refresh_output_limits,
        )
        checkpoint = AtLeastOnceCheckpoint(
            settings=settings, processor=processor, guard=guard, member=member, metrics=metrics
        )
        ping = at_least_once_sender.ping
        stop_producers = at_least_once_sender.stop
        replacements = lambda: float(getattr(at_least_once_sender, "replacements", 0))  # noqa: E731

    broker = KafkaBroker(
        settings.kafka.bootstrap_list,
        client_id=settings.kafka.client_id,
        security=settings.kafka.faststream_security(),
        # Our producers send everything; the broker only consumes. Topics are provisioned by
        # operations; the start-up check (consumer.topics) refuses to run when one is missing, so no
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
        # Raw records written in transactions (a replay, say) count only once committed.
        isolation_level="read_committed",
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

    @subscriber
    async def handle_raw_webhooks(records: RawWebhookBatch) -> None:
        """Route a batch of raw webhooks and commit it: consumer.checkpoint is the commit point."""
        async with in_flight.running():
            await checkpoint.commit(records)

    _document_outputs(broker, settings)

    def consume_task_crashes() -> float:
        return float(
            sum(1 for task in subscriber.tasks if task.done() and not task.cancelled() and task.exception())
        )

    metrics.consume_task_crashes.set_function(consume_task_crashes)
    metrics.in_flight_batch_seconds.set_function(checkpoint.in_flight_seconds)
    metrics.seconds_since_progress.set_function(lambda: time.monotonic() - checkpoint.last_progress)
    metrics.producer_replacements.set_function(replacements)
    stuck_after = settings.stuck_batch_seconds
    lag = LagMonitor(lambda: subscriber.consumer, metrics.partition_lag, metrics.group_lag)

    async def ready() -> tuple[bool, dict[str, Any]]:
        assigned = len(member.assignment())
        reachable = await ping(2.0)
        looping = any(not task.done() for task in subscriber.tasks)
        in_flight_seconds = round(checkpoint.in_flight_seconds(), 1)
        checks = {
            "processing_guarantee": settings.processing_guarantee,
            "broker_reachable": reachable,
            "assigned_partitions": assigned,
            "consume_loop_running": looping,
            "in_flight_batch_seconds": in_flight_seconds,
            "batch_stuck": in_flight_seconds > stuck_after,
        }
        return reachable and assigned > 0 and looping and in_flight_seconds <= stuck_after, checks

    async def start() -> None:
        try:
            output_limits.update(await check_topics(settings))
        except TopicsNotReady as exc:
            log.error("refusing_to_start", reason=str(exc))
            raise
        if not settings.exactly_once:
            await at_least_once_sender.start()
        log.info("consumer_starting", processing_guarantee=settings.processing_guarantee)
        if settings.rules.xapi_account_home_page == PLACEHOLDER_HOME_PAGE:
            log.warning(
                "xapi_home_page_unset",
                hint="set XAPI_ACCOUNT_HOME_PAGE to the platform's URL: statements name learners by it",
            )

    return ConsumerApp(
        broker,
        settings=settings,
        metrics=metrics,
        asgi_routes=health_routes(ready, metrics.registry, asyncapi_page="/asyncapi"),
        # No "try it out" route: it would let any HTTP caller publish to the cluster.
        asyncapi_path=AsyncAPIRoute("/asyncapi", try_it_out_path=None),
        specification=AsyncAPI(
            title="exam-events consumer",
            description="Reads raw Exam Results Released webhooks and publishes CloudEvents "
            f"({settings.processing_guarantee}; read the outputs with isolation.level=read_committed).",
            version="0.1.0",
        ),
        on_startup=[start],
        after_startup=[lag.start],
        on_shutdown=[lag.stop],
        after_shutdown=[stop_producers],
        logger=logging.getLogger("consumer.app"),
    )


def _tune_gc() -> None:
    """The process is up: tune its collector (common/gc_tuning.py says why)."""
    log.info("gc_tuned", frozen_objects=gc_tuning.tune_after_startup())


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


def _exit(status: int) -> None:
    """End the process now (tests replace this)."""
    logging.shutdown()
    os._exit(status)


def _document_outputs(broker: KafkaBroker, settings: ConsumerSettings) -> None:
    """Declare the output channels for the AsyncAPI document (our own producers send the records)."""
    outputs: list[tuple[str, str, Any]] = [
        (settings.passed_topic, "exam.result.passed (CloudEvents binary mode, key user.id)", ExamPassed),
        (settings.failed_topic, "exam.result.failed (CloudEvents binary mode, key user.id)", ExamFailed),
        (
            settings.resits_topic,
            "exam.resit.available, exam.resit.exhausted, exam.resit.passed (ce_type says which)",
            ResitAvailable | ResitExhausted | ResitPassed,
        ),
        (
            settings.overrides_topic,
            "exam.score.overridden (CloudEvents binary mode, key the attempt's learner id)",
            ScoreOverridden,
        ),
        (
            settings.attempts_topic,
            "exam.attempt.submitted, exam.attempt.completed (ce_type says which; isExam tells exams "
            "from other tests; key user.id)",
            AttemptSubmitted | AttemptCompleted,
        ),
        (
            settings.registrations_topic,
            "exam.registration.created (CloudEvents binary mode, key user.id)",
            RegistrationCreated,
        ),
        (
            settings.xapi_topic,
            "xAPI 1.0.3 statements of exam results (ce_type exam.xapi.statement; the value is the "
            "statement; key user.id); docs/xapi.md maps each field",
            ExamResultStatement,
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
    if settings.exactly_once:
        outputs.append(
            (
                settings.dedup_topic,
                "Exactly-once: changelog of the dedup store, compacted; partition p for raw partition p; "
                "key the ce_id of a published event, value its type; written in the event's transaction",
                str,
            )
        )
    for topic, description, schema in outputs:
        broker.publisher(topic, title=f"{topic}:publish", description=description, schema=schema)


# commit_assigned is looked up here at call time, so tests can wrap it.
__all__ = ["ConsumerApp", "commit_assigned", "create_app"]
