"""`sleep`: a diagnostic job type for smoke tests, benchmarks and demos.

It does what a real job does (runs for a while, reports progress, returns a result, can
fail on request) without needing any data, so it exercises every path of the job system.
"""

import time
from typing import Any

import dramatiq

from skillq.brokers.progress import report_progress

SLEEP_PARAMS = {
    "type": "object",
    "properties": {
        "seconds": {"type": "number", "minimum": 0, "maximum": 3600, "default": 1},
        "steps": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
        "fail": {"type": "boolean", "default": False, "description": "raise after sleeping"},
        "echo": {"description": "any JSON value, returned in the result"},
    },
    "additionalProperties": False,
}


@dramatiq.actor(
    actor_name="sleep",
    queue_name="default",
    params_schema=SLEEP_PARAMS,
    description="Sleep for `seconds` in `steps`, reporting progress; fail on request.",
)
def sleep(seconds: float = 1, steps: int = 10, fail: bool = False, echo: Any = None) -> dict:
    started = time.monotonic()
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        report_progress(step / steps, f"slept {step} of {steps} steps")
    if fail:
        raise RuntimeError(f"told to fail after sleeping {seconds:g} s")
    return {"slept_secs": round(time.monotonic() - started, 3), "steps": steps, "echo": echo}
