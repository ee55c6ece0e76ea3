"""dramatiq's retries, except that a job stopped by its time limit or cancelled is not run again.

A job that ran out of time will most likely run out of time again; retrying it would hold a
worker thread for `max_retries` more full time limits before failing anyway.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import Retries, TimeLimitExceeded

from skillq.brokers.job_status import CANCELLED_OPTION


class JobRetries(Retries):
    def __init__(self, *, max_retries: int, min_backoff: float, max_backoff: float) -> None:
        super().__init__(max_retries=max_retries)
        # dramatiq replaces a zero back-off with its 15 s default (`min_backoff or ...`);
        # `retry_delay_secs = 0` must mean an immediate retry.
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.Message,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        # A cancelled job must stay cancelled, whatever the actor raised on its way out.
        if isinstance(exception, TimeLimitExceeded) or message.options.get(CANCELLED_OPTION):
            message.fail()
            return
        super().after_process_message(broker, message, result=result, exception=exception)
