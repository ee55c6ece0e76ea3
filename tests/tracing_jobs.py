"""A job type for the tracing tests, loaded by their processes through `[jobs] modules`."""

from dramatiq.middleware import CurrentMessage

import skillq


@skillq.job_type(max_retries=1)
def flaky_once() -> str:
    """Fails its first attempt and succeeds on the retry."""
    message = CurrentMessage.get_current_message()
    if message.options.get("retries", 0) == 0:
        raise RuntimeError("the first attempt fails")
    return "second attempt"
