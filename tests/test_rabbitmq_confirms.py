"""`broker.confirm_delivery`: RabbitMQ sends with or without publisher confirms.

Without confirms a send returns before RabbitMQ holds the message, so a RabbitMQ crash can
lose it. The job is in the store by then, pending: lost-message recovery sends it again. The
crash is played here by purging the queue between the submit and the first worker, which
leaves exactly what such a crash would: a pending job and no message.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pika
import pytest
from pika.adapters.blocking_connection import BlockingChannel

from skillq.brokers.factory import build_broker
from skillq.settings import SettingsError, load_settings
from tests.reliability import RABBITMQ_URL, Stack
from tests.support import require_service, write_settings

T = TypeVar("T")


def _settings(tmp_path: Path, **broker: object) -> Path:
    sections = {"server": {"data_dir": str(tmp_path)}}
    sections["broker"] = {"backend": "rabbitmq", "url": RABBITMQ_URL, **broker}
    return write_settings(tmp_path, sections)


@pytest.mark.parametrize(("broker", "confirms"), [({}, True), ({"confirm_delivery": False}, False)])
def test_the_broker_confirms_sends_unless_the_settings_say_not(
    tmp_path: Path, broker: dict[str, object], confirms: bool
) -> None:
    settings = load_settings(_settings(tmp_path, **broker))
    built = build_broker(settings)
    try:
        assert built.confirm_delivery is confirms
    finally:
        built.close()


def test_a_confirm_delivery_that_is_not_a_boolean_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"broker\.confirm_delivery: expected a boolean"):
        load_settings(_settings(tmp_path, confirm_delivery="maybe"))


def _unconfirmed_stack(tmp_path: Path) -> Stack:
    """RabbitMQ without confirms; lost-message recovery re-sends after 3 s."""
    require_service("rabbitmq")
    return Stack.create(
        "rabbitmq",
        tmp_path,
        extra={"broker": {"confirm_delivery": False}},
        requeue_pending_after_secs=3,
    )


def _on_the_server(action: Callable[[BlockingChannel], T]) -> T:
    """`action` on a channel of a connection of its own, as an operator's tool would."""
    connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
    try:
        return action(connection.channel())
    finally:
        connection.close()


def test_without_confirms_a_message_rabbitmq_lost_is_sent_again(tmp_path: Path) -> None:
    stack = _unconfirmed_stack(tmp_path)
    try:
        stack.start_api()
        job = stack.submit({"type": "sleep", "params": {"seconds": 0}})
        purged = _on_the_server(lambda channel: channel.queue_purge("default"))
        # The job's message, gone as in a crash before RabbitMQ wrote it.
        assert purged.method.message_count == 1
        assert stack.job(job["id"])["state"] == "pending"
        stack.start_worker()
        done = stack.wait_state(job["id"], {"completed"}, timeout=60)
        assert done["attempts"] == 1
    finally:
        stack.close()


def test_without_confirms_jobs_sent_to_a_queue_deleted_on_the_server_still_run(
    tmp_path: Path,
) -> None:
    """An unconfirmed send to a queue that is gone on the server is dropped without a word;
    the worker's consumer, cancelled by the deletion, declares its queue again as it
    restarts, and lost-message recovery sends the job once more."""
    stack = _unconfirmed_stack(tmp_path)
    try:
        stack.start_api()
        stack.start_worker()
        first = stack.submit({"type": "sleep", "params": {"seconds": 0}})
        stack.wait_state(first["id"], {"completed"}, timeout=60)
        _on_the_server(lambda channel: channel.queue_delete("default"))
        second = stack.submit({"type": "sleep", "params": {"seconds": 0}})
        done = stack.wait_state(second["id"], {"completed"}, timeout=60)
        assert done["attempts"] == 1
    finally:
        stack.close()
