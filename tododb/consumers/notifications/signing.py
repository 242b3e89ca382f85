"""Signed webhook requests, and what a receiver does to check them.

Receivers verify ``X-Tododb-Signature: sha256=<hex>``, the HMAC-SHA256 with their secret
of ``"<X-Tododb-Timestamp>." + body``; the timestamp is inside the MAC so an old
delivery cannot be replayed with a fresh timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
from uuid import UUID

SIGNATURE_HEADER = "X-Tododb-Signature"
TIMESTAMP_HEADER = "X-Tododb-Timestamp"
DELIVERY_HEADER = "X-Tododb-Delivery"
EVENT_ID_HEADER = "X-Tododb-Event-Id"
USER_AGENT = "tododb-webhooks/1"


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver does (also used by the tests); constant-time comparison."""
    return hmac.compare_digest(sign(secret, int(timestamp), body), signature)


def signed_headers(
    secret: str, body: bytes, *, timestamp: int, delivery_id: int, event_id: UUID
) -> dict[str, str]:
    """The request headers for ``body``: its signature, and ids to deduplicate on."""
    return {
        "content-type": "application/json",
        SIGNATURE_HEADER: sign(secret, timestamp, body),
        TIMESTAMP_HEADER: str(timestamp),
        DELIVERY_HEADER: str(delivery_id),
        EVENT_ID_HEADER: str(event_id),
        "user-agent": USER_AGENT,
    }
