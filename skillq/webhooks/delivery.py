"""One attempt of one webhook delivery, and when to try again.

Each attempt is claimed in the store before anything is sent (so two copies of a message
never send the same attempt, and a worker that dies mid-attempt leaves a trace), signed
afresh (the `webhook-timestamp` is the attempt's), and posted to the address the SSRF guard
just checked, never following a redirect. A 2xx answer delivers it; anything else is
retried after `first_retry_secs`, doubling up to `max_retry_secs`, until `max_attempts`
attempts were made or the event is `max_age_secs` old. A URL the guard refuses (its host
now resolves to a private address) or a secret gone from the settings fails at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import urlunsplit

import dramatiq
import httpx

from skillq.settings import Settings, WebhookSettings
from skillq.storage import webhooks
from skillq.storage.database import connection
from skillq.storage.models import utcnow
from skillq.webhooks import events
from skillq.webhooks.addresses import Target, UrlRefused, check_url
from skillq.webhooks.signing import signed_headers

logger = logging.getLogger(__name__)

USER_AGENT = "skillq-webhooks"


def lease_secs(config: WebhookSettings) -> float:
    """How long an attempt may take at most (connect, send, and wait for the answer's status
    line, each within `timeout_secs`): the actor's time limit, and how long a claimed
    attempt is left alone before it counts as interrupted."""
    return 4 * config.timeout_secs + 5


@dataclass(frozen=True)
class Answer:
    status_code: int | None = None
    error: str | None = None
    #: No point in trying again (the URL is refused, the secret is gone).
    final: bool = False

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def secret_for(settings: WebhookSettings, delivery: webhooks.WebhookDelivery) -> str | None:
    """The server's secret for a job's own callback; a subscription's own secret (found by
    its URL in the current settings) for a subscription's delivery."""
    if delivery.source == "callback":
        return settings.secret
    return next((s.secret for s in settings.subscriptions if s.url == delivery.url), None)


def retry_delay(settings: WebhookSettings, attempt: int) -> float:
    """Seconds before the attempt after `attempt`: exponential, capped."""
    return min(settings.first_retry_secs * 2 ** min(attempt - 1, 60), settings.max_retry_secs)


def deliver(broker: dramatiq.Broker, settings: Settings, delivery_id: str, attempt: int) -> str:
    """Make attempt number `attempt` of a delivery; returns what happened (for logs/tests)."""
    config = settings.webhooks
    with connection():
        delivery = webhooks.get_delivery(delivery_id)
        if delivery is None or delivery.state != webhooks.PENDING:
            return "done"
        if delivery.attempts != attempt - 1:
            return "stale"  # another copy of this message made (or makes) this attempt
        early = (delivery.next_attempt_at - utcnow()).total_seconds()
        if early > 0:
            # A delayed message may come a little ahead of its time: wait for it.
            events.send(broker, delivery_id, attempt, early)
            return "early"
        if not webhooks.claim_attempt(delivery, attempt, lease_secs(config)):
            return "stale"
    secret = secret_for(config, delivery)
    if secret is None:
        where = "[webhooks] secret" if delivery.source == "callback" else "the subscription"
        problem = f"no secret to sign with: {where} is gone from the settings"
        answer = Answer(error=problem, final=True)
    else:
        answer = post(config, delivery.url, delivery.id, delivery.payload, secret)
    return _record(broker, config, delivery, attempt, answer)


def _record(
    broker: dramatiq.Broker,
    config: WebhookSettings,
    delivery: webhooks.WebhookDelivery,
    attempt: int,
    answer: Answer,
) -> str:
    now = utcnow()
    delay = retry_delay(config, attempt)
    age = (now + timedelta(seconds=delay) - delivery.created_at).total_seconds()
    error = answer.error
    if answer.delivered:
        outcome, next_at = webhooks.DELIVERED, None
    elif answer.final or attempt >= config.max_attempts or age > config.max_age_secs:
        outcome, next_at = webhooks.FAILED, None
        if not answer.final:
            error = f"{error}; gave up after {attempt} attempts"
    else:
        outcome, next_at = webhooks.PENDING, now + timedelta(seconds=delay)
    with connection():
        webhooks.finish_attempt(
            delivery.id,
            attempt,
            status_code=answer.status_code,
            error=error,
            outcome=outcome,
            next_attempt_at=next_at,
        )
    if outcome == webhooks.PENDING:
        events.send(broker, delivery.id, attempt + 1, delay)
    logger.info("Webhook %s to %s: attempt %d %s.", delivery.id, delivery.url, attempt, outcome)
    return outcome


def _address_url(target: Target, address: str) -> str:
    host = f"[{address}]" if ":" in address else address
    parts = target.url
    return urlunsplit((parts.scheme, f"{host}:{target.port}", parts.path or "/", parts.query, ""))


def post(config: WebhookSettings, url: str, message_id: str, body: str, secret: str) -> Answer:
    """POST the signed body to the URL's checked addresses (the first that connects)."""
    try:
        target = check_url(url, allow_private=config.allow_private)
    except UrlRefused as refused:
        return Answer(error=f"refused: {refused}", final=True)
    default_port = 443 if target.url.scheme == "https" else 80
    name = f"[{target.host}]" if ":" in target.host else target.host
    host_header = name if target.port == default_port else f"{name}:{target.port}"
    headers = {
        **signed_headers(secret, message_id, body),
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": host_header,
    }
    # TLS checks the certificate against the URL's host name, not the address connected to.
    extensions = {"sni_hostname": target.host} if target.url.scheme == "https" else {}
    error = "no address to connect to"
    timeout = httpx.Timeout(config.timeout_secs)
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        for address in target.addresses:
            try:
                with client.stream(
                    "POST",
                    _address_url(target, address),
                    content=body.encode(),
                    headers=headers,
                    extensions=extensions,
                ) as response:
                    # The answer's body is never read: only its status counts.
                    status = response.status_code
            except httpx.ConnectError as failure:
                error = f"cannot connect to {address}: {failure}"
                continue
            except httpx.HTTPError as failure:
                return Answer(error=f"{type(failure).__name__}: {failure}")
            if 300 <= status < 400:
                return Answer(status, f"status {status}: redirects are not followed")
            if not 200 <= status < 300:
                return Answer(status, f"status {status}")
            return Answer(status)
    return Answer(error=error)
