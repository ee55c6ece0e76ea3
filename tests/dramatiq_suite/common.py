"""What Dramatiq's test modules import from their `common` module (not in its sdist).

Our own stand-in, with the names those modules use: a `worker` context manager, the
platform skip marks, and RabbitMQ credentials (guest/guest, as on our CI machines).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager

import pika
import pytest
from dramatiq import Worker

RABBITMQ_CREDENTIALS = pika.credentials.PlainCredentials(
    os.environ.get("RABBITMQ_USERNAME", "guest"), os.environ.get("RABBITMQ_PASSWORD", "guest")
)

skip_in_ci = pytest.mark.skipif(bool(os.environ.get("CI")), reason="not run in CI upstream")
skip_on_windows = pytest.mark.skipif(platform.system() == "Windows", reason="POSIX only")
skip_on_pypy = pytest.mark.skipif(
    platform.python_implementation() == "PyPy", reason="no time limits on PyPy"
)


@contextmanager
def worker(*args: object, **kwargs: object) -> Iterator[Worker]:
    started = Worker(*args, **kwargs)
    started.start()
    try:
        yield started
    finally:
        started.stop()
