"""HTTP Basic and Standard Webhooks signatures: what admits a request and what does not."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest

from ingress.auth import (
    AuthenticationFailed,
    Authenticator,
    BasicCredentials,
    SignatureVerifier,
    authenticator_from,
    sign,
)
from tests.support.ingress_harness import (
    OTHER_KEY,
    PASSWORD,
    SIGNING_KEY,
    USERNAME,
    basic_auth,
    ingress_settings,
    signed,
)

NOW = 1_750_000_000
BODY = b'{"user":{"id":"usr_1"}}'
Headers = dict[bytes, bytes]


def as_asgi(headers: dict[str, str]) -> Headers:
    """Headers as the ASGI server hands them over: lower-case bytes."""
    return {name.lower().encode(): value.encode() for name, value in headers.items()}


@pytest.fixture
def verifier() -> SignatureVerifier:
    return SignatureVerifier([SIGNING_KEY], tolerance_seconds=300, clock=lambda: NOW)


@pytest.fixture
def both_schemes() -> Authenticator:
    return authenticator_from(ingress_settings(), clock=lambda: NOW)


def test_a_signature_made_with_a_configured_secret_is_accepted(verifier: SignatureVerifier) -> None:
    verifier.verify(as_asgi(signed(BODY, timestamp=NOW)), BODY)


def test_the_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # From the Standard Webhooks specification's test vector.
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'

    signature = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_a_signature_of_another_body_is_refused(verifier: SignatureVerifier) -> None:
    headers = as_asgi(signed(b'{"user":{"id":"usr_2"}}', timestamp=NOW))

    with pytest.raises(AuthenticationFailed, match="no webhook-signature matches"):
        verifier.verify(headers, BODY)


def test_a_signature_made_with_an_unknown_secret_is_refused(verifier: SignatureVerifier) -> None:
    with pytest.raises(AuthenticationFailed):
        verifier.verify(as_asgi(signed(BODY, key=OTHER_KEY, timestamp=NOW)), BODY)


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_a_timestamp_outside_five_minutes_either_way_is_refused(
    verifier: SignatureVerifier, skew: int
) -> None:
    with pytest.raises(AuthenticationFailed, match="tolerance"):
        verifier.verify(as_asgi(signed(BODY, timestamp=NOW + skew)), BODY)


@pytest.mark.parametrize("skew", [-300, 300])
def test_a_timestamp_at_the_edge_of_the_tolerance_is_accepted(verifier: SignatureVerifier, skew: int) -> None:
    verifier.verify(as_asgi(signed(BODY, timestamp=NOW + skew)), BODY)


@pytest.mark.parametrize("missing", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_any_missing_signature_header_is_refused(verifier: SignatureVerifier, missing: str) -> None:
    headers = signed(BODY, timestamp=NOW)
    del headers[missing]

    with pytest.raises(AuthenticationFailed, match="missing"):
        verifier.verify(as_asgi(headers), BODY)


@pytest.mark.parametrize("timestamp", ["soon", "9" * 400, "9" * 5000, "+1700000000", " 1700000000", "-1", ""])
def test_a_timestamp_that_is_not_a_few_digits_is_refused_without_overflow(
    verifier: SignatureVerifier, timestamp: str
) -> None:
    headers = signed(BODY, timestamp=NOW)
    headers["webhook-timestamp"] = timestamp
    # A float clock, like time.time(): a float minus a 400-digit int overflows.
    float_clock = SignatureVerifier([SIGNING_KEY], tolerance_seconds=300, clock=lambda: NOW + 0.5)

    with pytest.raises(AuthenticationFailed):
        verifier.verify(as_asgi(headers), BODY)
    with pytest.raises(AuthenticationFailed):
        float_clock.verify(as_asgi(headers), BODY)


def test_one_matching_entry_among_several_signatures_is_enough(verifier: SignatureVerifier) -> None:
    headers = signed(BODY, timestamp=NOW)
    wrong = sign(OTHER_KEY, "msg_test_1", NOW, BODY)
    headers["webhook-signature"] = f"v2,abc {wrong} {headers['webhook-signature']}"

    verifier.verify(as_asgi(headers), BODY)


def test_a_body_signed_with_the_previous_secret_passes_during_rotation() -> None:
    rotating = SignatureVerifier([OTHER_KEY, SIGNING_KEY], clock=lambda: NOW)

    rotating.verify(as_asgi(signed(BODY, key=SIGNING_KEY, timestamp=NOW)), BODY)
    rotating.verify(as_asgi(signed(BODY, key=OTHER_KEY, timestamp=NOW)), BODY)


def test_a_signature_with_an_unknown_version_is_refused(verifier: SignatureVerifier) -> None:
    headers = signed(BODY, timestamp=NOW)
    headers["webhook-signature"] = headers["webhook-signature"].replace("v1,", "v1a,")

    with pytest.raises(AuthenticationFailed):
        verifier.verify(as_asgi(headers), BODY)


@pytest.fixture
def credentials() -> BasicCredentials:
    return BasicCredentials(USERNAME.encode(), PASSWORD.encode())


def test_the_configured_basic_credentials_are_admitted(credentials: BasicCredentials) -> None:
    assert credentials.admits(as_asgi(basic_auth())[b"authorization"])


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        b"",
        b"Basic",
        b"Basic !!!notbase64",
        b"Bearer " + base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()),
        b"Basic " + base64.b64encode(f"{USERNAME}{PASSWORD}".encode()),
        b"Basic " + base64.b64encode(f"{USERNAME}:wrong".encode()),
        b"Basic " + base64.b64encode(f"someone:{PASSWORD}".encode()),
        b"Basic " + base64.b64encode(f"{USERNAME}:{PASSWORD}x".encode()),
    ],
)
def test_anything_but_the_exact_basic_credentials_is_refused(
    credentials: BasicCredentials, authorization: bytes | None
) -> None:
    assert not credentials.admits(authorization)


def test_basic_scheme_name_is_case_insensitive(credentials: BasicCredentials) -> None:
    assert credentials.admits(as_asgi(basic_auth())[b"authorization"].replace(b"Basic", b"basic"))


@pytest.mark.parametrize(
    "make_headers",
    [lambda: basic_auth(), lambda: signed(BODY, timestamp=NOW)],
    ids=["basic", "signature"],
)
def test_with_both_schemes_configured_either_one_admits(
    both_schemes: Authenticator, make_headers: Callable[[], dict[str, str]]
) -> None:
    both_schemes.verify(as_asgi(make_headers()), BODY)


def test_with_both_schemes_configured_a_wrong_password_and_no_signature_is_refused(
    both_schemes: Authenticator,
) -> None:
    with pytest.raises(AuthenticationFailed):
        both_schemes.verify(as_asgi(basic_auth(password="wrong")), BODY)


def test_with_only_basic_configured_a_valid_signature_is_not_enough() -> None:
    basic_only = authenticator_from(ingress_settings(signing_secrets=()), clock=lambda: NOW)

    with pytest.raises(AuthenticationFailed):
        basic_only.verify(as_asgi(signed(BODY, timestamp=NOW)), BODY)


def test_with_no_scheme_configured_everything_is_admitted() -> None:
    open_door = authenticator_from(
        ingress_settings(
            basic_auth_username=None, basic_auth_password=None, signing_secrets=(), allow_unauthenticated=True
        )
    )

    open_door.verify({}, BODY)


def test_well_formed_signature_headers_are_checked_without_the_body(verifier: SignatureVerifier) -> None:
    headers = signed(BODY, timestamp=NOW)
    headers["webhook-signature"] = f"v2,abc {headers['webhook-signature']} v1,second"

    checked = verifier.check_headers(as_asgi(headers))

    assert checked.msg_id == b"msg_test_1"
    assert checked.timestamp == str(NOW).encode()
    assert checked.signatures == (sign(SIGNING_KEY, "msg_test_1", NOW, BODY)[3:].encode(), b"second")
    verifier.verify_body(checked, BODY)


@pytest.mark.parametrize(
    ("signature", "reason"),
    [("v2,abc v1a,def", "no v1 entry"), ("v1," + "A" * 4096, "too long"), ("   ", "no v1 entry")],
)
def test_signature_headers_without_a_usable_v1_entry_are_refused_from_the_headers(
    verifier: SignatureVerifier, signature: str, reason: str
) -> None:
    headers = {**signed(BODY, timestamp=NOW), "webhook-signature": signature}

    with pytest.raises(AuthenticationFailed, match=reason):
        verifier.check_headers(as_asgi(headers))


def test_the_headers_of_another_body_pass_the_header_check_and_fail_the_body_check(
    verifier: SignatureVerifier,
) -> None:
    checked = verifier.check_headers(as_asgi(signed(b'{"user":{"id":"usr_2"}}', timestamp=NOW)))

    with pytest.raises(AuthenticationFailed, match="no webhook-signature matches"):
        verifier.verify_body(checked, BODY)


def test_valid_basic_credentials_admit_from_the_headers_alone(both_schemes: Authenticator) -> None:
    assert both_schemes.check_headers(as_asgi(basic_auth())) is None


def test_a_wrong_password_with_well_formed_signature_headers_leaves_the_body_to_decide(
    both_schemes: Authenticator,
) -> None:
    headers = as_asgi({**basic_auth(password="wrong"), **signed(BODY, timestamp=NOW)})

    checked = both_schemes.check_headers(headers)

    assert checked is not None
    both_schemes.verify_body(checked, BODY)
    with pytest.raises(AuthenticationFailed):
        both_schemes.verify_body(checked, b"{}")


@pytest.mark.parametrize(
    "headers",
    [{}, basic_auth(password="wrong"), {"webhook-id": "msg_1", "webhook-signature": "v1,abc"}],
    ids=["nothing", "wrong password", "signature without timestamp"],
)
def test_with_both_schemes_headers_proving_nothing_are_refused_before_the_body(
    both_schemes: Authenticator, headers: dict[str, str]
) -> None:
    with pytest.raises(AuthenticationFailed):
        both_schemes.check_headers(as_asgi(headers))


def test_with_only_basic_configured_wrong_credentials_are_refused_from_the_headers() -> None:
    basic_only = authenticator_from(ingress_settings(signing_secrets=()), clock=lambda: NOW)

    with pytest.raises(AuthenticationFailed, match="basic"):
        basic_only.check_headers(as_asgi({**basic_auth(password="wrong"), **signed(BODY, timestamp=NOW)}))
