"""`/ready` asks the broker with its own protocol: real API processes on Redis and RabbitMQ,
reachable and not (a free port nobody listens on), while `/live` and `/health` (store
only) keep answering.
"""

from __future__ import annotations

import httpx
import pytest

from tests.support import RABBITMQ_URL, free_port, require_service, start_api, write_settings

REDIS_DB_URL = "redis://127.0.0.1:6379/11"


@pytest.mark.parametrize(
    ("backend", "url", "reachable"),
    [
        ("redis", REDIS_DB_URL, True),
        ("redis", "redis://127.0.0.1:{port}/0", False),
        ("rabbitmq", RABBITMQ_URL, True),
        ("rabbitmq", "amqp://guest:guest@127.0.0.1:{port}/%2F", False),
    ],
    ids=["redis-up", "redis-down", "rabbitmq-up", "rabbitmq-down"],
)
def test_ready_follows_the_broker(tmp_path, backend: str, url: str, reachable: bool) -> None:
    if reachable:
        require_service(backend)
    settings = write_settings(
        tmp_path,
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "broker": {"backend": backend, "url": url.format(port=free_port())},
        },
    )
    api, base = start_api(settings, tmp_path)
    try:
        ready = httpx.get(f"{base}/ready", timeout=10)
        assert ready.status_code == (200 if reachable else 503), ready.text
        assert ready.json()["broker"] == {"backend": backend, "ok": reachable}
        assert ready.json()["store"]["ok"] is True
        assert httpx.get(f"{base}/live").status_code == 200
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        api.stop()
