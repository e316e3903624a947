"""Building blocks for the ingress tests: settings, signed requests, a recording producer, clients."""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
from pydantic import SecretStr

from common.kafka import KafkaConnectionSettings
from common.tracing import NO_TRACING, Tracing
from ingress.app import AdminApp, IngressApp, create_app
from ingress.auth import sign
from ingress.bootstrap import build_producer
from ingress.producer import (
    Delivery,
    Headers,
    KafkaRecordProducer,
    KafkaUnreachable,
    ProduceFailed,
    Readiness,
)
from ingress.settings import IngressSettings

USERNAME = "synap"
PASSWORD = "correct horse battery staple"
SIGNING_KEY = b"test signing key, 32 bytes long!"
SIGNING_SECRET = "whsec_" + base64.b64encode(SIGNING_KEY).decode()
OTHER_KEY = b"a key the ingress does not know.."


def ingress_settings(**overrides: Any) -> IngressSettings:
    """Settings with both schemes configured, independent of the environment's INGRESS_* variables."""
    values: dict[str, Any] = {
        "basic_auth_username": USERNAME,
        "basic_auth_password": SecretStr(PASSWORD),
        "signing_secrets": (SecretStr(SIGNING_SECRET),),
        "raw_topic": "exam.webhooks.raw",
        "kafka": KafkaConnectionSettings(bootstrap_servers="127.0.0.1:1"),
    }
    values.update(overrides)
    return IngressSettings(**values)


def basic_auth(username: str = USERNAME, password: str = PASSWORD) -> dict[str, str]:
    """An Authorization header for HTTP Basic."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"authorization": f"Basic {token}"}


def signed(
    body: bytes, *, key: bytes = SIGNING_KEY, msg_id: str = "msg_test_1", timestamp: int | None = None
) -> dict[str, str]:
    """Standard Webhooks headers for a body, as a sender computes them."""
    sent_at = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(sent_at),
        "webhook-signature": sign(key, msg_id, sent_at, body),
    }


JSON = {"content-type": "application/json"}


@dataclass
class Produced:
    """One record handed to the recording producer."""

    topic: str
    value: bytes
    key: bytes | None
    headers: dict[str, bytes]


@dataclass
class RecordingProducer:
    """Stores records in a list; `failure` makes every produce raise it instead, and
    `unreachable_reason` makes it refuse at once as a producer that knows Kafka is unreachable."""

    records: list[Produced] = field(default_factory=list)
    failure: Exception | None = None
    is_ready: bool = True
    unreachable_reason: str | None = None

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers) -> Delivery:
        """Record the call, or fail as told."""
        if self.unreachable_reason is not None:
            raise KafkaUnreachable(self.unreachable_reason)
        if self.failure is not None:
            raise self.failure
        self.records.append(Produced(topic, value, key, dict(headers)))
        return Delivery(0, len(self.records) - 1)

    def unreachable(self) -> str | None:
        """As told."""
        return self.unreachable_reason

    async def readiness(self) -> Readiness:
        """As told, with one check saying so."""
        return Readiness(self.is_ready, {"producer_running": self.is_ready})


def unavailable() -> ProduceFailed:
    """The failure a producer raises when Kafka does not acknowledge."""
    return ProduceFailed("no acknowledgement within 5 s")


def client_for(app: IngressApp | AdminApp) -> httpx.AsyncClient:
    """An HTTP client that calls the app (public, or its `admin`) in-process."""
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ingress", timeout=60)


class RunningIngress(NamedTuple):
    """Clients of the public and the admin app, and the started Kafka producer behind them."""

    client: httpx.AsyncClient
    admin: httpx.AsyncClient
    producer: KafkaRecordProducer


@asynccontextmanager
async def running_ingress(
    bootstrap: str, topic: str, *, tracing: Tracing = NO_TRACING, **overrides: Any
) -> AsyncIterator[RunningIngress]:
    """The app with a started Kafka producer against a real broker, and clients of both its ports."""
    settings = ingress_settings(
        raw_topic=topic, kafka=KafkaConnectionSettings(bootstrap_servers=bootstrap), **overrides
    )
    producer = build_producer(settings)
    await producer.start()
    try:
        app = create_app(settings, producer=producer, tracing=tracing)
        async with client_for(app) as client, client_for(app.admin) as admin:
            yield RunningIngress(client, admin, producer)
    finally:
        await producer.stop()


def header_map(headers: Mapping[str, bytes]) -> dict[str, str]:
    """Record headers decoded, for readable assertions."""
    return {name: value.decode() for name, value in headers.items()}
