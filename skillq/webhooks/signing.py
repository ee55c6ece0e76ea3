"""Standard Webhooks signatures, made with the spec's own library (`standardwebhooks`).

`webhook-signature` is `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` with the secret's
bytes (`whsec_` then base64); a receiver checks it with `standardwebhooks.Webhook.verify`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from standardwebhooks import Webhook


def signed_headers(secret: str, message_id: str, body: str, now: datetime | None = None) -> dict:
    """The three Standard Webhooks headers for one attempt of a message."""
    now = now or datetime.now(UTC)
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(message_id, now, body),
    }
