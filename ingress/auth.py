"""Who may post: HTTP Basic and Standard Webhooks signatures, both checked in constant time.

`Authenticator.verify` raises `AuthenticationFailed`, the one exception the HTTP layer maps to 401.
The signature is verified on the raw bytes, before the body is parsed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ingress.settings import IngressSettings

Clock = Callable[[], float]

# Header names as ASGI servers deliver them: lower-case bytes.
WEBHOOK_ID = b"webhook-id"
WEBHOOK_TIMESTAMP = b"webhook-timestamp"
WEBHOOK_SIGNATURE = b"webhook-signature"
AUTHORIZATION = b"authorization"
BASIC_REALM = 'Basic realm="exam-events", charset="UTF-8"'
MAX_TIMESTAMP_DIGITS = 12  # Unix seconds until the year 33658
MAX_SIGNATURE_HEADER_BYTES = 4096  # a few rotated secrets; anything longer is noise to refuse cheaply


class AuthenticationFailed(Exception):
    """The request proved no configured identity; the reason is for logs, not for the client."""


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    """The expected HTTP Basic user name and password, as bytes for `hmac.compare_digest`."""

    username: bytes
    password: bytes

    def admits(self, authorization: bytes | None) -> bool:
        """True when an `Authorization: Basic ...` value carries exactly these credentials."""
        if authorization is None:
            return False
        scheme, _, encoded = authorization.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        username, colon, password = decoded.partition(b":")
        # Both comparisons always run, so the time taken does not tell which part was wrong.
        user_ok = hmac.compare_digest(username, self.username)
        password_ok = hmac.compare_digest(password, self.password)
        return bool(colon) and user_ok and password_ok


@dataclass(frozen=True, slots=True)
class SignatureVerifier:
    """Standard Webhooks: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, any of several keys."""

    keys: Sequence[bytes]
    tolerance_seconds: int = 300
    clock: Clock = time.time

    def verify(self, headers: Mapping[bytes, bytes], body: bytes) -> None:
        """Raise `AuthenticationFailed` unless a signature matches the body under one of the keys."""
        msg_id = headers.get(WEBHOOK_ID)
        timestamp = headers.get(WEBHOOK_TIMESTAMP)
        signatures = headers.get(WEBHOOK_SIGNATURE)
        if not (msg_id and timestamp and signatures):
            raise AuthenticationFailed("missing webhook-id, webhook-timestamp or webhook-signature")
        if len(signatures) > MAX_SIGNATURE_HEADER_BYTES:
            raise AuthenticationFailed("webhook-signature header too long")
        # Digits only, and few of them: int() of a 400-digit number works, but comparing it with a
        # float (the clock) overflows, and 5000 digits exceed Python's int conversion limit.
        if not (timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS):
            raise AuthenticationFailed("webhook-timestamp is not Unix seconds")
        sent_at = int(timestamp)
        if abs(self.clock() - sent_at) > self.tolerance_seconds:
            raise AuthenticationFailed("webhook-timestamp outside the tolerance")
        signed = b"%s.%s.%s" % (msg_id, timestamp, body)
        expected = [base64.b64encode(hmac.digest(key, signed, hashlib.sha256)) for key in self.keys]
        for entry in signatures.split():
            version, _, signature = entry.partition(b",")
            if version != b"v1":
                continue
            for candidate in expected:
                if hmac.compare_digest(signature, candidate):
                    return
        raise AuthenticationFailed("no webhook-signature matches")


@dataclass(frozen=True, slots=True)
class Authenticator:
    """Admits a request when any configured scheme accepts it; with none configured, admits all."""

    basic: BasicCredentials | None
    signatures: SignatureVerifier | None

    @property
    def challenges_basic(self) -> bool:
        """True when a 401 should carry a `WWW-Authenticate: Basic` challenge."""
        return self.basic is not None

    @property
    def open(self) -> bool:
        """True when no scheme is configured (INGRESS_ALLOW_UNAUTHENTICATED)."""
        return self.basic is None and self.signatures is None

    def verify(self, headers: Mapping[bytes, bytes], body: bytes) -> None:
        """Raise `AuthenticationFailed` unless the request is admitted."""
        if self.open:
            return
        if self.basic is not None and self.basic.admits(headers.get(AUTHORIZATION)):
            return
        if self.signatures is not None:
            self.signatures.verify(headers, body)
            return
        raise AuthenticationFailed("missing or wrong basic credentials")


def authenticator_from(settings: IngressSettings, clock: Clock = time.time) -> Authenticator:
    """The authenticator the settings describe."""
    basic = None
    if settings.basic_auth_username is not None and settings.basic_auth_password is not None:
        basic = BasicCredentials(
            settings.basic_auth_username.encode(),
            settings.basic_auth_password.get_secret_value().encode(),
        )
    signatures = None
    if settings.signing_secrets:
        signatures = SignatureVerifier(settings.signing_keys, settings.signature_tolerance_seconds, clock)
    return Authenticator(basic, signatures)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """A `webhook-signature` value for a body: what a sender computes (used by tests and the bench)."""
    digest = hmac.digest(key, b"%s.%d.%s" % (msg_id.encode(), timestamp, body), hashlib.sha256)
    return "v1," + base64.b64encode(digest).decode()
