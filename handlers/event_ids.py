"""Deterministic CloudEvents ids: a redelivered webhook gives the same ids, a new occurrence new ones."""

from __future__ import annotations

import uuid

# Namespace of the deterministic event ids (uuid5); changing it would change every id.
EVENT_ID_NAMESPACE = uuid.UUID("6f1d3c2e-5b0a-4c57-9a53-0e7d2f8b9c41")


def event_id(*parts: str) -> str:
    """A UUIDv5 of the parts, in order; the separator (U+001F) does not occur in the platform's ids."""
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, "\x1f".join(parts)))
