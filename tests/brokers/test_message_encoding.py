"""Messages encoded with orjson read back exactly as dramatiq's stdlib encoder's did."""

from __future__ import annotations

import json
import math
from datetime import datetime
from pathlib import Path

import dramatiq
import pytest
from dramatiq.encoder import JSONEncoder
from dramatiq.errors import DecodeError

from skillq.brokers.factory import build_broker
from skillq.brokers.message_encoding import MessageEncoder
from skillq.settings import BrokerSettings, Settings

STDLIB = JSONEncoder()


def job_message(**kwargs: object) -> dict[str, object]:
    return {
        "queue_name": "default",
        "actor_name": "sleep",
        "args": [],
        "kwargs": kwargs,
        "options": {"job_id": "0b8f3f7e-1d0a-4c6c-9a3e-6b1f2f0e2d11", "max_retries": 3},
        "message_id": "3dbb5652-9ada-4e66-8139-c7c26f1bd9db",
        "message_timestamp": 1796129498834,
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"seconds": 0.25, "text": "héllo ✓ \u0000", "nested": [{"a": None, "b": True}]},
        # Beyond orjson's 64 bits, either way: the stdlib writes and reads them.
        {"big": 2**64, "bigger": -(10**30), "huge": int("9" * 4000)},
        {"max_unsigned": 2**64 - 1, "min_signed": -(2**63)},
        # In a string, twenty digits only send the read the slow way.
        {"digits": "1" * 40},
    ],
)
def test_round_trip_is_exact_and_readable_by_dramatiq(kwargs: dict[str, object]) -> None:
    data = job_message(**kwargs)
    encoded = MessageEncoder().encode(data)
    assert MessageEncoder().decode(encoded) == data
    assert STDLIB.decode(encoded) == data
    assert MessageEncoder().decode(STDLIB.encode(data)) == data


def test_a_big_integer_from_another_sender_is_not_read_as_a_float() -> None:
    # orjson alone reads 2**64 + 1 as 1.8446744073709552e19.
    encoded = STDLIB.encode(job_message(n=2**64 + 1))
    decoded = MessageEncoder().decode(encoded)
    assert decoded["kwargs"] == {"n": 2**64 + 1}
    assert isinstance(decoded["kwargs"]["n"], int)


def test_what_orjson_refuses_to_read_is_read_as_dramatiq_did() -> None:
    # Lone surrogates and NaN are what the stdlib writes and reads; orjson refuses both.
    encoded = STDLIB.encode(job_message(text="\ud800", value=float("nan")))
    decoded = MessageEncoder().decode(encoded)
    assert decoded["kwargs"]["text"] == "\ud800"
    assert math.isnan(decoded["kwargs"]["value"])


def test_what_orjson_refuses_to_write_is_written_as_dramatiq_did() -> None:
    data = job_message(text="\ud800")
    data["kwargs"] = {1: "int key", "text": "\ud800"}  # type: ignore[index]
    assert MessageEncoder().encode(data) == STDLIB.encode(data)


def test_types_the_stdlib_refuses_are_still_refused() -> None:
    # orjson would write a datetime as a string; dramatiq never did, and neither do we.
    with pytest.raises(TypeError):
        MessageEncoder().encode(job_message(at=datetime(2026, 12, 1)))


@pytest.mark.parametrize("garbage", [b"\xff\xfe", b"{not json", b""])
def test_garbage_raises_dramatiqs_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        MessageEncoder().decode(garbage)


def test_the_output_is_compact_json() -> None:
    encoded = MessageEncoder().encode(job_message(seconds=1))
    assert json.loads(encoded) == job_message(seconds=1)
    assert b": " not in encoded and b", " not in encoded


def test_building_a_broker_sets_the_encoder(tmp_path: Path) -> None:
    previous = dramatiq.get_encoder()
    try:
        dramatiq.set_encoder(STDLIB)
        broker = build_broker(Settings(broker=BrokerSettings(path=tmp_path / "broker.db")))
        broker.close()
        assert isinstance(dramatiq.get_encoder(), MessageEncoder)
    finally:
        dramatiq.set_encoder(previous)
