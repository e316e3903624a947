"""Who may post: HTTP Basic and Standard Webhooks signatures, both checked in constant time.

`Authenticator.check_headers` (before the body is read) and `Authenticator.verify_body` (only for
a request signed with well-formed headers) raise `AuthenticationFailed`, the one exception the HTTP
layer maps to 401. The signature is verified on the raw bytes, before the body is parsed.
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
class SignedHeaders:
    """Well-formed Standard Webhooks headers, still to be checked against the body."""

    msg_id: bytes
    timestamp: bytes
    signatures: tuple[bytes, ...]  # the base64 parts of the `v1,` entries


@dataclass(frozen=True, slots=True)
class SignatureVerifier:
    """Standard Webhooks: `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, any of several keys.

    In two steps, so that a request is refused before its body is read whenever the headers
    alone can refuse it: `check_headers`, then `verify_body`.
    """

    keys: Sequence[bytes]
    tolerance_seconds: int = 300
    clock: Clock = time.time

    def check_headers(self, headers: Mapping[bytes, bytes]) -> SignedHeaders:
        """The signature headers, or `AuthenticationFailed` unless they are present and well formed:
        a webhook-id, a timestamp of digits within the tolerance, and at least one `v1,` entry."""
        msg_id = headers.get(WEBHOOK_ID)
        timestamp = headers.get(WEBHOOK_TIMESTAMP)
        signature_header = headers.get(WEBHOOK_SIGNATURE)
        if not (msg_id and timestamp and signature_header):
            raise AuthenticationFailed("missing webhook-id, webhook-timestamp or webhook-signature")
        if len(signature_header) > MAX_SIGNATURE_HEADER_BYTES:
            raise AuthenticationFailed("webhook-signature header too long")
        # Digits only, and few of them: int() of a 400-digit number works, but comparing it with a
        # float (the clock) overflows, and 5000 digits exceed Python's int conversion limit.
        if not (timestamp.isdigit() and len(timestamp) <= MAX_TIMESTAMP_DIGITS):
            raise AuthenticationFailed("webhook-timestamp is not Unix seconds")
        if abs(self.clock() - int(timestamp)) > self.tolerance_seconds:
            raise AuthenticationFailed("webhook-timestamp outside the tolerance")
        signatures = tuple(
            signature
            for version, _, signature in (entry.partition(b",") for entry in signature_header.split())
            if version == b"v1"
        )
        if not signatures:
            raise AuthenticationFailed("no v1 entry in webhook-signature")
        return SignedHeaders(msg_id, timestamp, signatures)

    def verify_body(self, signed: SignedHeaders, body: bytes) -> None:
        """Raise `AuthenticationFailed` unless a signature matches the body under one of the keys."""
        message = b"%s.%s.%s" % (signed.msg_id, signed.timestamp, body)
        expected = [base64.b64encode(hmac.digest(key, message, hashlib.sha256)) for key in self.keys]
        for signature in signed.signatures:
            for candidate in expected:
                if hmac.compare_digest(signature, candidate):
                    return
        raise AuthenticationFailed("no webhook-signature matches")

    def verify(self, headers: Mapping[bytes, bytes], body: bytes) -> None:
        """Both steps: raise `AuthenticationFailed` unless a signature matches the body."""
        self.verify_body(self.check_headers(headers), body)


@dataclass(frozen=True, slots=True)
class Authenticator:
    """Admits a request when any configured scheme accepts it; with none configured, admits all.

    `check_headers` decides from the headers alone whenever it can (no scheme, Basic, or signature
    headers that are missing or malformed), so an unauthenticated request is refused before its
    body is read; only well-formed signature headers leave `verify_body` to do.
    """

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

    def check_headers(self, headers: Mapping[bytes, bytes]) -> SignedHeaders | None:
        """None when the request is admitted; the signature headers when the body decides (see
        `verify_body`); else `AuthenticationFailed`."""
        if self.open:
            return None
        if self.basic is not None and self.basic.admits(headers.get(AUTHORIZATION)):
            return None
        if self.signatures is not None:
            return self.signatures.check_headers(headers)
        raise AuthenticationFailed("missing or wrong basic credentials")

    def verify_body(self, signed: SignedHeaders, body: bytes) -> None:
        """Raise `AuthenticationFailed` unless the body matches the signature headers `check_headers` gave."""
        if self.signatures is None:  # check_headers gives SignedHeaders only when signatures are configured
            raise AuthenticationFailed("no signing secret configured")
        self.signatures.verify_body(signed, body)

    def verify(self, headers: Mapping[bytes, bytes], body: bytes) -> None:
        """Both steps: raise `AuthenticationFailed` unless the request is admitted."""
        signed = self.check_headers(headers)
        if signed is not None:
            self.verify_body(signed, body)


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
