"""Behind the real server: a request whose headers prove no identity gets 401 and a closed
connection while its declared body has not arrived, so nobody can make us buffer bodies without
a credential."""

from __future__ import annotations

import base64

import pytest

from tests.support.ingress_harness import USERNAME, RecordingProducer, signed
from tests.support.ingress_server import exchange, running_server, send_all_then_read, statuses

DECLARED = 500_000  # announced, never sent
QUIET = 5.0  # a server that waited for the body would stay silent this long (its timeout: 60 s)


def head(credentials: dict[str, str]) -> bytes:
    """A POST /webhooks request head announcing a body that does not follow."""
    lines = b"".join(f"{name}: {value}\r\n".encode() for name, value in credentials.items())
    return (
        b"POST /webhooks HTTP/1.1\r\nhost: ingress\r\ncontent-type: application/json\r\n"
        + lines
        + b"content-length: %d\r\n\r\n" % DECLARED
    )


def stale_signature() -> dict[str, str]:
    return signed(b"{}", timestamp=1_000_000_000)


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"authorization": "Basic " + base64.b64encode(f"{USERNAME}:wrong".encode()).decode()},
        stale_signature(),
    ],
    ids=["no credentials", "wrong password", "signature outside the tolerance"],
)
async def test_headers_proving_no_identity_get_401_and_close_before_the_body_arrives(
    credentials: dict[str, str],
) -> None:
    producer = RecordingProducer()
    async with running_server(producer, max_body_bytes=1024 * 1024, body_read_timeout_seconds=60) as port:
        answer = await exchange(port, head(credentials), read_timeout=QUIET)

    assert statuses(answer) == [401]
    assert b"connection: close" in answer.lower()
    assert answer.endswith(b"<EOF>")  # the server closed the connection
    assert producer.records == []


async def test_a_client_that_sends_its_whole_body_before_reading_gets_its_401_every_time() -> None:
    # The body is never read, so the answer closes the connection with data unread: the lingering
    # close must still deliver the 401 (not a reset) to a client that reads only after sending.
    body = b'{"pad":"' + b"x" * 900_000 + b'"}'
    request = head({}).replace(b"content-length: %d" % DECLARED, b"content-length: %d" % len(body)) + body
    async with running_server(RecordingProducer(), max_body_bytes=1024 * 1024) as port:
        answers = [await send_all_then_read(port, request) for _ in range(10)]

    assert [statuses(raw) for raw in answers] == [[401]] * 10
    assert all(raw.endswith(b"<EOF>") for raw in answers), [raw[-40:] for raw in answers]
