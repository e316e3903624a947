"""The ingress as two plain ASGI apps: authenticate, bound, check shape, produce, and only then say 202.

- `IngressApp`, on the public port (it faces the internet): `POST /webhooks`,
  `POST /webhooks/{eventName}` and `GET /openapi.json`; anything else is 404.
- `AdminApp` (`IngressApp.admin`), on the admin port: `GET /healthz`, `GET /readyz`, `GET /metrics`.

Raw ASGI rather than a framework: the hot path is a handful of dict lookups, one JSON parse and
one produce, and every status it can answer is visible in `WebhookEndpoint.handle`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
import traceback
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

import structlog
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic_core import from_json

from common import tracing as otel
from common.json_numbers import NON_FINITE_REASON, holds_non_finite, may_overflow
from common.readiness import readiness
from common.tracing import NO_TRACING, Span, SpanKind, Tracing
from ingress.auth import (
    BASIC_REALM,
    WEBHOOK_ID,
    AuthenticationFailed,
    Authenticator,
    SignedHeaders,
    authenticator_from,
)
from ingress.metrics import IngressMetrics
from ingress.openapi import WEBHOOK_RESPONSES, openapi_document
from ingress.producer import KafkaUnreachable, ProduceFailed, Readiness, RecordProducer, RecordTooLarge
from ingress.requestlog import request_log
from ingress.settings import IngressSettings
from schemas.webhook import MAX_ID_CHARS

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]

# Headers of every record on the raw topic (the consumer reads these names).
HEADER_WEBHOOK_ID = "webhook-id"
HEADER_EVENT_NAME = "event-name"
HEADER_RECEIVED_AT = "received-at"
HEADER_CONTENT_TYPE = "content-type"

JSON_TYPE = b"application/json"
MAX_WEBHOOK_ID_BYTES = 256
# Longer values are junk: they would bloat every log line and record header (and the record).
MAX_EVENT_NAME_CHARS = 128
WEBHOOKS_PATH = "/webhooks"
# `POST /webhooks/{eventName}`: one subscription URL per event, for bodies without meta.eventName.
EVENT_PATH_PREFIX = "/webhooks/"
EVENT_PATH_ROUTE = "/webhooks/{eventName}"
MAX_CONTENT_TYPE_BYTES = 256
MAX_CONTENT_LENGTH_DIGITS = 18  # more is over any limit (and int() of 5000 digits would raise)
INTERNAL_ERROR = b'{"error":"internal error"}'
log = structlog.get_logger("ingress")


class ClientDisconnected(Exception):
    """The client went away before its body was read; there is nobody to answer."""


class InvalidBody(ValueError):
    """The body is not a JSON object; the message is the short reason for the client."""


@dataclass(slots=True)
class Answer:
    """What a webhook request gets back, plus what its log line says."""

    status: int
    body: bytes  # JSON, rendered
    headers: RawHeaders
    reason: str | None = None


def is_json_media_type(content_type: bytes | None) -> bool:
    """True for `application/json` and `application/<anything>+json`, parameters allowed."""
    if not content_type:
        return False
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == JSON_TYPE or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


# One rule for numbers (common/json_numbers.py): NaN, Infinity and -Infinity are not JSON, and a
# literal past a double's range (1e999) would be read as infinity.
OVERFLOW_REASON = f"{NON_FINITE_REASON}: a number too large for a double"


def _refuse_constant(name: str) -> Any:
    raise InvalidBody(f"{NON_FINITE_REASON}: {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise InvalidBody(OVERFLOW_REASON)
    return value


# Built once: `json.loads(..., parse_constant=...)` would build a new decoder for every body.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


def parse_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or `InvalidBody` with a short reason.

    pydantic_core's parser (Rust) reads a 3.3 KB webhook at a fraction of the standard library's
    cost. It refuses a little more than the standard library does (lone surrogates such as
    `"\\ud800"`, nesting deeper than 200), never less, and gives the same values; so whatever it
    refuses goes through `parse_object_stdlib`, which decides, with the reasons answered so far.
    Both refuse a non-finite number: pydantic_core a `NaN` or `Infinity` literal, and here a
    literal past a double's range, which it reads as infinity (looked for only when the raw bytes
    have the shape of one: the walk costs as much as the parse).
    """
    try:
        document = from_json(body, allow_inf_nan=False)
    except ValueError:
        return parse_object_stdlib(body)
    if may_overflow(body) and holds_non_finite(document):
        raise InvalidBody(OVERFLOW_REASON)
    if not isinstance(document, dict):
        raise InvalidBody("body is JSON but not an object")
    return document


def parse_object_stdlib(body: bytes) -> dict[str, Any]:
    """`parse_object` with the standard library's parser: the reference for what is refused, and why."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidBody("body is not UTF-8") from None
    try:
        document = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise InvalidBody(f"malformed JSON at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidBody("JSON nested too deeply") from None
    except InvalidBody:
        raise
    except ValueError:
        # An integer literal past Python's int conversion limit (4300 digits).
        raise InvalidBody("JSON number too long") from None
    if not isinstance(document, dict):
        raise InvalidBody("body is JSON but not an object")
    return document


def _utf8(text: str) -> bytes | None:
    """`text` as UTF-8, or None when it cannot be (JSON allows lone surrogates such as `"\\ud800"`)."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        return None


def _identifier(block: object) -> bytes | None:
    if not isinstance(block, dict):
        return None
    ident = block.get("id")
    if isinstance(ident, int) and not isinstance(ident, bool):
        ident = str(ident)  # parse_object refused integers too long to convert
    if isinstance(ident, str) and 0 < len(ident) <= MAX_ID_CHARS:
        return _utf8(ident)
    return None


def record_key(document: dict[str, Any]) -> bytes | None:
    """`user.id`, else `attempt.id`, else None: one learner's webhooks share a partition.

    An id longer than the models allow (MAX_ID_CHARS) counts as absent: the body is stored all
    the same, and the consumer dead-letters it; a 540 KB key would be copied to the dead-letter
    record next to the body, and ordering matters for no webhook that will not be derived.
    """
    return _identifier(document.get("user")) or _identifier(document.get("attempt"))


def event_name(document: dict[str, Any]) -> str | None:
    """`meta.eventName` when the body has a sane one (at most 128 characters, UTF-8 encodable)."""
    meta = document.get("meta")
    name = meta.get("eventName") if isinstance(meta, dict) else None
    if isinstance(name, str) and len(name) <= MAX_EVENT_NAME_CHARS and _utf8(name) is not None:
        return name
    return None


def valid_path_event_name(name: str) -> bool:
    """True for the `{eventName}` of `POST /webhooks/{eventName}` as ASGI gives it (percent-decoded):
    1 to 128 printable ASCII characters, no space and no slash (so `%2F` is refused too).

    ASCII only, so that the OpenAPI document can state the rule exactly (`PATH_EVENT_NAME_PATTERN`)
    for every client generator: "printable" over all of Unicode depends on the Unicode version of
    each runtime. The platform's event names (`exam.resultsReleased`, ...) are ASCII.
    """
    return (
        0 < len(name) <= MAX_EVENT_NAME_CHARS
        and name.isascii()
        and name.isprintable()
        and " " not in name
        and "/" not in name
    )


def random_uuid() -> str:
    """A random (version 4) UUID in its canonical text form; `str(uuid.uuid4())` at half the cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def webhook_id(given: bytes | None) -> str:
    """The sender's `webhook-id` when it is a sane token, else a fresh one."""
    if given is not None and valid_webhook_id(given):
        return given.decode("ascii")
    return random_uuid()


def valid_webhook_id(given: bytes) -> bool:
    """True for a non-empty printable ASCII token of at most 256 bytes, without spaces."""
    if not (given and len(given) <= MAX_WEBHOOK_ID_BYTES and given.isascii()):
        return False
    text = given.decode("ascii")
    return text.isprintable() and " " not in text


_second_formatted: tuple[int, str] = (-1, "")


def received_at(now: float | None = None) -> str:
    """Now (or `now`, Unix seconds), as ISO 8601 UTC with milliseconds (`2026-06-14T09:30:12.481Z`).

    The date and time of day are formatted once per second; only the milliseconds change within it.
    """
    global _second_formatted
    if now is None:
        now = time.time()
    second = int(now)
    millis = int((now - second) * 1000)
    cached_second, prefix = _second_formatted
    if second != cached_second:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _second_formatted = (second, prefix)
    return f"{prefix}.{millis:03d}Z"


def _where(exc: BaseException) -> str:
    """`Type at file:line` of the innermost frame: enough to find a bug, without the message (which
    may quote the body)."""
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{place}"


def _json(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _json_string(text: str) -> bytes:
    """`text` as a JSON string, exactly as `json.dumps` writes it (ASCII, escaped)."""
    return encode_basestring_ascii(text).encode()


async def respond(
    send: Send, status: int, body: bytes, content_type: bytes, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Send a complete response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class WebhookEndpoint:
    """`POST /webhooks` and `POST /webhooks/{eventName}`: every check in order, then the produce,
    then the answer."""

    def __init__(
        self,
        settings: IngressSettings,
        producer: RecordProducer,
        authenticator: Authenticator,
        metrics: IngressMetrics,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self._producer = producer
        self._authenticator = authenticator
        self._metrics = metrics
        self._tracing = tracing
        self._topic = settings.raw_topic
        self._topic_json = _json_string(settings.raw_topic)
        self._max_body = settings.max_body_bytes
        self._body_timeout = settings.body_read_timeout_seconds
        self._produce_timeout = settings.produce_timeout_seconds
        unauthorized: RawHeaders = []
        if authenticator.challenges_basic:
            unauthorized.append((b"www-authenticate", BASIC_REALM.encode()))
        self._unauthorized_headers = unauthorized
        # Refused before the body is read: closing spares us reading it (and the client sending it).
        self._unauthorized_unread_headers: RawHeaders = [*unauthorized, (b"connection", b"close")]
        self._retry_after: RawHeaders = [(b"retry-after", str(settings.retry_after_seconds).encode())]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request, count it and write its log line; never let an exception pass as an answer."""
        started = time.perf_counter()
        headers: dict[bytes, bytes] = dict(scope["headers"])
        context: dict[str, Any] = {"size": 0, "webhook_id": None, "event_name": None}
        path: str = scope["path"]
        # None for `POST /webhooks`; the path's event name (still to be checked) otherwise.
        subscribed = path[len(EVENT_PATH_PREFIX) :] if path.startswith(EVENT_PATH_PREFIX) else None
        span = self._receive_span(headers, path, subscribed is not None) if self._tracing.enabled else None
        try:
            answer = await self.handle(headers, receive, context, span, subscribed)
        except ClientDisconnected:
            log.info("webhook_client_disconnected", size=context["size"])
            if span is not None:
                _end_receive_span(span, None, context)
            return
        except asyncio.CancelledError:
            # The graceful shutdown ran out: tell the sender to retry rather than leave uvicorn's 500.
            answer = self._unavailable("cancelled: graceful shutdown timed out")
            answer.headers = [*answer.headers, (b"connection", b"close")]
            with contextlib.suppress(Exception):
                await respond(send, answer.status, answer.body, JSON_TYPE, answer.headers)
            self._count_and_log(answer, context, started)
            if span is not None:
                _end_receive_span(span, answer, context)
            raise
        except Exception as exc:
            # A bug of ours: a JSON 500 with our log line, never a 4xx and never a fake 503 outage.
            context["error"] = _where(exc)
            answer = Answer(500, INTERNAL_ERROR, [(b"connection", b"close")], "internal error")
        try:
            await respond(send, answer.status, answer.body, JSON_TYPE, answer.headers)
        finally:
            if span is not None:
                _end_receive_span(span, answer, context)
        self._count_and_log(answer, context, started)

    def _receive_span(self, headers: dict[bytes, bytes], path: str, with_event_name: bool) -> Span:
        """Tracing on: the request's `receive` span, continuing the sender's `traceparent` if any."""
        return self._tracing.start_span(
            "receive",
            otel.extract(headers),
            kind=SpanKind.SERVER,
            attributes={
                otel.HTTP_REQUEST_METHOD: "POST",
                otel.HTTP_ROUTE: EVENT_PATH_ROUTE if with_event_name else WEBHOOKS_PATH,
                otel.URL_PATH: path,
            },
        )

    def _count_and_log(self, answer: Answer, context: dict[str, Any], started: float) -> None:
        self._metrics.count_request(answer.status)
        fields = {
            "status": answer.status,
            "size": context["size"],
            "latency_ms": round((time.perf_counter() - started) * 1000, 2),
            "webhook_id": context["webhook_id"],
            "event_name": context["event_name"],
            "reason": answer.reason,
        }
        if "error" in context:
            fields["error"] = context["error"]
        request_log.write(answer.status >= 500 and "error" in context, fields)

    def _reject(
        self, status: int, reason: str, headers: RawHeaders | None = None, *, log_reason: str | None = None
    ) -> Answer:
        assert status in WEBHOOK_RESPONSES, status  # every status we answer is in the OpenAPI document
        return Answer(status, _json({"error": reason}), headers or [], log_reason or reason)

    async def handle(
        self,
        headers: dict[bytes, bytes],
        receive: Receive,
        context: dict[str, Any],
        span: Span | None = None,
        subscribed: str | None = None,
    ) -> Answer:
        """The checks, in order: declared size, authentication from the headers, then (body read)
        the signature against the body, content type, JSON shape, the path's event name; then produce.

        Whoever proves no identity in the headers (no scheme admits them and they carry no
        well-formed signature headers) gets 401 before a byte of the body is read.

        `subscribed` is the `{eventName}` of `POST /webhooks/{eventName}`: it becomes the record's
        `event-name` header, whatever the body's `meta.eventName` says (the consumer decides, see
        docs/ingress.md). With `span` (the request's receive span; tracing on) the produce gets a
        span of its own, and the record carries its `traceparent`.
        """
        declared = headers.get(b"content-length")
        # The server already refused a malformed Content-Length (400); the body read enforces the limit.
        if declared is not None and declared.isdigit():
            if len(declared) > MAX_CONTENT_LENGTH_DIGITS or int(declared) > self._max_body:
                return self._too_large()
        try:
            signed = self._authenticator.check_headers(headers)
        except AuthenticationFailed as exc:
            return self._reject(401, "unauthorized", self._unauthorized_unread_headers, log_reason=str(exc))
        # One deadline per request, one timer: the body read's, then moved to the produce's.
        try:
            async with asyncio.timeout(self._body_timeout) as deadline:
                body = await self._read_body(receive, context)
                if body is None:
                    return self._too_large()
                context["producing"] = False
                return await self._check_and_produce(
                    headers, signed, body, context, deadline, span, subscribed
                )
        except TimeoutError:
            if "producing" not in context:
                return self._reject(
                    408,
                    f"body not received within {self._body_timeout:g} s",
                    [(b"connection", b"close")],
                )
            if not context["producing"]:
                raise  # not ours: nothing between the body and the produce awaits
            return self._unavailable(f"no acknowledgement within {self._produce_timeout:g} s")

    async def _check_and_produce(
        self,
        headers: dict[bytes, bytes],
        signed: SignedHeaders | None,
        body: bytes,
        context: dict[str, Any],
        deadline: asyncio.Timeout,
        span: Span | None,
        subscribed: str | None,
    ) -> Answer:
        """Every check after the body read, then the produce, bounded by `deadline` moved to the
        produce timeout. `signed`: the signature headers the body must match, if the headers alone
        did not admit the request."""
        if signed is not None:
            try:
                self._authenticator.verify_body(signed, body)
            except AuthenticationFailed as exc:
                return self._reject(401, "unauthorized", self._unauthorized_headers, log_reason=str(exc))

        content_type = headers.get(b"content-type")
        if not is_json_media_type(content_type) or len(content_type or b"") > MAX_CONTENT_TYPE_BYTES:
            return self._reject(415, "Content-Type must be application/json")
        assert content_type is not None
        try:
            document = parse_object(body)
        except InvalidBody as exc:
            return self._reject(400, str(exc))
        if subscribed is not None and not valid_path_event_name(subscribed):
            # Checked after authentication: an unauthenticated caller learns nothing about our rules.
            return self._reject(
                400,
                f"the event name in the path must be 1 to {MAX_EVENT_NAME_CHARS} printable ASCII "
                "characters without spaces or slashes",
            )

        given_id = headers.get(WEBHOOK_ID)
        ident = webhook_id(given_id)
        body_name = event_name(document)
        name = subscribed if subscribed is not None else body_name
        context["webhook_id"], context["event_name"] = ident, name
        # Everything of ours is computed before the produce: a bug here is a 500, not a Kafka outage.
        key = record_key(document)
        record_headers = [
            (HEADER_WEBHOOK_ID, ident.encode()),
            (HEADER_RECEIVED_AT, received_at().encode()),
            (HEADER_CONTENT_TYPE, content_type),
        ]
        if name is not None:
            record_headers.append((HEADER_EVENT_NAME, name.encode()))

        produce_span = self._produce_span(span, len(body)) if span is not None else None
        if produce_span is not None:
            record_headers.extend(otel.kafka_headers(produce_span))
        produce_started = time.perf_counter()
        tried = True
        deadline.reschedule(asyncio.get_running_loop().time() + self._produce_timeout)
        context["producing"] = True
        try:
            delivery = await self._producer.produce(self._topic, body, key, record_headers)
        except asyncio.CancelledError:
            if deadline.expired():  # our deadline: answered 503 by `handle`
                _fail(produce_span, ProduceFailed(f"no acknowledgement within {self._produce_timeout:g} s"))
            raise
        except KafkaUnreachable as exc:
            # Answered at once, without waiting out the produce timeout: there is no produce to time.
            tried = False
            self._metrics.fast_refusals.inc()
            _fail(produce_span, exc)
            return self._unavailable(str(exc))
        except ProduceFailed as exc:
            _fail(produce_span, exc)
            return self._unavailable(str(exc))
        except RecordTooLarge as exc:
            # Refused before it took a sequence number; no retry would store it.
            _fail(produce_span, exc)
            return self._reject(413, "body too large for the Kafka topic", log_reason=str(exc))
        except Exception as exc:
            # Whatever broke in the producer, Kafka may not have the body: the sender must retry.
            context["error"] = _where(exc)
            _fail(produce_span, exc)
            return self._unavailable(f"produce failed: {type(exc).__name__}")
        else:
            if produce_span is not None:
                produce_span.set_attribute(otel.MESSAGING_DESTINATION_PARTITION_ID, str(delivery.partition))
                produce_span.set_attribute(otel.MESSAGING_KAFKA_OFFSET, delivery.offset)
        finally:
            if tried:
                self._metrics.produce_seconds.observe(time.perf_counter() - produce_started)
            if produce_span is not None:
                produce_span.end()  # on every path, a cancelled produce too
        self._metrics.produced_bytes.inc(len(body))
        # What `_json({"webhookId": ..., "topic": ..., "partition": ..., "offset": ...})` writes, cheaper.
        accepted = b'{"webhookId":%s,"topic":%s,"partition":%d,"offset":%d}' % (
            _json_string(ident),
            self._topic_json,
            delivery.partition,
            delivery.offset,
        )
        # A signed id is replaced only when it is no sane token: say so, the sender's id is lost.
        note = "webhook-id replaced" if given_id is not None and ident.encode() != given_id else None
        if note is None and body_name is not None and name != body_name:
            note = "the path's event name differs from meta.eventName"  # the consumer counts it too
        return Answer(202, accepted, [], note)

    def _produce_span(self, parent: Span, size: int) -> Span:
        return self._tracing.start_span(
            "produce",
            parent,
            kind=SpanKind.PRODUCER,
            attributes={
                otel.MESSAGING_SYSTEM: "kafka",
                otel.MESSAGING_OPERATION_TYPE: "send",
                otel.MESSAGING_OPERATION_NAME: "produce",
                otel.MESSAGING_DESTINATION_NAME: self._topic,
                otel.MESSAGING_MESSAGE_BODY_SIZE: size,
            },
        )

    def _too_large(self) -> Answer:
        # Closing the connection spares us reading (and the client sending) the rest of the body.
        return self._reject(413, f"body larger than {self._max_body} bytes", [(b"connection", b"close")])

    def _unavailable(self, reason: str) -> Answer:
        return self._reject(503, "Kafka unavailable, retry later", self._retry_after, log_reason=reason)

    async def _read_body(self, receive: Receive, context: dict[str, Any]) -> bytes | None:
        """The whole body, or None as soon as it grows past the limit."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk: bytes = message.get("body", b"")
            size += len(chunk)
            context["size"] = size
            self._metrics.received_bytes.inc(len(chunk))
            if size > self._max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _fail(span: Span | None, error: BaseException) -> None:
    """Mark a produce span failed, with the error's type (never its message)."""
    if span is not None:
        otel.record_error(span, error)


def _end_receive_span(span: Span, answer: Answer | None, context: dict[str, Any]) -> None:
    """End the request's span with what came of it: the status, the webhook's id and event name.

    No answer: the client went away. A 5xx is an error (HTTP semantic conventions: `error.type` is
    the status code); a 4xx is the client's, not the server's.
    """
    if context["webhook_id"] is not None:
        span.set_attribute(otel.MESSAGING_MESSAGE_ID, context["webhook_id"])
    if context["event_name"] is not None:
        span.set_attribute("exam_events.event_name", context["event_name"])
    if answer is None:
        otel.record_error(span, "ClientDisconnected")
    else:
        span.set_attribute(otel.HTTP_RESPONSE_STATUS_CODE, answer.status)
        if answer.status >= 500:
            otel.record_error(span, str(answer.status))
    span.end()


async def _not_found(send: Send) -> None:
    await respond(send, 404, _json({"error": "not found"}), JSON_TYPE)


async def _method_not_allowed(send: Send, allowed: str) -> None:
    await respond(
        send, 405, _json({"error": "method not allowed"}), JSON_TYPE, [(b"allow", allowed.encode())]
    )


async def _lifespan(receive: Receive, send: Send) -> None:
    # The composition root owns the producer's life; the apps only acknowledge the protocol.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


Page = Callable[[Send], Awaitable[None]]


async def _serve_page(routes: dict[str, Page], scope: Scope, send: Send) -> None:
    """A `GET` (or `HEAD`) page of `routes`; 405 for another method, 404 for another path."""
    page = routes.get(scope["path"])
    if page is None:
        await _not_found(send)
    elif scope["method"] not in ("GET", "HEAD"):
        await _method_not_allowed(send, "GET")
    else:
        await page(send)


class IngressApp:
    """The public ASGI application: the webhook endpoint and the OpenAPI document, nothing else.

    `admin` is the app of the admin port (probes and metrics), sharing the producer and metrics.
    """

    def __init__(
        self,
        settings: IngressSettings,
        producer: RecordProducer,
        authenticator: Authenticator,
        metrics: IngressMetrics,
        tracing: Tracing = NO_TRACING,
    ) -> None:
        self.metrics = metrics
        self.admin = AdminApp(producer, metrics)
        self._webhooks = WebhookEndpoint(settings, producer, authenticator, metrics, tracing)
        self._openapi = json.dumps(openapi_document(), indent=2).encode()
        self._pages: dict[str, Page] = {"/openapi.json": self._openapi_page}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http":
            path = scope["path"]
            if path != WEBHOOKS_PATH and not path.startswith(EVENT_PATH_PREFIX):
                await _serve_page(self._pages, scope, send)
            elif scope["method"] == "POST":
                await self._webhooks(scope, receive, send)
            else:
                await _method_not_allowed(send, "POST")
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _openapi_page(self, send: Send) -> None:
        await respond(send, 200, self._openapi, JSON_TYPE)


class AdminApp:
    """The admin port's ASGI application: `/healthz`, `/readyz`, `/metrics`. Not for the internet."""

    def __init__(self, producer: RecordProducer, metrics: IngressMetrics) -> None:
        self.metrics = metrics
        self._producer = producer
        # Set by the composition root once a shutdown began: /readyz says so while requests drain.
        self.shutting_down = False
        metrics.track_kafka(producer.unreachable)
        self._pages: dict[str, Page] = {
            "/healthz": self._healthz,
            "/readyz": self._readyz,
            "/metrics": self._metrics_page,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http":
            await _serve_page(self._pages, scope, send)
        elif scope["type"] == "lifespan":
            await _lifespan(receive, send)

    async def _healthz(self, send: Send) -> None:
        await respond(send, 200, b'{"status":"ok"}', JSON_TYPE)

    async def _readyz(self, send: Send) -> None:
        try:
            report = await self._producer.readiness()
        except Exception:
            log.exception("readiness_check_crashed")
            report = Readiness(False, {"readiness_check_crashed": True})
        checks = {**report.checks, "shutting_down": self.shutting_down}
        status, body = readiness(report.ready and not self.shutting_down, checks)
        await respond(send, status, body, JSON_TYPE)

    async def _metrics_page(self, send: Send) -> None:
        await respond(send, 200, self.metrics.exposition(), CONTENT_TYPE_LATEST.encode())


def create_app(
    settings: IngressSettings,
    *,
    producer: RecordProducer,
    authenticator: Authenticator | None = None,
    metrics: IngressMetrics | None = None,
    tracing: Tracing = NO_TRACING,
) -> IngressApp:
    """Build the public app (and its `admin` app); nothing connects here: the producer is built and
    started by the caller. `tracing` is off unless given (the composition root configures it)."""
    return IngressApp(
        settings,
        producer,
        authenticator or authenticator_from(settings),
        metrics or IngressMetrics(),
        tracing,
    )
