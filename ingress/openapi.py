"""The OpenAPI description of the ingress's public port, built from the same constants the app answers with.

Only what the public port serves is described: `POST /webhooks`, `POST /webhooks/{eventName}` and
`GET /openapi.json`. The admin
port's /healthz, /readyz and /metrics are operators', not senders' (docs/ingress.md).

`python -m ingress.openapi > docs/ingress-openapi.json` regenerates the committed copy; a unit test
fails when the two differ.
"""

from __future__ import annotations

import json
from typing import Any

# The `{eventName}` of `POST /webhooks/{eventName}` (with 1 to 128 characters): printable ASCII
# but space and slash, exactly what `ingress.app.valid_path_event_name` accepts. ECMA-262 syntax,
# as JSON Schema asks; `$` is the end of the string there (Python's `re` would use `\Z`).
PATH_EVENT_NAME_PATTERN = "^[\\x21-\\x2E\\x30-\\x7E]+$"
PATH_EVENT_NAME_MAX_CHARS = 128

# Every status `POST /webhooks` and `POST /webhooks/{eventName}` can answer, and what it means to the sender.
WEBHOOK_RESPONSES: dict[int, str] = {
    202: "Kafka acknowledged the body (acks=all); it is stored on the raw topic.",
    400: "The body is not UTF-8 JSON, not a JSON object, has an integer too long to read, or has a "
    "non-finite number (NaN, Infinity, -Infinity, or a number past a double's range such as 1e999); "
    "or the {eventName} of POST /webhooks/{eventName} is empty, longer than 128 characters, or has a "
    "character other than printable ASCII, a space or a slash (%2F too). "
    "(A request the HTTP parser cannot read, e.g. an invalid Content-Length, gets uvicorn's 400 in "
    "text/plain, and the connection is closed.)",
    401: "Neither HTTP Basic credentials nor a Standard Webhooks signature admitted the request. "
    "When the headers alone cannot admit it (no valid Basic credentials, and signature headers "
    "missing, malformed, outside the timestamp tolerance or without a v1 entry), the body is not "
    "read and the connection is closed.",
    413: "The body is larger than INGRESS_MAX_BODY_BYTES (default 1 MiB), or too large (with the "
    "record's key and headers) for the raw topic's max.message.bytes. Retrying does not help.",
    408: "The body did not arrive within INGRESS_BODY_READ_TIMEOUT_SECONDS; the connection is closed.",
    415: "The content type is not application/json (or application/*+json).",
    500: "A bug of ours; nothing is promised, retry later. The connection is closed.",
    503: "Kafka did not acknowledge within INGRESS_PRODUCE_TIMEOUT_SECONDS, or is known to be unreachable "
    "(answered at once, without waiting for the timeout), or the server is shutting down. Nothing is "
    "promised: retry after the Retry-After seconds. (Also beyond INGRESS_LIMIT_CONCURRENCY requests in "
    "flight, at once, with Retry-After.)",
}

# Answered by the HTTP server before the app sees the request (text/plain, connection closed).
SERVER_RESPONSES: dict[int, str] = {
    431: "The request line and headers are larger than INGRESS_MAX_HEADER_BYTES (default 16 KiB). "
    "text/plain; the connection is closed.",
}

_ERROR = {"$ref": "#/components/schemas/Error"}


def _error_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": WEBHOOK_RESPONSES[status],
        "content": {"application/json": {"schema": _ERROR}},
    }
    if status == 401:
        response["headers"] = {
            "WWW-Authenticate": {
                "description": '`Basic realm="exam-events", charset="UTF-8"` when HTTP Basic is configured.',
                "schema": {"type": "string"},
            }
        }
    if status == 503:
        response["headers"] = {
            "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}
        }
    return response


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the ingress."""
    responses: dict[str, Any] = {
        "202": {
            "description": WEBHOOK_RESPONSES[202],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}},
        }
    }
    responses.update({str(status): _error_response(status) for status in WEBHOOK_RESPONSES if status != 202})
    responses.update(
        {
            str(status): {"description": text, "content": {"text/plain": {"schema": {"type": "string"}}}}
            for status, text in SERVER_RESPONSES.items()
        }
    )
    responses = dict(sorted(responses.items()))
    signature_headers = [
        {
            "name": "webhook-id",
            "in": "header",
            "required": False,
            "description": "Standard Webhooks message id, stable across retries; becomes the record's "
            "webhook id (one is generated when absent).",
            "schema": {"type": "string", "maxLength": 256},
        },
        {
            "name": "webhook-timestamp",
            "in": "header",
            "required": False,
            "description": "Unix seconds when signed; must be within 5 minutes of our clock either way.",
            "schema": {"type": "integer"},
        },
        {
            "name": "webhook-signature",
            "in": "header",
            "required": False,
            "description": 'Space-separated `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{raw body}">` '
            "entries; one match with any configured secret admits the request.",
            "schema": {"type": "string"},
        },
    ]
    webhook_operation = {
        "security": [{"basicAuth": []}, {"standardWebhooks": []}],
        "requestBody": {
            "required": True,
            "description": "Any JSON object; its shape is checked later by the consumer.",
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        "responses": responses,
    }
    event_name_parameter = {
        "name": "eventName",
        "in": "path",
        "required": True,
        "description": "The event this subscription URL is for (e.g. user.registeredForExam), for senders "
        "whose bodies lack meta.eventName. It becomes the record's event-name header; the consumer "
        "routes by meta.eventName when the body has one (and counts a disagreement), else by this. "
        "Any well-formed name (1 to 128 printable ASCII characters, no space, no slash) is accepted: "
        "an event no handler answers to goes to the unrouted topic.",
        "schema": {
            "type": "string",
            "minLength": 1,
            "maxLength": PATH_EVENT_NAME_MAX_CHARS,
            "pattern": PATH_EVENT_NAME_PATTERN,
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "exam-events webhook ingress",
            "version": "1",
            "description": "Stores each webhook body, byte for byte, on a Kafka topic and answers 202 only "
            "once Kafka has acknowledged it. Either authentication scheme admits a request. This is the "
            "public port (INGRESS_PORT); probes and metrics are on the admin port (INGRESS_ADMIN_PORT).",
        },
        "paths": {
            "/webhooks": {
                "post": {
                    "operationId": "receiveWebhook",
                    "summary": "Receive one webhook (its event name, if any, is meta.eventName)",
                    "parameters": signature_headers,
                    **webhook_operation,
                }
            },
            "/webhooks/{eventName}": {
                "post": {
                    "operationId": "receiveWebhookForEvent",
                    "summary": "Receive one webhook of the event named in the path",
                    "parameters": [event_name_parameter, *signature_headers],
                    **webhook_operation,
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This OpenAPI document",
                    "security": [],
                    "responses": {"200": {"description": "The document (JSON)."}},
                }
            },
        },
        "components": {
            "securitySchemes": {
                "basicAuth": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "INGRESS_BASIC_AUTH_USERNAME / INGRESS_BASIC_AUTH_PASSWORD.",
                },
                "standardWebhooks": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "webhook-signature",
                    "description": "Standard Webhooks signature with webhook-id and webhook-timestamp; "
                    "secrets in INGRESS_SIGNING_SECRETS (`whsec_<base64>`, comma separated).",
                },
            },
            "schemas": {
                "Accepted": {
                    "type": "object",
                    "required": ["webhookId", "topic", "partition", "offset"],
                    "properties": {
                        "webhookId": {"type": "string"},
                        "topic": {"type": "string"},
                        "partition": {"type": "integer"},
                        "offset": {"type": "integer"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string", "description": "A short reason."}},
                },
            },
        },
    }


def render() -> str:
    """The document as committed in docs/ingress-openapi.json."""
    return json.dumps(openapi_document(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
